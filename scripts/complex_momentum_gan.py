"""Mixture-of-Gaussians GAN for the complex-momentum experiments (helper module).

Used by ``scripts/complex_momentum.py``; not a script of its own. Every run
(optimizer x seed) is one slice of a stacked state, trained together under
``jax.vmap``; the optimizers differ only in Adam's first-moment decay
``beta1 = magnitude * exp(i angle)`` (complex Adam with angle 0 is
``optax.adam`` exactly), so they share one compiled program.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def spectral_normalize(w: jax.Array, iters: int) -> jax.Array:
  """``w / sigma_max(w)``, sigma from ``iters`` power iterations (no gradient through u, v).

  Stateless: every call starts from the same vector, so no power-iteration
  state has to live beside the parameters (SN-GAN keeps one ``u`` per layer and
  runs one iteration per step; a few iterations from a fixed start reach the
  same ``sigma`` on these small matrices).
  """
  v = jnp.ones(w.shape[1], w.dtype) / math.sqrt(w.shape[1])
  for _ in range(iters):
    u = w @ v
    u = u / (jnp.linalg.norm(u) + 1e-12)
    v = w.T @ u
    v = v / (jnp.linalg.norm(v) + 1e-12)
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  return w / (u @ w @ v)


def sn_mlp(params, x: jax.Array, iters: int) -> jax.Array:
  """`mlp` with every weight matrix spectrally normalised (``iters`` 0: plain)."""
  if iters:
    params = [{"w": spectral_normalize(l["w"], iters), "b": l["b"]} for l in params]
  return mlp(params, x)


def make_game(loss: str, sn_iters: int) -> games.Game:
  """(generator loss, discriminator loss) of ``loss`` in {"hinge", "nonsaturating"}.

  hinge: ``L_D = E relu(1 - D(x)) + E relu(1 + D(G(z)))``, ``L_G = -E D(G(z))``.
  nonsaturating: ``L_D = E softplus(-D(x)) + E softplus(D(G(z)))``,
  ``L_G = E softplus(-D(G(z)))``.
  """
  disc_fn = lambda disc, x: sn_mlp(disc, x, sn_iters)  # noqa: E731

  def d_loss(players, batch):
    gen, disc = players
    real, z = batch
    d_real, d_fake = disc_fn(disc, real), disc_fn(disc, mlp(gen, z))
    if loss == "hinge":
      return jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))
    return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))

  def g_loss(players, batch):
    gen, disc = players
    _, z = batch
    d_fake = disc_fn(disc, mlp(gen, z))
    return -jnp.mean(d_fake) if loss == "hinge" else jnp.mean(jax.nn.softplus(-d_fake))

  return games.Game((g_loss, d_loss))


GAME = make_game("nonsaturating", 0)  # the plain GAN (no spectral norm)


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


class GanState(NamedTuple):
  """Players and optimizer states (as in `optim.games.PlayState`) plus the EMA generator."""

  players: tuple[Any, Any]
  opt_states: tuple[Any, Any]
  ema: Any  # exponential moving average of the generator's parameters (scored)


class GanSetup:
  """Builds the stacked state and the jitted n-step function of all runs.

  One step is ``d_steps`` discriminator updates (a fresh real batch and fresh
  noise each), then one generator update, then the EMA update
  ``ema <- d_t ema + (1 - d_t) gen`` with ``d_t = min(ema_decay, (1 + t) / (10 + t))``
  (the warm-start of TF's moving averages: early steps do not carry the
  initial generator for long).
  """

  def __init__(self, *, z_dim: int, hidden: int, batch_size: int, lr_g: float,
               lr_d: float, b2: float, magnitudes: Sequence[float],
               angles: Sequence[float], seeds: Sequence[int], loss: str = "nonsaturating",
               sn_iters: int = 0, d_steps: int = 1, ema_decay: float = 0.0):
    self.z_dim, self.hidden, self.batch_size = z_dim, hidden, batch_size
    self.lr_g, self.lr_d, self.b2 = lr_g, lr_d, b2
    self.game = make_game(loss, sn_iters)
    self.d_steps, self.ema_decay = d_steps, ema_decay
    grid = [(m, a, s) for m, a in zip(magnitudes, angles) for s in seeds]
    self.magnitude = jnp.array([g[0] for g in grid], jnp.float32)
    self.angle = jnp.array([g[1] for g in grid], jnp.float32)
    self.seed = jnp.array([g[2] for g in grid], jnp.int32)
    self.num_methods, self.num_seeds = len(magnitudes), len(seeds)

  def _txs(self, magnitude, angle):
    return (complex_adam(self.lr_g, magnitude, angle, self.b2),
            complex_adam(self.lr_d, magnitude, angle, self.b2))

  def _init_one(self, magnitude, angle, seed):
    k_gen, k_disc = jax.random.split(jax.random.key(seed))
    h = self.hidden
    players = (mlp_init(k_gen, [self.z_dim, h, h, 2]), mlp_init(k_disc, [2, h, h, 1]))
    play = games.init_play(self.game, self._txs(magnitude, angle), players)
    return GanState(play.players, play.opt_states, players[0])

  def init(self):
    return jax.vmap(self._init_one)(self.magnitude, self.angle, self.seed)

  def _run_one(self, state, magnitude, angle, seed, start, n):
    tx_g, tx_d = self._txs(magnitude, angle)
    data_key = jax.random.fold_in(jax.random.key(seed), 1)

    def apply(tx, i, players, opt_state, batch):
      grad = games.player_gradient(self.game, i, players, batch)
      updates, opt_state = tx.update(grad, opt_state, players[i])
      return optax.apply_updates(players[i], updates), opt_state

    def batch(key):
      k_real, k_z = jax.random.split(key)
      return (real_batch(k_real, self.batch_size),
              jax.random.normal(k_z, (self.batch_size, self.z_dim)))

    def body(s, t):
      (gen, disc), (opt_g, opt_d), ema = s
      keys = jax.random.split(jax.random.fold_in(data_key, t), self.d_steps + 1)
      for k in range(self.d_steps):  # the discriminator moves first
        disc, opt_d = apply(tx_d, 1, (gen, disc), opt_d, batch(keys[k]))
      gen, opt_g = apply(tx_g, 0, (gen, disc), opt_g, batch(keys[-1]))
      tf = t.astype(jnp.float32)
      decay = jnp.minimum(self.ema_decay, (1.0 + tf) / (10.0 + tf))
      ema = jax.tree.map(lambda e, g: decay * e + (1.0 - decay) * g, ema, gen)
      return GanState((gen, disc), (opt_g, opt_d), ema), None

    return jax.lax.scan(body, state, start + jnp.arange(n))[0]

  def steps(self, state, start: int, n: int):
    fn = jax.vmap(self._run_one, (0, 0, 0, 0, None, None))
    return fn(state, self.magnitude, self.angle, self.seed, start, n)

  def scored_generator(self, state):
    """The generator that is scored: the EMA one when ``ema_decay > 0``."""
    return state.ema if self.ema_decay > 0 else state.players[0]

  def scores(self, state, num_samples: int, min_fraction: float):
    """``(modes, hq)``, each ``[num_methods, num_seeds]``."""
    key = jax.random.key(12345)
    modes, hq = jax.vmap(lambda g: score(g, key, num_samples, min_fraction))(
        self.scored_generator(state))
    shape = (self.num_methods, self.num_seeds)
    return modes.reshape(shape), hq.reshape(shape)


def window_start(num_steps: int) -> int:
  """First step of the scoring window: the last 20% of the steps."""
  return int(math.ceil(0.8 * num_steps))


def gan_seeds(cfg, run) -> list[int]:
  """``--seeds`` of the command line (``run.sweep``), else ``gan_seeds`` seeds from ``seed``."""
  request = getattr(run, "sweep", None)
  if request is not None and request.seeds is not None:
    return list(request.seeds)
  return [cfg.seed * 1000 + s for s in range(cfg.gan_seeds)]


def gan_experiment(cfg, run, methods: dict[str, tuple[float, float]], progress=None) -> dict:
  """Trains every (optimizer, seed) GAN of ``methods`` together; scores every ``gan_eval_every``.

  The metric is fixed before training: modes covered and high-quality fraction
  of the scored (EMA) generator at the last step, and their mean over the
  evaluations in the last 20% of the steps (accumulated in the checkpointed
  state, so a resumed run gives the same numbers). Per optimizer: mean, std,
  n and the 95% t interval over seeds.

  A NaN or inf in any member's parameters, optimizer state or scores stops the
  run (`paperlab.loop`'s guard) and keeps the last good checkpoint.
  """
  from paperlab import loop, plots, stats  # pylint: disable=g-import-not-at-top
  setup = GanSetup(z_dim=cfg.gan_z_dim, hidden=cfg.gan_hidden, batch_size=cfg.gan_batch,
                   lr_g=cfg.gan_lr_g, lr_d=cfg.gan_lr_d, b2=cfg.gan_b2,
                   magnitudes=[m for m, _ in methods.values()], angles=[a for _, a in methods.values()],
                   seeds=gan_seeds(cfg, run), loss=cfg.gan_loss,
                   sn_iters=cfg.gan_sn_iters, d_steps=cfg.gan_d_steps, ema_decay=cfg.gan_ema)
  steps_jit = jax.jit(setup.steps, static_argnums=2)
  scores_jit = jax.jit(lambda s: setup.scores(s, cfg.gan_samples, cfg.gan_min_fraction))
  first = window_start(cfg.gan_steps)
  members = setup.num_methods * setup.num_seeds
  zeros = {"modes": jnp.zeros(members), "hq": jnp.zeros(members), "count": jnp.zeros(())}

  def step_fn(state, step, n):
    gan, acc = state
    gan = steps_jit(gan, jnp.int32(step), n)
    if step + n >= first:  # an evaluation inside the window: accumulate its scores
      modes, hq = scores_jit(gan)
      acc = {"modes": acc["modes"] + modes.ravel(), "hq": acc["hq"] + hq.ravel(),
             "count": acc["count"] + 1}
    return (gan, acc), {}

  def eval_fn(state, step):
    modes, hq = (np.asarray(x) for x in scores_jit(state[0]))
    out = {}
    for j, name in enumerate(methods):
      out[f"modes/{name}"] = float(modes[j].mean())
      out[f"hq/{name}"] = float(hq[j].mean())
    return out

  (state, acc), history = loop.train(
      (setup.init(), zeros), step_fn=step_fn, num_steps=cfg.gan_steps, workdir=run.path("gan"),
      log_every=cfg.gan_eval_every, checkpoint_every=cfg.gan_eval_every, eval_fn=eval_fn,
      eval_every=cfg.gan_eval_every, desc="8-Gaussian GAN", progress=progress)
  modes, hq = (np.asarray(x) for x in scores_jit(state))
  count = max(float(acc["count"]), 1.0)
  shape = (setup.num_methods, setup.num_seeds)
  window = {"modes": np.asarray(acc["modes"]).reshape(shape) / count,
            "hq": np.asarray(acc["hq"]).reshape(shape) / count}
  for key, label in (("modes", "modes covered (count, of 8)"),
                     ("hq", "high-quality fraction (of generated samples)")):
    series = {name: ([r["step"] for r in history if f"{key}/{name}" in r],
                     [r[f"{key}/{name}"] for r in history if f"{key}/{name}" in r]) for name in methods}
    plots.line_plot(series, run.path(f"gan_{key}.png"), xlabel="training step (G and D updates)",
                    ylabel=label, title=plots.run_title(run, f"8-Gaussian GAN, mean over {setup.num_seeds} seeds"))
  _plot_gan_samples(cfg, setup, state, list(methods), run.path("gan_samples.png"), run)
  out = {}
  for j, name in enumerate(methods):
    out[name] = {"beta1": list(methods[name]), "modes": modes[j].tolist(),
                 "hq": hq[j].round(4).tolist(), "mean_modes": float(modes[j].mean()),
                 "mean_hq": float(hq[j].mean()),
                 "last": {"modes": stats.summarize(modes[j]), "hq": stats.summarize(hq[j])},
                 "window": {"modes": stats.summarize(window["modes"][j]),
                            "hq": stats.summarize(window["hq"][j])}}
  return {"methods": out, "window_first_step": first, "window_evaluations": int(acc["count"]),
          "history": [{k: v for k, v in r.items() if k != "chunk_s"} for r in history]}  # no timing


def _plot_gan_samples(cfg, setup, state, names, path, run):
  """Samples of the first seed of each optimizer over the real data."""
  z = jax.random.normal(jax.random.key(7), (1000, cfg.gan_z_dim))
  real = np.asarray(real_batch(jax.random.key(8), 1000))
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from paperlab import plots  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4), squeeze=False)
  for j, name in enumerate(names):
    gen = jax.tree.map(lambda x, j=j: x[j * setup.num_seeds], setup.scored_generator(state))
    fake = np.asarray(mlp(gen, z))
    ax = axes[0, j]
    ax.scatter(real[:, 0], real[:, 1], s=2, c="lightgray", label="real data")
    ax.scatter(fake[:, 0], fake[:, 1], s=2, c="C0", label="generated")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_xlabel("x1 (data units)")
    ax.set_ylabel("x2 (data units)")
    ax.set_title(name, fontsize=8)
    ax.legend(fontsize=7, loc="upper right", markerscale=4)
  fig.suptitle(plots.run_title(run, "8-Gaussian GAN samples (first seed, last step)"), fontsize=9)
  plots.save(fig, path)
