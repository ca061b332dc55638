"""Runs every paper's experiment at one preset and writes one summary table.

Each registered script runs in its own process (`python scripts/<name>.py
--preset P --workdir runs/<name>/<P>`), so a rerun resumes each experiment from
its checkpoints and finishes quickly. The child's output goes to the console
and to ``runs/<name>/<P>.reproduce.log``. The headline rows of every
``results.json`` are collected into ``runs/summary.md`` (and printed); a run
that exits non-zero, times out, or whose results are marked failed (a headline
value that is not a number) is a failed row that links its log.

    python scripts/reproduce.py                      # every paper, quick preset
    python scripts/reproduce.py --only ccl dion      # a subset
    python scripts/reproduce.py --fresh              # start every run over
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import platform
import subprocess
import sys
import threading
import time

from paperlab import distributed

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from paperlab import config, files  # noqa: E402  pylint: disable=wrong-import-position

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


def script_presets(key: str) -> tuple[str, ...]:
  """The preset names of a registered script, read from its source (no import).

  The script must define ``PRESETS = {"name": ..., ...}`` at module level.
  """
  source = (ROOT / REGISTRY[key][0]).read_text()
  for node in ast.parse(source).body:
    if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PRESETS" for t in node.targets)
        and isinstance(node.value, ast.Dict)):
      return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
  raise ValueError(f"{REGISTRY[key][0]} defines no PRESETS dict.")


def common_presets(keys) -> tuple[str, ...]:
  """Presets that every script of ``keys`` has (in the first script's order)."""
  sets = [script_presets(k) for k in keys]
  return tuple(p for p in sets[0] if all(p in s for s in sets[1:]))


@dataclasses.dataclass(frozen=True)
class Args:
  """Options of the main job."""

  preset: str = "quick"  # preset passed to every script; it must exist in each selected script
  only: tuple[str, ...] = ()  # registered keys to run (default: all)
  fresh: bool = False  # delete each run directory first
  timeout_min: float = 10.0  # stop a script that runs longer than this (minutes); reported as failed
  runs_root: pathlib.Path = pathlib.Path("runs")  # where run directories and summary.md go

  def keys(self) -> list[str]:
    return list(self.only) or list(REGISTRY)

  def validate(self) -> None:
    unknown = [k for k in self.only if k not in REGISTRY]
    config.require(not unknown, f"unknown --only entries {unknown}; registered: {', '.join(REGISTRY)}.")
    config.require(self.timeout_min > 0, f"timeout_min must be > 0, got {self.timeout_min}.")
    lacking = [k for k in self.keys() if self.preset not in script_presets(k)]
    config.require(not lacking, f"preset {self.preset!r} does not exist in {', '.join(lacking)}; presets "
                   f"common to the selected scripts: {', '.join(common_presets(self.keys()))}.")


def _fmt(value) -> str:
  """A table cell: floats to 4 significant digits, pipes escaped."""
  text = f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))
  return text.replace("|", "\\|")


def _stream(proc: subprocess.Popen, log_file) -> None:
  for line in proc.stdout:
    sys.stdout.write(line)
    sys.stdout.flush()
    log_file.write(line)
    log_file.flush()


def _last_error(log_path: pathlib.Path) -> str:
  lines = [x for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
  errors = [x for x in lines if x.startswith(("error:", "interrupted:"))]
  return (errors or lines or [""])[-1][:200]


def run_one(key: str, args: Args) -> dict:
  script, paper = REGISTRY[key]
  workdir = args.runs_root / key / args.preset
  log_path = args.runs_root / key / f"{args.preset}.reproduce.log"
  log_path.parent.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, str(ROOT / script), "--preset", args.preset, "--workdir", str(workdir)]
  if args.fresh:
    cmd.append("--fresh")
  print(f"\n=== {paper}: {' '.join(cmd[1:])}  (log: {log_path})", flush=True)
  t0 = time.perf_counter()
  with open(log_path, "w") as log_file:
    proc = subprocess.Popen(cmd, cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    reader = threading.Thread(target=_stream, args=(proc, log_file), daemon=True)
    reader.start()
    try:
      returncode = proc.wait(timeout=60 * args.timeout_min)
      status = f"exit code {returncode}"
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      returncode, status = -1, f"timed out after {args.timeout_min:g} min (rerun resumes from checkpoints)"
    reader.join(timeout=10)
  seconds = time.perf_counter() - t0
  command = f"python {script} --preset {args.preset}"
  failed = {"key": key, "paper": paper, "ok": False, "seconds": seconds, "command": command}
  results_path = workdir / "results.json"
  if returncode != 0:
    why = _last_error(log_path) if returncode > 0 else ""
    return {**failed, "rows": [{"metric": "run failed", "value": status,
                                "note": f"{why + '; ' if why else ''}see {log_path}"}]}
  try:
    results = files.load_json(results_path)
  except (FileNotFoundError, ValueError) as e:
    return {**failed, "rows": [{"metric": "run failed", "value": "no readable results.json",
                                "note": f"{' '.join(str(e).split())[:200]}; see {log_path}"}]}
  if results.get("status", "ok") != "ok":
    return {**failed, "rows": [{"metric": "run failed", "value": "; ".join(results.get("problems", [])),
                                "note": f"see {results_path} and {log_path}"}] + results["headline"]}
  return {"key": key, "paper": paper, "ok": True, "seconds": seconds, "rows": results["headline"],
          "command": command}


def summary_markdown(outcomes: list[dict], args: Args, total_s: float) -> str:
  failed = [o["key"] for o in outcomes if not o["ok"]]
  lines = [f"# Summary: every paper's `{args.preset}` preset", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}. "
           f"Total wall time {total_s / 60:.1f} min. "
           + (f"**Failed: {', '.join(failed)}.**" if failed else "Every run succeeded."), "",
           "| paper | metric | value | note | wall time |", "|---|---|---|---|---|"]
  for o in outcomes:
    for i, row in enumerate(o["rows"]):
      wall = f"{o['seconds']:.0f} s" if i == 0 else ""
      lines.append(f"| {o['paper'] if i == 0 else ''} | {_fmt(row['metric'])} | {_fmt(row['value'])} | "
                   f"{_fmt(row.get('note', ''))} | {wall} |")
  commands = [f"`{o['command']}`" for o in outcomes if o.get("ok") and o.get("command")]
  lines += ["", "Commands: " + "; ".join(commands)]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  distributed.require_single_process("scripts/reproduce.py", sys.argv[1:] if argv is None else argv)
  args = config.parse_args(Args, argv=argv, description=__doc__ + "\nRegistered (presets): " + ", ".join(
      f"{k} ({', '.join(script_presets(k))})" for k in REGISTRY))
  t0 = time.perf_counter()
  outcomes = [run_one(k, args) for k in args.keys()]
  text = summary_markdown(outcomes, args, time.perf_counter() - t0)
  files.atomic_write_text(args.runs_root / "summary.md", text)
  print("\n" + text)
  print(f"Wrote {args.runs_root / 'summary.md'}")
  return 0 if all(o["ok"] for o in outcomes) else 1


if __name__ == "__main__":
  config.main(lambda: sys.exit(main()))
