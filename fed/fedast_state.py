"""Checkpoint state of a `fed.fedast.Simulation`: every array and every scalar of the runtime.

`save_state` flattens models, stored versions, computed results, buffers and
spread windows into named arrays and the rest (clock, queue, RNG, budgets,
trace) into JSON-ready metadata, for `paperlab.checkpoint.save_flat`;
`load_state` puts them back, so the restored run continues with the identical
trace.
"""

from __future__ import annotations

import heapq
from typing import Any

import jax
import numpy as np


def _leaves(tree: Any) -> list[np.ndarray]:
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


def save_state(sim) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """``(arrays, meta)`` of ``sim``."""
  arrays: dict[str, np.ndarray] = {"free_at": sim.free_at, "jobs_on": sim.jobs_on}

  def put(prefix, tree):
    for j, leaf in enumerate(_leaves(tree)):
      arrays[f"{prefix}.{j}"] = leaf

  for i in range(len(sim.tasks)):
    put(f"params.{i}", sim.params[i])
    for k, p in sim.versions[i].items():
      put(f"version.{i}.{k}", p)
    for s, d in sim.results[i].items():
      put(f"result.{i}.{s}", d)
    for j, (d, _) in enumerate(sim.buffer[i]):
      put(f"buf.{i}.{j}", d)
    for j, d in enumerate(sim.window[i]):
      put(f"window.{i}.{j}", d)
  meta = {"clock": sim.clock, "seq": sim.seq, "heap": [list(e) for e in sim.heap],
          "rng": sim.rng.bit_generator.state, "version": sim.version,
          "versions": {i: sorted(v) for i, v in enumerate(sim.versions)},
          "results": {i: sorted(r) for i, r in enumerate(sim.results)},
          "buffer_weights": [[w for _, w in b] for b in sim.buffer],
          "window_len": [len(w) for w in sim.window], "spread": sim.spread, "budget": sim.budget,
          "active": sim.active, "done_time": sim.done_time, "received": sim.received,
          "since_realloc": sim.since_realloc, "round": sim.round, "trace": sim.trace,
          "method": sim.cfg.method}
  return arrays, meta


def load_state(sim, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
  """Restores ``sim`` from `save_state` output (same tasks and config)."""
  from fed.fedast import Job  # pylint: disable=g-import-not-at-top
  if meta["method"] != sim.cfg.method:
    raise ValueError(f"Checkpoint is for method {meta['method']!r}, not {sim.cfg.method!r}.")

  def get(prefix, i):
    n = sim.treedefs[i].num_leaves
    return jax.tree.unflatten(sim.treedefs[i], [arrays[f"{prefix}.{j}"] for j in range(n)])

  m = len(sim.tasks)
  sim.free_at = arrays["free_at"].copy()
  sim.jobs_on = arrays["jobs_on"].copy()
  sim.clock, sim.seq = meta["clock"], meta["seq"]
  sim.heap = [Job(float(e[0]), int(e[1]), int(e[2]), int(e[3]), int(e[4]), float(e[5])) for e in meta["heap"]]
  heapq.heapify(sim.heap)
  sim.rng.bit_generator.state = meta["rng"]
  sim.version = list(meta["version"])
  sim.params = [get(f"params.{i}", i) for i in range(m)]
  sim.versions = [{int(k): get(f"version.{i}.{k}", i) for k in meta["versions"][str(i)]} for i in range(m)]
  sim.results = [{int(s): get(f"result.{i}.{s}", i) for s in meta["results"][str(i)]} for i in range(m)]
  sim.buffer = [[(get(f"buf.{i}.{j}", i), float(w)) for j, w in enumerate(meta["buffer_weights"][i])]
                for i in range(m)]
  sim.window = [[get(f"window.{i}.{j}", i) for j in range(meta["window_len"][i])] for i in range(m)]
  sim.spread = [list(s) for s in meta["spread"]]
  sim.budget, sim.active = list(meta["budget"]), list(meta["active"])
  sim.done_time = list(meta["done_time"])
  sim.received, sim.since_realloc, sim.round = meta["received"], meta["since_realloc"], meta["round"]
  sim.trace = meta["trace"]
  sim._count_refs()  # pylint: disable=protected-access
