"""FedAST: buffered asynchronous simultaneous training of several FL tasks.

Askin, Sharma, Joe-Wong and Joshi, "FedAST: Federated Asynchronous
Simultaneous Training", UAI 2024, https://arxiv.org/abs/2406.00302.

M tasks (each a model with its own data, loss and target accuracy) share one
pool of clients. Time is simulated: every job (one client's local training for
one task) takes a random duration, and a priority queue delivers jobs in the
order they finish. The wall-clock cost of the simulation is only the local
training, which is batched: a job's result depends only on its task's model
version at dispatch, its client's data and its own RNG key, so all jobs of a
task that are in flight and not yet computed are trained together in one
vmapped call (`JobTrainer`), while each keeps its own start version.

FedAST server, per task m (``fedast``):

.. math::

   B_m \\leftarrow B_m \\cup \\{w(s)\\,\\Delta\\},\\qquad
   \\text{if } |B_m| \\ge b_m:\\; x_m \\leftarrow x_m + \\frac{\\eta_g}{|B_m|}\\sum_{\\Delta\\in B_m}\\Delta,
   \\; k_m \\leftarrow k_m + 1,\\; B_m \\leftarrow \\emptyset

with ``Delta = x_local - x_m^(k0)`` (the job trained from version ``k0``),
staleness ``s = k_m - k0`` and weight ``w(s) = 1`` (the paper) or
``(1 + s)^(-a)`` (``staleness='polynomial'``, a documented extension). The
buffer size follows the number of active jobs, ``b_m = ceil(R_m_active / r)``;
every ``P = floor(3/4 R_total) x (#active tasks)`` received updates (once each
task has made more than ``window`` versions) the active-job budget is
reallocated ``R_m ∝ sqrt(v_m)``, where ``v_m`` is the mean normalised spread
``sum_j ||Delta_j - mean||^2 / (n ||mean||^2)`` of the task's last ``window``
updates, in blocks of ``r`` jobs with at least one block per active task. A
task that reaches its target releases its jobs to the others (in proportion
to their budgets). ``fedast_static`` keeps R and b fixed; ``fedast_nobuffer``
sets b = 1.

Baselines: ``sync`` (Sync-ST: each round the busy-client budget is split across
the active tasks into disjoint random groups, each task keeps its first C
finishers and averages them, and the round lasts until the slowest accepted
finisher) and ``sequential`` (Sync rounds for one task at a time, all clients
to it).

Client model: each client has a fixed speed factor (25% slow x1.3, 50% normal,
25% fast x0.7); a job of task m on client c lasts
``scale x (Exp(mean=exp_mean_m s_c) + shift_m s_c)``; a client may hold several
jobs, run back to back; at most ``max_busy_clients`` distinct clients are busy
at once (a draw that would exceed it is skipped).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("fedast", "fedast_static", "fedast_nobuffer", "sync", "sequential")
STALENESS = ("constant", "polynomial")


# ---------------------------------------------------------------------------
# Tasks and batched local training


@dataclasses.dataclass(frozen=True)
class Task:
  """One FL task on the shared client pool.

  Attributes:
    name: label.
    init_params: initial model parameters (a pytree of arrays).
    loss_fn: ``(params, x, y) -> per-example losses [B]``.
    eval_fn: ``params -> accuracy`` on the task's test data (host float).
    x, y: client data ``[num_clients, steps, batch, ...]``; a job runs all
      ``steps`` local SGD steps on its client's batches.
    target: accuracy that marks the task as done.
    local_lr: client SGD learning rate.
    global_lr: server learning rate ``eta_g``.
    exp_mean, shift: shifted-exponential job duration (per unit speed).
  """

  name: str
  init_params: Any
  loss_fn: Callable[[Any, Any, Any], jax.Array]
  eval_fn: Callable[[Any], float]
  x: Any
  y: Any
  target: float
  local_lr: float = 0.1
  global_lr: float = 1.0
  exp_mean: float = 1.0
  shift: float = 0.5


def _chunks(n: int, big: int = 64, small: int = 8) -> list[int]:
  """Splits ``n`` jobs into chunk sizes from {big, small}, so jit compiles two shapes only."""
  sizes = [big] * (n // big)
  rest = n - big * len(sizes)
  sizes += [small] * (-(-rest // small))
  return sizes


class JobTrainer:
  """Computes job deltas of one task: ``x_local - x_start`` after local SGD.

  ``batched`` computes many jobs in one compiled call (start params stacked on
  a leading job axis, chunks of 64 / 8 jobs so only two shapes compile);
  ``single`` is the job-by-job reference (one jitted call per job).

  Inside the batched call the jobs run either under `jax.vmap` (``"vmap"``,
  the accelerator choice) or as a `lax.map` loop over vmapped groups of 8 in
  one program (``"map"``). On XLA:CPU a vmap over all per-job parameters
  becomes batched small matmuls, which measured no faster than one call per
  job; the in-program loop removes the per-call dispatch instead (see
  ``benchmarks/fedast_jobs.py`` for the measured speed-up).
  ``"auto"`` picks ``"map"`` on CPU and ``"vmap"`` elsewhere.
  """

  def __init__(self, task: Task, mode: str = "auto"):
    if mode == "auto":
      mode = "map" if jax.default_backend() == "cpu" else "vmap"
    if mode not in ("map", "vmap"):
      raise ValueError(f"mode must be 'auto', 'map' or 'vmap', got {mode!r}.")
    self.mode = mode
    self.task = task
    self._x, self._y = jnp.asarray(task.x), jnp.asarray(task.y)
    loss_fn, lr = task.loss_fn, task.local_lr

    def one_job(params, client, x, y):
      def step(p, batch):
        xb, yb = batch
        grads = jax.grad(lambda q: jnp.mean(loss_fn(q, xb, yb)))(p)
        return jax.tree.map(lambda a, g: a - lr * g, p, grads), None
      local, _ = jax.lax.scan(step, params, (x[client], y[client]))
      return jax.tree.map(jnp.subtract, local, params)

    if mode == "vmap":
      self._batched = jax.jit(jax.vmap(one_job, in_axes=(0, 0, None, None)))
    else:
      self._batched = jax.jit(lambda ps, cs, x, y: jax.lax.map(
          lambda pc: one_job(pc[0], pc[1], x, y), (ps, cs), batch_size=8))
    self._single = jax.jit(one_job)

  def batched(self, params_list: Sequence[Any], clients: Sequence[int]) -> list[Any]:
    n = len(clients)
    out: list[Any] = []
    offset = 0
    for size in _chunks(n):
      idx = [min(i, n - 1) for i in range(offset, offset + size)]  # pad with the last job
      stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *[params_list[i] for i in idx])
      deltas = jax.device_get(self._batched(stacked, np.asarray([clients[i] for i in idx], np.int32),
                                                 self._x, self._y))
      take = min(size, n - offset)
      out += [jax.tree.map(lambda d, j=j: d[j], deltas) for j in range(take)]
      offset += size
    return out

  def single(self, params: Any, client: int) -> Any:
    return jax.device_get(self._single(params, np.int32(client), self._x, self._y))


# ---------------------------------------------------------------------------
# Configuration


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
  window: int = 8  # updates kept per task for the variance estimate
  spawn_per_event: int = 2  # max new jobs per task after each delivered job
  staleness: str = "constant"
  staleness_exponent: float = 0.5
  sync_keep: float = 0.1  # Sync-ST: a task keeps this fraction of its group (first finishers)
  duration_scale: float = 27.0
  speed_factors: tuple[float, ...] = (1.3, 1.0, 0.7)
  speed_probs: tuple[float, ...] = (0.25, 0.5, 0.25)
  eval_every: int = 1  # evaluate a task every this many versions (rounds for sync)
  max_time: float = 1e9  # stop after this much simulated time
  max_versions: int = 100_000  # safety cap on server updates per task
  batched: bool = True  # vmapped job computation (False: job by job)
  seed: int = 0

  def validate(self) -> None:
    if self.method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
    if self.staleness not in STALENESS:
      raise ValueError(f"staleness must be one of {STALENESS}, got {self.staleness!r}.")
    for name in ("num_clients", "max_busy_clients", "max_jobs_per_client", "total_jobs", "ratio", "static_buffer", "window",
                 "spawn_per_event", "eval_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.max_busy_clients > self.num_clients:
      raise ValueError("max_busy_clients cannot exceed num_clients.")
    if not 0 < self.sync_keep <= 1:
      raise ValueError(f"sync_keep must be in (0, 1], got {self.sync_keep}.")
    if len(self.speed_factors) != len(self.speed_probs) or abs(sum(self.speed_probs) - 1) > 1e-6:
      raise ValueError("speed_probs must match speed_factors and sum to 1.")
    if self.staleness_exponent < 0:
      raise ValueError("staleness_exponent must be >= 0.")


def _check_tasks(tasks: Sequence[Task], cfg: RuntimeConfig) -> None:
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
  if cfg.method.startswith("fedast") and cfg.total_jobs < len(tasks):
    raise ValueError(f"total_jobs={cfg.total_jobs} is below the number of tasks ({len(tasks)}).")


def staleness_weight(staleness: int, cfg: RuntimeConfig) -> float:
  """``1`` (constant) or ``(1 + s)^(-a)`` (polynomial)."""
  if cfg.staleness == "constant":
    return 1.0
  return float((1.0 + staleness) ** (-cfg.staleness_exponent))


def normalized_spread(deltas: Sequence[Any]) -> float:
  """``sum_j ||Delta_j - mean||^2 / (n ||mean||^2)`` over flattened updates."""
  flat = np.stack([np.concatenate([np.ravel(a) for a in jax.tree.leaves(d)]) for d in deltas])
  mean = flat.mean(0)
  denom = len(flat) * float(mean @ mean)
  return float(((flat - mean) ** 2).sum() / max(denom, 1e-30))


def allocate_blocks(scores: Sequence[float], active: Sequence[bool], total: int, block: int) -> list[int]:
  """Splits ``total`` jobs over active tasks ∝ ``scores`` in blocks of ``block``.

  Every active task gets at least one block; the remaining blocks go one by one
  to the task with the largest shortfall against its proportional share; jobs
  that do not fill a block go to the task with the largest score. The result
  sums to ``total`` (inactive tasks get 0).
  """
  idx = [i for i, a in enumerate(active) if a]
  out = [0] * len(scores)
  if not idx:
    return out
  blocks = total // block
  if blocks < len(idx):  # too few jobs for a block each: split evenly
    for k, i in enumerate(idx):
      out[i] = total // len(idx) + (1 if k < total % len(idx) else 0)
    return out
  s = np.array([max(scores[i], 0.0) for i in idx], float)
  share = s / s.sum() * blocks if s.sum() > 0 else np.full(len(idx), blocks / len(idx))
  got = np.ones(len(idx), int)
  for _ in range(blocks - len(idx)):
    got[int(np.argmax(share - got))] += 1
  for k, i in enumerate(idx):
    out[i] = int(got[k]) * block
  out[idx[int(np.argmax(s))]] += total - blocks * block
  return out


# ---------------------------------------------------------------------------
# The simulated runtime


def _flatten(tree: Any) -> list[np.ndarray]:
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


class Simulation:
  """The event-driven runtime for one method on a list of tasks.

  Use `run` to advance until every task reached its target (or ``max_time``);
  `state_dict` / `load_state_dict` capture the whole runtime (models, buffers,
  versions still referenced by jobs in flight, computed results, the event
  queue, the clock, client occupancy and the RNG), so a run restored from a
  checkpoint continues with the identical trace.
  """

  def __init__(self, tasks: Sequence[Task], cfg: RuntimeConfig):
    cfg.validate()
    _check_tasks(tasks, cfg)
    self.tasks = list(tasks)
    self.cfg = cfg
    self.trainers = [JobTrainer(t) for t in tasks]
    self._treedefs = [jax.tree.structure(t.init_params) for t in tasks]
    m = len(tasks)
    setup = np.random.default_rng([cfg.seed, 1])
    self.speed = np.asarray(cfg.speed_factors)[
        setup.choice(len(cfg.speed_factors), size=cfg.num_clients, p=cfg.speed_probs)]
    self.rng = np.random.default_rng([cfg.seed, 2])
    self.clock = 0.0
    self.seq = 0
    self.heap: list[tuple[float, int, int, int, int, float]] = []  # finish, seq, task, client, version, start
    self.free_at = np.zeros(cfg.num_clients)
    self.jobs_on = np.zeros(cfg.num_clients, np.int64)
    self.params = [jax.device_get(t.init_params) for t in tasks]
    self.version = [0] * m
    self.versions: list[dict[int, Any]] = [{0: p} for p in self.params]  # referenced start versions
    self.results: list[dict[int, Any]] = [{} for _ in range(m)]  # computed, undelivered deltas
    self.buf_sum: list[Any] = [None] * m
    self.buf_count = [0] * m
    self.window: list[list[Any]] = [[] for _ in range(m)]
    self.spread: list[list[float]] = [[] for _ in range(m)]
    if cfg.method.startswith("fedast"):
      self.budget = allocate_blocks([1.0] * m, [True] * m, cfg.total_jobs,
                                    cfg.ratio if cfg.method == "fedast" else 1)
    else:
      self.budget = [0] * m
    self.active = [0] * m
    self.done_time: list[float | None] = [None] * m
    self.received = 0
    self.since_realloc = 0
    self.round = 0
    # eval: [time, task, version, accuracy]; deliveries: [time, task, client, start version]
    self.trace: dict[str, Any] = {"eval": [], "staleness": [[] for _ in range(m)], "alloc": [],
                                  "deliveries": [], "jobs_done": 0}
    self.computed_batches = 0
    self._count_refs()
    self._record_alloc()
    for i in range(m):
      self._evaluate(i)

  # -- helpers ------------------------------------------------------------

  @property
  def finished(self) -> bool:
    return all(t is not None for t in self.done_time) or self.clock >= self.cfg.max_time

  def _active_tasks(self) -> list[int]:
    return [i for i, t in enumerate(self.done_time) if t is None]

  def _record_alloc(self) -> None:
    self.trace["alloc"].append([self.clock] + list(self.budget))

  def _duration(self, task: int, client: int) -> float:
    t = self.tasks[task]
    s = self.speed[client]
    return self.cfg.duration_scale * (self.rng.exponential(t.exp_mean * s) + t.shift * s)

  def _evaluate(self, task: int) -> None:
    acc = float(self.tasks[task].eval_fn(self.params[task]))
    self.trace["eval"].append([self.clock, task, self.version[task], acc])
    if self.done_time[task] is None and acc >= self.tasks[task].target:
      self.done_time[task] = self.clock
      self._release(task)

  def _release(self, task: int) -> None:
    """A finished task's jobs are dropped and its budget goes to the others."""
    self.heap = [e for e in self.heap if e[2] != task]
    heapq.heapify(self.heap)
    self.versions[task] = {}
    self.results[task] = {}
    self.active[task] = 0
    self.jobs_on[:] = 0
    for e in self.heap:
      self.jobs_on[e[3]] += 1
    self._count_refs()
    rest = self._active_tasks()
    if self.cfg.method.startswith("fedast") and rest:
      freed, self.budget[task] = self.budget[task], 0
      weights = np.array([self.budget[i] for i in rest], float)
      weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(rest), 1 / len(rest))
      extra = np.floor(weights * freed).astype(int)
      extra[np.argmax(weights)] += freed - extra.sum()
      for i, e in zip(rest, extra):
        self.budget[i] += int(e)
      self._record_alloc()

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
    heapq.heappush(self.heap, (finish, self.seq, task, client, self.version[task], self.clock))
    self.seq += 1
    return True

  def _compute(self, task: int) -> None:
    """Trains every in-flight, not yet computed job of ``task`` (one vmapped call)."""
    pending = [e for e in self.heap if e[2] == task and e[1] not in self.results[task]]
    if not pending:
      return
    trainer = self.trainers[task]
    if self.cfg.batched:
      deltas = trainer.batched([self.versions[task][e[4]] for e in pending], [e[3] for e in pending])
    else:
      deltas = [trainer.single(self.versions[task][e[4]], e[3]) for e in pending]
    for e, d in zip(pending, deltas):
      self.results[task][e[1]] = d
    self.computed_batches += 1

  def _count_refs(self) -> None:
    """Jobs in flight per (task, start version) and busy clients, derived from the queue."""
    self.refs = [collections.Counter() for _ in self.tasks]
    for e in self.heap:
      self.refs[e[2]][e[4]] += 1
    self.busy = int(np.count_nonzero(self.jobs_on))

  def _gc_version(self, task: int, version: int) -> None:
    """Drops a stored model version once it is not current and no job in flight needs it."""
    if version != self.version[task] and self.refs[task][version] <= 0:
      self.versions[task].pop(version, None)
      self.refs[task].pop(version, None)

  # -- FedAST ----------------------------------------------------------------

  def _buffer_size(self, task: int) -> int:
    method = self.cfg.method
    if method == "fedast_nobuffer":
      return 1
    if method == "fedast_static":
      return self.cfg.static_buffer
    return max(1, math.ceil(self.budget[task] / self.cfg.ratio))

  def _top_up(self) -> None:
    cfg = self.cfg
    for task in self._active_tasks():
      for _ in range(cfg.spawn_per_event):
        if self.active[task] >= self.budget[task] or sum(self.active) >= cfg.total_jobs:
          break
        self._dispatch(task)

  def _maybe_realloc(self) -> None:
    cfg = self.cfg
    rest = self._active_tasks()
    if cfg.method != "fedast" or len(rest) < 2:
      return
    period = (3 * cfg.total_jobs // 4) * len(rest)
    if self.since_realloc < period or any(self.version[i] <= cfg.window for i in rest):
      return
    scores = [0.0] * len(self.tasks)
    for i in rest:
      if self.spread[i]:
        scores[i] = math.sqrt(float(np.mean(self.spread[i])))
    self.budget = allocate_blocks(scores, [t is None for t in self.done_time], cfg.total_jobs, cfg.ratio)
    for i in rest:
      self.spread[i] = []
    self.since_realloc = 0
    self._record_alloc()

  def _deliver(self) -> None:
    _, seq, task, _, _, _ = self.heap[0]
    if seq not in self.results[task]:
      self._compute(task)  # with the job still in the queue, so it is part of the batch
    finish, seq, task, client, start_version, _ = heapq.heappop(self.heap)
    self.clock = finish
    self.jobs_on[client] -= 1
    self.busy -= int(self.jobs_on[client] == 0)
    self.active[task] -= 1
    delta = self.results[task].pop(seq)
    staleness = self.version[task] - start_version
    self.trace["staleness"][task].append(staleness)
    self.trace["deliveries"].append([finish, task, client, start_version])
    self.trace["jobs_done"] += 1
    self.received += 1
    self.since_realloc += 1
    w = staleness_weight(staleness, self.cfg)
    scaled = jax.tree.map(lambda d: w * d, delta)
    self.buf_sum[task] = scaled if self.buf_sum[task] is None else jax.tree.map(np.add, self.buf_sum[task], scaled)
    self.buf_count[task] += 1
    if self.cfg.method == "fedast":
      self.window[task].append(delta)
      if len(self.window[task]) == self.cfg.window:  # consecutive, non-overlapping windows
        self.spread[task].append(normalized_spread(self.window[task]))
        self.window[task] = []
    if self.buf_count[task] >= self._buffer_size(task):
      lr = self.tasks[task].global_lr / self.buf_count[task]
      self.params[task] = jax.tree.map(lambda p, s: (p + lr * s).astype(p.dtype), self.params[task],
                                       self.buf_sum[task])
      self.version[task] += 1
      self.versions[task][self.version[task]] = self.params[task]
      self._gc_version(task, self.version[task] - 1)
      self.buf_sum[task], self.buf_count[task] = None, 0
      if self.version[task] % self.cfg.eval_every == 0:
        self._evaluate(task)
    self.refs[task][start_version] -= 1
    self._gc_version(task, start_version)
    if not self.finished:
      self._maybe_realloc()
      self._top_up()

  # -- Sync-ST / sequential --------------------------------------------------

  def _sync_round(self) -> None:
    cfg = self.cfg
    rest = self._active_tasks()
    if cfg.method == "sequential":
      rest = rest[:1]
    clients = self.rng.permutation(cfg.num_clients)[:cfg.max_busy_clients]
    groups = np.array_split(clients, len(rest))
    round_time = 0.0
    kept_all = []
    for task, group in zip(rest, groups):
      durations = np.array([self._duration(task, int(c)) for c in group])
      keep = max(1, int(round(cfg.sync_keep * len(group))))
      order = np.argsort(durations, kind="stable")[:keep]
      round_time = max(round_time, float(durations[order[-1]]))
      kept_all.append((task, [int(group[j]) for j in order]))
    self.clock += round_time
    for task, kept in kept_all:
      trainer = self.trainers[task]
      params = self.params[task]
      if cfg.batched:
        deltas = trainer.batched([params] * len(kept), kept)
      else:
        deltas = [trainer.single(params, c) for c in kept]
      mean = jax.tree.map(lambda *ds: np.mean(np.stack(ds), 0), *deltas)
      lr = self.tasks[task].global_lr
      self.params[task] = jax.tree.map(lambda p, d: (p + lr * d).astype(p.dtype), params, mean)
      self.version[task] += 1
      self.trace["staleness"][task].extend([0] * len(kept))
      self.trace["jobs_done"] += len(kept)
      self.received += len(kept)
    self.round += 1
    for task, _ in kept_all:
      if self.version[task] % cfg.eval_every == 0:
        self._evaluate(task)

  # -- driver ----------------------------------------------------------------

  def start(self) -> None:
    """Initial dispatch (async methods): each task's budget, on random clients."""
    if self.cfg.method.startswith("fedast") and self.seq == 0:
      for task in self._active_tasks():
        tries = 0
        while self.active[task] < self.budget[task] and tries < 100 * self.cfg.total_jobs:
          self._dispatch(task)
          tries += 1

  def step(self) -> None:
    """One event (async) or one round (sync)."""
    if self.cfg.method.startswith("fedast"):
      if not self.heap:
        self._top_up()
        if not self.heap:
          raise RuntimeError("No job in flight: the client cap blocks every dispatch.")
      self._deliver()
    else:
      self._sync_round()
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
    times = self.done_time
    return {"method": self.cfg.method, "seed": self.cfg.seed,
            "task_times": {t.name: times[i] for i, t in enumerate(self.tasks)},
            "all_done_time": max(times) if all(x is not None for x in times) else None,
            "final_acc": {t.name: self._last_acc(i) for i, t in enumerate(self.tasks)},
            "versions": {t.name: self.version[i] for i, t in enumerate(self.tasks)},
            "jobs_done": self.trace["jobs_done"], "clock": self.clock,
            "mean_staleness": {t.name: float(np.mean(self.trace["staleness"][i])) if self.trace["staleness"][i]
                               else 0.0 for i, t in enumerate(self.tasks)}}

  def _last_acc(self, task: int) -> float | None:
    accs = [e[3] for e in self.trace["eval"] if e[1] == task]
    return accs[-1] if accs else None

  # -- checkpointing -------------------------------------------------------------

  def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)`` for `paperlab.checkpoint.save_flat`."""
    arrays: dict[str, np.ndarray] = {"free_at": self.free_at, "jobs_on": self.jobs_on}

    def put(prefix, tree):
      for j, leaf in enumerate(_flatten(tree)):
        arrays[f"{prefix}.{j}"] = leaf

    for i in range(len(self.tasks)):
      put(f"params.{i}", self.params[i])
      for k, p in self.versions[i].items():
        put(f"version.{i}.{k}", p)
      for s, d in self.results[i].items():
        put(f"result.{i}.{s}", d)
      if self.buf_sum[i] is not None:
        put(f"buf.{i}", self.buf_sum[i])
      for j, d in enumerate(self.window[i]):
        put(f"window.{i}.{j}", d)
    meta = {"clock": self.clock, "seq": self.seq, "heap": [list(e) for e in self.heap],
            "rng": self.rng.bit_generator.state, "version": self.version,
            "versions": {i: sorted(v) for i, v in enumerate(self.versions)},
            "results": {i: sorted(r) for i, r in enumerate(self.results)},
            "buf_count": self.buf_count, "has_buf": [b is not None for b in self.buf_sum],
            "window_len": [len(w) for w in self.window], "spread": self.spread, "budget": self.budget,
            "active": self.active, "done_time": self.done_time, "received": self.received,
            "since_realloc": self.since_realloc, "round": self.round, "trace": self.trace,
            "method": self.cfg.method}
    return arrays, meta

  def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    if meta["method"] != self.cfg.method:
      raise ValueError(f"Checkpoint is for method {meta['method']!r}, not {self.cfg.method!r}.")

    def get(prefix, i):
      n = self._treedefs[i].num_leaves
      return jax.tree.unflatten(self._treedefs[i], [arrays[f"{prefix}.{j}"] for j in range(n)])

    m = len(self.tasks)
    self.free_at = arrays["free_at"].copy()
    self.jobs_on = arrays["jobs_on"].copy()
    self.clock, self.seq = meta["clock"], meta["seq"]
    self.heap = [tuple(e) for e in meta["heap"]]
    self.heap = [(float(e[0]), int(e[1]), int(e[2]), int(e[3]), int(e[4]), float(e[5])) for e in self.heap]
    heapq.heapify(self.heap)
    self.rng.bit_generator.state = meta["rng"]
    self.version = list(meta["version"])
    self.params = [get(f"params.{i}", i) for i in range(m)]
    self.versions = [{int(k): get(f"version.{i}.{k}", i) for k in meta["versions"][str(i)]} for i in range(m)]
    self.results = [{int(s): get(f"result.{i}.{s}", i) for s in meta["results"][str(i)]} for i in range(m)]
    self.buf_count = list(meta["buf_count"])
    self.buf_sum = [get(f"buf.{i}", i) if meta["has_buf"][i] else None for i in range(m)]
    self.window = [[get(f"window.{i}.{j}", i) for j in range(meta["window_len"][i])] for i in range(m)]
    self.spread = [list(s) for s in meta["spread"]]
    self.budget, self.active = list(meta["budget"]), list(meta["active"])
    self.done_time = list(meta["done_time"])
    self.received, self.since_realloc, self.round = meta["received"], meta["since_realloc"], meta["round"]
    self.trace = meta["trace"]
    self._count_refs()
