"""Mixture-of-Gaussians GAN for the complex-momentum experiments (helper module).

Used by ``scripts/complex_momentum.py``; not a script of its own. Every run
(optimizer x swept value x seed) is a member of one `paperlab.sweep.Sweep`;
the optimizers differ only in Adam's first-moment decay
``beta1 = magnitude * exp(i angle)`` (complex Adam with angle 0 is
``optax.adam`` exactly), injected per member, so they share one compiled
program.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab import sweep
from optim import games
from optim import complex_adam

NUM_MODES = 8
RADIUS = 2.0
MODE_STD = 0.02


def mode_centers() -> jax.Array:
  angles = 2 * jnp.pi * jnp.arange(NUM_MODES) / NUM_MODES
  return RADIUS * jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)


def real_batch(key: jax.Array, n: int) -> jax.Array:
  """``n`` samples of the 8-Gaussian ring (radius 2, std 0.02)."""
  k_mode, k_noise = jax.random.split(key)
  idx = jax.random.randint(k_mode, (n,), 0, NUM_MODES)
  return mode_centers()[idx] + MODE_STD * jax.random.normal(k_noise, (n, 2))


def mlp_init(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) / math.sqrt(a), "b": jnp.zeros(b)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params, x: jax.Array) -> jax.Array:
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def _d_loss(players, batch):
  gen, disc = players
  real, z = batch
  return (jnp.mean(jax.nn.softplus(-mlp(disc, real)))
          + jnp.mean(jax.nn.softplus(mlp(disc, mlp(gen, z)))))


def _g_loss(players, batch):  # non-saturating generator loss
  gen, disc = players
  _, z = batch
  return jnp.mean(jax.nn.softplus(-mlp(disc, mlp(gen, z))))


GAME = games.Game((_g_loss, _d_loss))


def score(gen, key: jax.Array, num_samples: int, min_fraction: float):
  """Modes covered and fraction of high-quality samples.

  A sample is high quality when it lies within 3 standard deviations (0.06)
  of its nearest mode; a mode is covered when at least ``min_fraction`` of all
  samples are high-quality samples of that mode.
  """
  z = jax.random.normal(key, (num_samples, gen[0]["w"].shape[0]))
  x = mlp(gen, z)
  dist = jnp.linalg.norm(x[:, None, :] - mode_centers()[None], axis=-1)
  hq = jnp.min(dist, -1) < 3 * MODE_STD
  counts = jnp.sum(jax.nn.one_hot(jnp.argmin(dist, -1), NUM_MODES) * hq[:, None], 0)
  return jnp.sum(counts >= min_fraction * num_samples), jnp.mean(hq)


SWEEP_KEYS = ("gan_lr_g", "gan_lr_d", "gan_b2")  # numeric fields --sweep may vary per member


class GanSetup:
  """The GAN members of a `paperlab.sweep.Sweep`: init and step of one member.

  Members are the optimizers (``magnitude`` and ``angle`` of beta1, zipped)
  x any swept ``gan_lr_g`` / ``gan_lr_d`` / ``gan_b2`` x seeds. Both players
  use complex Adam through `optax.inject_hyperparams`; each member's values
  sit in its optimizer states.
  """

  def __init__(self, *, z_dim: int, hidden: int, batch_size: int, lr_g: float,
               lr_d: float, b2: float):
    self.z_dim, self.hidden, self.batch_size = z_dim, hidden, batch_size
    self.defaults = {"gan_lr_g": lr_g, "gan_lr_d": lr_d, "gan_b2": b2}
    self.txs = tuple(sweep.injectable(complex_adam, learning_rate=lr, b1_magnitude=0.0, b1_angle=0.0, b2=b2)
                     for lr in (lr_g, lr_d))

  def _hp(self, hp, name):
    return hp.get(name, self.defaults[name])

  def init(self, key, hp):
    k_gen, k_disc = jax.random.split(key)
    h = self.hidden
    players = (mlp_init(k_gen, [self.z_dim, h, h, 2]), mlp_init(k_disc, [2, h, h, 1]))
    state = games.init_play(GAME, self.txs, players)
    opt_states = tuple(
        sweep.set_hyperparams(s, learning_rate=self._hp(hp, lr), b1_magnitude=hp["magnitude"],
                              b1_angle=hp["angle"], b2=self._hp(hp, "gan_b2"))
        for s, lr in zip(state.opt_states, ("gan_lr_g", "gan_lr_d")))
    return state._replace(opt_states=opt_states)

  def step(self, state, hp, t, data):
    del data
    # The discriminator moves first, then the generator sees the new one.
    step = games.make_step(GAME, self.txs, "alternating", order=(1, 0))
    k_real, k_z = jax.random.split(jax.random.fold_in(jax.random.fold_in(jax.random.key(hp["seed"]), 1), t))
    batch = (real_batch(k_real, self.batch_size), jax.random.normal(k_z, (self.batch_size, self.z_dim)))
    return step(state, batch), {}


def gan_grid(cfg, methods: dict[str, tuple[float, float]], request=None) -> sweep.Grid:
  """Optimizers (zipped beta1 magnitude and angle) x swept fields x seeds."""
  outer = sweep.Grid.zipped(magnitude=[m for m, _ in methods.values()], angle=[a for _, a in methods.values()])
  return sweep.grid_from(request, default_seeds=[cfg.seed * 1000 + s for s in range(cfg.gan_seeds)],
                         outer=outer)


def gan_experiment(cfg, run, methods: dict[str, tuple[float, float]], progress=None) -> dict:
  """Trains every (optimizer, swept value, seed) GAN as one sweep; scores every ``gan_eval_every``.

  A member whose parameters, optimizer state or scores become NaN or inf is
  frozen and reported; the run stops (keeping the last good checkpoint) only
  when every member has failed.
  """
  from paperlab import plots  # pylint: disable=g-import-not-at-top
  setup = GanSetup(z_dim=cfg.gan_z_dim, hidden=cfg.gan_hidden, batch_size=cfg.gan_batch,
                   lr_g=cfg.gan_lr_g, lr_d=cfg.gan_lr_d, b2=cfg.gan_b2)
  grid = gan_grid(cfg, methods, getattr(run, "sweep", None))
  engine = sweep.Sweep(grid, setup.init, setup.step)
  key = jax.random.key(12345)

  def eval_fn(state, hp):
    del hp
    modes, hq = score(state.players[0], key, cfg.gan_samples, cfg.gan_min_fraction)
    return {"modes": modes.astype(jnp.float32), "hq": hq}

  state, final, history = engine.train(
      run.path("gan"), num_steps=cfg.gan_steps, log_every=cfg.gan_eval_every,
      checkpoint_every=cfg.gan_eval_every, eval_fn=eval_fn, eval_every=cfg.gan_eval_every,
      desc="8-Gaussian GAN", progress=progress, base_config=config_dict(cfg))
  failed = engine.failures(state)
  per_method = len(engine.members) // len(methods)  # the optimizers are the outer axis
  method_of = [list(methods)[m.index // per_method] for m in engine.members]
  report = engine.report(run.path("gan"), {k: final[k] for k in ("modes", "hq")}, failed=failed,
                         plot_metrics=("modes",), title="8-Gaussian GAN")
  for key_, label in (("modes", "modes covered (of 8)"), ("hq", "high-quality fraction")):
    series = {}
    for name in methods:
      idx = [m.id for m, meth in zip(engine.members, method_of) if meth == name]
      rows = [r for r in history if key_ in r and f"{key_}/{idx[0]}" in r]
      series[name] = ([r["step"] for r in rows],
                      [float(np.nanmean([r[f"{key_}/{i}"] if r[f"{key_}/{i}"] is not None else np.nan
                                         for i in idx])) for r in rows])
    plots.line_plot(series, run.path(f"gan_{key_}.png"), xlabel="step", ylabel=label,
                    title=f"8-Gaussian GAN, mean over {len(grid.seeds)} seeds")
  _plot_gan_samples(cfg, engine, state, methods, method_of, run.path("gan_samples.png"))
  out = {}
  for name in methods:
    idx = [m.index for m, meth in zip(engine.members, method_of) if meth == name and m.id not in failed]
    modes, hq = final["modes"][idx], final["hq"][idx]
    out[name] = {"beta1": list(methods[name]), "modes": modes.tolist(), "hq": np.round(hq, 4).tolist(),
                 "mean_modes": float(np.mean(modes)) if idx else float("nan"),
                 "mean_hq": float(np.mean(hq)) if idx else float("nan")}
  return {"methods": out, "sweep": report, "failed": failed,
          "history": [{k: v for k, v in r.items() if k != "chunk_s"} for r in history]}  # no timing


def config_dict(cfg) -> dict:
  import dataclasses  # pylint: disable=g-import-not-at-top
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def _plot_gan_samples(cfg, engine, state, methods, method_of, path):
  """Samples of the first member of each optimizer over the real data."""
  z = jax.random.normal(jax.random.key(7), (1000, cfg.gan_z_dim))
  real = np.asarray(real_batch(jax.random.key(8), 1000))
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(methods)
  fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4), squeeze=False)
  for j, name in enumerate(names):
    first = method_of.index(name)
    gen = jax.tree.map(lambda x, i=first: x[i], state["state"].players[0])
    fake = np.asarray(mlp(gen, z))
    ax = axes[0, j]
    ax.scatter(real[:, 0], real[:, 1], s=2, c="lightgray")
    ax.scatter(fake[:, 0], fake[:, 1], s=2, c="C0")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_title(name, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
