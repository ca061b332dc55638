"""One accelerator check: the project's hot paths at accelerator sizes, one results file.

    python benchmarks/gpu.py                     # on one GPU, < 8 minutes
    python benchmarks/gpu.py --smoke             # tiny sizes on CPU (seconds; a test runs it)
    python benchmarks/gpu.py --out DIR           # where gpu_results.{json,md} go (default benchmarks/)

Sections (each row: variant, median ms per call, ratio to the section's
baseline):

* **dion**: one optimizer step on a 4096 x 16384 float32 matrix:
  `optim.dion` at rank fractions 1, 1/4 and 1/16 against
  `optax.contrib.muon`; against the official ``DionReference`` (PyTorch) too
  when ``torch`` and the official ``dion`` package are importable.
* **complex_momentum**: one update of a 100M-parameter tree:
  `optim.complex_momentum` vs ``optax.sgd(momentum=0.9)`` and
  `optim.complex_adam` vs ``optax.adam``.
* **fed_round**: a FedAvg round (784-256-10 MLP, 2 local steps of 32) at 1000
  and 10000 sampled clients: the whole round in one vmap vs chunked vmaps.
* **fedast_jobs**: 256 FedAST jobs (784-64-10 MLP, 5 local steps of 16):
  ``JobTrainer(mode="vmap")`` in batched calls vs one call per job.
* **sweep**: the sweep engine at 256 members (``benchmarks/sweep.py``), when
  `paperlab.sweep` exists.

A section whose pieces are missing (no such API, no torch, too little
memory) is a ``skipped: <reason>`` row; one that fails is a ``failed:
<error>`` row; the others still run. Only public names are used (``optim.*``,
``fed.*``, ``optax.*``). The results file names the device (its
``device_kind``, e.g. the GPU card), the jax version, the date and the
command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

FULL = {"dion_shape": (4096, 16384), "ranks": (1.0, 0.25, 1 / 16), "tree": (25, 2000, 2000),
        "clients": (1000, 10000), "chunks": (100, 1000), "jobs": 256, "repeats": 10,
        "mlp": (784, 256, 64),  # input, FL hidden, FedAST hidden
        "sweep_case": ("784-256-10", (784, 256, 10), 128, 200, 256)}
SMOKE = {"dion_shape": (64, 256), "ranks": (0.25,), "tree": (2, 64, 64),
         "clients": (8,), "chunks": (4,), "jobs": 8, "repeats": 2, "mlp": (16, 8, 8),
         "sweep_case": ("16-32-10", (16, 32, 10), 32, 10, 4)}


class Skip(Exception):
  """A section cannot run here; the message says why."""


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
  jax.block_until_ready(fn())  # compile + warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def _rows(times: dict[str, float], baseline: str) -> list[dict]:
  return [{"variant": k, "ms (median)": round(v, 3), "ratio": round(v / times[baseline], 3),
           "relative to": baseline} for k, v in times.items()]


def _optimizer_step(tx: optax.GradientTransformation, params, grads) -> Callable[[], object]:
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx.update(g, s, p)),
                 donate_argnums=(0, 1))  # params and state updated in place, as in training
  box = [jax.tree.map(jnp.copy, params), state]  # a copy: the caller's params stay alive

  def call():
    box[0], box[1] = step(box[0], box[1], grads)
    return box[0]
  return call


# --------------------------------------------------------------------------- sections


def dion_section(sizes: dict) -> list[dict]:
  import optim  # pylint: disable=g-import-not-at-top
  m, n = sizes["dion_shape"]
  key = jax.random.key(0)
  params = {"w": jax.random.normal(key, (m, n), jnp.float32) / math.sqrt(m)}
  grads = {"w": jax.random.normal(jax.random.fold_in(key, 1), (m, n), jnp.float32)}
  times = {"optax.contrib.muon": _median_ms(_optimizer_step(optax.contrib.muon(0.02), params, grads),
                                           sizes["repeats"])}
  for r in sizes["ranks"]:
    times[f"optim.dion rank {r:g}"] = _median_ms(
        _optimizer_step(optim.dion(0.02, rank_fraction=r), params, grads), sizes["repeats"])
  rows = _rows(times, "optax.contrib.muon")
  rows += _official_dion(sizes, np.asarray(params["w"]), np.asarray(grads["w"]), times)
  return rows


def _official_dion(sizes: dict, w: np.ndarray, g: np.ndarray, ours: dict[str, float]) -> list[dict]:
  """The official DionReference on the same matrix (PyTorch), when importable."""
  if importlib.util.find_spec("torch") is None:
    return [{"variant": "official DionReference", "ms (median)": "skipped: torch is not installed"}]
  try:
    official = importlib.import_module("dion")
    cls = official.DionReference
  except (ImportError, AttributeError) as e:
    return [{"variant": "official DionReference",
             "ms (median)": f"skipped: the official dion package is not importable ({e}); put the "
                            "official repository on PYTHONPATH"}]
  import torch  # pylint: disable=g-import-not-at-top
  device = "cuda" if torch.cuda.is_available() else "cpu"
  rows = []
  for r in sizes["ranks"]:
    p = torch.nn.Parameter(torch.tensor(w, device=device))
    grad = torch.tensor(g, device=device)
    try:
      opt = cls([p], lr=0.02, rank_fraction=r)
    except Exception as e:  # pylint: disable=broad-except
      return [{"variant": "official DionReference", "ms (median)": f"skipped: constructor failed ({e})"}]

    def step():
      p.grad = grad
      opt.step()
      if device == "cuda":
        torch.cuda.synchronize()
    step()
    times = []
    for _ in range(sizes["repeats"]):
      t0 = time.perf_counter()
      step()
      times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    name = f"optim.dion rank {r:g}"
    rows.append({"variant": f"official DionReference rank {r:g} ({device})", "ms (median)": round(ms, 3),
                 "ratio": round(ours[name] / ms, 3), "relative to": f"{name} / official"})
  return rows


def complex_momentum_section(sizes: dict) -> list[dict]:
  import optim  # pylint: disable=g-import-not-at-top
  count, a, b = sizes["tree"]
  keys = jax.random.split(jax.random.key(0), count)
  params = {f"w{i}": jax.random.normal(k, (a, b), jnp.float32) for i, k in enumerate(keys)}
  grads = jax.tree.map(lambda x: 0.01 * x, params)
  r = sizes["repeats"]
  pairs = {"optax.sgd(momentum=0.9)": optax.sgd(0.01, momentum=0.9),
           "optim.complex_momentum": optim.complex_momentum(0.01),
           "optax.adam": optax.adam(1e-3),
           "optim.complex_adam": optim.complex_adam(1e-3)}
  times = {k: _median_ms(_optimizer_step(tx, params, grads), r) for k, tx in pairs.items()}
  return (_rows({k: times[k] for k in ("optax.sgd(momentum=0.9)", "optim.complex_momentum")},
                "optax.sgd(momentum=0.9)")
          + _rows({k: times[k] for k in ("optax.adam", "optim.complex_adam")}, "optax.adam"))


def _mlp_loss(p, x, y):
  h = jax.nn.relu(x @ p["inp"]["w"] + p["inp"]["b"])
  return optax.softmax_cross_entropy_with_integer_labels(h @ p["out"]["w"] + p["out"]["b"], y)


def _mlp_params(rng, inputs: int, hidden: int) -> dict:
  return {"inp": {"w": jnp.asarray(rng.normal(size=(inputs, hidden)) / math.sqrt(inputs), jnp.float32),
                  "b": jnp.zeros(hidden)},
          "out": {"w": jnp.asarray(rng.normal(size=(hidden, 10)) / 16, jnp.float32), "b": jnp.zeros(10)}}


def fed_round_section(sizes: dict) -> list[dict]:
  import fed  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  steps, batch = 2, 32
  inputs, hidden, _ = sizes["mlp"]
  params = _mlp_params(rng, inputs, hidden)
  part = fed.Partition(params, fed.label_params(params, "none"))
  rows = []
  for clients in sizes["clients"]:
    x = jnp.asarray(rng.random((clients, steps, batch, inputs), np.float32))
    y = jnp.asarray(rng.integers(0, 10, (clients, steps, batch)).astype(np.int32))
    mask = jnp.ones((clients, steps, batch), bool)
    data = fed.ClientData(x, y, mask, mask.sum((1, 2)))
    times = {}
    for label, chunk in [("whole round, one vmap", clients)] + [(f"chunks of {c}", c) for c in sizes["chunks"]
                                                              if c < clients]:
      algo = fed.fedavg(_mlp_loss, part, optax.sgd(0.1), optax.sgd(1.0), clients_per_round=clients,
                        chunk_size=chunk)
      state = algo.init(params, clients, jax.random.key(0))
      try:
        times[label] = _median_ms(lambda a=algo, s=state, d=data: a.round(s, d)[0].shared, sizes["repeats"])
      except Exception as e:  # pylint: disable=broad-except  (e.g. out of device memory)
        rows.append({"variant": f"{clients} clients, {label}", "ms (median)": f"skipped: {type(e).__name__}: "
                     f"{str(e).splitlines()[0][:160]}"})
    if "whole round, one vmap" in times:
      for row in _rows(times, "whole round, one vmap"):
        row["variant"] = f"{clients} clients, {row['variant']}"
        rows.append(row)
    del x, y, data
  return rows


def fedast_jobs_section(sizes: dict) -> list[dict]:
  import fed  # pylint: disable=g-import-not-at-top
  try:
    module = importlib.import_module("fed.fedast")
  except ImportError:
    module = None
  trainer_cls = getattr(fed, "JobTrainer", None) or getattr(module, "JobTrainer", None)
  task_cls = getattr(fed, "Task", None) or getattr(module, "Task", None)
  if trainer_cls is None or task_cls is None:
    raise Skip("fed has no JobTrainer / Task")
  rng = np.random.default_rng(0)
  clients, steps, batch, jobs = 1000, 5, 16, sizes["jobs"]
  inputs, _, hidden = sizes["mlp"]
  x = rng.random((clients, steps, batch, inputs), np.float32)
  y = rng.integers(0, 10, (clients, steps, batch)).astype(np.int32)
  params = _mlp_params(rng, inputs, hidden)
  task = task_cls(name="mlp", init_params=params, loss_fn=_mlp_loss, eval_fn=lambda p: 0.0, x=x, y=y,
                  target=1.0)
  try:
    trainer = trainer_cls(task, mode="vmap")
  except TypeError as e:
    raise Skip(f"JobTrainer takes no mode= ({e})") from e
  starts = [params] * jobs
  ids = [int(c) for c in rng.integers(0, clients, jobs)]
  r = max(2, sizes["repeats"] // 3)
  times = {"one call per job": _median_ms(lambda: [trainer.single(p, c) for p, c in zip(starts, ids)], r),
           'JobTrainer(mode="vmap"), batched': _median_ms(lambda: trainer.batched(starts, ids), r)}
  rows = _rows(times, "one call per job")
  for row in rows:
    row["variant"] = f"{jobs} jobs, {row['variant']}"
  return rows


def sweep_section(sizes: dict) -> list[dict]:
  if importlib.util.find_spec("paperlab.sweep") is None:
    raise Skip("paperlab.sweep does not exist in this checkout (the sweep engine is not merged)")
  try:
    bench = importlib.import_module("sweep")  # benchmarks/sweep.py
    measure = bench.measure
  except (ImportError, AttributeError) as e:
    raise Skip(f"benchmarks/sweep.py has no measure() ({e})") from e
  name, widths, batch, steps, members = sizes["sweep_case"]
  return measure(name, widths, batch, steps, members, repeats=max(1, sizes["repeats"] // 5))


SECTIONS = {"dion": dion_section, "complex_momentum": complex_momentum_section,
            "fed_round": fed_round_section, "fedast_jobs": fedast_jobs_section, "sweep": sweep_section}


def run_sections(sizes: dict, names=None) -> dict[str, dict]:
  out = {}
  for name in names or SECTIONS:
    t0 = time.perf_counter()
    try:
      rows, status = SECTIONS[name](sizes), "ok"
    except Skip as e:
      rows, status = [], f"skipped: {e}"
    except (ImportError, AttributeError) as e:
      rows, status = [], f"skipped: {type(e).__name__}: {e}"
    except Exception as e:  # pylint: disable=broad-except  (report and go on)
      rows, status = [], f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    out[name] = {"status": status, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{name}: {status} ({out[name]['seconds']} s)", flush=True)
  return out


def device_name() -> str:
  d = jax.devices()[0]
  return f"{d.device_kind} ({d.platform}, {jax.device_count()} device(s))"


def render(result: dict) -> str:
  lines = ["# Accelerator check (benchmarks/gpu.py)", "",
           f"Device: {result['device']}; jax {result['jax']}; {result['date']}; command `{result['command']}`; "
           f"{result['seconds']} s in all." + (" Smoke sizes: these numbers only show that the script "
                                                 "runs; they measure nothing." if result["smoke"] else ""), ""]
  for name, sec in result["sections"].items():
    lines += [f"## {name}", "", f"status: {sec['status']} ({sec['seconds']} s)", ""]
    rows = sec["rows"]
    if rows:
      keys = list(dict.fromkeys(k for r in rows for k in r))
      lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
      lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
      lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, seconds)")
  parser.add_argument("--out", type=pathlib.Path, default=HERE, help="directory of gpu_results.{json,md}")
  parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
  args = parser.parse_args(argv)
  if not args.smoke and jax.default_backend() == "cpu":
    print("note: no accelerator found; the full sizes take very long on CPU (use --smoke)", flush=True)
  t0 = time.perf_counter()
  sections = run_sections(SMOKE if args.smoke else FULL, args.only)
  result = {"device": device_name(), "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                      time.gmtime()),
            "command": "python benchmarks/gpu.py" + (" --smoke" if args.smoke else ""),
            "smoke": args.smoke, "seconds": round(time.perf_counter() - t0, 1), "sections": sections}
  args.out.mkdir(parents=True, exist_ok=True)
  stem = "gpu_results_smoke" if args.smoke else "gpu_results"
  (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
  (args.out / f"{stem}.md").write_text(render(result))
  print(f"Wrote {args.out / stem}.json and .md ({result['seconds']} s)")
  return 1 if any(s["status"].startswith("failed") for s in sections.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
