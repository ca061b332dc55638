"""Backprop MLP baseline on Fashion-MNIST (MNIST 5k subset when Fashion-MNIST is absent).

The reference point for the learning-rule papers and the smallest end-to-end
run of the kit: data -> NNX MLP -> optax -> resumable loop -> metrics, plots,
results.json.

    python scripts/baseline_mlp.py --preset quick
    python scripts/baseline_mlp.py --preset quick --epochs 2 --lr 0.05 --workdir /tmp/mlp
    python -m paperlab.launch -n 2 --devices-per-process 2 scripts/baseline_mlp.py \
        --preset quick --mesh data=4    # data parallel over 2 processes x 2 CPU devices

With ``--mesh data=N`` every batch is sharded over N devices (of one or
several processes) and each process reads only its devices' rows.

Seeds and the numeric optimizer settings run as one `paperlab.sweep` program
(one member per seed and value, on one process, without ``--mesh``)::

    python scripts/baseline_mlp.py --preset quick --seeds 0 1 2
    python scripts/baseline_mlp.py --preset quick --seeds 0:3 --sweep lr=0.02,0.05

Member ``(seed s, lr v)`` is the run ``--seed s --lr v``: its own
initialisation and batch order. results.json has one row per member and the
mean, std, n and 95% CI over seeds per point.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from paperlab import config, data, distributed, loop, metrics, plots, stats, supervised, sweep
from paperlab import mesh as mesh_lib
from paperlab.models import MLP

log = logging.getLogger("baseline_mlp")


@dataclasses.dataclass(frozen=True)
class Config:
  """Backprop MLP classifier."""

  dataset: str = "fashion_mnist"  # image dataset (paperlab.data); falls back to mnist if absent
  hidden: tuple[int, ...] = (256, 256)  # hidden widths
  epochs: int = 5
  batch_size: int = 128
  lr: float = 0.05  # peak learning rate (SGD + momentum, cosine decay)
  momentum: float = 0.9
  weight_decay: float = 1e-4
  seed: int = 0
  log_every: int = 100  # steps per metrics record
  checkpoint_every: int = 500  # a multiple of log_every
  mesh: str = ""  # e.g. "data=8": batches sharded over the data axis (needed with several processes)

  def validate(self) -> None:
    config.require(self.dataset in data.IMAGE_DATASETS,
                   f"dataset must be one of {data.IMAGE_DATASETS}, got {self.dataset!r}.")
    config.require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}.")
    config.require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}.")
    config.require(self.lr > 0, f"lr must be > 0, got {self.lr}.")
    config.require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}.")
    config.require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}.")
    config.require(all(h >= 1 for h in self.hidden), f"hidden widths must be >= 1, got {self.hidden}.")
    config.require(self.seed >= 0, f"seed must be >= 0, got {self.seed}.")
    config.require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}.")
    config.require(self.checkpoint_every >= 1 and self.checkpoint_every % self.log_every == 0,
                   f"checkpoint_every must be a positive multiple of log_every={self.log_every}, "
                   f"got {self.checkpoint_every}.")
    if self.mesh:
      shape = mesh_lib.parse_mesh(self.mesh)
      config.require(set(shape) == {mesh_lib.DATA},
                     f"mesh must have the data axis only (e.g. data=8), got {self.mesh!r}.")
      config.require(self.batch_size % shape[mesh_lib.DATA] == 0,
                     f"batch_size={self.batch_size} must be a multiple of the data axis of {self.mesh!r}.")


PRESETS = {
    "quick": Config(),
    "paper": Config(hidden=(1000, 1000), epochs=30),
}


def load_data(name: str) -> tuple[data.ImageDataset, data.ImageDataset]:
  try:
    return data.load(name, "train"), data.load(name, "test")
  except FileNotFoundError:
    if name != "fashion_mnist":
      raise
    log.warning("Fashion-MNIST is not available; using the MNIST 5k subset instead.")
    return data.load("mnist", "train"), data.load("mnist", "test")


SWEEP_KEYS = ("lr", "momentum", "weight_decay")  # numeric fields --sweep varies per member
EVAL_BATCH = 2000


def make_optimizer(lr, momentum, weight_decay, *, num_steps: int) -> optax.GradientTransformation:
  """SGD with momentum, L2 weight decay (added to the gradient) and ``lr`` cosine-decayed over the run."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(optax.cosine_decay_schedule(lr, num_steps), momentum=momentum))


def _check_sweep(cfg: Config, request) -> None:
  del request
  config.require(not cfg.mesh and distributed.process_count() == 1,
                 "--seeds / --sweep run on one process without --mesh (the members are the sharded "
                 "axis); drop --mesh or the sweep flags.")


def main(argv=None) -> dict:
  cfg, run = config.cli(Config, PRESETS, paper="baseline_mlp", description=__doc__, argv=argv,
                        multiprocess=True,
                        sweep=config.SweepOptions(numeric=SWEEP_KEYS, check=_check_sweep))
  if distributed.process_count() > 1 and not cfg.mesh:
    raise ValueError(f"mesh: a run over {distributed.process_count()} processes needs "
                     f"--mesh data={jax.device_count()} (every device of the run).")
  mesh = mesh_lib.make_mesh(cfg.mesh) if cfg.mesh else None
  train, test = load_data(cfg.dataset)
  x_train, x_test = data.flatten(train.images), data.flatten(test.images)
  steps_per_epoch = data.steps_per_epoch(len(train), cfg.batch_size)
  num_steps = cfg.epochs * steps_per_epoch
  if run.sweep:
    return train_sweep(cfg, run, train, test, x_train, x_test)

  model = MLP([x_train.shape[1], *cfg.hidden, train.num_classes], rngs=nnx.Rngs(cfg.seed))
  tx = make_optimizer(cfg.lr, cfg.momentum, cfg.weight_decay, num_steps=num_steps)
  graphdef, state = supervised.init_state(model, tx, mesh)
  step_fn = supervised.make_step_fn(graphdef, tx, x_train, train.labels,
                                    batch_size=cfg.batch_size, seed=cfg.seed, mesh=mesh)

  def eval_fn(state, step):
    del step
    return supervised.evaluate(graphdef, state["params"], x_test, test.labels, mesh=mesh)

  with metrics.RunProgress(num_steps, desc="baseline_mlp") as progress:
    state, history = loop.train(
        state, step_fn=step_fn, num_steps=num_steps, workdir=run.workdir, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, eval_fn=eval_fn,
        eval_every=cfg.log_every * max(1, steps_per_epoch // cfg.log_every), desc="train",
        progress=progress)
  final = eval_fn(state, num_steps)
  plots.learning_curves(history, ["loss", "test_acc"], run.path("curves.png"),
                        xlabel="training step (batches)", label=f"MLP {'-'.join(map(str, cfg.hidden))}",
                        ylabels={"loss": "train cross-entropy (nats)",
                                 "test_acc": "test accuracy (fraction correct)"},
                        title=plots.run_title(run, f"Backprop MLP on {train.name}"))
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  results = {"dataset": train.name, "data_source": train.source, "train_examples": len(train),
             "test_examples": len(test), "epochs": cfg.epochs, "params": n_params, **final}
  run.write_results(results, [{"metric": f"BP MLP test accuracy ({train.name})",
                               "value": final["test_acc"],
                               "note": f"{cfg.epochs} epochs, MLP {'-'.join(map(str, cfg.hidden))}"}],
                    timing={"train_seconds": sum(r.get("chunk_s", 0.0) for r in history)})
  log.info("Test accuracy %.4f on %s (%d examples).", final["test_acc"], train.name, len(test))
  return results


def _eval_batches(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``x, y`` in ``[batches, EVAL_BATCH, ...]`` (the last padded) and the 0/1 mask of real rows."""
  size = min(EVAL_BATCH, len(y))
  pad = -len(y) % size
  idx = np.concatenate([np.arange(len(y)), np.full(pad, len(y) - 1)])
  keep = np.arange(len(idx)) < len(y)
  shape = lambda a: a.reshape((-1, size) + a.shape[1:])  # noqa: E731
  return shape(x[idx]), shape(y[idx]), shape(keep.astype(np.float32))


def train_sweep(cfg: Config, run, train, test, x_train: np.ndarray, x_test: np.ndarray) -> dict:
  """Every member of ``run.sweep`` (seeds x swept values) as one `paperlab.sweep.Sweep`.

  Each member draws its own initialisation and batch order from its seed (the
  single run ``--seed s``); the learning rate, momentum and weight decay are
  injected hyperparameters, so the grid is one compiled program.
  """
  grid = sweep.grid_from(run.sweep, default_seeds=(cfg.seed,))
  steps_per_epoch = data.steps_per_epoch(len(train), cfg.batch_size)
  num_steps = cfg.epochs * steps_per_epoch
  sizes = [x_train.shape[1], *cfg.hidden, train.num_classes]
  defaults = {k: getattr(cfg, k) for k in SWEEP_KEYS}
  tx = sweep.injectable(lambda lr, momentum, weight_decay: make_optimizer(
      lr, momentum, weight_decay, num_steps=num_steps), **defaults)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: MLP(sizes, rngs=nnx.Rngs(0))))
  seeds = np.asarray(grid.seeds, np.int32)  # batch orders: one per distinct seed

  def init_fn(key, hp):
    params = nnx.to_pure_dict(nnx.state(MLP(sizes, rngs=nnx.Rngs(key))))
    opt_state = sweep.set_hyperparams(tx.init(params), **{k: hp.get(k, v) for k, v in defaults.items()})
    return {"params": params, "opt_state": opt_state}

  def step_fn(state, hp, t, chunk):
    x, y, idx, t0 = chunk
    ix = idx[jnp.argmax(seeds == hp["seed"]), t - t0]
    xb, yb = x[ix], y[ix]

    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(xb)
      return supervised.cross_entropy(logits, yb), logits
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return ({"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state},
            {"loss": loss, "train_acc": supervised.accuracy(logits, yb)})

  def eval_fn(state, hp, batches):
    del hp
    model = nnx.merge(graphdef, state["params"])

    def one(b):
      xb, yb, keep = b
      logits = model(xb)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
      return jnp.sum(ce * keep), jnp.sum((jnp.argmax(logits, -1) == yb) * keep)
    ce, hits = jax.lax.map(one, batches)
    n = jnp.sum(batches[2])
    return {"test_loss": jnp.sum(ce) / n, "test_acc": jnp.sum(hits) / n}

  engine = sweep.Sweep(grid, init_fn, step_fn)
  replicated = NamedSharding(engine.mesh, PartitionSpec())
  x_dev, y_dev = jax.device_put((x_train, train.labels.astype(np.int32)), replicated)
  test_batches = jax.device_put(_eval_batches(x_test, test.labels.astype(np.int32)), replicated)

  def data_fn(step, n):
    idx = np.stack([data.batch_indices(len(train), cfg.batch_size, int(s), step, n) for s in seeds])
    return x_dev, y_dev, idx.astype(np.int32), np.int32(step)

  with metrics.RunProgress(num_steps, desc="baseline_mlp") as progress:
    state, final, history = engine.train(
        run.workdir, num_steps=num_steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
        eval_fn=eval_fn, eval_data=test_batches,
        eval_every=cfg.log_every * max(1, steps_per_epoch // cfg.log_every),
        desc=f"train ({len(grid)} members)", progress=progress, data_fn=data_fn,
        base_config=config.to_dict(cfg))
  last = engine.apply(eval_fn, state, test_batches)  # the final parameters, every member
  final = {k: np.asarray(jax.device_get(v), np.float64)[:len(grid)] for k, v in last.items()}
  failed = engine.failures(state)
  report = engine.report(run.workdir, final, failed=failed, plot_metrics=("test_acc",) if grid.keys else (),
                         title=f"Backprop MLP on {train.name}")
  curves = {f"{m.label()}": ([r["step"] for r in history if f"test_acc/{m.id}" in r],
                             [r[f"test_acc/{m.id}"] for r in history if f"test_acc/{m.id}" in r])
            for m in engine.members}
  plots.line_plot(curves, run.path("curves.png"), xlabel="training step (batches)",
                  ylabel="test accuracy (fraction correct)",
                  title=plots.run_title(run, f"Backprop MLP {'-'.join(map(str, cfg.hidden))} on {train.name}"))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["state"]["params"])) // engine.padded
  results = {"dataset": train.name, "data_source": train.source, "train_examples": len(train),
             "test_examples": len(test), "epochs": cfg.epochs, "params": n_params,
             "sweep": report}
  headline = []
  for point in report["points"]:
    acc = point["test_acc"]
    if not acc["n"]:
      continue
    where = ", ".join(f"{k}={v:g}" for k, v in point["point"].items())
    spread = stats.spread({"mean": acc["mean"], "std": acc["std"], "n": acc["n"]}, 4)
    headline.append({"metric": f"BP MLP test accuracy ({train.name})" + (f", {where}" if where else ""),
                     "value": acc["mean"],
                     "note": f"{cfg.epochs} epochs, MLP {'-'.join(map(str, cfg.hidden))}; {spread}"
                             + (f", 95% CI +- {acc['ci95']:.4f}" if acc["n"] > 1 else "")})
  if not headline:
    raise metrics.NonFiniteError("every member of the sweep became non-finite.")
  best = max((p for p in report["points"] if p["test_acc"]["n"]), key=lambda p: p["test_acc"]["mean"])
  results.update(test_acc=best["test_acc"]["mean"], test_loss=best["test_loss"]["mean"],
                 best_point=best["point"])
  run.write_results(results, headline, timing={"train_seconds": sum(r.get("chunk_s", 0.0) for r in history)})
  log.info("Test accuracy %s on %s (%d members).", "; ".join(h["note"].split("; ")[-1] for h in headline),
           train.name, len(grid))
  return results


if __name__ == "__main__":
  config.main(main)
