"""Scripts on the sweep engine vs their loop over seeds: whole-process wall time, quick presets.

Each variant is one fresh process (data loading, compiles and training
included), pinned to one core (``taskset -c 0``), single-threaded
(``OMP_NUM_THREADS=1``, XLA without its multi-threaded Eigen), run A B A B
(loop, engine, loop, engine, ...) and reported as medians:

* baseline_mlp, quick preset: ``--seed 0``, ``--seed 1``, ``--seed 2`` one
  after the other in one process (the loop) vs ``--seeds 0 1 2`` (one sweep);
* ccl, quick preset (3 seeds, CCL and BP), ``--epochs`` shortened (below):
  the per-member loop path (`ccl.run_one`, what ran before the engine) vs the
  engine path.

The engine's chunk size is its default (printed per run: on CPU, 1 for these
models, i.e. one member's unbatched program at a time inside one program).

    python benchmarks/script_sweeps.py                 # prints the table
    python benchmarks/run.py script_sweeps             # also writes results.md
"""

from __future__ import annotations

import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPEATS = 2  # pairs (loop, engine)
CCL_EPOCHS = 1

_BASELINE_LOOP = """
import sys; sys.path.insert(0, 'scripts')
import baseline_mlp
for s in (0, 1, 2):
  baseline_mlp.main(['--preset', 'quick', '--seed', str(s), '--workdir', sys.argv[1] + f'/seed{s}'])
"""
_BASELINE_SWEEP = """
import sys; sys.path.insert(0, 'scripts')
import baseline_mlp
baseline_mlp.main(['--preset', 'quick', '--seeds', '0', '1', '2', '--workdir', sys.argv[1] + '/sweep'])
"""
_CCL = """
import sys; sys.path.insert(0, 'scripts')
import ccl
if sys.argv[2] == 'loop':
  ccl.use_engine = lambda cfg: False
ccl.main(['--preset', 'quick', '--epochs', '{epochs}', '--workdir', sys.argv[1] + '/' + sys.argv[2]])
"""

CASES = {
    "baseline_mlp quick, 3 seeds": {"loop": (_BASELINE_LOOP, ()), "engine": (_BASELINE_SWEEP, ())},
    f"ccl quick (MLP, CCL + BP, 3 seeds), --epochs {CCL_EPOCHS}": {
        "loop": (_CCL.format(epochs=CCL_EPOCHS), ("loop",)),
        "engine": (_CCL.format(epochs=CCL_EPOCHS), ("engine",))},
}


def _env() -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  return env


def _time(code: str, args: tuple[str, ...]) -> float:
  workdir = tempfile.mkdtemp(prefix="script_sweeps_")
  cmd = [sys.executable, "-c", code, workdir, *args]
  if shutil.which("taskset"):
    cmd = ["taskset", "-c", "0"] + cmd
  try:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, capture_output=True, text=True)
    return time.perf_counter() - t0
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def run() -> dict:
  rows = []
  for name, variants in CASES.items():
    times: dict[str, list[float]] = {"loop": [], "engine": []}
    for _ in range(REPEATS):
      for variant in ("loop", "engine"):
        times[variant].append(_time(*variants[variant]))
        print(f"{name}: {variant} {times[variant][-1]:.1f} s", flush=True)
    loop, engine = statistics.median(times["loop"]), statistics.median(times["engine"])
    rows.append({"case": name, "loop s (median)": f"{loop:.1f}", "engine s (median)": f"{engine:.1f}",
                 "loop / engine": f"{loop / engine:.2f}",
                 "runs": f"loop {', '.join(f'{t:.1f}' for t in times['loop'])}; "
                         f"engine {', '.join(f'{t:.1f}' for t in times['engine'])}"})
  return {"title": "Scripts: engine sweep vs the loop over seeds (whole process, one core)", "rows": rows,
          "notes": (f"Whole-process wall time (data, compiles, training, evaluation, results), fresh "
                    f"process per run, `taskset -c 0`, single-threaded XLA, alternating loop / engine, "
                    f"{REPEATS} runs each, medians. loop / engine > 1: the engine is faster. The engine "
                    "uses its default chunk size (1 on CPU for these models). CCL runs its quick preset "
                    f"with --epochs {CCL_EPOCHS} to keep the benchmark short.")}


if __name__ == "__main__":
  import json  # pylint: disable=g-import-not-at-top
  print(json.dumps(run(), indent=2))
