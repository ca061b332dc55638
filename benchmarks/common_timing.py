"""Timing helpers shared by the benchmarks (not a benchmark itself)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

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


def op_microseconds(fn: Callable[[], object]) -> dict[str, float]:
  """Microseconds per XLA op name over one call of ``fn()`` (a `jax.profiler` trace of it;
  ``fn`` should be warm). Container events (while loops, calls, thunk executors, Python) are left
  out, so the values add up to the time spent in leaf ops."""
  import collections  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    jax.block_until_ready(fn())
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
  total = collections.Counter()
  nested = ("$", "ThunkExecutor", "while", "conditional", "call", "end: ")
  for e in trace["traceEvents"]:
    if e.get("ph") == "X" and not e["name"].startswith(nested):
      total[e["name"]] += e.get("dur", 0)
  return dict(total.most_common())


def over_floor(seconds: Sequence[float], rates: Sequence[float], flops: float) -> float:
  r"""Median over samples of time over its own FLOP floor: :math:`\mathrm{median}_i\, t_i r_i / F`.

  ``seconds[i]`` is a timed run and ``rates[i]`` (FLOP/s) the GEMM rate measured
  next to it (same process, just before or after), so a slow period of a shared
  host slows both and cancels; ``flops`` (``F``) is the work of one run.

  Raises:
    ValueError: on an empty input or unequal lengths.
  """
  if not seconds or len(seconds) != len(rates):
    raise ValueError(f"over_floor needs paired samples, got {len(seconds)} times and "
                     f"{len(rates)} rates.")
  return statistics.median(t * r / flops for t, r in zip(seconds, rates))


def is_matmul_op(name: str) -> bool:
  """An XLA:CPU op name that is a matrix product (an Eigen dot or a YNNPACK dot fusion)."""
  return "dot" in name or "ynn" in name


def cpu_name() -> str:
  """The CPU's model name from ``/proc/cpuinfo``, with its widest vector extension.

  e.g. ``"AMD EPYC (AVX-512)"``; the platform's processor name where there is
  no ``/proc/cpuinfo``. Never written by hand: hosts differ between runs.
  """
  name, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == (platform.processor() or platform.machine()):
          name = value.strip()
        elif key.strip() == "flags" and not flags:
          flags = set(value.split())
  except OSError:
    pass
  vector = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sse4_2", "SSE4.2"))
                 if flag in flags), None)
  return f"{name} ({vector})" if vector else name


def machine() -> str:
  """One line describing the machine and the JAX install."""
  devices = jax.devices()
  kind = devices[0].device_kind if devices[0].platform != "cpu" else ""
  return (f"{cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__}, {len(devices)} x "
          f"{devices[0].platform}{' ' + kind if kind else ''} device(s); Python {platform.python_version()}")


def run_with_cpu_devices(script: str, count: int, args: Sequence[str] = ("--json",)) -> Any:
  """Runs ``python script *args`` with ``count`` CPU devices; returns its last line, parsed.

  For benchmarks that need more devices than this process has: the device
  count is fixed when JAX starts, so the measurement runs in a fresh process
  (``--xla_force_host_platform_device_count``; each CPU device runs its own
  programs, so on a multi-core host the devices run side by side).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={count}").strip())
  out = subprocess.run([sys.executable, script, *args], env=env, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])
