"""Sweep engine vs a loop of jitted single runs, side by side in one process.

Each member trains an MLP with SGD + momentum (learning rate injected through
`optax.inject_hyperparams`, a grid of learning rates x seeds) on synthetic
data. The loop runs every member as one jitted ``lax.scan`` over all its
steps (compiled once, reused by every member); the engine runs all members as
one `paperlab.sweep.Sweep` program with its default chunk size (reported) on
one device. Both are timed warm (compiled), alternating loop and engine call
by call, and the medians are reported. The table in ``results.md`` is
measured pinned to one core and single-threaded (`COMMAND`).

    python benchmarks/sweep.py                  # the CPU cases
    python benchmarks/sweep.py --all            # also 784-256-10 x 256 members (accelerator sized)
    python benchmarks/sweep.py --chunks 1 4 16  # the engine at these chunk sizes too
    python benchmarks/sweep.py --profile        # where the engine's step time goes (XLA ops)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, __file__.rsplit("/", 2)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import common_timing  # noqa: E402
from paperlab import sweep  # noqa: E402

# (name, sizes, batch, steps, members)
CASES = [("16-32-10", (16, 32, 10), 32, 2000, 16), ("16-32-10", (16, 32, 10), 32, 2000, 256),
         ("784-256-10", (784, 256, 10), 128, 200, 16)]
ACCELERATOR_CASES = [("784-256-10", (784, 256, 10), 128, 200, 256)]
NUM_EXAMPLES = 4096
COMMAND = ("taskset -c 0 env OMP_NUM_THREADS=1 XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
           "intra_op_parallelism_threads=1' python benchmarks/run.py sweep")


def _problem(sizes, batch, members):
  tx = sweep.injectable(lambda learning_rate: optax.sgd(learning_rate, momentum=0.9), learning_rate=0.01)
  key = jax.random.key(123)
  x = jax.random.normal(key, (NUM_EXAMPLES, sizes[0]))
  y = jax.random.randint(jax.random.fold_in(key, 1), (NUM_EXAMPLES,), 0, sizes[-1])

  def init_fn(k, hp):
    keys = jax.random.split(k, len(sizes) - 1)
    params = [{"w": jax.random.normal(kk, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
              for kk, a, b in zip(keys, sizes[:-1], sizes[1:])]
    return {"params": params,
            "opt_state": sweep.set_hyperparams(tx.init(params), learning_rate=hp["learning_rate"])}

  def loss_fn(params, xb, yb):
    h = xb
    for layer in params[:-1]:
      h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

  def step_fn(state, hp, step, data):
    xs, ys = data
    i = (step * batch) % NUM_EXAMPLES
    xb, yb = jax.lax.dynamic_slice_in_dim(xs, i, batch), jax.lax.dynamic_slice_in_dim(ys, i, batch)
    loss, g = jax.value_and_grad(loss_fn)(state["params"], xb, yb)
    updates, opt_state = tx.update(g, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, {"loss": loss}

  seeds = max(1, members // 4)
  grid = sweep.Grid.product(seeds=range(seeds), learning_rate=np.geomspace(1e-3, 1e-1, members // seeds))
  return grid, init_fn, step_fn, (x, y)


def _medians(fns: dict, repeats: int) -> dict:
  """Median seconds of each warm function, calls alternating A B A B ..."""
  for fn in fns.values():
    fn()
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return {k: float(np.median(v)) for k, v in times.items()}


def _setup(name, sizes, batch, steps, members, chunks=()):
  del name
  grid, init_fn, step_fn, data = _problem(sizes, batch, members)
  init_one = jax.jit(init_fn)

  @jax.jit
  def run_one(state, hp, data):
    return jax.lax.scan(lambda s, t: step_fn(s, hp, t, data), state, jnp.arange(steps, dtype=jnp.int32))

  hps = grid.arrays()

  def loop():
    out = []
    for i in range(members):
      hp = {k: jnp.asarray(v[i]) for k, v in hps.items()}
      out.append(run_one(init_one(jax.random.key(hp["seed"]), hp), hp, data)[1]["loss"])
    return jax.block_until_ready(out)

  engines = {chunk: sweep.Sweep(grid, init_fn, step_fn, data=data, chunk_size=chunk, devices=1)
             for chunk in (None, *chunks)}
  calls = {"loop": loop}
  for chunk, engine in engines.items():
    calls[chunk] = lambda e=engine: jax.block_until_ready(e.run(e.init(), 0, steps)[1])
  return engines, calls


def measure_cores(name, sizes, batch, steps, members, repeats=5) -> list[dict]:
  """The loop vs the engine on one device and on one CPU device per usable core.

  Run in a process with one CPU device per core (`benchmarks/sweep_cores.py`
  starts it): the engine's default (``devices=None``) shards the members over
  them, so every core runs its own share; the loop of single runs keeps XLA's
  default threading. Nothing is pinned or single-threaded.
  """
  engines, calls = _setup(name, sizes, batch, steps, members)
  grid, init_fn, step_fn, data = _problem(sizes, batch, members)
  wide = sweep.Sweep(grid, init_fn, step_fn, data=data)
  calls["cores"] = lambda e=wide: jax.block_until_ready(e.run(e.init(), 0, steps)[1])
  t = _medians(calls, repeats)
  rows = []
  for label, key, engine in (("1", None, engines[None]), (str(wide.mesh.devices.size), "cores", wide)):
    rows.append({"model": name, "batch x steps": f"{batch} x {steps}", "members": members,
                 "engine devices": label, "chunk size": engine.chunk_size, "loop s": round(t["loop"], 3),
                 "engine s": round(t[key], 3), "engine / loop speed": round(t["loop"] / t[key], 2)})
  return rows


def measure(name, sizes, batch, steps, members, chunks=(), repeats=5) -> list[dict]:
  engines, calls = _setup(name, sizes, batch, steps, members, chunks)
  t = _medians(calls, repeats)
  rows = []
  for chunk, engine in engines.items():
    rows.append({"model": name, "batch x steps": f"{batch} x {steps}", "members": members,
                 "loop s": round(t["loop"], 3), "engine s": round(t[chunk], 3),
                 "engine / loop speed": round(t["loop"] / t[chunk], 2),
                 "chunk size": f"{engine.chunk_size}" + (" (default)" if chunk is None else ""),
                 "state KiB / member": round(engine.member_bytes / 1024, 1)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def profile(case, top=12) -> list[tuple[str, float]]:
  """Share of the engine's op time per XLA op (a profiler trace of one warm call of ``case``)."""
  import collections  # pylint: disable=g-import-not-at-top
  _, calls = _setup(*case)
  calls[None]()
  total = common_timing.op_microseconds(calls[None])
  whole = sum(total.values()) or 1
  out = [(k, v / whole) for k, v in list(total.items())[:top]]
  for k, share in out:
    print(f"{share * 100:5.1f}%  {k}")
  groups = collections.Counter()
  for k, v in total.items():
    kind = ("matmuls (dot, ynn fusions)" if common_timing.is_matmul_op(k) else
            "transposes and copies" if "transpose" in k or "copy" in k else "other fusions and ops")
    groups[kind] += v / whole
  for kind, share in groups.most_common():
    print(f"{share * 100:5.1f}%  {kind} (all)")
  print(f"{len(total)} distinct ops; op time {whole / case[3]:.0f} us per step of {case[4]} members")
  return out


def run(cases=None, chunks=()) -> dict:
  """Benchmark entry point of ``benchmarks/run.py``."""
  cases = cases or (CASES + (ACCELERATOR_CASES if jax.default_backend() != "cpu" else []))
  # Medians of 5 calls where a call takes about a second; of 3 for the cases of tens of seconds.
  rows = [r for c in cases for r in measure(*c, chunks=chunks, repeats=5 if c[1][0] * c[4] <= 256 else 3)]
  dev = jax.devices()[0]
  ratios = "; ".join(f"{r['model']} x {r['members']} members: {r['engine / loop speed']}x" for r in rows)
  return {"title": "Sweep engine vs a loop of jitted single runs", "rows": rows, "command": COMMAND,
          "notes": (f"One process, {dev.platform} ({dev.device_kind}), 1 device; learning rates x seeds, "
                    "SGD + momentum with the learning rate injected; the loop runs each member as one "
                    "jitted lax.scan over its steps (compiled once). Medians of warm calls (5 for "
                    "the 16-member 16-32-10 case, 3 for the others), loop and engine alternating. Engine / loop speed measured: " + ratios + ". "
                    "`python benchmarks/sweep.py` (`--all` adds 784-256-10 x 256 members, sized for an "
                    "accelerator; `--profile` prints where the engine's time goes by XLA op).")}


def main(argv):
  p = argparse.ArgumentParser()
  p.add_argument("--all", action="store_true")
  p.add_argument("--chunks", type=int, nargs="*", default=[])
  p.add_argument("--case", type=int, nargs="*", default=None)
  p.add_argument("--profile", action="store_true", help="XLA op breakdown of the first case's engine run")
  p.add_argument("--cores-json", action="store_true",
                 help="(run by sweep_cores.py) the 16-member cases on one device and on every device, as JSON")
  args = p.parse_args(argv)
  if args.cores_json:
    print(json.dumps([r for c in CASES if c[4] == 16 for r in measure_cores(*c)]))
    return
  cases = CASES + ACCELERATOR_CASES if args.all else CASES
  if args.case is not None:
    cases = [cases[i] for i in args.case]
  if args.profile:
    profile(cases[0])
    return
  run(cases, args.chunks)


if __name__ == "__main__":
  main(sys.argv[1:])
