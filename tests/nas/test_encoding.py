"""Encoding layout, round trip, forward pass and teacher generator of SWAT-NN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas import encoding as enc

_fwd = jax.jit(enc.forward)


def _key(seed):
  """Fast-compiling keys for the teacher generator (threefry compiles slowly on CPU)."""
  return jax.random.key(seed, impl="rbg")


def _np_forward(net, x):
  """Reference forward pass written from the formula, one neuron at a time."""
  w, b, act, mask = (np.asarray(a, np.float64) for a in net)
  depth = w.shape[0] - 1
  h = np.asarray(x, np.float64)
  fns = [lambda v: 1 / (1 + np.exp(-v)), np.tanh, lambda v: np.where(v > 0, v, 0.01 * v)]
  for l in range(depth):
    fan_in = h.shape[1]
    out = np.zeros((len(h), enc.H))
    for j in range(enc.H):
      pre = h @ w[l, :fan_in, j] + b[l, j]
      out[:, j] = mask[l, j] * sum(act[l, j, k] * fns[k](pre) for k in range(3))
    h = out
  return h @ w[depth, :, 0] + b[depth, 0]


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_round_trip_layout_and_forward(depth):
  net = jax.jit(enc.random_net, static_argnums=1)(_key(depth), depth, 0.2)
  tensor = jax.jit(enc.encode)(net)
  assert tensor.shape == enc.SHAPE == (7, 56, 2)
  back = jax.device_get(enc.decode(tensor, depth))
  for a, b in zip(net, back):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Column layout: weights [11l, 11l+7), bias 11l+7, activations [11l+8, 11l+11), masks from 11L+8.
  t = np.asarray(tensor[..., 0])
  for l in range(depth):
    np.testing.assert_array_equal(t[:, 11 * l:11 * l + 7], np.asarray(net.w[l]))
    np.testing.assert_array_equal(t[:, 11 * l + 7], np.asarray(net.b[l]))
    np.testing.assert_array_equal(t[:, 11 * l + 8:11 * l + 11], np.asarray(net.act[l]))
  np.testing.assert_array_equal(t[:, 11 * depth + 8:12 * depth + 8], np.asarray(net.mask).T)
  valid = np.asarray(tensor[..., 1])
  assert enc.width(depth) == 12 * depth + 8
  assert not valid[:, enc.width(depth):].any() and not t[:, enc.width(depth):].any()
  assert valid[:2, :7].all() and not valid[2:, :7].any()  # first layer: two real input rows
  assert valid[:, 11 * depth].all() and not valid[:, 11 * depth + 1:11 * depth + 7].any()  # output column
  x = jnp.asarray(np.random.default_rng(9).uniform(-1, 1, (50, 2)), jnp.float32)
  np.testing.assert_allclose(np.asarray(_fwd(back, x)), _np_forward(net, x), rtol=1e-5, atol=1e-4)


def test_masked_neuron_has_no_effect():
  net = enc.random_net(_key(3), 3, 0.0)
  mask = net.mask.at[1, 4].set(0.0).at[1, 2].set(1.0)
  net = net._replace(mask=mask)
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (64, 2)), jnp.float32)
  base = _fwd(net, x)
  w = net.w.at[1, :, 4].add(3.0).at[2, 4, :].add(-7.0)  # incoming and outgoing weights of neuron 4
  np.testing.assert_array_equal(np.asarray(_fwd(net._replace(w=w, b=net.b.at[1, 4].add(5.0)), x)),
                                np.asarray(base))
  # The same edit on an active neuron changes the output: the check can fail.
  w = net.w.at[1, :, 2].add(3.0).at[2, 2, :].add(-7.0)
  assert not np.allclose(np.asarray(_fwd(net._replace(w=w), x)), np.asarray(base))


def test_padding_is_ignored_by_forward():
  depth = 2
  net = enc.random_net(_key(0), depth, 0.0)
  pad = 1.0 - np.asarray(enc.real_entries(depth).w)
  noisy = net._replace(w=net.w + 9.0 * pad, b=net.b.at[depth, 1:].set(4.0))
  x = jnp.ones((3, 2)) * 0.3
  np.testing.assert_array_equal(np.asarray(_fwd(noisy, x)), np.asarray(_fwd(net, x)))


def test_teacher_generator_statistics():
  sample = jax.jit(lambda k: enc.sample_teachers(k, 16, 32))
  refit = jax.jit(lambda t, x, d: enc.batched_forward(enc.decode(t, d), x), static_argnums=2)
  depths, sparsities = set(), []
  for i in range(16):
    batch = sample(_key(i))
    d = int(batch.depth)
    depths.add(d)
    nets = jax.device_get(enc.decode(batch.tensors, d))
    np.testing.assert_allclose(np.asarray(refit(batch.tensors, batch.x, d)), np.asarray(batch.y),
                               rtol=1e-5, atol=1e-4)
    assert batch.x.shape == (32, 2) and float(jnp.abs(batch.x).max()) <= 1.0
    real = np.asarray(enc.real_entries(d).w, bool)
    w = np.asarray(nets.w)[:, real]
    assert np.abs(w).max() <= 5.0
    sparsities.append(np.mean(w == 0))
    np.testing.assert_array_equal(np.asarray(nets.act).sum(-1), 1.0)
    assert set(np.unique(np.asarray(nets.mask))) <= {0.0, 1.0}
  assert depths == {1, 2, 3, 4}
  # The batch-level sparsity is one of 0, 0.2, 0.4 (up to sampling noise).
  assert min(sparsities) < 0.05 and max(sparsities) > 0.3


def test_dense_count_and_bad_depth():
  assert [enc.dense_param_count(d) for d in (1, 2, 3, 4)] == [29, 85, 141, 197]
  with pytest.raises(ValueError, match="depth must be in 1..4"):
    enc.real_entries(5)


def test_fixed_activation_teachers_and_decoder():
  from nas import encoding as enc
  batch = enc.sample_teachers(jax.random.key(0), 4, 8, depth=3, activation="tanh")
  nets = jax.vmap(lambda t: enc.decode(t, 3))(batch.tensors)
  assert np.all(np.argmax(np.asarray(nets.act), -1) == enc.ACTIVATIONS.index("tanh"))
  raw = jax.random.normal(jax.random.key(1), (enc.H, enc.WIDTH))
  fixed = enc.parse(enc.fix_activation(raw, 2, "sigmoid"), 2)
  np.testing.assert_allclose(jax.nn.softmax(fixed.act, -1)[..., 0], 1.0, atol=1e-6)
  np.testing.assert_array_equal(enc.parse(raw, 2).w, fixed.w)
