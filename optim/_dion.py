"""Dion: distributed orthonormalized low-rank updates (Ahn et al., 2025).

Dion replaces Muon's full Newton-Schulz orthonormalisation by one warm-started
power iteration on a rank-``r`` basis with error feedback, so every collective
a sharded update needs moves only ``(rows x r)`` or ``(r x r)`` matrices.

Layout convention: Flax kernels are ``(fan_in, fan_out)``, i.e. the transpose of
the torch ``(out, in)`` layout the paper uses. The update is scaled by
``sqrt(fan_out / fan_in) = sqrt(shape[-1] / shape[-2])`` (no ``max(1, .)``).
Leaves with more than two dimensions are stacks of same-shape matrices (e.g.
scanned layers): the last two axes are ``(fan_in, fan_out)``, the leading axes
are handled batched.

References:
  Ahn, Xu, Abreu, Langford, `Dion: Distributed Orthonormalized Updates
  <https://arxiv.org/abs/2504.05295>`_, 2025.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paperlab import mesh as mesh_lib
from optim import labels as labels_lib
from optim import orthogonalize as orth

# Arguments that fix array shapes or code paths; pass them as ``static_args`` to
# `optax.inject_hyperparams` (for `scale_by_dion` and for `dion` respectively).
STATIC_ARGS = ("rank_fraction", "rank_multiple_of", "power_iters", "qr_method", "oversample",
               "momentum_dtype", "key", "mesh", "specs", "data_axis", "fsdp_axis", "tp_axis",
               "group_same_shape", "precision")
DION_STATIC_ARGS = STATIC_ARGS + ("labels", "scalar_optimizer")


@jax.tree_util.register_pytree_node_class
class DionConfig:
  """The shape-fixing settings of `scale_by_dion`, kept in its state as static data.

  A pytree node with no leaves: under ``jit`` it travels in the tree structure,
  so `update` reads the values `init` saw even when `optax.inject_hyperparams`
  hands the factory traced arrays for them.
  """

  def __init__(self, rank_fraction: float, rank_multiple_of: int, power_iters: int,
               oversample: float):
    self.rank_fraction, self.rank_multiple_of = rank_fraction, rank_multiple_of
    self.power_iters, self.oversample = power_iters, oversample

  def tree_flatten(self):
    return (), (self.rank_fraction, self.rank_multiple_of, self.power_iters, self.oversample)

  @classmethod
  def tree_unflatten(cls, aux, children):
    del children
    return cls(*aux)

  def __repr__(self):
    return (f"DionConfig(rank_fraction={self.rank_fraction}, rank_multiple_of="
            f"{self.rank_multiple_of}, power_iters={self.power_iters}, "
            f"oversample={self.oversample})")


def _python_number(name: str, value: Any, kind: type) -> Any:
  """A Python number from a number or a concrete 0-d array; ``None`` for a tracer.

  `optax.inject_hyperparams` turns every numeric argument into an array (in the
  parameter dtype): ``float32(0.3)`` comes back as ``0.3``, not 0.30000001.
  """
  if isinstance(value, bool):
    raise ValueError(f"{name} must be a number, got {value!r}.")
  if isinstance(value, (int, float)):
    return value
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    arr = np.asarray(value)
  except (TypeError, ValueError):
    return value  # a bad value: reported by the checks
  if arr.shape != () or not np.issubdtype(arr.dtype, np.number):
    return value
  if kind is int:
    return int(arr)
  return float(np.format_float_positional(arr[()], unique=True))


class ScaleByDionState(NamedTuple):
  """State of `scale_by_dion`.

  Attributes:
    count: number of updates so far (int32 scalar).
    key: PRNG key; the initial ``Q`` and every RCQR sketch derive from it.
    momentum: ``M`` per leaf, shaped like the parameter.
    q: right factor ``Q`` per leaf, shape ``(*batch, q_dim, r)``.
    nonfinite_count: per leaf, the number of steps (int32) on which ``M + G``
      held a NaN or an infinity, so that the step was skipped for that leaf.
    config: the shape-fixing settings (`DionConfig`, static data, no arrays).
  """
  count: jax.Array
  key: jax.Array
  momentum: Any
  q: Any
  nonfinite_count: Any
  config: Any = None


class LeafPlan(NamedTuple):
  """Static facts about one Dion leaf, derived from its shape and partition spec.

  ``p_last`` says which axis of the Flax ``(fan_in, fan_out)`` matrix is the
  P side (rows of ``P``): the last axis (``True``) or the second to last.
  """
  path: str
  batch: tuple[int, ...]
  p_last: bool
  p_dim: int
  q_dim: int
  rank: int
  scale: float
  batch_spec: Any
  p_spec: Any
  q_spec: Any


def dion_rank(rank_fraction: float, m: int, n: int, rank_multiple_of: int = 1) -> int:
  """``min(ceil_to_multiple(rank_fraction * min(m, n), rank_multiple_of), m, n)``.

  The product is rounded to 9 decimals first so that e.g. ``0.3 * 10`` gives 3,
  not 4; it is never floored.
  """
  raw = round(rank_fraction * min(m, n), 9)
  return max(1, min(math.ceil(raw / rank_multiple_of) * rank_multiple_of, m, n))


def _axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def plan_leaf(path: str, shape: tuple[int, ...], spec: PartitionSpec | None, *,
              rank_fraction: float, rank_multiple_of: int, fsdp_axis: str,
              tp_axis: str) -> LeafPlan:
  """Orientation, rank and shardings of one leaf.

  Orientation rule: a dim sharded over ``tp_axis`` is the P side and a dim
  sharded over ``fsdp_axis`` the Q side; otherwise (unsharded) the longer dim
  is the P side (ties: ``fan_out``), so ``Q`` sits on the short dim.

  Raises:
    ValueError: ``ndim < 2`` or both mesh axes on the same dim, naming the path.
  """
  if len(shape) < 2:
    raise ValueError(
        f"Dion needs a matrix (or a stack of matrices) but leaf {path!r} has shape {shape}; "
        "route vectors, norms, embeddings and heads to a scalar optimizer (optim.labels).")
  entries = tuple(spec or ()) + (None,) * (len(shape) - len(spec or ()))
  ax_in, ax_out = _axes(entries[-2]), _axes(entries[-1])
  for axes in (ax_in, ax_out):
    if fsdp_axis in axes and tp_axis in axes:
      raise ValueError(f"Leaf {path!r} {shape}: {fsdp_axis!r} and {tp_axis!r} shard the same dim.")
  fan_in, fan_out = shape[-2], shape[-1]
  if tp_axis in ax_out or fsdp_axis in ax_in:
    p_last = True
  elif tp_axis in ax_in or fsdp_axis in ax_out:
    p_last = False
  else:
    p_last = fan_out >= fan_in
  p_dim, q_dim = (fan_out, fan_in) if p_last else (fan_in, fan_out)
  p_spec, q_spec = (entries[-1], entries[-2]) if p_last else (entries[-2], entries[-1])
  batch = tuple(shape[:-2])
  batch_spec = entries[0] if len(batch) == 1 else None
  return LeafPlan(path, batch, p_last, p_dim, q_dim,
                  dion_rank(rank_fraction, fan_out, fan_in, rank_multiple_of),
                  math.sqrt(fan_out / fan_in), batch_spec, p_spec, q_spec)


class _Layout:
  """Sharding constraints for the oriented ``(L, p, q)`` arrays of one leaf."""

  def __init__(self, plan: LeafPlan, mesh: Mesh | None):
    self.plan, self.mesh = plan, mesh

  def _c(self, x: jax.Array, *fields: str | None) -> jax.Array:
    if self.mesh is None:  # unsharded (also the plan-less default of `power_step`)
      return x
    spec = PartitionSpec(*(getattr(self.plan, f) if f else None for f in fields))
    return lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

  def full(self, x):  # (L, p, q)
    return self._c(x, "batch_spec", "p_spec", "q_spec")

  def stored(self, x):  # (L, fan_in, fan_out): (L, q, p) if p_last else (L, p, q)
    if self.plan is not None and self.plan.p_last:
      return self._c(x, "batch_spec", "q_spec", "p_spec")
    return self.full(x)

  def tall(self, x):  # (L, p, r)
    return self._c(x, "batch_spec", "p_spec", None)

  def qside(self, x):  # (L, q, r)
    return self._c(x, "batch_spec", "q_spec", None)

  def small(self, x):  # (L, r, r) or (L, k, r)
    return self._c(x, "batch_spec", None, None)

  def wide(self, x):  # (L, r, p): P in rows form
    return self._c(x, "batch_spec", None, "p_spec")

  def sketch(self, x):  # (L, p, k): the transposed RCQR sketch
    return self._c(x, "batch_spec", "p_spec", None)

  def constraints(self) -> dict[str, Any]:
    """``small`` / ``wide`` / ``sketch`` for `orthonormalize_rows` (none when unsharded)."""
    if self.mesh is None:
      return {}
    return {"small": self.small, "wide": self.wide, "sketch": self.sketch}

  def _lead(self) -> tuple[Any, ...]:
    plan = self.plan
    return (plan.batch_spec,) if len(plan.batch) == 1 else (None,) * len(plan.batch)

  def q_state_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(*self._lead(), self.plan.q_spec, None))

  def param_sharding(self) -> NamedSharding:
    plan = self.plan
    two = (plan.q_spec, plan.p_spec) if plan.p_last else (plan.p_spec, plan.q_spec)
    return NamedSharding(self.mesh, PartitionSpec(*self._lead(), *two))


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


class _Leaves(NamedTuple):
  """Flattened tree with masked nodes kept as leaves (so ``optax.partition`` works)."""
  treedef: Any
  flat: list[Any]
  paths: list[str]
  specs: list[Any]

  def arrays(self) -> list[int]:
    return [i for i, x in enumerate(self.flat) if not _is_masked(x)]

  def flatten(self, tree: Any) -> list[Any]:
    return self.treedef.flatten_up_to(tree)

  def unflatten(self, values: dict[int, Any]) -> Any:
    return self.treedef.unflatten([values.get(i, x) for i, x in enumerate(self.flat)])


def _leaves(tree: Any, specs: Any) -> _Leaves:
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_masked)
  if specs is None:
    flat_specs = [None] * len(flat)
  else:
    flat_specs = treedef.flatten_up_to(specs(tree) if callable(specs) else specs)
  return _Leaves(treedef, [x for _, x in flat], [labels_lib.path_str(p) for p, _ in flat],
                 list(flat_specs))


# Matrices with at least this many entries are never stacked with others
# (`group_same_shape`). On one CPU core, 2 x (1024, 4096) float32 leaves took
# 94-104 ms per step stacked against 80-85 ms alone (3 alternating runs, the
# benchmarks/dion_official.py setting): the stack is a copy of M and G, and the
# products P R^T, P Q^T of the whole stack are live at once (67 MB of
# temporaries against 35 MB).
GROUP_MAX_SIZE = 1 << 20


def _groups(planned: dict[int, LeafPlan], leaves: _Leaves, enabled: bool) -> dict[Any, list[int]]:
  """Leaf indices grouped by identical plan (shape, orientation, rank, specs, dtype)."""
  groups: dict[Any, list[int]] = {}
  for i, plan in planned.items():
    if enabled and not plan.batch and plan.p_dim * plan.q_dim < GROUP_MAX_SIZE:
      key = (plan._replace(path=""), leaves.flat[i].dtype)
    else:
      key = ("alone", i)
    groups.setdefault(key, []).append(i)
  return groups


def _column_normalize(r: jax.Array, eps: Any) -> jax.Array:
  return r / (jnp.linalg.norm(r, axis=-2, keepdims=True) + eps)


def _t(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, -1, -2)


def _materialized_t(x: jax.Array) -> jax.Array:
  """``x^T`` written out; the barrier keeps XLA from folding it into a product."""
  return lax.optimization_barrier(_t(x))


# GEMM forms. XLA:CPU runs a product at its GEMM rate when the left operand is
# contracted on its last axis (X Y or X Y^T in row-major terms); with the left
# operand contracted on its leading axis (X^T Y) it was 1.7-2x slower on the
# (1024, 4096) leaves of the benchmark. So P is carried in its rows form
# P^T (L, r, p), small factors are transposed explicitly, and every large
# product below has that fast form; no full matrix is ever transposed.


def _basis_rows(b: jax.Array, q: jax.Array, transposed: bool) -> jax.Array:
  """``P^T = (B Q)^T`` (shape ``(L, r, p)``) from ``B`` or, when ``transposed``, ``B^T``."""
  return jnp.einsum("lrq,lqp->lrp" if transposed else "lrq,lpq->lrp", _t(q), b)


def _right_factor(b: jax.Array, pt: jax.Array, transposed: bool) -> jax.Array:
  """``R = B^T P`` (shape ``(L, q, r)``) from ``P^T``."""
  if transposed:  # b = B^T: R = B^T P = b (P^T)^T
    return jnp.einsum("lqp,lrp->lqr", b, pt)
  # R^T = P^T B, transposed afterwards (small); the barrier keeps the product's layout.
  return _t(lax.optimization_barrier(jnp.einsum("lrp,lpq->lrq", pt, b)))


def _outer(pt: jax.Array, p: jax.Array, x: jax.Array, transposed: bool) -> jax.Array:
  """``P X^T`` (shape ``(L, p, q)``), or its transpose ``X P^T`` when ``transposed``.

  ``pt`` is ``P^T`` and ``p`` the row-major ``P`` (only read when not ``transposed``).
  """
  if transposed:
    return jnp.einsum("lqr,lrp->lqp", x, pt)
  return jnp.einsum("lpr,lqr->lpq", p, x)


class DionStep(NamedTuple):
  """Result of `power_step` on oriented ``(L, p, q)`` matrices."""
  p: jax.Array  # (L, p, r) orthonormal columns (0 where B = 0)
  pt: jax.Array  # (L, r, p) the same, rows form
  r: jax.Array  # (L, q, r) B^T P (the old Q where B = 0)
  momentum: jax.Array  # (L, p, q) B - (1 - mu) P R^T
  q: jax.Array  # (L, q, r) column-normalised R
  direction: jax.Array  # (L, p, q) P Q^T (before the shape scale)


def power_step(b: jax.Array, q: jax.Array, key: jax.Array, *, mu: Any = 0.95, eps: Any = 1e-8,
               qr_method: str = "rcqr", oversample: float = 1.25, power_iters: int = 1,
               layout: Any = None, data_axis: str | None = None,
               transposed: bool = False, zero: jax.Array | None = None) -> DionStep:
  r"""Dion's core on a float32 ``B = M + G`` of shape ``(L, p, q)``.

  .. math::
    P = \mathrm{orth}(B Q),\ R = B^\top P,\ M' = B - (1-\mu) P R^\top,\\
    Q' = R / (\|R_{:,j}\| + \epsilon)

  With ``transposed`` the input is ``B^T`` (shape ``(L, q, p)``) and ``momentum``
  and ``direction`` come back transposed too: the products contract the stored
  axes directly, so no transpose of a full matrix is ever materialised. With
  ``data_axis`` (inside ``shard_map``) ``B Q`` and ``R`` are averaged over the
  axis, which equals the step on the averaged ``B`` since both are linear in it.
  """
  layout = layout or _Layout(None, None)
  sync = (lambda x: lax.pmean(x, data_axis)) if data_axis else (lambda x: x)
  full = layout.stored if transposed else layout.full
  basis = q
  for i in range(power_iters):
    pt = sync(layout.wide(_basis_rows(b, basis, transposed)))
    pt = orth.orthonormalize_rows(pt, qr_method, key=jax.random.fold_in(key, i),
                                  oversample=oversample, **layout.constraints())
    basis = sync(layout.qside(_right_factor(b, pt, transposed)))
  if zero is None:  # per matrix: B = 0 (the caller may know it already)
    zero = jnp.all(b == 0, axis=(-2, -1))
  if data_axis:
    zero = lax.pmin(zero.astype(jnp.int32), data_axis).astype(bool)
  pt = jnp.where(zero[:, None, None], 0.0, pt)
  p = layout.tall(_t(pt) if transposed else _materialized_t(pt))
  r = jnp.where(zero[:, None, None], q, basis)
  new_m = full(b - (1.0 - mu) * _outer(pt, p, r, transposed))
  new_q = layout.qside(_column_normalize(r, eps))
  return DionStep(p, pt, r, new_m, new_q, full(_outer(pt, p, new_q, transposed)))


def _zero_after(x: jax.Array) -> jax.Array:
  """A float32 zero that XLA can only compute once ``x`` is (an ordering edge).

  ``0 * x[0, ..., 0]``, or 0 where that entry is not finite; XLA does not fold
  ``0 * x`` for floats, so whatever adds this value waits for ``x``.
  """
  first = x[(0,) * x.ndim].astype(jnp.float32)
  return jnp.where(jnp.isfinite(first), 0.0 * first, 0.0)


def _dion_leaf(plan: LeafPlan, layout: _Layout, grad: jax.Array, momentum: jax.Array,
               q: jax.Array, key: jax.Array, *, data_axis: str | None, compressed: bool,
               grouped: bool, after: Any = None, **step_kw: Any) -> tuple[jax.Array, ...]:
  """One Dion step for one leaf (or a group of stacked leaves) in parameter layout.

  Returns ``(update, momentum, q, finite)`` (the update in the compute dtype). ``finite`` is one flag per stacked
  leaf when ``grouped`` (shape ``plan.batch``), else one flag for the leaf.
  ``after`` (a zero from `_zero_after`, or None) is added to the finiteness
  check only to order this step after the one that produced it.
  Where ``B = M + G`` of a leaf holds a NaN or an infinity, the leaf keeps its
  ``M`` and ``Q`` and its update is 0.
  """
  cdt = step_kw.pop("compute_dtype")
  # Stored layout (L, fan_in, fan_out); power_step contracts it as it is.
  flat = lambda x: x.reshape((math.prod(plan.batch),) + x.shape[-2:])
  g = flat(grad.astype(cdt))
  if data_axis is not None and not compressed:
    g = lax.pmean(g, data_axis)
  m_old = flat(momentum.astype(cdt))
  # One reduction serves both checks: max|M + G| is NaN / inf iff B = M + G is
  # not finite (max propagates NaN) and 0 iff B = 0. It reads M and G without
  # writing B, so that B can then overwrite the donated M in place.
  peak = jnp.max(jnp.abs(m_old + g), axis=(-2, -1))
  checked = peak if after is None else peak + after
  finite = jnp.isfinite(checked) if grouped else jnp.all(jnp.isfinite(checked))
  if data_axis is not None and compressed:  # every replica must skip together
    finite = lax.pmin(finite.astype(jnp.int32), data_axis).astype(bool)
  keep = finite[:, None, None] if grouped else finite
  # A skipped matrix runs the step on B = M + (-0.0) = M exactly (finite) and
  # keeps B as its momentum, so M is never read after B is formed. B and the
  # new M are formed in the parameter's own shape: XLA then writes both over
  # the donated M in place (through a reshape it took a fresh buffer for B).
  keep_m = jnp.reshape(finite, finite.shape + (1,) * (momentum.ndim - finite.ndim))
  b_param = momentum.astype(cdt) + jnp.where(keep_m, g.reshape(momentum.shape), -0.0)
  b = layout.stored(flat(b_param))
  q_old = layout.qside(q.astype(cdt).reshape((-1,) + q.shape[-2:]))
  out = power_step(b, q_old, key, layout=layout, data_axis=data_axis if compressed else None,
                   transposed=plan.p_last, zero=peak == 0, **step_kw)
  update = layout.stored(jnp.where(keep, plan.scale * out.direction, 0.0))
  feedback = layout.stored(_outer(out.pt, out.p, out.r, plan.p_last)).reshape(momentum.shape)
  new_m = jnp.where(keep_m, b_param - (1.0 - step_kw["mu"]) * feedback, b_param)
  new_q = layout.qside(jnp.where(keep, out.q, q_old))
  return (update.reshape(grad.shape),
          new_m.astype(momentum.dtype),
          new_q.reshape(q.shape).astype(q.dtype), finite)


PRECISIONS = ("float32", "float64")


def _compute_dtype(precision: str) -> Any:
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
  if precision == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("precision='float64' needs 64-bit JAX: call "
                     "jax.config.update('jax_enable_x64', True) before building the optimizer.")
  return jnp.float64 if precision == "float64" else jnp.float32


def _check_args(rank_fraction, rank_multiple_of, power_iters, qr_method, oversample, mesh, specs):
  """Checks the settings; ``None`` (a traced value, see `_python_number`) is skipped."""
  if rank_fraction is not None and (not isinstance(rank_fraction, (int, float))
                                    or not 0.0 < rank_fraction <= 1.0):
    raise ValueError(f"rank_fraction must be a number in (0, 1], got {rank_fraction!r}.")
  if rank_multiple_of is not None and (not isinstance(rank_multiple_of, int)
                                       or rank_multiple_of < 1):
    raise ValueError(f"rank_multiple_of must be an int >= 1, got {rank_multiple_of!r}.")
  if power_iters is not None and (not isinstance(power_iters, int) or power_iters < 1):
    raise ValueError(f"power_iters must be an int >= 1, got {power_iters!r}.")
  if qr_method not in orth.QR_METHODS:
    raise ValueError(f"qr_method must be one of {orth.QR_METHODS}, got {qr_method!r}.")
  if oversample is not None and (not isinstance(oversample, (int, float)) or oversample < 1.0):
    raise ValueError(f"oversample must be a number >= 1, got {oversample!r}.")
  if specs is not None and mesh is None:
    raise ValueError("specs were given without a mesh; pass mesh=... as well.")


def scale_by_dion(rank_fraction: float = 1.0, mu: Any = 0.95, rank_multiple_of: int = 1,
                  power_iters: int = 1, qr_method: str = "rcqr", oversample: float = 1.25,
                  eps: Any = 1e-8, momentum_dtype: Any = None, key: jax.Array | int = 0, *,
                  mesh: Mesh | None = None, specs: Any = None, fsdp_axis: str = mesh_lib.FSDP,
                  tp_axis: str = mesh_lib.TP, data_axis: str | None = None,
                  group_same_shape: bool = True,
                  precision: str = "float32") -> optax.GradientTransformation:
  r"""Dion's orthonormalized low-rank direction, ``sqrt(fan_out/fan_in) P Q^T``.

  For each matrix, oriented as ``B`` of shape ``(p, q)`` (see `plan_leaf`), with
  ``Q`` of shape ``(q, r)`` warm-started from the previous step:

  .. math::
    B &= M + G,\quad P = \mathrm{orth}(B Q),\quad R = B^\top P \\
    M &\leftarrow B - (1 - \mu) P R^\top,\quad
    Q \leftarrow R\, \mathrm{diag}(\|R_{:,j}\| + \epsilon)^{-1} \\
    u &= \sqrt{\mathrm{fan_{out}} / \mathrm{fan_{in}}}\; P Q^\top

  If ``B = 0`` then ``P = 0`` and ``R = Q`` (zero update, no NaN).

  Precision policy: ``M``, ``Q`` and the update are stored in the parameter
  dtype (``M`` and ``Q`` in ``momentum_dtype`` if given) and the update is
  returned in the parameter dtype. Everything in between (``M + G``, the
  products with ``Q``, ``P`` and ``R``, the orthonormalisation, the error
  feedback and the column norms) runs in float32, also for float64 or bfloat16
  parameters; ``precision='float64'`` runs it in float64 instead (slower: float64
  matmuls; the way to agree with a float64 reference to
  ``~1e-10`` on ill-conditioned momenta).

  Non-finite gradients: a leaf whose ``B = M + G`` holds a NaN or an infinity
  keeps its ``M`` and ``Q`` unchanged and gets a zero update for that step, and
  its entry of ``nonfinite_count`` in the state goes up by one (like
  ``optax.apply_if_finite``, but per leaf: the other leaves take their step).
  A stack of matrices (one leaf) is skipped as a whole.

  Args:
    rank_fraction: ``r = ceil(rank_fraction * min(m, n))`` (rounded up to
      ``rank_multiple_of``, capped at ``min(m, n)``). Static: it fixes shapes.
    mu: error-feedback decay (0.95 in the paper). May be an array or injected.
    rank_multiple_of: round the rank up to a multiple of this (static).
    power_iters: power iterations per step (static; the paper uses 1).
    qr_method: ``'rcqr'`` (randomized Cholesky-QR, default), ``'cqr'`` or ``'qr'``.
    oversample: RCQR sketch oversampling; sketch rows ``ceil(oversample r/128)*128``.
    eps: added to the column norms of ``R``.
    momentum_dtype: dtype of ``M`` and ``Q`` (default: the parameter dtype).
    key: PRNG key or int seed for the initial ``Q`` and the sketches. Results are
      identical on every device and for any sharding.
    mesh: device mesh the parameters live on (``None``: no constraints).
    specs: ``PartitionSpec`` per leaf (a tree like the params, or a callable),
      used for the orientation rule and sharding constraints. Needs ``mesh``.
    fsdp_axis, tp_axis: mesh axis names of the Q side and the P side.
    data_axis: if set, `update` must run inside ``jax.shard_map`` over this axis
      with per-replica gradients and momenta. For ``rank_fraction < 1`` and
      ``(m + n) r < m n`` only ``P`` and ``R`` are averaged (compressed sync);
      otherwise the gradient is averaged first. Use `synchronize` before saving.
    group_same_shape: run 2-D leaves with the same shape, orientation, rank,
      specs and dtype as one batched step (fewer, larger kernels). Each matrix
      keeps its own momentum, Q and sketch slice. Matrices of `GROUP_MAX_SIZE`
      entries or more always run alone: stacking them copies ``M`` and ``G``
      and keeps every matrix's temporaries alive at once.
    precision: ``'float32'`` (default) or ``'float64'``: the dtype the step
      computes in (see the precision policy above). ``'float64'`` needs
      ``jax_enable_x64``.

  Returns:
    An `optax.GradientTransformation` with state `ScaleByDionState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_dion(rank_fraction=0.5)
    >>> w = jnp.ones((4, 8))
    >>> state = tx.init(w)
    >>> u, state = tx.update(jnp.eye(4, 8), state)
    >>> print(u.shape, state.q.shape, int(state.nonfinite_count))
    (4, 8) (4, 2) 0

  Raises:
    ValueError: bad hyperparameters (at construction) or a leaf Dion cannot
      take (at ``init``), naming the leaf path and shape.
  """
  settings = (_python_number("rank_fraction", rank_fraction, float),
              _python_number("rank_multiple_of", rank_multiple_of, int),
              _python_number("power_iters", power_iters, int),
              _python_number("oversample", oversample, float))
  _check_args(settings[0], settings[1], settings[2], qr_method, settings[3], mesh, specs)
  compute_dtype = _compute_dtype(precision)
  if isinstance(mu, (int, float)) and not 0.0 <= mu <= 1.0:
    raise ValueError(f"mu must be in [0, 1], got {mu!r}.")

  def base_key() -> jax.Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      return key
    return jax.random.key(_python_number("key", key, int))

  def plans(tree, cfg):
    leaves = _leaves(tree, specs)
    return leaves, {i: plan_leaf(leaves.paths[i], tuple(leaves.flat[i].shape), leaves.specs[i],
                                 rank_fraction=cfg.rank_fraction,
                                 rank_multiple_of=cfg.rank_multiple_of, fsdp_axis=fsdp_axis,
                                 tp_axis=tp_axis) for i in leaves.arrays()}

  def init_fn(params):
    if any(v is None for v in settings):
      raise ValueError("rank_fraction, rank_multiple_of, power_iters and oversample fix array "
                       "shapes and must be known when the state is made; under "
                       "optax.inject_hyperparams pass static_args=optim.DION_STATIC_ARGS "
                       "(optim.STATIC_ARGS for scale_by_dion).")
    cfg = DionConfig(*settings)
    leaves, planned = plans(params, cfg)
    for i in planned:
      dtype = jnp.result_type(leaves.flat[i])
      if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"Dion needs floating-point parameters but leaf {leaves.paths[i]!r} "
                         f"{tuple(leaves.flat[i].shape)} has dtype {dtype}; cast it or route it "
                         "elsewhere (optim.labels).")
    k0 = jax.random.fold_in(base_key(), 0)
    moms, qs = {}, {}
    for i, plan in planned.items():
      dtype = momentum_dtype or leaves.flat[i].dtype
      layout = _Layout(plan, mesh)
      m = jnp.zeros(leaves.flat[i].shape, dtype)
      q = jax.random.normal(jax.random.fold_in(k0, i), plan.batch + (plan.q_dim, plan.rank),
                            jnp.float32).astype(dtype)
      if mesh is not None:
        m = lax.with_sharding_constraint(m, layout.param_sharding())
        q = lax.with_sharding_constraint(q, layout.q_state_sharding())
      moms[i], qs[i] = m, q
    counts = {i: jnp.zeros([], jnp.int32) for i in planned}
    return ScaleByDionState(jnp.zeros([], jnp.int32), base_key(), leaves.unflatten(moms),
                            leaves.unflatten(qs), leaves.unflatten(counts), cfg)

  def update_fn(updates, state, params=None):
    cfg = state.config
    leaves, planned = plans(updates, cfg)
    flat_m, flat_q = leaves.flatten(state.momentum), leaves.flatten(state.q)
    flat_n = leaves.flatten(state.nonfinite_count)
    flat_p = leaves.flatten(params) if params is not None else [None] * len(leaves.flat)
    out_dtype = {}
    for i in planned:
      g, m, p = leaves.flat[i], flat_m[i], flat_p[i]
      for name, ref in (("momentum", m), ("parameter", p)):
        if ref is not None and tuple(g.shape) != tuple(ref.shape):
          raise ValueError(f"Gradient of leaf {leaves.paths[i]!r} has shape {tuple(g.shape)} but "
                           f"its {name} has shape {tuple(ref.shape)}; pass gradients shaped "
                           "like the parameters.")
      if p is not None:
        out_dtype[i] = p.dtype
      elif momentum_dtype is None:
        out_dtype[i] = m.dtype
      else:
        out_dtype[i] = g.dtype
    step_key = jax.random.fold_in(jax.random.fold_in(state.key, 1), state.count)
    new_u, new_m, new_q, new_n = {}, {}, {}, {}
    # Unsharded, the groups run one after the other: each group's finite check
    # waits on an entry of the previous group's new M (`_zero_after`), so that
    # XLA finishes a matrix before it starts the next and their full-size
    # temporaries (P R^T, P Q^T) share one buffer. With 12 x (1024, 4096)
    # leaves the temporaries went from 207 MB to 40 MB (2 leaves: 35 -> 20 MB,
    # small enough for malloc to reuse instead of mapping fresh pages, whose
    # first-touch faults cost ~10 ms per step on one core). With a mesh the
    # edge is left out, since that entry lives on one device (parameters
    # sharded by the caller without `mesh` would pay a one-element transfer
    # per group for it).
    after = None
    for members in _groups(planned, leaves, group_same_shape).values():
      plan = planned[members[0]]
      if len(members) > 1:  # same-shape matrices: one batched step (stack axis first)
        plan = plan._replace(path=f"{len(members)} x {plan.path}", batch=(len(members),))
      stack = (lambda xs: xs[members[0]]) if len(members) == 1 else (
          lambda xs: jnp.stack([xs[i] for i in members]))
      compressed = (data_axis is not None and cfg.rank_fraction < 1.0
                    and (plan.p_dim + plan.q_dim) * plan.rank < plan.p_dim * plan.q_dim)
      outs = _dion_leaf(
          plan, _Layout(plan, mesh), stack(leaves.flat), stack(flat_m), stack(flat_q),
          jax.random.fold_in(step_key, members[0]), mu=mu, eps=eps, qr_method=qr_method,
          oversample=cfg.oversample, power_iters=cfg.power_iters, data_axis=data_axis,
          compressed=compressed, grouped=len(members) > 1, compute_dtype=compute_dtype,
          after=after)
      if mesh is None:
        after = _zero_after(outs[1])
      for j, i in enumerate(members):
        pick = (lambda x: x) if len(members) == 1 else (lambda x, j=j: x[j])
        new_u[i], new_m[i], new_q[i], finite = (pick(x) for x in outs)
        new_u[i] = new_u[i].astype(out_dtype[i])
        new_n[i] = flat_n[i] + jnp.logical_not(finite).astype(flat_n[i].dtype)
    return leaves.unflatten(new_u), ScaleByDionState(
        optax.safe_increment(state.count), state.key, leaves.unflatten(new_m),
        leaves.unflatten(new_q), leaves.unflatten(new_n), cfg)

  return optax.GradientTransformation(init_fn, update_fn)


def synchronize(opt_state: Any, data_axis: str) -> Any:
  """Averages every Dion momentum over ``data_axis`` (call inside ``shard_map``).

  With compressed data-parallel sync each replica keeps its own momentum; their
  mean follows synchronous Dion exactly. Call this before checkpointing so that
  all replicas hold the same (mean) state. Other state is left untouched.
  """
  def sync(node):
    if isinstance(node, ScaleByDionState):
      return node._replace(momentum=jax.tree.map(lambda m: lax.pmean(m, data_axis), node.momentum))
    return node
  return jax.tree.map(sync, opt_state, is_leaf=lambda x: isinstance(x, ScaleByDionState))


def _zero_skipped(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Zeroes the chained update (weight decay included) of leaves Dion skipped this step.

  ``inner`` is a chain whose first state is a `ScaleByDionState`; a leaf was
  skipped when its ``nonfinite_count`` went up.
  """
  def update_fn(updates, state, params=None):
    out, new_state = inner.update(updates, state, params)
    out = jax.tree.map(lambda u, old, new: jnp.where(new > old, jnp.zeros_like(u), u), out,
                       state[0].nonfinite_count, new_state[0].nonfinite_count)
    return out, new_state
  return optax.GradientTransformation(inner.init, update_fn)


def dion(learning_rate: optax.ScalarOrSchedule, rank_fraction: float = 1.0, mu: Any = 0.95,
         weight_decay: Any = 0.01, *, rank_multiple_of: int = 1, power_iters: int = 1,
         qr_method: str = "rcqr", oversample: float = 1.25, eps: Any = 1e-8,
         momentum_dtype: Any = None, key: jax.Array | int = 0, mesh: Mesh | None = None,
         specs: Any = None, fsdp_axis: str = mesh_lib.FSDP, tp_axis: str = mesh_lib.TP,
         data_axis: str | None = None, group_same_shape: bool = True,
         precision: str = "float32", labels: Any = None,
         scalar_optimizer: str = "adamw",
         scalar_learning_rate: optax.ScalarOrSchedule | None = None, scalar_b1: Any = 0.9,
         scalar_b2: Any = 0.95, scalar_eps: Any = 1e-8, scalar_weight_decay: Any = 0.0,
         embed_b1: Any = 0.95, embed_b2: Any = 0.98) -> optax.GradientTransformation:
  r"""Dion for hidden matrices, AdamW or Lion for everything else.

  Matrices labelled `optim.labels.MATRIX` get

  .. math::
    X \leftarrow X - \eta\,(\lambda X + \sqrt{\mathrm{fan_{out}}/\mathrm{fan_{in}}}\,P Q^\top),

  i.e. ``chain(scale_by_dion, add_decayed_weights(weight_decay),
  scale_by_learning_rate(learning_rate))``. Vectors, embeddings and the head
  go to the scalar optimizer as described in `optim.routed`
  (head learning rate times ``1/sqrt(fan_in)`` for Lion, 1 for AdamW).
  Works under `optax.inject_hyperparams` as it is: the shape-fixing settings
  (``rank_fraction``, ``rank_multiple_of``, ``power_iters``, ``oversample``)
  are read when the state is made and kept in it (`DionConfig`), so their
  injected copies are never used; ``static_args=DION_STATIC_ARGS`` keeps them
  out of the injected hyperparameters altogether.

  A matrix whose gradient holds a NaN or an infinity gets a zero update (no
  weight decay either) and keeps its Dion state for that step (see
  `scale_by_dion`). The scalar groups are optax's AdamW / Lion, which have no
  such guard: a non-finite gradient there reaches their moments; wrap the whole
  optimizer in ``optax.apply_if_finite`` to skip such steps entirely.

  Args:
    learning_rate: matrix learning rate (scalar or schedule).
    rank_fraction, mu, rank_multiple_of, power_iters, qr_method, oversample, eps,
      momentum_dtype, key, mesh, specs, fsdp_axis, tp_axis, data_axis,
      group_same_shape, precision: see
      `scale_by_dion`.
    weight_decay: decoupled weight decay of the matrices (uses the base lr).
    labels: label tree / callable (`optim.labels`); default `label_params`.
    scalar_optimizer: ``'adamw'`` or ``'lion'``.
    scalar_learning_rate: learning rate of the scalar groups (default: same).
    scalar_b1, scalar_b2, scalar_eps, scalar_weight_decay, embed_b1, embed_b2:
      scalar group settings, see `optim.routed.routed`.

  Returns:
    An `optax.GradientTransformation` (an ``optax.partition``).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> params = {"w": jnp.ones((4, 8)), "b": jnp.zeros(8)}
    >>> tx = optax.chain(optax.clip_by_global_norm(1.0), dion(0.02, rank_fraction=0.25))
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.eye(4, 8), "b": jnp.ones(8)}
    >>> u, state = tx.update(grads, state, params)
    >>> print(u["w"].shape, u["w"].dtype)
    (4, 8) float32
  """
  from optim import routed as routed_lib  # pylint: disable=import-outside-toplevel
  matrix = _zero_skipped(optax.chain(
      scale_by_dion(rank_fraction, mu, rank_multiple_of, power_iters, qr_method, oversample, eps,
                    momentum_dtype, key, mesh=mesh, specs=specs, fsdp_axis=fsdp_axis,
                    tp_axis=tp_axis, data_axis=data_axis, group_same_shape=group_same_shape,
                    precision=precision),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate)))
  return routed_lib.routed(
      matrix, learning_rate, labels=labels, scalar_optimizer=scalar_optimizer,
      scalar_learning_rate=scalar_learning_rate, scalar_b1=scalar_b1, scalar_b2=scalar_b2,
      scalar_eps=scalar_eps, scalar_weight_decay=scalar_weight_decay, embed_b1=embed_b1,
      embed_b2=embed_b2, data_axis=data_axis)
