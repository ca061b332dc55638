"""Dion (Ahn et al., 2025) vs Muon vs AdamW on a small character-level GPT (Shakespeare).

Every arm trains the same `paperlab.lm.CharGPT` from the same initialisation on
the same batches; only the optimizer of the hidden matrices differs. Vectors,
embeddings and the head use one shared scalar optimizer (AdamW by default,
head rule of the Dion reference), so the comparison holds the scalar optimizer
fixed. Arms: AdamW, Muon (optax.contrib), Dion at rank fractions 1, 1/2, 1/4,
1/16. A batch-size sweep repeats some arms at other batch sizes with the same
token budget. Outputs: validation-loss curves, a table of final validation
loss and optimizer milliseconds per step, results.json with headline rows.

    python scripts/dion.py --preset quick
    python scripts/dion.py --preset quick --mesh fsdp=4,tp=2   # sharded (8 CPU devices)
    python scripts/dion.py --preset gpu                        # sized for one H100
    python -m paperlab.launch -n 2 --devices-per-process 4 scripts/dion.py --preset quick \
        --mesh fsdp=4,tp=2                                     # the same mesh over 2 processes

With a mesh, each batch is sharded over its ``data`` and ``fsdp`` axes and
every process builds only the rows its devices hold (see docs/distributed.md).
"""

from __future__ import annotations

import os
import sys


def _devices_for_mesh(argv: list[str]) -> None:
  """With ``--mesh a=N,b=M`` on CPU, simulate N*M devices (must precede ``import jax``).

  Not in a multi-process run: there the launcher sets each process's devices.
  """
  spec = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--mesh"), None)
  spec = spec or next((a.split("=", 1)[1] for a in argv if a.startswith("--mesh=")), None)
  if (not spec or "device_count" in os.environ.get("XLA_FLAGS", "")
      or os.environ.get("PAPERLAB_NUM_PROCESSES") or os.environ.get("JAX_NUM_CPU_DEVICES")):
    return
  count = 1
  try:
    for part in spec.split(","):
      count *= int(part.partition("=")[2] or 1)
  except ValueError:
    return  # Config.validate reports the bad spec
  if count < 1:
    return
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={count}").strip()


_devices_for_mesh(sys.argv[1:])

# pylint: disable=wrong-import-position
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy.linalg  # noqa: E402,F401  (loads the OpenBLAS behind jax's CPU LAPACK calls)
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from paperlab import config, distributed, lm, loop, metrics, plots, stats, sweep  # noqa: E402
from paperlab import data as data_lib  # noqa: E402
from paperlab import mesh as mesh_lib  # noqa: E402
from optim import _dion as dion_lib  # noqa: E402
from optim import labels as labels_lib  # noqa: E402
from optim import routed  # noqa: E402

log = logging.getLogger("dion")


def parse_arm(arm: str) -> tuple[str, float | None]:
  """``'adamw' | 'muon' | 'lion' | 'dion-<fraction>'`` -> (kind, rank fraction).

  Raises:
    ValueError: unknown arm or a rank fraction outside (0, 1].
  """
  if arm in ("adamw", "muon", "lion"):
    return arm, None
  kind, _, frac = arm.partition("-")
  try:
    num, _, den = frac.partition("/")
    value = float(num) / float(den or 1)
  except (ValueError, ZeroDivisionError):
    value = -1.0
  if kind != "dion" or not 0.0 < value <= 1.0:
    raise ValueError(f"Unknown arm {arm!r}: use adamw, muon, lion or dion-<fraction in (0, 1]>, "
                     "e.g. dion-1/4.")
  return kind, value


def arm_optimizer(arm: str, cfg, sched, *, mesh=None, specs=None) -> optax.GradientTransformation:
  """The arm's optimizer; every arm shares the scalar groups and the head rule."""
  kind, fraction = parse_arm(arm)
  shared = dict(scalar_optimizer=cfg.scalar_optimizer, scalar_learning_rate=sched(cfg.scalar_lr))
  if kind == "dion":
    return dion_lib.dion(sched(cfg.dion_lr), fraction, weight_decay=cfg.weight_decay, mesh=mesh,
                         specs=specs, key=cfg.seed, qr_method=cfg.qr_method, **shared)
  if kind == "muon":
    return routed.muon(sched(cfg.muon_lr), weight_decay=cfg.weight_decay, **shared)
  if kind == "lion":
    return routed.lion(sched(cfg.adamw_lr / 10), weight_decay=cfg.weight_decay, **shared)
  return routed.adamw(sched(cfg.adamw_lr), weight_decay=cfg.weight_decay, **shared)


def _spec_entries(params) -> dict:
  """Per leaf, the mesh axis of each dimension (None: replicated); see `param_specs`."""
  fsdp, tp = mesh_lib.FSDP, mesh_lib.TP
  labels = labels_lib.label_params(params)

  def entries(path, x, label):
    name = labels_lib.path_str(path)
    if label == labels_lib.MATRIX:
      row_parallel = any(f"/{k}/" in f"/{name}/" for k in ("o", "down"))
      return (tp, fsdp) if row_parallel else (fsdp, tp)
    if label in (labels_lib.EMBEDDING, labels_lib.HEAD) and x.ndim == 2:
      return (None, tp) if label == labels_lib.EMBEDDING else (tp, None)
    return (None,) * x.ndim

  return jax.tree_util.tree_map_with_path(entries, params, labels)


def param_specs(params, mesh) -> dict:
  """Partition specs: hidden kernels (fan_in, fan_out) get FSDP x TP, Megatron style.

  Column-parallel kernels (q, k, v, up) put TP on fan_out; row-parallel ones
  (o, down) put TP on fan_in. Embeddings and the head shard their model dim over
  TP; vectors are replicated. Axes missing from the mesh are dropped.
  """
  return jax.tree.map(lambda e: mesh_lib.sharding(mesh, *e).spec, _spec_entries(params),
                      is_leaf=lambda e: isinstance(e, tuple))


def check_mesh(cfg: "Config") -> None:
  """Rejects a ``--mesh`` that does not fit the devices or does not divide the sharded dims."""
  sizes = mesh_lib.parse_mesh(cfg.mesh)
  needed = int(np.prod(list(sizes.values())))
  config.require(needed == jax.device_count(),
                 f"mesh {cfg.mesh!r} needs {needed} devices but {jax.device_count()} are available "
                 "(on CPU, --mesh sets the simulated device count unless XLA_FLAGS already does).")
  model = nnx.eval_shape(lambda: lm.CharGPT(2, cfg.d_model, cfg.layers, cfg.heads, cfg.seq_len,
                                            rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(model))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, x), entries in zip(flat, jax.tree.leaves(_spec_entries(params),
                                                      is_leaf=lambda e: isinstance(e, tuple))):
    for dim, axis in zip(x.shape, entries):
      size = sizes.get(axis, 1) if axis else 1
      config.require(dim % size == 0,
                     f"mesh {cfg.mesh!r}: {axis}={size} does not divide dimension {dim} of "
                     f"{labels_lib.path_str(path)} {tuple(x.shape)}; pick sizes that divide "
                     f"d_model={cfg.d_model}.")


@dataclasses.dataclass(frozen=True)
class Config:
  """Char-GPT optimizer comparison."""
  dataset: str = "shakespeare"  # or a prepared TFDS text dataset with a 'text' feature
  d_model: int = 64
  layers: int = 2
  heads: int = 4
  seq_len: int = 64
  batch_size: int = 32
  steps: int = 240
  arms: tuple[str, ...] = ("adamw", "muon", "dion-1", "dion-1/2", "dion-1/4", "dion-1/16")
  sweep_batch_sizes: tuple[int, ...] = (8, 128)  # extra batch sizes, same number of tokens
  sweep_arms: tuple[str, ...] = ("adamw", "muon", "dion-1")
  dion_lr: float = 0.02
  qr_method: str = "rcqr"  # orthonormalisation: rcqr (randomized Cholesky-QR), cqr or qr
  muon_lr: float = 0.02
  adamw_lr: float = 3e-3  # AdamW on the matrices (adamw arm)
  scalar_lr: float = 3e-3  # shared scalar optimizer (vectors, embeddings, head)
  scalar_optimizer: str = "adamw"  # or "lion"
  weight_decay: float = 0.01  # matrices, every arm
  warmdown: float = 0.2  # final fraction of steps with a linear decay to 0
  val_fraction: float = 0.05
  eval_windows: int = 128
  eval_every: int = 60
  log_every: int = 20
  timing_calls: int = 5
  mesh: str = ""  # e.g. "fsdp=4,tp=2": parameters sharded, Dion follows its orientation rule
  seed: int = 0

  def validate(self) -> None:
    req = config.require
    req(len(self.arms) >= 1 and len(set(self.arms)) == len(self.arms),
        f"arms must list at least one arm, each once, got {self.arms}.")
    req(len(set(self.sweep_arms)) == len(self.sweep_arms), f"sweep_arms repeat an arm: {self.sweep_arms}.")
    for arm in self.arms + self.sweep_arms:
      parse_arm(arm)
    req(self.qr_method in ("rcqr", "cqr", "qr"), f"qr_method must be rcqr, cqr or qr, got {self.qr_method!r}.")
    req(self.scalar_optimizer in ("adamw", "lion"),
        f"scalar_optimizer must be 'adamw' or 'lion', got {self.scalar_optimizer!r}.")
    for name in ("d_model", "layers", "heads", "seq_len", "batch_size", "steps", "eval_windows",
                 "eval_every", "log_every", "timing_calls"):
      req(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}.")
    req(self.d_model % self.heads == 0, f"heads ({self.heads}) must divide d_model ({self.d_model}).")
    req(all(b >= 1 for b in self.sweep_batch_sizes), f"sweep batch sizes must be >= 1, got {self.sweep_batch_sizes}.")
    req(self.batch_size not in self.sweep_batch_sizes,
        f"sweep_batch_sizes must not repeat batch_size={self.batch_size} (that run is the main one).")
    req(0.0 <= self.warmdown < 1.0, f"warmdown must be in [0, 1), got {self.warmdown}.")
    req(0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}.")
    req(self.eval_every % self.log_every == 0,
        f"eval_every ({self.eval_every}) must be a multiple of log_every ({self.log_every}).")
    for name in ("dion_lr", "muon_lr", "adamw_lr", "scalar_lr"):
      req(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}.")
    req(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}.")
    req(self.seed >= 0, f"seed must be >= 0, got {self.seed}.")
    if self.dataset != "shakespeare":
      root = data_lib.default_data_dir()
      req((root / self.dataset.split("/")[0]).is_dir(),
          f"dataset {self.dataset!r} is not available: use 'shakespeare', or a TFDS text dataset "
          f"prepared under {root} (--data-dir DIR picks another directory).")
    if self.mesh:
      check_mesh(self)
      shape = mesh_lib.parse_mesh(self.mesh)
      shards = shape.get(mesh_lib.DATA, 1) * shape.get(mesh_lib.FSDP, 1)
      for name, size in [("batch_size", self.batch_size), ("eval_windows", self.eval_windows)] + [
          ("sweep_batch_sizes", b) for b in self.sweep_batch_sizes]:
        config.require(size % shards == 0, f"{name}={size} must be a multiple of {shards} "
                       f"(data x fsdp of --mesh {self.mesh}): batches are sharded over those axes.")


PRESETS = {
    "quick": Config(sweep_batch_sizes=(128,)),  # every arm; batch sweep 32 -> 128
    "cpu": Config(),  # every arm and the full batch sweep (~10 minutes on 2 cores)
    # The paper's batch-size claim at CPU scale: equal tokens, >= 500 steps at the largest batch,
    # three arms at batch 16 (2000 steps) and 64 (500 steps); run with the lr grids and seeds of
    # BATCH_CLAIM_FLAGS (added when the command gives no --sweep / --seeds of its own).
    "batch_claim": Config(d_model=32, layers=2, heads=4, seq_len=32, batch_size=16, steps=2000,
                          arms=("adamw", "muon", "dion-1"), sweep_batch_sizes=(64,),
                          sweep_arms=("adamw", "muon", "dion-1"), eval_windows=128, eval_every=500,
                          log_every=25, timing_calls=3),
    "gpu": Config(d_model=384, layers=6, heads=6, seq_len=256, batch_size=64, steps=3000,
                  sweep_batch_sizes=(16, 256), eval_windows=512, eval_every=250, log_every=50),
}


# The batch_claim protocol: a 3-point lr grid per optimizer (factor 2 apart, each
# arm sweeps only its own lr) x 3 seeds, tuned separately at every batch size.
BATCH_CLAIM_FLAGS = ("--seeds", "0", "1", "2", "--sweep", "adamw_lr=0.002,0.004,0.008",
                     "--sweep", "muon_lr=0.01,0.02,0.04", "--sweep", "dion_lr=0.01,0.02,0.04")
CLAIM_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of training (equal tokens at every batch size)


def preset_argv(argv: list[str]) -> list[str]:
  """``argv`` with `BATCH_CLAIM_FLAGS` appended for ``--preset batch_claim`` without sweep flags."""
  claim = any(a == "--preset=batch_claim" for a in argv) or any(
      a == "--preset" and b == "batch_claim" for a, b in zip(argv, argv[1:]))
  own = any(a in ("--sweep", "--seeds") or a.startswith(("--sweep=", "--seeds=")) for a in argv)
  return argv + list(BATCH_CLAIM_FLAGS) if claim and not own else argv


def _schedule(base: float, steps: int, warmdown: float) -> optax.Schedule:
  decay = max(1, int(round(warmdown * steps)))
  return optax.join_schedules([optax.constant_schedule(base),
                               optax.linear_schedule(base, 0.0, decay)], [steps - decay])


def init_train_state(cfg: Config, arm: str, steps: int, vocab_size: int, mesh=None):
  """``(graphdef, tx, {"params", "opt_state"})`` of one arm, placed on ``mesh`` if given.

  Every process builds the same initial values from ``cfg.seed``; on a mesh
  each process keeps only its devices' shards (`paperlab.distributed.put`).
  """
  model = lm.CharGPT(vocab_size, cfg.d_model, cfg.layers, cfg.heads, cfg.seq_len,
                     rngs=nnx.Rngs(cfg.seed))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  specs = param_specs(params, mesh) if mesh is not None else None
  if mesh is not None:
    params = distributed.put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
  sched = lambda base: _schedule(base, steps, cfg.warmdown)
  tx = arm_optimizer(arm, cfg, sched, mesh=mesh, specs=specs)
  train_state = {"params": params, "opt_state": jax.jit(tx.init)(params)}
  if mesh is not None:  # leaves that do not depend on the params (counts) may sit on one device
    on_mesh = lambda x: isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
    train_state = jax.tree.map(
        lambda x: x if on_mesh(x) else distributed.put(x, mesh_lib.replicated(mesh)), train_state)
  return graphdef, tx, train_state


def make_chunk(graphdef, tx):
  """``chunk(state, xs, ys) -> (state, {"loss"})``: one `lax.scan` over ``[n, B, T]`` batches."""
  def loss_of(p, x, y):
    return lm.loss_fn(nnx.merge(graphdef, p), x, y)

  @jax.jit
  def chunk(s, xs, ys):
    def body(s, xy):
      loss, grads = jax.value_and_grad(loss_of)(s["params"], *xy)
      updates, opt_state = tx.update(grads, s["opt_state"], s["params"])
      return {"params": optax.apply_updates(s["params"], updates), "opt_state": opt_state}, loss
    s, losses = jax.lax.scan(body, s, (xs, ys))
    return s, {"loss": losses.mean()}
  return chunk


def train_batches(ids: np.ndarray, batch: int, seq_len: int, seed: int, step: int, n: int,
                  mesh=None):
  """Inputs and targets ``[n, batch, seq_len]`` of the absolute steps ``step .. step+n-1``.

  With a mesh the batch axis is sharded over ``data`` x ``fsdp`` and each
  process draws only the rows of its own devices.
  """
  if mesh is None:
    xs, ys = zip(*(lm.window_batch(ids, batch, seq_len, seed, t) for t in range(step, step + n)))
    return np.stack(xs), np.stack(ys)
  sharding = mesh_lib.sharding(mesh, None, (mesh_lib.DATA, mesh_lib.FSDP), None)

  def fetch(which):
    def rows(index):
      ts = range(step, step + n)[index[0]]
      return np.stack([lm.window_batch(ids, batch, seq_len, seed, t, rows=index[1])[which]
                       for t in ts])[:, :, index[2]]
    return rows
  shape = (n, batch, seq_len)
  return (distributed.from_callback(sharding, shape, fetch(0)),
          distributed.from_callback(sharding, shape, fetch(1)))


# Numeric fields --sweep varies per member, and the arms each one applies to (None: every arm).
SWEEP_KEYS = {"adamw_lr": ("adamw", "lion"), "muon_lr": ("muon",), "dion_lr": ("dion",),
              "scalar_lr": None, "weight_decay": None}


def arm_sweep_keys(arm: str, request) -> dict[str, tuple[float, ...]]:
  """The swept values that apply to ``arm`` (an lr grid per arm: each arm sweeps its own lr)."""
  kind, _ = parse_arm(arm)
  return {k: v for k, v in (request.numeric if request else ())
          if SWEEP_KEYS[k] is None or kind in SWEEP_KEYS[k]}


def _check_sweep(cfg: Config, request) -> None:
  config.require(not cfg.mesh and jax.process_count() == 1,
                 "--seeds / --sweep run on one process without --mesh (the members are the sharded "
                 "axis); drop --mesh or the sweep flags.")


def _train_arm_sweep(cfg: Config, arm: str, batch: int, steps: int, data, run, progress) -> dict:
  """One arm as a `paperlab.sweep.Sweep`: its swept values x seeds, best point reported.

  Members differ in their initialisation (their seed) and swept values; they
  read the same batches (drawn from ``cfg.seed``). The learning rates and the
  weight decay are injected hyperparameters of the arm's optimizer, so an
  arm's grid is one compiled program.
  """
  train_ids, (val_x, val_y), vocab_size = data
  values = arm_sweep_keys(arm, run.sweep)
  grid = sweep.Grid.zipped(run.sweep.seeds or (cfg.seed,), **values) if run.sweep.zipped else \
      sweep.Grid.product(run.sweep.seeds or (cfg.seed,), **values)
  sched = lambda base: _schedule(base, steps, cfg.warmdown)  # noqa: E731
  defaults = {k: getattr(cfg, k) for k in SWEEP_KEYS}

  def factory(adamw_lr, muon_lr, dion_lr, scalar_lr, weight_decay):  # the names of SWEEP_KEYS
    return arm_optimizer(arm, dataclasses.replace(
        cfg, adamw_lr=adamw_lr, muon_lr=muon_lr, dion_lr=dion_lr, scalar_lr=scalar_lr,
        weight_decay=weight_decay), sched)
  tx = sweep.injectable(factory, **defaults)
  template = nnx.eval_shape(lambda: lm.CharGPT(vocab_size, cfg.d_model, cfg.layers, cfg.heads, cfg.seq_len,
                                               rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(template)

  def init_fn(key, hp):
    model = lm.CharGPT(vocab_size, cfg.d_model, cfg.layers, cfg.heads, cfg.seq_len, rngs=nnx.Rngs(key))
    params = nnx.to_pure_dict(nnx.state(model))
    opt_state = sweep.set_hyperparams(tx.init(params), **{k: hp.get(k, v) for k, v in defaults.items()})
    return {"params": params, "opt_state": opt_state}

  def loss_of(p, x, y):
    return lm.loss_fn(nnx.merge(graphdef, p), x, y)

  def step_fn(s, hp, t, chunk):
    xs, ys, t0 = chunk
    loss, grads = jax.value_and_grad(loss_of)(s["params"], xs[t - t0], ys[t - t0])
    updates, opt_state = tx.update(grads, s["opt_state"], s["params"])
    return {"params": optax.apply_updates(s["params"], updates), "opt_state": opt_state}, {"loss": loss}

  def data_fn(step, n):
    return (*train_batches(train_ids, batch, cfg.seq_len, cfg.seed, step, n), np.int32(step))

  engine = sweep.Sweep(grid, init_fn, step_fn)
  eval_every = max(cfg.log_every, cfg.eval_every * cfg.batch_size // batch // cfg.log_every
                   * cfg.log_every)
  t0 = time.perf_counter()
  state, final, history = engine.train(
      run.workdir / f"{_slug(arm)}_b{batch}", num_steps=steps, log_every=cfg.log_every,
      checkpoint_every=eval_every, eval_every=eval_every, data_fn=data_fn,
      eval_fn=lambda s, hp: {"val_loss": loss_of(s["params"], val_x, val_y)},
      desc=f"{arm} b={batch} ({len(grid)} members)", progress=progress,
      progress_weight=batch / cfg.batch_size, base_config=config.to_dict(cfg))
  wall = time.perf_counter() - t0
  failed = engine.failures(state)
  report = engine.report(run.workdir / f"{_slug(arm)}_b{batch}", {"val_loss": final["val_loss"]},
                         failed=failed, plot_metrics=("val_loss",) if values else (),
                         title=f"{arm}, batch {batch}")
  finite = [p for p in report["points"] if p["val_loss"]["n"]]
  if not finite:
    raise metrics.NonFiniteError(f"{arm} b={batch}: every member of the sweep became non-finite.")
  best = min(finite, key=lambda p: p["val_loss"]["mean"])
  ids = [m.id for m in engine.members if m.values == best["point"] and m.id not in failed]
  curve = [(r["step"], float(np.mean([r[f"val_loss/{i}"] for i in ids]))) for r in history
           if "val_loss" in r]
  seed_curves = {str(m.seed): [(r["step"], r[f"val_loss/{m.id}"]) for r in history if "val_loss" in r]
                 for m in engine.members if m.id in ids}
  first = next(m.index for m in engine.members if m.id == ids[0])
  member_state = jax.tree.map(lambda x: x[first], state["state"])
  with progress.phase(f"optimizer timing {arm} b={batch}") if progress else contextlib.nullcontext():
    optimizer_ms = _optimizer_ms(tx, member_state, cfg.timing_calls)
  return {"arm": arm, "batch_size": batch, "steps": steps, "final_val_loss": best["val_loss"]["mean"],
          "best_val_loss": min(v for _, v in curve), "curve": curve, "train_wall_s": wall,
          "optimizer_ms": optimizer_ms, "best_point": best["point"],
          "final_val_loss_std": best["val_loss"]["std"], "seeds": best["val_loss"]["n"],
          "seed_curves": seed_curves,
          "sweep": {"points": report["points"], "members": report["members"], "table": report["table"]}}


def _train_arm(cfg: Config, arm: str, batch: int, steps: int, data, run, mesh,
               progress: metrics.RunProgress | None = None) -> dict:
  if getattr(run, "sweep", None):
    return _train_arm_sweep(cfg, arm, batch, steps, data, run, progress)
  train_ids, (val_x, val_y), vocab_size = data
  graphdef, tx, train_state = init_train_state(cfg, arm, steps, vocab_size, mesh)
  chunk = make_chunk(graphdef, tx)

  def step_fn(s, step, n):
    return chunk(s, *train_batches(train_ids, batch, cfg.seq_len, cfg.seed, step, n, mesh))

  if mesh is not None:  # the evaluation windows are sharded like a batch
    rows = mesh_lib.sharding(mesh, (mesh_lib.DATA, mesh_lib.FSDP), None)
    val_x, val_y = distributed.from_rows(rows, val_x), distributed.from_rows(rows, val_y)
  val_loss = jax.jit(lambda p, x, y: lm.loss_fn(nnx.merge(graphdef, p), x, y))
  eval_every = max(cfg.log_every, cfg.eval_every * cfg.batch_size // batch // cfg.log_every
                   * cfg.log_every)
  t0 = time.perf_counter()
  train_state, history = loop.train(
      train_state, step_fn=step_fn, num_steps=steps, workdir=run.workdir / f"{_slug(arm)}_b{batch}",
      log_every=cfg.log_every, checkpoint_every=eval_every, eval_every=eval_every,
      eval_fn=lambda s, _: {"val_loss": val_loss(s["params"], val_x, val_y)},
      desc=f"{arm} b={batch}", progress=progress, progress_weight=batch / cfg.batch_size)
  wall = time.perf_counter() - t0
  curve = [(r["step"], float(r["val_loss"])) for r in history if "val_loss" in r]
  with progress.phase(f"optimizer timing {arm} b={batch}") if progress else contextlib.nullcontext():
    optimizer_ms = _optimizer_ms(tx, train_state, cfg.timing_calls)
  return {"arm": arm, "batch_size": batch, "steps": steps, "final_val_loss": curve[-1][1],
          "best_val_loss": min(v for _, v in curve), "curve": curve, "train_wall_s": wall,
          "optimizer_ms": optimizer_ms}


_TIMING = ("train_wall_s", "optimizer_ms")  # wall-clock fields: results.json keeps them apart


def _optimizer_ms(tx, state, calls: int) -> float:
  """Median time of one jitted ``tx.update`` on gradient-shaped inputs (ms)."""
  grads = jax.tree.map(lambda x: 1e-3 * jax.numpy.ones_like(x), state["params"])
  update = jax.jit(tx.update)
  jax.block_until_ready(update(grads, state["opt_state"], state["params"]))
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    jax.block_until_ready(update(grads, state["opt_state"], state["params"]))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def _slug(arm: str) -> str:
  return arm.replace("/", "_")


def _load(cfg: Config):
  text = lm.load_corpus(cfg.dataset)
  vocab = lm.CharVocab(text)
  train_ids, val_ids = lm.split_ids(vocab.encode(text), cfg.val_fraction)
  log.info("%s: %d characters, vocabulary %d, %d train / %d validation ids.", cfg.dataset,
           len(text), vocab.size, len(train_ids), len(val_ids))
  return train_ids, lm.eval_windows(val_ids, cfg.seq_len, cfg.eval_windows), vocab.size


def _sweep_steps(cfg: Config, batch: int) -> int:
  return max(cfg.log_every, cfg.steps * cfg.batch_size // batch)


def main() -> None:
  cfg, run = config.cli(Config, PRESETS, paper="dion", description=__doc__, multiprocess=True,
                        argv=preset_argv(sys.argv[1:]), sweep=config.SweepOptions(numeric=tuple(SWEEP_KEYS), check=_check_sweep))
  threadpool_limits(1, user_api="blas")
  mesh = mesh_lib.make_mesh(cfg.mesh) if cfg.mesh else None
  data = _load(cfg)
  total = len(cfg.arms) * cfg.steps + sum(
      len(cfg.sweep_arms) * _sweep_steps(cfg, b) * b / cfg.batch_size for b in cfg.sweep_batch_sizes)
  with metrics.RunProgress(total, desc="dion", unit="step (batch-size weighted)") as progress:
    main_runs = [_train_arm(cfg, arm, cfg.batch_size, cfg.steps, data, run, mesh, progress)
                 for arm in cfg.arms]
    sweep = [r for r in main_runs if r["arm"] in cfg.sweep_arms]
    for batch in cfg.sweep_batch_sizes:
      sweep += [_train_arm(cfg, arm, batch, _sweep_steps(cfg, batch), data, run, mesh, progress)
                for arm in cfg.sweep_arms]
  _report(cfg, run, main_runs, sweep)


def _at(curve, step: int) -> tuple[int, float]:
  """The ``(step, value)`` of ``[(step, value)]`` at the evaluation closest to ``step``."""
  return tuple(min(curve, key=lambda sv: abs(sv[0] - step)))


def claim_rows(sweep_runs: list[dict], fractions=CLAIM_FRACTIONS) -> list[dict]:
  """Per batch size and fraction of training: AdamW - Muon, AdamW - Dion r=1 and Dion / Muon.

  Each arm is at its own best lr for that batch; the differences are paired by
  seed (the same seed gives every arm the same initialisation and batches) and
  summarised over seeds (`paperlab.stats.summarize`). Needs the seed curves of
  a sweep run; rows are missing for batch sizes without all three arms.
  """
  by = {(r["arm"], r["batch_size"]): r for r in sweep_runs if "seed_curves" in r}
  rows = []
  for batch in sorted({b for _, b in by}):
    if not all((a, batch) in by for a in ("adamw", "muon", "dion-1")):
      continue
    adamw, muon, dion = (by[(a, batch)] for a in ("adamw", "muon", "dion-1"))
    seeds = sorted(set(adamw["seed_curves"]) & set(muon["seed_curves"]) & set(dion["seed_curves"]), key=int)
    for f in fractions:
      step = _at(adamw["seed_curves"][seeds[0]], int(round(f * adamw["steps"])))[0]
      at = lambda r, s: _at(r["seed_curves"][s], step)[1]  # noqa: E731
      rows.append({"batch_size": batch, "fraction": f, "step": step, "tokens": step * batch,
                   "adamw_minus_muon": stats.summarize([at(adamw, s) - at(muon, s) for s in seeds]),
                   "adamw_minus_dion": stats.summarize([at(adamw, s) - at(dion, s) for s in seeds]),
                   "dion_over_muon": stats.summarize([at(dion, s) / at(muon, s) for s in seeds])})
  return rows


def claim_table(rows: list[dict]) -> list[str]:
  """Markdown lines of `claim_rows` (mean +- std over seeds, n)."""
  out = ["| batch | fraction of training (step) | AdamW - Muon | AdamW - Dion r=1 | Dion r=1 / Muon |",
         "|---|---|---|---|---|"]
  fmt = lambda s: f"{s['mean']:.4f} +- {s['std']:.4f} (n={s['n']})"  # noqa: E731
  out += [f"| {r['batch_size']} | {r['fraction']:g} ({r['step']}) | {fmt(r['adamw_minus_muon'])} | "
          f"{fmt(r['adamw_minus_dion'])} | {fmt(r['dion_over_muon'])} |" for r in rows]
  return out


def _report(cfg: Config, run, main_runs: list[dict], sweep: list[dict]) -> None:
  plots.line_plot({r["arm"]: tuple(zip(*r["curve"])) for r in main_runs},
                  run.path("val_loss.png"), xlabel="training step", ylabel="validation loss (nats/char)",
                  title=plots.run_title(run, f"char GPT d={cfg.d_model} L={cfg.layers}, "
                                             f"batch {cfg.batch_size}: validation loss"))
  by_arm: dict[str, list[tuple[int, float]]] = {}
  for r in sorted(sweep, key=lambda r: r["batch_size"]):
    by_arm.setdefault(r["arm"], []).append((r["batch_size"], r["final_val_loss"]))
  plots.line_plot({arm: tuple(zip(*pts)) for arm, pts in by_arm.items()},
                  run.path("batch_sweep.png"), xlabel="batch size (sequences per step, same tokens)",
                  ylabel="final validation loss (nats/char)", logx=True,
                  xticks=sorted({b for pts in by_arm.values() for b, _ in pts}),
                  title=plots.run_title(run, "batch-size sweep at a fixed token budget"))
  table = ["| arm | final val loss | best val loss | optimizer ms/step | train s |",
           "|---|---|---|---|---|"]
  table += [f"| {r['arm']} | {r['final_val_loss']:.4f} | {r['best_val_loss']:.4f} | "
            f"{r['optimizer_ms']:.2f} | {r['train_wall_s']:.1f} |" for r in main_runs]
  sweep_table = []
  if by_arm:  # empty when no arm is swept
    sizes = next(iter(by_arm.values()))
    sweep_table = ["| arm | " + " | ".join(f"b={b}" for b, _ in sizes) + " |", "|---|" + "---|" * len(sizes)]
    sweep_table += [f"| {arm} | " + " | ".join(f"{v:.4f}" for _, v in pts) + " |"
                    for arm, pts in by_arm.items()]
  if any("sweep" in r for r in main_runs):
    table = ["| arm | best point | final val loss (mean +- std, seeds) | best val loss | optimizer ms/step | train s |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['arm']} | {r.get('best_point') or '-'} | {r['final_val_loss']:.4f} +- "
              f"{r.get('final_val_loss_std', 0.0):.4f} (n={r.get('seeds', 1)}) | {r['best_val_loss']:.4f} | "
              f"{r['optimizer_ms']:.2f} | {r['train_wall_s']:.1f} |" for r in main_runs]
    for r in main_runs:
      if "sweep" in r:
        log.info("%s, batch %d: final val loss per point (mean +- std over seeds)\n%s", r["arm"],
                 r["batch_size"], "\n".join(r["sweep"]["table"]))
  log.info("Results\n%s\n\nBatch sweep (same token budget)\n%s", "\n".join(table),
           "\n".join(sweep_table))
  final = {r["arm"]: r["final_val_loss"] for r in main_runs}
  notes = {r["arm"]: ((f"; best swept point {r['best_point']}" if r["best_point"] else "")
                      + f"; mean +- std {r['final_val_loss']:.4f} +- {r['final_val_loss_std']:.4f} over "
                      f"{r['seeds']} seed(s)" if "sweep" in r else "") for r in main_runs}
  headline = [{"metric": f"{arm} final val loss, char GPT ({cfg.dataset})", "value": round(v, 4),
               "note": f"{cfg.steps} steps, batch {cfg.batch_size}{notes[arm]}"} for arm, v in final.items()]
  if "dion-1" in final and "muon" in final:
    headline.append({"metric": "Dion r=1 / Muon final val loss", "value":
                     round(final["dion-1"] / final["muon"], 4), "note": "acceptance: <= 1.02"})
  gaps = {}
  if "adamw" in by_arm and "muon" in by_arm:
    muon = dict(by_arm["muon"])
    gaps = {b: round(v - muon[b], 4) for b, v in by_arm["adamw"] if b in muon}
    headline.append({"metric": "AdamW - Muon val loss gap by batch size", "value": str(gaps),
                     "note": "paper: the gap grows with batch size"})
  claim = claim_rows(sweep)
  if claim:
    claim_lines = claim_table(claim)
    log.info("Batch-size claim (paired over seeds, each arm at its best lr per batch)\n%s",
             "\n".join(claim_lines))
    best = {(r["arm"], r["batch_size"]): r["best_point"] for r in sweep if "best_point" in r}
    for r in (r for r in claim if r["fraction"] == 1.0):
      for key, name in (("adamw_minus_muon", "AdamW - Muon"), ("adamw_minus_dion", "AdamW - Dion r=1"),
                        ("dion_over_muon", "Dion r=1 / Muon")):
        headline.append({"metric": f"{name} final val loss, batch {r['batch_size']}",
                         "value": round(r[key]["mean"], 4),
                         "note": f"{stats.spread(r[key], 3, ci=True)}; {r['step']} steps, paired seeds, "
                                 "lr tuned per arm and batch: " + ", ".join(
                                     f"{a} {best.get((a, r['batch_size']))}" for a in ("adamw", "muon", "dion-1"))})
  strip = lambda rs: [{k: v for k, v in r.items() if k not in _TIMING} for r in rs]  # noqa: E731
  timed = main_runs + [r for r in sweep if all(r is not m for m in main_runs)]
  timing = {"table": table, "runs": [{k: r[k] for k in ("arm", "batch_size", *_TIMING)} for r in timed]}
  run.write_results({"runs": strip(main_runs), "sweep": strip(sweep), "sweep_table": sweep_table,
                     "adamw_minus_muon_by_batch": gaps, "claim": claim,
                     "claim_table": claim_table(claim) if claim else []}, headline, timing=timing)


if __name__ == "__main__":
  config.main(main)
