"""Test-wide setup (tests and doctests): 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TQDM_DISABLE", "1")

import jax  # noqa: E402  (must come after the flag)

jax.config.update("jax_default_matmul_precision", "highest")

