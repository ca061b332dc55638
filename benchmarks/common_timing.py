"""Timing helpers shared by the benchmarks (not a benchmark itself)."""

from __future__ import annotations

import os
import platform
import statistics
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
