"""Runs every benchmark in this folder and writes results.md / results.json.

A benchmark is a module ``benchmarks/<name>.py`` with ``run() -> dict`` holding
``title``, ``rows`` (one dict per compared variant, same keys) and ``notes``.
Timings are medians of repeated calls inside one process, so compare numbers
within a table (ratios), not across machines or runs.

    python benchmarks/run.py                 # all
    python benchmarks/run.py mlp_flops       # some
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common_timing import machine  # noqa: E402

_NOT_BENCHMARKS = {"run", "common_timing"}


def discover() -> list[str]:
  return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in _NOT_BENCHMARKS and not p.stem.startswith("_"))


def render(result: dict) -> str:
  rows = result["rows"]
  keys = list(rows[0]) if rows else []
  out = [f"## {result['title']}", ""]
  if keys:
    out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
  if result.get("notes"):
    out += ["", result["notes"]]
  return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
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
    results[name] = res
    print(render(res), flush=True)
  out_md = HERE / "results.md"
  previous = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
  previous.update(results)
  (HERE / "results.json").write_text(json.dumps(previous, indent=2) + "\n")
  header = ["# Benchmark results", "",
            f"Latest run: {time.strftime('%Y-%m-%d')} on {machine()}.",
            "Regenerate with `make bench` (or `python benchmarks/run.py NAME`).", ""]
  out_md.write_text("\n".join(header) + "\n".join(render(previous[k]) for k in sorted(previous)))
  print(f"Wrote {out_md}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
