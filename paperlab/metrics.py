"""Metric logging, a NaN guard and a progress bar.

`MetricWriter` appends one JSON record per call to ``metrics.jsonl`` and the
same values in long form (``step,name,value``) to ``metrics.csv``; optionally
to TensorBoard through ``tensorboardX``. Reopened after a restart at step
``s``, it drops records newer than ``s`` (they belong to work that was lost
with the crash and will be redone), so the files never hold a step twice.
In a multi-process run only process 0 writes the files; the others keep the
same records in memory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from paperlab import distributed

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
  """A tracked metric became NaN or infinite; the run was stopped."""


def check_finite(step: int, metrics: Mapping[str, Any], keys: Iterable[str] | None = None) -> None:
  """Raises `NonFiniteError` if any (selected) scalar metric is NaN or infinite."""
  bad = {k: v for k, v in metrics.items()
         if (keys is None or k in keys) and not isinstance(v, str) and np.ndim(v) == 0
         and not math.isfinite(float(v))}
  if bad:
    raise NonFiniteError(
        f"Non-finite metrics at step {step}: {bad}. The run was stopped; the last good "
        "checkpoint is kept. Lower the learning rate or check the data, then rerun to resume "
        "from that checkpoint (or --fresh to start over).")


def _scalar(v: Any) -> float | int | str:
  if isinstance(v, str):
    return v
  arr = np.asarray(v)
  if arr.ndim != 0:
    raise ValueError(f"Metric values must be scalars, got shape {arr.shape}.")
  return int(arr) if np.issubdtype(arr.dtype, np.integer) else float(arr)


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """All records of a ``metrics.jsonl`` file ([] if missing)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    line = line.strip()
    if line:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        log.warning("Skipping a truncated line in %s", path)
  return records


class MetricWriter:
  """Writes scalar metrics to ``<workdir>/metrics.jsonl`` and ``metrics.csv``.

  Args:
    workdir: run directory.
    resume_step: if given, records with ``step > resume_step`` are removed.
    tensorboard: also write TensorBoard event files (needs ``tensorboardX``).
  """

  def __init__(self, workdir: str | pathlib.Path, *, resume_step: int | None = None,
               tensorboard: bool = False):
    self.workdir = pathlib.Path(workdir)
    self.jsonl_path = self.workdir / "metrics.jsonl"
    self.csv_path = self.workdir / "metrics.csv"
    self._writes = distributed.is_main()
    self.records = read_jsonl(self.jsonl_path)
    if resume_step is None:
      self.records = []
    else:
      self.records = [r for r in self.records if r.get("step", -1) <= resume_step]
    distributed.barrier("metric_writer:read")  # every process read the file before it changes
    self._tb = None
    if not self._writes:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._rewrite()
    if tensorboard:
      try:
        import tensorboardX  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ValueError("tensorboard=True needs the tensorboardX package: pip install tensorboardX") from e
      self._tb = tensorboardX.SummaryWriter(str(self.workdir / "tb"))

  def _rewrite(self) -> None:
    with open(self.jsonl_path, "w") as f:
      for r in self.records:
        f.write(json.dumps(r) + "\n")
    with open(self.csv_path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["step", "name", "value"])
      for r in self.records:
        for k, v in r.items():
          if k != "step":
            w.writerow([r["step"], k, v])

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Appends one record; returns it (with Python scalars)."""
    record = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self.records.append(record)
    if not self._writes:
      return record
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    with open(self.csv_path, "a", newline="") as f:
      w = csv.writer(f)
      for k, v in record.items():
        if k != "step":
          w.writerow([record["step"], k, v])
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and not isinstance(v, str):
          self._tb.add_scalar(k, v, record["step"])
    return record

  def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric over the records written so far."""
    pairs = [(r["step"], r[name]) for r in self.records if name in r]
    if not pairs:
      return np.zeros(0, int), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps), np.asarray(values, dtype=float)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def progress(total: int, *, initial: int = 0, desc: str = "", disable: bool | None = None):
  """A tqdm progress bar with ETA; quiet in non-interactive logs (updates every 10 s).

  Set ``TQDM_DISABLE=1`` to turn it off. Only process 0 of a multi-process
  run shows it.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  if disable is None:
    disable = os.environ.get("TQDM_DISABLE", "") not in ("", "0") or not distributed.is_main()
  interactive = sys.stderr.isatty()
  return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True,
              mininterval=0.5 if interactive else 10.0, leave=True)
