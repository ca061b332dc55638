"""Timing helpers shared by the benchmarks (not a benchmark itself)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax


def _times(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def median_seconds(fn: Callable[[], object], *, repeats: int = 7, warmup: int = 2) -> float:
  """Median wall time of ``fn()`` (its outputs are blocked on)."""
  return statistics.median(_times(fn, repeats, warmup))


def best_seconds(fn: Callable[[], object], *, repeats: int = 7, warmup: int = 2) -> float:
  """Fastest wall time of ``fn()``: the machine's capability, less the noise of a shared host."""
  return min(_times(fn, repeats, warmup))


def machine() -> str:
  """One line describing the machine and the JAX install."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  devices = jax.devices()
  return (f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__}, {len(devices)} x "
          f"{devices[0].platform} device(s); Python {platform.python_version()}")


def run_with_cpu_devices(script: str, count: int) -> dict:
  """Runs ``python script --json`` with ``count`` CPU devices; returns its last line, parsed.

  For benchmarks that need more devices than this process has: the device
  count is fixed when JAX starts, so the measurement runs in a fresh process
  (``--xla_force_host_platform_device_count``; each CPU device runs its own
  programs, so on a multi-core host the devices run side by side).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={count}").strip())
  out = subprocess.run([sys.executable, script, "--json"], env=env, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])
