"""Complex momentum in games (Lorraine et al., AISTATS 2022): bilinear game, adversarialness sweep, 8-Gaussian GAN.

(a) Bilinear game min_x max_y x*y: convergence of GD, positive / negative real
    momentum and complex momentum, simultaneous and alternating; the spectral
    radius of the linearised update against the reference table, and heatmaps
    over (|beta|, arg beta) at several step sizes.
(b) Quadratic games x'(gA)y + x'((1-g)B)x - y'((1-g)C)y from cooperative (g=0)
    to adversarial (g=1): steps to converge and spectral radius vs g, best step
    size and beta per method class (GD, positive, negative, complex momentum).
(c) GAN on a ring of 8 Gaussians: Adam (beta1=0) vs complex Adam vs real-momentum
    Adam over several seeds; modes covered and fraction of high-quality samples.
(d) Small MLP GAN on Fashion-MNIST with the same three optimizers, scored by an
    Inception-Score formula and a Frechet distance computed with our own
    Fashion-MNIST classifier (not Inception): comparable only with each other.

    python scripts/complex_momentum.py --preset quick     # (a), (b), short (c)
    python scripts/complex_momentum.py --preset paper     # (a), (b), (c) with 8 seeds
    python scripts/complex_momentum.py --preset fmnist    # (d) only
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from paperlab import config, metrics, plots, stats, sweep
from complex_momentum_gan import gan_experiment
from optim import games
from optim import complex_momentum


PI8 = math.pi / 8
# Momentum coefficients beta = magnitude * exp(i angle) compared in (a) and (b).
METHODS = {
    "GD": (0.0, 0.0),
    "momentum +0.5": (0.5, 0.0),
    "momentum -0.5": (0.5, math.pi),
    "complex 0.9e^{i pi/8}": (0.9, PI8),
}
# Method classes of the adversarialness sweep: best over these betas and the step sizes.
SWEEP_CLASSES = {
    "GD": [(0.0, 0.0)],
    "positive momentum": [(m, 0.0) for m in (0.3, 0.5, 0.7, 0.9)],
    "negative momentum": [(m, math.pi) for m in (0.3, 0.5, 0.7, 0.9)],
    "complex momentum": [(m, a) for m in (0.5, 0.7, 0.9)
                         for a in (math.pi / 16, PI8, math.pi / 4, math.pi / 2)],
    "complex 0.9e^{i pi/8} (fixed)": [(0.9, PI8)],
}
MODES = ("simultaneous", "alternating")
PARTS = ("bilinear", "sweep", "gan", "fmnist")
# (alpha, |beta|, arg beta, mode) -> spectral radius, derived in the reference notes.
SPEC_TABLE = [
    (0.01, 0.0, 0.0, "simultaneous", 1.00005), (0.05, 0.0, 0.0, "simultaneous", 1.0012),
    (0.1, 0.0, 0.0, "simultaneous", 1.0050), (0.5, 0.0, 0.0, "simultaneous", 1.1180),
    (0.05, 0.5, 0.0, "simultaneous", 1.0138), (0.05, 0.9, 0.0, "simultaneous", 1.1211),
    (0.01, 0.9, PI8, "simultaneous", 0.99945), (0.05, 0.9, PI8, "simultaneous", 0.98569),
    (0.1, 0.9, PI8, "simultaneous", 1.05298), (0.5, 0.9, PI8, "simultaneous", 1.5385),
    (0.05, 0.8, PI8, "simultaneous", 0.99221), (0.1, 0.8, PI8, "simultaneous", 0.97743),
    (0.01, 0.9, PI8, "alternating", 0.99939), (0.05, 0.9, PI8, "alternating", 0.98457),
    (0.1, 0.9, PI8, "alternating", 1.05093), (0.5, 0.9, PI8, "alternating", 1.4947),
    (0.1, 0.0, 0.0, "alternating", 1.0), (0.1, 0.5, math.pi, "alternating", 0.9985),
    (0.5, 0.5, math.pi, "alternating", 0.9625),
]


@dataclasses.dataclass(frozen=True)
class Config:
  """Complex momentum experiments."""

  alpha: float = 0.05  # step size of the bilinear convergence curves
  curve_steps: int = 1500  # steps of the bilinear convergence curves
  heat_alphas: tuple[float, ...] = (0.01, 0.05, 0.1, 0.3, 1.0)  # step sizes of the heatmaps
  heat_grid: int = 41  # heatmap resolution per axis
  sweep_gammas: int = 6  # adversarialness values in [0, 1]
  sweep_dim: int = 5  # dimension of x and y in the quadratic games
  sweep_lrs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # step sizes tried per method
  sweep_steps: int = 2000  # step budget of the sweep
  sweep_tol: float = 1e-6  # converged when |w_t| <= tol |w_0|
  # GAN: the small-scale BigGAN recipe (hinge loss, spectral norm in D, lr 2e-4 for both
  # players, several D steps per G step, EMA generator scored).
  gan_seeds: int = 3  # seeds per optimizer, vmapped together (0 skips the GAN)
  gan_steps: int = 12000  # generator steps
  gan_batch: int = 64
  gan_hidden: int = 32  # width of the two hidden layers of G and D
  gan_z_dim: int = 16
  gan_lr_g: float = 2e-4
  gan_lr_d: float = 2e-4
  gan_b2: float = 0.999
  gan_loss: Literal["hinge", "nonsaturating"] = "hinge"
  gan_sn_iters: int = 5  # power iterations of D's spectral norm (0: no spectral norm)
  gan_d_steps: int = 2  # discriminator steps per generator step
  gan_ema: float = 0.999  # decay of the scored generator EMA (0: score the raw generator)
  gan_magnitude: float = 0.8  # |beta1| of the complex arms
  gan_angles: tuple[float, ...] = (math.pi / 16, PI8, math.pi / 4)  # arg beta1 of the complex arms
  gan_real_beta1: tuple[float, ...] = (0.0, 0.8)  # real-beta1 Adam arms (arg 0)
  gan_eval_every: int = 500
  gan_samples: int = 2500  # samples scored per run
  gan_min_fraction: float = 0.01  # a mode is covered with >= this fraction of HQ samples
  fmnist_steps: int = 3000  # (d) Fashion-MNIST GAN steps
  fmnist_batch: int = 64
  fmnist_hidden: int = 256
  fmnist_z_dim: int = 64
  fmnist_lr: float = 2e-4
  fmnist_eval_every: int = 500
  fmnist_classifier_steps: int = 1500  # Adam steps (batch 256) of the scoring classifier
  fmnist_samples: int = 5000  # generated images scored per optimizer
  fmnist_seeds: int = 3  # GAN seeds per optimizer (seed, seed + 1, ...), vmapped; paired across optimizers
  parts: tuple[str, ...] = ("bilinear", "sweep", "gan")  # experiments to run (of PARTS)
  seed: int = 0

  def validate(self) -> None:
    req = config.require
    req(len(self.parts) > 0 and set(self.parts) <= set(PARTS),
        f"parts must be a non-empty subset of {PARTS}, got {self.parts}.")
    req(min(self.fmnist_steps, self.fmnist_batch, self.fmnist_hidden, self.fmnist_z_dim,
            self.fmnist_eval_every, self.fmnist_classifier_steps, self.fmnist_samples,
            self.fmnist_seeds) >= 1,
        "fmnist_* sizes and step counts must be >= 1.")
    req(self.fmnist_lr > 0, f"fmnist_lr must be > 0, got {self.fmnist_lr}.")
    req(self.alpha > 0, f"alpha must be > 0, got {self.alpha}.")
    req(self.curve_steps >= 10, f"curve_steps must be >= 10, got {self.curve_steps}.")
    req(len(self.heat_alphas) >= 1 and all(a > 0 for a in self.heat_alphas),
        f"heat_alphas must list at least one step size, each > 0, got {self.heat_alphas}.")
    req(self.heat_grid >= 2, f"heat_grid must be >= 2, got {self.heat_grid}.")
    req(self.sweep_gammas >= 2, f"sweep_gammas must be >= 2, got {self.sweep_gammas}.")
    req(self.sweep_dim >= 1, f"sweep_dim must be >= 1, got {self.sweep_dim}.")
    req(len(self.sweep_lrs) >= 1 and all(lr > 0 for lr in self.sweep_lrs),
        f"sweep_lrs must list at least one step size, each > 0, got {self.sweep_lrs}.")
    req(self.sweep_steps >= 1, f"sweep_steps must be >= 1, got {self.sweep_steps}.")
    req(0 < self.sweep_tol < 1, f"sweep_tol must be in (0, 1), got {self.sweep_tol}.")
    req(self.gan_seeds >= 0, f"gan_seeds must be >= 0, got {self.gan_seeds}.")
    req(self.gan_steps >= 1 and self.gan_eval_every >= 1, "gan_steps and gan_eval_every must be >= 1.")
    req(min(self.gan_batch, self.gan_hidden, self.gan_z_dim) >= 1, "GAN sizes must be >= 1.")
    req(self.gan_lr_g > 0 and self.gan_lr_d > 0, "GAN learning rates must be > 0.")
    req(0 <= self.gan_b2 < 1, f"gan_b2 must be in [0, 1), got {self.gan_b2}.")
    req(0 <= self.gan_magnitude < 1 and all(0 <= b < 1 for b in self.gan_real_beta1),
        "GAN beta1 magnitudes (gan_magnitude, gan_real_beta1) must be in [0, 1).")
    req(all(0 < a <= math.pi for a in self.gan_angles),
        f"gan_angles must be in (0, pi] (arg 0 is a real arm), got {self.gan_angles}.")
    req(len(self.gan_angles) + len(self.gan_real_beta1) >= 1, "the GAN needs at least one optimizer arm.")
    req(self.gan_sn_iters >= 0, f"gan_sn_iters must be >= 0, got {self.gan_sn_iters}.")
    req(self.gan_d_steps >= 1, f"gan_d_steps must be >= 1, got {self.gan_d_steps}.")
    req(0 <= self.gan_ema < 1, f"gan_ema must be in [0, 1), got {self.gan_ema}.")
    req(0 < self.gan_min_fraction < 1, f"gan_min_fraction must be in (0, 1), got {self.gan_min_fraction}.")
    req(self.gan_samples >= 1, f"gan_samples must be >= 1, got {self.gan_samples}.")
    req(self.fmnist_samples >= 2, f"fmnist_samples must be >= 2 (a covariance), got {self.fmnist_samples}.")
    req(self.seed >= 0, f"seed must be >= 0, got {self.seed}.")
    req(set(self.parts) != {"gan"} or self.gan_seeds >= 1,
        "parts=('gan',) with gan_seeds=0 runs nothing; give --gan-seeds N or other --parts.")


PRESETS = {
    "quick": Config(),
    "paper": Config(curve_steps=3000, heat_grid=81, sweep_gammas=11,
                    sweep_lrs=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
                    sweep_steps=5000, gan_seeds=8, gan_steps=30000),
    # The GAN sweep alone: 8 seeds x 5 optimizers, 30k generator steps (CPU, minutes).
    "gan": Config(parts=("gan",), gan_seeds=8, gan_steps=30000),
    # The same recipe larger, for an accelerator: 32 seeds, wider nets, 4 D steps, 100k steps.
    "gan_gpu": Config(parts=("gan",), gan_seeds=32, gan_steps=100_000, gan_hidden=128,
                      gan_batch=256, gan_d_steps=4, gan_ema=0.9999, gan_eval_every=2000,
                      gan_samples=10_000),
    "fmnist": Config(parts=("fmnist",)),
}


# ------------------------------------------------------------------- (a) bilinear


def _iteration_matrix_of(mode: str):
  """``hp -> iteration matrix`` on the bilinear game, ``hp`` holding alpha, magnitude and angle."""
  game = games.bilinear_game(1.0)
  zero = jnp.zeros(())

  def matrix(hp):
    tx = complex_momentum(hp["alpha"], hp["magnitude"], hp["angle"])
    state = games.init_play(game, tx, (zero, zero))
    return games.iteration_matrix(games.make_step(game, tx, mode), state)

  return matrix


def spectral_radii(mode: str, grid: sweep.Grid) -> np.ndarray:
  """Spectral radius of every point of a (alpha, |beta|, arg beta) grid: the iteration
  matrices from one sharded sweep call, their eigenvalues on the host."""
  return games.spectral_radius_of(sweep.evaluate(_iteration_matrix_of(mode), grid))


def spectral_table() -> list[dict]:
  rows = []
  for mode in MODES:
    entries = [e for e in SPEC_TABLE if e[3] == mode]
    grid = sweep.Grid.zipped(alpha=[e[0] for e in entries], magnitude=[e[1] for e in entries],
                             angle=[e[2] for e in entries])
    for e, r in zip(entries, spectral_radii(mode, grid)):
      rows.append({"alpha": e[0], "magnitude": e[1], "angle": round(e[2], 6), "mode": mode,
                   "rho": round(float(r), 6), "reference": e[4], "abs_diff": abs(float(r) - e[4])})
  return rows


def bilinear_curves(cfg: Config, run) -> dict:
  game = games.bilinear_game(1.0)
  out = {}
  for mode in MODES:
    series = {}
    radii = spectral_radii(mode, sweep.Grid.zipped(alpha=[cfg.alpha] * len(METHODS),
                                                   magnitude=[m for m, _ in METHODS.values()],
                                                   angle=[a for _, a in METHODS.values()]))
    for (name, (mag, ang)), rho in zip(METHODS.items(), radii):
      tx = complex_momentum(cfg.alpha, mag, ang)
      state = games.init_play(game, tx, (jnp.ones(()), jnp.ones(())))
      _, norms = jax.jit(lambda s, tx=tx: games.play(games.make_step(game, tx, mode), s,
                                                     cfg.curve_steps))(state)
      norms, rho = np.asarray(norms), float(rho)
      half = cfg.curve_steps // 2
      logs = np.log(np.maximum(norms, np.finfo(np.float32).tiny))
      rate = math.exp((logs[-1] - logs[half - 1]) / (cfg.curve_steps - half))
      out[f"{mode}/{name}"] = {"final_norm": float(norms[-1]), "spectral_radius": rho,
                               "empirical_rate": rate}
      series[f"{name} (rho={rho:.4f})"] = (np.arange(1, cfg.curve_steps + 1), norms)
    plots.line_plot(series, run.path(f"bilinear_{mode}.png"), xlabel="iteration (player updates)",
                    ylabel="|(x, y)| (Euclidean distance to the equilibrium)", logy=True,
                    title=plots.run_title(run, f"min_x max_y xy, {mode} play, alpha={cfg.alpha}"))
  return out


def spectral_heatmaps(cfg: Config, run) -> list[dict]:
  mags = np.linspace(0.0, 0.99, cfg.heat_grid)
  angs = np.linspace(0.0, math.pi, cfg.heat_grid)
  mm, aa = np.meshgrid(mags, angs)  # [angle, magnitude]
  fig, axes = plt.subplots(2, len(cfg.heat_alphas), figsize=(3.3 * len(cfg.heat_alphas), 6.6),
                           squeeze=False, constrained_layout=True)
  best = []
  for row, mode in enumerate(MODES):
    # Members: alpha (outer) x arg beta x |beta| (inner), i.e. [alpha, angle, magnitude].
    grid = sweep.Grid.product(alpha=cfg.heat_alphas, angle=angs, magnitude=mags)
    radii = spectral_radii(mode, grid).reshape(len(cfg.heat_alphas), *mm.shape)
    for col, alpha in enumerate(cfg.heat_alphas):
      rho = radii[col]
      i = np.unravel_index(np.argmin(rho), rho.shape)
      best.append({"mode": mode, "alpha": alpha, "best_rho": round(float(rho[i]), 5),
                   "magnitude": round(float(mags[i[1]]), 4), "angle_over_pi": round(float(angs[i[0]] / math.pi), 4),
                   "fraction_converging": round(float(np.mean(rho < 1)), 4)})
      ax = axes[row, col]
      mesh = ax.pcolormesh(mags, angs / math.pi, np.clip(rho, 0.9, 1.1), cmap="RdBu_r",
                           vmin=0.9, vmax=1.1, shading="auto")
      ax.contour(mags, angs / math.pi, rho, levels=[1.0], colors="k", linewidths=0.8)
      ax.plot(mags[i[1]], angs[i[0]] / math.pi, "k*", ms=8)
      ax.set_title(f"{mode[:3]}, alpha={alpha}: min {rho[i]:.3f}", fontsize=9)
      ax.set_xlabel("|beta| (momentum magnitude)")
      ax.set_ylabel("arg beta / pi (phase, radians / pi)")
  fig.colorbar(mesh, ax=axes, label="spectral radius (clipped to [0.9, 1.1]); black: rho=1, *: minimum")
  fig.suptitle(plots.run_title(run, "spectral radius of complex momentum on min_x max_y xy"), fontsize=10)
  plots.save(fig, run.path("spectral_radius_heatmaps.png"), tight=False)
  return best


# ------------------------------------------------------------------- (b) sweep


def adversarial_sweep(cfg: Config, run) -> dict:
  ka, kb, kc, kw = jax.random.split(jax.random.key(cfg.seed), 4)
  d = cfg.sweep_dim
  a = jax.random.normal(ka, (d, d)) / math.sqrt(d)
  mb, mc = jax.random.normal(kb, (d, d)), jax.random.normal(kc, (d, d))
  b = mb @ mb.T / d + 0.1 * jnp.eye(d)  # positive definite
  c = mc @ mc.T / d + 0.1 * jnp.eye(d)
  w0 = tuple(jax.random.normal(kw, (2, d)))
  gammas = np.linspace(0.0, 1.0, cfg.sweep_gammas)
  tol = cfg.sweep_tol * float(jnp.sqrt(sum(jnp.sum(w ** 2) for w in w0)))

  def steps_and_matrix(hp):
    game = games.quadratic_game(hp["gamma"], a, b, c)
    tx = complex_momentum(hp["lr"], hp["magnitude"], hp["angle"])
    step = games.make_step(game, tx)
    _, norms = games.play(step, games.init_play(game, tx, w0), cfg.sweep_steps)
    below = norms <= tol
    # First step from which the norm stays below tol (cap: steps + 1).
    stays = jnp.flip(jnp.cumprod(jnp.flip(below)))
    steps = jnp.where(stays[-1] > 0, cfg.sweep_steps + 1 - jnp.sum(stays), cfg.sweep_steps + 1)
    zero = jax.tree.map(jnp.zeros_like, w0)
    return steps, games.iteration_matrix(step, games.init_play(game, tx, zero))

  betas = [beta for cls in SWEEP_CLASSES.values() for beta in cls]
  # Members: gamma (outer) x step size x beta (zipped |beta|, arg beta), one sharded sweep call.
  grid = sweep.Grid.product(gamma=gammas, lr=cfg.sweep_lrs) * sweep.Grid.zipped(
      magnitude=[m for m, _ in betas], angle=[t for _, t in betas])
  shape = (len(gammas), len(cfg.sweep_lrs), len(betas))
  steps, mats = sweep.evaluate(steps_and_matrix, grid)
  steps = np.asarray(steps).reshape(shape)
  rhos = games.spectral_radius_of(mats).reshape(shape)
  cap = cfg.sweep_steps + 1
  out = {"gammas": gammas.round(4).tolist(), "steps": {}, "best": {}, "converged_count": {},
         "best_rho": {}}
  series, rho_series, start = {}, {}, 0
  for name, cls in SWEEP_CLASSES.items():
    block = steps[:, :, start:start + len(cls)].reshape(len(gammas), -1)  # [gamma, lr * beta]
    rho = rhos[:, :, start:start + len(cls)].reshape(len(gammas), -1).min(axis=1)
    start += len(cls)
    best = block.min(axis=1)
    arg = block.argmin(axis=1)
    out["steps"][name] = [int(v) if v < cap else None for v in best]
    out["best"][name] = [{"lr": cfg.sweep_lrs[i // len(cls)], "beta": list(cls[i % len(cls)])}
                         if v < cap else None for i, v in zip(arg, best)]
    out["converged_count"][name] = int(np.sum(best < cap))
    out["best_rho"][name] = rho.round(6).tolist()
    series[name] = (gammas[best < cap], best[best < cap])
    rho_series[name] = (gammas, rho)
  plots.line_plot(series, run.path("adversarial_sweep.png"),
                  xlabel="gamma (adversarialness: 0 cooperative, 1 adversarial)",
                  ylabel=f"iterations to |w| <= {cfg.sweep_tol:g} |w0|", logy=True,
                  title=plots.run_title(run, f"dim {d}, best step size and beta per class; missing: none "
                                             f"converged in {cfg.sweep_steps}"))
  plots.line_plot(rho_series, run.path("adversarial_sweep_rho.png"),
                  xlabel="gamma (adversarialness: 0 cooperative, 1 adversarial)",
                  ylabel="best spectral radius over the grid (rho < 1 converges)", hline=1.0,
                  hline_label="rho = 1",
                  title=plots.run_title(run, f"dim {d}, simultaneous play, best over step sizes and "
                                             "betas per class"))
  return out


# ------------------------------------------------------------------- (c) GAN


# The Fashion-MNIST GAN (d) keeps its three optimizers (non-saturating loss, one seed).
FMNIST_METHODS = {"Adam beta1=0": (0.0, 0.0), "complex Adam beta1=0.8e^(i pi/8)": (0.8, PI8),
                  "Adam beta1=0.8": (0.8, 0.0)}


def gan_methods(cfg: Config) -> dict[str, tuple[float, float]]:
  """Optimizer arms ``name -> (|beta1|, arg beta1)``: real beta1 first, then the complex angles."""
  arms = {f"Adam beta1={b:g}": (b, 0.0) for b in cfg.gan_real_beta1}
  m = cfg.gan_magnitude
  arms.update({f"complex Adam beta1={m:g}e^(i pi/{math.pi / a:.3g})": (m, a) for a in cfg.gan_angles})
  return arms


# ------------------------------------------------------------------- main


def _bilinear_part(cfg: Config, run, results: dict, headline: list, progress) -> None:
  del progress  # one phase, see main
  table = spectral_table()
  results.update(spectral_table=table, bilinear_curves=bilinear_curves(cfg, run),
                 heatmap_best=spectral_heatmaps(cfg, run))
  sim = next(r for r in table if r["mode"] == "simultaneous" and r["alpha"] == 0.05
             and r["magnitude"] == 0.9 and r["angle"] > 0)
  headline += [
      {"metric": "SimCM spectral radius, bilinear game, alpha=0.05, beta=0.9e^(i pi/8)",
       "value": sim["rho"], "note": "reference 0.98569"},
      {"metric": "max |rho - reference| over the spectral-radius table",
       "value": max(r["abs_diff"] for r in table), "note": f"{len(table)} entries"}]


def _sweep_part(cfg: Config, run, results: dict, headline: list, progress) -> None:
  del progress  # one phase, see main
  sweep = results["sweep"] = adversarial_sweep(cfg, run)
  classes = ("complex momentum", "positive momentum", "negative momentum", "GD")
  headline += [
      {"metric": "quadratic games converged (of gamma values): complex / +mom / -mom / GD",
       "value": " / ".join(str(sweep["converged_count"][k]) for k in classes),
       "note": f"{len(sweep['gammas'])} gammas, best beta and step size per class, {cfg.sweep_steps} steps"},
      {"metric": "best spectral radius at gamma=1 (bilinear, simultaneous): complex / +mom / -mom / GD",
       "value": " / ".join(f"{sweep['best_rho'][k][-1]:.5f}" for k in classes), "note": "< 1 converges"}]


def _gan_part(cfg: Config, run, results: dict, headline: list, progress) -> None:
  gan = results["gan"] = gan_experiment(cfg, run, gan_methods(cfg), progress)
  for name, r in gan["methods"].items():
    last, window = r["last"], r["window"]
    headline.append({"metric": f"8-Gaussian GAN modes covered at the last step, {name}",
                     "value": stats.spread(last["modes"]),
                     "note": f"95% CI [{last['modes']['ci95_low']:.2f}, {last['modes']['ci95_high']:.2f}]; "
                             f"last-20% mean {stats.spread(window['modes'])}; HQ fraction "
                             f"{stats.spread(last['hq'], 2)} (last 20%: {stats.spread(window['hq'], 2)}); "
                             f"{cfg.gan_steps} G steps x {cfg.gan_d_steps} D steps, EMA generator"})


def _fmnist_part(cfg: Config, run, results: dict, headline: list, progress, fmnist_data) -> None:
  from complex_momentum_fmnist import fmnist_experiment  # pylint: disable=g-import-not-at-top
  fm = results["fmnist"] = fmnist_experiment(cfg, run, FMNIST_METHODS, progress=progress,
                                             arrays=fmnist_data)
  first = next(iter(fm["methods"]))
  for name, r in fm["methods"].items():
    is_, fd = r["IS_over_seeds"], r["FD_over_seeds"]
    paired = ("" if name == first else f"; minus {first}, paired: IS {stats.spread(r[f'IS_minus_{first}'], 3, ci=True)}, "
              f"FD {stats.spread(r[f'FD_minus_{first}'], 3, ci=True)}")
    headline.append({"metric": f"Fashion-MNIST GAN classifier-IS / FD, {name}",
                     "value": f"{is_['mean']:.3f} +- {is_['std']:.3f} / {fd['mean']:.2f} +- {fd['std']:.2f} "
                              f"(n={is_['n']})",
                     "note": f"{cfg.fmnist_steps} steps, seeds {fm['seeds']}; own classifier (test acc "
                             f"{fm['classifier_accuracy']:.3f}), not Inception{paired}"})


def _units(cfg: Config, part: str) -> int:
  """Progress units of a part: its step count (a rough proxy of its cost)."""
  return {"bilinear": cfg.curve_steps, "sweep": cfg.sweep_steps,
          "gan": cfg.gan_steps if cfg.gan_seeds else 0,
          "fmnist": cfg.fmnist_classifier_steps + cfg.fmnist_steps}[part]


def _check_sweep(cfg: Config, request) -> None:
  del request
  config.require("gan" in cfg.parts, "--seeds / --sweep apply to the GAN part; add gan to --parts.")


def main(argv=None) -> dict:
  cfg, run = config.cli(Config, PRESETS, paper="complex_momentum", description=__doc__, argv=argv,
                        sweep=config.SweepOptions(check=_check_sweep))
  fmnist_data = None
  if "fmnist" in cfg.parts:  # load (or fail) before any compute
    from complex_momentum_fmnist import load_fmnist  # pylint: disable=g-import-not-at-top
    fmnist_data = load_fmnist()
  results, headline = {}, []
  parts = [p for p in PARTS if p in cfg.parts and not (p == "gan" and cfg.gan_seeds == 0)]
  with metrics.RunProgress(sum(_units(cfg, p) for p in parts), desc="complex_momentum") as progress:
    for name in parts:
      if name in ("gan", "fmnist"):  # training loops: they advance the bar themselves
        extra = (fmnist_data,) if name == "fmnist" else ()
        {"gan": _gan_part, "fmnist": _fmnist_part}[name](cfg, run, results, headline, progress, *extra)
      else:
        with progress.phase(name, units=_units(cfg, name)):
          {"bilinear": _bilinear_part, "sweep": _sweep_part}[name](cfg, run, results, headline, progress)
  run.write_results(results, headline)
  return results


if __name__ == "__main__":
  config.main(main)
