"""SWAT-NN: simultaneous weight and architecture search in a learned latent space.

Trains the multi-scale transformer autoencoder on random teacher MLPs (functional
loss, min over the four depth decoders, plus in the quick preset a
weight-reconstruction loss that the paper does not have), then, for every 2-D benchmark function,
optimises a latent code at each depth with soft pruning, soft neuron masks and
the sparsity / compactness penalties, keeps the depth whose hard-pruned model
fits the training set best, and compares it with a dense 2-7-...-1 MLP of the
same depth and with that MLP magnitude-pruned to the searched model's size.

    python scripts/swat_nn.py --preset quick
    python scripts/swat_nn.py --preset quick --functions booth himmelblau --search-steps 3000
    python scripts/swat_nn.py --preset quick --seeds 0:5     # 5 search seeds (latent restarts)

The searches of every function x search seed (``--seeds``, default
``0 .. search_seeds-1``) at one depth are one `paperlab.sweep.evaluate` call;
search seed ``s`` of function ``f`` draws its latent from the same key in any
sweep (key ``s * F + f`` of the search keys of ``--seed``), so its result does
not depend on which other seeds run with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab import config, files, loop, metrics, plots, stats, sweep
from nas import autoencoder as ae
from nas import baselines, encoding, search
from nas import functions as fns

log = logging.getLogger("swat_nn")

DEPTHS = tuple(range(1, encoding.MAX_DEPTH + 1))


@dataclasses.dataclass(frozen=True)
class Config:
  """SWAT-NN experiment.

  Sections: the autoencoder (the paper: GPT-2 small stacks, Adam 1e-4, batch
  64, 1000 points, functional loss only), the latent search (the paper: 8001
  steps, warm-up and annealing 3000) and the baselines.
  """

  d_model: int = 64  # autoencoder token width (the paper: GPT-2 small, 768)
  num_heads: int = 4  # attention heads per autoencoder block
  enc_layers: int = 1  # transformer blocks of the encoder
  dec_layers: int = 1  # transformer blocks of each of the four depth decoders
  mlp_ratio: int = 4  # MLP width of a transformer block / d_model
  ae_steps: int = 3000  # autoencoder training steps (the paper: Adam 1e-4, batch 64)
  ae_batch: int = 32  # random teachers per step
  ae_points: int = 128  # shared input points per step (the paper: 1000)
  ae_lr: float = 3e-3  # peak learning rate
  ae_warmup: int = 100  # linear learning-rate warm-up steps (0: none)
  ae_cosine: bool = True  # cosine decay to 5% of ae_lr after the warm-up (False: constant)
  ae_clip: float = 1.0  # global-norm gradient clipping (0: off)
  normalize_loss: bool = True  # divide each teacher's MSE by var(y) + 1 (not in the paper)
  functional_weight: float = 0.01  # weight of the functional loss (the paper: 1)
  recon_weight: float = 1.0  # weight of the weight-reconstruction loss (the paper: 0, no such term)
  heldout_nets: int = 64  # held-out random MLPs per depth for the functional-loss curve
  functions: tuple[str, ...] = tuple(fns.FUNCTIONS)  # 2-D benchmark functions to search on
  n_train: int = 3750  # training points per function
  n_test: int = 1250  # test points per function
  search_steps: int = 1000  # latent search steps per depth (the paper: 8001)
  search_warmup: int = 400  # the best latent is kept from steps >= this (the paper: 3000)
  anneal_steps: int = 400  # steps of the activation-temperature annealing (the paper: 3000)
  lr_z: float = 0.1  # Adam learning rate of the latent code
  lr_t: float = 1e-3  # Adam learning rate of the pruning threshold
  dense_steps: int = 1000  # dense baseline: full-batch Adam steps (the search's budget)
  dense_lr: float = 1e-2  # dense baseline: Adam learning rate
  dense_activation: str = "tanh"  # dense baseline: activation of every hidden unit
  finetune_steps: int = 300  # Adam steps after magnitude pruning (mask fixed)
  search_seeds: int = 1  # independent searches (latent inits) per function, one sweep (or --seeds S1 S2 ...)
  # The paper's ablation: a second autoencoder trained on teachers that all use dense_activation,
  # searched with that activation fixed (weights and architecture only).
  fixed_activation_ablation: bool = False  # also run the fixed-activation ablation
  seed: int = 0  # seed of the teachers, the autoencoder, the datasets and the search
  log_every: int = 50  # autoencoder steps per metrics record
  checkpoint_every: int = 500  # autoencoder steps per checkpoint (a multiple of log_every)

  def ae_config(self) -> ae.AEConfig:
    return ae.AEConfig(self.d_model, self.num_heads, self.enc_layers, self.dec_layers, self.mlp_ratio)

  def search_config(self) -> search.SearchConfig:
    return search.SearchConfig(steps=self.search_steps, warmup=self.search_warmup,
                               anneal_steps=self.anneal_steps, lr_z=self.lr_z, lr_t=self.lr_t,
                               record_every=max(1, self.search_steps // 60))

  def validate(self) -> None:
    self.ae_config().validate()
    self.search_config().validate()
    unknown = sorted(set(self.functions) - set(fns.FUNCTIONS))
    config.require(not unknown and self.functions,
                   f"functions must be a non-empty subset of {sorted(fns.FUNCTIONS)}; unknown: {unknown}.")
    for name in ("ae_steps", "ae_batch", "ae_points", "heldout_nets", "n_train", "n_test", "dense_steps"):
      config.require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}.")
    config.require(self.finetune_steps >= 0, f"finetune_steps must be >= 0, got {self.finetune_steps}.")
    for name in ("ae_lr", "dense_lr"):
      config.require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}.")
    for name in ("ae_warmup", "functional_weight", "recon_weight"):
      config.require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}.")
    config.require(self.functional_weight + self.recon_weight > 0,
                   "functional_weight and recon_weight must not both be 0.")
    config.require(self.ae_warmup < self.ae_steps or not self.ae_cosine,
                   f"ae_warmup ({self.ae_warmup}) must be < ae_steps ({self.ae_steps}) with ae_cosine.")
    config.require(self.ae_clip >= 0, f"ae_clip must be >= 0, got {self.ae_clip}.")
    config.require(self.dense_activation in encoding.ACTIVATIONS,
                   f"dense_activation must be one of {encoding.ACTIVATIONS}, got {self.dense_activation!r}.")
    config.require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}.")
    config.require(self.checkpoint_every >= 1 and self.checkpoint_every % self.log_every == 0,
                   f"checkpoint_every must be a positive multiple of log_every={self.log_every}, "
                   f"got {self.checkpoint_every}.")
    config.require(len(set(self.functions)) == len(self.functions),
                   f"functions must not repeat a name, got {self.functions}.")
    config.require(self.seed >= 0, f"seed must be >= 0, got {self.seed}.")
    config.require(self.search_seeds >= 1, f"search_seeds must be >= 1, got {self.search_seeds}.")


_PAPER = dict(d_model=256, num_heads=8, enc_layers=4, dec_layers=4, ae_steps=200_000, ae_batch=64,
              ae_points=1000, ae_lr=1e-4, ae_warmup=0, ae_cosine=False, functional_weight=1.0,
              recon_weight=0.0, heldout_nets=256, search_steps=8001, search_warmup=3000,
              anneal_steps=3000, dense_steps=8000, finetune_steps=2000, log_every=500,
              checkpoint_every=5000)
PRESETS = {
    # 3 searches (and dense baselines) per function on 8 of the 16 functions.
    "quick": Config(search_seeds=3, functions=tuple(fns.FUNCTIONS)[:8]),
    # The paper's comparison at the quick scale: 16 functions x 3 search seeds, and the
    # fixed-activation autoencoder ablation.
    "compare": Config(search_seeds=3, fixed_activation_ablation=True),
    "paper": Config(**_PAPER),  # the paper's settings (also under the older name "full")
    "full": Config(**_PAPER),
}


def ae_schedule(cfg: Config) -> optax.Schedule:
  """Autoencoder learning rate: linear warm-up, then constant or cosine decay to 5%."""
  if cfg.ae_cosine:
    return optax.warmup_cosine_decay_schedule(0.0, cfg.ae_lr, max(cfg.ae_warmup, 1), cfg.ae_steps,
                                              end_value=0.05 * cfg.ae_lr)
  if cfg.ae_warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.ae_lr, cfg.ae_warmup),
                                 optax.constant_schedule(cfg.ae_lr)], [cfg.ae_warmup])
  return optax.constant_schedule(cfg.ae_lr)


def train_autoencoder(cfg: Config, run: config.Run, progress: metrics.RunProgress | None = None,
                      activation: str | None = None):
  """Trains (or resumes) the autoencoder; returns ``(graphdef, params, history, n_params)``.

  ``activation`` trains the fixed-activation variant (teachers that all use it)
  in ``autoencoder_<activation>/``.
  """
  model = ae.Autoencoder(cfg.ae_config(), rngs=nnx.Rngs(cfg.seed))
  tx = optax.adam(ae_schedule(cfg))
  if cfg.ae_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.ae_clip), tx)
  graphdef, state = ae.init_state(model, tx)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  log.info("Autoencoder: %d parameters.", n_params)
  step_fn = ae.make_step_fn(graphdef, tx, batch_size=cfg.ae_batch, num_points=cfg.ae_points,
                            seed=cfg.seed, normalize=cfg.normalize_loss,
                            functional_weight=cfg.functional_weight, recon_weight=cfg.recon_weight,
                            activation=activation)
  evaluate = ae.make_eval_fn(graphdef, seed=cfg.seed + 10_000, nets_per_depth=cfg.heldout_nets,
                             num_points=cfg.ae_points, activation=activation)
  initial = jax.device_get(evaluate(state["params"]))
  state, history = loop.train(
      state, step_fn=step_fn, num_steps=cfg.ae_steps,
      workdir=run.path("autoencoder" if activation is None else f"autoencoder_{activation}"),
      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
      eval_fn=lambda s, step: evaluate(s["params"]), eval_every=cfg.log_every * 4,
      desc="autoencoder" if activation is None else f"autoencoder ({activation} only)",
      progress=progress)
  history = [{"step": 0, **{k: float(v) for k, v in initial.items()}}] + list(history)
  return graphdef, state["params"], history, n_params


def _require_finite(tree, what: str, names: list[str]) -> None:
  """The NaN guard of the search and the baselines: every leaf has a leading function axis."""
  ok = np.ones(len(names), bool)
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(leaf)
    if a.dtype.kind in "fc":
      ok &= np.isfinite(a.reshape(len(names), -1)).all(axis=1)
  bad = [names[i] for i in np.flatnonzero(~ok)]
  if bad:
    raise metrics.NonFiniteError(
        f"{what} is not finite for {', '.join(bad)}. Nothing was written; lower the step sizes "
        "(--lr-z, --lr-t, --dense-lr) or check the autoencoder.")


def search_seeds(cfg: Config, run=None) -> tuple[int, ...]:
  """The search seeds: ``--seeds`` of the command line, else ``0 .. search_seeds-1``."""
  request = getattr(run, "sweep", None)
  return tuple(request.seeds) if request and request.seeds is not None else tuple(range(cfg.search_seeds))


def entry_keys(cfg: Config, offset: int, seeds: tuple[int, ...], num_functions: int) -> jax.Array:
  """Key data ``[S * F, ...]`` of every entry (seed-major): key ``s * F + f`` of ``key(seed + offset)``."""
  table = jax.random.split(jax.random.key(cfg.seed + offset), (max(seeds) + 1) * num_functions)
  index = np.array([s * num_functions + f for s in seeds for f in range(num_functions)])
  return jax.random.key_data(table)[index]


def latent_search(cfg: Config, graphdef, params, data: list[fns.Dataset], seeds: tuple[int, ...] = (0,),
                  progress: metrics.RunProgress | None = None,
                  activation: str | None = None) -> dict[int, dict]:
  """Runs the search for every function x search seed at every depth: one sweep call per depth.

  The members of `paperlab.sweep.evaluate` are the functions (points) x
  ``seeds``; the outputs are in entry order (seed-major: entry ``i`` is
  function ``i % F`` of search seed ``seeds[i // F]``). Each search starts
  from its own latent draw (`entry_keys`). ``activation`` fixes every
  neuron's activation.
  """
  n_f = len(data)
  x = jnp.stack([d.x_train for d in data])
  y = jnp.stack([d.y_train for d in data])
  keys = entry_keys(cfg, 1, seeds, n_f)
  grid = sweep.Grid.product(seeds, function=range(n_f))  # members: function (outer) x seed (inner)
  order = np.array([f * len(seeds) + j for j in range(len(seeds)) for f in range(n_f)])  # member of entry
  seed_pos = {s: j for j, s in enumerate(seeds)}
  seed_of = jnp.asarray([seed_pos.get(s, 0) for s in range(max(seeds) + 1)], jnp.int32)
  scfg = cfg.search_config()
  names = [d.name for d in data] * len(seeds)
  out = {}
  for depth in DEPTHS:
    t0 = time.perf_counter()

    def decoder(ae_params, depth=depth):
      def decode(z):
        raw = ae.bind(graphdef, ae_params).decode(z, depth)
        return raw if activation is None else encoding.fix_activation(raw, depth, activation)
      return decode

    def one(hp, shared, depth=depth, decoder=decoder):
      xs, ys, key_data, ae_params = shared
      f = hp["function"].astype(jnp.int32)
      entry = seed_of[hp["seed"]] * n_f + f
      key = jax.random.wrap_key_data(key_data[entry])
      return search.run_search(decoder(ae_params), depth, xs[f], ys[f], key,
                               latent_shape=(encoding.H, cfg.d_model), cfg=scfg)

    what = "latent search" if activation is None else f"latent search ({activation} only)"
    with progress.phase(f"{what}, depth {depth}", units=cfg.search_steps) if progress \
        else contextlib.nullcontext():
      res = jax.device_get(sweep.evaluate(one, grid, shared=(x, y, keys, params)))
    res = jax.tree.map(lambda v: v[order], res)
    _require_finite(res.params, f"the latent search at depth {depth}", names)
    decode = decoder(params)
    raws = jax.vmap(decode)(res.params["z"])
    nets = jax.vmap(lambda r, t: search.hard_net(r, depth, t))(raws, res.params["t"])
    out[depth] = {"nets": nets, "params": res.params, "trace": res.trace,
                  "counts": jax.device_get(jax.vmap(search.count)(nets))}
    log.info("Search at depth %d over %d functions x %d seeds (%d members): %.1f s.", depth, n_f,
             len(seeds), len(grid), time.perf_counter() - t0)
  return out


def mse(net_batch: encoding.Net, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  pred = jax.vmap(encoding.forward)(net_batch, jnp.asarray(x))
  return np.asarray(jnp.mean((pred - jnp.asarray(y)) ** 2, axis=-1))


def run_baselines(cfg: Config, data: list[fns.Dataset], targets: dict[int, np.ndarray],
                  progress: metrics.RunProgress | None = None,
                  seeds: tuple[int, ...] = (0,)) -> dict[int, dict]:
  """Dense nets at every depth, pruned to ``targets[depth]`` (per entry) and fine-tuned.

  ``data`` are the entries (seed-major, ``len(seeds)`` copies of the functions).
  """
  x = jnp.stack([d.x_train for d in data])
  y = jnp.stack([d.y_train for d in data])
  out = {}
  for depth in DEPTHS:
    keys = jax.random.wrap_key_data(entry_keys(cfg, 2 + depth, seeds, len(data) // len(seeds)))

    @jax.jit
    def fit(key, x, y, target, depth=depth):
      dense, _ = baselines.train(baselines.dense_net(key, depth, cfg.dense_activation), x, y,
                                 steps=cfg.dense_steps, learning_rate=cfg.dense_lr,
                                 activation=cfg.dense_activation)
      pruned, keep = baselines.magnitude_prune(dense, target)
      tuned = pruned
      if cfg.finetune_steps:
        tuned, _ = baselines.train(pruned, x, y, steps=cfg.finetune_steps, learning_rate=cfg.dense_lr,
                                   keep=keep, activation=cfg.dense_activation)
      counts = jnp.stack([baselines.count(n) for n in (dense, pruned, tuned)])
      return dense, pruned, tuned, counts

    with progress.phase(f"dense baselines, depth {depth}", units=cfg.dense_steps + cfg.finetune_steps) \
        if progress else contextlib.nullcontext():
      dense, pruned, tuned, counts = jax.device_get(jax.vmap(fit)(keys, x, y, jnp.asarray(targets[depth])))
    _require_finite((dense, tuned), f"the dense baseline at depth {depth}", [d.name for d in data])
    out[depth] = {"dense": dense, "pruned": pruned, "tuned": tuned, "counts": np.asarray(counts)}
  return out


def describe(net: encoding.Net) -> list[list[str]]:
  """Active neurons per hidden layer as activation names."""
  net = jax.device_get(net)
  return [[encoding.ACTIVATIONS[int(np.argmax(net.act[l, j]))] for j in range(encoding.H) if net.mask[l, j]]
          for l in range(encoding.depth_of(net))]


def _search_outcome(cfg: Config, found: dict[int, dict], entries: list[fns.Dataset]) -> np.ndarray:
  """Adds train / test MSE per depth; returns the chosen depth of every entry (best train MSE)."""
  stack = lambda field: np.stack([getattr(d, field) for d in entries])  # noqa: E731
  for depth in DEPTHS:
    found[depth]["train_mse"] = mse(found[depth]["nets"], stack("x_train"), stack("y_train"))
    found[depth]["test_mse"] = mse(found[depth]["nets"], stack("x_test"), stack("y_test"))
    _require_finite(found[depth]["train_mse"], f"the searched nets' train MSE at depth {depth}",
                    [d.name for d in entries])
  # Depth selection on the training MSE of the hard-pruned models.
  best = np.argmin(np.stack([found[d]["train_mse"] for d in DEPTHS]), axis=0)
  return np.asarray(DEPTHS)[best]


def main(argv=None) -> dict:
  cfg, run = config.cli(Config, PRESETS, paper="swat_nn", description=__doc__, argv=argv,
                        sweep=config.SweepOptions())
  seeds = search_seeds(cfg, run)
  t_start = time.perf_counter()
  n_fixed = 2 if cfg.fixed_activation_ablation else 1
  total = n_fixed * cfg.ae_steps + len(DEPTHS) * (n_fixed * cfg.search_steps + cfg.dense_steps
                                                 + cfg.finetune_steps)
  with metrics.RunProgress(total, desc="swat_nn") as progress:
    graphdef, params, history, n_params = train_autoencoder(cfg, run, progress)
    fixed_ae = (train_autoencoder(cfg, run, progress, activation=cfg.dense_activation)
                if cfg.fixed_activation_ablation else None)
    t_ae = time.perf_counter() - t_start
    with progress.phase("regression datasets"):
      data = [fns.make_dataset(name, seed=cfg.seed, n_train=cfg.n_train, n_test=cfg.n_test)
              for name in cfg.functions]
    entries = data * len(seeds)  # entry i: function i % F, search seed seeds[i // F]
    found = latent_search(cfg, graphdef, params, data, seeds, progress)
    chosen_depth = _search_outcome(cfg, found, entries)
    fixed, fixed_depth = None, None
    if fixed_ae is not None:
      fixed = latent_search(cfg, fixed_ae[0], fixed_ae[1], data, seeds, progress,
                            activation=cfg.dense_activation)
      fixed_depth = _search_outcome(cfg, fixed, entries)
    targets = {d: np.asarray(found[d]["counts"]["nonzero_params"]) for d in DEPTHS}
    base = run_baselines(cfg, entries, targets, progress, seeds)
  t_total = time.perf_counter() - t_start

  stack = lambda field: np.stack([getattr(d, field) for d in entries])  # noqa: E731
  tuned_by_depth = {k: mse(base[k]["tuned"], stack("x_test"), stack("y_test")) for k in DEPTHS}
  rows = []
  for i, d in enumerate(entries):
    depth = int(chosen_depth[i])
    f, b = found[depth], base[depth]
    pick = lambda tree: jax.tree.map(lambda v: v[i], tree)  # noqa: E731
    row = {"function": d.name, "seed": seeds[i // len(data)], "depth": depth,
           "swat_test_mse": float(f["test_mse"][i]), "swat_train_mse": float(f["train_mse"][i]),
           "swat_active_neurons": int(f["counts"]["active_neurons"][i]),
           "swat_params": int(f["counts"]["nonzero_params"][i]),
           "swat_threshold": float(f["params"]["t"][i]),
           "swat_architecture": describe(pick(f["nets"])),
           "dense_params": int(b["counts"][i, 0]), "dense_active_neurons": encoding.H * depth}
    for kind in ("dense", "pruned", "tuned"):
      net = pick(b[kind])
      row[f"{kind}_test_mse"] = float(mse(jax.tree.map(lambda v: v[None], net), d.x_test[None], d.y_test[None])[0])
    row["pruned_params"] = int(b["counts"][i, 2])
    row["swat_test_mse_by_depth"] = {str(k): float(found[k]["test_mse"][i]) for k in DEPTHS}
    row["swat_params_by_depth"] = {str(k): int(found[k]["counts"]["nonzero_params"][i]) for k in DEPTHS}
    row["tuned_test_mse_by_depth"] = {str(k): float(tuned_by_depth[k][i]) for k in DEPTHS}
    if fixed is not None:
      fd = int(fixed_depth[i])
      row.update(fixed_depth=fd, fixed_test_mse=float(fixed[fd]["test_mse"][i]),
                 fixed_params=int(fixed[fd]["counts"]["nonzero_params"][i]),
                 fixed_test_mse_by_depth={str(k): float(fixed[k]["test_mse"][i]) for k in DEPTHS},
                 fixed_params_by_depth={str(k): int(fixed[k]["counts"]["nonzero_params"][i])
                                        for k in DEPTHS})
    rows.append(row)

  keys = ["swat_test_mse", "dense_test_mse", "pruned_test_mse", "tuned_test_mse", "swat_params",
          "dense_params", "pruned_params", "swat_active_neurons", "dense_active_neurons"]
  if fixed is not None:
    keys += ["fixed_test_mse", "fixed_params"]
  # Per search seed: the mean over functions; then mean, std, n and 95% CI over the seeds.
  per_seed = {k: [float(np.mean([r[k] for r in rows if r["seed"] == s])) for s in seeds] for k in keys}
  over_seeds = {k: stats.summarize(v) for k, v in per_seed.items()}
  summary = {k: v["mean"] for k, v in over_seeds.items()}
  summary["mse_ratio_swat_over_dense"] = summary["swat_test_mse"] / summary["dense_test_mse"]
  summary["fewer_params_than_dense"] = summary["swat_params"] < summary["dense_params"]
  summary["mse_within_2x_of_dense"] = summary["mse_ratio_swat_over_dense"] <= 2.0
  # Functions where SWAT-NN beats the equal-size pruned + fine-tuned dense net, per seed.
  wins = [sum(r["swat_test_mse"] < r["tuned_test_mse"] for r in rows if r["seed"] == s) for s in seeds]
  heldout = [r for r in history if "heldout_loss" in r]
  results = {"summary": summary, "over_seeds": over_seeds, "search_seeds": len(seeds),
             "search_seed_values": list(seeds),
             "wins_over_pruned_per_seed": wins, "functions": rows,
             "per_function": per_function_stats(rows, keys),
             "autoencoder_params": n_params,
             "heldout_first": _no_timing(heldout[0]), "heldout_last": _no_timing(heldout[-1])}
  if fixed_ae is not None:
    fixed_heldout = [r for r in fixed_ae[2] if "heldout_loss" in r]
    results["fixed_activation"] = {"activation": cfg.dense_activation,
                                   "heldout_first": _no_timing(fixed_heldout[0]),
                                   "heldout_last": _no_timing(fixed_heldout[-1])}
  tables = [table_markdown(rows[:len(data)], {k: float(np.mean([r[k] for r in rows[:len(data)]]))
                                                for k in keys}),
            comparison_markdown(results["per_function"], fixed is not None),
            depth_markdown(rows, fixed is not None)]
  o = over_seeds
  n_f = len(data)
  headline = [
      {"metric": "SWAT-NN mean test MSE (scaled targets, mean over functions)",
       "value": stats.spread(o["swat_test_mse"]),
       "note": f"{n_f} functions x {len(seeds)} search seeds; equal-size pruned dense + fine-tune "
               f"{stats.spread(o['tuned_test_mse'])}; dense {stats.spread(o['dense_test_mse'])}"},
      {"metric": "SWAT-NN mean non-zero params", "value": stats.spread(o["swat_params"]),
       "note": f"dense same depth {summary['dense_params']:.1f}; SWAT-NN beats the equal-size pruned "
               f"net on {' / '.join(map(str, wins))} of {n_f} functions (per seed)"},
      {"metric": "SWAT-NN / dense mean test MSE", "value": summary["mse_ratio_swat_over_dense"],
       "note": "acceptance: <= 2"},
      {"metric": "AE held-out functional loss (normalized), first -> last",
       "value": heldout[-1]["heldout_loss_normalized"],
       "note": f"from {heldout[0]['heldout_loss_normalized']:.4g} at step 0; {n_params} parameters, "
               f"{cfg.ae_steps} steps x {cfg.ae_batch} teachers"},
  ]
  if fixed is not None:
    headline.insert(2, {"metric": f"fixed-activation ({cfg.dense_activation}) AE search mean test MSE",
                        "value": stats.spread(o["fixed_test_mse"]),
                        "note": f"mean non-zero params {stats.spread(o['fixed_params'])}"})
  write_outputs(run, results, headline, {"autoencoder_seconds": t_ae, "total_seconds": t_total}, tables,
                lambda: _write_figures(cfg, run, history, rows[:len(data)], data, found,
                                       chosen_depth[:len(data)]))
  log.info("Done in %.0f s (autoencoder %.0f s).", t_total, t_ae)
  return results


def write_outputs(run, results: dict, headline: list[dict], timing: dict, tables: list[str],
                  figures) -> None:
  """Writes table.md and results.json, then calls ``figures()``: a figure that fails loses no number."""
  files.atomic_write_text(run.path("table.md"), "\n\n".join(tables) + "\n")
  print("\n\n".join(tables[1:]))
  run.write_results(results, headline, timing=timing)
  try:
    figures()
  except Exception:
    log.error("table.md and results.json are written in %s; writing the figures failed.", run.workdir)
    raise


def per_function_stats(rows: list[dict], keys: list[str]) -> dict[str, dict]:
  """``function -> key -> summary over search seeds``."""
  out = {}
  for name in dict.fromkeys(r["function"] for r in rows):
    mine = [r for r in rows if r["function"] == name]
    out[name] = {k: stats.summarize([r[k] for r in mine]) for k in keys}
    out[name]["depths"] = [r["depth"] for r in mine]
  return out


def _ms(s: dict, digits: int = 3) -> str:
  return f"{s['mean']:.{digits}g} +- {s['std']:.{digits}g}"


def comparison_markdown(per_function: dict[str, dict], fixed: bool) -> str:
  """Per function, mean +- std over search seeds: SWAT-NN vs the equal-size baselines."""
  n = next(iter(per_function.values()))["swat_test_mse"]["n"]
  head = ["function", "SWAT depths", "SWAT test MSE", "SWAT params", "pruned+FT test MSE (same params)",
          "dense test MSE", "dense params"]
  if fixed:
    head += ["fixed-act test MSE", "fixed-act params"]
  lines = [f"Mean +- std over n={n} search seeds.", "", "| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for name, s in per_function.items():
    cells = [name, " ".join(map(str, s["depths"])), _ms(s["swat_test_mse"]), _ms(s["swat_params"]),
             _ms(s["tuned_test_mse"]), _ms(s["dense_test_mse"]), f"{s['dense_params']['mean']:.1f}"]
    if fixed:
      cells += [_ms(s["fixed_test_mse"]), _ms(s["fixed_params"])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def depth_markdown(rows: list[dict], fixed: bool) -> str:
  """Per function and depth, mean over search seeds: SWAT-NN, pruned+FT to its size, fixed-activation."""
  head = ["function", "depth", "SWAT test MSE", "SWAT params", "pruned+FT test MSE"]
  if fixed:
    head += ["fixed-act test MSE", "fixed-act params"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name in dict.fromkeys(r["function"] for r in rows):
    mine = [r for r in rows if r["function"] == name]
    for depth in DEPTHS:
      k = str(depth)
      mean = lambda key: float(np.mean([r[key][k] for r in mine]))  # noqa: E731
      cells = [name, k, f"{mean('swat_test_mse_by_depth'):.3g}", f"{mean('swat_params_by_depth'):.1f}",
               f"{mean('tuned_test_mse_by_depth'):.3g}"]
      if fixed:
        cells += [f"{mean('fixed_test_mse_by_depth'):.3g}", f"{mean('fixed_params_by_depth'):.1f}"]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _no_timing(record: dict) -> dict:
  return {k: v for k, v in record.items() if k != "chunk_s"}


def table_markdown(rows: list[dict], summary: dict) -> str:
  lines = ["| function | depth | SWAT test MSE | SWAT neurons | SWAT params | dense test MSE | dense params "
           "| pruned test MSE | pruned+FT test MSE |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['function']} | {r['depth']} | {r['swat_test_mse']:.4g} | {r['swat_active_neurons']} | "
                 f"{r['swat_params']} | {r['dense_test_mse']:.4g} | {r['dense_params']} | "
                 f"{r['pruned_test_mse']:.4g} | {r['tuned_test_mse']:.4g} |")
  s = summary
  lines.append(f"| **mean** | | {s['swat_test_mse']:.4g} | {s['swat_active_neurons']:.1f} | {s['swat_params']:.1f} | "
               f"{s['dense_test_mse']:.4g} | {s['dense_params']:.1f} | {s['pruned_test_mse']:.4g} | "
               f"{s['tuned_test_mse']:.4g} |")
  return "\n".join(lines)


def _write_figures(cfg, run, history, rows, data, found, chosen_depth) -> None:
  from nas import figures  # pylint: disable=g-import-not-at-top  (matplotlib only when needed)
  heldout = [r for r in history if "heldout_loss" in r]
  steps = [r["step"] for r in heldout]
  plots.line_plot({"mean MSE": (steps, [r["heldout_loss"] for r in heldout]),
                   "median MSE": (steps, [r["heldout_loss_median"] for r in heldout]),
                   "mean MSE / (var + 1)": (steps, [r["heldout_loss_normalized"] for r in heldout])},
                  run.path("ae_heldout_loss.png"), xlabel="autoencoder training step", logy=True,
                  ylabel="min-over-decoders functional loss (MSE of outputs)",
                  title=plots.run_title(run, "Functional loss on held-out random MLPs"))
  order = np.argsort([r["swat_test_mse"] for r in rows])
  picks = list(dict.fromkeys([int(i) for i in order[:3]] + [int(order[-1])]))  # 3 best fits, the worst
  nets = [jax.tree.map(lambda v, i=i: v[i], found[int(chosen_depth[i])]["nets"]) for i in picks]
  figures.architectures(nets, [rows[i]["function"] for i in picks], run.path("architectures.png"),
                        title=plots.run_title(run, "Found architectures (3 best fits, the worst)"))
  figures.surfaces(nets, [data[i] for i in picks], run.path("surfaces.png"),
                   title=plots.run_title(run, "Targets and found models"))
  every = cfg.search_config().record_every
  series = {}
  for i in picks:
    y = np.asarray(found[int(chosen_depth[i])]["trace"]["mse"][i])
    series[f"{rows[i]['function']} (depth {rows[i]['depth']})"] = (np.arange(1, len(y) + 1) * every, y)
  plots.line_plot(series,
                  run.path("search_mse.png"), xlabel="latent search step",
                  ylabel="train MSE of the soft model (scaled targets)",
                  title=plots.run_title(run, "Latent search at the chosen depth"), logy=True)


if __name__ == "__main__":
  config.main(main)
