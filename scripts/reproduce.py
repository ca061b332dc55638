"""Runs every paper's experiment at one preset and writes one summary table.

Each registered script runs in its own process (`python scripts/<name>.py
--preset P --workdir runs/<name>/<P>`), so a rerun resumes each experiment from
its checkpoints and finishes quickly. The headline rows of every
``results.json`` are collected into ``runs/summary.md`` (and printed).

    python scripts/reproduce.py                      # every paper, quick preset
    python scripts/reproduce.py --only ccl dion      # a subset
    python scripts/reproduce.py --fresh              # start every run over
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Literal

import tyro

from paperlab import distributed

ROOT = pathlib.Path(__file__).resolve().parent.parent

# key -> (script, paper). The order is the order of the summary table.
REGISTRY: dict[str, tuple[str, str]] = {
    "baseline_mlp": ("scripts/baseline_mlp.py", "Backprop MLP baseline (walking skeleton)"),
    "ccl": ("scripts/ccl.py", "Counter-Current Learning (Kao & Hariharan 2024)"),
    "dion": ("scripts/dion.py", "Dion (Ahn et al. 2025)"),
    "complex_momentum": ("scripts/complex_momentum.py", "Complex Momentum for Optimization in Games (Lorraine et al. 2022)"),
    "fed_partial": ("scripts/fed_partial.py", "Partial personalization: FedAvg / FedSim / FedAlt (Pillutla et al. 2022)"),
    "fedast": ("scripts/fedast.py", "FedAST (Askin et al. 2024)"),
    "swat_nn": ("scripts/swat_nn.py", "SWAT-NN (Huang et al. 2025)"),
}


@dataclasses.dataclass(frozen=True)
class Args:
  """Options of the main job."""

  preset: Literal["quick", "paper"] = "quick"  # preset passed to every script
  only: tuple[str, ...] = ()  # registered keys to run (default: all)
  fresh: bool = False  # delete each run directory first
  timeout_min: float = 10.0  # stop a script that runs longer than this (minutes); reported as failed
  runs_root: pathlib.Path = pathlib.Path("runs")  # where run directories and summary.md go


def _fmt(value) -> str:
  """A table cell: floats to 4 significant digits, pipes escaped."""
  text = f"{value:.4g}" if isinstance(value, float) else str(value)
  return text.replace("|", "\\|")


def run_one(key: str, args: Args) -> dict:
  script, paper = REGISTRY[key]
  workdir = args.runs_root / key / args.preset
  cmd = [sys.executable, str(ROOT / script), "--preset", args.preset, "--workdir", str(workdir)]
  if args.fresh:
    cmd.append("--fresh")
  print(f"\n=== {paper}: {' '.join(cmd[1:])}", flush=True)
  t0 = time.perf_counter()
  try:
    returncode = subprocess.run(cmd, cwd=os.getcwd(), check=False, timeout=60 * args.timeout_min).returncode
    status = f"exit code {returncode}"
  except subprocess.TimeoutExpired:
    returncode, status = -1, f"timed out after {args.timeout_min:g} min (rerun resumes from checkpoints)"
  seconds = time.perf_counter() - t0
  results_path = workdir / "results.json"
  if returncode != 0 or not results_path.exists():
    return {"key": key, "paper": paper, "ok": False, "seconds": seconds,
            "rows": [{"metric": "run failed", "value": status, "note": f"see {workdir}/log.txt"}]}
  results = json.loads(results_path.read_text())
  return {"key": key, "paper": paper, "ok": True, "seconds": seconds, "rows": results["headline"],
          "command": f"python {script} --preset {args.preset}"}


def summary_markdown(outcomes: list[dict], args: Args, total_s: float) -> str:
  lines = [f"# Summary: every paper's `{args.preset}` preset", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}. "
           f"Total wall time {total_s / 60:.1f} min.", "",
           "| paper | metric | value | note | wall time |", "|---|---|---|---|---|"]
  for o in outcomes:
    for i, row in enumerate(o["rows"]):
      wall = f"{o['seconds']:.0f} s" if i == 0 else ""
      lines.append(f"| {o['paper'] if i == 0 else ''} | {_fmt(row['metric'])} | {_fmt(row['value'])} | "
                   f"{_fmt(row.get('note', ''))} | {wall} |")
  lines += ["", "Commands: " + "; ".join(f"`{o['command']}`" for o in outcomes if o.get("command"))]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  distributed.require_single_process("scripts/reproduce.py", sys.argv[1:] if argv is None else argv)
  args = tyro.cli(Args, args=argv, description=__doc__ + "\nRegistered: " + ", ".join(REGISTRY))
  unknown = [k for k in args.only if k not in REGISTRY]
  if unknown:
    raise SystemExit(f"error: unknown --only entries {unknown}; registered: {', '.join(REGISTRY)}")
  keys = list(args.only) or list(REGISTRY)
  t0 = time.perf_counter()
  outcomes = [run_one(k, args) for k in keys]
  text = summary_markdown(outcomes, args, time.perf_counter() - t0)
  args.runs_root.mkdir(parents=True, exist_ok=True)
  (args.runs_root / "summary.md").write_text(text)
  print("\n" + text)
  print(f"Wrote {args.runs_root / 'summary.md'}")
  return 0 if all(o["ok"] for o in outcomes) else 1


if __name__ == "__main__":
  sys.exit(main())
