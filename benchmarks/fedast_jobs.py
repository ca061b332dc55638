"""Simulated FedAST jobs processed per wall-clock second, per job executor.

One task at a time, on a pool of 1000 clients with 300 concurrent jobs, 5
local SGD steps of batch 16 per job: the MNIST-5k MLP (784-64-10, ~24 MFLOP
per job) and the Shakespeare character model (context 8, embedding 8, hidden 64, 70
characters; ~4 MFLOP per job). The same simulation (same seed,
same trace) runs with each executor of `JobTrainer`: one jitted call per job
(``single``), chunks of 64 / 8 jobs under one `jax.vmap` (``vmap``), and the
same chunks as a `lax.map` over vmapped groups of 8 in one program (``map``).
Compilation is excluded: each executor first runs 400 events, then 2000
events are timed. The "job compute only" rows time the trainer alone, outside
the simulation (64 jobs from one start model, best of 10 calls). The default
executor (``auto``) is the fastest of these on the backend
(`fed.fedast_jobs.default_mode`).
"""

from __future__ import annotations

import time

import jax

from fed import fedast
from fed import fedast_tasks as ft

try:
  from benchmarks.common_timing import machine
except ImportError:  # run as a plain script
  from common_timing import machine

WARMUP, EVENTS = 400, 2000


def run() -> dict:
  image = ft.image_task("mnist", name="mnist-5k MLP 784-64-10", num_clients=1000, hidden=(64,), alpha=0.1,
                        steps=5, batch_size=16, target=1.1, local_lr=0.1, global_lr=0.15, exp_mean=0.148,
                        shift=0.074, seed=0)
  chars = ft.shakespeare_task(name="shakespeare char model", num_clients=1000, context=8, embed=8, hidden=64,
                              steps=5, batch_size=16, target=1.1, local_lr=0.5, global_lr=0.15, exp_mean=0.555,
                              shift=0.2775, seed=0)
  rows = []
  for task in (image, chars):
    rows += _compare(task)
  return {"title": "FedAST: simulated jobs per wall-clock second (300 concurrent jobs)", "rows": rows,
          "notes": f"{machine()}. Default executor here (auto): {fedast.default_mode()}. "
                   + " ".join(__doc__.split("\n\n")[1].split())}


EXECUTORS = ("single", "vmap", "map")
LABELS = {"single": "one jitted call per job", "vmap": "vmap over chunks of 64 / 8 jobs",
          "map": "lax.map over vmapped groups of 8 (chunks of 64 / 8)"}


def _compare(task) -> list[dict]:
  rows = []
  rate = {}
  for mode in EXECUTORS:
    cfg = fedast.RuntimeConfig(method="fedast_static", num_clients=1000, max_busy_clients=300, total_jobs=300,
                               static_buffer=3, eval_every=1000, executor=mode, seed=0)
    sim = fedast.Simulation([task], cfg)
    sim.run(max_events=WARMUP)
    t0 = time.perf_counter()
    sim.run(max_events=EVENTS)
    seconds = time.perf_counter() - t0
    rate[mode] = EVENTS / seconds
    rows.append({"task": task.name, "job executor": f"{mode}: {LABELS[mode]}",
                 "jobs / s": round(rate[mode], 1), "wall s for 2000 jobs": round(seconds, 2),
                 "jit calls": sim.computed_batches if mode != "single" else EVENTS + WARMUP,
                 "speed-up": f"{rate[mode] / rate['single']:.2f}x"})
  rows += _compute_only(task)
  return rows


def _compute_only(task, jobs: int = 64, repeats: int = 10) -> list[dict]:
  """Jobs per second of the trainer alone, per executor."""
  params = [jax.device_get(task.init_params)] * jobs
  clients = list(range(jobs))
  best = {}
  for mode in EXECUTORS:
    trainer = fedast.JobTrainer(task, mode=mode)
    for _ in range(2):  # compile and warm up
      trainer.compute(params, clients)
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      trainer.compute(params, clients)
      times.append(time.perf_counter() - t0)
    best[mode] = min(times)
  return [{"task": task.name, "job executor": f"{mode}, job compute only",
           "jobs / s": round(jobs / t, 1), "wall s for 2000 jobs": round(2000 * t / jobs, 2),
           "jit calls": "-", "speed-up": f"{best['single'] / t:.2f}x"}
          for mode, t in best.items()]


if __name__ == "__main__":
  from run import render  # pylint: disable=g-import-not-at-top
  print(render(run()))
