"""Bytes moved by collectives in one sharded optimizer update: Dion vs Muon.

Parameters: 12 float32 matrices of Flax shape (1024, 4096), laid out with
``NamedSharding`` on an 8-device mesh ``fsdp=4, tp=2`` (FSDP on fan_in, TP on
fan_out). Dion gets the same partition specs and follows its orientation rule;
``optax.contrib.muon`` is jitted on the same sharded inputs and partitioned by
GSPMD. The update is only compiled, not run: the count is the per-device result
size of every all-reduce / all-gather / reduce-scatter / all-to-all /
collective-permute in the optimized HLO (see `optim.collectives`), a static
count (the untaken branch of Dion's NaN guard is included). Needs 8 devices: on
a smaller host it re-runs itself in a subprocess with 8 simulated CPU devices.
"""

from __future__ import annotations

import json
import os
import sys

import jax

try:
  from benchmarks.common_timing import run_with_cpu_devices
except ImportError:  # run as a plain script
  from common_timing import run_with_cpu_devices

SHAPE = (1024, 4096)
COUNT = 12
MESH = {"fsdp": 4, "tp": 2}


def _measure() -> dict:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from paperlab import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from optim import collectives  # pylint: disable=g-import-not-at-top
  from optim import _dion as D  # pylint: disable=g-import-not-at-top

  mesh = mesh_lib.make_mesh(MESH)
  specs = {f"w{i}": P(mesh_lib.FSDP, mesh_lib.TP) for i in range(COUNT)}
  params = {k: jax.device_put(jnp.zeros(SHAPE), NamedSharding(mesh, s)) for k, s in specs.items()}
  variants = {"optax.contrib.muon (GSPMD)": optax.contrib.muon(0.02)}
  for label, fraction in [("1", 1.0), ("1/4", 0.25), ("1/16", 1 / 16)]:
    variants[f"dion rank {label}"] = D.scale_by_dion(fraction, mesh=mesh, specs=specs)
  rows = []
  for name, tx in variants.items():
    state = jax.jit(tx.init)(params)
    hlo = jax.jit(tx.update).lower(params, state, params).compile().as_text()
    found = collectives.collectives(hlo)
    rows.append({"optimizer": name, "collectives": len(found),
                 "MB per step per device": round(sum(c.bytes for c in found) / 2**20, 3),
                 "largest collective (elements)": max((c.elements for c in found), default=0)})
  base = rows[0]["MB per step per device"]
  for row in rows:
    row["ratio to Muon"] = round(row["MB per step per device"] / base, 4)
  return {"rows": rows, "full_matrix_elements": SHAPE[0] * SHAPE[1],
          "devices": jax.device_count()}


def run() -> dict:
  """Compiles every variant on 8 devices and returns the benchmark dict."""
  if jax.device_count() >= 8:
    measured = _measure()
  else:
    measured = run_with_cpu_devices(__file__, 8)
  notes = (f"{COUNT} matrices {SHAPE} on mesh {MESH} ({measured['devices']} devices); one full "
           f"matrix shard-free would be {measured['full_matrix_elements']} elements. "
           "Acceptance: Dion rank 1/4 < 1/2 and rank 1/16 < 1/8 of Muon's bytes. "
           "Bytes are per-device result sizes of the collectives in the compiled HLO "
           "(a static count); the update is compiled, not run.")
  return {"title": "Dion vs Muon: collective bytes per sharded update (fsdp=4, tp=2)",
          "rows": measured["rows"], "notes": notes}


if __name__ == "__main__":
  if "--json" in sys.argv:
    print(json.dumps(_measure()))
  else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import render  # pylint: disable=g-import-not-at-top
    print(render(run()))
