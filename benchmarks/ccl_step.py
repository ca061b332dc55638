"""Train-step time of counter-current learning (CCL) against backprop (BP).

The same dual network and the same two-group SGD chain (per-group clip,
momentum), timed through the script's own step function
(`ccl_jax.train.make_step_fn`: device-resident data, batches gathered by
index; ``lax.scan`` over the steps for the MLP, a Python loop of jitted steps
for the CNN). Variants are timed side by side in rounds and the CCL/BP ratio
is taken within each round; the table gives medians over rounds. CCL runs the
forward net on the batch, the feedback net on the K x K identity and one
weight gradient per layer (no input gradients, every layer input is
stop-gradient'ed); BP runs the forward net and full backprop. The CNN is the
paper's 5-conv ``cnn`` with channels divided by 4 (32-32-64-64-128) to keep
the CPU run short.
"""

from __future__ import annotations

import statistics

import jax
from flax import nnx

from ccl_jax import losses, train
from ccl_jax.models import CCLCNN, CCLMLP

try:
  from benchmarks.common_timing import machine, median_seconds
except ImportError:  # run as a plain script
  from common_timing import machine, median_seconds

ROUNDS = 3
CASES = {
    # name: (model factory, input shape, batch, steps per call, scan, loss kind)
    "MLP 784-256x5-10": (lambda: CCLMLP(rngs=nnx.Rngs(0)), (784,), 256, 20, True, "mlp"),
    "CNN 32x32x3 (cnn, channels/4)": (
        lambda: CCLCNN((32, 32, 3), 10, (32, 32, 64, 64, 128), rngs=nnx.Rngs(0)),
        (32, 32, 3), 128, 3, False, "cnn"),
}


def _stepper(make, shape, batch, steps, scan, kind, method):
  trainer, state = train.Trainer.create(
      make(), train.make_optimizer(train.OptimConfig(learning_rate=0.01, momentum=0.9)),
      losses.ccl_loss if method == "ccl" else losses.bp_loss,
      losses.LossConfig(kind=kind, scale_c=0.5 if kind == "mlp" else 1.0))
  n = 4 * batch
  x = jax.random.normal(jax.random.key(1), (n, *shape))
  y = jax.random.randint(jax.random.key(2), (n,), 0, 10)
  step_fn = train.make_step_fn(trainer, x, y, batch_size=batch, seed=0, scan=scan)
  box = [state, 0]

  def call():
    box[0], _ = step_fn(box[0], box[1], steps)
    box[1] += steps
    return box[0]["params"]

  return call


def run() -> dict:
  rows = []
  for case, (make, shape, batch, steps, scan, kind) in CASES.items():
    calls = {m: _stepper(make, shape, batch, steps, scan, kind, m) for m in ("ccl", "bp")}
    times = {m: [] for m in calls}
    for _ in range(ROUNDS):
      for m, call in calls.items():
        times[m].append(median_seconds(call, repeats=3, warmup=1) / steps)
    ratio = statistics.median(c / b for c, b in zip(times["ccl"], times["bp"]))
    for m in calls:
      rows.append({"model": case, "batch": batch, "method": m.upper(),
                   "time/step (ms)": round(1e3 * statistics.median(times[m]), 2),
                   "CCL/BP ratio": round(ratio, 3)})
  return {"title": "CCL vs BP train-step time (same net, same optimiser)",
          "rows": rows,
          "notes": f"{machine()}. " + " ".join(__doc__.split("\n\n")[1].split())}


if __name__ == "__main__":
  from run import render  # pylint: disable=g-import-not-at-top
  print(render(run()))
