"""Small Fashion-MNIST GAN for the complex-momentum experiments (helper module).

Used by ``scripts/complex_momentum.py``; not a script of its own. MLP generator
and discriminator, non-saturating loss, alternating play (discriminator first).
All optimizers train together under ``jax.vmap`` (they differ only in Adam's
complex ``beta1``). Scores use OUR OWN Fashion-MNIST classifier (an MLP trained
here), not the Inception network: "IS" is the Inception Score formula on its
class probabilities and "FD" the Frechet distance between its penultimate-layer
features of generated and real test images. The numbers are comparable only
with each other, not with published IS/FID values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from paperlab import data
from complex_momentum_gan import mlp, mlp_init
from optim import games
from optim import complex_adam


def load_fmnist():
  """Train / test images in [-1, 1] as ``[N, 784]`` float32, test labels."""
  train, test = data.load("fashion_mnist", "train"), data.load("fashion_mnist", "test")
  to_pm1 = lambda d: data.flatten(d.images) * 2.0 - 1.0
  return to_pm1(train), train.labels, to_pm1(test), test.labels


def _features(params, x):
  """Penultimate activations and logits of the classifier."""
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x, x @ params[-1]["w"] + params[-1]["b"]


def train_classifier(x, y, x_test, y_test, *, steps: int, seed: int):
  """MLP 784-256-256-10 with Adam; returns (params, test accuracy)."""
  params = mlp_init(jax.random.key(seed), [784, 256, 256, 10])
  tx = optax.adam(1e-3)
  idx = data.batch_indices(len(x), 256, seed, 0, steps)

  @jax.jit
  def run(params, idx):
    def body(carry, i):
      p, s = carry
      loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          _features(p, x[i])[1], y[i]).mean()
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (params, tx.init(params)), idx)[0][0]

  x, y = jnp.asarray(x), jnp.asarray(y)
  params = run(params, jnp.asarray(idx))
  acc = float(jnp.mean(jnp.argmax(_features(params, jnp.asarray(x_test))[1], -1) == y_test))
  return params, acc


def _d_loss(players, batch):
  gen, disc = players
  real, z = batch
  return (jnp.mean(jax.nn.softplus(-mlp(disc, real)))
          + jnp.mean(jax.nn.softplus(mlp(disc, jnp.tanh(mlp(gen, z))))))


def _g_loss(players, batch):
  gen, disc = players
  _, z = batch
  return jnp.mean(jax.nn.softplus(-mlp(disc, jnp.tanh(mlp(gen, z)))))


GAME = games.Game((_g_loss, _d_loss))
_UNITS = {"IS": "exp of a mean KL, 1 to 10, higher is better",
          "FD": "squared feature distance, lower is better"}


class FmnistGan:
  """Stacked state of one GAN per (optimizer, seed) member and its jitted n-step function.

  Member ``j`` is optimizer ``j // len(seeds)`` with seed ``seeds[j % len(seeds)]``;
  the seed sets the initial G and D and the noise stream, and is shared by every
  optimizer (paired seeds). The real-image batches are the same for all members.
  """

  def __init__(self, x_train: np.ndarray, *, z_dim: int, hidden: int, batch_size: int,
               lr: float, b2: float, magnitudes: Sequence[float], angles: Sequence[float],
               seed: int | Sequence[int]):
    self.x = jnp.asarray(x_train)
    self.z_dim, self.hidden, self.batch_size = z_dim, hidden, batch_size
    self.lr, self.b2 = lr, b2
    self.seeds = (seed,) if isinstance(seed, int) else tuple(seed)
    k = len(self.seeds)
    self.magnitude = jnp.repeat(jnp.asarray(magnitudes, jnp.float32), k)
    self.angle = jnp.repeat(jnp.asarray(angles, jnp.float32), k)
    self.seed = jnp.tile(jnp.asarray(self.seeds, jnp.int32), len(magnitudes))

  def _txs(self, magnitude, angle):
    tx = complex_adam(self.lr, magnitude, angle, self.b2)
    return tx, tx

  def init(self):
    h = self.hidden

    def one(m, a, seed):
      k_gen, k_disc = jax.random.split(jax.random.key(seed))
      players = (mlp_init(k_gen, [self.z_dim, h, h, 784]), mlp_init(k_disc, [784, h, h, 1]))
      return games.init_play(GAME, self._txs(m, a), players)
    return jax.vmap(one)(self.magnitude, self.angle, self.seed)

  def steps(self, state, idx, start):
    """Runs ``len(idx)`` steps; ``idx[t]`` are the real-image indices of step ``start + t``."""

    def run_one(state, magnitude, angle, seed):
      step = games.make_step(GAME, self._txs(magnitude, angle), "alternating", order=(1, 0))
      z_key = jax.random.fold_in(jax.random.key(seed), 1)

      def body(s, t_i):
        t, i = t_i
        z = jax.random.normal(jax.random.fold_in(z_key, t), (self.batch_size, self.z_dim))
        return step(s, (self.x[i], z)), None

      ts = start + jnp.arange(idx.shape[0])
      return jax.lax.scan(body, state, (ts, idx))[0]

    return jax.vmap(run_one)(state, self.magnitude, self.angle, self.seed)

  def samples(self, state, n: int):
    """``[members, n, 784]`` generated images in [-1, 1] (fixed noise)."""
    z = jax.random.normal(jax.random.key(4321), (n, self.z_dim))
    return jax.vmap(lambda g: jnp.tanh(mlp(g, z)))(state.players[0])


def scores(classifier, images: np.ndarray, real_features: np.ndarray) -> dict:
  """Classifier-based Inception Score and Frechet distance of ``images``."""
  feats, logits = _features(classifier, jnp.asarray(images))
  p = jax.nn.softmax(logits, -1)
  marginal = jnp.mean(p, 0, keepdims=True)
  kl = jnp.sum(p * (jnp.log(p + 1e-12) - jnp.log(marginal + 1e-12)), -1)
  return {"IS": float(jnp.exp(jnp.mean(kl))),
          "FD": frechet_distance(np.asarray(feats, np.float64), real_features)}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of two feature sets.

  1e-6 is added to the covariance diagonals: dead ReLU units make them singular.
  """
  mu_a, mu_b = a.mean(0), b.mean(0)
  eye = 1e-6 * np.eye(a.shape[1])
  ca, cb = np.cov(a, rowvar=False) + eye, np.cov(b, rowvar=False) + eye
  covmean = scipy.linalg.sqrtm(ca @ cb)
  covmean = np.real(covmean)
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(ca + cb - 2 * covmean))


def real_features(classifier, images: np.ndarray) -> np.ndarray:
  return np.asarray(_features(classifier, jnp.asarray(images))[0], np.float64)


def fmnist_experiment(cfg, run, methods: dict[str, tuple[float, float]], *, progress=None,
                      arrays=None) -> dict:
  """Trains the classifier, then one GAN per optimizer; scores every ``fmnist_eval_every``.

  Args:
    cfg: the script's config.
    run: the run directory.
    methods: ``name -> (|beta1|, arg beta1)``.
    progress: the script's `paperlab.metrics.RunProgress` (classifier phase,
      then the GAN loop).
    arrays: `load_fmnist` output, if already loaded.
  """
  # Imported here so the helper has no import cycle with the script.
  from paperlab import loop, metrics, plots  # pylint: disable=g-import-not-at-top
  x, y, x_test, y_test = load_fmnist() if arrays is None else arrays
  with (progress.phase("Fashion-MNIST scoring classifier", units=cfg.fmnist_classifier_steps)
        if progress else contextlib.nullcontext()):
    classifier, acc = train_classifier(x, y, x_test, y_test, steps=cfg.fmnist_classifier_steps,
                                       seed=cfg.seed)
  if not np.isfinite(acc) or metrics.nonfinite_leaves(classifier):
    raise metrics.NonFiniteError("The Fashion-MNIST scoring classifier diverged (non-finite weights "
                                 "or accuracy); check --fmnist-classifier-steps and --seed.")
  real = real_features(classifier, x_test[:cfg.fmnist_samples])
  reference = scores(classifier, x[:cfg.fmnist_samples], real)  # real train images vs test
  names = list(methods)
  seeds = tuple(cfg.seed + k for k in range(getattr(cfg, "fmnist_seeds", 1)))
  gan = FmnistGan(x, z_dim=cfg.fmnist_z_dim, hidden=cfg.fmnist_hidden, batch_size=cfg.fmnist_batch,
                  lr=cfg.fmnist_lr, b2=cfg.gan_b2, magnitudes=[methods[n][0] for n in names],
                  angles=[methods[n][1] for n in names], seed=seeds)
  members = [(n, s) for n in names for s in seeds]  # the member order of FmnistGan
  label = lambda n, s: n if len(seeds) == 1 else f"{n}/seed{s}"  # noqa: E731
  steps_jit = jax.jit(gan.steps)
  samples_jit = jax.jit(gan.samples, static_argnums=1)

  def step_fn(state, step, n):
    idx = data.batch_indices(len(x), cfg.fmnist_batch, cfg.seed, step, n)
    return steps_jit(state, jnp.asarray(idx), jnp.int32(step)), {}

  def evaluate(state):
    imgs = np.asarray(samples_jit(state, cfg.fmnist_samples))
    return {m: scores(classifier, imgs[j], real) for j, m in enumerate(members)}, imgs

  def eval_fn(state, step):
    del step
    res, _ = evaluate(state)
    return {f"{k}/{label(*m)}": v for m, r in res.items() for k, v in r.items()}

  state, history = loop.train(gan.init(), step_fn=step_fn, num_steps=cfg.fmnist_steps,
                              workdir=run.path("fmnist_gan"), log_every=cfg.fmnist_eval_every,
                              checkpoint_every=cfg.fmnist_eval_every,
                              eval_fn=eval_fn, eval_every=cfg.fmnist_eval_every,
                              desc="Fashion-MNIST GAN", progress=progress)
  final, imgs = evaluate(state)
  for key in ("IS", "FD"):
    series = {}
    for n in names:  # the mean over seeds of each optimizer
      rows = [r for r in history if all(f"{key}/{label(n, s)}" in r for s in seeds)]
      series[n] = ([r["step"] for r in rows], [float(np.mean([r[f"{key}/{label(n, s)}"] for s in seeds]))
                                               for r in rows])
    what = f"mean of {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    plots.line_plot(series, run.path(f"fmnist_{key.lower()}.png"), xlabel="training step (G and D updates)",
                    ylabel=f"classifier {key} ({_UNITS[key]})",
                    title=plots.run_title(run, f"Fashion-MNIST GAN: {key} (own classifier, {what})"),
                    hline=reference[key], hline_label=f"real images ({reference[key]:.2f})")
  first = [j * len(seeds) for j in range(len(names))]  # each optimizer's first seed
  grid = (imgs[first, :16].reshape(-1, 28, 28) + 1.0) / 2.0
  plots.image_grid(grid, run.path("fmnist_samples.png"), ncols=16,
                   row_labels=names,
                   title=plots.run_title(run, f"Fashion-MNIST GAN samples (one row per optimizer, seed {seeds[0]})"))
  return {"classifier_accuracy": acc, "real_reference": reference, "seeds": list(seeds),
          "methods": method_summaries(final, names, seeds, methods),
          "history": [{k: v for k, v in r.items() if k != "chunk_s"} for r in history]}  # no timing


def method_summaries(final: dict, names: Sequence[str], seeds: Sequence[int], methods: dict) -> dict:
  """Per optimizer: the first seed's IS / FD, per-seed values, mean +- std and the paired
  difference to the first optimizer (same seed) over seeds (`paperlab.stats.summarize`)."""
  from paperlab import stats  # pylint: disable=g-import-not-at-top
  out = {}
  for n in names:
    r = {"beta1": list(methods[n]), **final[(n, seeds[0])]}
    for key in ("IS", "FD"):
      values = [final[(n, s)][key] for s in seeds]
      r[f"{key}_per_seed"] = values
      r[f"{key}_over_seeds"] = stats.summarize(values)
      r[f"{key}_minus_{names[0]}"] = stats.summarize([final[(n, s)][key] - final[(names[0], s)][key]
                                                      for s in seeds])
    out[n] = r
  return out
