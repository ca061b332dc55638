"""Optimizer step time: Dion at several ranks against ``optax.contrib.muon``.

One optimizer step (``tx.update`` + ``optax.apply_updates``, jitted, params
and state donated) on 12 float32 matrices of Flax shape (1024, 4096), i.e.
torch (out, in) = (4096, 1024), the setting of the Dion spec (section c.0).
Variants are timed side by side in one process: every round times each
variant once after a warm-up call, the ratio to Muon is taken within the round,
and the table reports medians over rounds. Dion uses its defaults (RCQR,
one power iteration); Muon uses optax's defaults (5 Newton-Schulz steps).
The LAPACK calls (Cholesky, QR) go to scipy's OpenBLAS, whose spinning worker
threads made a 512x512 Cholesky ~50x slower on the shared 2-core machine, so
BLAS is limited to one thread here (XLA's own thread pool is untouched).

Standalone: ``python benchmarks/dion_step.py [--shape 4096,16384 --count 12 --rounds 3]``.
``--profile 0.25`` prints where one rank-1/4 step goes, by XLA op (run it pinned and
single-threaded: ``taskset -c 0 env OMP_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1" python benchmarks/dion_step.py --count 2 --profile 0.25``).
``--official`` instead runs `dion_official` (ours against the official
``DionReference`` in single-threaded, pinned, alternating processes, with
each variant's time over its matmul floor).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax
import scipy.linalg  # noqa: F401  (loads the OpenBLAS that jax's LAPACK calls use)
from threadpoolctl import threadpool_limits

from optim import _dion as D

try:
  from benchmarks.common_timing import machine, op_microseconds
except ImportError:  # run as a plain script
  from common_timing import machine, op_microseconds

SHAPE = (1024, 4096)
COUNT = 12
ROUNDS = 3

VARIANTS = {
    "optax.contrib.muon": lambda: optax.contrib.muon(0.02),
    "dion rank 1": lambda: D.dion(0.01, 1.0),
    "dion rank 1/4": lambda: D.dion(0.01, 0.25),
    "dion rank 1/16": lambda: D.dion(0.01, 1 / 16),
}
BASELINE = "optax.contrib.muon"


def _step_fn(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def _tree(key, shape, count):
  """``count`` random float32 matrices of Flax shape ``shape``, named w0, w1, ..."""
  return {f"w{i}": 0.02 * jax.random.normal(jax.random.fold_in(key, i), shape)
          for i in range(count)}


def _timed(step, params, state, grads):
  t0 = time.perf_counter()
  params, state = step(params, state, grads)
  jax.block_until_ready((params, state))
  return time.perf_counter() - t0, params, state


def run(shape: tuple[int, int] = SHAPE, count: int = COUNT, rounds: int = ROUNDS) -> dict:
  """Times every variant; returns the benchmark dict (title, rows, notes)."""
  threadpool_limits(1, user_api="blas")
  key = jax.random.key(0)
  grads = _tree(jax.random.fold_in(key, 1), shape, count)
  runs = {}
  for name, factory in VARIANTS.items():
    tx = factory()
    params = _tree(key, shape, count)
    state = tx.init(params)
    step = _step_fn(tx)
    _, params, state = _timed(step, params, state, grads)  # compile + warm-up
    runs[name] = [step, params, state]
  times = {name: [] for name in VARIANTS}
  for _ in range(rounds):
    for name, entry in runs.items():
      seconds, entry[1], entry[2] = _timed(entry[0], entry[1], entry[2], grads)
      times[name].append(seconds)
  ratios = {name: statistics.median(t / b for t, b in zip(times[name], times[BASELINE]))
            for name in VARIANTS}
  rows = [{"optimizer": name, "ms per step (median)": round(1e3 * statistics.median(times[name])),
           f"ratio to {BASELINE}": round(ratios[name], 3)} for name in VARIANTS]
  notes = (f"{count} matrices of Flax shape {shape} (float32), median of {rounds} rounds, "
           f"ratio taken within each round. Machine: {machine()}. Acceptance: Dion rank 1/4 "
           "<= 0.3x Muon, full rank <= 1.0x.")
  return {"title": f"Dion vs Muon optimizer step, {count} x {shape[0]}x{shape[1]}", "rows": rows,
          "notes": notes}


def profile(fraction: float, shape: tuple[int, int] = SHAPE, count: int = 2, top: int = 24) -> dict:
  """Op time of one warm `scale_by_dion` step (rcqr) by XLA op name; prints the largest."""
  threadpool_limits(1, user_api="blas")
  key = jax.random.key(0)
  params, grads = _tree(key, shape, count), _tree(jax.random.fold_in(key, 1), shape, count)
  tx = D.scale_by_dion(fraction)
  step = _step_fn(tx)
  state = tx.init(params)
  times = []
  for _ in range(4):
    t0 = time.process_time()
    params, state = jax.block_until_ready(step(params, state, grads))
    times.append(time.process_time() - t0)
  box = [params, state]

  def one():
    box[0], box[1] = step(box[0], box[1], grads)
    return box
  ops = op_microseconds(one)
  print(f"step {statistics.median(times[1:]):.4f} s (CPU); op time {sum(ops.values()) / 1e6:.4f} s")
  for name, us in list(ops.items())[:top]:
    print(f"{us / 1e3:8.2f} ms  {name}")
  return ops


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="1024,4096", help="Flax (fan_in, fan_out)")
  parser.add_argument("--count", type=int, default=COUNT)
  parser.add_argument("--rounds", type=int, default=ROUNDS)
  parser.add_argument("--official", action="store_true",
                      help="side by side with the official DionReference (dion_official.py)")
  parser.add_argument("--profile", type=float, default=None, metavar="FRACTION",
                      help="print one step's op times at this rank fraction instead")
  args, rest = parser.parse_known_args()
  if args.profile is not None:
    profile(args.profile, tuple(int(s) for s in args.shape.split(",")), args.count)
    raise SystemExit(0)
  if args.official:
    import dion_official  # pylint: disable=import-outside-toplevel
    dion_official.main(["--shape", args.shape, "--count", str(args.count),
                        "--rounds", str(args.rounds)] + rest)
    raise SystemExit(0)
  from run import render  # pylint: disable=g-import-not-at-top
  print(render(run(tuple(int(s) for s in args.shape.split(",")), args.count, args.rounds)))
