"""CPU seconds per FedAvg round of FedJAX 0.0.17 (run with FedJAX's own interpreter, not ours).

Called by `benchmarks/fed_round.py` as ``FEDJAX_PYTHON _fedjax_round.py SAMPLED REPEATS``;
prints one JSON line ``{"fedjax": {sampled: [seconds, ...]}, "versions": ...}``. The workload
is the one of `fed_round.py`: 1000 synthetic clients x 64 MNIST-shaped examples, a
784-256-10 ReLU MLP, client SGD 0.1 with batch 32 for one epoch (2 local steps), server SGD
1.0, deltas weighted by example count (`fedjax.algorithms.fed_avg`, FedJAX's default jit
backend of `for_each_client`). FedJAX 0.0.17 uses `jax.tree_map`, removed from newer jax:
the alias below restores it.
"""

import json
import sys
import time

import jax

jax.tree_map = jax.tree_util.tree_map  # FedJAX 0.0.17 on jax >= 0.4.26

import fedjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from fedjax.algorithms import fed_avg  # noqa: E402

NUM_CLIENTS, EXAMPLES, BATCH, HIDDEN = 1000, 64, 32, 256


def main():
  sampled = [int(s) for s in sys.argv[1].split(",")]
  repeats = int(sys.argv[2])
  rng = np.random.default_rng(0)
  x = rng.random((NUM_CLIENTS, EXAMPLES, 784), np.float32)
  y = rng.integers(0, 10, (NUM_CLIENTS, EXAMPLES)).astype(np.int32)
  params = {"inp": {"w": jnp.asarray(rng.normal(size=(784, HIDDEN)) / 28, jnp.float32),
                    "b": jnp.zeros(HIDDEN)},
            "out": {"w": jnp.asarray(rng.normal(size=(HIDDEN, 10)) / 16, jnp.float32),
                    "b": jnp.zeros(10)}}

  def loss(p, batch):
    h = jax.nn.relu(batch["x"] @ p["inp"]["w"] + p["inp"]["b"])
    logits = h @ p["out"]["w"] + p["out"]["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))

  grad_fn = lambda p, batch, rng: jax.grad(loss)(p, batch)  # noqa: E731
  algo = fed_avg.federated_averaging(
      grad_fn, fedjax.optimizers.sgd(0.1), fedjax.optimizers.sgd(1.0),
      fedjax.ShuffleRepeatBatchHParams(batch_size=BATCH, num_epochs=1, seed=0))
  datasets = [fedjax.ClientDataset({"x": x[c], "y": y[c]}) for c in range(NUM_CLIENTS)]
  state = algo.init(params)
  out = {}
  for m in sampled:
    picked = np.random.default_rng(m).choice(NUM_CLIENTS, m, replace=False)
    clients = [(int(c), datasets[c], jax.random.PRNGKey(int(c))) for c in picked]
    run = lambda: jax.block_until_ready(algo.apply(state, clients)[0].params)  # noqa: E731
    run()  # compile
    run()
    times = []
    for _ in range(repeats):
      t = time.process_time()
      run()
      times.append(time.process_time() - t)
    out[m] = times
  print(json.dumps({"fedjax": out, "versions": {"jax": jax.__version__, "fedjax": "0.0.17"}}))


if __name__ == "__main__":
  main()
