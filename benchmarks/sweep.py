"""Sweep engine vs a loop of jitted single runs, side by side in one process.

Each member trains an MLP with SGD + momentum (learning rate injected through
`optax.inject_hyperparams`, a grid of learning rates x seeds) on synthetic
data. The loop runs every member as one jitted ``lax.scan`` over all its
steps (compiled once, reused by every member); the engine runs all members as
one `paperlab.sweep.Sweep` program with its default chunk size (reported).
Both are timed warm (compiled), best of a few repeats.

    python benchmarks/sweep.py                  # the CPU cases
    python benchmarks/sweep.py --all            # also 784-256-10 x 256 members (accelerator sized)
    python benchmarks/sweep.py --chunks 1 4 16  # the engine at these chunk sizes too
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
from paperlab import sweep  # noqa: E402

# (name, sizes, batch, steps, members)
CASES = [("16-32-10", (16, 32, 10), 32, 2000, 16), ("16-32-10", (16, 32, 10), 32, 2000, 256),
         ("784-256-10", (784, 256, 10), 128, 200, 16)]
ACCELERATOR_CASES = [("784-256-10", (784, 256, 10), 128, 200, 256)]
NUM_EXAMPLES = 4096


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


def _best(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def measure(name, sizes, batch, steps, members, chunks=(), repeats=3) -> list[dict]:
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

  t_loop = _best(loop, repeats)
  rows = []
  for chunk in (None, *chunks):
    engine = sweep.Sweep(grid, init_fn, step_fn, data=data, chunk_size=chunk, devices=1)
    t_engine = _best(lambda: jax.block_until_ready(engine.run(engine.init(), 0, steps)[1]), repeats)
    rows.append({"model": name, "batch x steps": f"{batch} x {steps}", "members": members,
                 "loop s": round(t_loop, 3), "engine s": round(t_engine, 3),
                 "engine / loop speed": round(t_loop / t_engine, 2),
                 "chunk size": f"{engine.chunk_size}" + (" (default)" if chunk is None else ""),
                 "state KiB / member": round(engine.member_bytes / 1024, 1)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def run(cases=None, chunks=()) -> dict:
  """Benchmark entry point of ``benchmarks/run.py``."""
  cases = cases or (CASES + (ACCELERATOR_CASES if jax.default_backend() != "cpu" else []))
  rows = [r for c in cases for r in measure(*c, chunks=chunks)]
  dev = jax.devices()[0]
  return {"title": "Sweep engine vs a loop of jitted single runs", "rows": rows,
          "notes": (f"One process, {dev.platform} ({dev.device_kind}), 1 device; learning rates x seeds, "
                    "SGD + momentum with the learning rate injected; the loop runs each member as one "
                    "jitted lax.scan over its steps (compiled once). Best of 3 warm calls each. "
                    "`python benchmarks/sweep.py` (`--all` adds 784-256-10 x 256 members, sized for an "
                    "accelerator).")}


def main(argv):
  p = argparse.ArgumentParser()
  p.add_argument("--all", action="store_true")
  p.add_argument("--chunks", type=int, nargs="*", default=[])
  p.add_argument("--case", type=int, nargs="*", default=None)
  args = p.parse_args(argv)
  cases = CASES + ACCELERATOR_CASES if args.all else CASES
  if args.case is not None:
    cases = [cases[i] for i in args.case]
  run(cases, args.chunks)


if __name__ == "__main__":
  main(sys.argv[1:])
