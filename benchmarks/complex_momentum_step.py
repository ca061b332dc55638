"""Cost of one complex-momentum / complex-Adam step against its real counterpart.

Optimizer steps (``tx.update`` + ``optax.apply_updates``) on a 10.5M-parameter
float32 tree, 5 steps per jitted call in a ``lax.scan`` (params and state
donated; gradients passed as arguments, so nothing that depends on them is
folded at compile time), timed side by side in one process: the variants are
called in turn (20 rounds; 15 with the gradient) and the table gives each
variant's fastest call and its ratio to the fastest call of its baseline (the
machine is shared; the fastest call is the least disturbed one). The update is
memory bound: per step heavy ball reads g, trace, params and writes trace,
params (5 array passes); complex momentum has one more buffer to read and write
and its per-leaf non-finite check reads g once more (8 passes, 1.6x the pass
count); Adam 7 passes against 10 for complex Adam (1.43x). The two-buffer forms
order their update, guard included, so that XLA:CPU updates both buffers in
place (`optim._complex_momentum._rotate`). "optimizer + gradient" rows add the
gradient of a 3-layer tanh MLP (the same tree) on a batch of 64, i.e. a
training step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from optim import _complex_momentum as cm

try:
  from benchmarks.common_timing import machine, median_seconds
except ImportError:  # run as a plain script
  from common_timing import machine, median_seconds

SHAPES = {"w1": (2048, 2048), "w2": (2048, 2048), "w3": (2048, 1024),
          "b1": (2048,), "b2": (2048,), "b3": (1024,)}
BATCH = 64
REPEATS = 20
REPEATS_GRAD = 15
STEPS = 5

VARIANTS = {
    "optax.sgd(momentum=0.9)": (lambda: optax.sgd(0.01, momentum=0.9), None),
    "complex_momentum (two real buffers)": (
        lambda: cm.complex_momentum(0.01, 0.9, math.pi / 8),
        "optax.sgd(momentum=0.9)"),
    "complex_momentum (complex64 buffer)": (
        lambda: cm.complex_momentum(0.01, 0.9, math.pi / 8, complex_buffer=True),
        "optax.sgd(momentum=0.9)"),
    "optax.adam": (lambda: optax.adam(1e-3), None),
    "complex_adam (two real buffers)": (
        lambda: cm.complex_adam(1e-3, 0.9, math.pi / 8), "optax.adam"),
    "complex_adam (complex64 buffer)": (
        lambda: cm.complex_adam(1e-3, 0.9, math.pi / 8, complex_buffer=True),
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

  # The gradients and the batch are arguments, not closed-over constants: XLA
  # would otherwise fold whatever depends only on them (the non-finite check of
  # a fixed gradient) at compile time and time a step without it.
  def steps(params, opt_state, grads, x):
    def body(carry, _):
      params, opt_state = carry
      g = jax.grad(_loss)(params, x) if with_grad else grads
      updates, opt_state = tx.update(g, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    return jax.lax.scan(body, (params, opt_state), None, length=STEPS)[0]

  donated = jax.jit(steps, donate_argnums=(0, 1))

  def call():
    box[0], box[1] = donated(box[0], box[1], grads, x)
    return box[0]

  return call


def run() -> dict:
  num_params = sum(math.prod(s) for s in SHAPES.values())
  rows = []
  for with_grad in (False, True):
    steppers = {name: _stepper(make(), with_grad) for name, (make, _) in VARIANTS.items()}
    for call in steppers.values():  # compile and warm up
      jax.block_until_ready(call())
    times = {name: [] for name in VARIANTS}
    # Call by call in turn, so every variant meets the same load on the shared
    # machine; the least disturbed (fastest) call of each is kept.
    for _ in range(REPEATS_GRAD if with_grad else REPEATS):
      for name, call in steppers.items():
        times[name].append(median_seconds(call, repeats=1, warmup=0) / STEPS)
    for name, (_, base) in VARIANTS.items():
      ratio = min(times[name]) / min(times[base]) if base else 1.0
      rows.append({
          "step": "optimizer + gradient" if with_grad else "optimizer only",
          "variant": name,
          "time/step (ms)": round(1e3 * min(times[name]), 2),
          "ratio to baseline": round(ratio, 3),
          "baseline": base or "-"})
    del steppers
  return {"title": f"Complex momentum / complex Adam step cost ({num_params / 1e6:.1f}M params)",
          "rows": rows,
          "notes": f"{machine()}. " + " ".join(__doc__.split("\n\n")[1].split())}


if __name__ == "__main__":
  from run import render  # pylint: disable=g-import-not-at-top
  print(render(run()))
