"""Dion step side by side with the official ``DionReference`` (PyTorch, CPU).

Both run in fresh single-threaded processes pinned to one core
(``OMP_NUM_THREADS=1``, XLA without its multi-threaded Eigen, ``taskset -c 0``
where available, ``torch.set_num_threads(1)``), alternating ours / official for
every rank fraction and round, on the same matrices: ``count`` float32 leaves of
Flax shape ``(fan_in, fan_out)`` (torch ``(fan_out, fan_in)``), fixed gradients.
Each process reports the median step time and its own GEMM rate, from which
each variant's **matmul floor** follows: the four ``p x q x r`` products of a Dion
step (``B Q``, ``B^T P``, the error feedback ``P R^T`` and the update ``P Q^T``),
``8 p q r`` FLOPs per matrix, at the GEMM rate measured in that process.

Optional install (kept out of the project's environment)::

    python3 -m venv /path/torchenv && /path/torchenv/bin/pip install torch numpy
    # the official code: a checkout of github.com/microsoft/dion (its dion/ package)

    DION_TORCH_PYTHON=/path/torchenv/bin/python DION_OFFICIAL_PATH=/path/checkout \\
      python benchmarks/dion_step.py --official

The official step runs eagerly (``TORCH_COMPILE_DISABLE=1``): ``torch.compile``
of its update took ~100 s per shape on this machine; ``--official-compile``
turns it back on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

SHAPE = (1024, 4096)
# Smaller settings for a busy machine (make bench): DION_BENCH_COUNT=2 DION_BENCH_STEPS=2.
COUNT = int(os.environ.get("DION_BENCH_COUNT", "12"))
FRACTIONS = {"1/16": 1 / 16, "1/4": 0.25, "1": 1.0}
STEPS = int(os.environ.get("DION_BENCH_STEPS", "3"))
ROUNDS = int(os.environ.get("DION_BENCH_ROUNDS", "2"))
METHOD = "rcqr"


def _rank(fraction: float, m: int, n: int) -> int:
  import math  # pylint: disable=import-outside-toplevel
  return max(1, min(math.ceil(round(fraction * min(m, n), 9)), m, n))


def floor_flops(shape, count, fraction) -> float:
  p, q = max(shape), min(shape)
  return 8.0 * p * q * _rank(fraction, *shape) * count


# ------------------------------------------------------------------ workers


def _worker_ours(shape, count, fraction, steps, method) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from optim import _dion as D  # pylint: disable=import-outside-toplevel

  key = jax.random.key(0)
  make = lambda k: {f"w{i}": 0.02 * jax.random.normal(jax.random.fold_in(k, i), shape)
                    for i in range(count)}
  params, grads = make(key), make(jax.random.fold_in(key, 1))
  tx = D.scale_by_dion(fraction, qr_method=method)

  def step(params, state, grads):
    u, state = tx.update(grads, state, params)
    return optax.apply_updates(params, jax.tree.map(lambda x: -0.01 * x, u)), state

  step = jax.jit(step, donate_argnums=(0, 1))
  state = tx.init(params)
  params, state = jax.block_until_ready(step(params, state, grads))
  times = []
  for _ in range(steps):
    t0 = time.process_time()
    params, state = jax.block_until_ready(step(params, state, grads))
    times.append(time.process_time() - t0)
  a = jnp.ones((max(shape), min(shape)), jnp.float32)
  b = jnp.ones((min(shape), 256), jnp.float32)
  mm = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(mm(a, b))
  gemm = []
  for _ in range(5):
    t0 = time.process_time()
    jax.block_until_ready(mm(a, b))
    gemm.append(time.process_time() - t0)
  return {"seconds": statistics.median(times),
          "gflops": 2 * a.shape[0] * a.shape[1] * b.shape[1] / min(gemm) / 1e9}


def _worker_official(shape, count, fraction, steps, method) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  from dion import DionReference  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(1)
  gen = torch.Generator().manual_seed(0)
  torch_shape = (shape[1], shape[0])  # (out, in)
  params = [torch.nn.Parameter(0.02 * torch.randn(torch_shape, generator=gen))
            for _ in range(count)]
  grads = [torch.randn(torch_shape, generator=gen) for _ in range(count)]
  opt = DionReference(params, lr=0.01, rank_fraction=fraction, qr_method=method,
                      cqr_warmup_steps=0)
  for p, g in zip(params, grads):
    p.grad = g
  opt.step()
  times = []
  for _ in range(steps):
    t0 = time.process_time()
    opt.step()
    times.append(time.process_time() - t0)
  a = torch.ones(max(shape), min(shape))
  b = torch.ones(min(shape), 256)
  a @ b
  gemm = []
  for _ in range(5):
    t0 = time.process_time()
    a @ b
    gemm.append(time.process_time() - t0)
  return {"seconds": statistics.median(times),
          "gflops": 2 * a.shape[0] * a.shape[1] * b.shape[1] / min(gemm) / 1e9,
          "torch": torch.__version__}


# ------------------------------------------------------------------ driver


def official_setup() -> tuple[str, str] | None:
  """``(python, path)`` of the torch interpreter and the official checkout, or None."""
  python = os.environ.get("DION_TORCH_PYTHON", "")
  path = os.environ.get("DION_OFFICIAL_PATH", "")
  if not python or not path:
    return None
  try:
    subprocess.run([python, "-c", "import torch, dion"], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=path, TORCH_COMPILE_DISABLE="1"), timeout=300)
  except (OSError, subprocess.SubprocessError):
    return None
  return python, path


def _checkout(path: str) -> str:
  """``microsoft/dion at <commit>`` for a git checkout, else the path's last part."""
  try:
    commit = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], check=True,
                            capture_output=True, text=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return os.path.basename(os.path.abspath(path))
  return f"microsoft/dion at {commit}"


HOW_TO = ("official comparison skipped: set DION_TORCH_PYTHON (a Python with torch) and "
          "DION_OFFICIAL_PATH (a checkout of microsoft/dion); see benchmarks/dion_official.py.")


def _spawn(which, python, extra_path, args, compile_official) -> dict:
  here = os.path.dirname(os.path.abspath(__file__))
  root = os.path.dirname(here)
  env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
             JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, root) if p)
  if which == "official" and not compile_official:
    env["TORCH_COMPILE_DISABLE"] = "1"
  cmd = [python, os.path.join(here, "dion_official.py"), "--worker", which,
         "--shape", ",".join(map(str, args.shape)), "--count", str(args.count),
         "--fraction", repr(args.fraction), "--steps", str(args.steps), "--method", args.method]
  if shutil.which("taskset"):
    cmd = ["taskset", "-c", "0"] + cmd
  out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def run(shape=SHAPE, count=COUNT, steps=STEPS, rounds=ROUNDS, method=METHOD,
        compile_official=False) -> dict:
  """Side-by-side table (title, rows, notes); without the official code, ours only."""
  here = os.path.dirname(os.path.abspath(__file__))
  if here not in sys.path:
    sys.path.insert(0, here)
  import common_timing  # pylint: disable=import-outside-toplevel  (imports jax: not in the torch worker)
  setup = official_setup()
  rows = []
  for label, fraction in FRACTIONS.items():
    args = argparse.Namespace(shape=shape, count=count, fraction=fraction, steps=steps,
                              method=method)
    ours, theirs = [], []
    for _ in range(rounds):
      ours.append(_spawn("ours", sys.executable, "", args, compile_official))
      if setup:
        theirs.append(_spawn("official", setup[0], setup[1], args, compile_official))
    flops = floor_flops(shape, count, fraction)
    # Over the floor: each process's step time at its own GEMM rate (paired: the
    # rate of this shared host moves between processes), median over processes.
    def over_floor(runs, flops=flops):
      return round(common_timing.over_floor([r["seconds"] for r in runs],
                                            [r["gflops"] * 1e9 for r in runs], flops), 2)
    t_ours = statistics.median(r["seconds"] for r in ours)
    row = {"rank fraction": label, "qr_method": method, "ours s/step": round(t_ours, 3),
           "ours / floor": over_floor(ours)}
    if setup:
      t_off = statistics.median(r["seconds"] for r in theirs)
      row.update({"official s/step": round(t_off, 3), "official / floor": over_floor(theirs),
                  "ours / official": round(statistics.median(
                      a["seconds"] / b["seconds"] for a, b in zip(ours, theirs)), 2)})
    rows.append(row)
    print(row, "ours:", [round(r["seconds"], 3) for r in ours], "official:",
          [round(r["seconds"], 3) for r in theirs], flush=True)
  notes = (f"{count} float32 matrices of Flax shape {shape} (torch {shape[::-1]}), fixed "
           f"gradients, median of {steps} steps per process (process CPU time, "
           "`time.process_time`: the machine is shared, and wall time counts the other jobs), "
           f"{rounds} alternating rounds of fresh "
           "processes, each single-threaded and pinned to core 0; ours = jitted, donated "
           "`optim.scale_by_dion` + apply; official = `DionReference` "
           f"({'torch.compile' if compile_official else 'eager'}, cqr_warmup_steps=0). Floor = "
           "8 p q r FLOPs per matrix at the GEMM rate ((4096 x 1024) @ (1024 x 256), best of 5) "
           "measured in the same process; x / floor is the median over processes of each "
           "process's step time over its own floor." + ("" if setup else " " + HOW_TO))
  if setup and theirs:
    notes += f" Official code: {_checkout(setup[1])}, torch {theirs[0].get('torch', '?')} (CPU)."
  command = (f"DION_BENCH_COUNT={count} DION_BENCH_STEPS={steps} DION_BENCH_ROUNDS={rounds} "
             "DION_TORCH_PYTHON=... DION_OFFICIAL_PATH=... python benchmarks/run.py dion_official")
  return {"title": f"Dion step vs the official DionReference, {count} x {shape[0]}x{shape[1]}",
          "rows": rows, "notes": notes, "command": command}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--worker", choices=("ours", "official"))
  parser.add_argument("--shape", default="1024,4096")
  parser.add_argument("--count", type=int, default=COUNT)
  parser.add_argument("--fraction", type=float, default=0.25)
  parser.add_argument("--steps", type=int, default=STEPS)
  parser.add_argument("--rounds", type=int, default=ROUNDS)
  parser.add_argument("--method", default=METHOD)
  parser.add_argument("--official-compile", action="store_true")
  args = parser.parse_args(argv)
  args.shape = tuple(int(s) for s in args.shape.split(","))
  if args.worker:
    fn = _worker_ours if args.worker == "ours" else _worker_official
    print(json.dumps(fn(args.shape, args.count, args.fraction, args.steps, args.method)))
    return
  result = run(args.shape, args.count, args.steps, args.rounds, args.method,
               args.official_compile)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from run import render  # pylint: disable=import-outside-toplevel
  print(render(result))


if __name__ == "__main__":
  main()
