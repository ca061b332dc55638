"""Client execution for federated simulation: local training and the client axis.

Local training of one client is a sequence of *phases*. A phase trains one
block of the model (the shared part ``u``, the personal part ``v``, or both)
with a fresh Optax client transform, for one pass (or ``epochs`` passes) over
the client's padded batches. Each step minimizes

.. math::

   \\ell(w) = \\frac{\\sum_b m_b\\, f(u, v; x_b, y_b)}{\\max(1, \\sum_b m_b)}
              + \\frac{\\lambda}{2}\\lVert w - w_0 \\rVert^2,

where ``w`` is the phase's trained block, ``w_0`` its value when the phase
started and ``m`` the example mask. A step whose batch holds no real example,
or that comes after the phase's ``max_steps`` real steps, leaves the whole
state (parameters and optimizer state) unchanged. FedAvg is one ``'shared'``
phase, FedSim one ``'all'`` phase, FedAlt a ``'personal'`` phase followed by a
``'shared'`` phase (see `fed.algorithms`).

Two executors run the same maths:

* `local_train`: `lax.scan` over steps, meant to be `vmap`-ed over clients;
  `map_clients` does that over a chunked client axis (a `lax.scan` over chunks
  of ``chunk_size`` clients, each chunk one `vmap`), optionally sharded over
  the ``'clients'`` axis of a mesh with `jax.shard_map`. Per-client outputs
  that the server sums (deltas) are accumulated inside the scan, so client
  copies never exist for more than one chunk.
* `LoopTrainer`: a Python loop over clients and steps of jitted single steps,
  the way FedJAX's default backend runs clients. It is the reference for
  parity tests and the benchmark baseline.

Dense models are fine inside scan / vmap on XLA:CPU; conv models are not
(conv backward inside `lax.scan` is ~25x slower there): run those with
`LoopTrainer` or on an accelerator.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from paperlab import dots
from paperlab import mesh as mesh_lib

# loss_fn(params, x, y) -> per-example losses [B].
LossFn = Callable[[Any, Any, Any], jax.Array]
# merge(shared, personal, frozen) -> params tree for loss_fn.
MergeFn = Callable[[Any, Any, Any], Any]

TRAIN_BLOCKS = ("shared", "personal", "all")
_NO_CAP = np.iinfo(np.int32).max

# Clients per vmap when none is given, per backend: the fastest setting measured by
# `benchmarks/fed_round.py` (see docs/fed_partial.md). None: the whole client axis at once
# (not measured on accelerators here; there a larger vmap keeps the device busy).
DEFAULT_CHUNK_SIZE = {"cpu": 2}


def default_chunk_size(backend: str | None = None) -> int | None:
  """The default ``chunk_size`` of `map_clients` on ``backend`` (default: JAX's)."""
  return DEFAULT_CHUNK_SIZE.get(backend or jax.default_backend())


class ClientData(NamedTuple):
  """Padded per-client data: ``x`` / ``y`` ``[C, S, B, ...]``, bool ``mask`` ``[C, S, B]``."""

  x: Any
  y: Any
  mask: Any
  num_examples: Any  # int [C]: real examples per client

  @classmethod
  def from_packed(cls, packed) -> "ClientData":
    """From a `paperlab.federated.ClientArrays`."""
    return cls(packed.x, packed.y, packed.mask, packed.num_examples)

  def select(self, clients) -> "ClientData":
    return ClientData(*(a[clients] for a in self))


@dataclasses.dataclass(frozen=True)
class Phase:
  """One block of local training.

  Attributes:
    train: ``'shared'``, ``'personal'`` or ``'all'`` (both jointly).
    tx: client Optax transform, initialised fresh at the start of the phase.
    max_steps: cap on the number of real steps (None: every real batch of
      every epoch).
    prox: coefficient ``lambda`` of ``(lambda/2) ||w - w_0||^2``, with ``w_0``
      the regularized block's value at the start of the phase (None: no
      proximal term, and no copy of ``w_0`` is kept).
    prox_block: which block the proximal term acts on (``'shared'``,
      ``'personal'`` or ``'all'``; None: the trained block).
  """

  train: str
  tx: optax.GradientTransformation
  max_steps: int | None = None
  prox: float | None = None
  prox_block: str | None = None

  @property
  def regularized(self) -> str:
    return self.train if self.prox_block is None else self.prox_block

  def __post_init__(self):
    if self.train not in TRAIN_BLOCKS:
      raise ValueError(f"Phase.train must be one of {TRAIN_BLOCKS}, got {self.train!r}.")
    if self.max_steps is not None and self.max_steps < 0:
      raise ValueError(f"Phase.max_steps must be >= 0 or None, got {self.max_steps}.")
    if self.prox is not None and self.prox < 0:
      raise ValueError(f"Phase.prox must be >= 0, got {self.prox}.")
    if self.prox_block not in (None,) + TRAIN_BLOCKS:
      raise ValueError(f"Phase.prox_block must be None or one of {TRAIN_BLOCKS}, "
                       f"got {self.prox_block!r}.")


class LocalState(NamedTuple):
  u: Any
  v: Any
  opt_state: Any
  steps: jax.Array  # real steps taken in this phase


def _take(train: str, u, v):
  return {"shared": u, "personal": v, "all": (u, v)}[train]


def _put(train: str, w, u, v):
  if train == "shared":
    return w, v
  if train == "personal":
    return u, w
  return w


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  m = mask.astype(values.dtype)
  return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def _sq_dist(a, b) -> jax.Array:
  return sum((jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))),
             jnp.zeros(()))


def phase_init(phase: Phase, u, v) -> tuple[LocalState, Any]:
  """``(state, centre)``: fresh optimizer state, and the proximal centre (None without prox)."""
  centre = None if phase.prox is None else _take(phase.regularized, u, v)
  return (LocalState(u, v, phase.tx.init(_take(phase.train, u, v)), jnp.zeros((), jnp.int32)),
          centre)


def phase_step(loss_fn: LossFn, merge: MergeFn, phase: Phase, state: LocalState, centre, frozen,
               x, y, mask, lr_scale) -> tuple[LocalState, jax.Array, jax.Array]:
  """One (possibly inactive) local step. Returns ``(state, loss, active)``.

  An inactive step adds a zero update (``where``, so a non-finite gradient
  cannot leak in) and keeps the old optimizer state.
  """
  w = _take(phase.train, state.u, state.v)

  def objective(w, context):
    (u, v), centre, frozen, x, y, mask = context
    u, v = _put(phase.train, w, u, v)
    loss = masked_mean(loss_fn(merge(u, v, frozen), x, y), mask)
    if centre is None:
      return loss, loss
    reg = _sq_dist(_take(phase.regularized, u, v), centre)
    return loss + 0.5 * phase.prox * reg, loss

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  if dots.default_for_backend():  # weight gradients as plain (m, k) @ (k, n) products on CPU
    grad_fn = dots.contract_minor(grad_fn)
  (_, loss), grads = grad_fn(w, ((state.u, state.v), centre, frozen, x, y, mask))
  updates, opt_state = phase.tx.update(grads, state.opt_state, w)
  cap = _NO_CAP if phase.max_steps is None else phase.max_steps
  active = jnp.any(mask) & (state.steps < cap)
  updates = jax.tree.map(lambda g: jnp.where(active, lr_scale * g, jnp.zeros_like(g)), updates)
  u, v = _put(phase.train, optax.apply_updates(w, updates), state.u, state.v)
  opt_state = jax.tree.map(lambda a, b: jnp.where(active, a, b), opt_state, state.opt_state)
  return LocalState(u, v, opt_state, state.steps + active.astype(jnp.int32)), loss, active


def local_train(loss_fn: LossFn, merge: MergeFn, phases: Sequence[Phase], u, v, frozen, x, y,
                mask, *, epochs: int = 1, lr_scale=1.0) -> tuple[Any, Any, dict[str, jax.Array]]:
  """Runs ``phases`` for one client with `lax.scan` over its ``[S, B, ...]`` batches.

  Returns:
    ``(u, v, metrics)``: the client's final blocks, and per phase ``k``
    ``loss_k`` (mean loss over the phase's real steps) and ``steps_k``.
  """
  x, y, mask = jax.tree.map(jnp.asarray, (x, y, mask))
  num = mask.shape[0]
  metrics = {}
  for k, phase in enumerate(phases):
    state, centre = phase_init(phase, u, v)

    def body(state, t, phase=phase, centre=centre):
      i = t % num
      state, loss, active = phase_step(loss_fn, merge, phase, state, centre, frozen, x[i], y[i],
                                       mask[i], lr_scale)
      return state, (loss, active)
    # The first step runs outside the scan: under a vmap over clients the starting
    # blocks are then still shared (unbatched), so its forward products take every
    # client of the chunk in one larger GEMM and no per-client copy of them is made.
    if epochs * num > 0:
      state, first = body(state, jnp.zeros((), jnp.int32))
      state, rest = jax.lax.scan(body, state, jnp.arange(1, epochs * num))
      losses, active = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    else:
      state, (losses, active) = jax.lax.scan(body, state, jnp.arange(0))
    u, v = state.u, state.v
    metrics[f"loss_{k}"] = masked_mean(losses, active)
    metrics[f"steps_{k}"] = state.steps
  return u, v, metrics


# ---------------------------------------------------------------------------
# The client axis: chunked vmap, sharded over a mesh


def _pad_rows(tree, total: int):
  def pad(a):
    a = jnp.asarray(a)
    return jnp.pad(a, [(0, total - a.shape[0])] + [(0, 0)] * (a.ndim - 1))
  return jax.tree.map(pad, tree)


_UNROLLED_SUM = 16  # chunks up to this size sum their clients in one elementwise expression


def _add_weighted(w, acc, s):
  """``acc + sum_j w[j] s[j]``. For a few clients one elementwise expression, which XLA fuses
  with the clients' outputs (e.g. the deltas ``u - u_i``) instead of materialising them for a
  dot (measured ~10% of a 784-256-10 FedAvg round on one CPU core)."""
  if s.shape[0] <= _UNROLLED_SUM:
    return acc + sum(w[j].astype(s.dtype) * s[j] for j in range(s.shape[0]))
  return acc + jnp.tensordot(w.astype(s.dtype), s, axes=1)


def map_clients(fn: Callable[[Any, Any], tuple[Any, Any]], broadcast: Any, clients: Any,
                weights: jax.Array, *, chunk_size: int | None = None,
                mesh: Mesh | None = None) -> tuple[Any, Any]:
  """Runs ``fn`` over the client axis: a weighted sum of one output, a stack of the other.

  ``fn(broadcast, client) -> (summed, kept)`` handles one client (``client``
  is one row of every leaf of ``clients``). Clients go in chunks of
  ``chunk_size`` (one `vmap` per chunk, a `lax.scan` over chunks; None: the
  backend's `default_chunk_size`, and all of a device's clients at once where
  that is None; a chunk never exceeds a device's client count); with a
  ``mesh``, the client axis is first split over its ``'clients'`` axis
  (`jax.shard_map`, partial sums combined with ``psum``). The client count is
  padded to a multiple of ``devices * chunk_size`` with rows of zeros (zero
  data and mask, or index 0 where clients are given by index) that weigh 0 in
  the sum and are dropped from ``kept``; ``fn`` must map such a row to finite
  outputs (all-masked local training does, and so does training on a real
  client's data).

  Returns:
    ``(sum_i weights[i] * summed_i, kept)`` with ``kept`` stacked ``[C, ...]``.
  """
  weights = jnp.asarray(weights, jnp.float32)
  count = int(weights.shape[0])
  devices = mesh_lib.axis_size(mesh, mesh_lib.CLIENTS) if mesh is not None else 1
  per_device = -(-count // devices)
  if chunk_size is None:
    chunk_size = default_chunk_size()
  chunk = per_device if chunk_size is None else max(1, min(int(chunk_size), per_device))
  per_device = -(-per_device // chunk) * chunk
  total = per_device * devices
  clients = _pad_rows(clients, total)
  weights = _pad_rows(weights, total)
  one = jax.tree.map(lambda a: a[:1], clients)
  summed_shape = jax.eval_shape(lambda c: jax.vmap(fn, in_axes=(None, 0))(broadcast, c)[0], one)

  def local(broadcast, clients, weights):
    num_chunks = weights.shape[0] // chunk
    chunks = jax.tree.map(lambda a: a.reshape((num_chunks, chunk) + a.shape[1:]), clients)
    acc0 = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), summed_shape)

    def body(acc, inputs):
      block, w = inputs
      summed, kept = jax.vmap(fn, in_axes=(None, 0))(broadcast, block)
      acc = jax.tree.map(functools.partial(_add_weighted, w), acc, summed)
      return acc, kept

    acc, kept = jax.lax.scan(body, acc0, (chunks, weights.reshape(num_chunks, chunk)))
    kept = jax.tree.map(lambda a: a.reshape((num_chunks * chunk,) + a.shape[2:]), kept)
    if mesh is not None:
      acc = jax.lax.psum(acc, mesh_lib.CLIENTS)
    return acc, kept

  if mesh is not None:
    rows = PartitionSpec(mesh_lib.CLIENTS)
    local = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), rows, rows),
                          out_specs=(PartitionSpec(), rows), check_vma=False)
  acc, kept = local(broadcast, clients, weights)
  return acc, jax.tree.map(lambda a: a[:count], kept)


# ---------------------------------------------------------------------------
# Python-loop executor (FedJAX-style): the parity reference and benchmark baseline


class LoopTrainer:
  """Local training as a Python loop over real batches of a jitted single step.

  Same maths as `local_train` (inactive steps are skipped instead of masked).
  ``x``, ``y``, ``mask`` are host (NumPy) arrays of one client.
  """

  def __init__(self, loss_fn: LossFn, merge: MergeFn, phases: Sequence[Phase]):
    self.phases = tuple(phases)
    self._init = [jax.jit(functools.partial(phase_init, p)) for p in self.phases]
    self._step = [jax.jit(functools.partial(phase_step, loss_fn, merge, p)) for p in self.phases]

  def __call__(self, u, v, frozen, x, y, mask, *, epochs: int = 1, lr_scale=1.0):
    mask = np.asarray(mask)
    lr_scale = jnp.asarray(lr_scale, jnp.float32)
    metrics = {}
    for k, phase in enumerate(self.phases):
      state, centre = self._init[k](u, v)
      cap = _NO_CAP if phase.max_steps is None else phase.max_steps
      losses = []
      for _ in range(epochs):
        for s in range(mask.shape[0]):
          if not mask[s].any() or len(losses) >= cap:
            continue
          state, loss, _ = self._step[k](state, centre, frozen, x[s], y[s], mask[s], lr_scale)
          losses.append(loss)
      u, v = state.u, state.v
      metrics[f"loss_{k}"] = jnp.mean(jnp.stack(losses)) if losses else jnp.zeros(())
      metrics[f"steps_{k}"] = jnp.asarray(len(losses), jnp.int32)
    return u, v, metrics


# ---------------------------------------------------------------------------
# Per-client evaluation and summaries


def client_sums(metric_fn: Callable[[Any, Any, Any], dict[str, jax.Array]], params, x, y,
                mask) -> dict[str, jax.Array]:
  """Masked sums of per-example metrics over one client's ``[S, B, ...]`` batches, plus ``count``."""
  def body(acc, batch):
    xb, yb, mb = batch
    values = metric_fn(params, xb, yb)
    m = mb.astype(jnp.float32)
    acc = {k: acc[k] + jnp.sum(values[k] * m) for k in values} | {"count": acc["count"] + m.sum()}
    return acc, None
  shapes = jax.eval_shape(metric_fn, params, x[0], y[0])
  acc0 = {k: jnp.zeros((), jnp.float32) for k in shapes} | {"count": jnp.zeros((), jnp.float32)}
  acc, _ = jax.lax.scan(body, acc0, (x, y, mask))
  return acc


def summarize(per_client: dict[str, np.ndarray], *, percentile: float = 10.0) -> dict[str, float]:
  """Size-weighted mean and ``percentile``-th percentile across clients of each metric.

  ``per_client`` holds masked sums per client and their ``count``; clients
  without examples are left out.
  """
  count = np.asarray(per_client["count"], np.float64)
  keep = count > 0
  out = {"clients": int(keep.sum())}
  for key, sums in per_client.items():
    if key == "count":
      continue
    sums = np.asarray(sums, np.float64)[keep]
    mean_per_client = sums / count[keep]
    out[f"{key}_mean"] = float(sums.sum() / count[keep].sum())
    out[f"{key}_p{int(percentile)}"] = float(np.percentile(mean_per_client, percentile))
  return out
