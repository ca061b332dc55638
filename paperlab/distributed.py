"""Multi-process runs under `jax.distributed`: start-up, global arrays, main-process output.

One program runs in every process (multi-controller JAX). Each process owns
some devices of one global mesh; jitted programs over global arrays run on all
of them together, and XLA moves data between processes (gloo on CPU, NCCL on
GPU, ICI/DCN on TPU). This module holds the few things a script needs on top:

* **Start-up.** `initialize` brings up the runtime from explicit arguments,
  from the environment `paperlab.launch` sets (``PAPERLAB_COORDINATOR``,
  ``PAPERLAB_NUM_PROCESSES``, ``PAPERLAB_PROCESS_ID``), or by JAX's own
  cluster auto-detection (SLURM, Open MPI, Cloud TPU, ...) with ``auto=True``.
  `init_from_argv` does the same from the command-line flags
  ``--coordinator HOST:PORT --num-processes N --process-id I`` or
  ``--distributed`` and hands back the remaining flags. Without any of these
  nothing happens and the run is an ordinary single-process run.
* **Global arrays.** `put` places values every process holds identically
  (parameters built from the same seed, typed PRNG keys) on a sharding; on a
  multi-process sharding `jax.device_put` refuses committed arrays and keys.
  `from_callback` / `from_local` build arrays from data each process loads
  for its own devices only (`local_rows` says which rows those are).
* **Reading results.** `to_host` returns NumPy values of arrays that span
  other processes (`jax.device_get` fails on those).
* **Output.** `is_main` is True in process 0 only: logs, metrics, plots and
  results are written there; checkpoints are written by every process (orbax
  writes each process's shards). `barrier` waits for every process.

Scripts that cannot run in several processes call `require_single_process`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

log = logging.getLogger(__name__)

ENV_COORDINATOR = "PAPERLAB_COORDINATOR"
ENV_NUM_PROCESSES = "PAPERLAB_NUM_PROCESSES"
ENV_PROCESS_ID = "PAPERLAB_PROCESS_ID"
ENV_HEARTBEAT = "PAPERLAB_HEARTBEAT_TIMEOUT"  # seconds without heartbeats before a peer counts as dead

FLAGS_HELP = (
    "Multi-process options (parsed before the config flags):\n"
    "  --coordinator HOST:PORT   address of process 0 (with --num-processes and --process-id)\n"
    "  --num-processes N         processes in the run\n"
    "  --process-id I            this process, 0 <= I < N\n"
    "  --distributed             let jax.distributed.initialize() detect the cluster (SLURM, TPU, ...)\n"
    "  (python -m paperlab.launch -n N script.py ... sets these for N local CPU processes)")


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to start the distributed runtime (all None and ``auto=False``: single process).

  Attributes:
    coordinator: ``HOST:PORT`` of process 0's coordination service.
    num_processes: processes in the run.
    process_id: this process's index.
    auto: let `jax.distributed.initialize` detect the cluster.
    initialization_timeout: seconds to wait for every process to connect.
    heartbeat_timeout: seconds without heartbeats after which a peer counts
      as dead and every process is stopped.
  """

  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False
  initialization_timeout: int = 120
  heartbeat_timeout: int = 30

  @property
  def requested(self) -> bool:
    """True when more than a plain single-process run is asked for."""
    return self.auto or self.coordinator is not None or (self.num_processes or 1) > 1

  def validate(self) -> None:
    """Raises ValueError (naming the flag) on inconsistent settings."""
    given = {"--coordinator": self.coordinator, "--num-processes": self.num_processes,
             "--process-id": self.process_id}
    if self.auto:
      if self.coordinator is not None or self.process_id is not None:
        raise ValueError("--distributed detects the cluster itself; drop --coordinator and "
                         "--process-id (or drop --distributed).")
    elif any(v is not None for v in given.values()):
      missing = [k for k, v in given.items() if v is None]
      if missing:
        raise ValueError(f"Multi-process runs need {', '.join(missing)} as well "
                         "(or --distributed for cluster auto-detection).")
    if self.num_processes is not None and self.num_processes < 1:
      raise ValueError(f"--num-processes must be >= 1, got {self.num_processes}.")
    if self.process_id is not None and not 0 <= self.process_id < (self.num_processes or 1):
      raise ValueError(f"--process-id must be in [0, {self.num_processes}), got {self.process_id}.")
    if self.coordinator is not None:
      host, sep, port = self.coordinator.rpartition(":")
      if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:8476), got "
                         f"{self.coordinator!r}.")
    for name in ("initialization_timeout", "heartbeat_timeout"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1 second, got {getattr(self, name)}.")


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"Environment variable {name} must be an integer, got {value!r}.") from None


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
  """The settings `paperlab.launch` passes through the environment."""
  environ = os.environ if environ is None else environ
  heartbeat = _env_int(environ, ENV_HEARTBEAT)
  return Settings(coordinator=environ.get(ENV_COORDINATOR) or None,
                  num_processes=_env_int(environ, ENV_NUM_PROCESSES),
                  process_id=_env_int(environ, ENV_PROCESS_ID),
                  heartbeat_timeout=heartbeat if heartbeat is not None else Settings.heartbeat_timeout)


def parse_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None
               ) -> tuple[Settings, list[str]]:
  """Splits the multi-process flags off ``argv``; flags override the environment.

  Returns:
    ``(settings, remaining_argv)``.

  Raises:
    ValueError: an ill-formed value (e.g. ``--num-processes two``).
  """
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  parser.add_argument("--coordinator", default=None)
  parser.add_argument("--num-processes", default=None)
  parser.add_argument("--process-id", default=None)
  parser.add_argument("--distributed", action="store_true")
  known, rest = parser.parse_known_args(list(argv))
  flags = {}
  for name in ("num_processes", "process_id"):
    value = getattr(known, name)
    if value is not None:
      try:
        flags[name] = int(value)
      except ValueError:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer, got {value!r}.") from None
  if known.coordinator is not None:
    flags["coordinator"] = known.coordinator
  settings = settings_from_env(environ)
  if known.distributed:
    settings = dataclasses.replace(settings, coordinator=None, process_id=None, auto=True)
  return dataclasses.replace(settings, **flags), rest


def initialize(settings: Settings | None = None) -> bool:
  """Starts the multi-process runtime if asked for; returns whether it runs.

  ``settings=None`` reads the environment of `paperlab.launch`. Must come
  before any JAX computation. Calling it again is a no-op.

  Raises:
    ValueError: inconsistent settings, or ``auto`` on a machine where JAX
      detects no cluster.
  """
  settings = settings_from_env() if settings is None else settings
  settings.validate()
  if jax.distributed.is_initialized():
    return True
  if not settings.requested:
    return False
  kwargs = dict(initialization_timeout=settings.initialization_timeout,
                heartbeat_timeout_seconds=settings.heartbeat_timeout)
  if settings.auto:
    try:
      jax.distributed.initialize(num_processes=settings.num_processes, **kwargs)
    except ValueError as err:
      raise ValueError(f"--distributed: JAX detected no cluster here ({err}); pass --coordinator, "
                       "--num-processes and --process-id instead.") from err
  else:
    jax.distributed.initialize(coordinator_address=settings.coordinator,
                               num_processes=settings.num_processes,
                               process_id=settings.process_id, **kwargs)
  log.info("Process %d of %d: %d local of %d devices.", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  return True


def init_from_argv(argv: Sequence[str]) -> list[str]:
  """`initialize` from the multi-process flags of ``argv``; returns the other flags."""
  settings, rest = parse_argv(argv)
  initialize(settings)
  return rest


def require_single_process(script: str, argv: Sequence[str] | None = None) -> None:
  """Stops a script that cannot run in several processes when several are asked for.

  Raises:
    SystemExit: with a one-line message.
  """
  settings, _ = parse_argv(list(argv) if argv is not None else [])
  if settings.requested or process_count() > 1:
    raise SystemExit(f"{script} runs in a single process only: run it without paperlab.launch "
                     "-n N / --num-processes / --distributed (multi-process scripts: dion.py, "
                     "fed_partial.py, baseline_mlp.py).")


# ---------------------------------------------------------------------------
# Who am I


def process_count() -> int:
  """Processes in the run (1 without `initialize`, without touching the backend)."""
  return jax.process_count() if jax.distributed.is_initialized() else 1


def process_index() -> int:
  return jax.process_index() if jax.distributed.is_initialized() else 0


def is_main() -> bool:
  """True in the process that writes logs, metrics, plots and results (process 0)."""
  return process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op in one process)."""
  if process_count() > 1:
    multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------
# Global arrays


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _shardings_like(tree: Any, shardings: Sharding | Any) -> Any:
  if isinstance(shardings, Sharding):
    return jax.tree.map(lambda _: shardings, tree)
  return shardings


def put(tree: Any, shardings: Sharding | Any) -> Any:
  """Places a pytree whose values every process holds identically on ``shardings``.

  ``shardings`` is one sharding for every leaf or a matching tree. Each
  process fills only its own devices' shards. Typed PRNG keys go through
  their raw key data. Leaves that are already global arrays with the target
  sharding are kept as they are.
  """
  def one(x, sharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if _is_key(x):
      data = put(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # global to global: a reshard
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(one, tree, _shardings_like(tree, shardings))


def local_rows(sharding: Sharding, global_shape: Sequence[int], axis: int = 0) -> slice:
  """The contiguous range along ``axis`` that this process's devices hold.

  Raises:
    ValueError: the process's devices hold a non-contiguous set of rows (a
      mesh whose device order interleaves processes along ``axis``).
  """
  global_shape = tuple(global_shape)
  size = global_shape[axis]
  rows = set()
  for index in sharding.addressable_devices_indices_map(global_shape).values():
    start, stop, _ = index[axis].indices(size) if index else (0, size, 1)
    rows.update(range(start, stop))
  lo, hi = (min(rows), max(rows) + 1) if rows else (0, 0)
  if len(rows) != hi - lo:
    raise ValueError(f"Process {process_index()} holds non-contiguous rows of axis {axis} "
                     f"(shape {global_shape}); build the mesh so each process owns a block.")
  return slice(lo, hi)


def from_local(sharding: Sharding, local: Any, global_shape: Sequence[int]) -> jax.Array:
  """A global array from this process's block (the rows `local_rows` names)."""
  return jax.make_array_from_process_local_data(sharding, np.asarray(local), tuple(global_shape))


def from_callback(sharding: Sharding, global_shape: Sequence[int],
                  fetch: Callable[[tuple[slice, ...]], Any]) -> jax.Array:
  """A global array whose shards ``fetch(index)`` loads, for this process's devices only.

  ``index`` is a tuple of slices into the global shape.
  """
  global_shape = tuple(global_shape)
  def data(index):
    index = tuple(index) + (slice(None),) * (len(global_shape) - len(index))
    return np.asarray(fetch(index))
  return jax.make_array_from_callback(global_shape, sharding, data)


def from_rows(sharding: Sharding, host: np.ndarray) -> jax.Array:
  """A global array from a host array, of which each process reads only its devices' shards."""
  return from_callback(sharding, host.shape, lambda index: host[index])


def to_host(tree: Any) -> Any:
  """NumPy values of a pytree of (possibly multi-process) arrays, on every process.

  Arrays that span other processes are gathered (`process_allgather`); every
  process must call this for such arrays (it is a collective).
  """
  def one(x):
    if _is_key(x):
      x = jax.random.key_data(x)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(one, tree)
