"""Every qr_method on the float64 NumPy trajectory: rank fractions 1/16, 1/4, 1; tall and wide.

The reference (`test_dion.numpy_dion`) uses Householder QR in float64. All methods
return the Q factor of ``B Q`` up to column signs, which the update ``P Q^T``
does not see, so the weights and momenta must agree to 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim import _dion as D
from optim import orthogonalize as orth
from test_dion import numpy_dion

SHAPES = ((128, 64), (64, 128))
FRACTIONS = (1 / 16, 1 / 4, 1.0)
LR, MU, WD = 0.05, 0.9, 0.1


def _grads(kind, shape, seed, steps=3):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    a = rng.standard_normal(shape)
    if kind == "ill":  # singular values from 1 down to 1e-6
      u, s, vt = np.linalg.svd(a, full_matrices=False)
      a = (u * np.logspace(0, -6, len(s))) @ vt
    elif kind == "rank3":
      a = rng.standard_normal((shape[0], 3)) @ rng.standard_normal((3, shape[1]))
    out.append(a)
  return out


def _max_errors(shape, fraction, method, precision, grads):
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  x0 = jnp.asarray(np.random.default_rng(1).standard_normal(shape), dtype)
  grads = [jnp.asarray(g, dtype) for g in grads]
  tx = optax.chain(D.scale_by_dion(fraction, MU, qr_method=method, key=3, precision=precision),
                   optax.add_decayed_weights(WD), optax.scale_by_learning_rate(LR))
  state = tx.init(x0)
  q0 = np.asarray(state[0].q, np.float64)
  step = jax.jit(tx.update)
  x = x0
  for g in grads:
    u, state = step(g, state, x)
    x = optax.apply_updates(x, u)
  ref_x, ref_m, _ = numpy_dion(x0, grads, q0, lr=LR, mu=MU, wd=WD)
  m = np.asarray(state[0].momentum, np.float64)
  assert np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(m))
  return (np.max(np.abs(np.asarray(x, np.float64) - ref_x)),
          np.max(np.abs(m - ref_m)) / np.max(np.abs(ref_m)))


def _check(kind, method, precision, fractions=FRACTIONS, steps=3, tol=1e-5):
  worst = {}
  for shape in SHAPES:
    for fraction in fractions:
      dx, dm = _max_errors(shape, fraction, method, precision, _grads(kind, shape, 7, steps))
      worst[(shape, fraction)] = (dx, dm)
  bad = {k: v for k, v in worst.items() if max(v) > tol}
  assert not bad, bad


@pytest.mark.slow
@pytest.mark.parametrize("method", orth.QR_METHODS)
def test_random_float32(method):
  _check("random", method, "float32")


@pytest.mark.slow
@pytest.mark.parametrize("method", orth.QR_METHODS)
def test_random_and_ill_conditioned_float64(method):
  with jax.enable_x64(True):
    _check("random", method, "float64")
    _check("ill", method, "float64")


@pytest.mark.parametrize("method", orth.QR_METHODS)
def test_ill_conditioned_float32_low_rank(method):
  # At full rank P = B Q inherits cond(B) = 1e6, beyond float32: see the float64 test.
  _check("ill", method, "float32", fractions=(1 / 16, 1 / 4))


@pytest.mark.slow
@pytest.mark.parametrize("method", orth.QR_METHODS)
def test_rank_deficient_float64_first_step(method):
  # rank(G) = 3 < r at every fraction here but 1/16 of 64 (r = 4 > 3 too): the
  # directions beyond rank 3 are arbitrary, and every method must give them no
  # weight in the update (later steps depend on which arbitrary basis was taken).
  with jax.enable_x64(True):
    _check("rank3", method, "float64", steps=1)


def test_single_cholesky_qr_pass_is_not_exact_at_full_rank():
  # What the second pass fixes: one Cholesky-QR pass on a full-rank wide leaf.
  rng = np.random.default_rng(0)
  b = jnp.asarray(rng.standard_normal((128, 64)), jnp.float32)
  p = b @ jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)
  one, _ = orth.cholesky_qr(p[None])
  two, ok = orth.cholesky_qr2(p[None])
  err = lambda q: np.max(np.abs(np.asarray(q[0], np.float64).T @ np.asarray(q[0], np.float64)
                                - np.eye(64)))
  assert err(one) > 1e-4 and err(two) < 1e-5 and bool(ok[0])


def test_precision_float64_needs_x64():
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match="jax_enable_x64"):
      D.scale_by_dion(precision="float64")
  with pytest.raises(ValueError, match="precision"):
    D.scale_by_dion(precision="bfloat16")
