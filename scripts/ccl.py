"""Counter-Current Learning (Kao & Hariharan, NeurIPS 2024) against backprop.

Trains the dual forward/feedback network with layer-local CCL losses and the
same forward net with end-to-end backprop (BP), side by side on the same data,
budget and optimiser settings. Writes results.json (test accuracy, or test
MSE for the autoencoder, of every method and seed), learning curves, the
paper's diagnostics (per-layer cosine between f_l and the transpose of its
mirrored feedback map g_l, and CKA between a_l and c_l over training), and
for the autoencoder a grid of reconstructions.

    python scripts/ccl.py --preset quick                   # Fashion-MNIST MLP, 5 epochs, 3 seeds
    python scripts/ccl.py --preset quick --epochs 20 --workdir runs/ccl/fmnist20
    python scripts/ccl.py --preset paper                   # 100 epochs, 3 seeds
    python scripts/ccl.py --preset ae                      # conv autoencoder, Fashion-MNIST
    python scripts/ccl.py --preset paper_cifar10_cnn       # needs a prepared TFDS cifar10
    python scripts/ccl.py --preset quick --sweep lr=0.5,1  # 3 seeds x 2 learning rates per method

The seeds (``--seeds``) and the values of ``--sweep KEY=V1,V2`` (the numeric
fields in `SWEEP_KEYS`) are the members of one `paperlab.sweep` program per
method (learning rate, momentum and weight decay injected into the optimizer,
loss weights per member); member ``(seed s, lr v)`` is the run ``--seeds s
--lr v``. Conv models on CPU train their members one after the other instead
(conv backward inside `jax.lax.scan` is ~25x slower on XLA:CPU; see
`ccl_jax.train.make_step_fn`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax.sharding import NamedSharding, PartitionSpec

from ccl_jax import diagnostics, losses, train
from ccl_jax.models import CCLAutoencoder, CCLCNN, CCLMLP
from paperlab import config, data, loop, metrics, plots, stats, sweep


Model = Literal["mlp", "cnn", "cnn_pool", "ae"]
Method = Literal["ccl", "bp"]


@dataclasses.dataclass(frozen=True)
class Config:
  """Counter-current learning vs backprop (reference-config defaults: MLP)."""

  dataset: str = "fashion_mnist"  # paperlab.data image dataset
  model: Model = "mlp"  # mlp | cnn | cnn_pool | ae
  methods: tuple[Method, ...] = ("ccl", "bp")  # trained one after the other
  seeds: tuple[int, ...] = (0,)
  epochs: int = 5
  batch_size: int = 256
  lr: float = 1.0  # SGD learning rate of both nets
  bp_lr: float | None = None  # BP learning rate (None: same as lr)
  momentum: float = 0.0
  weight_decay: float = 0.0
  clip: float | None = 1.0  # per-group global-norm clip (None: off)
  cosine: bool = False  # per-epoch cosine decay over `epochs` down to eta_min
  eta_min: float = 1e-3
  warmup_steps: int = 0  # loss warm-up (reference style)
  grad_centralization: bool = False
  scale_c: float = 0.5  # alignment weight (0.5 MLP, 1.0 CNN)
  scale_ssl: float = 0.5  # CNN decorrelation weight
  filter_target: bool = False  # CNN: drop examples already classified with p > 0.9
  scale_h: float = 1.0  # autoencoder pair-loss weight
  activation: Literal["elu", "relu", "tanh"] = "elu"  # hidden activation of both nets
  hidden: tuple[int, ...] = (256,) * 5  # MLP hidden widths
  channels: tuple[int, ...] = (128, 128, 256, 256, 512)  # CNN / AE widths
  batches_per_epoch: int | None = None  # use only the first N batches of each epoch
  val_fraction: float = 0.1  # held out of train for model selection
  diag_examples: int = 1000  # test examples used for the CKA diagnostic
  checkpoint_epochs: int = 5  # checkpoint every this many epochs

  def validate(self) -> None:
    req = config.require
    req(self.dataset in data.IMAGE_DATASETS,
        f"dataset must be one of {data.IMAGE_DATASETS}, got {self.dataset!r}.")
    req(len(self.methods) >= 1 and len(set(self.methods)) == len(self.methods),
        f"methods must list ccl and/or bp once each, got {self.methods}.")
    req(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds),
        f"seeds must list at least one seed, each once, got {self.seeds}.")
    req(all(s >= 0 for s in self.seeds), f"seeds must be >= 0, got {self.seeds}.")
    req(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}.")
    req(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}.")
    req(self.lr > 0, f"lr must be > 0, got {self.lr}.")
    req(self.bp_lr is None or self.bp_lr > 0, f"bp_lr must be > 0, got {self.bp_lr}.")
    req(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}.")
    req(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}.")
    req(self.clip is None or self.clip > 0, f"clip must be > 0 or None, got {self.clip}.")
    req(0 <= self.eta_min <= self.lr, f"eta_min must be in [0, lr], got {self.eta_min}.")
    req(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}.")
    req(0 <= self.val_fraction < 0.5, f"val_fraction must be in [0, 0.5), got {self.val_fraction}.")
    req(all(w >= 1 for w in self.hidden + self.channels),
        f"widths must be >= 1, got hidden={self.hidden}, channels={self.channels}.")
    req(self.model != "ae" or len(self.channels) <= 5,
        f"the autoencoder halves 32x32 inputs once per channel entry; "
        f"use at most 5, got {self.channels}.")
    req(self.diag_examples >= 10, f"diag_examples must be >= 10, got {self.diag_examples}.")
    req(self.checkpoint_epochs >= 1, f"checkpoint_epochs must be >= 1, got {self.checkpoint_epochs}.")
    req(self.scale_c >= 0 and self.scale_ssl >= 0 and self.scale_h >= 0,
        f"loss weights must be >= 0, got scale_c={self.scale_c}, scale_ssl={self.scale_ssl}, "
        f"scale_h={self.scale_h}.")
    req(self.model == "mlp" or len(self.channels) >= 1, "channels must not be empty for conv models.")
    req(self.batches_per_epoch is None or self.batches_per_epoch >= 1,
        f"batches_per_epoch must be >= 1 or None, got {self.batches_per_epoch}.")


# bp_lr: the reference's BP CNN runs at lr 0.03 (CCL at 1.0).
_CNN = dict(model="cnn_pool", batch_size=128, bp_lr=0.03, scale_c=1.0, scale_ssl=0.5,
            warmup_steps=100, grad_centralization=True, cosine=True)
PRESETS = {
    "quick": Config(seeds=(0, 1, 2)),
    "paper": Config(epochs=100, seeds=(0, 1, 2)),
    "paper_mnist_mlp": Config(dataset="mnist", epochs=100),
    "paper_cifar10_mlp": Config(dataset="cifar10", hidden=(1024,) * 3, epochs=100),
    "paper_cifar100_mlp": Config(dataset="cifar100", hidden=(1024,) * 3, epochs=100),
    "paper_cifar10_cnn": Config(dataset="cifar10", momentum=0.8, weight_decay=1e-6,
                                clip=0.3, filter_target=True, epochs=100, **_CNN),
    "paper_cifar100_cnn": Config(dataset="cifar100", momentum=0.5, weight_decay=1e-6,
                                 clip=None, epochs=100, **_CNN),
    "paper_mnist_cnn": Config(dataset="mnist", model="cnn", scale_c=1.0, warmup_steps=100,
                              bp_lr=0.03, epochs=100),
    "cnn_small": Config(model="cnn", channels=(16, 16, 32, 32, 64), scale_c=1.0,
                        warmup_steps=100, epochs=2, batch_size=128, bp_lr=0.05),
    # ELU, not the reference's BN + ReLU: see docs/ccl.md.
    "ae": Config(model="ae", channels=(8, 16, 32), batch_size=64, lr=0.03, bp_lr=0.05,
                 momentum=0.9, weight_decay=1e-4, clip=0.2, cosine=True,
                 warmup_steps=100, grad_centralization=True, epochs=5,
                 batches_per_epoch=200),
}


@dataclasses.dataclass(frozen=True)
class Data:
  """Network-ready arrays of one experiment (train / validation / test)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str
  source: str


def load_data(cfg: Config) -> Data:
  """Loads the dataset, splits off validation data, resizes and standardises.

  Conv models see 32x32 inputs (28x28 datasets are resized, as in the
  reference). Classifiers get per-channel standardised inputs; the
  autoencoder keeps [0, 1] pixels so that its MSE is in pixel units.
  """
  train_ds, test_ds = data.load(cfg.dataset, "train"), data.load(cfg.dataset, "test")
  perm = np.random.default_rng(0).permutation(len(train_ds))  # same split for every run
  n_val = int(round(cfg.val_fraction * len(train_ds)))
  val_idx, train_idx = perm[:n_val], perm[n_val:]
  pixels = data.to_float(train_ds.images[train_idx])
  if cfg.model == "ae":
    mean = std = None
  else:
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))
  prep = lambda im: train.prepare_inputs(im, flat=cfg.model == "mlp",
                                         size=None if cfg.model == "mlp" else 32,
                                         mean=mean, std=std)
  return Data(prep(train_ds.images[train_idx]), train_ds.labels[train_idx],
              prep(train_ds.images[val_idx]), train_ds.labels[val_idx],
              prep(test_ds.images), test_ds.labels, train_ds.num_classes,
              train_ds.name, train_ds.source)


def build_model(cfg: Config, ds: Data, seed: int):
  rngs = nnx.Rngs(seed)
  act = cfg.activation
  if cfg.model == "mlp":
    return CCLMLP((ds.x_train.shape[1], *cfg.hidden, ds.num_classes), activation=act,
                  rngs=rngs)
  if cfg.model == "ae":
    return CCLAutoencoder(ds.x_train.shape[-1], cfg.channels, activation=act, rngs=rngs)
  return CCLCNN(ds.x_train.shape[1:], ds.num_classes, cfg.channels,
                pool=cfg.model == "cnn_pool", activation=act, rngs=rngs)


def steps_per_epoch(cfg: Config, ds: Data) -> int:
  full = data.steps_per_epoch(len(ds.y_train), cfg.batch_size)
  return min(full, cfg.batches_per_epoch or full)


def _learning_rate(cfg: Config, method: str) -> float:
  return cfg.bp_lr if (method == "bp" and cfg.bp_lr is not None) else cfg.lr


def make_optimizer(cfg: Config, ds: Data, learning_rate, momentum, weight_decay):
  """The two-group SGD of `ccl_jax.train` (numbers or injected hyperparameters)."""
  opt = train.OptimConfig(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
      clip_norm=cfg.clip, cosine_epochs=cfg.epochs if cfg.cosine else 0,
      eta_min=jnp.minimum(cfg.eta_min, learning_rate), warmup_steps=cfg.warmup_steps,
      grad_centralization=cfg.grad_centralization, steps_per_epoch=steps_per_epoch(cfg, ds))
  return train.make_optimizer(opt)


def loss_config(cfg: Config, **scales) -> losses.LossConfig:
  kind = {"mlp": "mlp", "ae": "ae"}.get(cfg.model, "cnn")
  values = {k: getattr(cfg, k) for k in ("scale_c", "scale_ssl", "scale_h")}
  return losses.LossConfig(kind=kind, filter_target=cfg.filter_target, **{**values, **scales})


def make_trainer(cfg: Config, ds: Data, method: str, seed: int):
  lr = _learning_rate(cfg, method)
  return train.Trainer.create(
      build_model(cfg, ds, seed), make_optimizer(cfg, ds, lr, cfg.momentum, cfg.weight_decay),
      losses.ccl_loss if method == "ccl" else losses.bp_loss, loss_config(cfg), cfg.warmup_steps)


def run_one(cfg: Config, ds: Data, method: str, seed: int, workdir,
            progress: metrics.RunProgress | None = None) -> dict:
  """Trains one (method, seed); evaluates and logs diagnostics every epoch."""
  trainer, state = make_trainer(cfg, ds, method, seed)
  steps = steps_per_epoch(cfg, ds)
  step_fn = train.make_step_fn(trainer, jnp.asarray(ds.x_train), jnp.asarray(ds.y_train),
                               batch_size=cfg.batch_size, seed=seed,
                               scan=cfg.model == "mlp",
                               batches_per_epoch=cfg.batches_per_epoch)
  eval_batch = jax.jit(trainer.eval_batch)
  x_diag = jnp.asarray(ds.x_test[:cfg.diag_examples])
  y_diag = jnp.asarray(ds.y_test[:cfg.diag_examples])

  @jax.jit
  def diag(params, x, y):
    model = trainer.model(params)
    cka = jnp.zeros(0) if cfg.model == "ae" else diagnostics.pair_cka(model, x, y)
    return diagnostics.weight_alignment(model), cka

  def eval_fn(state, step):
    del step
    params = state["params"]
    out = {f"test_{k}": v for k, v in
           train.evaluate(eval_batch, params, ds.x_test, ds.y_test).items()}
    if len(ds.y_val):
      out.update({f"val_{k}": v for k, v in
                  train.evaluate(eval_batch, params, ds.x_val, ds.y_val).items()})
    if method == "ccl":
      cos, cka = jax.device_get(diag(params, x_diag, y_diag))
      out.update({f"cos_{l}": float(c) for l, c in enumerate(cos)})
      out.update({f"cka_{l}": float(c) for l, c in enumerate(cka)})
    return out

  initial = {"step": 0, **jax.device_get(eval_fn(state, 0))}  # the same init on resume
  state, history = loop.train(
      state, step_fn=step_fn, num_steps=cfg.epochs * steps, workdir=workdir,
      log_every=steps, checkpoint_every=steps * cfg.checkpoint_epochs,
      eval_fn=eval_fn, eval_every=steps, desc=f"{method} seed {seed}", progress=progress)
  epochs = [r for r in history if "test_" + _metric(cfg) in r]
  score = "val_" + ("mse" if cfg.model == "ae" else "ce")
  chosen = min(epochs, key=lambda r: r[score]) if score in epochs[-1] else epochs[-1]
  return {"seed": seed, "final": epochs[-1]["test_" + _metric(cfg)],
          "selected": chosen["test_" + _metric(cfg)],
          "selected_epoch": chosen["step"] // steps,
          "train_seconds": sum(r.get("chunk_s", 0.0) for r in history),
          "history": [initial] + epochs, "params": state["params"], "trainer": trainer}


_NOT_RESULTS = ("params", "trainer", "history", "train_seconds")  # timing goes to its own block

# Numeric fields --sweep varies per member; bp_lr is BP's learning rate only, lr CCL's (and BP's
# while bp_lr is None).
SWEEP_KEYS = ("lr", "bp_lr", "momentum", "weight_decay", "scale_c", "scale_ssl", "scale_h")
_OPT_KEYS = ("momentum", "weight_decay")
_LOSS_KEYS = ("scale_c", "scale_ssl", "scale_h")
EVAL_BATCH = 1000


def method_keys(cfg: Config, method: str, request) -> dict[str, tuple[float, ...]]:
  """The swept values that apply to ``method``."""
  values = dict(request.numeric) if request else {}
  bp_own = "bp_lr" in values or cfg.bp_lr is not None
  drop = {"bp_lr"} if method == "ccl" else ({"lr"} if bp_own else {"bp_lr"})
  return {k: v for k, v in values.items() if k not in drop}


def method_grid(cfg: Config, method: str, request) -> sweep.Grid:
  values = method_keys(cfg, method, request)
  if request is not None and request.zipped:
    return sweep.Grid.zipped(cfg.seeds, **values)
  return sweep.Grid.product(cfg.seeds, **values)


def member_config(cfg: Config, member: sweep.Member) -> Config:
  """The single-run config of a sweep member (its seed and swept values)."""
  values = {k: float(v) for k, v in member.values.items()}
  return dataclasses.replace(cfg, seeds=(member.seed,), **values)


def use_engine(cfg: Config) -> bool:
  """Members as one vmapped program, except conv models on CPU (scan-slow conv backward)."""
  return cfg.model == "mlp" or jax.default_backend() != "cpu"


def _eval_split(images: np.ndarray, labels: np.ndarray):
  """``(full batches [k, EVAL_BATCH, ...], the remainder)`` of a dataset (either may be empty)."""
  full = len(labels) // EVAL_BATCH * EVAL_BATCH
  batches = (images[:full].reshape((-1, EVAL_BATCH) + images.shape[1:]),
             labels[:full].reshape(-1, EVAL_BATCH))
  return batches, (images[full:], labels[full:])


def _sum_eval(eval_batch, params, split) -> dict[str, jax.Array]:
  """Sums of ``eval_batch`` over a `_eval_split` (the member's mean metrics follow)."""
  (xs, ys), (xr, yr) = split
  out = None
  if ys.shape[0]:
    sums = jax.lax.map(lambda b: eval_batch(params, *b), (xs, ys))
    out = {k: jnp.sum(v) for k, v in sums.items()}
  if yr.shape[0]:
    rest = eval_batch(params, xr, yr)
    out = rest if out is None else {k: out[k] + rest[k] for k in out}
  n = ys.size + yr.shape[0]
  return {k: v / n for k, v in out.items()}


def run_members(cfg: Config, ds: Data, method: str, grid: sweep.Grid, workdir,
                progress: metrics.RunProgress | None = None) -> tuple[list[dict], dict[str, int]]:
  """Every member of ``grid`` for ``method``: one `paperlab.sweep.Sweep` (or one run each).

  Returns each member's `run_one`-style result (plus its ``member`` id and
  ``values``) and the frozen (non-finite) members ``{id: step}``.
  """
  members = grid.members()
  if not use_engine(cfg):
    out = []
    for m in members:
      r = run_one(member_config(cfg, m), ds, method, m.seed, pathlib.Path(workdir) / m.id, progress)
      out.append({**r, "member": m.id, "values": dict(m.values)})
    return out, {}
  steps = steps_per_epoch(cfg, ds)
  lr_key = "bp_lr" if method == "bp" and ("bp_lr" in grid.keys or cfg.bp_lr is not None) else "lr"
  defaults = {"learning_rate": _learning_rate(cfg, method), **{k: getattr(cfg, k) for k in _OPT_KEYS}}
  tx = sweep.injectable(lambda learning_rate, momentum, weight_decay: make_optimizer(
      cfg, ds, learning_rate, momentum, weight_decay), **defaults)
  template = nnx.eval_shape(lambda: build_model(cfg, ds, 0))
  graphdef, _ = nnx.split(template)
  base = train.Trainer(graphdef, tx, losses.ccl_loss if method == "ccl" else losses.bp_loss,
                       loss_config(cfg), cfg.warmup_steps)
  seeds = np.asarray(grid.seeds, np.int32)  # one batch order per distinct seed

  def trainer_of(hp) -> train.Trainer:
    return base._replace(loss_cfg=loss_config(cfg, **{k: hp[k] for k in _LOSS_KEYS if k in hp}))

  def init_fn(key, hp):
    params = nnx.to_pure_dict(nnx.state(build_model(cfg, ds, key)))
    values = {"learning_rate": hp.get(lr_key, defaults["learning_rate"]),
              **{k: hp.get(k, defaults[k]) for k in _OPT_KEYS}}
    return {"params": params, "opt_state": sweep.set_hyperparams(tx.init(params), **values)}

  def step_fn(state, hp, t, chunk):
    x, y, idx, t0 = chunk
    ix = idx[jnp.argmax(seeds == hp["seed"]), t - t0]
    return trainer_of(hp).train_step(state, x[ix], y[ix], t)

  n_layers = len(template.layers)

  def eval_fn(state, hp, d):
    params, trainer = state["params"], trainer_of(hp)
    out = {f"test_{k}": v for k, v in _sum_eval(trainer.eval_batch, params, d["test"]).items()}
    if "val" in d:
      out.update({f"val_{k}": v for k, v in _sum_eval(trainer.eval_batch, params, d["val"]).items()})
    if method == "ccl":
      model = trainer.model(params)
      cos = diagnostics.weight_alignment(model)
      out.update({f"cos_{l}": cos[l] for l in range(n_layers)})
      if cfg.model != "ae":
        cka = diagnostics.pair_cka(model, *d["diag"])
        out.update({f"cka_{l}": cka[l] for l in range(cka.shape[0])})
    return out

  engine = sweep.Sweep(grid, init_fn, step_fn)
  put = lambda tree: jax.device_put(tree, NamedSharding(engine.mesh, PartitionSpec()))  # noqa: E731
  x_dev, y_dev = put((ds.x_train, ds.y_train.astype(np.int32)))
  eval_data = {"test": _eval_split(ds.x_test, ds.y_test.astype(np.int32)),
               "diag": (ds.x_test[:cfg.diag_examples], ds.y_test[:cfg.diag_examples].astype(np.int32))}
  if len(ds.y_val):
    eval_data["val"] = _eval_split(ds.x_val, ds.y_val.astype(np.int32))
  eval_data = put(eval_data)

  def data_fn(step, n):
    idx = np.stack([train.epoch_batch_indices(len(ds.y_train), cfg.batch_size, int(s), step, n,
                                              cfg.batches_per_epoch) for s in seeds])
    return x_dev, y_dev, idx.astype(np.int32), np.int32(step)

  initial = jax.device_get(engine.apply(eval_fn, engine.init(), eval_data))  # the same on resume
  state, _, history = engine.train(
      workdir, num_steps=cfg.epochs * steps, log_every=steps, checkpoint_every=steps * cfg.checkpoint_epochs,
      eval_fn=eval_fn, eval_every=steps, eval_data=eval_data, data_fn=data_fn,
      desc=f"{method} ({len(grid)} members)", progress=progress, base_config=config.to_dict(cfg))
  seconds = sum(r.get("chunk_s", 0.0) for r in history)
  metric = "test_" + _metric(cfg)
  score = "val_" + ("mse" if cfg.model == "ae" else "ce")
  out = []
  for m in members:
    suffix = "/" + m.id
    epochs = [{"step": r["step"], **{k[:-len(suffix)]: v for k, v in r.items() if k.endswith(suffix)}}
              for r in history if metric + suffix in r]
    first = {"step": 0, **{k: float(v[m.index]) for k, v in initial.items()}}
    chosen = min(epochs, key=lambda r: r[score]) if score in epochs[-1] else epochs[-1]
    out.append({"seed": m.seed, "member": m.id, "values": dict(m.values), "final": epochs[-1][metric],
                "selected": chosen[metric], "selected_epoch": chosen["step"] // steps,
                "train_seconds": seconds / len(members), "history": [first] + epochs,
                "params": jax.tree.map(lambda x, i=m.index: x[i], state["state"]["params"]),
                "trainer": base})
  return out, engine.failures(state)


def _metric(cfg: Config) -> str:
  return "mse" if cfg.model == "ae" else "acc"


def _mean_std(values):
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_plots(cfg: Config, ds: Data, runs: dict, run) -> list[str]:
  metric = _metric(cfg)
  label = "test MSE (per pixel, pixels in [0, 1])" if metric == "mse" else "test accuracy (fraction correct)"
  curves = {}
  for method, rs in runs.items():
    for r in rs:
      x = [h["step"] for h in r["history"]]
      where = "".join(f" {k}={v:g}" for k, v in r.get("values", {}).items())
      curves[f"{method.upper()}{where} seed {r['seed']}"] = (x, [h["test_" + metric] for h in r["history"]])
  paths = [plots.line_plot(curves, run.path("curves.png"), xlabel="training step (batches)", ylabel=label,
                           title=plots.run_title(run, f"CCL vs BP, {cfg.model} on {ds.name}"))]
  if "ccl" in runs:
    hist = runs["ccl"][0]["history"]
    x = [h["step"] for h in hist]
    for key, ylabel in (("cos", "cos(f_l, g_l^T) (cosine, -1 to 1)"), ("cka", "CKA(a_l, c_l[y]) (0 to 1)")):
      layers = sorted({int(k.split("_")[1]) for k in hist[-1] if k.startswith(key + "_")})
      if layers:
        series = {f"layer {l}": (x, [h[f"{key}_{l}"] for h in hist]) for l in layers}
        paths.append(plots.line_plot(series, run.path(f"{key}.png"), xlabel="training step (batches)",
                                     ylabel=ylabel, title=plots.run_title(
                                         run, f"CCL {ylabel.split(' (')[0]} over training, seed "
                                              f"{runs['ccl'][0]['seed']}")))
  if cfg.model == "ae":
    grid = [ds.x_test[:8]]
    for method, rs in runs.items():
      r = rs[0]
      grid.append(np.asarray(r["trainer"].model(r["params"])(jnp.asarray(ds.x_test[:8]))))
    paths.append(plots.image_grid(np.concatenate(grid), run.path("reconstructions.png"),
                                  ncols=8, row_labels=["test images", *(m.upper() for m in runs)],
                                  title=plots.run_title(run, "rows: test images, " + ", ".join(
                                      m.upper() for m in runs) + " reconstructions")))
  return [pathlib.Path(p).name for p in paths]  # relative to the run directory


def main(argv=None) -> dict:
  cfg, run = config.cli(Config, PRESETS, paper="ccl", description=__doc__, argv=argv,
                        sweep=config.SweepOptions(numeric=SWEEP_KEYS))
  ds = load_data(cfg)
  metric = _metric(cfg)
  grids = {m: method_grid(cfg, m, run.sweep) for m in cfg.methods}
  runs_per_method = {m: 1 if use_engine(cfg) else len(g) for m, g in grids.items()}  # one sweep: one run
  total = sum(runs_per_method.values()) * cfg.epochs * steps_per_epoch(cfg, ds)
  with metrics.RunProgress(total, desc="ccl") as progress:
    outcomes = {m: run_members(cfg, ds, m, g, run.path(m), progress) for m, g in grids.items()}
  failed = {m: f for m, (_, f) in outcomes.items()}
  every = {m: rs for m, (rs, _) in outcomes.items()}
  reports = {m: sweep.report(grids[m].members(), grids[m].keys, run.workdir,
                             {"final": [r["final"] for r in rs], "selected": [r["selected"] for r in rs]},
                             failed=failed[m]) for m, rs in every.items()}
  # Per method: the point with the best val-selected test metric (the only one without --sweep).
  better = min if metric == "mse" else max
  best = {m: better([p for p in rep["points"] if p["selected"]["n"]] or rep["points"],
                    key=lambda p: p["selected"]["mean"]) for m, rep in reports.items()}
  runs = {m: [r for r in rs if r["values"] == best[m]["point"] and r["member"] not in failed[m]]
          for m, rs in every.items()}
  if not all(runs.values()):
    raise metrics.NonFiniteError(f"every member of {[m for m, rs in runs.items() if not rs]} became non-finite.")
  summary = {}
  for method, rs in runs.items():
    final_mean, final_std = _mean_std([r["final"] for r in rs])
    sel_mean, sel_std = _mean_std([r["selected"] for r in rs])
    summary[method] = {f"test_{metric}_final": final_mean, f"test_{metric}_final_std": final_std,
                       f"test_{metric}_selected": sel_mean, f"test_{metric}_selected_std": sel_std}
    if grids[method].keys:
      summary[method]["point"] = best[method]["point"]
  results = {
      "dataset": ds.name, "data_source": ds.source, "model": cfg.model,
      "epochs": cfg.epochs, "seeds": list(cfg.seeds), "train_examples": len(ds.y_train),
      "val_examples": len(ds.y_val), "test_examples": len(ds.y_test),
      "summary": summary,
      "runs": {m: [{k: v for k, v in r.items() if k not in _NOT_RESULTS} for r in rs]
               for m, rs in every.items()},
      "sweep": {m: {k: rep[k] for k in ("points", "members", "table")} for m, rep in reports.items()},
      **{f"{when}_diagnostics": ({k: v for k, v in runs["ccl"][0]["history"][i].items()
                                  if k.startswith(("cos_", "cka_"))} if "ccl" in runs else {})
         for when, i in (("initial", 0), ("final", -1))},
  }
  headline = []
  what = f"{cfg.model.upper()} on {ds.name}"
  if metric == "mse":
    mean_image = ds.x_train.mean(axis=0)
    results["mean_image_test_mse"] = float(np.mean((ds.x_test - mean_image) ** 2))
    headline.append({"metric": f"mean-image predictor test MSE, {ds.name}",
                     "value": results["mean_image_test_mse"], "note": "reference point"})
  for method, rs in runs.items():
    selected = stats.summarize([r["selected"] for r in rs])
    final = stats.summarize([r["final"] for r in rs])
    summary[method][f"test_{metric}_selected_ci95"] = [selected["ci95_low"], selected["ci95_high"]]
    where = "".join(f", {k}={v:g}" for k, v in best[method]["point"].items())
    headline.append({"metric": f"{method.upper()} test {metric} (val-selected), {what}{where}",
                     "value": stats.spread(selected, 4),
                     "note": f"{cfg.epochs} epochs; 95% CI [{selected['ci95_low']:.4f}, "
                             f"{selected['ci95_high']:.4f}]; last epoch {stats.spread(final, 4)}"})
  results["plots"] = write_plots(cfg, ds, runs, run)
  timing = {"train_seconds": {m: [r["train_seconds"] for r in rs] for m, rs in every.items()}}
  run.write_results(results, headline, timing=timing)
  return results


if __name__ == "__main__":
  config.main(main)
