"""FedAST vs synchronous simultaneous training: three FL tasks on one pool of clients.

Tasks (quick preset): MNIST-5k MLP, Fashion-MNIST MLP and a Shakespeare
next-character model, all on a pool of 1000 clients (Dirichlet alpha = 0.1
label skew for the image tasks, one speaking role per client for Shakespeare),
each with a target test accuracy. Every (method, seed) run is simulated until
all tasks reach their targets; the table reports the simulated time per task
and for all tasks, mean over seeds.

    python scripts/fedast.py --preset quick
    python scripts/fedast.py --preset quick --methods fedast sync sequential --seeds 0 1 2 3 4
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np

from paperlab import checkpoint, config, metrics, plots
from fed import fedast
from fed import fedast_tasks as ft

log = logging.getLogger("fedast")


@dataclasses.dataclass(frozen=True)
class Config:
  """FedAST experiment."""

  methods: tuple[str, ...] = ("fedast", "sync")  # from fed.fedast.METHODS
  seeds: tuple[int, ...] = (0, 1, 2)
  num_clients: int = 1000
  max_busy_clients: int = 300
  jobs_per_task: int = 96  # R_m at the start (R_total = 3 x this)
  ratio: int = 32  # buffer b = ceil(R_m / ratio)
  fedast_global_lr: float = 0.15  # eta_g of FedAST (stale updates need a small server step)
  sync_global_lr: float = 1.0  # Sync-ST averages fresh updates (FedAvg)
  sync_keep: float = 0.1  # Sync-ST keeps this fraction of each task's group
  staleness: str = "constant"  # or "polynomial" (1 + s)^-a
  local_steps: int = 5
  batch_size: int = 16
  alpha: float = 0.1
  targets: tuple[float, float, float] = (0.80, 0.70, 0.30)  # mnist-5k, fashion-mnist, shakespeare
  eval_every: int = 3  # versions between evaluations (async); sync evaluates every round
  checkpoint_every: int = 2000  # events between checkpoints of a running simulation
  max_time: float = 5000.0

  def validate(self) -> None:
    for m in self.methods:
      config.require(m in fedast.METHODS, f"unknown method {m!r}; choose from {fedast.METHODS}.")
    config.require(len(self.seeds) >= 1, "give at least one seed.")
    config.require(self.jobs_per_task >= 1 and self.ratio >= 1, "jobs_per_task and ratio must be >= 1.")
    config.require(all(0 < t <= 1 for t in self.targets), f"targets must be in (0, 1], got {self.targets}.")
    config.require(self.fedast_global_lr > 0 and self.sync_global_lr > 0, "global learning rates must be > 0.")
    config.require(self.local_steps >= 1 and self.batch_size >= 1, "local_steps and batch_size must be >= 1.")
    config.require(self.checkpoint_every >= 1, "checkpoint_every must be >= 1.")
    self.runtime("fedast", 0).validate()

  def runtime(self, method: str, seed: int) -> fedast.RuntimeConfig:
    return fedast.RuntimeConfig(
        method=method, num_clients=self.num_clients, max_busy_clients=self.max_busy_clients,
        total_jobs=3 * self.jobs_per_task, ratio=self.ratio, staleness=self.staleness,
        sync_keep=self.sync_keep, eval_every=self.eval_every if method.startswith("fedast") else 1,
        max_time=self.max_time, seed=seed)


PRESETS = {
    "quick": Config(),
    "paper": Config(methods=("fedast", "fedast_static", "fedast_nobuffer", "sync", "sequential"),
                    seeds=(0, 1, 2, 3, 4), targets=(0.85, 0.75, 0.35)),
}

# Duration model per task (exp mean, shift), from the FedAST demo configuration.
_DELAYS = ((0.148, 0.074), (0.24, 0.12), (0.555, 0.2775))


def build_tasks(cfg: Config, global_lr: float) -> list[fedast.Task]:
  common_args = dict(num_clients=cfg.num_clients, steps=cfg.local_steps, batch_size=cfg.batch_size,
                     global_lr=global_lr, seed=0)
  return [
      ft.image_task("mnist", name="mnist-5k MLP", hidden=(64,), alpha=cfg.alpha, target=cfg.targets[0],
                    local_lr=0.1, exp_mean=_DELAYS[0][0], shift=_DELAYS[0][1], **common_args),
      ft.image_task("fashion_mnist", name="fashion-mnist MLP", hidden=(64,), alpha=cfg.alpha,
                    target=cfg.targets[1], local_lr=0.1, exp_mean=_DELAYS[1][0], shift=_DELAYS[1][1],
                    **common_args),
      ft.shakespeare_task(name="shakespeare char", context=8, embed=8, hidden=64, target=cfg.targets[2],
                          local_lr=0.5, exp_mean=_DELAYS[2][0], shift=_DELAYS[2][1], **common_args),
  ]


def with_lr(tasks: list[fedast.Task], lr: float) -> list[fedast.Task]:
  return [dataclasses.replace(t, global_lr=lr) for t in tasks]


def simulate(tasks, cfg: Config, method: str, seed: int, run: config.Run) -> dict:
  """One (method, seed) simulation, resumable from its own checkpoints."""
  done_path = run.path(f"sims/{method}_{seed}.json")
  if done_path.exists():
    return json.loads(done_path.read_text())
  lr = cfg.fedast_global_lr if method.startswith("fedast") else cfg.sync_global_lr
  sim = fedast.Simulation(with_lr(tasks, lr), cfg.runtime(method, seed))
  ckpt_dir = run.path(f"sims/ckpt_{method}_{seed}")
  restored = checkpoint.load_flat(ckpt_dir)
  if restored is not None:
    sim.load_state_dict(restored[1], restored[2])
    log.info("%s seed %d: resumed at simulated time %.1f", method, seed, sim.clock)
  bar = metrics.progress(len(tasks), desc=f"{method} seed {seed}")
  last = {"n": sim.received + sim.round}  # a monotone event count, also after a resume

  def on_event(s):
    n = s.received + s.round
    bar.n = sum(t is not None for t in s.done_time)
    bar.set_postfix({"time": f"{s.clock:.0f}"}, refresh=False)
    if n // cfg.checkpoint_every > last["n"] // cfg.checkpoint_every:
      arrays, meta = s.state_dict()
      checkpoint.save_flat(ckpt_dir, n, arrays, meta)
    last["n"] = n

  sim.run(callback=on_event)
  bar.close()
  out = sim.summary()
  out["trace"] = {"eval": sim.trace["eval"], "alloc": sim.trace["alloc"],
                  "staleness": sim.trace["staleness"]}
  out["task_names"] = [t.name for t in tasks]
  done_path.parent.mkdir(parents=True, exist_ok=True)
  done_path.write_text(json.dumps(out, default=float))
  return out


def _mean(values):
  vals = [v for v in values if v is not None]
  return float(np.mean(vals)) if len(vals) == len(values) else None


def make_plots(sims: dict, tasks, run: config.Run) -> None:
  names = [t.name for t in tasks]
  for i, name in enumerate(names):
    series = {}
    for (method, seed), s in sims.items():
      if seed == min(k[1] for k in sims):
        pts = [(e[0], e[3]) for e in s["trace"]["eval"] if e[1] == i]
        series[method] = tuple(zip(*pts))
    slug = name.split()[0].replace("-", "")
    plots.line_plot(series, run.path(f"acc_vs_time_{slug}.png"), xlabel="simulated time", ylabel="test accuracy",
                    title=f"{name}: accuracy vs simulated time", hline=tasks[i].target, hline_label="target")
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
  cfg, run = config.cli(Config, PRESETS, paper="fedast", description=__doc__, argv=argv)
  tasks = build_tasks(cfg, cfg.fedast_global_lr)
  sims = {}
  for method in cfg.methods:
    for seed in cfg.seeds:
      sims[(method, seed)] = simulate(tasks, cfg, method, seed, run)
      s = sims[(method, seed)]
      log.info("%s seed %d: all tasks done at %s (per task %s), %d jobs", method, seed, s["all_done_time"],
               s["task_times"], s["jobs_done"])
  table = {}
  for method in cfg.methods:
    runs = [sims[(method, s)] for s in cfg.seeds]
    table[method] = {"all_done_time": _mean([r["all_done_time"] for r in runs]),
                     "task_times": {t.name: _mean([r["task_times"][t.name] for r in runs]) for t in tasks},
                     "jobs_done": float(np.mean([r["jobs_done"] for r in runs])),
                     "mean_staleness": {t.name: float(np.mean([r["mean_staleness"][t.name] for r in runs]))
                                        for t in tasks}}
  make_plots(sims, tasks, run)
  headline = []
  if "fedast" in table and "sync" in table:
    a, b = table["fedast"]["all_done_time"], table["sync"]["all_done_time"]
    reduction = None if a is None or b is None else 1 - a / b
    headline.append({"metric": "FedAST time to all targets (simulated)", "value": a,
                     "note": f"mean of {len(cfg.seeds)} seeds"})
    headline.append({"metric": "Sync-ST time to all targets (simulated)", "value": b,
                     "note": f"mean of {len(cfg.seeds)} seeds"})
    headline.append({"metric": "FedAST reduction vs Sync-ST", "value": "n/a" if reduction is None else
                     f"{100 * reduction:.1f}%", "note": "time to all targets; paper: up to 46%"})
    per_task = [1 - table["fedast"]["task_times"][t.name] / table["sync"]["task_times"][t.name]
                for t in tasks if table["fedast"]["task_times"][t.name] and table["sync"]["task_times"][t.name]]
    if per_task:
      headline.append({"metric": "FedAST per-task time reduction vs Sync-ST", "value":
                       ", ".join(f"{100 * r:.0f}%" for r in per_task), "note": ", ".join(t.name for t in tasks)})
  results = {"table": table, "per_run": {f"{m}_{s}": {k: v for k, v in r.items() if k != "trace"}
                                         for (m, s), r in sims.items()}}
  run.write_results(results, headline)
  for method, row in table.items():
    log.info("%-16s all tasks %s | %s", method, row["all_done_time"], row["task_times"])
  return results


if __name__ == "__main__":
  main()
