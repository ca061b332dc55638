"""Simulated FedAST jobs processed per wall-clock second: batched vs job by job.

One task at a time, on a pool of 1000 clients with 300 concurrent jobs, 5
local SGD steps of batch 16 per job: the MNIST-5k MLP (784-64-10, ~24 MFLOP
per job) and the Shakespeare character model (context 8, embedding 8, hidden 64, 70
characters; ~4 MFLOP per job). The same simulation (same seed,
same trace) runs with jobs trained in vmapped chunks (`JobTrainer.batched`)
and with one jitted call per job (`JobTrainer.single`). Compilation is
excluded: each mode first runs 400 events, then 2000 events are timed. The
"job compute only" rows time the trainer alone, outside the simulation (64
jobs from one start model, best of 10 calls): one batched call of 64 jobs
against 64 single-job calls. Their ratio bounds what batching can gain here,
with an event loop that costs nothing.
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
          "notes": f"{machine()}. " + " ".join(__doc__.split("\n\n")[1].split())}


def _compare(task) -> list[dict]:
  rows = []
  rate = {}
  for batched in (False, True):
    cfg = fedast.RuntimeConfig(method="fedast_static", num_clients=1000, max_busy_clients=300, total_jobs=300,
                               static_buffer=3, eval_every=1000, batched=batched, seed=0)
    sim = fedast.Simulation([task], cfg)
    sim.run(max_events=WARMUP)
    t0 = time.perf_counter()
    sim.run(max_events=EVENTS)
    seconds = time.perf_counter() - t0
    rate[batched] = EVENTS / seconds
    rows.append({"task": task.name,
                 "job computation": "batched (chunks of 64 / 8 jobs)" if batched else "one jitted call per job",
                 "jobs / s": round(rate[batched], 1), "wall s for 2000 jobs": round(seconds, 2),
                 "jit calls": sim.computed_batches if batched else EVENTS + WARMUP})
  rows[1]["speed-up"] = f"{rate[True] / rate[False]:.1f}x"
  rows[0]["speed-up"] = "1.0x"
  rows += _compute_only(task)
  return rows


def _compute_only(task, jobs: int = 64, repeats: int = 10) -> list[dict]:
  """Jobs per second of the trainer alone: one batched call vs one call per job."""
  trainer = fedast.JobTrainer(task)
  params = [jax.device_get(task.init_params)] * jobs
  clients = list(range(jobs))
  calls = {"one jitted call per job": lambda: [trainer.single(p, c) for p, c in zip(params, clients)],
           "batched (chunks of 64 / 8 jobs)": lambda: trainer.batched(params, clients)}
  best = {}
  for name, call in calls.items():
    for _ in range(2):  # compile and warm up
      call()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      call()
      times.append(time.perf_counter() - t0)
    best[name] = min(times)
  single = best["one jitted call per job"]
  return [{"task": task.name, "job computation": f"{name}, job compute only",
           "jobs / s": round(jobs / t, 1), "wall s for 2000 jobs": round(2000 * t / jobs, 2),
           "jit calls": "-", "speed-up": f"{single / t:.1f}x"}
          for name, t in best.items()]


if __name__ == "__main__":
  from run import render  # pylint: disable=g-import-not-at-top
  print(render(run()))
