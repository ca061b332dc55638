"""Runs every benchmark in this folder and writes results.md / results.json.

A benchmark is a module ``benchmarks/<name>.py`` with ``run() -> dict`` holding
``title``, ``rows`` (one dict per compared variant, same keys) and ``notes``.
Timings are medians of repeated calls inside one process, so compare numbers
within a table (ratios), not across machines or runs.

``results.md`` is the single source of the performance numbers the README
and the docs quote. Every table in it carries its provenance, recorded when
it was measured: the command that reproduces it (``python benchmarks/run.py
NAME``, or the benchmark's own ``command`` when it needs pinning flags), the
machine (CPU model name and flags from ``/proc/cpuinfo``, or the GPU's name),
the jax version, the date and the load average when it started (the machine
may be shared). ``results.json`` keeps the same facts per
benchmark; ``--render`` rewrites ``results.md`` from it without measuring.

    python benchmarks/run.py                 # all
    python benchmarks/run.py mlp_flops       # some
    python benchmarks/run.py --render        # results.md from results.json only
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common_timing import machine  # noqa: E402

_NOT_BENCHMARKS = {"run", "common_timing", "gpu"}  # gpu.py writes its own results file
PROVENANCE_KEYS = ("command", "machine", "jax", "date")


def discover() -> list[str]:
  return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in _NOT_BENCHMARKS and not p.stem.startswith("_"))


def provenance(name: str, result: dict) -> dict:
  """Command, machine, jax version and date of a result measured now in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  return {"command": result.get("command") or f"python benchmarks/run.py {name}",
          "machine": machine(), "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
          "load": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None}


def provenance_line(name: str, result: dict) -> str:
  """The line under a table that says how, where and when it was measured."""
  prov = result.get("provenance")
  if not prov or any(not prov.get(k) for k in PROVENANCE_KEYS):
    return (f"Provenance: not recorded (measured before provenance was kept); rerun "
            f"`python benchmarks/run.py {name}` to measure it again with its command, machine and date.")
  load = f"; 1-min load average {prov['load']} when it started" if prov.get("load") is not None else ""
  jax_part = "" if f"jax {prov['jax']}" in prov["machine"] else f"; jax {prov['jax']}"
  return f"Provenance: `{prov['command']}` on {prov['machine']}{jax_part}; {prov['date']}{load}."


def render(result: dict, name: str | None = None) -> str:
  rows = result["rows"]
  keys = list(rows[0]) if rows else []
  out = [f"## {result['title']}", ""]
  if keys:
    out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
  if result.get("notes"):
    out += ["", result["notes"]]
  if name is not None:
    out += ["", provenance_line(name, result)]
  return "\n".join(out) + "\n"


def render_all(results: dict) -> str:
  """``results.md``: every table with its provenance line, by benchmark name."""
  header = ["# Benchmark results", "",
            "Each table ends with its provenance: the command that reproduces it, the machine (CPU model "
            "name from /proc/cpuinfo), the jax version and the date it was measured. Regenerate with "
            "`make bench` (or `python benchmarks/run.py NAME`); compare numbers within a table.", ""]
  return "\n".join(header) + "\n" + "\n".join(render(results[k], k) for k in sorted(results))


def write(results: dict) -> pathlib.Path:
  (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  out_md = HERE / "results.md"
  out_md.write_text(render_all(results))
  return out_md


def main(argv: list[str]) -> int:
  if argv == ["--render"]:
    previous = json.loads((HERE / "results.json").read_text())
    print(f"Wrote {write(previous)}")
    return 0
  names = argv or discover()
  unknown = [n for n in names if n not in discover()]
  if unknown:
    print(f"error: unknown benchmarks {unknown}; available: {', '.join(discover())}")
    return 2
  results, failed = {}, []
  for name in names:
    print(f"--- {name}", flush=True)
    t0 = time.perf_counter()
    try:
      res = importlib.import_module(name).run()
    except Exception:  # keep going; report at the end
      traceback.print_exc()
      failed.append(name)
      continue
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["provenance"] = provenance(name, res)
    results[name] = res
    print(render(res, name), flush=True)
  previous = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
  previous.update(results)
  print(f"Wrote {write(previous)}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
