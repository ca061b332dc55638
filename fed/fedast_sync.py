"""Sync-ST and sequential rounds of the FedAST runtime (the synchronous baselines).

Sync-ST as in the FedAST demo (askinb/FedAST ``server.sync_run``): each round
draws ``max_busy_clients`` distinct clients uniformly and splits them into
disjoint groups, one per active task; every drawn client starts its job when
it is free (a client still running a dropped job of an earlier round starts
late); each task keeps the first ``C`` finishers of its group
(`fed.fedast_rules.sync_keep_count`, ``C = 30`` capped at the group size, or
the older fraction rule), the round ends at the slowest task's last kept
finisher (`fed.fedast_rules.sync_select`), and each task moves by the mean of
its kept updates times ``eta_g`` (`fed.fedast_rules.aggregate_buffer`, weights
1). Dropped jobs keep their clients busy until they would have finished.
``sequential`` runs the same rounds for the first unfinished task only.
"""

# pylint: disable=protected-access  (a part of the runtime, split out for length)

from __future__ import annotations

import numpy as np

from fed import fedast_rules as rules


def sync_round(sim) -> None:
  """One synchronous round of ``sim`` (a `fed.fedast.Simulation` with method sync / sequential)."""
  cfg = sim.cfg
  rest = sim._active_tasks()
  if cfg.method == "sequential":
    rest = rest[:1]
  clients = sim.rng.permutation(cfg.num_clients)[:cfg.max_busy_clients]
  sizes = rules.sync_group_sizes(len(clients), len(rest))
  groups = np.split(clients, np.cumsum(sizes)[:-1])
  finishes = []
  for task, group in zip(rest, groups):
    times = []
    for c in group:  # every job of the round occupies its client, kept or dropped
      finish = max(sim.clock, float(sim.free_at[c])) + sim._duration(task, int(c))
      sim.free_at[c] = finish
      times.append(finish)
    finishes.append(times)
    sim.trace["jobs_started"] += len(group)
  keep = [rules.sync_keep_count(len(g), cfg.sync_rule, cfg.sync_first_c, cfg.sync_keep) for g in groups]
  kept, end = rules.sync_select(finishes, keep)
  sim.clock = max(sim.clock, end)
  sim.round += 1
  for task, group, idx in zip(rest, groups, kept):
    chosen = [int(group[j]) for j in idx]
    params = sim.params[task]
    deltas = sim.trainers[task].compute([params] * len(chosen), chosen)
    sim.trace["staleness"][task].extend([0] * len(chosen))
    sim.trace["jobs_done"] += len(chosen)
    sim.received += len(chosen)
    sim._apply(task, rules.aggregate_buffer(params, deltas, [1.0] * len(deltas), sim.tasks[task].global_lr))
