"""FedAST vs synchronous simultaneous training: several FL tasks on one pool of clients.

Tasks (quick preset): MNIST-5k MLP, Fashion-MNIST MLP and a Shakespeare
next-character model, all on a pool of 1000 clients (Dirichlet alpha = 0.1
label skew for the image tasks, one speaking role per client for Shakespeare),
each with a target test accuracy. Every (method, seed) run is simulated until
all tasks reach their targets; the table reports the simulated time per task
and for all tasks, mean +- std over seeds. The ``paper`` preset is the FedAST
demo's four-task mix (MNIST MLP, Fashion-MNIST LeNet-5, CIFAR-10 CNN,
Shakespeare), five seeds and every method; it is meant for an accelerator and
needs CIFAR-10 prepared for TFDS.

    python scripts/fedast.py --preset quick
    python scripts/fedast.py --preset quick --methods fedast sync sequential --seeds 0 1 2 3 4
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from paperlab import checkpoint, config, files, metrics, plots
from fed import fedast
from fed import fedast_tasks as ft

log = logging.getLogger("fedast")


@dataclasses.dataclass(frozen=True)
class Config:
  """FedAST experiment."""

  methods: tuple[str, ...] = ("fedast", "sync")  # from fed.fedast.METHODS
  seeds: tuple[int, ...] = (0, 1, 2)
  tasks: tuple[str, ...] = ("mnist_mlp", "fmnist_mlp", "shakespeare_char")  # keys of fed.fedast_tasks.SPECS
  targets: tuple[float, ...] = (0.80, 0.76, 0.20)  # target test accuracy, one per task
  num_clients: int = 1000
  max_busy_clients: int = 300
  jobs_per_task: int = 96  # R_m at the start (R_total = #tasks x this)
  ratio: int = 32  # buffer b = ceil(R_m / ratio)
  fedast_global_lr: float = 0.15  # eta_g of FedAST (stale updates need a small server step)
  sync_global_lr: float = 1.0  # Sync-ST averages fresh updates (FedAvg), as in the FedAST demo
  sync_rule: str = "first_c"  # Sync-ST keeps the first C finishers per task ("first_c") or a fraction
  sync_first_c: int = 30  # C (the FedAST demo's firstC)
  sync_keep: float = 0.1  # fraction kept by sync_rule="fraction"
  staleness: str = "constant"  # or "polynomial" (1 + s)^-a
  staleness_exponent: float = 0.5
  local_steps: int = 5
  batch_size: int = 16
  alpha: float = 0.1  # Dirichlet label skew of the image tasks
  eval_every: int = 3  # versions between evaluations (async); sync evaluates every round
  checkpoint_every: int = 2000  # events between checkpoints of a running simulation
  max_time: float = 5000.0  # simulated time after which a run stops (its unfinished tasks count as missed)
  executor: str = "auto"  # job executor (fed.fedast_jobs.MODES); auto = the fastest measured on the backend
  expected_time: float = 300.0  # simulated time per run guessed for the ETA until runs finish

  def validate(self) -> None:
    """Checks every field (before any data is loaded)."""
    config.require(len(self.methods) >= 1 and len(set(self.methods)) == len(self.methods),
                   f"methods must list distinct methods, got {self.methods}.")
    for m in self.methods:
      config.require(m in fedast.METHODS, f"unknown method {m!r}; choose from {fedast.METHODS}.")
    config.require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds),
                   f"seeds must list distinct seeds, got {self.seeds}.")
    config.require(all(s >= 0 for s in self.seeds), f"seeds must be >= 0, got {self.seeds}.")
    config.require(len(self.tasks) >= 1 and len(set(self.tasks)) == len(self.tasks),
                   f"tasks must list distinct tasks, got {self.tasks}.")
    for t in self.tasks:
      config.require(t in ft.SPECS, f"unknown task {t!r}; choose from {tuple(ft.SPECS)}.")
    config.require(len(self.targets) == len(self.tasks),
                   f"give one target per task: {len(self.tasks)} tasks, {len(self.targets)} targets.")
    config.require(all(0 < t <= 1 for t in self.targets), f"targets must be in (0, 1], got {self.targets}.")
    config.require(self.jobs_per_task >= 1, f"jobs_per_task must be >= 1, got {self.jobs_per_task}.")
    config.require(self.fedast_global_lr > 0, f"fedast_global_lr must be > 0, got {self.fedast_global_lr}.")
    config.require(self.sync_global_lr > 0, f"sync_global_lr must be > 0, got {self.sync_global_lr}.")
    config.require(self.local_steps >= 1, f"local_steps must be >= 1, got {self.local_steps}.")
    config.require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}.")
    config.require(self.alpha > 0, f"alpha must be > 0, got {self.alpha}.")
    config.require(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}.")
    config.require(self.max_time > 0, f"max_time must be > 0, got {self.max_time}.")
    config.require(self.expected_time > 0, f"expected_time must be > 0, got {self.expected_time}.")
    for m in self.methods:  # the runtime's own checks (pool, ratio, sync rule, executor, ...)
      self.runtime(m, self.seeds[0]).validate()

  def runtime(self, method: str, seed: int) -> fedast.RuntimeConfig:
    return fedast.RuntimeConfig(
        method=method, num_clients=self.num_clients, max_busy_clients=self.max_busy_clients,
        total_jobs=len(self.tasks) * self.jobs_per_task, ratio=self.ratio, staleness=self.staleness,
        staleness_exponent=self.staleness_exponent, sync_rule=self.sync_rule, sync_first_c=self.sync_first_c,
        sync_keep=self.sync_keep, eval_every=self.eval_every if method.startswith("fedast") else 1,
        max_time=self.max_time, executor=self.executor, seed=seed)


PRESETS = {
    "quick": Config(),
    "paper": Config(methods=("fedast", "fedast_static", "fedast_nobuffer", "sync", "sequential"),
                    seeds=(0, 1, 2, 3, 4), tasks=("mnist_mlp200", "fmnist_lenet5", "cifar10_cnn", "shakespeare_char"),
                    targets=(0.93, 0.82, 0.63, 0.42), local_steps=27, batch_size=32, eval_every=1,
                    max_time=200_000.0, expected_time=20_000.0),
}


def build_tasks(cfg: Config) -> list[fedast.Task]:
  return [ft.build(key, num_clients=cfg.num_clients, steps=cfg.local_steps, batch_size=cfg.batch_size,
                   alpha=cfg.alpha, target=target, global_lr=cfg.fedast_global_lr)
          for key, target in zip(cfg.tasks, cfg.targets)]


def with_lr(tasks: list[fedast.Task], lr: float) -> list[fedast.Task]:
  return [dataclasses.replace(t, global_lr=lr) for t in tasks]


class SimTimeProgress:
  """The run's `paperlab.metrics.RunProgress` in simulated time to the targets.

  Each (method, seed) run counts the simulated time it takes until all its
  tasks reach their targets (or ``max_time``). Until a run of a method has
  finished, a run is guessed to take ``expected_time``; after that, the mean of
  that method's finished runs. The total is revised as runs finish.
  """

  def __init__(self, cfg: Config, progress: metrics.RunProgress):
    self.cfg, self.progress = cfg, progress
    self.finished: dict[tuple[str, int], float] = {}

  def estimate(self) -> float:
    total = 0.0
    for method in self.cfg.methods:
      mine = [t for (m, _), t in self.finished.items() if m == method]
      guess = float(np.mean(mine)) if mine else self.cfg.expected_time
      total += sum(mine) + guess * (len(self.cfg.seeds) - len(mine))
    return total

  def finish(self, key: tuple[str, int], clock: float) -> None:
    """Records a finished run and revises the total."""
    self.finished[key] = clock
    self.progress.set_total(max(self.estimate(), self.progress.done + 1e-9))


def simulate(tasks, cfg: Config, method: str, seed: int, run: config.Run,
             progress: SimTimeProgress | None = None) -> dict:
  """One (method, seed) simulation, resumable from its own checkpoints."""
  done_path = run.path(f"sims/{method}_{seed}.json")
  if done_path.exists():
    out = files.load_json(done_path)  # DamagedFileError names the file
    if progress is not None:
      progress.progress.skip(out["clock"])
      progress.finish((method, seed), out["clock"])
    return out
  lr = cfg.fedast_global_lr if method.startswith("fedast") else cfg.sync_global_lr
  sim = fedast.Simulation(with_lr(tasks, lr), cfg.runtime(method, seed))
  ckpt_dir = run.path(f"sims/ckpt_{method}_{seed}")
  restored = checkpoint.load_flat(ckpt_dir)
  if restored is not None:
    sim.load_state_dict(restored[1], restored[2])
    log.info("%s seed %d: resumed at simulated time %.1f", method, seed, sim.clock)
    if progress is not None:
      progress.progress.skip(sim.clock)
  last = {"n": sim.events, "clock": sim.clock}

  def on_event(s):
    n = s.events
    if progress is not None and s.clock > last["clock"]:
      done = sum(t is not None for t in s.done_time)
      progress.progress.advance(s.clock - last["clock"], {"run": f"{method} seed {seed}",
                                                          "tasks done": f"{done}/{len(s.tasks)}"})
    last["clock"] = s.clock
    if n // cfg.checkpoint_every > last["n"] // cfg.checkpoint_every:
      arrays, meta = s.state_dict()
      checkpoint.save_flat(ckpt_dir, n, arrays, meta)
    last["n"] = n

  sim.run(callback=on_event)
  out = sim.summary()
  out["trace"] = {"eval": sim.trace["eval"], "alloc": sim.trace["alloc"], "realloc": sim.trace["realloc"],
                  "staleness": sim.trace["staleness"]}
  out["task_names"] = [t.name for t in tasks]
  files.save_json(done_path, out)
  if progress is not None:
    progress.finish((method, seed), sim.clock)
  return out


def mean_std(values) -> tuple[float | None, float | None, int]:
  """Mean and (population) std of the runs that reached the target, and how many did."""
  vals = [v for v in values if v is not None]
  if not vals:
    return None, None, 0
  return float(np.mean(vals)), float(np.std(vals)), len(vals)


def summarize(sims: dict, cfg: Config, names: list[str]) -> dict:
  """Per method: time to each target and to all targets (mean, std, runs that reached it)."""
  table = {}
  for method in cfg.methods:
    runs = [sims[(method, s)] for s in cfg.seeds]
    row = {"all_done_time": mean_std([r["all_done_time"] for r in runs]),
           "task_times": {n: mean_std([r["task_times"][n] for r in runs]) for n in names},
           "jobs_done": float(np.mean([r["jobs_done"] for r in runs])),
           "jobs_started": float(np.mean([r.get("jobs_started", r["jobs_done"]) for r in runs])),
           "mean_staleness": {n: float(np.mean([r["mean_staleness"][n] for r in runs])) for n in names}}
    table[method] = {k: (dict(zip(("mean", "std", "reached"), v)) if isinstance(v, tuple) else
                         {n: dict(zip(("mean", "std", "reached"), x)) for n, x in v.items()}
                         if k == "task_times" else v) for k, v in row.items()}
  return table


def _reduction(a, b) -> float | None:
  if a["mean"] is None or b["mean"] is None or a["reached"] < b["reached"]:
    return None
  return 1 - a["mean"] / b["mean"]


def headline_rows(table: dict, names: list[str], seeds: int) -> list[dict]:
  """Headline rows: FedAST and Sync-ST time to all targets, the reduction, and one row per task."""
  if "fedast" not in table or "sync" not in table:
    return [{"metric": f"{m} time to all targets (simulated)", "value": row["all_done_time"]["mean"],
             "note": f"mean of {seeds} seeds"} for m, row in table.items()]
  a, b = table["fedast"], table["sync"]
  red = _reduction(a["all_done_time"], b["all_done_time"])
  rows = [{"metric": "FedAST time to all targets (simulated)", "value": a["all_done_time"]["mean"],
           "note": f"mean of {seeds} seeds, std {a['all_done_time']['std']}"},
          {"metric": "Sync-ST time to all targets (simulated)", "value": b["all_done_time"]["mean"],
           "note": f"mean of {seeds} seeds, std {b['all_done_time']['std']}"},
          {"metric": "FedAST reduction vs Sync-ST", "value": "n/a" if red is None else f"{100 * red:.1f}%",
           "note": "time to all targets; paper: up to 46%"}]
  for n in names:  # one row per task, so a task that misses its target keeps its own label
    r = _reduction(a["task_times"][n], b["task_times"][n])
    rows.append({"metric": f"FedAST time reduction vs Sync-ST: {n}",
                 "value": None if r is None else f"{100 * r:.0f}%", "optional": True,
                 "note": f"reached by {a['task_times'][n]['reached']}/{seeds} (FedAST), "
                         f"{b['task_times'][n]['reached']}/{seeds} (Sync-ST) seeds"})
  return rows


def make_plots(sims: dict, tasks, run: config.Run) -> None:
  names = [t.name for t in tasks]
  first_seed = min(k[1] for k in sims)
  for i, name in enumerate(names):
    series = {}
    for (method, seed), s in sims.items():
      if seed == first_seed:
        pts = [(e[0], e[3]) for e in s["trace"]["eval"] if e[1] == i]
        series[method] = tuple(zip(*pts))
    slug = name.split()[0].replace("-", "").lower()
    plots.line_plot(series, run.path(f"acc_vs_time_{slug}.png"), xlabel="simulated time", ylabel="test accuracy",
                    title=f"{name}: accuracy vs simulated time (seed {first_seed})", hline=tasks[i].target,
                    hline_label="target")
  fed_runs = [s for (m, _), s in sims.items() if m == "fedast"]
  if fed_runs:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    s = fed_runs[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(names):
      ax.hist(s["trace"]["staleness"][i], bins=30, alpha=0.5, label=name)
    ax.set_xlabel("staleness (versions)")
    ax.set_ylabel("updates")
    ax.set_title("FedAST staleness of delivered updates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.path("staleness_hist.png"), dpi=120)
    plt.close(fig)
    alloc = np.asarray(s["trace"]["alloc"] + [[s["clock"]] + s["trace"]["alloc"][-1][1:]], float)
    series = {name: (alloc[:, 0], alloc[:, 1 + i]) for i, name in enumerate(names)}
    plots.line_plot(series, run.path("allocation.png"), xlabel="simulated time", ylabel="active-job budget R_m",
                    title="FedAST allocation of jobs across tasks")


def main(argv=None) -> dict:
  # Seeds only (--seeds 0 1 2 or 0:5, the seeds field): each (method, seed) is an event-driven
  # simulation of asynchronous clients, run one after the other, not one vmapped program.
  cfg, run = config.cli(Config, PRESETS, paper="fedast", description=__doc__, argv=argv,
                        sweep=config.SweepOptions())
  tasks = build_tasks(cfg)
  names = [t.name for t in tasks]
  sims = {}
  total = len(cfg.methods) * len(cfg.seeds) * cfg.expected_time
  with metrics.RunProgress(total, desc="fedast", unit="simulated time") as bar:
    progress = SimTimeProgress(cfg, bar)
    for method in cfg.methods:
      for seed in cfg.seeds:
        sims[(method, seed)] = s = simulate(tasks, cfg, method, seed, run, progress)
        log.info("%s seed %d: all tasks done at %s (per task %s), %d jobs", method, seed, s["all_done_time"],
                 s["task_times"], s["jobs_done"])
  table = summarize(sims, cfg, names)
  make_plots(sims, tasks, run)
  results = {"table": table, "task_names": names,
             "per_run": {f"{m}_{s}": {k: v for k, v in r.items() if k != "trace"} for (m, s), r in sims.items()}}
  run.write_results(results, headline_rows(table, names, len(cfg.seeds)))
  return results


if __name__ == "__main__":
  config.main(main)
