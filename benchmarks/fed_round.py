"""CPU seconds per FedAvg round on one CPU core: our round vs FedJAX 0.0.17 and the FLOP floor.

Workload (the FedJAX measurement of specs/fed.md, section f): synthetic
MNIST-shaped data, 1000 clients x 64 examples, a 784-256-10 ReLU MLP, client
SGD 0.1 with batch 32 for one epoch (2 local steps), server SGD 1.0, deltas
weighted by example count; 100 and 1000 clients sampled per round.

Variants of `fed.algorithms.FedAlgorithm` (same maths; every variant's new
server params are checked against the loop's):

* **python loop**: `FedAlgorithm.loop_round`, a Python loop over clients and
  steps of one jitted local step (FedJAX's default backend, written with our
  code);
* **default**: `FedAlgorithm.round` with ``chunk_size=None``, i.e. the
  backend's `fed.simulate.default_chunk_size`;
* **default, XLA dot layout**: the default round traced under
  `paperlab.dots.disabled`, so the weight gradients keep the layout autodiff
  gives them (the left operand contracted on its rows) instead of
  `paperlab.dots.contract_minor`'s (m, k) @ (k, n) products;
* **chunks of k**: the same round, a `lax.scan` over chunks of k clients, one
  `vmap` per chunk; **one vmap** puts every sampled client in one `vmap`.

**FedJAX** is `fedjax.algorithms.fed_avg` 0.0.17 (default jit backend) on the
same data, run by `benchmarks/_fedjax_round.py` with FedJAX's own interpreter
(``$FEDJAX_PYTHON``, default ``/work/fedjaxenv/bin/python``; install lines in
the notes). Both sides run in their own processes pinned to one core
(``taskset -c 0``), single-threaded (``OMP_NUM_THREADS=1``, XLA's
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``),
alternating ours / FedJAX / ours / FedJAX; times are process CPU seconds
(one thread, so the time the round computed, not the time it waited for the
shared core). The FLOP floor is the round's
matmul FLOPs (forward and weight-gradient products of both layers, the input
gradient of the output layer) at the GEMM rate measured in the same process
(a (1024 x 784) @ (784 x 256) product, process CPU time). The GEMM rate swings
by up to 1.4x within one process on a shared host, so every timed round is
paired with a GEMM timed (best of 3) just before it, and ``default / floor``
is the median of the paired ratios; ``best of each`` divides the fastest
round by the floor at the fastest paired GEMM.

    python benchmarks/run.py fed_round
    python benchmarks/fed_round.py --profile   # one round by XLA op (run it pinned, 1 thread)
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fed import algorithms as alg  # noqa: E402
from fed import personalization as pz  # noqa: E402
from fed import simulate as sim  # noqa: E402
from paperlab import dots  # noqa: E402

sys.path.insert(0, str(HERE))
import common_timing  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


NUM_CLIENTS, EXAMPLES, BATCH, HIDDEN = 1000, 64, 32, 256
SAMPLED = (100, 1000)
CHUNKS = (1, 2, 3, 5, 8, 10)
FEDJAX_PYTHON = os.environ.get("FEDJAX_PYTHON", "/work/fedjaxenv/bin/python")
FEDJAX_INSTALL = ("python3.11 -m venv /work/fedjaxenv && /work/fedjaxenv/bin/pip install jax==0.10.2 "
                  "jaxlib==0.10.2 fedjax==0.0.17 --no-deps && /work/fedjaxenv/bin/pip install numpy "
                  "scipy ml_dtypes opt_einsum dm-haiku optax chex jmp dm-tree immutabledict toolz "
                  "tabulate absl-py msgpack typing_extensions requests")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def flops_per_client() -> int:
  """Matmul FLOPs of one client's local training (2 steps of batch 32)."""
  steps = EXAMPLES // BATCH
  layers = 784 * HIDDEN + HIDDEN * 10
  per_step = 2 * BATCH * layers * 2 + 2 * BATCH * HIDDEN * 10  # forward + weight grads + dgrad of out
  return steps * per_step


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


def gemm_timer(best_of: int = 3):
  """A function returning the FLOP/s of a (1024 x 784) @ (784 x 256) float32 product now
  (process CPU time, best of ``best_of``): the rate the floor is taken at."""
  a = jnp.ones((1024, 784), jnp.float32)
  b = jnp.ones((784, HIDDEN), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  return lambda: 2 * 1024 * 784 * HIDDEN / min(_seconds(lambda: f(a, b)) for _ in range(best_of))


def gemm_rate() -> float:
  """FLOP/s of a (1024 x 784) @ (784 x 256) float32 product in this process (best of 20)."""
  return gemm_timer(20)()


def _seconds(fn) -> float:
  """Process CPU seconds of ``fn()`` (one thread: steadier than wall time on a shared host)."""
  t = time.process_time()
  jax.block_until_ready(fn())
  return time.process_time() - t


def _xla_layout(fn):
  """``fn`` traced and run without `paperlab.dots.contract_minor` (XLA's own dot layout)."""
  def run():
    with dots.disabled():
      return fn()
  return run


def measure_ours(sampled=SAMPLED, chunks=CHUNKS, repeats: int = 5) -> dict:
  """``{m: {variant: [seconds per round, ...]}}`` plus the GEMM rate, in this process."""
  data, params = _problem()
  data = sim.ClientData(*(jnp.asarray(a) for a in data))
  part = pz.Partition(params, pz.label_params(params, "none"))
  gemm = gemm_timer()
  out = {"default_chunk_size": sim.default_chunk_size(), "times": {}, "gemm_flops_paired": {}}
  for m in sampled:
    def make(chunk):
      return alg.FedAlgorithm(_loss, part, alg.phases("fedavg", optax.sgd(0.1)),
                              alg.server_optimizer("sgd", 1.0), clients_per_round=m,
                              chunk_size=chunk)
    loop_algo = make(None)
    state = loop_algo.init(params, NUM_CLIENTS, jax.random.key(0))
    variants = {"python loop": lambda: loop_algo.loop_round(state, data)[0].shared}
    round_of = lambda algo: lambda: algo.round(state, data)[0].shared
    for label, chunk in ([("default", None)] + [(f"chunks of {c}", c) for c in chunks]
                         + ([("one vmap", m)] if m <= 100 else [])):  # 1000: GBs of client copies
      variants[label] = round_of(make(chunk))
      if label == "default":
        variants["default, XLA dot layout"] = _xla_layout(round_of(make(chunk)))
    reference = variants["python loop"]()
    for name, fn in variants.items():
      diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(fn()), jax.tree.leaves(reference)))
      if diff > 1e-4:
        raise AssertionError(f"{name} differs from the loop by {diff} at {m} clients.")
      jax.block_until_ready(fn())  # second warm-up
    times = {name: [] for name in variants}
    rates = {name: [] for name in variants}
    for _ in range(repeats if m < 1000 else max(2, repeats // 2)):
      for name, fn in variants.items():
        rates[name].append(gemm())  # the floor's rate, measured next to the round it is paired with
        times[name].append(_seconds(fn))
    out["times"][str(m)] = times
    out["gemm_flops_paired"][str(m)] = rates
  return out


def profile(m: int = 100, chunk: int | None = None, top: int = 8) -> dict:
  """Where one round of ``m`` clients goes, by XLA op: matmul op time against the FLOP floor.

  Run it pinned and single-threaded like the benchmark, e.g. ``taskset -c 0 env
  OMP_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1" python benchmarks/fed_round.py --profile``.
  """
  data, params = _problem()
  data = sim.ClientData(*(jnp.asarray(a) for a in data))
  part = pz.Partition(params, pz.label_params(params, "none"))
  algo = alg.FedAlgorithm(_loss, part, alg.phases("fedavg", optax.sgd(0.1)),
                          alg.server_optimizer("sgd", 1.0), clients_per_round=m, chunk_size=chunk)
  state = algo.init(params, NUM_CLIENTS, jax.random.key(0))
  fn = lambda: algo.round(state, data)[0].shared
  for _ in range(2):
    jax.block_until_ready(fn())
  seconds = statistics.median(_seconds(fn) for _ in range(5))
  ops = common_timing.op_microseconds(fn)
  rate = gemm_rate()
  matmul = sum(v for k, v in ops.items() if common_timing.is_matmul_op(k)) / 1e6
  floor = m * flops_per_client() / rate
  out = {"clients": m, "round s": round(seconds, 4), "floor s": round(floor, 4),
         "round / floor": round(seconds / floor, 2), "GEMM GFLOP/s": round(rate / 1e9, 1),
         "matmul op s": round(matmul, 4),
         "matmul GFLOP/s": round(m * flops_per_client() / matmul / 1e9, 1),
         "other op s": round(sum(ops.values()) / 1e6 - matmul, 4)}
  print(json.dumps(out))
  for name, us in list(ops.items())[:top]:
    print(f"{us / 1e3:8.2f} ms  {name}")
  return out


def _pinned(cmd: list[str]) -> list[str]:
  return (["taskset", "-c", "0"] if shutil.which("taskset") else []) + cmd


def _json_of(cmd: list[str]) -> dict:
  out = subprocess.run(_pinned(cmd), env=dict(os.environ, **ONE_THREAD), check=True,
                       capture_output=True, text=True, cwd=HERE.parent).stdout
  return json.loads(out.strip().splitlines()[-1])


def run(sampled=SAMPLED, repeats: int = 5, passes: int = 2) -> dict:
  """Ours and FedJAX in alternating pinned single-thread processes; medians over all repeats."""
  have_fedjax = pathlib.Path(FEDJAX_PYTHON).exists()
  ours, theirs = [], []
  for _ in range(passes):
    ours.append(_json_of([sys.executable, str(HERE / "fed_round.py"), "--json", str(repeats)]))
    if have_fedjax:
      theirs.append(_json_of([FEDJAX_PYTHON, str(HERE / "_fedjax_round.py"),
                              ",".join(map(str, sampled)), str(repeats)]))
  # The floor's GEMM rate: the median of the GEMMs timed next to the default rounds.
  rate = statistics.median(r for o in ours for m in sampled for r in o["gemm_flops_paired"][str(m)]["default"])
  floor_per_client = flops_per_client() / rate
  rows = []
  for m in sampled:
    times = {name: [t for o in ours for t in o["times"][str(m)][name]]
             for name in ours[0]["times"][str(m)]}
    med = {name: statistics.median(t) for name, t in times.items()}
    floor = m * floor_per_client
    row = {"clients / round": m}
    if theirs:
      med["FedJAX 0.0.17"] = statistics.median(t for o in theirs for t in o["fedjax"][str(m)])
    for name, t in med.items():
      row[f"{name} (s)"] = round(t, 4)
    row["FLOP floor (s)"] = round(floor, 4)
    # Each timed round is paired with a GEMM timed just before it in the same process, so a
    # slow period slows both sides of the ratio; the median of the paired ratios is quoted.
    rates = [r for o in ours for r in o["gemm_flops_paired"][str(m)]["default"]]  # same order as times
    flops = m * flops_per_client()
    row["default / floor"] = round(common_timing.over_floor(times["default"], rates, flops), 2)
    row["default / floor, best of each"] = round(min(times["default"]) * max(rates) / flops, 2)
    row["XLA dot layout / default"] = round(med["default, XLA dot layout"] / med["default"], 2)
    if theirs:
      row["FedJAX / default"] = round(med["FedJAX 0.0.17"] / med["default"], 2)
    fastest = min((n for n in med if n.startswith("chunks of")), key=med.get)
    row["fastest chunking"] = fastest
    rows.append(row)
  fedjax_note = (f" FedJAX install (its own venv, never the project's): `{FEDJAX_INSTALL}`; "
                 "the runner aliases `jax.tree_map = jax.tree_util.tree_map`."
                 if theirs else f" FedJAX not found at {FEDJAX_PYTHON} (set FEDJAX_PYTHON); "
                 f"install with `{FEDJAX_INSTALL}`.")
  return {"title": "FedAvg round on one core: our round vs FedJAX 0.0.17 and the FLOP floor "
                   "(784-256-10 MLP)",
          "rows": rows,
          "notes": (f"{NUM_CLIENTS} clients x {EXAMPLES} examples, batch {BATCH}, 1 epoch (2 local "
                    "steps), client SGD 0.1, server SGD 1.0, example weights. Every process pinned "
                    "to core 0 and single-threaded; ours and FedJAX alternate, "
                    f"{passes} processes each, {repeats} timed rounds per process ({max(2, repeats // 2)} "
                    "at 1000 clients) after two warm-ups; medians over all. default = "
                    f"`chunk_size=None` = chunks of {ours[0]['default_chunk_size']} on CPU. FLOP floor (s) = "
                    f"{flops_per_client() / 1e6:.1f} MFLOP per client at {rate / 1e9:.0f} GFLOP/s (the "
                    "median of the GEMM rates paired with the default rounds). default / floor = the median "
                    "over timed rounds of round time / floor, each round paired with a GEMM timed "
                    "(best of 3) just before it in the same process; best of each = the fastest "
                    "default round over the floor at the fastest paired GEMM. FedJAX runs jax "
                    f"{theirs[0]['versions']['jax'] if theirs else '-'}, ours jax {jax.__version__}."
                    f"{fedjax_note} The machine was shared with other jobs.")}


if __name__ == "__main__":
  if {"-h", "--help"} & set(sys.argv):
    print(__doc__)
  elif "--profile" in sys.argv:
    profile()
  elif "--json" in sys.argv:
    reps = int(sys.argv[sys.argv.index("--json") + 1]) if len(sys.argv) > sys.argv.index("--json") + 1 else 5
    print(json.dumps(measure_ours(repeats=reps)))
  else:
    sys.path.insert(0, str(HERE))
    from run import render  # noqa: E402
    print(render(run()))
