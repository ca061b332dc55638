"""Conv kernels under optim.dion: one (k*k*in, out) matrix each, and a conv net trains."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optim
from optim import _dion as D
from optim import labels as L


def test_conv_update_is_dion_of_the_flattened_matrix():
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)
  grads = [jnp.asarray(rng.standard_normal(kernel.shape), jnp.float32) for _ in range(2)]
  tx = optim.dion(0.1, 0.5, weight_decay=0.1, key=5)
  state = tx.init({"conv": kernel})
  flat_tx = optax.chain(D.scale_by_dion(0.5, key=5), optax.add_decayed_weights(0.1),
                        optax.scale_by_learning_rate(0.1))
  flat = kernel.reshape(36, 8)
  flat_state = flat_tx.init({"conv": flat})
  for g in grads:
    u, state = tx.update({"conv": g}, state, {"conv": kernel})
    fu, flat_state = flat_tx.update({"conv": g.reshape(36, 8)}, flat_state, {"conv": flat})
    assert u["conv"].shape == (3, 3, 4, 8)
    np.testing.assert_allclose(np.asarray(u["conv"]).reshape(36, 8), np.asarray(fu["conv"]),
                               atol=1e-6)
  dion_state = state.inner_states[L.CONV].inner_state[0]
  assert dion_state.q["conv"].shape == (8, 4)  # Q on the short side of (36, 8), r = 4


class _ConvNet(nnx.Module):

  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    return self.head(x.mean(axis=(1, 2)))


def test_two_layer_conv_net_trains_with_dion():
  model = _ConvNet(nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((32, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 32))
  labels = L.label_params(params)
  assert labels["conv1"]["kernel"] == L.CONV and labels["conv2"]["kernel"] == L.CONV
  tx = optim.dion(0.05, rank_fraction=0.5)
  state = tx.init(params)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  losses = []
  for _ in range(20):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0], losses
