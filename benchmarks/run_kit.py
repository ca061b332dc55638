"""What the run kit's safety checks cost: the state NaN guard and the checkpoint checksums.

State: an AdamW train state of ``DIM x DIM`` matrices (parameters + two
moments, float32). Rows, timed side by side in alternating rounds (medians):

* the loop's NaN guard, `paperlab.metrics.nonfinite_leaves` (one jitted
  all-finite reduction, a vector of booleans copied to the host), against one
  jitted AdamW update of the same state (the guard runs once per chunk of
  ``log_every`` steps, the update once per step), and a host copy of the
  state (``jax.device_get``; on a CPU backend it shares the buffers, so it is
  cheap there and only shows what a host-side check would start from);
* `paperlab.checkpoint.Checkpointer.save` (orbax save + a CRC-32 of every
  array in the step metadata) against the orbax save alone, and the checksum
  computation by itself;
* `Checkpointer.restore` (verifies the checksums) against orbax restore alone.
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from common_timing import machine  # noqa: E402
from paperlab import checkpoint, metrics  # noqa: E402

DIM, MATRICES, ROUNDS = 1024, 4, 7


def _state():
  keys = jax.random.split(jax.random.key(0), MATRICES)
  params = {f"w{i}": jax.random.normal(k, (DIM, DIM)) for i, k in enumerate(keys)}
  return {"params": params, "opt_state": optax.adamw(1e-3).init(params)}


def _time(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def run() -> dict:
  state = _state()
  n = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size"))
  storable = checkpoint._to_storable(state)  # pylint: disable=protected-access
  tmp = pathlib.Path(tempfile.mkdtemp())
  ours = checkpoint.Checkpointer(tmp / "ours", max_to_keep=1)
  plain = ocp.CheckpointManager(tmp / "plain", options=ocp.CheckpointManagerOptions(
      max_to_keep=1, enable_async_checkpointing=False))
  tx = optax.adamw(1e-3)
  update = jax.jit(lambda s: optax.apply_updates(s["params"], tx.update(s["params"], s["opt_state"],
                                                                         s["params"])[0]))
  variants = {
      "one AdamW update of the state (jitted)": lambda: update(state),
      "NaN guard: nonfinite_leaves (jitted reduction)": lambda: metrics.nonfinite_leaves(state),
      "host copy of the state (jax.device_get)": lambda: jax.device_get(state),
      "checksums only (CRC-32 of every array)": lambda: checkpoint.checksums(storable),
  }
  times = {k: [] for k in variants}
  save_t = {"Checkpointer.save (with checksums)": [], "orbax save alone": []}
  restore_t = {"Checkpointer.restore (verifies checksums)": [], "orbax restore alone": []}
  target = checkpoint._abstract(storable)  # pylint: disable=protected-access
  for name, fn in variants.items():  # warm-up (compiles the guard)
    fn()
  for r in range(ROUNDS):
    for name, fn in variants.items():
      times[name].append(_time(fn))
    save_t["Checkpointer.save (with checksums)"].append(_time(lambda: ours.save(r, state)))
    save_t["orbax save alone"].append(_time(lambda: (plain.save(r, args=ocp.args.StandardSave(storable)),
                                                     plain.wait_until_finished())))
    restore_t["Checkpointer.restore (verifies checksums)"].append(_time(lambda: ours.restore(state)[0]))
    restore_t["orbax restore alone"].append(_time(
        lambda: plain.restore(plain.latest_step(), args=ocp.args.StandardRestore(target))))
  ours.close()
  plain.close()
  med = {k: statistics.median(v) * 1e3 for k, v in {**times, **save_t, **restore_t}.items()}
  ref = "one AdamW update of the state (jitted)"
  rows = []
  for name in times:
    rows.append({"operation": name, "ms (median)": round(med[name], 2),
                 "ratio": round(med[name] / med[ref], 3), "relative to": "AdamW update"})
  for group in (save_t, restore_t):
    base = list(group)[1]
    for name in group:
      rows.append({"operation": name, "ms (median)": round(med[name], 2),
                   "ratio": round(med[name] / med[base], 3), "relative to": base})
  return {"title": f"Run-kit safety checks on a {n / 1e6:.1f}M-float AdamW state",
          "command": ("taskset -c 0 env OMP_NUM_THREADS=1 XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1' python benchmarks/run.py run_kit"),
          "rows": rows,
          "notes": (f"{machine()}. {MATRICES} matrices {DIM}x{DIM} float32 with AdamW moments "
                    f"({n * 4 / 2**20:.0f} MiB). Medians of {ROUNDS} alternating rounds. The guard runs "
                    "once per training chunk (every log_every steps); checksums once per save and "
                    "restore. Command: `taskset -c 0 env OMP_NUM_THREADS=1 XLA_FLAGS='--xla_cpu_multi_"
                    "thread_eigen=false intra_op_parallelism_threads=1' python benchmarks/run.py run_kit`.")}
