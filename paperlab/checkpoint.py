"""Orbax checkpoints of a training state: periodic save, verified resume, bounded history.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager` for the one thing a
training loop needs: save a pytree of arrays every K steps and, at start-up,
restore the newest one into the structure of a freshly initialised state.

Behaviour, as documented to users:

* **No checkpoint** in the directory (or no directory): `restore` returns
  ``None`` and the run starts fresh.
* **Integrity.** Every save records, in the checkpoint's own orbax metadata
  (``custom_metadata``, written inside the step directory before orbax
  finalises it), the CRC-32 of the bytes of every saved array with its dtype
  and shape. `restore` recomputes them on the restored arrays; a mismatch
  (e.g. bytes of a data file overwritten, even with its size kept) is a
  `CheckpointError` naming the step directory and the first bad leaf.
  Checkpoints written before checksums existed restore unverified (a warning).
* **A checkpoint that cannot be read** (truncated files, a state whose
  structure or shapes no longer match the code, a checksum mismatch):
  `restore` raises `CheckpointError` naming the step directory, with the two
  ways out (delete that step to fall back to the previous one, or start over
  with ``--fresh``). It never silently starts over on top of existing work.
* Saves are synchronous and atomic (orbax writes to a temporary directory and
  renames it), so a crash mid-save leaves the previous checkpoint intact.

Typed PRNG key arrays (``jax.random.key``) in the state are stored as their
raw key data and re-wrapped on restore.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import pathlib
import shutil
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from paperlab import files

log = logging.getLogger(__name__)

_CHECKSUMS = "paperlab_checksums"
# In the checkpoint directory: the first step saved with checksums. Every later step must
# have them, so a damaged metadata file cannot turn verification off.
MARKER = "paperlab_checkpoints.json"


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


def checksums(tree: Any) -> dict[str, dict[str, Any]]:
  """``{leaf path: {"crc32", "dtype", "shape"}}`` of the arrays of ``tree``.

  Arrays that this process cannot see whole (multi-process shards) are listed
  without a ``crc32``.
  """
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    entry: dict[str, Any] = {"dtype": str(np.dtype(x.dtype)), "shape": list(np.shape(x))}
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      data = np.ascontiguousarray(np.asarray(x))
      entry["crc32"] = zlib.crc32(data.view(np.uint8).reshape(-1) if data.size else b"")
    out[jax.tree_util.keystr(path)] = entry
  return out


def _first_mismatch(saved: dict[str, dict[str, Any]], restored: dict[str, dict[str, Any]]) -> str | None:
  if set(saved) != set(restored):
    return f"leaves differ: saved {sorted(set(saved) - set(restored))[:3]} vs {sorted(set(restored) - set(saved))[:3]}"
  for path, want in saved.items():
    got = restored[path]
    for field in ("dtype", "shape", "crc32"):
      if field in want and field in got and want[field] != got[field]:
        return f"leaf {path}: {field} {got[field]} != saved {want[field]}"
  return None


@contextlib.contextmanager
def _quiet_background_errors() -> Iterator[None]:
  """Sends the tracebacks of orbax's background reads (after one failed) to the debug log.

  A failed read makes orbax's other pending coroutines and threads die noisily
  on stderr; the restore error itself is raised normally.
  """
  old_unraisable, old_thread = sys.unraisablehook, threading.excepthook
  sys.unraisablehook = lambda info: log.debug("orbax background error: %s", info.exc_value)
  threading.excepthook = lambda args: log.debug("orbax background error: %s", args.exc_value)
  try:
    yield
  except BaseException:
    gc.collect()  # finalise the abandoned coroutines while the hooks are in place
    time.sleep(0.05)
    raise
  finally:
    sys.unraisablehook, threading.excepthook = old_unraisable, old_thread


def _first_line(e: BaseException) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  return (text[:200] + "...") if len(text) > 200 else text


def _fallback_advice(step_dir: pathlib.Path, steps: list[int]) -> str:
  older = [s for s in steps if str(s) != step_dir.name]
  fallback = (f"delete {step_dir} to resume from the previous checkpoint (step {older[-1]})"
              if older else f"delete {step_dir} to start this part of the run over")
  return f"Either {fallback}, or start the whole run over with --fresh."


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
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    """Newest saved step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Saves ``state`` as checkpoint ``step`` with a checksum per array.

    A step is saved once: saving an existing step does nothing.
    """
    if step in self._manager.all_steps():
      return
    storable = _to_storable(state)
    if self._checksums_from() is None:
      files.save_json(self.directory / MARKER, {"checksums_from_step": int(step)})
    self._manager.save(int(step), args=ocp.args.StandardSave(storable), force=True,
                       custom_metadata={_CHECKSUMS: checksums(storable)})
    self._manager.wait_until_finished()
    log.debug("Saved checkpoint %d in %s", step, self.directory)

  def _checksums_from(self) -> int | None:
    path = self.directory / MARKER
    if not path.exists():
      return None
    try:
      return int(files.load_json(path)["checksums_from_step"])
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"{path} is damaged ({e}); delete {self.directory} to start this part "
                            "of the run over, or start the whole run over with --fresh.") from e

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, int] | None:
    """Restores checkpoint ``step`` (default: the newest) into ``template``'s structure.

    Returns:
      ``(state, step)``, or None if there is no checkpoint.

    Raises:
      CheckpointError: the checkpoint exists but cannot be read into
        ``template``, or its arrays do not match their saved checksums.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    step_dir = self.directory / str(step)
    target = _abstract(_to_storable(template))
    try:
      saved_sums = (self._manager.metadata(step).custom_metadata or {}).get(_CHECKSUMS)
      with _quiet_background_errors():
        stored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
      # Orbax may hand back a different container type; keep the caller's.
      stored = jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(stored))
      problem = None if saved_sums is None else _first_mismatch(saved_sums, checksums(stored))
      state = _from_storable(stored, template)
    except Exception as e:  # orbax raises many types for unreadable data
      raise CheckpointError(
          f"Could not restore checkpoint {step} from {step_dir}: {type(e).__name__}: "
          f"{_first_line(e)} {_fallback_advice(step_dir, self.all_steps())}") from e
    if problem is not None:
      raise CheckpointError(
          f"Checkpoint {step_dir} is corrupted: its data do not match the checksums saved with it "
          f"({problem}). {_fallback_advice(step_dir, self.all_steps())}")
    first = self._checksums_from()
    if saved_sums is None and first is not None and step >= first:
      raise CheckpointError(
          f"Checkpoint {step_dir} has lost the checksums saved with it (its orbax metadata file is "
          f"damaged or missing). {_fallback_advice(step_dir, self.all_steps())}")
    if saved_sums is None:
      log.warning("Checkpoint %s has no checksums (written by an older version); restored unverified.",
                  step_dir)
    log.info("Restored checkpoint %d from %s", step, self.directory)
    return state, step

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def copy_steps(src: str | pathlib.Path, dst: str | pathlib.Path, max_step: int | None = None) -> int | None:
  """Copies the checkpoints of ``src`` with step <= ``max_step`` (all: None) to ``dst``.

  Works for `Checkpointer` directories (one sub-directory per step) and
  `save_flat` directories (``step_<n>.npz``). Unfinished saves (temporary
  directories or files) are not copied.

  Returns:
    The newest step copied, or None if none qualified.
  """
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  newest = None
  for entry in sorted(src.iterdir()):
    name = entry.name
    if name == MARKER:
      shutil.copy2(entry, dst / name)
      continue
    flat = name.startswith("step_") and name.endswith(".npz")
    digits = name[5:-4] if flat else name
    if not digits.isdigit():
      continue  # orbax temporaries, flat-save temporaries
    step = int(digits)
    if max_step is not None and step > max_step:
      continue
    if entry.is_dir():
      shutil.copytree(entry, dst / name)
    else:
      shutil.copy2(entry, dst / name)
    newest = step if newest is None else max(newest, step)
  return newest


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
