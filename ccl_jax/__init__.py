"""ccl_jax package."""
