"""Cost of one complex-momentum / complex-Adam step against its real counterpart.

One jitted optimizer step (``tx.update`` + ``optax.apply_updates``, params and
optimizer state donated) on a 10.5M-parameter float32 tree, timed side by side
in one process: each round times every variant (median of 5 calls), the ratio
of each variant to its baseline is taken within the round, and the table gives
the median over rounds. The step is memory bound: complex momentum keeps two
real buffers where heavy ball keeps one, complex Adam three where Adam keeps
two. "+ gradient" rows add the gradient of a 3-layer linear model on a batch
of 256 (the same tree), so the optimizer cost is seen against a training step.
"""

from __future__ import annotations

import math
import statistics

import jax
import jax.numpy as jnp
import optax

from optim import complex_momentum as cm

try:
  from benchmarks.common_timing import machine, median_seconds
except ImportError:  # run as a plain script
  from common_timing import machine, median_seconds

SHAPES = {"w1": (2048, 2048), "w2": (2048, 2048), "w3": (2048, 1024),
          "b1": (2048,), "b2": (2048,), "b3": (1024,)}
BATCH = 256
ROUNDS = 5

VARIANTS = {
    "optax.sgd(momentum=0.9)": (lambda: optax.sgd(0.01, momentum=0.9), None),
    "complex_momentum (two real buffers)": (
        lambda: cm.complex_momentum(0.01, 0.9, math.pi / 8),
        "optax.sgd(momentum=0.9)"),
    "complex_momentum (complex64 buffer)": (
        lambda: cm.complex_momentum(0.01, 0.9, math.pi / 8, complex_buffer=True),
        "optax.sgd(momentum=0.9)"),
    "optax.adam": (lambda: optax.adam(1e-3), None),
    "complex_adam": (lambda: cm.complex_adam(1e-3, 0.9, math.pi / 8),
                     "optax.adam"),
}


def _tree(key):
  keys = jax.random.split(key, len(SHAPES))
  return {n: 0.01 * jax.random.normal(k, s) for (n, s), k in zip(SHAPES.items(), keys)}


def _loss(params, x):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  h = jnp.tanh(h @ params["w2"] + params["b2"])
  return jnp.mean((h @ params["w3"] + params["b3"]) ** 2)


def _stepper(tx, with_grad: bool):
  """A zero-argument callable that runs one donated step and keeps the state."""
  params = _tree(jax.random.key(0))
  grads = _tree(jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (BATCH, 2048))
  box = [params, tx.init(params)]

  @jax.jit
  def step(params, opt_state):
    g = jax.grad(_loss)(params, x) if with_grad else grads
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  donated = jax.jit(step, donate_argnums=(0, 1))

  def call():
    box[0], box[1] = donated(box[0], box[1])
    return box[0]

  return call


def run() -> dict:
  num_params = sum(math.prod(s) for s in SHAPES.values())
  rows = []
  for with_grad in (False, True):
    steppers = {name: _stepper(make(), with_grad) for name, (make, _) in VARIANTS.items()}
    times = {name: [] for name in VARIANTS}
    for _ in range(ROUNDS):
      for name, call in steppers.items():
        times[name].append(median_seconds(call, repeats=5, warmup=1))
    for name, (_, base) in VARIANTS.items():
      ratio = (statistics.median(t / b for t, b in zip(times[name], times[base]))
               if base else 1.0)
      rows.append({
          "step": "optimizer + gradient" if with_grad else "optimizer only",
          "variant": name,
          "time/step (ms)": round(1e3 * statistics.median(times[name]), 2),
          "ratio to baseline": round(ratio, 3),
          "baseline": base or "-"})
    del steppers
  return {"title": f"Complex momentum / complex Adam step cost ({num_params / 1e6:.1f}M params)",
          "rows": rows,
          "notes": f"{machine()}. " + " ".join(__doc__.split("\n\n")[1].split())}


if __name__ == "__main__":
  from run import render  # pylint: disable=g-import-not-at-top
  print(render(run()))
