"""A resumable training loop shared by every experiment script.

`train` drives a user step function in chunks of ``log_every`` steps, logs
metrics, evaluates, checkpoints, and resumes from the run directory. The loop
knows nothing about models or optimizers: the state is any pytree of arrays.

Exact resume. Chunks always end at multiples of ``log_every`` (absolute step
numbers), so a run restarted from any checkpoint executes the same sequence of
compiled programs on the same data as an uninterrupted one, provided the step
function reads its batches as a pure function of the step number (see
`paperlab.data.batch_indices`). The parameters then match bit for bit.

One commit per chunk. A chunk's new state, its step number and its metrics
record become the loop's current ``(step, state, record)`` in one assignment,
and only after the chunk passed every check: its training metrics, its
evaluation (when due) and every floating leaf of the new state (parameters and
optimizer state, one jitted all-finite reduction) are finite. Only committed
chunks are written: the record goes to ``metrics.jsonl`` first, then the
checkpoint (when due). A checkpoint labelled step ``s`` therefore always holds
the state after step ``s``, and the metrics file always has the record of
every checkpointed step.

Failure handling.
* A NaN or inf (metric, eval value or state leaf) stops the run with
  `paperlab.metrics.NonFiniteError` naming the values or leaves; nothing of
  that chunk is written, so the newest checkpoint is the last good one (and is
  finite leaf by leaf).
* Ctrl-C (KeyboardInterrupt) at any point (in the step function, in
  `jax.device_get`, while writing metrics or a checkpoint) writes the committed
  record if it is missing, then saves the committed state under its own step,
  and re-raises. A second Ctrl-C during that save leaves the previous
  checkpoint (orbax renames a finished save into place).
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax

from paperlab import checkpoint as checkpoint_lib
from paperlab import metrics as metrics_lib

log = logging.getLogger(__name__)

StepFn = Callable[[Any, int, int], tuple[Any, Mapping[str, Any]]]
EvalFn = Callable[[Any, int], Mapping[str, Any]]


def _due(step: int, every: int | None, last: int) -> bool:
  return step == last or (every is not None and step % every == 0)


def _guard(step: int, record: Mapping[str, Any], state: Any, finite_keys: set[str] | None,
           check_state: bool) -> None:
  """Raises `NonFiniteError` if a checked metric or a state leaf is not finite."""
  bad = metrics_lib.bad_metrics(record, finite_keys)
  leaves = metrics_lib.nonfinite_leaves(state) if check_state else []
  if not bad and not leaves:
    return
  parts = []
  if bad:
    parts.append(f"metrics {bad}")
  if leaves:
    shown = ", ".join(leaves[:5]) + (f" and {len(leaves) - 5} more" if len(leaves) > 5 else "")
    parts.append(f"{len(leaves)} state leaves ({shown})")
  raise metrics_lib.NonFiniteError(f"Non-finite values after step {step}: {'; '.join(parts)}.",
                                   step=step)


def train(state: Any, *, step_fn: StepFn, num_steps: int, workdir: str | pathlib.Path,
          log_every: int, checkpoint_every: int | None = None, eval_fn: EvalFn | None = None,
          eval_every: int | None = None, max_to_keep: int = 2, desc: str = "train",
          finite_keys: Iterable[str] | None = None, tensorboard: bool = False,
          check_state: bool = True, progress: metrics_lib.RunProgress | None = None,
          progress_weight: float = 1.0) -> tuple[Any, list[dict[str, Any]]]:
  """Runs ``step_fn`` until ``num_steps``, resuming from ``workdir`` if possible.

  Args:
    state: freshly initialised state (also the template for restoring).
    step_fn: ``(state, step, n) -> (state, metrics)``: performs ``n`` steps
      starting at absolute step ``step``; metrics are scalars (e.g. the mean
      loss over the chunk).
    num_steps: total number of steps of the run.
    workdir: run directory; checkpoints go to ``workdir/checkpoints``.
    log_every: chunk length; one metrics record per chunk.
    checkpoint_every: save every this many steps (a multiple of ``log_every``;
      None: only at the end). The final state is always saved.
    eval_fn: ``(state, step) -> metrics``, called every ``eval_every`` steps
      (a multiple of ``log_every``; None: only at the end) and at the end.
    eval_every: see ``eval_fn``.
    max_to_keep: checkpoints kept on disk.
    desc: name of this loop in the progress log.
    finite_keys: metrics (of ``step_fn`` or ``eval_fn``) that must be finite
      (None: every numeric metric).
    tensorboard: also write TensorBoard events.
    check_state: also require every floating leaf of the state to be finite.
    progress: the script run's `paperlab.metrics.RunProgress` (None: this
      loop makes its own, of ``num_steps`` steps).
    progress_weight: units of ``progress`` per step of this loop.

  Returns:
    ``(state, history)`` where history lists every metrics record of the run
    (including those written before a restart).

  Raises:
    ValueError: inconsistent step settings (before any compute).
    paperlab.metrics.NonFiniteError: a metric or a state leaf became NaN or
      infinite (the newest checkpoint is the last good one).
    paperlab.checkpoint.CheckpointError: an existing checkpoint is unreadable.
  """
  if num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, got {num_steps}.")
  if log_every < 1:
    raise ValueError(f"log_every must be >= 1, got {log_every}.")
  for name, every in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
    if every is not None and (every < 1 or every % log_every):
      raise ValueError(f"{name}={every} must be a positive multiple of log_every={log_every}.")
  if not progress_weight >= 0:
    raise ValueError(f"progress_weight must be >= 0, got {progress_weight}.")
  workdir = pathlib.Path(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", max_to_keep=max_to_keep)
  start = 0
  restored = ckpt.restore(state)
  if restored is not None:
    state, start = restored
    if start > num_steps:
      ckpt.close()
      raise ValueError(f"{workdir} holds a checkpoint at step {start}, past num_steps={num_steps}. "
                       "Use --fresh or another --workdir.")
    log.info("%s: resuming at step %d of %d.", desc, start, num_steps)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start, tensorboard=tensorboard)
  keys = None if finite_keys is None else set(finite_keys)
  own_progress = progress is None
  if own_progress:
    progress = metrics_lib.RunProgress(max(num_steps, 1), desc=desc)
  progress.skip(start * progress_weight)
  committed: tuple[int, Any, dict[str, Any] | None] = (start, state, None)
  try:
    with progress.phase(desc):
      while committed[0] < num_steps:
        step, current, _ = committed
        end = min((step // log_every + 1) * log_every, num_steps)
        t0 = time.perf_counter()
        new_state, chunk = step_fn(current, step, end - step)
        record = dict(jax.device_get(dict(chunk)))
        if eval_fn is not None and _due(end, eval_every, num_steps):
          record.update(jax.device_get(dict(eval_fn(new_state, end))))
        _guard(end, record, new_state, keys, check_state)
        record["chunk_s"] = time.perf_counter() - t0
        committed = (end, new_state, writer.make_record(end, record))
        writer.append(committed[2])
        if _due(end, checkpoint_every, num_steps):
          ckpt.save(end, new_state)
        progress.advance((end - step) * progress_weight,
                         {k: v for k, v in committed[2].items()
                          if k not in ("step", "chunk_s") and "/" not in k and isinstance(v, float)})
  except KeyboardInterrupt:
    _save_committed(committed, start, writer, ckpt)
    raise
  except metrics_lib.NonFiniteError as e:
    last = ckpt.latest_step()
    kept = (f"the last good checkpoint (step {last}) is kept in {ckpt.directory}" if last is not None
            else "no checkpoint had been saved, so a rerun starts this part over")
    raise metrics_lib.NonFiniteError(f"{e} The run was stopped in {workdir}; {kept}.",
                                     step=e.step, workdir=workdir, last_good=last) from None
  finally:
    if own_progress:
      progress.close()
    writer.close()
    ckpt.close()
  return committed[1], writer.records


def _save_committed(committed: tuple[int, Any, dict[str, Any] | None], start: int,
                    writer: metrics_lib.MetricWriter, ckpt: checkpoint_lib.Checkpointer) -> None:
  """On Ctrl-C: makes the files hold the committed chunk (record first, then state)."""
  step, state, record = committed
  if step <= start:
    return
  if record is not None and (not writer.records or writer.records[-1]["step"] < step):
    writer.records.append(record)
  writer.sync()
  if ckpt.latest_step() == step:
    return
  log.warning("Interrupted: saving the state of step %d before exiting.", step)
  try:
    ckpt.save(step, state)
  except Exception as e:  # pylint: disable=broad-except
    log.warning("Could not save step %d (%s: %s); the previous checkpoint (step %s) is kept.",
                step, type(e).__name__, e, ckpt.latest_step())
