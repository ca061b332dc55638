"""Dot products in the layout XLA:CPU runs fastest: operands contracted on their minor dims.

Autodiff writes the weight gradient of ``y = x @ W`` as ``transpose(dot(g, x))``
with both operands contracted on their *leading* (row) dimension. XLA:CPU runs
that form on a slower kernel than the plain ``(m, k) @ (k, n)`` product whose
left operand is contracted on its minor dimension; for the small per-client
products of a federated round the difference is measurable (the FedAvg round of
``benchmarks/fed_round.py``, with and without this rewrite, in
``benchmarks/results.md``).

`contract_minor(fn)` traces ``fn`` to a jaxpr and evaluates it again with each
top-level ``dot_general`` given its left operand in (batch, free, contracting)
layout: a transposed copy behind `jax.lax.optimization_barrier`, so XLA's
simplifier cannot fold the transpose back into the product. A product whose
only use is a transpose to (batch, rhs free, lhs free) is computed with its
operands swapped instead, which is that transpose: ``x^T g`` with ``x^T``
materialised. The values are the same products (only the summation order
inside the GEMM kernel may differ). Equations with inner jaxprs (``jit``,
``scan``, ``cond``, custom derivatives) are bound unchanged, so their products
keep XLA's layout.

    grads = contract_minor(jax.grad(loss))(params, x, y)
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable

import jax
from jax.extend import core as jex_core
from jax.extend.core import primitives as prims

__all__ = ["contract_minor", "default_for_backend", "disabled", "minor_contraction_layout"]

# Backends where the rewrite was measured to pay (benchmarks/fed_round.py, one CPU core).
_BACKENDS = ("cpu",)
_ENABLED = [True]


@contextlib.contextmanager
def disabled():
  """Within this block `default_for_backend` is False (programs traced here keep XLA's layout)."""
  _ENABLED[0], before = False, _ENABLED[0]
  try:
    yield
  finally:
    _ENABLED[0] = before


def default_for_backend(backend: str | None = None) -> bool:
  """Whether `contract_minor` is applied by default on ``backend`` (default: JAX's)."""
  return _ENABLED[0] and (backend or jax.default_backend()) in _BACKENDS


def minor_contraction_layout(dimension_numbers, lhs_ndim: int):
  """``(perm, dimension_numbers)`` putting the lhs batch dims first and contracting dims last.

  ``perm`` is None when the left operand is already in that layout. The output
  of the rewritten product has the same dimensions in the same order (batch,
  lhs free dims in their order, rhs free dims).
  """
  (lc, rc), (lb, rb) = dimension_numbers
  free = [d for d in range(lhs_ndim) if d not in lc and d not in lb]
  perm = [*lb, *free, *lc]
  if perm == list(range(lhs_ndim)):
    return None, dimension_numbers
  new_lc = tuple(range(lhs_ndim - len(lc), lhs_ndim))
  new_lb = tuple(range(len(lb)))
  return tuple(perm), ((new_lc, tuple(rc)), (new_lb, tuple(rb)))


def _read(env, var):
  return var.val if isinstance(var, jex_core.Literal) else env[var]


def _swappable(dot_eqn, consumer) -> bool:
  """Whether ``consumer`` transposes ``dot_eqn``'s output to (batch, rhs free, lhs free), so the
  product can be computed with its operands swapped (not when it fixes an output sharding,
  which names the unswapped dimensions)."""
  if (consumer is None or consumer.primitive is not prims.transpose_p
      or dot_eqn.params.get("out_sharding") is not None):
    return False
  (lc, rc), (lb, _) = dot_eqn.params["dimension_numbers"]
  nb = len(lb)
  n_lfree = dot_eqn.invars[0].aval.ndim - len(lc) - nb
  n_rfree = dot_eqn.invars[1].aval.ndim - len(rc) - nb
  want = (*range(nb), *range(nb + n_lfree, nb + n_lfree + n_rfree), *range(nb, nb + n_lfree))
  return tuple(consumer.params["permutation"]) == want


def _sole_consumers(jaxpr) -> dict:
  """``{var: eqn}`` for variables read by exactly one equation and not returned."""
  uses: dict[Any, list] = {}
  for eqn in jaxpr.eqns:
    for v in eqn.invars:
      if not isinstance(v, jex_core.Literal):
        uses.setdefault(v, []).append(eqn)
  returned = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal)}
  return {v: e[0] for v, e in uses.items() if len(e) == 1 and v not in returned}


def _minor_dot(lhs, rhs, params):
  perm, dims = minor_contraction_layout(params["dimension_numbers"], lhs.ndim)
  if perm is not None:
    lhs = jax.lax.optimization_barrier(jax.lax.transpose(lhs, perm))
  return prims.dot_general_p.bind(lhs, rhs, **dict(params, dimension_numbers=dims))


def _eval_eqn(eqn, invals, consumers, folded) -> list:
  """Outputs of one equation; a weight-gradient transpose it absorbs is added to ``folded``."""
  if eqn.primitive is prims.dot_general_p:
    lhs, rhs = invals
    consumer = consumers.get(eqn.outvars[0])
    if _swappable(eqn, consumer):
      # A weight gradient: autodiff emits dot(g, x) and transposes it. Compute the
      # transposed product directly, x first, so it is x^T g with x^T materialised.
      (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
      folded.add(id(consumer))
      return [_minor_dot(rhs, lhs, dict(eqn.params, dimension_numbers=((rc, lc), (rb, lb))))]
    return [_minor_dot(lhs, rhs, eqn.params)]
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # older jax: (subfuns, params)
    subfuns, params = params
  out = eqn.primitive.bind(*subfuns, *invals, **params)
  return out if eqn.primitive.multiple_results else [out]


def _eval(jaxpr, consts, *args):
  env: dict[Any, Any] = {}
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  consumers = _sole_consumers(jaxpr)
  folded = set()  # transposes already applied by the product that feeds them (identity now)
  for eqn in jaxpr.eqns:
    invals = [_read(env, v) for v in eqn.invars]
    with eqn.ctx.manager:
      outvals = invals if id(eqn) in folded else _eval_eqn(eqn, invals, consumers, folded)
    env.update(zip(eqn.outvars, outvals))
  return [_read(env, v) for v in jaxpr.outvars]


def contract_minor(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with its top-level ``dot_general`` s contracting the left operand's minor dims.

  Same signature and outputs (pytrees in, pytrees out); ``fn`` is traced once
  per call (use it inside `jax.jit`). Errors of ``fn`` itself are raised as
  usual; if re-evaluating its jaxpr fails (a jax version whose jaxpr API this
  module does not know), a `RuntimeWarning` names the error and ``fn`` runs
  unchanged.
  """

  @functools.wraps(fn)
  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    try:
      flat = _eval(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
    except Exception as e:  # pylint: disable=broad-except
      warnings.warn(f"paperlab.dots.contract_minor: keeping XLA's dot layout ({type(e).__name__}: "
                    f"{e})", RuntimeWarning, stacklevel=2)
      return fn(*args)
    return jax.tree.unflatten(jax.tree.structure(out_shape), flat)

  return wrapped
