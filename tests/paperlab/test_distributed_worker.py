"""The program the multi-process tests launch (no tests of its own).

Every scenario builds its inputs the multi-process way (each process makes
only its own devices' shards; `paperlab.distributed.put` / `from_callback` /
`from_rows`) on a mesh over *all* devices of the run, runs a few jitted steps,
and returns NumPy results (`paperlab.distributed.to_host`). The same function
runs in one process with 8 devices (the reference, inside pytest) and, through
`paperlab.launch`, in 2 processes x 4 devices::

    python -m paperlab.launch -n 2 --devices-per-process 4 \\
        tests/paperlab/test_distributed_worker.py match OUT CKPT_FROM_ONE

``match`` runs every scenario, writes ``OUT/results.npz`` (process 0), saves
a checkpoint under ``OUT/ckpt`` (every process) and restores the one a single
process wrote under ``CKPT_FROM_ONE``. ``die N`` runs collectives until
process N kills itself.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
for _path in (str(ROOT), str(ROOT / "scripts")):
  if _path not in sys.path:
    sys.path.insert(0, _path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from paperlab import checkpoint, distributed  # noqa: E402
from paperlab import mesh as mesh_lib  # noqa: E402

DATA, FSDP, TP, CLIENTS = mesh_lib.DATA, mesh_lib.FSDP, mesh_lib.TP, mesh_lib.CLIENTS
STEPS = 3


def _flat(prefix: str, tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(distributed.to_host(tree))[0]
  return {f"{prefix}{jax.tree_util.keystr(path)}": np.asarray(x) for path, x in leaves}


def dion_fsdp_tp() -> dict[str, np.ndarray]:
  """The char-GPT of scripts/dion.py, Dion r=1/4, fsdp=4 x tp=2, 3 steps."""
  import dion as script  # pylint: disable=g-import-not-at-top  (scripts/dion.py)
  cfg = script.Config(d_model=32, layers=1, heads=2, seq_len=16, batch_size=8, eval_windows=8,
                      mesh="fsdp=4,tp=2")
  mesh = mesh_lib.make_mesh(cfg.mesh)
  ids = np.random.default_rng(0).integers(0, 20, 4000).astype(np.int32)
  graphdef, tx, state = script.init_train_state(cfg, "dion-1/4", STEPS, 20, mesh)
  xs, ys = script.train_batches(ids, cfg.batch_size, cfg.seq_len, cfg.seed, 0, STEPS, mesh)
  assert xs.sharding.spec == P(None, (FSDP,), None) or xs.sharding.spec == P(None, FSDP, None)
  state, metrics = script.make_chunk(graphdef, tx)(state, xs, ys)
  return {"loss": distributed.to_host(metrics["loss"]), **_flat("params", state["params"])}


def dp_compressed_sync() -> dict[str, np.ndarray]:
  """Dion with compressed data-parallel sync over 8 replicas (``data_axis``), 3 steps."""
  from optim import _dion as dion_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh({DATA: 8})
  rows = NamedSharding(mesh, P(DATA))
  tx = dion_lib.scale_by_dion(0.25, data_axis=DATA)
  shape = (32, 48)
  state = distributed.put(jax.tree.map(lambda a: jnp.stack([a] * 8), tx.init(jnp.zeros(shape))), rows)

  def local(g, st):
    u, st = tx.update(g[0], jax.tree.map(lambda a: a[0], st))
    return u[None], jax.tree.map(lambda a: a[None], st)

  step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(DATA), P(DATA)),
                               out_specs=(P(DATA), P(DATA))))
  out = {}
  for t in range(STEPS):
    grads = distributed.from_callback(rows, (8,) + shape, lambda index, t=t: np.stack([
        np.random.default_rng([t, r]).standard_normal(shape, np.float32)
        for r in range(8)[index[0]]]))
    u, state = step(grads, state)
    out[f"update_{t}"] = distributed.to_host(u)
  out["momentum"] = distributed.to_host(state.momentum)
  out["q"] = distributed.to_host(state.q)
  return out


def _fed_problem(mesh):
  import fed  # pylint: disable=g-import-not-at-top
  num, steps, batch, dim, classes = 16, 3, 4, 6, 3
  rng = np.random.default_rng(0)
  host = fed.ClientData(rng.standard_normal((num, steps, batch, dim)).astype(np.float32),
                        rng.integers(0, classes, (num, steps, batch)).astype(np.int32),
                        rng.random((num, steps, batch)) < 0.8, np.full(num, steps * batch))
  sharding = NamedSharding(mesh, P(CLIENTS))
  data = fed.ClientData(*(distributed.from_rows(sharding, np.asarray(a)) for a in host))
  params = {"w": jnp.asarray(rng.standard_normal((dim, classes)), jnp.float32),
            "b": jnp.zeros(classes)}
  loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y)
  part = fed.Partition(params, fed.label_params(params, "none"))
  algo = fed.fedavg(loss, part, optax.sgd(0.3), clients_per_round=6, mesh=mesh)
  return algo, params, data, num


def fedavg_rounds() -> dict[str, np.ndarray]:
  """Two client-sharded FedAvg rounds (16 clients over clients=8, 6 sampled per round)."""
  mesh = mesh_lib.make_mesh({CLIENTS: 8})
  algo, params, data, num = _fed_problem(mesh)
  state = distributed.put(algo.init(params, num, jax.random.key(3)), mesh_lib.replicated(mesh))
  out = {}
  for r in range(2):
    state, metrics = algo.round(state, data)
    out[f"loss_{r}"] = distributed.to_host(metrics["loss_0"])
  return {**out, **_flat("shared", state.shared)}


def checkpoint_state(seed: int):
  """A state with FSDP x TP-sharded, replicated, integer and typed-key leaves."""
  mesh = mesh_lib.make_mesh({FSDP: 4, TP: 2})
  rng = np.random.default_rng(seed)
  tree = {"w": rng.standard_normal((16, 8)).astype(np.float32),
          "v": rng.standard_normal(5).astype(np.float32), "step": np.int32(seed),
          "key": jax.random.key(seed)}
  shardings = {"w": NamedSharding(mesh, P(FSDP, TP)), "v": mesh_lib.replicated(mesh),
               "step": mesh_lib.replicated(mesh), "key": mesh_lib.replicated(mesh)}
  return distributed.put(tree, shardings)


def checkpoint_values(state) -> dict[str, np.ndarray]:
  out = distributed.to_host({k: v for k, v in state.items() if k != "key"})
  out["key_draw"] = distributed.to_host(jax.random.normal(state["key"], (3,)))
  return out


def scenarios() -> dict[str, np.ndarray]:
  """Every numeric scenario, keyed ``<scenario>/<name>``."""
  results = {}
  for name, fn in (("dion", dion_fsdp_tp), ("dp", dp_compressed_sync), ("fed", fedavg_rounds)):
    t0 = time.perf_counter()
    results.update({f"{name}/{k}": v for k, v in fn().items()})
    print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
  return results


def run_match(out_dir: pathlib.Path, from_one: pathlib.Path) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  results = scenarios()
  rows = distributed.local_rows(NamedSharding(mesh_lib.make_mesh({CLIENTS: 8}), P(CLIENTS)), (16, 3))
  (out_dir / f"rows_p{distributed.process_index()}.txt").write_text(f"{rows.start} {rows.stop}")
  with checkpoint.Checkpointer(out_dir / "ckpt") as ck:  # written by every process
    ck.save(7, checkpoint_state(7))
  with checkpoint.Checkpointer(from_one) as ck:  # written by one process
    restored, step = ck.restore(checkpoint_state(0))
  results.update({f"restored/{k}": v for k, v in checkpoint_values(restored).items()})
  results["restored/at"] = np.int32(step)
  if distributed.is_main():
    np.savez(out_dir / "results.npz", **results)
  distributed.barrier("worker:done")


def run_die(victim: int) -> None:
  """Collectives in a loop until process ``victim`` kills itself (SIGKILL) after 5 of them."""
  mesh = mesh_lib.make_mesh({DATA: jax.device_count()})
  total = jax.jit(jnp.sum, out_shardings=mesh_lib.replicated(mesh))
  rows = NamedSharding(mesh, P(DATA))
  for i in range(100000):
    x = distributed.from_callback(rows, (jax.device_count(),), lambda index: np.ones(
        len(range(jax.device_count())[index[0]]), np.float32))
    float(total(x))
    if i == 5:
      print("collectives are running", flush=True)
      if distributed.process_index() == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)


if __name__ == "__main__":
  jax.config.update("jax_default_matmul_precision", "highest")  # as in tests/conftest.py
  distributed.initialize()
  if sys.argv[1] == "match":
    run_match(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]))
  elif sys.argv[1] == "die":
    run_die(int(sys.argv[2]))
  else:
    raise SystemExit(f"unknown scenario {sys.argv[1]!r}")
