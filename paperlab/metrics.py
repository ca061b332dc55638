"""Metric logging, the NaN guard, and one progress bar per script run.

`MetricWriter` appends one JSON record per call to ``metrics.jsonl`` and the
same values in long form (``step,name,value``) to ``metrics.csv``; optionally
to TensorBoard through ``tensorboardX``. Reopened after a restart at step
``s``, it drops records newer than ``s`` (they belong to work that was lost
with the crash and will be redone) and rewrites both files atomically, so the
files never hold a step twice and a line torn by a crash is dropped. In a
multi-process run only process 0 writes the files; the others keep the same
records in memory.

`nonfinite_leaves` is the state half of the NaN guard: one jitted reduction
over every floating leaf (no host copy of the state) that names the leaves
holding a NaN or an infinity. `check_finite` is the metrics half.

`RunProgress` is the one progress bar of a script run: every training loop
and phase of the script advances it, its ETA covers the whole run, and every
``log_every_s`` seconds of wall time (also while a long jitted call blocks the
main thread) it writes a progress line to the log. Only process 0 of a
multi-process run shows it. `start_heartbeat` (started by
`paperlab.config.cli` for every script run) covers the phases outside any
`RunProgress`: data loading, figures, results. When nothing was logged for
``every_s`` seconds it logs a line naming the last thing logged, so a run's
``log.txt`` is never silent longer than that. Both intervals default to
``$PAPERLAB_PROGRESS_EVERY_S`` (30 s when unset).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import pathlib
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from paperlab import distributed, files

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
  """A tracked metric or a state leaf became NaN or infinite; the run was stopped.

  Attributes:
    step: the step whose chunk produced the non-finite values.
    workdir: the training loop's directory (None outside `paperlab.loop`).
    last_good: the step of the newest checkpoint kept (None: no checkpoint).
  """

  def __init__(self, message: str, *, step: int | None = None,
               workdir: pathlib.Path | None = None, last_good: int | None = None):
    super().__init__(message)
    self.step, self.workdir, self.last_good = step, workdir, last_good


def bad_metrics(metrics: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, float]:
  """The (selected) scalar metrics that are NaN or infinite."""
  keys = None if keys is None else set(keys)
  return {k: float(v) for k, v in metrics.items()
          if (keys is None or k in keys) and not isinstance(v, str) and np.ndim(v) == 0
          and not math.isfinite(float(v))}


def check_finite(step: int, metrics: Mapping[str, Any], keys: Iterable[str] | None = None) -> None:
  """Raises `NonFiniteError` if any (selected) scalar metric is NaN or infinite."""
  bad = bad_metrics(metrics, keys)
  if bad:
    raise NonFiniteError(
        f"Non-finite metrics at step {step}: {bad}. The run was stopped before saving anything "
        "of this step; the last good checkpoint is kept.", step=step)


def _is_float_leaf(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_leaves(tree: Any) -> list[str]:
  """Paths of the floating-point leaves of ``tree`` that hold a NaN or an inf.

  One jitted all-finite reduction per leaf, stacked into a vector of booleans:
  only that vector is copied to the host. Integer, boolean and PRNG-key leaves
  are not checked.
  """
  flat = [(path, x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if _is_float_leaf(x)]
  if not flat:
    return []
  flags = np.asarray(jax.device_get(_finite_flags([x for _, x in flat])))
  return [jax.tree_util.keystr(path) for (path, _), ok in zip(flat, flags) if not ok]


def _scalar(v: Any) -> float | int | str | None:
  if isinstance(v, str):
    return v
  arr = np.asarray(v)
  if arr.ndim != 0:
    raise ValueError(f"Metric values must be scalars, got shape {arr.shape}.")
  if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
    return int(arr)
  return float(arr)


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """All records of a ``metrics.jsonl`` file ([] if missing); torn lines are skipped."""
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
        log.warning("Skipping a torn line in %s (a crash while it was written).", path)
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
    self.sync()
    if tensorboard:
      try:
        import tensorboardX  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ValueError("tensorboard=True needs the tensorboardX package: pip install tensorboardX") from e
      self._tb = tensorboardX.SummaryWriter(str(self.workdir / "tb"))

  @staticmethod
  def _csv_rows(records: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    for r in records:
      for k, v in r.items():
        if k != "step":
          w.writerow([r["step"], k, "" if v is None else v])
    return buf.getvalue()

  def sync(self) -> None:
    """Rewrites both files from the records in memory (atomically)."""
    files.atomic_write_text(self.jsonl_path, "".join(files.dumps(r) + "\n" for r in self.records))
    files.atomic_write_text(self.csv_path, "step,name,value\r\n" + self._csv_rows(self.records))

  @staticmethod
  def make_record(step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``{"step": step, **metrics}`` with Python scalars (non-finite values as None)."""
    record, _ = files.to_strict_json({"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}})
    return record

  def append(self, record: dict[str, Any]) -> dict[str, Any]:
    """Appends a `make_record` record: in memory first, then one line per file."""
    self.records.append(record)
    if not self._writes:
      return record
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(record, allow_nan=False) + "\n")
    with open(self.csv_path, "a", newline="") as f:
      f.write(self._csv_rows([record]))
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, record["step"])
    return record

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Appends one record; returns it (with Python scalars; non-finite values as None)."""
    return self.append(self.make_record(step, metrics))

  def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric over the records written so far."""
    pairs = [(r["step"], r[name]) for r in self.records if name in r]
    if not pairs:
      return np.zeros(0, int), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps), np.asarray([np.nan if v is None else v for v in values], dtype=float)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


PROGRESS_ENV = "PAPERLAB_PROGRESS_EVERY_S"


def progress_every_s() -> float:
  """Seconds between progress lines: ``$PAPERLAB_PROGRESS_EVERY_S`` or 30."""
  value = os.environ.get(PROGRESS_ENV, "")
  try:
    every = float(value) if value else 30.0
  except ValueError as e:
    raise ValueError(f"${PROGRESS_ENV} must be a number of seconds, got {value!r}.") from e
  if not every > 0:
    raise ValueError(f"${PROGRESS_ENV} must be > 0, got {value!r}.")
  return every


class _Heartbeat(logging.Handler):
  """Remembers the last record logged; a thread logs a line after ``every_s`` of silence."""

  def __init__(self, desc: str, every_s: float):
    super().__init__(logging.INFO)
    self.desc, self.every_s = desc, every_s
    self.t0 = self.last_time = time.monotonic()
    self.last_message = "start"
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="paperlab-heartbeat", daemon=True)
    self._thread.start()

  def emit(self, record: logging.LogRecord) -> None:
    self.last_time = time.monotonic()
    if not record.getMessage().startswith("progress:"):
      self.last_message = record.getMessage().splitlines()[0][:120]

  def _run(self) -> None:
    while not self._stop.wait(min(self.every_s, 1.0)):
      quiet = time.monotonic() - self.last_time
      if quiet >= self.every_s:
        log.info("progress: %s still working, elapsed %s, nothing logged for %.0f s (last: %s)",
                 self.desc, format_seconds(time.monotonic() - self.t0), quiet, self.last_message)

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()


_HEARTBEAT: list[_Heartbeat] = []


def start_heartbeat(desc: str, every_s: float | None = None) -> None:
  """Logs a progress line whenever nothing was logged for ``every_s`` seconds.

  One per process: a second call restarts it under the new name. Only
  process 0 of a multi-process run starts it.

  Args:
    desc: the run's name in the line (usually the script's name).
    every_s: seconds of silence before a line (default `progress_every_s`).
  """
  stop_heartbeat()
  if not distributed.is_main():
    return
  beat = _Heartbeat(desc, progress_every_s() if every_s is None else every_s)
  logging.getLogger().addHandler(beat)
  _HEARTBEAT.append(beat)


def stop_heartbeat() -> None:
  """Stops the heartbeat of `start_heartbeat` (no-op when none runs)."""
  while _HEARTBEAT:
    beat = _HEARTBEAT.pop()
    logging.getLogger().removeHandler(beat)
    beat.stop()


def longest_silence(log_text: str) -> tuple[int, str]:
  r"""The longest gap between consecutive timestamped lines of a ``log.txt``.

  Returns ``(seconds, the line before the gap)``; timestamps are ``HH:MM:SS``
  (1 s resolution; a run over midnight counts the wrap as 0 s).

  >>> longest_silence("10:00:00 INFO a: x\n10:00:31 INFO a: y\n10:00:32 INFO a: z")
  (31, '10:00:00 INFO a: x')
  """
  stamps = []
  for line in log_text.splitlines():
    m = re.match(r"(\d\d):(\d\d):(\d\d) ", line)
    if m:
      stamps.append((int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]), line))
  gaps = [(max(b - a, 0), line) for (a, line), (b, _) in zip(stamps, stamps[1:])]
  return max(gaps, key=lambda g: g[0]) if gaps else (0, "")


def _disabled(disable: bool | None) -> bool:
  if disable is None:
    return os.environ.get("TQDM_DISABLE", "") not in ("", "0") or not distributed.is_main()
  return disable


def progress(total: int, *, initial: int = 0, desc: str = "", disable: bool | None = None):
  """A plain tqdm progress bar; quiet in non-interactive logs (updates every 10 s).

  Prefer `RunProgress` for a script run. Set ``TQDM_DISABLE=1`` to turn it off.
  Only process 0 of a multi-process run shows it.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  interactive = sys.stderr.isatty()
  return tqdm(total=total, initial=initial, desc=desc, disable=_disabled(disable), dynamic_ncols=True,
              mininterval=0.5 if interactive else 10.0, leave=True)


def format_seconds(seconds: float | None) -> str:
  """``H:MM:SS`` (``?`` when unknown)."""
  if seconds is None or not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunProgress:
  """One progress bar and one ETA for a whole script run.

  The run's work is ``total`` units (steps, rounds, simulated seconds...), the
  sum over every arm, cell and seed. Computed work is reported with `advance`,
  work found already done (a resumed checkpoint, a cached cell) with `skip`.
  The ETA is ``remaining / rate``. Until a second chunk of work is reported
  the rate is ``computed units / wall time since start``; from then on it is
  measured from the end of the first computed chunk, so the start-up and the
  first compilation (often most of the first chunk's time) do not inflate the
  ETA of the rest. It assumes the remaining units cost what the units computed
  since then did, evaluation included. Every ``log_every_s`` seconds a
  background thread logs one line ``progress: <desc> <done>/<total> <unit>
  (<percent>), elapsed <t>, ETA <t>, phase <name>``, so no phase is silent for
  longer than that, even while a long jitted call holds the main thread.

  Args:
    total: units of work of the whole run (> 0).
    desc: label (usually the script's name).
    unit: name of the unit, for the log line.
    log_every_s: seconds between progress lines in the log (> 0; default
      `progress_every_s`).
    disable: hide the terminal bar (default: ``$TQDM_DISABLE``); the log
      lines are written either way.
  """

  def __init__(self, total: float, *, desc: str = "", unit: str = "step",
               log_every_s: float | None = None, disable: bool | None = None):
    log_every_s = progress_every_s() if log_every_s is None else log_every_s
    if not total > 0:
      raise ValueError(f"RunProgress total must be > 0, got {total}.")
    if not log_every_s > 0:
      raise ValueError(f"log_every_s must be > 0, got {log_every_s}.")
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    self.total, self.desc, self.unit, self.log_every_s = float(total), desc, unit, log_every_s
    self.done = 0.0
    self.computed = 0.0
    self.phase_name: str | None = None
    self._t0 = time.monotonic()
    self._last_log = self._t0
    self._first: tuple[float, float] | None = None  # (time, computed units) after the first chunk
    interactive = sys.stderr.isatty()
    self._bar = tqdm(total=self.total, desc=desc, disable=_disabled(disable), dynamic_ncols=True,
                     mininterval=0.5 if interactive else 10.0, leave=True,
                     bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}{postfix}]")
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._tick, name="paperlab-progress", daemon=True)
    self._thread.start()

  # -- accounting
  def advance(self, units: float, postfix: Mapping[str, Any] | None = None) -> None:
    """Counts ``units`` of computed work (they also set the rate of the ETA)."""
    self.done += units
    self.computed += units
    if self._first is None and units > 0:
      self._first = (time.monotonic(), self.computed)
    self._refresh(postfix)

  def set_total(self, total: float) -> None:
    """Revises the run's total units (a better estimate of work whose size is learnt as it runs)."""
    if not total > 0:
      raise ValueError(f"RunProgress total must be > 0, got {total}.")
    self.total = float(total)
    self._bar.total = self.total
    self._refresh(None)

  def skip(self, units: float) -> None:
    """Counts ``units`` of work that was already done (resumed or cached)."""
    self.done += units
    self._refresh(None)

  def elapsed(self) -> float:
    return time.monotonic() - self._t0

  def eta(self) -> float | None:
    """Seconds left, or None before any work was computed."""
    remaining = max(self.total - self.done, 0.0)
    if remaining == 0:
      return 0.0
    if self.computed <= 0:
      return None
    if self._first is not None and self.computed > self._first[1]:
      t_first, units_first = self._first
      return remaining * (time.monotonic() - t_first) / (self.computed - units_first)
    return remaining * self.elapsed() / self.computed

  def status(self) -> str:
    """The progress line (without the ``progress:`` prefix)."""
    pct = 100.0 * min(self.done / self.total, 1.0)
    line = (f"{self.desc + ' ' if self.desc else ''}{self.done:.0f}/{self.total:.0f} {self.unit} "
            f"({pct:.1f}%), elapsed {format_seconds(self.elapsed())}, ETA {format_seconds(self.eta())}")
    return line + (f", phase {self.phase_name}" if self.phase_name else "")

  @contextlib.contextmanager
  def phase(self, name: str, units: float = 0.0) -> Iterator[None]:
    """Names the work in progress; logs its start and end; then advances ``units``."""
    outer, self.phase_name = self.phase_name, name
    t0 = time.monotonic()
    log.info("phase: %s", name)
    try:
      yield
    finally:
      self.phase_name = outer
    log.info("phase done: %s (%.1f s)", name, time.monotonic() - t0)
    if units:
      self.advance(units)

  # -- output
  def _refresh(self, postfix: Mapping[str, Any] | None) -> None:
    eta = f"ETA {format_seconds(self.eta())}"
    if postfix:
      eta += ", " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in postfix.items())
    self._bar.n = min(self.done, self.total)
    self._bar.set_postfix_str(eta, refresh=False)
    self._bar.update(0)

  def log_status(self) -> None:
    self._last_log = time.monotonic()
    log.info("progress: %s", self.status())

  def _tick(self) -> None:
    while not self._stop.wait(min(self.log_every_s, 1.0)):
      if time.monotonic() - self._last_log >= self.log_every_s:
        self.log_status()

  def close(self) -> None:
    """Stops the log thread and closes the bar (idempotent)."""
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join()
    self._bar.close()

  def __enter__(self) -> "RunProgress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
