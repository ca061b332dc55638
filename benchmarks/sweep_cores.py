"""The sweep engine on every core vs a loop of jitted single runs (the 16-member cases).

`benchmarks/sweep.py` compares the engine with the loop on one pinned,
single-threaded core: the same resources on both sides. Here the process has
one CPU device per usable core (a fresh process, since the device count is
fixed when JAX starts), nothing is pinned, and the engine's default
(``devices=None``: at most one CPU device per core) shards the members over
the cores; the loop runs one member after the other with XLA's default
threading. Rows: the engine on one device and on all of them, each against
the loop of the same process.

    python benchmarks/run.py sweep_cores
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common_timing import run_with_cpu_devices  # noqa: E402


def run() -> dict:
  """Benchmark entry point of ``benchmarks/run.py``."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  env_flags = os.environ.get("XLA_FLAGS", "")
  rows = run_with_cpu_devices(str(HERE / "sweep.py"), cores, args=["--cores-json"])
  speeds = "; ".join(f"{r['model']}, {r['engine devices']} device(s): {r['engine / loop speed']}x" for r in rows)
  return {"title": "Sweep engine on every core vs a loop of jitted single runs (16 members)", "rows": rows,
          "notes": (f"One process with {cores} CPU device(s), one per usable core, unpinned"
                    f"{' (XLA_FLAGS ' + env_flags + ')' if env_flags else ''}; the same problems, loop and "
                    "engine calls as `benchmarks/sweep.py` (medians of 5 warm calls, alternating). "
                    f"Engine / loop speed measured: {speeds}.")}


if __name__ == "__main__":
  print(json.dumps(run(), indent=1))
