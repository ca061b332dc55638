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

``--sweep client_lr=0.02,0.05,0.1`` trains every FedAlt / FedSim cell at
all those client learning rates as one `paperlab.sweep.Sweep` (the FedState
stacked over members, each member's client SGD step size a traced value);
member ``v`` is the cell of the run ``--client_lr v``. The table reports each
cell at its best rate (by mean client test accuracy; every rate is listed
under the cell's ``members``). ``--seeds`` stays a loop over whole pipelines:
a seed draws its own federated split of the data and its own pretrained model.
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

from paperlab import config, distributed, loop, plots, sweep
from paperlab import data as data_lib
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
  stateless_eval: str = "cached"  # stateless clients evaluated with: cached (last trained v_i) | fresh (v_0)
  finetune_epochs: int = 5  # local fine-tuning baselines
  finetune_lr: float = 0.05
  ditto_prox: float = 0.1  # L2 coefficient of the Ditto-style full fine-tune
  final_epochs: int = 1  # personal-only update of every client after FedAlt / FedSim
  cell_finetune: bool = True  # also report each FedAlt / FedSim cell after finetune_epochs of local fine-tuning
  weighting: str = "examples"  # examples | batches | uniform
  chunk_size: int = 0  # clients per vmap (0: the backend's fastest measured setting, fed.simulate.default_chunk_size)
  eval_every: int = 10  # rounds between evaluations (and metrics records)
  mesh: str = ""  # e.g. "clients=8": client axis sharded over the mesh (needed with several processes)
  seed: int = 0
  seeds: tuple[int, ...] = ()  # run the whole pipeline once per seed (in seed<N>/) and report mean +- std

  @property
  def run_seeds(self) -> tuple[int, ...]:
    return self.seeds or (self.seed,)

  def validate(self) -> None:
    req = config.require
    req(self.task in ("images", "shakespeare"), f"task must be images or shakespeare, got {self.task!r}.")
    req(self.dataset.split("/")[0] in data_lib.IMAGE_DATASETS,
        f"dataset must be one of {data_lib.IMAGE_DATASETS} (a TFDS config such as emnist/balanced "
        f"allowed), got {self.dataset!r}.")
    req(self.stateless_eval in alg.STATELESS_EVALS,
        f"stateless_eval must be one of {alg.STATELESS_EVALS}, got {self.stateless_eval!r}.")
    req(len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {self.seeds}.")
    req(self.seed >= 0 and all(s >= 0 for s in self.seeds),
        f"seed and seeds must be >= 0, got seed={self.seed}, seeds={self.seeds}.")
    req(self.num_clients >= 1, f"num_clients must be >= 1, got {self.num_clients}.")
    req(1 <= self.clients_per_round <= self.num_clients,
        f"clients_per_round must be in [1, num_clients={self.num_clients}], got {self.clients_per_round}.")
    req(self.alpha > 0, f"alpha must be > 0, got {self.alpha}.")
    req(0 <= self.permute_fraction <= 1, f"permute_fraction must be in [0, 1], got {self.permute_fraction}.")
    for name in ("batch_size", "max_client_examples", "adapter_dim", "seq_len", "finetune_epochs",
                 "eval_every", "rounds", "min_chars"):
      req(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}.")
    for name in ("pretrain_rounds", "final_epochs", "chunk_size", "personal_steps",
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
    "fmnist3": Config(rounds=50, seeds=(0, 1, 2)),
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

  def __init__(self, cfg: Config, run: config.Run, prefix: str = ""):
    self.cfg, self.run, self.prefix = cfg, run, prefix
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
    self.cache_path = run.path(prefix + "cells.json")
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
    a = self.algorithm(split, algorithm, params, lr=lr, stateful=stateful)
    part = a.partition
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
                                workdir=self.run.path(self.prefix + name), log_every=every,
                                checkpoint_every=every * max(1, 50 // every), eval_fn=eval_fn,
                                eval_every=every, desc=self.prefix + name)
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

  def algorithm(self, split: str, algorithm: str, params, *, lr, stateful: bool = True) -> alg.FedAlgorithm:
    """The `fed.algorithms.FedAlgorithm` of one cell; ``lr`` (the client rate) may be traced."""
    cfg = self.cfg
    part = pz.Partition(params, pz.label_params(params, split))
    return alg.FedAlgorithm(
        self.loss_fn, part,
        alg.phases(algorithm, optax.sgd(lr), personal_tx=optax.sgd(cfg.personal_lr),
                   personal_steps=cfg.personal_steps or None, shared_steps=cfg.shared_steps or None),
        alg.server_optimizer(cfg.server_optimizer, cfg.server_lr), clients_per_round=cfg.clients_per_round,
        stateful=stateful, weighting=cfg.weighting, chunk_size=self.chunk, mesh=self.mesh,
        num_clients=self.fd.num_clients, stateless_eval=cfg.stateless_eval)

  def federated_sweep(self, name: str, split: str, algorithm: str, params, *, rounds: int,
                      lrs: tuple[float, ...], stateful: bool = True):
    """One cell at every client rate of ``lrs``: one `paperlab.sweep.Sweep` of stacked FedStates.

    Member ``v`` starts from the same state as the single run ``--client_lr v``
    (the same sampling and batch-order key) and trains with client rate ``v``.
    Returns ``[(client_lr, algorithm, FedState)]`` per member, in ``lrs`` order.
    """
    cfg = self.cfg
    start = self.algorithm(split, algorithm, params, lr=cfg.client_lr, stateful=stateful).init(
        params, self.rows, jax.random.key(cfg.seed + 1))
    grid = sweep.Grid.product((cfg.seed,), client_lr=lrs)

    def init_fn(key, hp):
      del key, hp  # every member starts from the cell's state; only the client rate differs
      return start

    def step_fn(state, hp, t, data):
      del t
      return self.algorithm(split, algorithm, params, lr=hp["client_lr"], stateful=stateful)._round(state, data)

    engine = sweep.Sweep(grid, init_fn, step_fn, data=self.train)
    every = max(1, min(cfg.eval_every, rounds))
    stacked, _, _ = engine.train(self.run.path(self.prefix + name), num_steps=rounds, log_every=every,
                                 checkpoint_every=every * max(1, 50 // every),
                                 desc=f"{self.prefix}{name} ({len(grid)} client rates)",
                                 base_config=config.to_dict(cfg))
    failed = engine.failures(stacked)
    if failed:
      raise ValueError(f"{name}: client rates {[engine.members[int(i[1:])].values for i in failed]} became "
                       "non-finite; drop them from --sweep client_lr.")
    return [(float(m.values["client_lr"]), self.algorithm(split, algorithm, params, lr=m.values["client_lr"],
                                                           stateful=stateful),
             alg.FedState(*engine.unstack(stacked["state"], m.index))) for m in engine.members]

  def personalize(self, split: str, algorithm: str, stateful: bool, pretrained) -> dict:
    """One FedAlt / FedSim cell: train, final personal-only pass, evaluate (and fine-tune)."""
    cfg = self.cfg
    name = f"{split}-{algorithm}-" + ("stateful" if stateful else f"stateless-{cfg.stateless_eval}")
    cached = self.cells.get(name)
    if cached is not None and (not cfg.cell_finetune or "ft_acc_mean" in cached):
      return cached
    lrs = dict(self.run.sweep.numeric).get("client_lr") if getattr(self.run, "sweep", None) else None
    if lrs:
      members = [self._cell(a, state, None) | {"client_lr": lr} for lr, a, state in self.federated_sweep(
          name, split, algorithm, pretrained, rounds=cfg.rounds, lrs=lrs, stateful=stateful)]
      best = max(members, key=lambda c: c["acc_mean"])
      return self._save(name, {**best, "members": members})
    a, state, history = self.federated(name, split, algorithm, pretrained, rounds=cfg.rounds,
                                       lr=cfg.client_lr, stateful=stateful)
    return self._save(name, self._cell(a, state, history))

  def _cell(self, a: alg.FedAlgorithm, state: alg.FedState, history) -> dict:
    """A trained cell's results: final personal-only pass, evaluation (and fine-tuning)."""
    cfg = self.cfg
    trained = a.client_personal(state, self.rows)  # stateless: cached v_i, or v_0 ('fresh')
    personal = trained
    if cfg.final_epochs > 0:  # the reference code's final personal-only pass on every client
      personal = self._personal_pass(a, state, trained, cfg.final_epochs, cfg.personal_lr)
    s = self.evaluate(a.partition, state.shared, personal, state.frozen)
    cell = {"acc_mean": s["acc_mean"], "acc_p10": s["acc_p10"],
            "personal_fraction": a.partition.personal_fraction,
            "personal_params": a.partition.count(pz.PERSONAL)}
    if history is not None:
      cell["history"] = _curve(history)
    if cfg.cell_finetune:  # local fine-tuning of the personal part from the cell's final (u, v_i)
      tuned = self._personal_pass(a, state, trained, cfg.finetune_epochs, cfg.finetune_lr)
      t = self.evaluate(a.partition, state.shared, tuned, state.frozen)
      cell |= {"ft_acc_mean": t["acc_mean"], "ft_acc_p10": t["acc_p10"]}
    return cell

  def _personal_pass(self, a, state, personal, epochs: int, lr: float):
    return alg.local_finetune(self.loss_fn, a.partition, [sim.Phase("personal", optax.sgd(lr))],
                              state.shared, personal, state.frozen, self.train, epochs=epochs,
                              chunk_size=self.chunk, mesh=self.mesh)[1]


def _curve(history) -> dict:
  pts = [(r["step"], r["test_acc_mean"]) for r in history if "test_acc_mean" in r]
  return {"round": [p[0] for p in pts], "acc_mean": [p[1] for p in pts]}


def _stats(values) -> dict:
  """Mean and sample standard deviation (0 for one value) across seeds."""
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "values": [float(x) for x in v]}


def _fmt(stats: dict | None, scale: float = 100.0, bold: bool = False) -> str:
  if stats is None:
    return "-"
  text = f"{scale * stats['mean']:.2f}"
  if len(stats["values"]) > 1:
    text += f" ± {scale * stats['std']:.2f}"
  return f"**{text}**" if bold else text


def _label(column: str) -> str:
  return (column.replace("fedalt", "FedAlt").replace("fedsim", "FedSim")
          .replace("finetune", "fine-tune"))


def run_seed(cfg: Config, run: config.Run, prefix: str) -> dict:
  """The whole pipeline for one seed: ``{'base', 'table', 'ditto', 'fractions', 'name'}``."""
  exp = Experiment(cfg, run, prefix)
  base, pretrained = exp.pretrain()
  modes = (True, False) if cfg.stateless else (True,)
  table, fractions = {}, {}
  for split in cfg.splits:
    table[split] = {"finetune": exp.finetune(f"{split}-finetune", split, pretrained,
                                             sim.Phase("personal", optax.sgd(cfg.finetune_lr)))}
    for stateful in modes:
      for algorithm in cfg.algorithms:
        table[split][_column(algorithm, stateful)] = exp.personalize(split, algorithm, stateful,
                                                                     pretrained)
    fractions[split] = pz.Partition(pretrained, pz.label_params(pretrained, split)).personal_fraction
  ditto = exp.finetune("full-ditto", "full", pretrained,
                       sim.Phase("personal", optax.sgd(cfg.finetune_lr), prox=cfg.ditto_prox))
  return {"base": base, "table": table, "ditto": ditto, "fractions": fractions,
          "name": exp.fd.name, "data": exp.fd.describe()}


def _column(algorithm: str, stateful: bool) -> str:
  return f"{algorithm} {'stateful' if stateful else 'stateless'}"


def aggregate(per_seed: list[dict]) -> dict:
  """Mean +- std across seeds of every cell's accuracies, and of FedAlt - FedSim per cell pair."""
  keys = ("acc_mean", "acc_p10", "ft_acc_mean", "ft_acc_p10")
  agg = lambda cells: {k: _stats([c[k] for c in cells]) for k in keys if k in cells[0]}  # noqa: E731
  first = per_seed[0]
  table = {split: {col: agg([r["table"][split][col] for r in per_seed]) for col in row}
           for split, row in first["table"].items()}
  diffs = {}
  for split, row in first["table"].items():
    for mode in ("stateful", "stateless"):
      alt, fsim = f"fedalt {mode}", f"fedsim {mode}"
      if alt in row and fsim in row:
        diffs[f"{split} {mode}"] = {
            k: _stats([r["table"][split][alt][k] - r["table"][split][fsim][k] for r in per_seed])
            for k in keys if k in row[alt]}
  return {"pretrained": agg([r["base"] for r in per_seed]), "table": table,
          "ditto": agg([r["ditto"] for r in per_seed]), "fedalt_minus_fedsim": diffs}


def _markdown(cfg: Config, summary: dict, fractions: dict, key: str, columns: list[str]) -> str:
  """Split x columns table of ``key`` (mean +- std over seeds, %); best cell of a row in bold."""
  table = summary["table"]
  lines = ["| split | personal params | " + " | ".join(_label(c) for c in columns) + " |",
           "|" + "---|" * (len(columns) + 2)]
  base_key = key.removeprefix("ft_")
  lines.append(f"| none (FedAvg) | 0% | {_fmt(summary['pretrained'][base_key])} |"
               + " - |" * (len(columns) - 1))
  for split in cfg.splits:
    vals = {c: table[split][c].get(key if c != "finetune" else base_key) for c in columns}
    best = max((v["mean"] for v in vals.values() if v), default=None)
    cells = [_fmt(v, bold=v is not None and v["mean"] == best) for v in vals.values()]
    lines.append(f"| {split} | {100 * fractions[split]:.2f}% | " + " | ".join(cells) + " |")
  lines.append(f"| full, Ditto (prox {cfg.ditto_prox}) | 100% | {_fmt(summary['ditto'][base_key])} |"
               + " - |" * (len(columns) - 1))
  return "\n".join(lines)


def _diff_markdown(summary: dict) -> str:
  rows = summary["fedalt_minus_fedsim"]
  if not rows:
    return ""
  keys = [k for k in ("acc_mean", "acc_p10", "ft_acc_mean", "ft_acc_p10") if k in next(iter(rows.values()))]
  names = {"acc_mean": "mean acc", "acc_p10": "10th pct", "ft_acc_mean": "mean acc, fine-tuned",
           "ft_acc_p10": "10th pct, fine-tuned"}
  lines = ["| split, clients | " + " | ".join(names[k] for k in keys) + " |",
           "|" + "---|" * (len(keys) + 1)]
  for cell, d in rows.items():
    lines.append(f"| {cell} | " + " | ".join(f"{100 * d[k]['mean']:+.2f}"
                                            + (f" ± {100 * d[k]['std']:.2f}" if len(d[k]["values"]) > 1
                                               else "") for k in keys) + " |")
  return "\n".join(lines)


def plot_curves(cfg: Config, per_seed: list[dict], columns: list[str], path, title: str) -> None:
  """One panel for pretraining and one per split; x = rounds since the panel's run started."""
  import matplotlib.pyplot as plt  # paperlab.plots selected the headless backend
  from matplotlib.ticker import MaxNLocator
  start = [r["base"]["acc_mean"] for r in per_seed]  # every cell starts from the pretrained model
  panels = ["pretraining"] + list(cfg.splits)
  fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    if panel == "pretraining":
      series = {"FedAvg": [r["base"]["history"] for r in per_seed]}
    else:
      series = {_label(c): [r["table"][panel][c]["history"] for r in per_seed]
                for c in columns if "history" in per_seed[0]["table"][panel][c]}
    for label, hists in series.items():
      x = np.asarray(hists[0]["round"])
      if not len(x):
        continue
      ys = np.asarray([h["acc_mean"] for h in hists if len(h["acc_mean"]) == len(x)]) * 100
      if panel != "pretraining":
        x = np.concatenate([[0], x])
        ys = np.concatenate([100 * np.asarray(start)[:len(ys), None], ys], axis=1)
      line, = ax.plot(x, ys.mean(0), marker="." if len(x) < 30 else None, label=label)
      if len(ys) > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
    ax.set_title("FedAvg pretraining" if panel == "pretraining" else f"{panel} split")
    ax.set_xlabel("FedAvg round" if panel == "pretraining" else
                  "FedAlt / FedSim round (0: pretrained model)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mean client test accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # swept cells have no per-round curve
      ax.legend(fontsize=7)
  seeds = f", mean of {len(per_seed)} seeds (band: min-max)" if len(per_seed) > 1 else ""
  fig.suptitle(title + seeds)
  plots.save(fig, path)


def _check_sweep(cfg: Config, request) -> None:
  del request
  config.require(not cfg.mesh and distributed.process_count() == 1,
                 "--sweep client_lr runs on one process without --mesh (the members are the stacked "
                 "axis); drop --mesh or the sweep flag.")


def main(argv=None) -> dict:
  cfg, run = config.cli(Config, PRESETS, paper="fed_partial", description=__doc__, argv=argv,
                        multiprocess=True, sweep=config.SweepOptions(numeric=("client_lr",), check=_check_sweep))
  seeds = cfg.run_seeds
  per_seed = [run_seed(dataclasses.replace(cfg, seed=s), run, f"seed{s}/" if cfg.seeds else "")
              for s in seeds]
  first = per_seed[0]
  fractions, name = first["fractions"], first["name"]
  summary = aggregate(per_seed)
  modes = ("stateful", "stateless") if cfg.stateless else ("stateful",)
  fed_columns = [f"{a} {m}" for m in modes for a in cfg.algorithms]
  seed_note = f", {len(seeds)} seeds (mean ± std)" if len(seeds) > 1 else ""
  markdown = _markdown(cfg, summary, fractions, "acc_mean", ["finetune"] + fed_columns)
  sections = [f"Mean personalized test accuracy %, {name}{seed_note}", markdown,
              "10th percentile across clients %", _markdown(cfg, summary, fractions, "acc_p10",
                                                             ["finetune"] + fed_columns)]
  if cfg.cell_finetune:
    sections += [f"After {cfg.finetune_epochs} epoch(s) of local fine-tuning of the personal part "
                 "(mean acc %; the fine-tune column is the same baseline from the pretrained model)",
                 _markdown(cfg, summary, fractions, "ft_acc_mean", ["finetune"] + fed_columns)]
  diff = _diff_markdown(summary)
  if diff:
    sections += ["FedAlt - FedSim (points, per seed, then mean ± std)", diff]
  if distributed.is_main():
    run.path("table.md").write_text("\n\n".join(sections) + "\n")
    print("\n\n".join(sections))
  plot_curves(cfg, per_seed, fed_columns, run.path("curves.png"),
              f"Partial personalization, {name} ({run.preset} preset)")

  mean_of = lambda stats: stats["acc_mean"]["mean"]  # noqa: E731
  table = summary["table"]
  best = {split: max(mean_of(c) for c in table[split].values()) for split in cfg.splits}
  base_acc = mean_of(summary["pretrained"])
  partial = [s for s in cfg.splits if s in PARTIAL_SPLITS and fractions[s] <= 0.10]
  full_gain = best["full"] - base_acc if "full" in best else math.nan
  best_partial = max(partial, key=best.get) if partial else None
  recovered = ((best[best_partial] - base_acc) / full_gain
               if best_partial and full_gain > 0 else math.nan)
  # With the full split nothing is shared and FedAlt == FedSim == local training: not compared.
  pairs = {cell: d["acc_mean"]["mean"] for cell, d in summary["fedalt_minus_fedsim"].items()
           if not cell.startswith("full ")}
  wins = sum(d >= 0 for d in pairs.values())
  strip = lambda cell: {k: v for k, v in cell.items() if k != "history"}  # noqa: E731
  results = {"data": first["data"], "seeds": list(seeds), "summary": summary,
             "per_seed": {str(s): {"pretrained": strip(r["base"]), "ditto": r["ditto"],
                                   "table": {sp: {k: strip(v) for k, v in row.items()}
                                             for sp, row in r["table"].items()}}
                          for s, r in zip(seeds, per_seed)},
             "personal_fraction": fractions, "best_partial_split": best_partial,
             "gain_recovered": recovered, "fedalt_ge_fedsim": f"{wins} of {len(pairs)}",
             "table_markdown": markdown}
  seeds_txt = f", mean of {len(seeds)} seeds" if len(seeds) > 1 else ""
  headline = [{"metric": f"FedAvg (no personalization) mean acc, {name}", "value": base_acc,
               "note": f"{cfg.pretrain_rounds} rounds, {cfg.clients_per_round}/{cfg.num_clients} "
                       f"clients{seeds_txt}"}]
  if best_partial:
    headline.append({"metric": f"best <=10% split ({best_partial}) mean acc", "value": best[best_partial],
                     "note": f"{100 * fractions[best_partial]:.1f}% personal params"})
  if "full" in best:
    headline.append({"metric": "full-model personalization mean acc", "value": best["full"], "note": ""})
    headline.append({"metric": "gain of full personalization recovered by best partial split",
                     "value": recovered, "note": "target >= 0.7", "optional": True})
  headline.append({"metric": "FedAlt >= FedSim (mean acc cells)", "value": f"{wins} of {len(pairs)}",
                   "note": f"{cfg.rounds} rounds per cell{seeds_txt}"})
  if pairs:
    headline.append({"metric": "FedAlt - FedSim mean acc, average over cells",
                     "value": float(np.mean(list(pairs.values()))), "note": "points / 100"})
  run.write_results(results, headline)
  return results


if __name__ == "__main__":
  config.main(main)
