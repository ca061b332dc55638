"""A resumable training loop shared by every experiment script.

`train` drives a user step function in chunks of ``log_every`` steps, logs
metrics, evaluates, checkpoints, and resumes from the run directory. The loop
knows nothing about models or optimizers: the state is any pytree of arrays.

Exact resume. Chunks always end at multiples of ``log_every`` (absolute step
numbers), so a run restarted from any checkpoint executes the same sequence of
compiled programs on the same data as an uninterrupted one, provided the step
function reads its batches as a pure function of the step number (see
`paperlab.data.batch_indices`). The parameters then match bit for bit.

Failure handling. A non-finite metric stops the run with `NonFiniteError`
before anything is saved, so the last good checkpoint survives. Ctrl-C saves
the state of the last completed chunk before exiting.
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


def train(state: Any, *, step_fn: StepFn, num_steps: int, workdir: str | pathlib.Path,
          log_every: int, checkpoint_every: int | None = None, eval_fn: EvalFn | None = None,
          eval_every: int | None = None, max_to_keep: int = 2, desc: str = "train",
          finite_keys: Iterable[str] | None = None,
          tensorboard: bool = False) -> tuple[Any, list[dict[str, Any]]]:
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
    desc: progress-bar label.
    finite_keys: metrics checked for NaN/inf (None: all of ``step_fn``'s).
    tensorboard: also write TensorBoard events.

  Returns:
    ``(state, history)`` where history lists every metrics record of the run
    (including those written before a restart).

  Raises:
    ValueError: inconsistent step settings (before any compute).
    paperlab.metrics.NonFiniteError: a metric became NaN or infinite.
    paperlab.checkpoint.CheckpointError: an existing checkpoint is unreadable.
  """
  if num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, got {num_steps}.")
  if log_every < 1:
    raise ValueError(f"log_every must be >= 1, got {log_every}.")
  for name, every in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
    if every is not None and (every < 1 or every % log_every):
      raise ValueError(f"{name}={every} must be a positive multiple of log_every={log_every}.")
  workdir = pathlib.Path(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", max_to_keep=max_to_keep)
  start = 0
  restored = ckpt.restore(state)
  if restored is not None:
    state, start = restored
    if start > num_steps:
      raise ValueError(f"{workdir} holds a checkpoint at step {start}, past num_steps={num_steps}. "
                       "Use --fresh or another --workdir.")
    log.info("Resuming at step %d of %d.", start, num_steps)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start, tensorboard=tensorboard)
  finite_keys = None if finite_keys is None else set(finite_keys)
  step = start
  bar = metrics_lib.progress(num_steps, initial=start, desc=desc)
  try:
    while step < num_steps:
      end = min((step // log_every + 1) * log_every, num_steps)
      t0 = time.perf_counter()
      state, chunk = step_fn(state, step, end - step)
      chunk = jax.device_get(dict(chunk))
      metrics_lib.check_finite(end, chunk, finite_keys)
      seconds = time.perf_counter() - t0
      step = end
      record = dict(chunk)
      record["chunk_s"] = seconds
      if eval_fn is not None and _due(step, eval_every, num_steps):
        record.update(jax.device_get(dict(eval_fn(state, step))))
      record = writer.write(step, record)
      if _due(step, checkpoint_every, num_steps):
        ckpt.save(step, state)
      bar.update(step - bar.n)
      bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                       if k not in ("step", "chunk_s") and isinstance(v, float)}, refresh=False)
  except KeyboardInterrupt:
    if step > start and ckpt.latest_step() != step:
      log.warning("Interrupted: saving the state of step %d before exiting.", step)
      ckpt.save(step, state)
    raise
  finally:
    bar.close()
    writer.close()
    ckpt.close()
  return state, writer.records
