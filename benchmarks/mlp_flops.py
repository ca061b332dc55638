"""How close the MLP train step runs to this machine's matmul throughput.

Achieved GFLOP/s of a jitted MLP training step (784-256-256-10, SGD with
momentum, 100 steps per call in a `lax.scan`) against a large square matmul's
GFLOP/s on the same machine, side by side in one process.
FLOPs of a step: 2 x batch x (3 x sum of in x out over layers - in x out of
the first layer): the forward matmuls, the weight gradients, and the input
gradients of every layer but the first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from paperlab import supervised
from paperlab.models import MLP

try:
  from benchmarks.common_timing import best_seconds, machine
except ImportError:  # run as a plain script
  from common_timing import best_seconds, machine

SIZES = (784, 256, 256, 10)
STEPS = 100


def _mlp_step_seconds(batch: int) -> float:
  model = MLP(SIZES, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.01, momentum=0.9)
  graphdef, state = supervised.init_state(model, tx)
  x = jax.random.normal(jax.random.key(1), (STEPS, batch, SIZES[0]))
  y = jax.random.randint(jax.random.key(2), (STEPS, batch), 0, SIZES[-1])

  @jax.jit
  def run(state, x, y):
    def body(s, xy):
      def loss_fn(p):
        return supervised.cross_entropy(nnx.merge(graphdef, p)(xy[0]), xy[1])
      g = jax.grad(loss_fn)(s["params"])
      u, o = tx.update(g, s["opt_state"], s["params"])
      return {"params": optax.apply_updates(s["params"], u), "opt_state": o}, None
    return jax.lax.scan(body, state, (x, y))[0]

  return best_seconds(lambda: run(state, x, y), repeats=5) / STEPS


def _matmul_seconds(n: int) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n))
  b = jax.random.normal(jax.random.key(1), (n, n))
  f = jax.jit(jnp.matmul)
  return best_seconds(lambda: f(a, b), repeats=10)


def run() -> dict:
  rows = []
  n = 4096
  mm = 2 * n ** 3 / _matmul_seconds(n) / 1e9
  rows.append({"workload": f"matmul {n}x{n} @ {n}x{n} (f32)", "GFLOP/s": round(mm, 1),
               "fraction of matmul": 1.0, "time/step (ms)": ""})
  for batch in (128, 1024):
    sec = _mlp_step_seconds(batch)
    macs = [a * b for a, b in zip(SIZES[:-1], SIZES[1:])]
    flops = 2 * batch * (3 * sum(macs) - macs[0])
    g = flops / sec / 1e9
    rows.append({"workload": f"MLP {'-'.join(map(str, SIZES))} train step, batch {batch}",
                 "GFLOP/s": round(g, 1), "fraction of matmul": round(g / mm, 3),
                 "time/step (ms)": round(sec * 1e3, 3)})
  return {"title": "MLP train step throughput vs a large matmul", "rows": rows,
          "notes": f"{machine()}. " + __doc__.split("\n\n")[1].replace("\n", " ")}


if __name__ == "__main__":
  from run import render  # pylint: disable=g-import-not-at-top
  print(render(run()))
