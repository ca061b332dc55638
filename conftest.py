"""Test-wide setup (tests and doctests), set before JAX is imported anywhere.

One persistent compilation cache per test session, shared by the xdist workers and by the scripts
the tests run in subprocesses (they inherit the environment): a program compiled twice, e.g. a
script run, interrupted and run again, or a sweep member checked against its single run, is
compiled once. The directory is new for each session (a clean cache, removed at exit) unless
``JAX_COMPILATION_CACHE_DIR`` is already set.
"""

import atexit
import os
import shutil
import tempfile

# 8 simulated devices; LLVM at -O0 unless XLA_FLAGS sets a level. The suite is compile-bound: a
# whole local run took 1309 s at -O2 and 1070 s at -O0 on 2 cores. XLA's HLO passes, hence every
# program the tests inspect, are the same; only rounding in fused loops may differ.
_DEVICES, _LEVEL = "--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level="
for _flag, _unless in ((_DEVICES, _DEVICES), (_LEVEL + "0", _LEVEL)):
  if _unless not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TQDM_DISABLE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="jax-test-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import jax  # noqa: E402  (must come after the flags)

jax.config.update("jax_default_matmul_precision", "highest")
