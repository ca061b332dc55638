"""Optimiser groups, schedules, golden SGD steps and a short training run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ccl_jax import losses, train
from ccl_jax.models import CCLMLP
from paperlab import data


def test_gradient_centralization_matches_numpy():
  rng = np.random.default_rng(0)
  grads = {"dense": rng.normal(size=(5, 3)), "conv": rng.normal(size=(3, 3, 2, 4)),
           "bias": rng.normal(size=(4,))}
  out, _ = train.centralize_gradients().update(
      jax.tree.map(jnp.asarray, grads), optax.EmptyState())
  np.testing.assert_allclose(out["dense"], grads["dense"] - grads["dense"].mean(0),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      out["conv"], grads["conv"] - grads["conv"].mean((0, 1, 2), keepdims=True),
      rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out["bias"], grads["bias"], rtol=1e-6)
  # Centred: every output unit's gradient sums to zero over its inputs.
  np.testing.assert_allclose(np.asarray(out["dense"]).sum(0), 0, atol=1e-6)


def test_cosine_schedule_is_per_epoch_and_ends_at_eta_min():
  sched = train.cosine_per_epoch(1.0, steps_per_epoch=10, epochs=4, eta_min=0.1)
  lrs = [float(sched(s)) for s in (0, 9, 10, 20, 39, 40, 1000)]
  ref = [0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in (0, 0, 1, 2, 3, 4, 4)]
  np.testing.assert_allclose(lrs, ref, rtol=1e-6)


def test_warmup_factor():
  got = [float(train.warmup_factor(jnp.asarray(s), 4)) for s in (0, 1, 3, 10)]
  np.testing.assert_allclose(got, [0.25, 0.5, 1.0, 1.0])
  assert float(train.warmup_factor(jnp.asarray(0), 0)) == 1.0


@pytest.fixture(scope="module")
def tiny():
  model = CCLMLP((4, 3, 2), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def test_group_labels(tiny):
  _, params = tiny
  labels = train.group_labels(params)
  assert labels["layers"][0]["fwd"]["kernel"] == "forward"
  assert labels["layers"][1]["bwd"]["kernel"] == "feedback"
  with pytest.raises(ValueError, match="neither"):
    train.group_labels({"other": jnp.zeros(2)})


def _np_group_step(p, g, m, lr, clip, mom, wd):
  norm = np.sqrt(sum(np.sum(x ** 2) for x in g))
  scale = min(1.0, clip / norm)
  new_m = [mom * mi + gi * scale + wd * pi for pi, gi, mi in zip(p, g, m)]
  return [pi - lr * mi for pi, mi in zip(p, new_m)], new_m


def test_two_steps_match_numpy_sgd_with_separate_group_clipping(tiny):
  _, params = tiny
  cfg = train.OptimConfig(learning_rate=0.5, momentum=0.9, weight_decay=0.01,
                          clip_norm=1.0, cosine_epochs=2, eta_min=0.1,
                          steps_per_epoch=1)
  tx = train.make_optimizer(cfg)
  state = tx.init(params)
  leaves = lambda t, side: [np.asarray(t["layers"][l][side]["kernel"], np.float64)
                            for l in (0, 1)]
  rng = np.random.default_rng(1)
  p = params
  ref = {s: leaves(params, s) for s in ("fwd", "bwd")}
  mom = {s: [np.zeros_like(x) for x in ref[s]] for s in ref}
  for step in range(2):
    # Feedback gradients are large (clipped), forward ones small (not clipped).
    grads = jax.tree.map(lambda x: x, p)
    for l in (0, 1):
      for side, scale in (("fwd", 0.01), ("bwd", 10.0)):
        shape = p["layers"][l][side]["kernel"].shape
        grads["layers"][l][side]["kernel"] = jnp.asarray(
            scale * rng.normal(size=shape), jnp.float32)
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    lr = 0.1 + 0.4 * 0.5 * (1 + np.cos(np.pi * step / 2))
    for side in ("fwd", "bwd"):
      ref[side], mom[side] = _np_group_step(ref[side], leaves(grads, side),
                                            mom[side], lr, 1.0, 0.9, 0.01)
  for side in ("fwd", "bwd"):
    for got, want in zip(leaves(p, side), ref[side]):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_warmup_scales_the_loss_before_clipping(tiny):
  graphdef, params = tiny
  opt = train.OptimConfig(learning_rate=0.1, clip_norm=None)
  trainer = train.Trainer(graphdef, train.make_optimizer(opt), losses.ccl_loss,
                          losses.LossConfig(), warmup_steps=4)
  x = jnp.ones((2, 4))
  y = jnp.array([0, 1])
  new, _ = trainer.train_step(trainer.init(params), x, y, jnp.asarray(0))
  full = trainer._replace(warmup_steps=0)
  new_full, _ = full.train_step(full.init(params), x, y, jnp.asarray(0))
  delta = jax.tree.map(lambda a, b: a - b, new["params"], params)
  delta_full = jax.tree.map(lambda a, b: a - b, new_full["params"], params)
  # atol: the deltas are differences of O(1) float32 parameters.
  jax.tree.map(lambda d, f: np.testing.assert_allclose(d, 0.25 * f, rtol=1e-4,
                                                       atol=1e-7),
               delta, delta_full)
  assert float(jnp.max(jnp.abs(delta_full["layers"][0]["fwd"]["kernel"]))) > 1e-5


@pytest.mark.slow
def test_short_ccl_run_on_digits_beats_chance_by_far():
  tr, te = data.load("digits", "train"), data.load("digits", "test")
  mean, std = data.to_float(tr.images).mean(), data.to_float(tr.images).std()
  xtr = train.prepare_inputs(tr.images, flat=True, mean=mean, std=std)
  xte = train.prepare_inputs(te.images, flat=True, mean=mean, std=std)
  model = CCLMLP((64, 128, 128, 10), rngs=nnx.Rngs(0))
  trainer, state = train.Trainer.create(
      model, train.make_optimizer(train.OptimConfig()), losses.ccl_loss,
      losses.LossConfig())
  step_fn = train.make_step_fn(trainer, jnp.asarray(xtr), jnp.asarray(tr.labels),
                               batch_size=64, seed=0)
  state, first = step_fn(state, 0, 20)
  state, last = step_fn(state, 20, 180)
  assert float(last["loss"]) < float(first["loss"])
  acc = train.evaluate(jax.jit(trainer.eval_batch), state["params"], xte,
                       te.labels)["acc"]
  assert acc >= 0.85, acc  # chance is 0.10; 200 steps reach ~0.95


def test_epoch_batch_indices_uses_the_first_batches_of_each_epoch():
  full = data.batch_indices(100, 10, 3, 0, 30)   # 3 epochs of 10 batches
  capped = train.epoch_batch_indices(100, 10, 3, 0, 6, batches_per_epoch=2)
  np.testing.assert_array_equal(capped, full[[0, 1, 10, 11, 20, 21]])
  # A pure function of the step: a chunk starting mid-way gives the same rows.
  np.testing.assert_array_equal(
      train.epoch_batch_indices(100, 10, 3, 3, 3, batches_per_epoch=2), capped[3:])
  np.testing.assert_array_equal(train.epoch_batch_indices(100, 10, 3, 0, 30), full)
