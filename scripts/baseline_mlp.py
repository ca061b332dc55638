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
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import optax
from flax import nnx

from paperlab import config, data, distributed, loop, metrics, plots, supervised
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


def main(argv=None) -> dict:
  cfg, run = config.cli(Config, PRESETS, paper="baseline_mlp", description=__doc__, argv=argv,
                        multiprocess=True)
  if distributed.process_count() > 1 and not cfg.mesh:
    raise ValueError(f"mesh: a run over {distributed.process_count()} processes needs "
                     f"--mesh data={jax.device_count()} (every device of the run).")
  mesh = mesh_lib.make_mesh(cfg.mesh) if cfg.mesh else None
  train, test = load_data(cfg.dataset)
  x_train, x_test = data.flatten(train.images), data.flatten(test.images)
  steps_per_epoch = data.steps_per_epoch(len(train), cfg.batch_size)
  num_steps = cfg.epochs * steps_per_epoch

  model = MLP([x_train.shape[1], *cfg.hidden, train.num_classes], rngs=nnx.Rngs(cfg.seed))
  schedule = optax.cosine_decay_schedule(cfg.lr, num_steps)
  tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                   optax.sgd(schedule, momentum=cfg.momentum))
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


if __name__ == "__main__":
  config.main(main)
