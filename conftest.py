"""Test-wide setup (tests and doctests): 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TQDM_DISABLE", "1")

import jax  # noqa: E402  (must come after the flag)

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402

from paperlab import sweep as _sweep  # noqa: E402

# Every test runs under a hang guard: past this many seconds the worker dumps its threads'
# tracebacks and exits, so a deadlock fails one test instead of stalling the suite.
HANG_S = float(os.environ.get("PAPERLAB_TEST_HANG_S", "900"))


@pytest.fixture(autouse=True)
def _hang_guard():
  with _sweep.hang_guard(HANG_S):
    yield
