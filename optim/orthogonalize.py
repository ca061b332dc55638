"""Orthonormalisation of tall matrices with small reductions only.

Dion orthonormalises a tall matrix ``P`` of shape ``(..., p, r)`` with ``p >= r``
whose rows may be sharded over a mesh axis. Everything here is written so that
the only matrices that are ever replicated are ``r x r`` Gram / triangular
factors or the ``k x r`` randomized sketch ``S P``; the tall matrix itself is
only ever multiplied from the right by a small matrix, which partitions along
its rows without communication. Householder QR (``jnp.linalg.qr``) of the tall
matrix is used only where the spec asks for it (method ``'qr'``, or when
``p <= r``), because GSPMD would gather a sharded ``P`` for it.

Methods (Ahn et al., 2025, reference implementation, made exact):

* ``'qr'``: Householder QR, keep the orthonormal factor.
* ``'cqr'``: Cholesky-QR2: ``U = chol(P^T P)`` (upper), ``P <- P U^{-1}``, then
  the same pass once more. One pass (the reference's ``cqr``) loses
  orthogonality like ``eps * cond(P)^2`` (8.5e-3 off the float64 trajectory on
  a full-rank 64 x 128 leaf); the second pass brings it to ``eps`` whenever the
  first factorisation is accurate. Conditioning check: where the first
  factor's diagonal spans more than ``1 / (8 sqrt(eps))`` (a lower bound on
  ``cond(P)``; about 360 in float32) or the factorisation fails (JAX signals
  failure with NaN), the matrix goes to ``'rcqr'`` instead. Cost: two
  ``p x r x r`` Gram products and two ``p x r x r`` solves against the
  reference's one, both far below the ``p x q x r`` products of a Dion step.
* ``'rcqr'``: randomized Cholesky-QR. With a Gaussian sketch ``S`` of shape
  ``(k, p)``, entries ``N(0, 1/k)`` and ``k = ceil(oversample * r / 128) * 128``,
  take the triangular factor ``R_s`` of ``QR(S P)``, set ``P <- P R_s^{-1}``,
  then do one Cholesky-QR pass. ``S P`` has the singular values of ``P`` up to
  the sketch's distortion, so ``P R_s^{-1}`` is well conditioned for any
  ``cond(P) < 1/eps`` and the Cholesky-QR pass makes it orthonormal.

All methods return the same matrix up to the signs of its columns (the ``Q``
factor of ``P``), which Dion's update ``P Q^T`` does not see.

Every method ends with a guard: where the result is not finite (a failed
Cholesky factorisation, or a singular triangular factor from a rank-deficient
input), the best finite intermediate (``P R_s^{-1}`` for RCQR, else ``P``) is
orthonormalised through the eigen-decomposition of its ``r x r`` Gram matrix
with degenerate directions dropped, which is finite for any input. The guard
runs under `lax.cond`, so it costs nothing when not needed.

Everything runs in float32, or in float64 for float64 input.

Layout: the work is done on the *rows* form ``P^T`` (shape ``(..., r, p)``,
`orthonormalize_rows`), which `orthonormalize` wraps for a tall ``P``. In row-major
``P^T`` every large product is one XLA:CPU runs at its GEMM rate (``P^T X`` and
``P^T P^{T\top}``, no contraction over the leading axis of a large operand), and
``P^T`` in row-major order is ``P`` in LAPACK's column-major order, so the
triangular solves and the Householder QR take it without a transposing copy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax import lax

QR_METHODS = ("rcqr", "cqr", "qr")

Constrain = Callable[[jax.Array], jax.Array]


def _identity(x: jax.Array) -> jax.Array:
  return x


def per_matrix(fn: Callable[..., Any], *xs: jax.Array) -> Any:
  """Applies a LAPACK-backed ``fn`` one matrix at a time on CPU.

  jaxlib's batched CPU LAPACK kernels split their batch over XLA's intra-op
  thread pool and wait for the pieces; two such kernels running at once
  (independent Dion groups) were seen to deadlock the pool on a 2-core machine
  (threads parked in ``ParallelBatchMap``). A `lax.map` over the leading dims
  hands each kernel a single matrix. Elsewhere ``fn`` gets the whole batch.
  """
  batch = xs[0].shape[:-2]
  if not batch or jax.default_backend() != "cpu":
    return fn(*xs)
  if math.prod(batch) == 1:  # one matrix: no loop (its dynamic slices copy the operands)
    out = fn(*(x.reshape(x.shape[-2:]) for x in xs))
    return jax.tree.map(lambda o: o.reshape(batch + o.shape), out)
  flat = tuple(x.reshape((-1,) + x.shape[-2:]) for x in xs)
  out = lax.map(lambda args: fn(*args), flat)
  return jax.tree.map(lambda o: o.reshape(batch + o.shape[1:]), out)


def sketch_size(rank: int, oversample: float) -> int:
  """Rows of the RCQR sketch: ``ceil(oversample * rank / 128) * 128`` (a static int)."""
  return int(math.ceil(oversample * rank / 128.0)) * 128


# Constants of the `lowbias32` integer hash (C. Wellons, "hash prospector"):
# xor-shift 16, multiply, xor-shift 15, multiply, xor-shift 16.
_MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)


def _mix32(x: jax.Array) -> jax.Array:
  """A bijective avalanche mix of ``uint32`` words (every input bit flips each output bit ~1/2)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(_MIX_MULTIPLIERS[0])
  x = x ^ (x >> 15)
  x = x * jnp.uint32(_MIX_MULTIPLIERS[1])
  return x ^ (x >> 16)


@functools.lru_cache(maxsize=None)
def _normal_quantiles() -> np.ndarray:
  """``sqrt(2) erfinv((j + 1/2) / 2^15 - 1)`` for ``j = 0 .. 2^16 - 1`` (float32, from float64)."""
  u = (np.arange(1 << 16, dtype=np.float64) + 0.5) / 32768.0 - 1.0
  return (math.sqrt(2.0) * scipy.special.erfinv(u)).astype(np.float32)


def gaussian_sketch(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  r"""Standard normal samples of ``shape`` for the RCQR sketch (16-bit resolution).

  A counter-based generator in two passes of a bijective 32-bit mix
  (`_mix32`): the word at position ``c`` of a matrix is

  .. math:: w_c = \mathrm{mix}(\mathrm{mix}(c \oplus s_0) + s_1),

  with the seeds ``(s_0, s_1)`` drawn from ``key`` (Threefry) per matrix of the
  leading axes. Each word gives two samples (its two 16-bit halves ``j``), read
  from a table of the normal quantiles ``sqrt(2) erfinv((j + 1/2) / 2^15 - 1)``
  (``|samples| <= 4.33``). On XLA:CPU this is one fused loop plus a gather from a
  256 KB table: 2.5 ms per 4096 x 384 sketch in the profile of a rank-1/4 step
  (`benchmarks/dion_step.py --profile`) against 8.5 ms for Threefry bits
  (`lax.rng_bit_generator`) through ``lax.erf_inv``. A sketch only has to be a
  random subspace embedding: RCQR returns the orthonormal factor of its input
  whatever the sketch (up to column signs and rounding), so the resolution and
  the generator do not reach the update. Each value depends only on ``key`` and
  its index: the same key gives the same sketch on every device, however the
  sketch is sharded.
  """
  if not shape or shape[-1] % 2:
    raise ValueError(f"gaussian_sketch needs an even last dimension, got shape {shape}.")
  batch, rows, cols = tuple(shape[:-2]), (shape[-2] if len(shape) > 1 else 1), shape[-1] // 2
  if rows * cols >= 1 << 32:
    raise ValueError(f"gaussian_sketch: a matrix of {rows * cols * 2} samples exceeds the "
                     "2^33 that one 32-bit counter covers.")
  seeds = jax.random.bits(key, batch + (2, 1, 1), jnp.uint32)
  counter = (lax.broadcasted_iota(jnp.uint32, (rows, cols), 0) * jnp.uint32(cols)
             + lax.broadcasted_iota(jnp.uint32, (rows, cols), 1))
  words = _mix32(_mix32(counter ^ seeds[..., 0, :, :]) + seeds[..., 1, :, :])
  halves = lax.bitcast_convert_type(words, jnp.uint16).reshape(shape)
  table = jnp.asarray(_normal_quantiles())
  return table.at[halves.astype(jnp.int32)].get(mode="promise_in_bounds").astype(dtype)


def _t(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, -1, -2)


def _gram_rows(pt: jax.Array) -> jax.Array:
  """``P^T P`` from the rows form ``pt = P^T``: ``pt pt^T`` (shape ``(..., r, r)``).

  From ``r = 512`` on, the symmetric result is assembled from three half-size
  products (the two diagonal blocks and one off-diagonal block): 3/4 of the
  FLOPs, and exactly symmetric. On the benchmark's (4096 x 1024) leaves this
  took 83 ms against 110-120 ms for the whole product (one in-process profile).
  """
  r = pt.shape[-2]
  if r < 512 or r % 2:
    return jnp.einsum("...rp,...sp->...rs", pt, pt)
  a0, a1 = pt[..., : r // 2, :], pt[..., r // 2 :, :]
  g = lambda x, y: jnp.einsum("...rp,...sp->...rs", x, y)
  g00, g01, g11 = g(a0, a0), g(a0, a1), g(a1, a1)
  return jnp.concatenate([jnp.concatenate([g00, g01], -1),
                          jnp.concatenate([_t(g01), g11], -1)], -2)


def cholesky_upper(a: jax.Array) -> jax.Array:
  """Upper Cholesky factor ``U`` with ``a = U^T U`` (NaN where ``a`` is not PD).

  `jnp.linalg.cholesky` returns the *lower* factor ``L = U^T``; using ``L`` as
  if it were upper is a known pitfall of earlier ports.
  """
  return _t(per_matrix(jnp.linalg.cholesky, a))


def _upper_inverse(u: jax.Array) -> jax.Array:
  eye = jnp.broadcast_to(jnp.eye(u.shape[-1], dtype=u.dtype), u.shape)
  return per_matrix(lambda a, b: jax.scipy.linalg.solve_triangular(a, b, lower=False), u, eye)


def _solve_rows(pt: jax.Array, u: jax.Array, wide: Constrain | None,
                small: Constrain) -> jax.Array:
  """Rows form of ``P U^{-1}`` (upper-triangular ``U``): ``U^{-T} P^T``.

  Unsharded (``wide`` is None) a triangular solve, ``p r^2`` FLOPs, on ``P``
  in column-major order, which is ``pt`` as it is. Sharded, ``U^{-T}`` (a
  replicated ``r x r`` matrix) times ``pt``, ``2 p r^2`` FLOPs: that product
  partitions along ``p`` without communication, which GSPMD does not promise
  for a triangular solve.
  """
  if wide is None:
    solve = lambda a, b: lax.linalg.triangular_solve(b, a, left_side=False, lower=False)
    return _t(per_matrix(solve, _t(pt), u))
  return wide(small(_t(_upper_inverse(u))) @ pt)


def _finite(x: jax.Array) -> jax.Array:
  """Per-matrix flag (shape ``x.shape[:-2]``): all entries finite."""
  return jnp.all(jnp.isfinite(x), axis=(-2, -1))


def _select(flag: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.where(flag[..., None, None], a, b)


def _cholesky_qr_rows(pt, small, wide):
  u = cholesky_upper(small(_gram_rows(pt)))
  out = _solve_rows(pt, u, wide, small)
  return out, _finite(out)


def _cholesky_qr2_rows(pt, small, wide):
  u = cholesky_upper(small(_gram_rows(pt)))
  diag = jnp.abs(jnp.diagonal(u, axis1=-2, axis2=-1))
  limit = 1.0 / (8.0 * math.sqrt(float(jnp.finfo(pt.dtype).eps)))
  conditioned = jnp.max(diag, axis=-1) <= limit * jnp.min(diag, axis=-1)
  p1 = _solve_rows(pt, u, wide, small)
  out, ok = _cholesky_qr_rows(p1, small, wide)
  return out, ok & conditioned & _finite(p1)


def _rcqr_sketch_factor(pt, key, oversample, small, sketch):
  """``R_s``, the triangular factor of ``QR(S P)``, from the rows form ``pt``."""
  k = sketch_size(pt.shape[-2], oversample)
  # The sketch is drawn transposed, (p, k): S P is then (P^T S^T)^T, a plain
  # GEMM whose (r, k) result is S P in the column-major order QR takes.
  st = sketch(gaussian_sketch(key, pt.shape[:-2] + (pt.shape[-1], k), pt.dtype))
  spt = small(pt @ st) / jnp.sqrt(jnp.asarray(k, pt.dtype))
  return per_matrix(lambda a: jnp.linalg.qr(a, mode="r"), _t(spt))


def _rcqr_factors(pt, key, oversample, small, wide, sketch):
  """``(R_s, P R_s^{-1}, U)`` of RCQR in rows form (``U``: upper Cholesky factor of the Gram)."""
  r_s = _rcqr_sketch_factor(pt, key, oversample, small, sketch)
  p1 = _solve_rows(pt, r_s, wide, small)
  return r_s, p1, cholesky_upper(small(_gram_rows(p1)))


def _randomized_cholesky_qr_rows(pt, key, oversample, small, wide, sketch):
  """Guarded RCQR in rows form.

  Where the result of a matrix is not finite (a factor failed), the best
  finite start (the sketched ``P R_s^{-1}``, else ``P``) is orthonormalised by
  `_gram_eigh_rows`. That repair runs under `lax.cond` and is *selected* into
  the result, so the common path keeps its buffers and layouts: the
  conditional returns zeros when nothing failed.
  """
  r_s, p1, u = _rcqr_factors(pt, key, oversample, small, wide, sketch)
  out = _solve_rows(p1, u, wide, small)
  ok = _finite(out)

  def repair():
    start = _solve_rows(pt, r_s, wide, small)  # formed again: p1 was overwritten
    start = _select(_finite(start), start, pt)
    return _gram_eigh_rows(start, small, wide)

  fix = lax.cond(jnp.all(ok), lambda: jnp.zeros_like(out), repair)
  return _select(ok, out, fix)


def _gram_eigh_rows(pt, small, wide):
  gram = small(_gram_rows(pt))
  w, v = per_matrix(jnp.linalg.eigh, gram)
  tol = pt.shape[-2] * jnp.finfo(pt.dtype).eps * jnp.max(w, axis=-1, keepdims=True)
  keep = w > tol
  inv_sqrt = jnp.where(keep, lax.rsqrt(jnp.where(keep, w, 1.0)), 0.0)
  # P V diag(w)^-1/2 V^T in rows form: the r x r factor is symmetric.
  return (wide or _identity)(small((v * inv_sqrt[..., None, :]) @ _t(v)) @ pt)


def _rows_constraints(small, tall, sketch):
  """Tall-form constraints of the public wrappers, as rows-form ones."""
  wide = None if tall is _identity else (lambda x: _t(tall(_t(x))))
  st = sketch if sketch is _identity else (lambda x: _t(sketch(_t(x))))
  return small, wide, st


def cholesky_qr(p: jax.Array, *, small: Constrain = _identity,
                tall: Constrain = _identity) -> tuple[jax.Array, jax.Array]:
  """One Cholesky-QR pass.

  .. math::
    U = \\mathrm{chol}(P^\\top P)\\ \\text{(upper)}, \\qquad P \\leftarrow P U^{-1}

  Args:
    p: ``(..., p, r)`` float32 or float64 matrix.
    small: sharding constraint for ``r x r`` matrices (replicated).
    tall: sharding constraint for matrices shaped like ``p``.

  Returns:
    ``(p_new, ok)``: the orthonormalised matrix and a per-matrix flag that the
    factorisation succeeded (where it failed ``p_new`` holds NaN).
  """
  small, wide, _ = _rows_constraints(small, tall, _identity)
  out, ok = _cholesky_qr_rows(_t(p), small, wide)
  return _t(out), ok


def cholesky_qr2(p: jax.Array, *, small: Constrain = _identity,
                 tall: Constrain = _identity) -> tuple[jax.Array, jax.Array]:
  r"""Cholesky-QR2: two Cholesky-QR passes, with a conditioning check.

  .. math::
    U_1 = \mathrm{chol}(P^\top P),\ P_1 = P U_1^{-1},\quad
    U_2 = \mathrm{chol}(P_1^\top P_1),\ P \leftarrow P_1 U_2^{-1}

  Args:
    p: ``(..., p, r)`` float32 or float64 matrix.
    small, tall: sharding constraints as in `cholesky_qr`.

  Returns:
    ``(p_new, ok)``: the result and a per-matrix flag, false where a
    factorisation failed or ``max(diag U_1) / min(diag U_1)`` (a lower bound on
    ``cond(P)``) exceeds ``1 / (8 sqrt(eps))``, beyond which the first pass may be
    too inaccurate for the second to repair.
  """
  small, wide, _ = _rows_constraints(small, tall, _identity)
  out, ok = _cholesky_qr2_rows(_t(p), small, wide)
  return _t(out), ok


def randomized_cholesky_qr(p: jax.Array, key: jax.Array, oversample: float, *,
                           small: Constrain = _identity, tall: Constrain = _identity,
                           sketch: Constrain = _identity) -> tuple[jax.Array, jax.Array]:
  """Randomized Cholesky-QR followed by one Cholesky-QR pass.

  .. math::
    S_{ij} \\sim \\mathcal N(0, 1/k),\\quad R_s = \\mathrm{qr}_R(S P),\\quad
    P \\leftarrow P R_s^{-1},\\quad P \\leftarrow P\\, \\mathrm{chol}(P^\\top P)^{-1}

  Args:
    p: ``(..., p, r)`` float32 or float64 matrix.
    key: PRNG key for the sketch; it must be the same on every device.
    oversample: sketch oversampling factor (static).
    small, tall: sharding constraints as in `cholesky_qr`.
    sketch: sharding constraint for the ``(..., k, p)`` sketch (its ``p`` axis
      sharded like the rows of ``p``).

  Returns:
    ``(p_orth, p_sketched)``: the result of both passes (NaN where a
    factorisation failed) and the well-conditioned but only roughly orthonormal
    ``P R_s^{-1}`` of the first pass.
  """
  small, wide, st = _rows_constraints(small, tall, sketch)
  _, p1, u = _rcqr_factors(_t(p), key, oversample, small, wide, st)
  return _t(_solve_rows(p1, u, wide, small)), _t(p1)


def gram_eigh_orthonormalize(p: jax.Array, *, small: Constrain = _identity,
                             tall: Constrain = _identity) -> jax.Array:
  """Orthonormalise through ``P^T P = V diag(w) V^T``: ``P V diag(w)^{-1/2} V^T``.

  Eigen-directions with ``w <= r * eps32 * max(w)`` are dropped (their columns
  become 0), so the result is finite for rank-deficient or zero ``p``. Used as
  the last-resort guard only.
  """
  small, wide, _ = _rows_constraints(small, tall, _identity)
  return _t(_gram_eigh_rows(_t(p), small, wide))


def _check_method(method, key):
  if method not in QR_METHODS:
    raise ValueError(f"qr_method must be one of {QR_METHODS}, got {method!r}.")
  if method != "qr" and key is None:
    raise ValueError(f"qr_method={method!r} needs a PRNG key for its random sketch.")


def orthonormalize_rows(pt: jax.Array, method: str = "rcqr", *, key: jax.Array | None = None,
                        oversample: float = 1.25, small: Constrain = _identity,
                        wide: Constrain | None = None,
                        sketch: Constrain = _identity) -> jax.Array:
  """`orthonormalize` on the rows form: ``pt = P^T`` in, ``Q^T`` out (shape ``(..., r, p)``).

  Args:
    pt: ``(..., r, p)`` matrix, the transpose of the tall ``P``.
    method, key, oversample: as in `orthonormalize`.
    small: sharding constraint for ``r x r`` and ``r x k`` matrices.
    wide: sharding constraint for matrices shaped like ``pt``; None when
      unsharded (then the triangular factors are applied by triangular solves).
    sketch: sharding constraint for the ``(..., p, k)`` transposed sketch.
  """
  _check_method(method, key)
  pt = pt.astype(jnp.float64 if pt.dtype == jnp.float64 else jnp.float32)
  rcqr = lambda: _randomized_cholesky_qr_rows(pt, key, oversample, small, wide, sketch)
  if method == "rcqr" and pt.shape[-1] > pt.shape[-2]:
    return rcqr()
  if method == "cqr" and pt.shape[-1] > pt.shape[-2]:
    out, ok = _cholesky_qr2_rows(pt, small, wide)
    return lax.cond(jnp.all(ok), lambda: out, lambda: _select(ok, out, rcqr()))
  out = (wide or _identity)(_t(per_matrix(lambda a: jnp.linalg.qr(a, mode="reduced")[0], _t(pt))))
  # Householder QR of finite input is finite; the guard is for non-finite input.
  return lax.cond(jnp.all(jnp.isfinite(out)), lambda: out,
                  lambda: _select(_finite(out), out, _gram_eigh_rows(
                      _select(_finite(pt), pt, jnp.zeros_like(pt)), small, wide)))


def orthonormalize(p: jax.Array, method: str = "rcqr", *, key: jax.Array | None = None,
                   oversample: float = 1.25, small: Constrain = _identity,
                   tall: Constrain = _identity, sketch: Constrain = _identity) -> jax.Array:
  """Orthonormal columns spanning ``p`` (computed in float32, or float64 for float64 ``p``).

  Args:
    p: ``(..., p, r)`` matrix (any leading batch dims).
    method: ``'rcqr'`` (default), ``'cqr'`` or ``'qr'``; Householder QR is used
      whenever ``p <= r``, as in the reference.
    key: PRNG key for the RCQR sketch (also used by the CQR fallback).
    oversample: RCQR oversampling (static Python float).
    small, tall, sketch: sharding constraints (identity when unsharded); the
      sketch is ``(..., k, p)``.

  Returns:
    ``(..., p, r)`` matrix with ``P^T P ~ I`` (columns of degenerate directions
    are 0) and no NaN for finite input.

  Raises:
    ValueError: unknown ``method`` or a missing ``key`` for the randomized method.
  """
  _check_method(method, key)
  small, wide, st = _rows_constraints(small, tall, sketch)
  return _t(orthonormalize_rows(_t(p), method, key=key, oversample=oversample, small=small,
                                wide=wide, sketch=st))
