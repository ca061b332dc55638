"""Dion's compiled step: GEMM forms, in-place momentum, temporaries, grouping, sketch."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim import _dion as D
from optim import orthogonalize as orth
from paperlab import mesh as mesh_lib

SHAPE = (256, 1024)  # Flax (fan_in, fan_out): stored transposed, P on fan_out
MATRIX_BYTES = 4 * SHAPE[0] * SHAPE[1]


def _leaves(count, seed=0):
  key = jax.random.key(seed)
  return {f"w{i}": 0.02 * jax.random.normal(jax.random.fold_in(key, i), SHAPE)
          for i in range(count)}


def _compiled(count, fraction=1 / 16, **kw):
  params, grads = _leaves(count), _leaves(count, 1)
  tx = D.scale_by_dion(fraction, **kw)

  def step(params, state, grads):
    u, state = tx.update(grads, state, params)
    return optax.apply_updates(params, jax.tree.map(lambda x: -0.01 * x, u)), state

  return jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()


def _dot_matches(hlo):
  pattern = re.compile(r"dot\(%([\w.\-]+), %([\w.\-]+)\),(?: lhs_batch_dims=\{[\d,]*\},)? "
                       r"lhs_contracting_dims=\{([\d,]*)\}")
  return pattern.findall(hlo)


@pytest.mark.parametrize("shape", [SHAPE, SHAPE[::-1]])
@pytest.mark.parametrize("fraction", [1 / 4, 1.0])
def test_no_large_gemm_operand_is_contracted_on_its_leading_axis(shape, fraction):
  # XLA:CPU runs X^T Y (the left operand contracted on its leading axis) 1.7-2x
  # below its GEMM rate on large operands, 5-10x on some machines; every large
  # product of the step (B Q, B^T P, the Gram of P, S P, the outer products) must
  # have the left operand contracted on its last axis (`_basis_rows`, `_gram_rows`).
  params, grads = {"w": 0.02 * jnp.ones(shape)}, {"w": 0.01 * jnp.ones(shape)}
  tx = D.scale_by_dion(fraction)
  hlo = jax.jit(tx.update).lower(grads, tx.init(params), params).compile().as_text()
  shapes = dict(re.findall(r"%([\w.\-]+) = f32\[([\d,]*)\]", hlo))
  dots = [(shapes.get(lhs), dims) for lhs, _, dims in _dot_matches(hlo)]
  rank = D.dion_rank(fraction, *shape)
  large = [(lhs, dims) for lhs, dims in dots
           if lhs and np.prod([int(d) for d in lhs.split(",")]) >= min(shape) * rank]
  assert len(large) >= 4, dots  # B Q, B^T P, Gram, S P at least
  for lhs, dims in large:
    assert int(dims.split(",")[-1]) == len(lhs.split(",")) - 1, (lhs, dims, large)


def test_b_overwrites_the_donated_momentum_and_leaves_share_temporaries():
  # B = M + G is written over M, so one matrix step needs one full-size
  # temporary (P R^T, then P Q^T); the leaves run in order and reuse it.
  # Measured: 1.11 matrices for 1 leaf (3.07 with B in a fresh buffer), 2.63
  # for 3 leaves (3.28 without the ordering edge).
  for count, limit in ((1, 1.5), (3, 3.0)):
    temp = _compiled(count, group_same_shape=False).memory_analysis().temp_size_in_bytes
    assert temp < limit * MATRIX_BYTES, (count, temp / MATRIX_BYTES)


def test_large_matrices_are_not_stacked():
  def groups(shape, count=3):
    params = {f"w{i}": jnp.zeros(shape) for i in range(count)}
    leaves = D._leaves(params, None)
    planned = {i: D.plan_leaf(leaves.paths[i], shape, None, rank_fraction=0.25,
                              rank_multiple_of=1, fsdp_axis="fsdp", tp_axis="tp")
               for i in leaves.arrays()}
    return list(D._groups(planned, leaves, True).values())

  assert groups((64, 128)) == [[0, 1, 2]]
  small_side = D.GROUP_MAX_SIZE // 1024
  assert groups((small_side - 1, 1024)) == [[0, 1, 2]]
  assert groups((small_side, 1024)) == [[0], [1], [2]]


def test_gaussian_sketch_is_standard_normal_and_keyed():
  key = jax.random.key(3)
  s = np.asarray(orth.gaussian_sketch(key, (2, 128, 512), jnp.float32), np.float64).ravel()
  assert abs(s.mean()) < 0.01 and abs(s.std() - 1.0) < 0.01
  assert abs(np.mean(s ** 4) / np.var(s) ** 2 - 3.0) < 0.1  # Gaussian kurtosis
  assert abs(np.mean(np.abs(s) > 1.959964) - 0.05) < 0.005  # two-sided 5% tail
  again = np.asarray(orth.gaussian_sketch(key, (2, 128, 512), jnp.float32)).ravel()
  other = np.asarray(orth.gaussian_sketch(jax.random.fold_in(key, 1), (2, 128, 512),
                                          jnp.float32)).ravel()
  np.testing.assert_array_equal(s, again)
  assert abs(np.corrcoef(s, other)[0, 1]) < 0.02
  assert np.all(np.isfinite(s))


def test_gaussian_sketch_has_independent_neighbours_and_uniform_quantiles():
  """Each 32-bit word gives two adjacent samples; words, rows and matrices are independent."""
  s = np.asarray(orth.gaussian_sketch(jax.random.key(1), (2, 128, 512), jnp.float32), np.float64)
  corr = lambda a, b: abs(np.corrcoef(a.ravel(), b.ravel())[0, 1])
  assert corr(s[..., 0::2], s[..., 1::2]) < 0.02  # the two halves of one word
  assert corr(s[..., 0::2], np.abs(s[..., 1::2])) < 0.02
  assert corr(s[..., :-2], s[..., 2:]) < 0.02  # consecutive words, same half
  assert corr(s[:, :-1], s[:, 1:]) < 0.02  # neighbouring rows
  assert corr(s[0], s[1]) < 0.02  # the matrices of a batch
  # The 16-bit quantile index is uniform: chi-square over 256 equal-probability bins
  # (255 degrees of freedom: mean 255, sd 22.6).
  bins = np.floor(jax.scipy.stats.norm.cdf(s).ravel() * 256).astype(int)
  counts = np.bincount(bins, minlength=256)
  expected = s.size / 256
  assert np.sum((counts - expected) ** 2 / expected) < 350
  assert np.unique(s).size > 40000  # 16-bit resolution: most of the 65536 values occur
  with pytest.raises(ValueError, match="even last dimension"):
    orth.gaussian_sketch(jax.random.key(0), (4, 7), jnp.float32)
  with pytest.raises(ValueError, match="32-bit counter"):
    orth.gaussian_sketch(jax.random.key(0), (1 << 16, 1 << 17), jnp.float32)


def test_gaussian_sketch_is_the_same_however_it_is_sharded():
  key, shape = jax.random.key(5), (2, 256, 128)
  whole = np.asarray(orth.gaussian_sketch(key, shape, jnp.float32))
  mesh = mesh_lib.make_mesh({mesh_lib.FSDP: 8}, devices=jax.devices()[:8])
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, mesh_lib.FSDP, None))
  sharded = jax.jit(lambda k: orth.gaussian_sketch(k, shape, jnp.float32), out_shardings=rows)(key)
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(sharded), whole)


def test_unsharded_rcqr_applies_its_triangular_factors_by_solves():
  # P R_s^{-1} and P_1 U^{-1} as triangular solves (p r^2 FLOPs each), not as
  # products with explicit inverses (2 p r^2): 60 vs 150 ms per (4096 x 1024)
  # factor on the benchmark machine.
  hlo = _compiled(1, fraction=1.0).as_text()
  tall = f"f32[{SHAPE[1]},{SHAPE[0]}]"
  solves = [line for line in hlo.splitlines()
            if ("triangular" in line or "trsm" in line) and f"= {tall}" in line]
  assert len(solves) >= 2, solves


def test_large_gram_is_three_half_size_products():
  # From r = 512 on the symmetric Gram P^T P is assembled from its two diagonal
  # blocks and one off-diagonal block (3/4 of the FLOPs).
  pt = jnp.ones((1, 512, 1024))
  hlo = jax.jit(orth._gram_rows).lower(pt).compile().as_text()
  halves = [d for d in _dot_matches(hlo)]
  outputs = re.findall(r"= f32\[([\d,]*)\]\{[\d,]*\} (?:dot|fusion)\(", hlo)
  assert len(halves) == 3, halves
  assert outputs.count("1,256,256") + outputs.count("256,256") >= 3, outputs
  g = np.asarray(orth._gram_rows(jax.random.normal(jax.random.key(0), (1, 512, 700))))
  np.testing.assert_array_equal(g, np.swapaxes(g, -1, -2))
