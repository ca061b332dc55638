"""Orthonormalisation routines used by Dion (spec invariants 1, 17, 19)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim import orthogonalize as orth


def _tall(seed, p=96, r=16, cond=None):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((p, r))
  if cond is not None:
    u, _, vt = np.linalg.svd(a, full_matrices=False)
    a = (u * np.logspace(0, -np.log10(cond), r)) @ vt
  return jnp.asarray(a, jnp.float32)[None]


def _orth_error(p):
  p = np.asarray(p[0], np.float64)
  return np.max(np.abs(p.T @ p - np.eye(p.shape[1])))


@pytest.mark.parametrize("method", ["qr", "rcqr", "cqr"])
def test_orthonormal_columns_random_tall(method):
  p = orth.orthonormalize(_tall(0), method, key=jax.random.key(0))
  assert _orth_error(p) < 1e-5


@pytest.mark.parametrize("method", ["qr", "rcqr"])
@pytest.mark.parametrize("cond", [1e4, 1e6])
def test_orthonormal_ill_conditioned(method, cond):
  # float32 holds ~7 digits: beyond cond ~1e7 a fp32 matrix is numerically rank
  # deficient, and the guard (not the orthonormality) is what is tested, below.
  p = orth.orthonormalize(_tall(1, cond=cond), method, key=jax.random.key(1))
  assert _orth_error(p) < 1e-4


@pytest.mark.parametrize("method", ["qr", "rcqr", "cqr"])
def test_cond_1e10_is_finite_and_spans_input(method):
  a = _tall(2, cond=1e10)
  p = orth.orthonormalize(a, method, key=jax.random.key(2))
  p64, a64 = np.asarray(p[0], np.float64), np.asarray(a[0], np.float64)
  assert np.all(np.isfinite(p64))
  resid = a64 - p64 @ (p64.T @ a64)
  assert np.linalg.norm(resid) < 1e-4 * np.linalg.norm(a64)


def test_cholesky_upper_is_upper_factor():
  a = np.asarray(_tall(3)[0], np.float64)
  g = jnp.asarray(a.T @ a, jnp.float32)
  u = np.asarray(orth.cholesky_upper(g))
  assert np.allclose(np.tril(u, -1), 0.0)
  np.testing.assert_allclose(u.T @ u, np.asarray(g), rtol=1e-4, atol=1e-3)


def test_sketch_size_rounds_up_to_128():
  assert orth.sketch_size(16, 1.25) == 128
  assert orth.sketch_size(256, 1.25) == 384
  assert orth.sketch_size(1024, 1.25) == 1280
  assert orth.sketch_size(103, 1.25) == 256  # 128.75 -> two blocks


def test_rank_deficient_input_gives_finite_spanning_basis():
  rng = np.random.default_rng(4)
  a = np.outer(rng.standard_normal(64), rng.standard_normal(8)).astype(np.float32)  # rank 1
  for method in orth.QR_METHODS:
    p = np.asarray(orth.orthonormalize(jnp.asarray(a)[None], method, key=jax.random.key(4))[0])
    assert np.all(np.isfinite(p)), method
    np.testing.assert_allclose(p @ (p.T @ a), a, atol=1e-4 * np.abs(a).max())


def test_zero_input_gives_zero_not_nan():
  p = orth.orthonormalize(jnp.zeros((1, 32, 4)), "rcqr", key=jax.random.key(0))
  assert np.all(np.asarray(p) == 0.0)


def test_forced_cholesky_failure_falls_back(monkeypatch):
  monkeypatch.setattr(orth, "cholesky_upper", lambda a: jnp.full_like(a, jnp.nan))
  for method in ("rcqr", "cqr"):
    p = orth.orthonormalize(_tall(5), method, key=jax.random.key(5))
    assert np.all(np.isfinite(np.asarray(p))), method
    assert _orth_error(p) < 1e-4, method


def test_gram_eigh_matches_polar_factor():
  a = _tall(6)
  p = np.asarray(orth.gram_eigh_orthonormalize(a)[0], np.float64)
  u, _, vt = np.linalg.svd(np.asarray(a[0], np.float64), full_matrices=False)
  np.testing.assert_allclose(p, u @ vt, atol=1e-4)


def test_bad_method_and_missing_key_raise():
  with pytest.raises(ValueError, match="qr_method"):
    orth.orthonormalize(_tall(0), "svd", key=jax.random.key(0))
  with pytest.raises(ValueError, match="PRNG key"):
    orth.orthonormalize(_tall(0), "rcqr")
