"""Latent search: schedule, loss terms, selection, final pruning and counts, a small search."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas import encoding as enc
from nas import search


def _sig(v):
  return 1 / (1 + np.exp(-v))


def test_temperature_schedule():
  steps = jnp.array([0, 1500, 2970, 2999, 5000])
  np.testing.assert_allclose(np.asarray(search.temperature(steps, 3000.0, 0.01)),
                             [1.0, 0.5, 0.01, 0.01, 0.01], rtol=1e-5)
  assert float(search.temperature(2969, 3000.0)) > 0.01


def test_loss_terms_match_numpy():
  depth, d = 2, 56
  raw = jnp.asarray(np.random.default_rng(0).normal(size=(7, d)) * 1.5, jnp.float32)
  params = {"z": raw, "t": jnp.asarray(0.3)}
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (20, 2)), jnp.float32)
  y = jnp.sin(3 * x[:, 0])
  hp = search.SearchConfig().hyperparams()
  total, terms = search.search_loss(params, lambda z: z, depth, x, y, jnp.asarray(0.5), hp)
  net = enc.parse(raw, depth)
  w = np.asarray(net.w, np.float64)
  ws = w * _sig(200 * (np.abs(w) - 0.3))
  real = np.asarray(enc.real_entries(depth).w)
  sparsity = 1e-4 * np.sum(real * (0.01 * _sig(20 * (np.abs(ws) - 0.3)) + 0.1 * np.abs(ws)))
  m = _sig(np.asarray(net.mask, np.float64))
  compact = -0.4 * np.mean(m.std(axis=-1)) + 0.001 * m.mean()
  a = np.asarray(net.act, np.float64) / 0.5
  act = np.exp(a - a.max(-1, keepdims=True))
  act /= act.sum(-1, keepdims=True)
  soft = enc.Net(jnp.asarray(ws, jnp.float32), net.b, jnp.asarray(act, jnp.float32),
                 jnp.asarray(_sig(200 * (m - 0.5)), jnp.float32))
  mse = np.mean((np.asarray(enc.forward(soft, x)) - np.asarray(y)) ** 2)
  np.testing.assert_allclose(float(terms["sparsity"]), sparsity, rtol=1e-4)
  np.testing.assert_allclose(float(terms["compact"]), compact, rtol=1e-4)
  np.testing.assert_allclose(float(terms["mse"]), mse, rtol=1e-4)
  np.testing.assert_allclose(float(total), mse + sparsity + compact, rtol=1e-4)


def _np_count(raw, depth, t):
  net = enc.parse(jnp.asarray(raw), depth)
  w = np.asarray(net.w) * (np.abs(np.asarray(net.w)) >= t) * np.asarray(enc.real_entries(depth).w)
  active = _sig(np.asarray(net.mask)) >= 0.5
  n = int(active.sum()) + 1  # active biases + output bias
  for l in range(depth + 1):
    rows = [0, 1] if l == 0 else np.flatnonzero(active[l - 1])
    cols = [0] if l == depth else np.flatnonzero(active[l])
    n += int(np.count_nonzero(w[l][np.ix_(rows, cols)]))
  return int(active.sum()), n


@functools.partial(jax.jit, static_argnums=1)
def _hard(raw, depth, t):
  net = search.hard_net(raw, depth, t)
  return net, search.count(net)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_hard_net_counts(depth):
  dense = enc.dense_param_count(depth)
  for seed, t in [(0, 0.0), (1, 0.5), (2, 1.5)]:
    raw = np.random.default_rng(seed + 10 * depth).normal(size=(7, 56)).astype(np.float32) * 2
    net, counts = _hard(jnp.asarray(raw), depth, jnp.asarray(t))
    active, n = _np_count(raw, depth, t)
    assert int(counts["active_neurons"]) == active and int(counts["nonzero_params"]) == n
    assert n <= dense
    # Arg-max activation is the softmax mode, and the hard net's forward equals the soft one with
    # hard masks, hard pruning and one-hot activations.
    logits = np.asarray(enc.parse(jnp.asarray(raw), depth).act)
    np.testing.assert_array_equal(np.asarray(net.act).argmax(-1), logits.argmax(-1))
  all_on = np.asarray(enc.encode(enc.Net(jnp.ones((depth + 1, 7, 7)), jnp.ones((depth + 1, 7)),
                                         jnp.ones((depth, 7, 3)), 5 * jnp.ones((depth, 7))))[..., 0])
  assert int(_hard(jnp.asarray(all_on), depth, jnp.asarray(0.0))[1]["nonzero_params"]) == dense


def test_best_is_selected_after_warmup():
  cfg = search.SearchConfig(steps=40, warmup=25, anneal_steps=20, record_every=1)
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (30, 2)), jnp.float32)
  y = x[:, 0] * x[:, 1]
  out = search.run_search(lambda z: z, 1, x, y, jax.random.key(0, impl="rbg"), (7, 56), cfg)
  loss = np.asarray(out.trace["loss"])
  assert loss.shape == (40,)
  np.testing.assert_allclose(float(out.best_loss), loss[25:].min(), rtol=1e-6)
  np.testing.assert_allclose(float(out.trace["temperature"][0]), 1.0)
  t = np.asarray(out.trace["threshold"])
  assert (t >= 0).all() and (t <= 3).all()


@pytest.mark.slow
def test_search_fits_a_function_of_the_family():
  """With the identity as decoder the latent is the weight tensor: the search must fit a
  depth-1 teacher with 3 tanh neurons from a random start."""
  w = jnp.zeros((2, 7, 7)).at[0, 0, :3].set(jnp.array([1.5, -1.0, 0.5])).at[0, 1, :3].set(
      jnp.array([0.5, 1.2, -1.5])).at[1, :3, 0].set(jnp.array([0.8, -0.6, 0.7]))
  teacher = enc.Net(w, jnp.zeros((2, 7)).at[0, :3].set(0.2), jax.nn.one_hot(jnp.ones((1, 7), int), 3),
                    jnp.zeros((1, 7)).at[0, :3].set(1.0))
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (400, 2)), jnp.float32)
  y = enc.forward(teacher, x)
  cfg = search.SearchConfig(steps=1500, warmup=600, anneal_steps=600, lr_z=0.05)
  run = jax.jit(functools.partial(search.run_search, lambda z: z, 1, latent_shape=(7, 56), cfg=cfg))
  out = run(x, y, jax.random.key(0, impl="rbg"))
  net = search.hard_net(out.params["z"], 1, out.params["t"])
  mse = float(jnp.mean((enc.forward(net, x) - y) ** 2))
  assert mse < 0.02 * float(jnp.var(y)), (mse, float(jnp.var(y)))
  assert int(search.count(net)["nonzero_params"]) < enc.dense_param_count(1)


def test_config_validation():
  with pytest.raises(ValueError, match="warmup"):
    search.SearchConfig(steps=10, warmup=10).validate()
  with pytest.raises(ValueError, match="min_temperature"):
    search.SearchConfig(min_temperature=0.0).validate()
