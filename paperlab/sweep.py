"""Sweeps: a grid of seeds x hyperparameters trained as one jitted program.

A sweep trains many *members* (one per seed and hyperparameter point) as a
leading axis of one stacked train state:

* `Grid` lists the members: seeds x numeric hyperparameters, as a Cartesian
  product of axes, where an axis is one key or several keys zipped together.
  Each member has an id (``m000``, ``m001``, ...) and its values; the grid is
  saved as ``sweep.json`` in the run directory. Settings that change shapes
  or code paths (a rank, a width, a method) are not members: `groups` splits
  them into static groups, each compiled once.
* `Sweep` vmaps the user's per-member ``init_fn`` / ``step_fn`` over members
  in chunks of ``chunk_size`` (a `jax.lax.map` over chunks, a `jax.lax.scan`
  over steps inside each chunk) and shards the member axis over the
  `paperlab.mesh.SWEEP` axis of all devices with `jax.shard_map`. The
  stacked state is built directly in its sharding (``jax.jit`` with
  ``out_shardings``). With ``chunk_size=1`` each member runs the unbatched
  program, so it equals a single run bit for bit.
* Frozen members. Finiteness is checked once per chunk of steps (one
  `Sweep.run` call, steps ``start .. start+n-1``, 0-based; a chunk of
  `Sweep.train` is ``log_every`` steps), not per step, which keeps the check's
  cost out of the steps. A member whose metrics at some step of the chunk, or
  whose state at the chunk's end, hold a NaN or an inf is frozen: its state
  becomes, bit for bit, its state at the chunk start (after ``start`` steps,
  the last one checked finite) and stays so; ``alive`` turns False; its
  metrics are NaN for that chunk and every later one; the others go on
  unaffected. Its reported step (``failed_step``, `Sweep.failures`, "became
  non-finite after step N") counts steps from 1: N = s + 1 for the first
  0-based step s of the chunk whose metrics were non-finite, or N = start + n
  (the chunk's last step) if only the state at the chunk's end was. So the
  state kept is that of step ``start`` while N is the exact step that failed.
* `Sweep.train` runs through `paperlab.loop` (checkpoint and bitwise resume
  of the whole stacked state, the NaN guard over the aggregate metrics);
  `Sweep.report` writes one row per member plus mean, std, n and a 95%
  confidence interval over seeds per hyperparameter point.
* Optimizer hyperparameters go through `optax.inject_hyperparams`:
  `injectable` builds the transform once (Dion's static arguments handled),
  `set_hyperparams` writes a member's values into its optimizer state.

Example (a user's own Optax chain, learning rate x seeds)::

  import jax, jax.numpy as jnp, optax
  from paperlab import sweep

  grid = sweep.Grid.product(seeds=range(4), learning_rate=[0.01, 0.1])
  tx = sweep.injectable(lambda learning_rate: optax.chain(
      optax.clip_by_global_norm(1.0), optax.adam(learning_rate)), learning_rate=0.1)

  def init_fn(key, hp):
    params = jax.random.normal(key, (3,))
    opt_state = sweep.set_hyperparams(tx.init(params), learning_rate=hp["learning_rate"])
    return {"params": params, "opt_state": opt_state}

  def step_fn(state, hp, step, data):
    loss, g = jax.value_and_grad(lambda p: jnp.sum(p ** 2))(state["params"])
    updates, opt_state = tx.update(g, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state}, {"loss": loss}

  engine = sweep.Sweep(grid, init_fn, step_fn)
  state, metrics = engine.run(engine.init(), 0, 100)
  print(engine.table(engine.aggregate({"loss": metrics["loss"]})))
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import pathlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from paperlab import files
from paperlab import mesh as mesh_lib

log = logging.getLogger(__name__)

SEED = "seed"
ALIVE, FAILED, STATE = "alive", "failed_step", "state"
PAD_FAILED = -1  # failed_step of a member that never failed

InitFn = Callable[[jax.Array, Mapping[str, jax.Array]], Any]
StepFn = Callable[[Any, Mapping[str, jax.Array], jax.Array, Any], tuple[Any, Mapping[str, jax.Array]]]


# ------------------------------------------------------------------ the grid


def _numbers(key: str, values: Iterable[Any]) -> tuple[float, ...]:
  values = tuple(values)
  if not values:
    raise ValueError(f"sweep key {key!r} has an empty list of values.")
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
      raise ValueError(f"sweep key {key!r}: {v!r} is not a number.")
    if not math.isfinite(float(v)):
      raise ValueError(f"sweep key {key!r}: {v!r} is not finite.")
    out.append(float(v))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class Axis:
  """One axis of a grid: ``keys`` zipped together, one row of values per point."""
  keys: tuple[str, ...]
  rows: tuple[tuple[float, ...], ...]


@dataclasses.dataclass(frozen=True)
class Member:
  """One member of a sweep: its index, id, seed and swept values."""
  index: int
  id: str
  seed: int
  values: Mapping[str, float]

  def label(self) -> str:
    return ", ".join([f"{k}={v:g}" for k, v in self.values.items()] + [f"seed={self.seed}"])


@dataclasses.dataclass(frozen=True)
class Grid:
  """Seeds x hyperparameter points; members are points (outer) x seeds (inner).

  Build with `Grid.product` (every combination), `Grid.zipped` (lists of
  equal length, taken together) and combine with ``*`` (a product of axes).
  """
  seeds: tuple[int, ...] = (0,)
  axes: tuple[Axis, ...] = ()

  def __post_init__(self):
    seeds = tuple(int(s) for s in self.seeds)
    if not seeds:
      raise ValueError("a sweep needs at least one seed.")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
      raise ValueError(f"seeds must be distinct and >= 0, got {list(seeds)}.")
    object.__setattr__(self, "seeds", seeds)
    keys = [k for a in self.axes for k in a.keys]
    if len(set(keys)) != len(keys) or SEED in keys:
      raise ValueError(f"sweep keys must be distinct and not {SEED!r}, got {keys}.")

  @classmethod
  def product(cls, seeds: Iterable[int] = (0,), **values: Iterable[float]) -> "Grid":
    """Every combination of the values of each key, times every seed."""
    return cls(tuple(seeds), tuple(Axis((k,), tuple((v,) for v in _numbers(k, vs)))
                                   for k, vs in values.items()))

  @classmethod
  def zipped(cls, seeds: Iterable[int] = (0,), **values: Iterable[float]) -> "Grid":
    """The i-th value of every key together (lists of equal length), times every seed."""
    cols = {k: _numbers(k, vs) for k, vs in values.items()}
    lengths = {len(c) for c in cols.values()}
    if len(lengths) > 1:
      raise ValueError(f"zipped sweep lists differ in length: { {k: len(c) for k, c in cols.items()} }.")
    if not cols:
      return cls(tuple(seeds))
    return cls(tuple(seeds), (Axis(tuple(cols), tuple(zip(*cols.values()))),))

  def __mul__(self, other: "Grid") -> "Grid":
    """Product of the axes of both (``self``'s outer); the seeds of ``self``."""
    return Grid(self.seeds, self.axes + other.axes)

  @property
  def keys(self) -> tuple[str, ...]:
    return tuple(k for a in self.axes for k in a.keys)

  def points(self) -> list[dict[str, float]]:
    """The hyperparameter points (without seeds), in member order."""
    out = []
    for rows in itertools.product(*(a.rows for a in self.axes)):
      point = {}
      for axis, row in zip(self.axes, rows):
        point.update(zip(axis.keys, row))
      out.append(point)
    return out

  def members(self) -> list[Member]:
    pts = self.points()
    width = max(3, len(str(len(pts) * len(self.seeds) - 1)))
    return [Member(i, f"m{i:0{width}d}", seed, point)
            for i, (point, seed) in enumerate((p, s) for p in pts for s in self.seeds)]

  def __len__(self) -> int:
    return len(self.points()) * len(self.seeds)

  def arrays(self) -> dict[str, np.ndarray]:
    """``{"seed": int32 [M], key: float32 [M], ...}`` of every member."""
    ms = self.members()
    out = {SEED: np.array([m.seed for m in ms], np.int32)}
    for k in self.keys:
      out[k] = np.array([m.values[k] for m in ms], np.float32)
    return out

  def to_dict(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The grid and every member (with its full config when ``base`` is given)."""
    members = []
    for m in self.members():
      row = {"id": m.id, "seed": m.seed, "values": dict(m.values)}
      if base is not None:
        row["config"] = {**base, **m.values, **({SEED: m.seed} if SEED in base else {})}
      members.append(row)
    return {"seeds": list(self.seeds), "axes": [{"keys": list(a.keys), "rows": [list(r) for r in a.rows]}
                                                for a in self.axes], "members": members}

  def save(self, path: str | pathlib.Path, base: Mapping[str, Any] | None = None) -> pathlib.Path:
    return files.save_json(path, self.to_dict(base))


def grid_from(request: Any, *, default_seeds: Iterable[int] = (0,), outer: Grid | None = None) -> Grid:
  """The grid of a command line's `paperlab.config.SweepRequest` (``run.sweep``).

  Seeds default to ``default_seeds``; ``outer`` axes (a script's own
  methods, say) come first.
  """
  seeds = tuple(default_seeds) if request is None or request.seeds is None else request.seeds
  values = dict(request.numeric) if request is not None else {}
  zipped = request is not None and request.zipped
  grid = Grid.zipped(seeds, **values) if zipped else Grid.product(seeds, **values)
  return Grid(seeds, (outer.axes if outer else ()) + grid.axes)


def groups(static: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Static groups: every combination of settings that change shapes or code paths.

  Each group is compiled once and runs its own `Sweep`.
  """
  keys = list(static)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(static[k] for k in keys))]


# ------------------------------------------------------------------ optimizers


def injectable(factory: Callable[..., optax.GradientTransformation], *,
               static_args: Iterable[str] = (), **defaults: Any) -> optax.GradientTransformation:
  """``optax.inject_hyperparams(factory, static_args)(**defaults)`` with static arguments found.

  Numbers become hyperparameters in the optimizer state (set per member with
  `set_hyperparams`); strings, booleans, None, tuples, label functions and
  meshes are static. For `optim.dion` and `optim.scale_by_dion` the static
  arguments `optim.DION_STATIC_ARGS` / `optim.STATIC_ARGS` are added.
  """
  static = set(static_args)
  name = getattr(factory, "__name__", "")
  if name in ("dion", "scale_by_dion"):
    from optim import _dion  # pylint: disable=g-import-not-at-top
    static |= set(_dion.DION_STATIC_ARGS if name == "dion" else _dion.STATIC_ARGS)
  for k, v in defaults.items():
    numeric = isinstance(v, (int, float, np.number, jax.Array, np.ndarray)) and not isinstance(v, bool)
    if not numeric and not callable(v):
      static.add(k)
  return optax.inject_hyperparams(factory, static_args=tuple(sorted(static)))(**defaults)


_INJECTED = tuple(t for t in (getattr(optax, "InjectHyperparamsState", None),
                              getattr(optax, "InjectStatefulHyperparamsState", None)) if t is not None)


def _is_injected(x: Any) -> bool:
  return isinstance(x, _INJECTED)


def set_hyperparams(opt_state: Any, **values: Any) -> Any:
  """Returns ``opt_state`` with every `optax.InjectHyperparamsState` holding ``values``.

  Raises:
    ValueError: a key that no injected state holds.
  """
  found = set()

  def fix(node):
    if not _is_injected(node):
      return node
    hps = dict(node.hyperparams)
    for k, v in values.items():
      if k in hps:
        hps[k] = jnp.asarray(v, jnp.result_type(hps[k]))
        found.add(k)
    return node._replace(hyperparams=hps)

  out = jax.tree.map(fix, opt_state, is_leaf=_is_injected)
  missing = set(values) - found
  if missing:
    raise ValueError(f"no injected hyperparameter named {sorted(missing)} in the optimizer state "
                     "(build the optimizer with paperlab.sweep.injectable).")
  return out


# ------------------------------------------------------------------ execution


def _float_leaves(tree: Any) -> list[jax.Array]:
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


def all_finite(*trees: Any) -> jax.Array:
  """True when every floating leaf of ``trees`` is finite (a scalar bool)."""
  flags = [jnp.all(jnp.isfinite(x)) for t in trees for x in _float_leaves(t)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def state_bytes(tree: Any) -> int:
  """Bytes of one member's state (from shapes only)."""
  return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                 if hasattr(x, "shape") and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)))


CPU_CHUNK_BYTES = 1 << 18  # chunk state budget on CPU: a chunk's states stay in cache
ACCELERATOR_CHUNK_BYTES = 1 << 30


def default_chunk_size(member_bytes: int, members_per_device: int, backend: str | None = None) -> int:
  """Members vmapped together: from the backend and one member's state size.

  On CPU a chunk holds at most `CPU_CHUNK_BYTES` of state (a power of two, at
  least 1): small models gain from batching, large ones run one member at a
  time, which is a loop of single runs compiled into one program. On GPU and
  TPU a chunk holds up to `ACCELERATOR_CHUNK_BYTES` (usually every member of
  the device at once).
  """
  backend = backend or jax.default_backend()
  budget = CPU_CHUNK_BYTES if backend == "cpu" else ACCELERATOR_CHUNK_BYTES
  size = max(1, budget // max(member_bytes, 1))
  size = 1 << (size.bit_length() - 1)
  return int(max(1, min(size, members_per_device)))


def member_map(fn: Callable, mesh: jax.sharding.Mesh, chunk_size: int, n_member: int) -> Callable:
  """``fn`` of one member lifted to the member axis: `jax.shard_map` over the ``sweep``
  axis of ``mesh``, a `jax.lax.map` over chunks of ``chunk_size`` members on each
  device, `jax.vmap` within a chunk (``chunk_size=1``: the unbatched ``fn``).

  The first ``n_member`` arguments carry the member axis (a multiple of
  ``chunk_size`` times the devices); the others are shared (replicated).
  """
  c = chunk_size

  def local(*args):
    member, shared = args[:n_member], args[n_member:]
    if c == 1:
      return jax.lax.map(lambda m: fn(*m, *shared), member)
    chunks = jax.tree.map(lambda x: x.reshape((-1, c) + x.shape[1:]), member)
    out = jax.lax.map(lambda m: jax.vmap(lambda *a: fn(*a, *shared))(*m), chunks)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)

  spec = PartitionSpec(mesh_lib.SWEEP)

  def wrapped(*args):
    in_specs = (spec,) * n_member + (PartitionSpec(),) * (len(args) - n_member)
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)(*args)
  return wrapped


def usable_cores() -> int:
  """CPU cores this process may run on (its affinity mask, e.g. under ``taskset``)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except (AttributeError, OSError):
    return max(1, os.cpu_count() or 1)


def default_devices(backend: str | None = None) -> list[jax.Device]:
  """The devices a sweep shards over when none are given.

  Every device of an accelerator backend. On CPU at most one device per usable
  core (`usable_cores`): simulated CPU devices beyond the cores give no speed,
  and XLA:CPU runs every device's program on one shared thread pool, so more
  concurrent device programs than cores only compete for it (a batched LAPACK
  kernel such as ``jnp.linalg.eigvals`` waits on that pool from inside it and
  deadlocks when every pool thread holds such a wait). An explicit
  ``devices=`` still shards over as many as asked.
  """
  devices = jax.devices(backend) if backend else jax.devices()
  if devices[0].platform == "cpu":
    devices = devices[:usable_cores()]
  return list(devices)


def _sweep_mesh(devices: Sequence[jax.Device] | int | None) -> jax.sharding.Mesh:
  if isinstance(devices, bool) or (isinstance(devices, int) and devices < 1):
    raise ValueError(f"devices must be a positive count or a list of devices, got {devices!r}.")
  if isinstance(devices, int):
    if devices > jax.device_count():
      raise ValueError(f"devices={devices} but only {jax.device_count()} devices exist.")
    devices = jax.devices()[:devices]
  devices = default_devices() if devices is None else list(devices)
  return mesh_lib.make_mesh({mesh_lib.SWEEP: len(devices)}, devices)


STALL_S = float(os.environ.get("PAPERLAB_SWEEP_STALL_S", "120"))


class SweepStalled(RuntimeError):
  """A sweep program made no progress (a CPU deadlock) within the stall limit."""


def wait(tree: Any, what: str = "sweep program", *, stall_s: float | None = None) -> Any:
  """``jax.block_until_ready(tree)`` that never waits forever on the CPU backend.

  On CPU a running program burns process CPU time; a deadlocked one (every
  XLA:CPU pool thread waiting on another) burns none. If the arrays are not
  ready and the process used under 1% of a core for ``stall_s`` seconds
  (default `STALL_S`, env ``PAPERLAB_SWEEP_STALL_S``), `SweepStalled` is
  raised naming the program. Long computations are never cut: only the
  absence of progress counts. On accelerators (the host idles while the device
  works) this is a plain ``jax.block_until_ready``.

  Raises:
    SweepStalled: no progress for ``stall_s`` seconds.
  """
  leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
  if not leaves or all(getattr(x, "is_ready", lambda: False)() for x in leaves):
    return tree
  if any(d.platform != "cpu" for x in leaves for d in x.devices()):
    return jax.block_until_ready(tree)
  stall_s = STALL_S if stall_s is None else stall_s
  done = threading.Event()
  errors: list[BaseException] = []

  def block():
    try:
      jax.block_until_ready(leaves)
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)
    finally:
      done.set()

  threading.Thread(target=block, name="paperlab-sweep-wait", daemon=True).start()
  window = max(min(stall_s, 5.0), 0.05)
  cpu0, t0 = time.process_time(), time.monotonic()
  while not done.wait(window):
    cpu, now = time.process_time(), time.monotonic()
    if cpu - cpu0 > 0.01 * (now - t0):  # progress: restart the stall clock
      cpu0, t0 = cpu, now
    elif now - t0 >= stall_s:
      raise SweepStalled(
          f"{what} made no progress for {now - t0:.0f} s on {len(leaves[0].devices())} CPU "
          f"device(s) ({usable_cores()} usable cores): an XLA:CPU deadlock; shard over fewer "
          "devices (devices=None uses at most one per core).")
  if errors:
    raise errors[0]
  return tree


def _padded(arrays: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads every member array to ``size`` by repeating the last member (dropped on the host)."""
  return {k: np.concatenate([v, np.repeat(v[-1:], size - len(v))]) for k, v in arrays.items()}


def evaluate(fn: Callable[[Mapping[str, jax.Array]], Any], grid: Grid, *, shared: Any = None,
             chunk_size: int | None = None, devices: Sequence[jax.Device] | int | None = None) -> Any:
  """``fn(hp)`` (or ``fn(hp, shared)``) of every member of ``grid``: one jitted, chunked, sharded call.

  For per-point computations that are not training runs (a spectral radius,
  steps to converge). Returns the outputs as host (NumPy) arrays with a
  leading member axis (``len(grid)``, in member order). ``chunk_size``
  defaults to every member of a device, at most 256; ``devices`` as in
  `Sweep`.
  """
  mesh = _sweep_mesh(devices)
  n_dev = mesh.devices.size
  per_device = -(-len(grid) // n_dev)
  c = int(chunk_size or min(per_device, 256))
  padded = -(-len(grid) // (c * n_dev)) * c * n_dev
  hp = jax.device_put(_padded(grid.arrays(), padded), NamedSharding(mesh, PartitionSpec(mesh_lib.SWEEP)))
  call = (lambda h: fn(h)) if shared is None else (lambda h, d: fn(h, d))
  out = wait(jax.jit(member_map(call, mesh, c, 1))(hp, *(() if shared is None else (shared,))),
             "sweep.evaluate")
  # The padding is dropped on the host: slicing the sharded arrays would be a cross-device program.
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x))[:len(grid)], out)


class Sweep:
  """Trains every member of a `Grid` as one jitted, sharded program.

  Args:
    grid: the members.
    init_fn: ``(key, hp) -> state`` of one member; ``key`` is
      ``jax.random.key(seed)``, ``hp`` maps ``"seed"`` and every swept key to
      a scalar.
    step_fn: ``(state, hp, step, data) -> (state, metrics)``: one step of one
      member at absolute step ``step`` (int32); metrics are scalars.
    data: arrays every member reads (replicated), passed to ``step_fn``.
    chunk_size: members vmapped together (None: `default_chunk_size`);
      1 runs each member's unbatched program.
    devices: devices of the ``sweep`` mesh axis (None: `default_devices`,
      i.e. every accelerator, or on CPU at most one device per usable core;
      an int: the first that many; a list: exactly those).
    freeze: freeze members whose metrics or state become non-finite.
  """

  def __init__(self, grid: Grid, init_fn: InitFn, step_fn: StepFn, *, data: Any = None,
               chunk_size: int | None = None, devices: Sequence[jax.Device] | int | None = None,
               freeze: bool = True):
    if chunk_size is not None and chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    self.grid, self.init_fn, self.step_fn, self.data, self.freeze = grid, init_fn, step_fn, data, freeze
    self.mesh = _sweep_mesh(devices)
    devices = list(self.mesh.devices.flat)
    self.members = grid.members()
    self.num_members = len(self.members)
    per_device = -(-self.num_members // len(devices))
    hp0 = {k: jnp.asarray(v[0]) for k, v in grid.arrays().items()}
    member_shape = jax.eval_shape(lambda h: init_fn(jax.random.key(0), h), hp0)
    self.member_bytes = state_bytes(member_shape)
    self.chunk_size = int(chunk_size or default_chunk_size(self.member_bytes, per_device))
    block = self.chunk_size * len(devices)
    self.padded = -(-self.num_members // block) * block
    self.sharding = NamedSharding(self.mesh, PartitionSpec(mesh_lib.SWEEP))
    self.hp = jax.device_put(_padded(grid.arrays(), self.padded), self.sharding)
    self._run_jit: dict[int, Callable] = {}
    self._apply_jit: dict[tuple[Callable, bool], Callable] = {}
    self._init_jit = None

  # -- per-member programs, chunked and sharded

  def _map(self, fn: Callable, n_member: int) -> Callable:
    return member_map(fn, self.mesh, self.chunk_size, n_member)

  def _init_member(self, hp):
    state = self.init_fn(jax.random.key(hp[SEED]), hp)
    return {STATE: state, ALIVE: jnp.array(True), FAILED: jnp.array(PAD_FAILED, jnp.int32)}

  def init(self) -> Any:
    """The stacked state ``{"state", "alive", "failed_step"}``, built in its sharding."""
    if self._init_jit is None:
      fn = self._map(self._init_member, 1)
      shapes = jax.eval_shape(fn, self.hp)
      self._init_jit = jax.jit(fn, out_shardings=jax.tree.map(lambda _: self.sharding, shapes))
    return wait(self._init_jit(self.hp), "Sweep.init")

  def _chunk_member(self, stacked, hp, start, data, n):
    """``n`` steps of one member, then the freeze (module docstring, "Frozen members"): a member
    whose state or any step's metrics are non-finite keeps its state from the start of the chunk
    (its last checked finite one); ``failed_step`` is the first bad step counted from 1."""
    steps = start + jnp.arange(n, dtype=jnp.int32)
    new, ms = jax.lax.scan(lambda s, t: self.step_fn(s, hp, t, data), stacked[STATE], steps)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), ms)
    if not self.freeze:
      return {**stacked, STATE: new}, metrics
    alive = stacked[ALIVE]
    bad_steps = ~jnp.stack([jnp.all(jnp.isfinite(m), axis=tuple(range(1, m.ndim)))
                            for m in _float_leaves(ms)] or [jnp.ones(n, bool)]).all(axis=0)
    ok = alive & ~bad_steps.any() & all_finite(new)
    first_bad = jnp.where(bad_steps.any(), steps[jnp.argmax(bad_steps)], steps[-1]) + 1
    state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, stacked[STATE])
    failed = jnp.where(alive & ~ok, first_bad, stacked[FAILED])
    metrics = jax.tree.map(lambda m: jnp.where(alive, m, jnp.nan), metrics)
    return {STATE: state, ALIVE: ok, FAILED: failed}, metrics

  def run(self, stacked: Any, start: int, n: int, data: Any = None) -> tuple[Any, dict[str, jax.Array]]:
    """Runs steps ``start .. start+n-1`` of every member.

    ``data`` (default: the engine's ``data``) is what ``step_fn`` receives,
    e.g. this chunk's batches made on the host.

    Returns:
      ``(stacked, metrics)``: metrics ``[padded members]`` per name, the mean
      over the ``n`` steps (NaN for a member frozen within them).
    """
    if n not in self._run_jit:
      fn = self._map(lambda s, h, t0, d: self._chunk_member(s, h, t0, d, n), 2)
      self._run_jit[n] = jax.jit(fn)  # no donation: the loop keeps the committed state
    out = self._run_jit[n](stacked, self.hp, jnp.int32(start), self.data if data is None else data)
    return wait(out, f"Sweep.run(steps {start}..{start + n - 1})")

  def apply(self, fn: Callable[..., Any], stacked: Any, data: Any = None) -> Any:
    """``fn(state, hp)`` of every member (e.g. an evaluation), chunked and sharded.

    With ``data`` (arrays every member reads, e.g. a test set), ``fn(state, hp,
    data)``: passed as an argument, not a compile-time constant. Compiled once
    per ``fn``.
    """
    key = (fn, data is None)
    if key not in self._apply_jit:
      if data is None:
        self._apply_jit[key] = jax.jit(self._map(lambda s, h: fn(s[STATE], h), 2))
      else:
        self._apply_jit[key] = jax.jit(self._map(lambda s, h, d: fn(s[STATE], h, d), 2))
    out = self._apply_jit[key](stacked, self.hp, *(() if data is None else (data,)))
    return wait(out, "Sweep.apply")

  # -- host side

  def unstack(self, tree: Any, index: int) -> Any:
    """Member ``index``'s slice of a stacked tree."""
    return jax.tree.map(lambda x: x[index], tree)

  def failures(self, stacked: Any) -> dict[str, int]:
    """``{member id: N}`` of every frozen member: it became non-finite at step N (counted from 1;
    see "Frozen members" in the module docstring); its state is that of its chunk's start."""
    failed = np.asarray(jax.device_get(stacked[FAILED]))[:self.num_members]
    return {m.id: int(f) for m, f in zip(self.members, failed) if f != PAD_FAILED}

  def train(self, workdir: str | pathlib.Path, *, num_steps: int, log_every: int,
            checkpoint_every: int | None = None, eval_fn: Callable | None = None,
            eval_every: int | None = None, desc: str = "sweep", progress=None,
            progress_weight: float = 1.0, base_config: Mapping[str, Any] | None = None,
            data_fn: Callable[[int, int], Any] | None = None, eval_data: Any = None):
    """Trains every member through `paperlab.loop.train` (checkpoints, resume, NaN guard).

    Metrics records hold each member's value as ``name/<id>`` and the mean
    over live members as ``name``; ``members.jsonl`` has one row per member
    and record with its id and hyperparameters. A frozen member's values are
    NaN from its failing chunk on and the others go on; every member frozen
    stops the run (`paperlab.metrics.NonFiniteError`), as does any non-finite
    metric with ``freeze=False``. ``eval_fn(state, hp)``
    gives one member's evaluation metrics; ``data_fn(step, n)``, when given,
    makes each chunk's ``data`` on the host (batches as a function of the
    step keep resumed runs exact). With ``eval_data``, ``eval_fn(state, hp,
    eval_data)`` (see `apply`).

    Returns:
      ``(stacked state, per-member final metrics {name: [members]}, history)``.
    """
    from paperlab import loop  # pylint: disable=g-import-not-at-top
    from paperlab import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.grid.save(workdir / "sweep.json", base_config)
    reported: set[str] = set()
    names: set[str] = set()

    def record(stacked, values: Mapping[str, Any]) -> dict[str, Any]:
      out = {}
      alive = np.asarray(jax.device_get(stacked[ALIVE]))[:self.num_members]
      for name, v in values.items():
        v = np.asarray(jax.device_get(v), np.float64)[:self.num_members]
        names.add(name)
        for m, x in zip(self.members, v):
          out[f"{name}/{m.id}"] = float(x)
        live = v[alive & np.isfinite(v)]
        out[name] = float(live.mean()) if live.size else math.nan
      out["alive"] = int(alive.sum())
      for mid, step in self.failures(stacked).items():
        if mid not in reported:
          reported.add(mid)
          member = self.members[int(mid[1:])]
          log.warning("%s: member %s (%s) became non-finite after step %d; frozen, the others go on.",
                      desc, mid, member.label(), step)
      return out

    def step_fn(stacked, step, n):
      stacked, metrics = self.run(stacked, step, n, None if data_fn is None else data_fn(step, n))
      out = record(stacked, metrics)
      if self.freeze and out["alive"] == 0:
        raise metrics_lib.NonFiniteError(
            f"Non-finite values after step {step + n}: every member of {desc} is frozen "
            f"({self.failures(stacked)}).", step=step + n)
      return stacked, out

    def eval_wrapped(stacked, step):
      del step
      return record(stacked, self.apply(eval_fn, stacked, eval_data))

    state, history = loop.train(
        self.init(), step_fn=step_fn, num_steps=num_steps, workdir=workdir, log_every=log_every,
        checkpoint_every=checkpoint_every, eval_fn=eval_wrapped if eval_fn else None,
        eval_every=eval_every, desc=desc, progress=progress, progress_weight=progress_weight,
        # Frozen members' NaN values are expected (all frozen raises above); each member's state
        # is checked on its own device. Without the freeze every metric must stay finite.
        finite_keys=() if self.freeze else None, check_state=False)
    for mid, step in self.failures(state).items():
      reported.add(mid)
    files.atomic_write_text(workdir / "members.jsonl", "".join(
        files.dumps(r) + "\n" for r in self.member_rows(history)))
    final = {}
    for name in sorted({k.split("/")[0] for r in history for k in r if "/" in k}):
      final[name] = np.array([history[-1].get(f"{name}/{m.id}", math.nan) if history else math.nan
                              for m in self.members], np.float64)
    return state, final, history

  def member_rows(self, history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Long-form rows ``{step, member, seed, <hyperparameters>, <metrics>}`` of a history."""
    rows = []
    for r in history:
      for m in self.members:
        vals = {k.split("/")[0]: v for k, v in r.items() if k.endswith("/" + m.id)}
        if vals:
          rows.append({"step": r["step"], "member": m.id, SEED: m.seed, **m.values, **vals})
    return rows

  def aggregate(self, final: Mapping[str, Any], failed: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Per hyperparameter point: mean, std, n and 95% CI over seeds of each metric."""
    return aggregate(self.members, final, failed)

  def table(self, points: Sequence[Mapping[str, Any]]) -> str:
    return table(points, self.grid.keys)

  def report(self, directory: str | pathlib.Path, final: Mapping[str, Any], *, failed: Mapping[str, int] | None = None,
             plot_metrics: Sequence[str] = (), title: str = "") -> dict[str, Any]:
    """Results of a sweep: member rows, per-point aggregates, the table, and plots.

    Writes ``sweep_<metric>_vs_<key>.png`` in ``directory`` for each metric of
    ``plot_metrics`` and each swept key, logs the table and returns
    ``{"members", "points", "table"}`` for ``results.json``.
    """
    return report(self.members, self.grid.keys, directory, final, failed=failed,
                  plot_metrics=plot_metrics, title=title)


def report(members: Sequence[Member], keys: Sequence[str], directory: str | pathlib.Path,
           final: Mapping[str, Any], *, failed: Mapping[str, int] | None = None,
           plot_metrics: Sequence[str] = (), title: str = "") -> dict[str, Any]:
  """See `Sweep.report`."""
  from paperlab import plots  # pylint: disable=g-import-not-at-top
  points = aggregate(members, final, failed)
  text = table(points, keys)
  log.info("Sweep: mean +- std over seeds per point\n%s", text)
  for metric in plot_metrics:
    for key in keys:
      plots.sweep_plot(points, key, metric, pathlib.Path(directory) / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"sweep_{metric}_vs_{key}.png"),
                       title=title)
  return {"members": member_results(members, final, failed), "points": points, "table": text.splitlines()}


def aggregate(members: Sequence[Member], final: Mapping[str, Any],
              failed: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
  """Mean, std (ddof 1), n and 95% CI half-width (Student t) over the seeds of each point.

  Frozen members (``failed``) and non-finite values are left out of ``n``.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  failed = failed or {}
  points: dict[tuple, list[Member]] = {}
  for m in members:
    points.setdefault(tuple(m.values.items()), []).append(m)
  out = []
  for key, ms in points.items():
    row: dict[str, Any] = {"point": dict(key), "seeds": [m.seed for m in ms],
                           "failed": {m.id: failed[m.id] for m in ms if m.id in failed}}
    for name, values in final.items():
      v = np.asarray(values, np.float64)[[m.index for m in ms if m.id not in failed]]
      v = v[np.isfinite(v)]
      n = int(v.size)
      mean = float(v.mean()) if n else math.nan
      std = float(v.std(ddof=1)) if n > 1 else (0.0 if n == 1 else math.nan)
      ci = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
      row[name] = {"mean": mean, "std": std, "n": n, "ci95": ci}
    out.append(row)
  return out


def table(points: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
  """Markdown table: one row per point, ``mean +- std (n)`` per metric."""
  if not points:
    return ""
  metrics = [k for k, v in points[0].items() if isinstance(v, Mapping) and "mean" in v]
  lines = ["| " + " | ".join(list(keys) + metrics) + " |", "|" + "---|" * (len(keys) + len(metrics))]
  for p in points:
    cells = [f"{p['point'][k]:g}" for k in keys]
    cells += [f"{p[m]['mean']:.4g} +- {p[m]['std']:.2g} (n={p[m]['n']})" for m in metrics]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def member_results(members: Sequence[Member], final: Mapping[str, Any],
                   failed: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
  """One row per member: id, seed, hyperparameters, final metrics, failed step (or None)."""
  failed = failed or {}
  return [{"member": m.id, SEED: m.seed, **m.values,
           **{k: float(np.asarray(v)[m.index]) for k, v in final.items()},
           "failed_step": failed.get(m.id)} for m in members]
