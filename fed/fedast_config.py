"""Configuration of the FedAST runtime: methods, client pool, budgets, server options; the job event."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fed import fedast_rules as rules
from fed.fedast_jobs import MODES, Task

METHODS = ("fedast", "fedast_static", "fedast_nobuffer", "sync", "sequential")
STALENESS = rules.STALENESS
SYNC_RULES = rules.SYNC_RULES


class Job(NamedTuple):
  """One job in flight: ordered by finish time, then dispatch order."""

  finish: float
  seq: int
  task: int
  client: int
  version: int  # the task's model version the job trains from
  start: float  # simulated time of dispatch


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """Client pool, budget and server options of the simulated runtime."""

  method: str = "fedast"
  num_clients: int = 1000
  max_busy_clients: int = 300
  max_jobs_per_client: int = 4  # jobs one client may hold at once (run back to back)
  total_jobs: int = 300  # R_total: jobs in flight across all tasks (async methods)
  ratio: int = 32  # r: buffer b_m = ceil(R_m / r); realloc in blocks of r
  static_buffer: int = 3  # b for fedast_static
  window: int = 8  # updates per spread estimate v_m
  spawn_per_event: int = 2  # max new jobs per task after each delivered job
  staleness: str = "constant"  # update weight w(s): "constant" (the paper) or "polynomial"
  staleness_exponent: float = 0.5  # a of (1 + s)^-a
  sync_rule: str = "first_c"  # Sync-ST: keep the first C finishers ("first_c") or a fraction ("fraction")
  sync_first_c: int = 30  # C of "first_c" (capped at the group size)
  sync_keep: float = 0.1  # fraction of the group kept by "fraction"
  duration_scale: float = 27.0
  speed_factors: tuple[float, ...] = (1.3, 1.0, 0.7)
  speed_probs: tuple[float, ...] = (0.25, 0.5, 0.25)
  eval_every: int = 1  # evaluate a task every this many versions (rounds for sync)
  max_time: float = 1e9  # stop after this much simulated time
  max_versions: int = 100_000  # safety cap on server updates per task
  executor: str = "auto"  # JobTrainer mode: auto (fastest measured), map, vmap, single
  seed: int = 0

  def validate(self) -> None:
    """Raises ``ValueError`` naming the first bad field."""
    if self.method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
    if self.staleness not in STALENESS:
      raise ValueError(f"staleness must be one of {STALENESS}, got {self.staleness!r}.")
    if self.sync_rule not in SYNC_RULES:
      raise ValueError(f"sync_rule must be one of {SYNC_RULES}, got {self.sync_rule!r}.")
    if self.executor not in MODES:
      raise ValueError(f"executor must be one of {MODES}, got {self.executor!r}.")
    for name in ("num_clients", "max_busy_clients", "max_jobs_per_client", "total_jobs", "ratio", "static_buffer",
                 "window", "spawn_per_event", "eval_every", "sync_first_c", "max_versions"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.max_busy_clients > self.num_clients:
      raise ValueError("max_busy_clients cannot exceed num_clients.")
    if not 0 < self.sync_keep <= 1:
      raise ValueError(f"sync_keep must be in (0, 1], got {self.sync_keep}.")
    if not self.max_time > 0:
      raise ValueError(f"max_time must be > 0, got {self.max_time}.")
    if not self.duration_scale > 0:
      raise ValueError(f"duration_scale must be > 0, got {self.duration_scale}.")
    if (len(self.speed_factors) != len(self.speed_probs) or abs(sum(self.speed_probs) - 1) > 1e-6
        or min(self.speed_factors, default=0) <= 0 or min(self.speed_probs, default=-1) < 0):
      raise ValueError("speed_probs must match speed_factors (all > 0) and be >= 0 summing to 1.")
    if self.staleness_exponent < 0:
      raise ValueError("staleness_exponent must be >= 0.")
    if self.seed < 0:
      raise ValueError(f"seed must be >= 0, got {self.seed}.")

  @property
  def asynchronous(self) -> bool:
    return self.method.startswith("fedast")


def check_tasks(tasks: Sequence[Task], cfg: RuntimeConfig) -> None:
  """Raises ``ValueError`` if the tasks do not fit the pool or have bad settings."""
  if not tasks:
    raise ValueError("Give at least one task.")
  names = [t.name for t in tasks]
  if len(set(names)) != len(names):
    raise ValueError(f"Task names must be unique, got {names}.")
  for t in tasks:
    n = np.shape(t.x)[0]
    if n != cfg.num_clients:
      raise ValueError(f"Task {t.name!r} has data for {n} clients, the pool has {cfg.num_clients}.")
    if t.exp_mean < 0 or t.shift < 0 or t.local_lr <= 0 or t.global_lr <= 0:
      raise ValueError(f"Task {t.name!r}: durations must be >= 0 and learning rates > 0.")
  if cfg.asynchronous and cfg.total_jobs < len(tasks):
    raise ValueError(f"total_jobs={cfg.total_jobs} is below the number of tasks ({len(tasks)}).")
