"""The small-scale BigGAN recipe of the 8-Gaussian GAN: spectral norm, hinge loss, D steps, EMA, metric window."""

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))

import complex_momentum  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import complex_momentum_gan as gan  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_spectral_normalize_gives_unit_spectral_norm():
  w = jax.random.normal(jax.random.key(0), (32, 16)) * 3.0
  sn = np.asarray(gan.spectral_normalize(w, 20))
  np.testing.assert_allclose(np.linalg.norm(sn, 2), 1.0, rtol=1e-3)
  np.testing.assert_allclose(sn * np.linalg.norm(np.asarray(w), 2), np.asarray(w), rtol=2e-3, atol=1e-5)


def test_hinge_losses_match_their_formulas():
  players = (gan.mlp_init(jax.random.key(1), [4, 8, 2]), gan.mlp_init(jax.random.key(2), [2, 8, 1]))
  real, z = jax.random.normal(jax.random.key(3), (16, 2)), jax.random.normal(jax.random.key(4), (16, 4))
  g_loss, d_loss = gan.make_game("hinge", 0).losses
  d_real, d_fake = gan.mlp(players[1], real), gan.mlp(players[1], gan.mlp(players[0], z))
  want_d = np.mean(np.maximum(0, 1 - d_real)) + np.mean(np.maximum(0, 1 + d_fake))
  np.testing.assert_allclose(d_loss(players, (real, z)), want_d, rtol=1e-6)
  np.testing.assert_allclose(g_loss(players, (real, z)), -np.mean(d_fake), rtol=1e-6)
  # With spectral norm the discriminator sees normalised weights.
  d_sn = gan.make_game("hinge", 20).losses[1](players, (real, z))
  assert abs(float(d_sn) - float(want_d)) > 1e-4


def _setup(**kw):
  args = dict(z_dim=4, hidden=8, batch_size=16, lr_g=1e-3, lr_d=1e-3, b2=0.999, magnitudes=[0.8],
              angles=[math.pi / 8], seeds=[0], loss="hinge", sn_iters=3, d_steps=3, ema_decay=0.9)
  args.update(kw)
  return gan.GanSetup(**args)


def _run(setup, n):
  """``n`` steps from the initial state, init and steps each compiled once (eager init is slow)."""
  return jax.jit(setup.steps, static_argnums=2)(jax.jit(setup.init)(), jnp.int32(0), n)


@pytest.fixture(scope="module")
def recipe_run():
  """One 4-step run (2 D steps per G step, EMA 0.9; small so it compiles fast), shared below."""
  setup = _setup(d_steps=2, sn_iters=1)
  return setup, _run(setup, 4)


def test_discriminator_takes_d_steps_per_generator_step(recipe_run):
  _, state = recipe_run
  g_count = jax.tree.leaves(state.opt_states[0])[0]
  d_count = jax.tree.leaves(state.opt_states[1])[0]
  assert int(g_count[0]) == 4 and int(d_count[0]) == 8


def test_ema_generator_is_scored_and_lags_the_generator(recipe_run):
  setup, state = recipe_run
  ema, gen = state.ema[0]["w"], state.players[0][0]["w"]
  assert not np.allclose(ema, gen)
  assert setup.scored_generator(state) is state.ema
  # Decay 0: the EMA is the generator (the smallest recipe that compiles fast; D steps play no part).
  raw = _setup(ema_decay=0.0, d_steps=1, sn_iters=0)
  s0 = _run(raw, 2)
  np.testing.assert_array_equal(s0.ema[0]["w"], s0.players[0][0]["w"])
  assert raw.scored_generator(s0) is s0.players[0]


def test_metric_window_is_the_last_fifth_and_arms_are_the_sweep():
  assert gan.window_start(30000) == 24000 and gan.window_start(12) == 10
  cfg = complex_momentum.PRESETS["gan"]
  arms = complex_momentum.gan_methods(cfg)
  assert sorted(arms.values()) == sorted([(0.0, 0.0), (0.8, 0.0), (0.8, math.pi / 16),
                                          (0.8, math.pi / 8), (0.8, math.pi / 4)])
  assert cfg.gan_seeds >= 8 and cfg.gan_lr_g == cfg.gan_lr_d == 2e-4 and cfg.gan_loss == "hinge"
  assert cfg.gan_sn_iters > 0 and 2 <= cfg.gan_d_steps <= 4 and cfg.gan_ema > 0
