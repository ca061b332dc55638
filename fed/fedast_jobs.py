"""FedAST tasks and their batched local training.

A `Task` is one FL task on the shared client pool (model, loss, data, target,
learning rates, job-duration model). A `JobTrainer` computes job results
``x_local - x_start`` after the task's local SGD steps, many jobs per compiled
call: a job's result depends only on its start model, its client's data and
nothing else, so every in-flight job of a task can be trained together while
each keeps its own start version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


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


MODES = ("auto", "map", "vmap", "single")


def default_mode(backend: str | None = None) -> str:
  """The executor `JobTrainer` uses for ``mode="auto"``: the fastest measured on the backend.

  ``"map"`` on CPU (``benchmarks/fedast_jobs.py``: 1.5-2.0x one call per job,
  ahead of ``"vmap"`` there, see ``docs/fedast.md``), ``"vmap"`` on
  accelerators (one wide program).
  """
  return "map" if (backend or jax.default_backend()) == "cpu" else "vmap"


class JobTrainer:
  """Computes job deltas of one task: ``x_local - x_start`` after local SGD.

  Executors (``mode``): ``"vmap"`` trains a chunk of jobs under one `jax.vmap`
  (start params stacked on a leading job axis; chunks of 64 / 8 jobs so only
  two shapes compile), the accelerator choice; ``"map"`` runs the chunk as a
  `lax.map` loop over vmapped groups of 8 inside one program, which removes the
  per-call dispatch on XLA:CPU, where a vmap over per-job parameters becomes
  batched small matmuls; ``"single"`` is one jitted call per job (the
  reference). ``"auto"`` is `default_mode`. `compute` uses the chosen
  executor; `batched` and `single` call one directly.
  """

  def __init__(self, task: Task, mode: str = "auto"):
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if mode == "auto":
      mode = default_mode()
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
    else:  # "map"; "single" keeps it for `batched` calls
      self._batched = jax.jit(lambda ps, cs, x, y: jax.lax.map(
          lambda pc: one_job(pc[0], pc[1], x, y), (ps, cs), batch_size=8))
    self._single = jax.jit(one_job)

  def compute(self, params_list: Sequence[Any], clients: Sequence[int]) -> list[Any]:
    """Deltas of the jobs ``(params_list[j], clients[j])`` with the chosen executor."""
    if self.mode == "single":
      return [self.single(p, c) for p, c in zip(params_list, clients)]
    return self.batched(params_list, clients)

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
    """The delta of one job (one jitted call)."""
    return jax.device_get(self._single(params, np.int32(client), self._x, self._y))
