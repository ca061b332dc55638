"""Seconds per FedAvg round: vmapped client axis vs a Python loop over clients.

Setup (as in the FedJAX measurement of specs/fed.md, section f): synthetic
MNIST-shaped data, 1000 clients x 64 examples, a 784-256-10 MLP, client SGD
0.1 with batch 32 for one epoch (2 local steps), server SGD 1.0, weights by
example count; 10, 100 and 1000 clients sampled per round.

Variants, all running `fed.algorithms.FedAlgorithm` with the same maths:

* **python loop**: `FedAlgorithm.loop_round`, a Python loop over clients and
  steps of one jitted local step (the way FedJAX's default backend runs
  clients), deltas summed by a jitted add;
* **vmap, one**: `FedAlgorithm.round` with the whole sampled-client axis in one
  `vmap` (every client's weights, gradients and deltas materialised at once);
* **vmap, chunks of 2 / 5**: the same round, a `lax.scan` over chunks of 2
  or 5 clients, one `vmap` per chunk, deltas accumulated in the scan carry
  (each client gathers its own batches from the device-resident data). Small
  chunks win on CPU: a client's weights are 0.8 MB, and a chunk's weights,
  gradients and deltas stay in the 2 MB L2 cache (chunks of 10 or more fall
  out of it and lose about a third of the speed);
* **vmap, chunks of 2, N devices**: the chunks-of-2 round with the sampled
  clients sharded over N CPU devices (`mesh=` with a 'clients' axis), one
  device per core. The benchmark runs in a process with one CPU device per
  core (it re-runs itself in a subprocess when needed); the other variants use
  the first device only.

Every variant's new server params are checked against the loop's. Times are
medians of repeated rounds in one process; compare within a row.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from paperlab import mesh as mesh_lib
from fed import algorithms as alg
from fed import personalization as pz
from fed import simulate as sim

try:
  from benchmarks.common_timing import machine, run_with_cpu_devices
except ImportError:  # run as a plain script
  from common_timing import machine, run_with_cpu_devices

NUM_CLIENTS, EXAMPLES, BATCH, HIDDEN = 1000, 64, 32, 256
SAMPLED = (10, 100, 1000)
CHUNKS = (2, 5)


def _problem():
  rng = np.random.default_rng(0)
  steps = EXAMPLES // BATCH
  x = rng.random((NUM_CLIENTS, steps, BATCH, 784), np.float32)
  y = rng.integers(0, 10, (NUM_CLIENTS, steps, BATCH)).astype(np.int32)
  mask = np.ones((NUM_CLIENTS, steps, BATCH), bool)
  params = {"inp": {"w": jnp.asarray(rng.normal(size=(784, HIDDEN)) / 28, jnp.float32),
                    "b": jnp.zeros(HIDDEN)},
            "out": {"w": jnp.asarray(rng.normal(size=(HIDDEN, 10)) / 16, jnp.float32),
                    "b": jnp.zeros(10)}}
  return sim.ClientData(x, y, mask, mask.sum((1, 2))), params


def _loss(p, x, y):
  h = jax.nn.relu(x @ p["inp"]["w"] + p["inp"]["b"])
  return optax.softmax_cross_entropy_with_integer_labels(h @ p["out"]["w"] + p["out"]["b"], y)


def _timed_side_by_side(variants: dict, repeats: int) -> dict[str, tuple[list, list]]:
  """Wall and process-CPU seconds per call, the variants interleaved within each repeat."""
  for fn in variants.values():
    jax.block_until_ready(fn())  # warm-up
  times = {name: ([], []) for name in variants}
  for _ in range(repeats):
    for name, fn in variants.items():
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      times[name][0].append(time.perf_counter() - t)
      times[name][1].append(time.process_time() - c)
  return times


def _measure(sampled=SAMPLED, repeats: int = 7) -> dict:
  data, params = _problem()
  device_data = sim.ClientData(*(jnp.asarray(a) for a in data))
  part = pz.Partition(params, pz.label_params(params, "none"))
  devices = jax.device_count()
  mesh = mesh_lib.make_mesh({mesh_lib.CLIENTS: devices}) if devices > 1 else None
  # Every device holds all clients' data (sampled clients can be anywhere).
  mesh_data = (jax.device_put(device_data, NamedSharding(mesh, PartitionSpec()))
               if mesh is not None else None)
  rows = []
  for m in sampled:
    def make(chunk, mesh=None):
      a = alg.FedAlgorithm(_loss, part, alg.phases("fedavg", optax.sgd(0.1)),
                           alg.server_optimizer("sgd", 1.0), clients_per_round=m, chunk_size=chunk,
                           mesh=mesh)
      return a, a.init(params, NUM_CLIENTS, jax.random.key(0))
    loop_algo, state = make(None)
    variants = {"python loop": lambda: loop_algo.loop_round(state, device_data)[0].shared}
    for label, chunk in [("vmap, one", None)] + [(f"vmap, chunks of {c}", c) for c in CHUNKS]:
      variants[label] = (lambda a: lambda: a.round(state, device_data)[0].shared)(make(chunk)[0])
    if mesh is not None:
      variants[f"vmap, chunks of {CHUNKS[0]}, {devices} devices"] = (
          lambda a: lambda: a.round(state, mesh_data)[0].shared)(make(CHUNKS[0], mesh)[0])
    reference = variants["python loop"]()
    row = {"clients / round": m}
    for name, fn in variants.items():
      diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(fn()), jax.tree.leaves(reference)))
      if diff > 1e-4:
        raise AssertionError(f"{name} differs from the loop by {diff} at {m} clients.")
    times = _timed_side_by_side(variants, repeats if m < 1000 else max(3, repeats // 2))
    for name in variants:
      row[f"{name} (s)"] = round(statistics.median(times[name][0]), 4)

    def ratio(name, kind):  # median over repeats of loop / variant, within each repeat
      loop_t, var_t = times["python loop"][kind], times[name][kind]
      return round(statistics.median(a / b for a, b in zip(loop_t, var_t)), 2)
    for name in list(variants)[1:]:
      row[f"speed-up, {name.removeprefix('vmap, ')}"] = ratio(name, 0)
    best = max((f"vmap, chunks of {c}" for c in CHUNKS), key=lambda n: ratio(n, 1))
    row["CPU-time speed-up, best chunks, 1 device"] = ratio(best, 1)
    row["CPU ms / client, best chunks, 1 device"] = round(
        1e3 * statistics.median(times[best][1]) / m, 2)
    rows.append(row)
  return {"rows": rows, "devices": devices, "machine": machine()}


def run(sampled=SAMPLED, repeats: int = 7) -> dict:
  """Measures in a process with one CPU device per core (a subprocess if needed)."""
  cores = os.cpu_count() or 1
  if jax.device_count() >= cores or jax.default_backend() != "cpu":
    measured = _measure(sampled, repeats)
  else:
    measured = run_with_cpu_devices(__file__, cores)
  devices = measured["devices"]
  sharded = (f" The last variant shards the sampled clients over the process's {devices} CPU "
             "devices (the 'clients' mesh axis; every device holds all clients' data), one "
             "device per core, so both cores work on separate clients; the other variants and "
             "the loop run on one device, whose XLA ops use both cores."
             if devices > 1 else "")
  return {"title": "FedAvg round: vmapped client axis vs Python loop over clients (784-256-10 MLP)",
          "rows": measured["rows"],
          "notes": (f"{NUM_CLIENTS} clients x {EXAMPLES} examples, batch {BATCH}, 1 epoch "
                    "(2 local steps), client SGD 0.1, server SGD 1.0. One process, variants "
                    f"interleaved: {repeats} repeats ({max(3, repeats // 2)} at 1000 clients) "
                    "after a warm-up; times are medians, speed-ups medians of the per-repeat "
                    "ratios to the loop; every variant's server "
                    "params equal the loop's to 1e-4. Wall times on a shared machine inflate "
                    "long calls; the CPU-time columns (process CPU seconds, all threads) "
                    f"are steadier.{sharded} Machine: {measured['machine']}.")}


if __name__ == "__main__":
  if "--json" in sys.argv:
    print(json.dumps(_measure()))
  else:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from run import render  # noqa: E402
    print(render(run()))
