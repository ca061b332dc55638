"""Files that are never torn and JSON that is always strict.

Every result, metrics, summary and JSON file of a run is written with
`atomic_write_text` (or `save_json`): the text goes to a temporary file in the
same directory, is flushed to disk, and is renamed over the target. A crash or
Ctrl-C at any moment leaves either the old file or the new one, never half of
one.

JSON is strict (``allow_nan=False``): a NaN or infinite float becomes ``null``
and `to_strict_json` reports where, so callers can record the reason next to
the value (``results.json`` does, under ``"null_reasons"``). A damaged JSON file
raises `DamagedFileError`, which names the file and how to recover.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any


def _default_mode() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


_DEFAULT_MODE = _default_mode()  # what open(path, "w") would give


class DamagedFileError(ValueError):
  """A file of a run exists but cannot be parsed."""


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Writes ``text`` to ``path`` through a temporary file and a rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else _DEFAULT_MODE)  # mkstemp: 0600
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path


def _plain(obj: Any) -> Any:
  """NumPy / JAX scalars and arrays, dataclasses and paths as JSON-ready values."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return dataclasses.asdict(obj)
  if isinstance(obj, pathlib.PurePath):
    return str(obj)
  if hasattr(obj, "tolist"):
    return obj.tolist()
  raise TypeError(f"Cannot write {type(obj).__name__} as JSON.")


def to_strict_json(obj: Any) -> tuple[Any, dict[str, str]]:
  """``obj`` with every non-finite float replaced by None.

  Returns:
    ``(clean, replaced)`` where ``replaced`` maps the path of each replaced
    value (``"runs[0].final"``) to what it was (``"nan"``, ``"inf"``, ``"-inf"``).
  """
  replaced: dict[str, str] = {}

  def walk(x, path):
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
      return x
    if isinstance(x, float):
      if math.isfinite(x):
        return x
      replaced[path or "."] = "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
      return None
    if isinstance(x, Mapping):
      return {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [walk(v, f"{path}[{i}]") for i, v in enumerate(x)]
    return walk(_plain(x), path)

  return walk(obj, ""), replaced


def dumps(obj: Any, *, indent: int | None = None) -> str:
  """Strict JSON text of ``obj`` (non-finite floats written as null)."""
  clean, _ = to_strict_json(obj)
  return json.dumps(clean, indent=indent, allow_nan=False)


def save_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
  """Writes ``obj`` as strict, indented JSON, atomically."""
  return atomic_write_text(path, dumps(obj, indent=2) + "\n")


def load_json(path: str | os.PathLike) -> Any:
  """Reads a JSON file.

  Raises:
    FileNotFoundError: no such file.
    DamagedFileError: the file is not valid JSON (e.g. truncated); the message
      names it.
  """
  path = pathlib.Path(path)
  text = path.read_text()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DamagedFileError(
        f"{path} is damaged and cannot be read as JSON ({e}). Delete it to have it rebuilt "
        "(a rerun recomputes it from the checkpoints), or start over with --fresh.") from e
