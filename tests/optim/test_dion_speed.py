"""Dion's compiled step: GEMM forms, in-place momentum, temporaries, grouping, sketch."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim import _dion as D
from optim import orthogonalize as orth

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


def test_full_matrix_is_never_a_gemm_lhs_contracted_on_its_rows():
  # XLA:CPU runs B^T X (B on the left, contracted on its row axis) 5-10x below
  # its GEMM rate; the step must form X^T B instead (`_rows_product`).
  hlo = _compiled(1).as_text()
  shapes = dict(re.findall(r"%([\w.\-]+) = f32\[([\d,]*)\]", hlo))
  full = {"256,1024", "1,256,1024"}
  dots = [(shapes.get(lhs), shapes.get(rhs), dims) for lhs, rhs, dims in _dot_matches(hlo)]
  with_b = [d for d in dots if d[0] in full or d[1] in full]
  assert len(with_b) >= 2, dots  # B^T Q and B P at least
  for lhs, _, dims in with_b:
    if lhs in full:
      assert int(dims.split(",")[-1]) == len(lhs.split(",")) - 1, with_b


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
