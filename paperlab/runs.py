"""Run directories: create or reopen, fork from another run, write honest results.

A run directory holds ``config.json`` (the config's fields, plus
``forked_from`` for a fork), ``log.txt``, one sub-directory per training loop
(``checkpoints/``, ``metrics.jsonl``), plots and ``results.json``.

Forking (``--fork-from RUN_DIR[:STEP]``). A run stopped by a NaN keeps its
last good checkpoints, but a rerun with a lower learning rate is a different
config and is refused in that directory. `prepare_run` with ``fork_from``
starts a new run directory from the parent's checkpoints instead: every
checkpoint store of the parent (each training loop's ``checkpoints/``, each
flat ``step_<n>.npz`` store) is copied up to ``STEP`` (default: all), with the
loop's metrics, so each loop resumes from its newest copied checkpoint under
the new hyperparameters. Results, plots and caches are not copied; they are
recomputed. ``config.json`` records the parent, the step and the changed
fields. Rerunning the same command resumes the fork.

Honest results. `Run.write_results` writes strict JSON: a NaN or infinite
value becomes ``null`` and its path is listed under ``null_reasons``. A
headline value that is missing, NaN or infinite (or a text value reading
``nan``) marks the results ``"status": "failed"`` and raises `ResultError`, so
the script exits non-zero; only rows marked ``"optional"`` may be undefined.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from paperlab import checkpoint as checkpoint_lib
from paperlab import distributed
from paperlab import files

log = logging.getLogger(__name__)

RUNS_ROOT = pathlib.Path("runs")
FORK_KEY = "forked_from"  # config.json entry that is provenance, not config


class ResultError(RuntimeError):
  """The run finished but its headline result is missing or not a number."""


def to_dict(cfg: Any) -> dict[str, Any]:
  """A dataclass config as a JSON-ready dict (tuples become lists)."""
  return json.loads(files.dumps(dataclasses.asdict(cfg)))


def diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
  """``"key: old -> new"`` for every differing (nested) entry."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out += diff(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return out


_NAN_TEXT = re.compile(r"\b[+-]?(nan|inf)\b", re.IGNORECASE)


def _headline_problem(value: Any) -> str | None:
  if value is None:
    return "missing"
  if isinstance(value, float) and not math.isfinite(value):
    return "not a number" if math.isnan(value) else "infinite"
  if isinstance(value, str) and _NAN_TEXT.search(value):
    return f"reads {value!r}"
  return None


@dataclasses.dataclass(frozen=True)
class Run:
  """A run directory: config, metrics, checkpoints, results and plots of one run."""

  workdir: pathlib.Path
  paper: str
  preset: str
  sweep: Any = None  # the `paperlab.config.SweepRequest` of the command line (None: not parsed)

  def path(self, name: str) -> pathlib.Path:
    return self.workdir / name

  def write_results(self, results: Mapping[str, Any], headline: Sequence[Mapping[str, Any]], *,
                    timing: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Writes ``results.json`` (strict JSON, atomically) and logs the headline rows.

    Args:
      results: everything the run measured (deterministic given the config).
      headline: rows ``{"metric": str, "value": number or str, "note": str}``
        for the summary table. A row with ``"optional": True`` is a derived
        value that may be undefined (e.g. a ratio over a zero gain): when it
        is missing or NaN it is written as ``null`` with a note, and the run
        does not fail.
      timing: wall-clock measurements, kept apart under ``"timing"`` (they
        differ between otherwise identical runs).

    Raises:
      ValueError: a row lacks ``metric`` or ``value``.
      ResultError: a headline value is missing, NaN or infinite (the file
        is still written, with ``"status": "failed"``).
    """
    rows, problems = [], []
    for row in headline:
      if "metric" not in row or "value" not in row:
        raise ValueError(f"Headline row {row!r} needs 'metric' and 'value'.")
      problem = _headline_problem(row["value"])
      note = row.get("note", "")
      if problem and row.get("optional", False):
        note = f"{note}; undefined: value {problem}" if note else f"undefined: value {problem}"
      elif problem:
        problems.append(f"{row['metric']!r} is {problem}")
        note = f"{note}; FAILED: value {problem}" if note else f"FAILED: value {problem}"
      rows.append({"metric": row["metric"], "value": row["value"], "note": note})
    if not rows:
      problems.append("no headline value was produced")
    config_path = self.path("config.json")
    payload = {"paper": self.paper, "preset": self.preset,
               "status": "failed" if problems else "ok", "problems": problems,
               "config": files.load_json(config_path) if config_path.exists() else None,
               "headline": rows, "results": dict(results), "timing": dict(timing or {})}
    clean, replaced = files.to_strict_json(payload)
    clean["null_reasons"] = {k: f"was {v}" for k, v in replaced.items()}
    path = self.path("results.json")
    if distributed.is_main():  # one writer in a multi-process run
      files.save_json(path, clean)
      log.info("Wrote %s", path)
      for row in rows:
        log.info("%s: %s (%s)", row["metric"], row["value"], row["note"])
    if problems:
      raise ResultError(f"The run failed: headline {'; '.join(problems)}. See {path} and "
                        f"{self.path('log.txt')}.")
    return path


def parse_fork(spec: str) -> tuple[pathlib.Path, int | None]:
  """``"RUN_DIR"`` or ``"RUN_DIR:STEP"`` -> ``(path, step or None)``."""
  head, sep, tail = spec.rpartition(":")
  if sep and tail.isdigit() and head:
    return pathlib.Path(head), int(tail)
  return pathlib.Path(spec), None


def _stores(root: pathlib.Path) -> list[pathlib.Path]:
  """Checkpoint stores under a run directory: loop ``checkpoints/`` dirs and flat stores."""
  out = []
  for d in sorted(p for p in root.rglob("*") if p.is_dir()):
    if d.name == "checkpoints" or any(d.glob("step_*.npz")):
      if not any(parent in out for parent in d.parents):
        out.append(d)
  return out


def fork_run(parent: pathlib.Path, step: int | None, workdir: pathlib.Path) -> dict[str, int | None]:
  """Copies the parent's checkpoint stores (up to ``step``) and loop metrics into ``workdir``.

  Returns:
    ``{store path relative to the run: newest step copied (None: none)}``.
  """
  copied = {}
  for store in _stores(parent):
    rel = store.relative_to(parent)
    copied[str(rel)] = checkpoint_lib.copy_steps(store, workdir / rel, step)
    if store.name == "checkpoints":
      for name in ("metrics.jsonl", "metrics.csv"):
        if (store.parent / name).exists():
          shutil.copy2(store.parent / name, workdir / rel.parent / name)
  log.info("Forked %s (up to step %s) into %s: %s", parent, "latest" if step is None else step,
           workdir, copied)
  return copied


def prepare_run(cfg: Any, *, paper: str, preset: str, workdir: str | pathlib.Path | None = None,
                fresh: bool = False, fork_from: str | None = None) -> Run:
  """Creates (or reopens, or forks) the run directory and saves ``config.json`` there.

  Args:
    cfg: the validated config.
    paper: script name (default directory ``runs/<paper>/<preset>``).
    preset: preset name.
    workdir: run directory (a fork defaults to ``<RUN_DIR>-fork``).
    fresh: delete the run directory first.
    fork_from: ``"RUN_DIR[:STEP]"``: start from that run's checkpoints (see
      the module docstring).

  In a multi-process run every process checks, process 0 alone deletes,
  copies and writes, and the others wait for it.

  Raises:
    ValueError: the directory holds a run with a different config; ``fresh``
      was asked for a non-empty directory that is not a run directory; the
      fork's parent is not a run of this script, or is the directory itself.
  """
  values = to_dict(cfg)
  origin = None
  if fork_from:
    parent, step = parse_fork(fork_from)
    parent_config = parent / "config.json"
    if not parent_config.exists():
      raise ValueError(f"--fork-from {fork_from}: {parent} is not a run directory (no config.json).")
    old = files.load_json(parent_config)
    if set(old) - {FORK_KEY} != set(values):
      raise ValueError(f"--fork-from {fork_from}: {parent} is not a run of {paper} "
                       "(its config has other fields).")
    workdir = pathlib.Path(workdir) if workdir else parent.with_name(parent.name + "-fork")
    if workdir.resolve() == parent.resolve():
      raise ValueError("--fork-from needs a --workdir other than the run it forks.")
    origin = {"run": str(parent), "step": step,
              "changes": diff({k: v for k, v in old.items() if k != FORK_KEY}, values)}
  workdir = pathlib.Path(workdir) if workdir else RUNS_ROOT / paper / preset
  config_path = workdir / "config.json"
  main = distributed.is_main()
  if fresh and workdir.exists():
    if any(workdir.iterdir()) and not config_path.exists():
      raise ValueError(f"--fresh refuses to delete {workdir}: it is not a run directory (no config.json).")
    distributed.barrier("prepare_run:fresh")
    if main:
      shutil.rmtree(workdir)
    distributed.barrier("prepare_run:deleted")
  if config_path.exists():
    old = files.load_json(config_path)
    recorded = old.pop(FORK_KEY, None)
    if origin is not None and recorded is not None:
      recorded_origin = {k: recorded.get(k) for k in ("run", "step")}
      if recorded_origin != {"run": origin["run"], "step": origin["step"]}:
        raise ValueError(f"{workdir} is a fork of {recorded_origin}, not of {fork_from}. Pass "
                         "--fresh to start that fork over, or --workdir DIR for a new one.")
    elif origin is not None:
      raise ValueError(f"{workdir} already holds a run; fork into a new --workdir (or add --fresh).")
    changes = diff(old, values)
    if changes:
      raise ValueError(
          f"{workdir} holds a run with a different config ({'; '.join(changes)}). "
          "Pass --fresh to start that run over, --workdir DIR for a new run, or "
          f"--fork-from {workdir} --workdir DIR to continue it with the new settings.")
    log.info("Resuming the run in %s.", workdir)
    origin = recorded
  elif origin is not None:
    if workdir.exists() and any(workdir.iterdir()):
      raise ValueError(f"--fork-from: {workdir} is not empty; pick a new --workdir.")
    distributed.barrier("prepare_run:fork")
    origin["copied"] = fork_run(parent, step, workdir) if main else None
  distributed.barrier("prepare_run:checked")
  if main:
    workdir.mkdir(parents=True, exist_ok=True)
    files.save_json(config_path, {**values, **({FORK_KEY: origin} if origin is not None else {})})
  distributed.barrier("prepare_run:written")
  return Run(workdir=workdir, paper=paper, preset=preset)
