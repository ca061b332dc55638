"""FedAST: buffered asynchronous simultaneous training of several FL tasks.

Askin, Sharma, Joe-Wong and Joshi, "FedAST: Federated Asynchronous
Simultaneous Training", UAI 2024, https://arxiv.org/abs/2406.00302.

M tasks (each a model with its own data, loss and target accuracy) share one
pool of clients. Time is simulated: every job (one client's local training for
one task) takes a random duration, and a priority queue of `Job` events
delivers jobs in the order they finish. This module is the event runtime: it
schedules jobs, keeps the clock, the queue and the client occupancy, and calls
the pure server rules of `fed.fedast_rules` for everything a server decides.
Local training is batched by `fed.fedast_jobs.JobTrainer` (all in-flight,
not yet computed jobs of a task in one compiled call, each from its own start
version).

Methods (``RuntimeConfig.method``):

* ``fedast``: per task a buffer of ``b_m = ceil(R_m / r)`` updates, applied as
  ``x_m += eta_g / |B_m| sum_j w(s_j) Delta_j``; every ``P`` updates the job
  budget is reallocated ``R_m ∝ sqrt(v_m)`` (`fed.fedast_rules`); a task that
  reaches its target releases its jobs to the others.
* ``fedast_static``: fixed ``R`` and buffer ``b``; ``fedast_nobuffer``: ``b = 1``.
* ``sync`` (Sync-ST, the FedAST demo's ``sync_run``): each round the busy-client
  budget is split into disjoint random groups, one per active task; each task
  keeps its first ``C`` finishers (``sync_rule="first_c"``, ``C`` capped at the
  group size; ``"fraction"`` keeps a fraction of the group instead) and
  averages them; the round ends at the slowest task's ``C``-th finisher; a
  dropped straggler keeps its client busy until its job would have finished.
* ``sequential``: Sync-ST rounds for one task at a time, all clients to it.

Client model: each client has a fixed speed factor (25% slow x1.3, 50% normal,
25% fast x0.7); a job of task m on client c lasts
``scale x (Exp(mean=exp_mean_m s_c) + shift_m s_c)`` and starts when the client
is free (jobs on one client run back to back); at most ``max_busy_clients``
distinct clients are busy at once in the asynchronous methods (a draw that
would exceed it is skipped).

Example:

>>> import numpy as np, optax
>>> x = np.random.default_rng(0).normal(size=(20, 2, 4, 3)).astype(np.float32)
>>> task = Task(name="lin", init_params={"w": np.zeros((3, 2), np.float32)},
...             loss_fn=lambda p, xb, yb: optax.softmax_cross_entropy_with_integer_labels(xb @ p["w"], yb),
...             eval_fn=lambda p: 0.0, x=x, y=(x[..., 0] > 0).astype(np.int32), target=1.0)
>>> sim = Simulation([task], RuntimeConfig(num_clients=20, max_busy_clients=10, total_jobs=4, ratio=2,
...                                        max_time=20.0))
>>> sim.run()
>>> sim.clock >= 20.0, sim.version[0] > 0
(True, True)
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from fed import fedast_rules as rules
from fed import fedast_sync
from fed.fedast_config import METHODS, STALENESS, SYNC_RULES, Job, RuntimeConfig, check_tasks  # noqa: F401
from fed.fedast_jobs import MODES, JobTrainer, Task, default_mode  # noqa: F401  (public here too)
from fed.fedast_rules import allocate_blocks, normalized_spread, staleness_weight  # noqa: F401
from fed.fedast_state import load_state, save_state
from paperlab import metrics

class Simulation:
  """The event-driven runtime for one method on a list of tasks.

  `run` advances until every task reached its target (or ``max_time``);
  `step` is one delivered job (asynchronous methods) or one round (Sync-ST,
  sequential). `state_dict` / `load_state_dict` capture the whole runtime
  (models, buffers, versions still referenced by jobs in flight, computed
  results, the event queue, the clock, client occupancy and the RNG), so a run
  restored from a checkpoint continues with the identical trace. A model or an
  accuracy that turns NaN or infinite stops the run with
  `paperlab.metrics.NonFiniteError` (its ``step`` is the event count).
  """

  def __init__(self, tasks: Sequence[Task], cfg: RuntimeConfig):
    cfg.validate()
    check_tasks(tasks, cfg)
    self.tasks = list(tasks)
    self.cfg = cfg
    self.trainers = [JobTrainer(t, mode=cfg.executor) for t in tasks]
    self.treedefs = [jax.tree.structure(t.init_params) for t in tasks]
    m = len(tasks)
    setup = np.random.default_rng([cfg.seed, 1])
    self.speed = np.asarray(cfg.speed_factors)[
        setup.choice(len(cfg.speed_factors), size=cfg.num_clients, p=cfg.speed_probs)]
    self.rng = np.random.default_rng([cfg.seed, 2])
    self.clock = 0.0
    self.seq = 0
    self.heap: list[Job] = []
    self.free_at = np.zeros(cfg.num_clients)
    self.jobs_on = np.zeros(cfg.num_clients, np.int64)
    self.params = [jax.device_get(t.init_params) for t in tasks]
    self.version = [0] * m
    self.versions: list[dict[int, Any]] = [{0: p} for p in self.params]  # referenced start versions
    self.results: list[dict[int, Any]] = [{} for _ in range(m)]  # computed, undelivered deltas by seq
    self.buffer: list[list[tuple[Any, float]]] = [[] for _ in range(m)]  # (delta, weight)
    self.window: list[list[Any]] = [[] for _ in range(m)]
    self.spread: list[list[float]] = [[] for _ in range(m)]
    block = cfg.ratio if cfg.method == "fedast" else 1
    self.budget = rules.allocate_blocks([1.0] * m, [True] * m, cfg.total_jobs, block) if cfg.asynchronous \
        else [0] * m
    self.active = [0] * m
    self.done_time: list[float | None] = [None] * m
    self.received = 0
    self.since_realloc = 0
    self.round = 0
    # eval: [time, task, version, accuracy]; deliveries: [time, task, client, start version];
    # realloc: [time, mean spread per task (None: none), new budget]
    self.trace: dict[str, Any] = {"eval": [], "staleness": [[] for _ in range(m)], "alloc": [], "realloc": [],
                                  "deliveries": [], "jobs_done": 0, "jobs_started": 0}
    self.computed_batches = 0
    self._count_refs()
    self._record_alloc()
    for i in range(m):
      self._evaluate(i)

  # -- bookkeeping -------------------------------------------------------------

  @property
  def finished(self) -> bool:
    return all(t is not None for t in self.done_time) or self.clock >= self.cfg.max_time

  @property
  def events(self) -> int:
    """Delivered jobs plus synchronous rounds: a monotone count of `step` calls."""
    return self.received + self.round

  def _is_active(self) -> list[bool]:
    return [t is None for t in self.done_time]

  def _active_tasks(self) -> list[int]:
    return [i for i, t in enumerate(self.done_time) if t is None]

  def _record_alloc(self) -> None:
    self.trace["alloc"].append([self.clock] + list(self.budget))

  def _duration(self, task: int, client: int) -> float:
    t = self.tasks[task]
    s = self.speed[client]
    return float(self.cfg.duration_scale * (self.rng.exponential(t.exp_mean * s) + t.shift * s))

  def _count_refs(self) -> None:
    """Jobs in flight per (task, start version) and busy clients, derived from the queue."""
    self.refs = [collections.Counter() for _ in self.tasks]
    for e in self.heap:
      self.refs[e.task][e.version] += 1
    self.busy = int(np.count_nonzero(self.jobs_on))

  def _gc_version(self, task: int, version: int) -> None:
    """Drops a stored model version once it is not current and no job in flight needs it."""
    if version != self.version[task] and self.refs[task][version] <= 0:
      self.versions[task].pop(version, None)
      self.refs[task].pop(version, None)

  def _evaluate(self, task: int) -> None:
    bad = metrics.nonfinite_leaves(self.params[task])
    if bad:
      raise metrics.NonFiniteError(
          f"Task {self.tasks[task].name!r}: non-finite model leaves {bad} at event {self.events} (simulated "
          f"time {self.clock:.1f}, version {self.version[task]}); lower its global or local learning rate.",
          step=self.events)
    acc = float(self.tasks[task].eval_fn(self.params[task]))
    metrics.check_finite(self.events, {f"accuracy {self.tasks[task].name}": acc})
    self.trace["eval"].append([self.clock, task, self.version[task], acc])
    if self.done_time[task] is None and acc >= self.tasks[task].target:
      self.done_time[task] = float(self.clock)
      self._release(task)

  def _release(self, task: int) -> None:
    """A finished task's jobs leave the queue and its budget goes to the others."""
    self.heap = [e for e in self.heap if e.task != task]
    heapq.heapify(self.heap)
    self.versions[task], self.results[task], self.buffer[task] = {}, {}, []
    self.active[task] = 0
    self.jobs_on[:] = 0
    for e in self.heap:
      self.jobs_on[e.client] += 1
    self._count_refs()
    if self.cfg.asynchronous:
      self.budget = rules.release_budget(self.budget, task, self._is_active())
      self._record_alloc()

  # -- FedAST --------------------------------------------------------------------

  def _dispatch(self, task: int, client: int | None = None) -> bool:
    cfg = self.cfg
    if client is None:
      client = int(self.rng.integers(cfg.num_clients))
      if self.busy >= cfg.max_busy_clients and self.jobs_on[client] == 0:
        return False  # skip this draw: the cap on busy clients is reached
      if self.jobs_on[client] >= cfg.max_jobs_per_client:
        return False  # this client's queue is full
    start = max(self.clock, float(self.free_at[client]))
    finish = start + self._duration(task, client)
    self.free_at[client] = finish
    self.busy += int(self.jobs_on[client] == 0)
    self.jobs_on[client] += 1
    self.refs[task][self.version[task]] += 1
    self.active[task] += 1
    heapq.heappush(self.heap, Job(finish, self.seq, task, client, self.version[task], self.clock))
    self.seq += 1
    self.trace["jobs_started"] += 1
    return True

  def _compute(self, task: int) -> None:
    """Trains every in-flight, not yet computed job of ``task`` (one batched call)."""
    pending = [e for e in self.heap if e.task == task and e.seq not in self.results[task]]
    if not pending:
      return
    deltas = self.trainers[task].compute([self.versions[task][e.version] for e in pending],
                                         [e.client for e in pending])
    for e, d in zip(pending, deltas):
      self.results[task][e.seq] = d
    self.computed_batches += 1

  def _top_up(self) -> None:
    cfg = self.cfg
    for task in self._active_tasks():
      for _ in range(cfg.spawn_per_event):
        if self.active[task] >= self.budget[task] or sum(self.active) >= cfg.total_jobs:
          break
        self._dispatch(task)

  def _maybe_realloc(self) -> None:
    cfg = self.cfg
    active = self._is_active()
    if cfg.method != "fedast" or not rules.realloc_due(self.since_realloc, cfg.total_jobs, self.version, active,
                                                       cfg.window):
      return
    scores = rules.realloc_scores(self.spread, active)
    self.budget = rules.allocate_blocks(scores, active, cfg.total_jobs, cfg.ratio)
    means = [float(np.mean(s)) if a and s else None for s, a in zip(self.spread, active)]
    self.trace["realloc"].append([self.clock, means, list(self.budget)])
    for i in self._active_tasks():
      self.spread[i] = []
    self.since_realloc = 0
    self._record_alloc()

  def _deliver(self) -> None:
    head = self.heap[0]
    if head.seq not in self.results[head.task]:
      self._compute(head.task)  # with the job still in the queue, so it is part of the batch
    job = heapq.heappop(self.heap)
    task = job.task
    self.clock = job.finish
    self.jobs_on[job.client] -= 1
    self.busy -= int(self.jobs_on[job.client] == 0)
    self.active[task] -= 1
    delta = self.results[task].pop(job.seq)
    staleness = self.version[task] - job.version
    self.trace["staleness"][task].append(staleness)
    self.trace["deliveries"].append([job.finish, task, job.client, job.version])
    self.trace["jobs_done"] += 1
    self.received += 1
    self.since_realloc += 1
    cfg = self.cfg
    self.buffer[task].append((delta, rules.staleness_weight(staleness, cfg.staleness, cfg.staleness_exponent)))
    if cfg.method == "fedast":
      self.window[task].append(delta)
      if len(self.window[task]) == cfg.window:  # consecutive, non-overlapping windows
        self.spread[task].append(rules.normalized_spread(self.window[task]))
        self.window[task] = []
    if len(self.buffer[task]) >= rules.buffer_size(cfg.method, self.budget[task], cfg.ratio, cfg.static_buffer):
      deltas, weights = zip(*self.buffer[task])
      self.buffer[task] = []
      self._apply(task, rules.aggregate_buffer(self.params[task], deltas, weights, self.tasks[task].global_lr))
    self.refs[task][job.version] -= 1
    self._gc_version(task, job.version)
    if not self.finished:
      self._maybe_realloc()
      self._top_up()

  def _apply(self, task: int, params: Any) -> None:
    """Installs a new server model of ``task`` (next version) and evaluates when due."""
    self.params[task] = params
    self.version[task] += 1
    self.versions[task][self.version[task]] = params
    self._gc_version(task, self.version[task] - 1)
    if self.version[task] % self.cfg.eval_every == 0:
      self._evaluate(task)

  # -- driver ------------------------------------------------------------------

  def start(self) -> None:
    """Initial dispatch (asynchronous methods): each task's budget, on random clients."""
    if self.cfg.asynchronous and self.seq == 0:
      for task in self._active_tasks():
        tries = 0
        while self.active[task] < self.budget[task] and tries < 100 * self.cfg.total_jobs:
          self._dispatch(task)
          tries += 1

  def step(self) -> None:
    """One event (asynchronous) or one round (synchronous)."""
    if self.cfg.asynchronous:
      if not self.heap:
        self._top_up()
        if not self.heap:
          raise RuntimeError("No job in flight: the client cap blocks every dispatch.")
      self._deliver()
    else:
      fedast_sync.sync_round(self)
    if any(v >= self.cfg.max_versions for v in self.version):
      raise RuntimeError(f"A task exceeded max_versions={self.cfg.max_versions} without reaching its target.")

  def run(self, *, max_events: int | None = None, callback: Callable[["Simulation"], None] | None = None) -> None:
    """Advances until every task is done, ``max_time``, or ``max_events`` steps."""
    self.start()
    n = 0
    while not self.finished and (max_events is None or n < max_events):
      self.step()
      n += 1
      if callback is not None:
        callback(self)

  def summary(self) -> dict[str, Any]:
    """Per-task times to target, final accuracies, versions, jobs, mean staleness."""
    times = self.done_time
    return {"method": self.cfg.method, "seed": self.cfg.seed,
            "task_times": {t.name: times[i] for i, t in enumerate(self.tasks)},
            "all_done_time": max(times) if all(x is not None for x in times) else None,
            "final_acc": {t.name: self._last_acc(i) for i, t in enumerate(self.tasks)},
            "versions": {t.name: self.version[i] for i, t in enumerate(self.tasks)},
            "jobs_done": self.trace["jobs_done"], "jobs_started": self.trace["jobs_started"],
            "clock": self.clock,
            "mean_staleness": {t.name: float(np.mean(self.trace["staleness"][i])) if self.trace["staleness"][i]
                               else 0.0 for i, t in enumerate(self.tasks)}}

  def _last_acc(self, task: int) -> float | None:
    accs = [e[3] for e in self.trace["eval"] if e[1] == task]
    return accs[-1] if accs else None

  # -- checkpointing -------------------------------------------------------------

  def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)`` for `paperlab.checkpoint.save_flat`."""
    return save_state(self)

  def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Restores a `state_dict` (same tasks and config)."""
    load_state(self, arrays, meta)
