"""Orbax checkpoints of a training state: periodic save, resume, bounded history.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager` for the one thing a
training loop needs: save a pytree of arrays every K steps and, at start-up,
restore the newest one into the structure of a freshly initialised state.

Behaviour, as documented to users:

* **No checkpoint** in the directory (or no directory): `restore` returns
  ``None`` and the run starts fresh.
* **A checkpoint that cannot be read** (truncated files, a state whose
  structure or shapes no longer match the code): `restore` raises
  `CheckpointError` naming the step directory, with the two ways out (delete
  that step to fall back to the previous one, or start over with ``--fresh``).
  It never silently starts over on top of existing work.
* Saves are synchronous and atomic (orbax writes to a temporary directory and
  renames it), so a crash mid-save leaves the previous checkpoint intact.

Typed PRNG key arrays (``jax.random.key``) in the state are stored as their
raw key data and re-wrapped on restore.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the requested state."""


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_storable(stored: Any, template: Any) -> Any:
  """Re-wraps PRNG keys and places every array exactly as the template's leaf."""
  def back(saved, like):
    if _is_key(like):
      saved = jax.random.wrap_key_data(jax.device_put(saved, like.sharding), impl=jax.random.key_impl(like))
    elif isinstance(like, jax.Array):
      saved = jax.device_put(saved, like.sharding)
    return saved
  return jax.tree.map(back, stored, template)


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) for restoring into ``tree``'s layout."""
  def spec(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
  return jax.tree.map(spec, tree)


class Checkpointer:
  """Saves and restores one pytree state under ``directory``.

  Args:
    directory: where the step sub-directories go (created on first save).
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """Newest saved step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Saves ``state`` as checkpoint ``step`` (overwriting nothing: a step is saved once)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(int(step), args=ocp.args.StandardSave(_to_storable(state)), force=True)
    self._manager.wait_until_finished()
    log.debug("Saved checkpoint %d in %s", step, self.directory)

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, int] | None:
    """Restores checkpoint ``step`` (default: the newest) into ``template``'s structure.

    Returns:
      ``(state, step)``, or None if there is no checkpoint.

    Raises:
      CheckpointError: the checkpoint exists but cannot be read into ``template``.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    target = _abstract(_to_storable(template))
    try:
      stored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
      state = _from_storable(stored, template)
      # Orbax may hand back a different container type; keep the caller's.
      state = jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(state))
    except Exception as e:  # orbax raises many types for unreadable data
      raise CheckpointError(
          f"Could not restore checkpoint {step} from {self.directory / str(step)}: "
          f"{type(e).__name__}: {str(e)[:500]}\n"
          f"Either delete {self.directory / str(step)} to resume from the previous checkpoint "
          f"(steps present: {self.all_steps()}), or start over with --fresh.") from e
    log.info("Restored checkpoint %d from %s", step, self.directory)
    return state, step

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ---------------------------------------------------------------------------
# Free-form states (event queues, variable-length buffers)


def save_flat(directory: str | pathlib.Path, step: int, arrays: dict[str, Any], meta: dict[str, Any],
              *, max_to_keep: int = 2) -> pathlib.Path:
  """Saves a flat ``{name: array}`` dict plus JSON metadata as ``step_<step>.npz``.

  For states whose structure changes as they run (a simulator's event queue,
  variable-length buffers), which a fixed-template orbax restore cannot
  describe. The write is atomic (temporary file + rename); older files beyond
  ``max_to_keep`` are removed.
  """
  import json  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"step_{int(step)}.npz"
  tmp = directory / f".tmp_step_{int(step)}.npz"
  payload = {k: np.asarray(v) for k, v in arrays.items()}
  payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  with open(tmp, "wb") as f:
    np.savez(f, **payload)
  tmp.replace(path)
  for old in flat_steps(directory)[:-max_to_keep]:
    (directory / f"step_{old}.npz").unlink(missing_ok=True)
  return path


def flat_steps(directory: str | pathlib.Path) -> list[int]:
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.stem.split("_", 1)[1]) for p in directory.glob("step_*.npz"))


def load_flat(directory: str | pathlib.Path) -> tuple[int, dict[str, np.ndarray], dict[str, Any]] | None:
  """The newest `save_flat` checkpoint as ``(step, arrays, meta)``, or None.

  Raises:
    CheckpointError: the newest file cannot be read.
  """
  import json  # pylint: disable=g-import-not-at-top
  steps = flat_steps(directory)
  if not steps:
    return None
  path = pathlib.Path(directory) / f"step_{steps[-1]}.npz"
  try:
    with np.load(path) as z:
      arrays = {k: z[k] for k in z.files if k != "__meta__"}
      meta = json.loads(bytes(z["__meta__"]).decode())
  except Exception as e:  # zip, pickle and JSON errors alike
    raise CheckpointError(f"Could not read checkpoint {path}: {type(e).__name__}: {e}. Delete it to "
                          "resume from the previous one, or start over with --fresh.") from e
  return steps[-1], arrays, meta
