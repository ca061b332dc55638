"""Federated learning with partial model personalization (Pillutla et al., ICML 2022).

The paper's pipeline on a federated task: FedAvg pretraining (no personal
part) -> for each personal split (input layer, output layer, adapters, full
model) FedAlt and FedSim, with stateful and stateless clients, followed by a
personal-only update on every client -> local fine-tuning baselines (personal
part only; full model; Ditto-style full model with an L2 pull to the global
model). Personalized accuracy is evaluated per client on its own test split:
size-weighted mean and 10th percentile across clients.

Tasks: federated Fashion-MNIST (Dirichlet label skew + a per-client pixel
permutation, so that both input and output layers have something to
personalize; MNIST 5k subset if Fashion-MNIST is absent; EMNIST when prepared
in TFDS) with an MLP; Shakespeare next-character prediction with (play, role)
clients and a GRU.

    python scripts/fed_partial.py --preset quick
    python scripts/fed_partial.py --preset fmnist --rounds 60
    python scripts/fed_partial.py --preset shakespeare
    python -m paperlab.launch -n 2 --devices-per-process 4 scripts/fed_partial.py \
        --preset quick --mesh clients=8    # the client axis over 2 processes x 4 CPU devices

With ``--mesh clients=N`` the client data live sharded over the mesh (the
client axis padded with empty clients to a multiple of N); each process puts
only its own clients on its devices, and a round gathers just the sampled
clients' rows.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from paperlab import config, distributed, loop, plots
from paperlab import mesh as mesh_lib
from fed import algorithms as alg
from fed import datasets, models
from fed import personalization as pz
from fed import simulate as sim

log = logging.getLogger("fed_partial")

PARTIAL_SPLITS = ("input", "output", "adapter")


@dataclasses.dataclass(frozen=True)
class Config:
  """Partial personalization: FedAvg pretraining, FedAlt / FedSim per split, fine-tuning."""

  task: str = "images"  # images | shakespeare
  dataset: str = "fashion_mnist"  # image dataset of paperlab.data (task=images)
  num_clients: int = 100
  clients_per_round: int = 10
  alpha: float = 0.3  # Dirichlet label-skew concentration
  permute_fraction: float = 0.5  # fraction of pixels each client permutes its own way
  max_client_examples: int = 600  # training examples kept per client
  batch_size: int = 32
  hidden: tuple[int, ...] = (200, 200)  # MLP hidden widths (GRU: the first is its width)
  adapter_dim: int = 16  # residual adapter bottleneck
  seq_len: int = 80  # shakespeare: characters per example
  min_chars: int = 4000  # shakespeare: roles with fewer characters are dropped
  pretrain_rounds: int = 200  # FedAvg rounds before personalization
  pretrain_lr: float = 0.05  # client SGD learning rate during pretraining
  server_optimizer: str = "sgd"  # sgd | adam | yogi (on the pseudo-gradient)
  server_lr: float = 1.0
  rounds: int = 50  # FedAlt / FedSim rounds per cell
  client_lr: float = 0.05  # client SGD learning rate of the shared block (FedSim: both)
  personal_lr: float = 0.05  # FedAlt personal phase and the final personal-only update
  personal_steps: int = 0  # FedAlt: cap on personal-phase steps per round (0: one full pass)
  shared_steps: int = 0  # FedAlt: cap on shared-phase steps per round (0: one full pass)
  splits: tuple[str, ...] = ("input", "output", "adapter", "full")
  algorithms: tuple[str, ...] = ("fedalt", "fedsim")
  stateless: bool = True  # also run every cell with stateless clients
  finetune_epochs: int = 5  # local fine-tuning baselines
  finetune_lr: float = 0.05
  ditto_prox: float = 0.1  # L2 coefficient of the Ditto-style full fine-tune
  final_epochs: int = 1  # personal-only update of every client after FedAlt / FedSim
  weighting: str = "examples"  # examples | batches | uniform
  chunk_size: int = 0  # clients per vmap (0: all sampled clients at once)
  eval_every: int = 10  # rounds between evaluations (and metrics records)
  mesh: str = ""  # e.g. "clients=8": client axis sharded over the mesh (needed with several processes)
  seed: int = 0

  def validate(self) -> None:
    req = config.require
    req(self.task in ("images", "shakespeare"), f"task must be images or shakespeare, got {self.task!r}.")
    req(self.num_clients >= 1, f"num_clients must be >= 1, got {self.num_clients}.")
    req(1 <= self.clients_per_round <= self.num_clients,
        f"clients_per_round must be in [1, num_clients={self.num_clients}], got {self.clients_per_round}.")
    req(self.alpha > 0, f"alpha must be > 0, got {self.alpha}.")
    req(0 <= self.permute_fraction <= 1, f"permute_fraction must be in [0, 1], got {self.permute_fraction}.")
    for name in ("batch_size", "max_client_examples", "adapter_dim", "seq_len", "finetune_epochs",
                 "eval_every"):
      req(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}.")
    for name in ("pretrain_rounds", "rounds", "final_epochs", "chunk_size", "personal_steps",
                 "shared_steps"):
      req(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}.")
    for name in ("pretrain_lr", "server_lr", "client_lr", "personal_lr", "finetune_lr"):
      req(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}.")
    req(self.ditto_prox >= 0, f"ditto_prox must be >= 0, got {self.ditto_prox}.")
    req(len(self.hidden) >= 1 and min(self.hidden) >= 1, f"hidden must list positive widths, got {self.hidden}.")
    req(self.server_optimizer in alg.SERVER_OPTIMIZERS,
        f"server_optimizer must be one of {alg.SERVER_OPTIMIZERS}, got {self.server_optimizer!r}.")
    req(self.weighting in alg.WEIGHTINGS, f"weighting must be one of {alg.WEIGHTINGS}, got {self.weighting!r}.")
    req(all(s in pz.SPLITS and s != "none" for s in self.splits),
        f"splits must be among {pz.SPLITS[1:]}, got {self.splits}.")
    req(all(a in ("fedalt", "fedsim") for a in self.algorithms),
        f"algorithms must be among ('fedalt', 'fedsim'), got {self.algorithms}.")
    if self.mesh:
      req(set(mesh_lib.parse_mesh(self.mesh)) == {mesh_lib.CLIENTS},
          f"mesh must have the clients axis only (e.g. clients=8), got {self.mesh!r}.")


PRESETS = {
    "quick": Config(num_clients=50, clients_per_round=10, max_client_examples=300,
                    pretrain_rounds=100, rounds=20, splits=("output", "adapter", "full"),
                    stateless=False, finetune_epochs=3),
    "fmnist": Config(rounds=50),
    "shakespeare": Config(task="shakespeare", num_clients=40, clients_per_round=10,
                          max_client_examples=64, batch_size=8, hidden=(128,), pretrain_rounds=100,
                          rounds=30, pretrain_lr=1.0, client_lr=1.0, personal_lr=1.0,
                          finetune_lr=1.0, splits=("input", "output", "adapter"), stateless=False),
    "paper": Config(pretrain_rounds=500, rounds=200),
}


def build_task(cfg: Config):
  """``(data, graphdef, params, loss_fn, metric_fn)`` of the configured task."""
  rngs = nnx.Rngs(cfg.seed)
  if cfg.task == "shakespeare":
    fd = datasets.shakespeare(seq_len=cfg.seq_len, min_chars=cfg.min_chars, max_clients=cfg.num_clients,
                              batch_size=cfg.batch_size, max_client_sequences=cfg.max_client_examples,
                              seed=cfg.seed)
    model = models.CharGRU(fd.num_classes, hidden=cfg.hidden[0], adapter_dim=cfg.adapter_dim, rngs=rngs)
    graphdef, params = models.pure_params(model)
    return (fd, graphdef, params) + models.sequence_fns(graphdef, datasets.PAD)
  try:
    fd = _images(cfg, cfg.dataset)
  except FileNotFoundError:
    if cfg.dataset != "fashion_mnist":
      raise
    log.warning("Fashion-MNIST is not available; using the MNIST 5k subset instead.")
    fd = _images(cfg, "mnist")
  pixels = int(np.prod(fd.train.x.shape[3:]))
  model = models.AdapterMLP([pixels, *cfg.hidden, fd.num_classes], adapter_dim=cfg.adapter_dim,
                            input_scale=1 / 255, rngs=rngs)
  graphdef, params = models.pure_params(model)
  return (fd, graphdef, params) + models.classifier_fns(graphdef)


def _images(cfg: Config, name: str) -> datasets.FederatedData:
  return datasets.federated_images(name, num_clients=cfg.num_clients, alpha=cfg.alpha, seed=cfg.seed,
                                   batch_size=cfg.batch_size, permute_fraction=cfg.permute_fraction,
                                   max_client_examples=cfg.max_client_examples)


class Experiment:
  """The pipeline's stages; finished stages are cached in ``cells.json``."""

  def __init__(self, cfg: Config, run: config.Run):
    self.cfg, self.run = cfg, run
    if distributed.process_count() > 1 and not cfg.mesh:
      raise ValueError(f"mesh: a run over {distributed.process_count()} processes needs "
                       f"--mesh clients={jax.device_count()} (every device of the run).")
    self.mesh = mesh_lib.make_mesh(cfg.mesh) if cfg.mesh else None
    self.fd, self.graphdef, self.params, self.loss_fn, self.metric_fn = build_task(cfg)
    self.rows = self.fd.num_clients  # client rows of every per-client array
    if self.mesh is None:
      self.train = sim.ClientData(*(jnp.asarray(a) for a in self.fd.train))
      self.test = sim.ClientData(*(jnp.asarray(a) for a in self.fd.test))
    else:
      self.rows += -self.rows % mesh_lib.axis_size(self.mesh, mesh_lib.CLIENTS)
      self.train, self.test = self._shard(self.fd.train), self._shard(self.fd.test)
    self.cache_path = run.path("cells.json")
    self.cells = config.load_json(self.cache_path) if self.cache_path.exists() else {}
    distributed.barrier("fed_partial:cells")  # every process read the same cache
    self.chunk = cfg.chunk_size or None

  def _shard(self, data: sim.ClientData) -> sim.ClientData:
    """Client rows padded with empty clients, sharded over 'clients'; each process reads its own."""
    sharding = NamedSharding(self.mesh, PartitionSpec(mesh_lib.CLIENTS))
    pad = lambda a: np.pad(np.asarray(a), [(0, self.rows - len(a))] + [(0, 0)] * (np.ndim(a) - 1))
    return sim.ClientData(*(distributed.from_rows(sharding, pad(a)) for a in data))

  def evaluate(self, part, shared, personal, frozen, **kw) -> dict[str, float]:
    return alg.evaluate_clients(self.metric_fn, part, shared, personal, frozen, self.test,
                                chunk_size=self.chunk, mesh=self.mesh, **kw)[0]

  def _save(self, name: str, cell: dict) -> dict:
    self.cells[name] = cell
    if distributed.is_main():
      config.save_json(self.cache_path, self.cells)
    log.info("%s: %s", name, {k: v for k, v in cell.items() if k != "history"})
    return cell

  def federated(self, name: str, split: str, algorithm: str, params, *, rounds: int, lr: float,
                stateful: bool = True):
    """Trains one cell with `paperlab.loop.train` (resumable); returns ``(algo, state, history)``."""
    cfg = self.cfg
    part = pz.Partition(params, pz.label_params(params, split))
    a = alg.FedAlgorithm(
        self.loss_fn, part,
        alg.phases(algorithm, optax.sgd(lr), personal_tx=optax.sgd(cfg.personal_lr),
                   personal_steps=cfg.personal_steps or None, shared_steps=cfg.shared_steps or None),
        alg.server_optimizer(cfg.server_optimizer, cfg.server_lr), clients_per_round=cfg.clients_per_round,
        stateful=stateful, weighting=cfg.weighting, chunk_size=self.chunk, mesh=self.mesh,
        num_clients=self.fd.num_clients)
    n = self.rows

    def eval_fn(state, step):
      del step
      s = self.evaluate(part, state.shared, a.client_personal(state, n), state.frozen)
      return {"test_acc_mean": s["acc_mean"], "test_acc_p10": s["acc_p10"]}

    every = max(1, min(cfg.eval_every, rounds))
    state = a.init(params, n, jax.random.key(cfg.seed + 1))
    if self.mesh is not None:
      state = distributed.put(state, mesh_lib.replicated(self.mesh))
    state, history = loop.train(state, step_fn=a.step_fn(self.train), num_steps=rounds,
                                workdir=self.run.path(name), log_every=every,
                                checkpoint_every=every * max(1, 50 // every), eval_fn=eval_fn,
                                eval_every=every, desc=name)
    return a, state, history

  def pretrain(self) -> tuple[dict, object]:
    cfg = self.cfg
    a, state, history = self.federated("pretrain", "none", "fedavg", self.params,
                                       rounds=cfg.pretrain_rounds, lr=cfg.pretrain_lr)
    pretrained = a.partition.merge(state.shared, state.personal, state.frozen)
    if "pretrain" not in self.cells:
      s = self.evaluate(a.partition, state.shared, state.personal, state.frozen)
      self._save("pretrain", {"acc_mean": s["acc_mean"], "acc_p10": s["acc_p10"],
                              "history": _curve(history)})
    return self.cells["pretrain"], pretrained

  def finetune(self, name: str, split: str, pretrained, phase: sim.Phase) -> dict:
    """A local fine-tuning baseline from the pretrained model (no server)."""
    if name in self.cells:
      return self.cells[name]
    part = pz.Partition(pretrained, pz.label_params(pretrained, split))
    u, v, frozen = part.split(pretrained)
    u_i, v_i = alg.local_finetune(self.loss_fn, part, [phase], u, pz.stack(v, self.rows), frozen,
                                  self.train, epochs=self.cfg.finetune_epochs, chunk_size=self.chunk,
                                  mesh=self.mesh)
    s = self.evaluate(part, u if u_i == () else u_i, v_i, frozen, shared_per_client=u_i != ())
    return self._save(name, {"acc_mean": s["acc_mean"], "acc_p10": s["acc_p10"]})

  def personalize(self, split: str, algorithm: str, stateful: bool, pretrained) -> dict:
    name = f"{split}-{algorithm}-{'stateful' if stateful else 'stateless'}"
    if name in self.cells:
      return self.cells[name]
    cfg = self.cfg
    a, state, history = self.federated(name, split, algorithm, pretrained, rounds=cfg.rounds,
                                       lr=cfg.client_lr, stateful=stateful)
    personal = a.client_personal(state, self.rows)
    if cfg.final_epochs > 0:  # the reference code's final personal-only pass on every client
      _, personal = alg.local_finetune(self.loss_fn, a.partition,
                                       [sim.Phase("personal", optax.sgd(cfg.personal_lr))], state.shared,
                                       personal, state.frozen, self.train, epochs=cfg.final_epochs,
                                       chunk_size=self.chunk, mesh=self.mesh)
    s = self.evaluate(a.partition, state.shared, personal, state.frozen)
    return self._save(name, {"acc_mean": s["acc_mean"], "acc_p10": s["acc_p10"],
                             "personal_fraction": a.partition.personal_fraction,
                             "personal_params": a.partition.count(pz.PERSONAL),
                             "history": _curve(history)})


def _curve(history) -> dict:
  pts = [(r["step"], r["test_acc_mean"]) for r in history if "test_acc_mean" in r]
  return {"round": [p[0] for p in pts], "acc_mean": [p[1] for p in pts]}


def _fmt(cell: dict | None, key: str) -> str:
  return "-" if cell is None else f"{100 * cell[key]:.2f}"


def main(argv=None) -> dict:
  cfg, run = config.cli(Config, PRESETS, paper="fed_partial", description=__doc__, argv=argv,
                        multiprocess=True)
  exp = Experiment(cfg, run)
  base, pretrained = exp.pretrain()
  modes = (True, False) if cfg.stateless else (True,)
  columns = [("finetune", None, None)] + [(f"{a} {'stateful' if s else 'stateless'}", a, s)
                                          for s in modes for a in cfg.algorithms]
  table, fractions = {}, {}
  for split in cfg.splits:
    table[split] = {"finetune": exp.finetune(f"{split}-finetune", split, pretrained,
                                             sim.Phase("personal", optax.sgd(cfg.finetune_lr)))}
    for label, algorithm, stateful in columns[1:]:
      table[split][label] = exp.personalize(split, algorithm, stateful, pretrained)
    fractions[split] = pz.Partition(pretrained, pz.label_params(pretrained, split)).personal_fraction
  ditto = exp.finetune("full-ditto", "full", pretrained,
                       sim.Phase("personal", optax.sgd(cfg.finetune_lr), prox=cfg.ditto_prox))

  # Table shaped like the paper's: split x {fine-tune, FedAlt, FedSim} x {stateful, stateless}.
  head = "| split | personal params | " + " | ".join(c[0] for c in columns) + " |"
  lines = [head, "|" + "---|" * (len(columns) + 2)]
  lines.append(f"| none (FedAvg) | 0% | {_fmt(base, 'acc_mean')} ({_fmt(base, 'acc_p10')}) |"
               + " - |" * (len(columns) - 1))
  for split in cfg.splits:
    cells = [f"{_fmt(table[split][c[0]], 'acc_mean')} ({_fmt(table[split][c[0]], 'acc_p10')})"
             for c in columns]
    lines.append(f"| {split} | {100 * fractions[split]:.2f}% | " + " | ".join(cells) + " |")
  lines.append(f"| full, Ditto (prox {cfg.ditto_prox}) | 100% | {_fmt(ditto, 'acc_mean')} "
               f"({_fmt(ditto, 'acc_p10')}) |" + " - |" * (len(columns) - 1))
  markdown = "\n".join(lines)
  if distributed.is_main():
    run.path("table.md").write_text(f"Mean personalized test accuracy % (10th percentile), {exp.fd.name}\n\n"
                                     + markdown + "\n")
    print(markdown)

  series = {"FedAvg pretraining": (base["history"]["round"], base["history"]["acc_mean"])}
  offset = cfg.pretrain_rounds
  for split in cfg.splits:
    for label, algorithm, stateful in columns[1:]:
      if stateful:
        h = table[split][label]["history"]
        series[f"{split} {algorithm}"] = ([offset + r for r in h["round"]], h["acc_mean"])
  plots.line_plot(series, run.path("curves.png"), xlabel="round", ylabel="mean client test accuracy",
                  title=f"Partial personalization, {exp.fd.name}")

  best = {split: max(c["acc_mean"] for c in table[split].values()) for split in cfg.splits}
  partial = [s for s in cfg.splits if s in PARTIAL_SPLITS and fractions[s] <= 0.10]
  full_gain = best["full"] - base["acc_mean"] if "full" in best else math.nan
  best_partial = max(partial, key=best.get) if partial else None
  recovered = ((best[best_partial] - base["acc_mean"]) / full_gain
               if best_partial and full_gain > 0 else math.nan)
  # With the full split nothing is shared and FedAlt == FedSim == local training: not compared.
  pairs = [(table[s][f"fedalt {m}"]["acc_mean"], table[s][f"fedsim {m}"]["acc_mean"])
           for s in cfg.splits if s != "full"
           for m in (["stateful", "stateless"] if cfg.stateless else ["stateful"])
           if f"fedalt {m}" in table[s] and f"fedsim {m}" in table[s]]
  wins = sum(a >= b for a, b in pairs)
  results = {"data": exp.fd.describe(), "pretrained": base,
             "table": {s: {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in row.items()}
                       for s, row in table.items()},
             "ditto": ditto, "personal_fraction": fractions, "best_partial_split": best_partial,
             "gain_recovered": recovered, "fedalt_ge_fedsim": f"{wins} of {len(pairs)}",
             "table_markdown": markdown}
  name = exp.fd.name
  headline = [{"metric": f"FedAvg (no personalization) mean acc, {name}", "value": base["acc_mean"],
               "note": f"{cfg.pretrain_rounds} rounds, {cfg.clients_per_round}/{cfg.num_clients} clients"}]
  if best_partial:
    headline.append({"metric": f"best <=10% split ({best_partial}) mean acc", "value": best[best_partial],
                     "note": f"{100 * fractions[best_partial]:.1f}% personal params"})
  if "full" in best:
    headline.append({"metric": "full-model personalization mean acc", "value": best["full"], "note": ""})
    headline.append({"metric": "gain of full personalization recovered by best partial split",
                     "value": recovered, "note": "target >= 0.7", "optional": True})
  headline.append({"metric": "FedAlt >= FedSim (mean acc cells)", "value": f"{wins} of {len(pairs)}",
                   "note": f"{cfg.rounds} rounds per cell"})
  run.write_results(results, headline)
  return results


if __name__ == "__main__":
  main()
