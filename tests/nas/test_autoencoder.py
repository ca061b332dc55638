"""Multi-scale autoencoder: shapes, the min-over-decoders loss, a short training run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nas import autoencoder as ae
from nas import encoding as enc

TINY = ae.AEConfig(d_model=16, num_heads=2, enc_layers=1, dec_layers=1, mlp_ratio=2)


def _key(seed):
  """Fast-compiling keys for the teacher generator (threefry compiles slowly on CPU)."""
  return jax.random.key(seed, impl="rbg")


def test_shapes_and_min_over_decoders():
  model = ae.Autoencoder(TINY, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)

  @jax.jit
  def run(params):
    model = nnx.merge(graphdef, params)
    batch = enc.sample_teachers(_key(1), 8, 40, depth=2)
    z = model.encode(batch.tensors)
    return batch, z, model.decode(z, 2), ae.decoder_losses(model, z, batch.x, batch.y)

  batch, z, raw2, losses = run(params)
  assert z.shape == (8, 7, 16) and raw2.shape == (8, 7, 56)
  assert losses.shape == (4, 8)
  loss = ae.functional_loss(losses)
  per_decoder = np.asarray(losses.mean(axis=1))
  assert float(loss) <= per_decoder.min() + 1e-6
  np.testing.assert_allclose(float(loss), np.asarray(losses).min(axis=0).mean(), rtol=1e-6)
  # The same numbers from a hand-parsed decoder output (softmax activations, sigmoid masks).
  net = enc.parse(raw2[0], 2)
  act = np.exp(np.asarray(net.act)) / np.exp(np.asarray(net.act)).sum(-1, keepdims=True)
  soft = net._replace(act=jnp.asarray(act), mask=jnp.asarray(1 / (1 + np.exp(-np.asarray(net.mask)))))
  mse = np.mean((np.asarray(enc.forward(soft, batch.x)) - np.asarray(batch.y[0])) ** 2)
  np.testing.assert_allclose(float(losses[1, 0]), mse, rtol=1e-4)


def test_zero_loss_when_a_decoder_reproduces_the_teacher():
  @jax.jit
  def run(key):
    batch = enc.sample_teachers(key, 4, 30, depth=3)
    nets = enc.decode(batch.tensors, 3)
    # A "decoder" whose depth-3 output is the encoded teacher (one-hot logits scaled up, mask logits +-30).
    big = enc.encode(nets._replace(act=30.0 * (nets.act - 0.5), mask=60.0 * (nets.mask - 0.5)))[..., 0]
    return enc.batched_forward(ae.soft_net(big, 3), batch.x), batch.y

  pred, y = run(_key(2))
  np.testing.assert_allclose(np.asarray(pred), np.asarray(y), rtol=1e-4, atol=1e-4)


def test_reconstruction_loss_is_zero_for_the_teacher_and_ignores_padding():
  @jax.jit
  def run(key):
    batch = enc.sample_teachers(key, 4, 30, depth=2)
    nets = enc.decode(batch.tensors, 2)
    exact = enc.encode(nets._replace(act=60.0 * (nets.act - 0.5), mask=60.0 * (nets.mask - 0.5)))[..., 0]
    # Anything in the padding (unused columns and entries the forward pass never reads) is ignored.
    valid = batch.tensors[..., 1]
    padded = exact + 7.0 * (1.0 - valid)
    wrong_weight = exact.at[:, 3, 0].add(2.0)  # W_0 row 3 is padding; W_0 row 1 is real
    wrong_real = exact.at[:, 1, 0].add(2.0)
    return [ae.reconstruction_loss(r, batch.tensors, 2) for r in (exact, padded, wrong_weight, wrong_real)]

  exact, padded, wrong_padding, wrong_real = map(np.asarray, run(_key(3)))
  assert exact.shape == (4,)
  np.testing.assert_allclose(exact, 0.0, atol=1e-6)
  np.testing.assert_allclose(padded, 0.0, atol=1e-6)
  np.testing.assert_allclose(wrong_padding, 0.0, atol=1e-6)
  real = enc.real_entries(2)
  n_real = float(real.w.sum() + real.b.sum())
  np.testing.assert_allclose(wrong_real, 4.0 / n_real, rtol=1e-4)


def test_step_with_reconstruction_term_reports_both_losses_and_weights_both_gradients():
  model = ae.Autoencoder(TINY, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)  # linear in the gradient: the combined step is the sum of the two steps
  graphdef, state = ae.init_state(model, tx)

  def delta(functional_weight, recon_weight):
    step_fn = ae.make_step_fn(graphdef, tx, batch_size=4, num_points=16, seed=0, normalize=True,
                              functional_weight=functional_weight, recon_weight=recon_weight)
    new, metrics = step_fn(state, 0, 1)
    return jax.tree.map(jnp.subtract, new["params"], state["params"]), metrics

  func_only, _ = delta(0.5, 0.0)
  recon_only, _ = delta(0.0, 1.0)
  both, metrics = delta(0.5, 1.0)
  assert set(metrics) == {"loss", "recon", "best_decoder_is_teacher_depth"}
  assert np.isfinite(float(metrics["loss"])) and float(metrics["recon"]) > 0
  assert max(float(jnp.max(jnp.abs(d))) for d in jax.tree.leaves(recon_only)) > 1e-6
  for f, r, b in zip(jax.tree.leaves(func_only), jax.tree.leaves(recon_only), jax.tree.leaves(both)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(f + r), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_short_training_lowers_heldout_loss():
  model = ae.Autoencoder(TINY, rngs=nnx.Rngs(0))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
  graphdef, state = ae.init_state(model, tx)
  step_fn = ae.make_step_fn(graphdef, tx, batch_size=16, num_points=32, seed=0, normalize=True)
  evaluate = ae.make_eval_fn(graphdef, seed=5, nets_per_depth=16, num_points=32)
  before = float(evaluate(state["params"])["heldout_loss_normalized"])
  state, metrics = step_fn(state, 0, 120)
  after = float(evaluate(state["params"])["heldout_loss_normalized"])
  assert np.isfinite(float(metrics["loss"]))
  assert after < 0.8 * before, (before, after)


def test_bad_config():
  with pytest.raises(ValueError, match="multiple of num_heads"):
    ae.AEConfig(d_model=10, num_heads=3).validate()
