"""benchmarks/: results.md is generated with provenance; no hand-written machine names; gpu.py --smoke runs."""

import json
import pathlib
import re
import statistics
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common_timing  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import run as bench_run  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

CPU_NAMES = re.compile(r"\b(EPYC|Xeon|Ryzen|Core\(TM\)|Threadripper|Graviton|Neoverse)\b")


def test_results_md_is_rendered_from_results_json():
  results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
  assert (ROOT / "benchmarks" / "results.md").read_text() == bench_run.render_all(results), (
      "benchmarks/results.md differs from results.json: regenerate it (python benchmarks/run.py "
      "--render), never edit it by hand")


def test_every_table_states_its_provenance():
  result = {"title": "t", "rows": [{"a": 1}], "notes": "n"}
  assert "Provenance: not recorded" in bench_run.render(result, "toy")
  result["provenance"] = bench_run.provenance("toy", result)
  text = bench_run.render(result, "toy")
  prov = result["provenance"]
  for value in ("python benchmarks/run.py toy", prov["machine"], f"jax {prov['jax']}", prov["date"]):
    assert value in text
  result["command"] = "taskset -c 0 python benchmarks/run.py toy"
  assert bench_run.provenance("toy", result)["command"] == result["command"]
  for name, res in json.loads((ROOT / "benchmarks" / "results.json").read_text()).items():
    assert "Provenance:" in bench_run.render(res, name)


def test_machine_is_read_from_cpuinfo():
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if not cpuinfo.exists():
    pytest.skip("no /proc/cpuinfo")
  text = cpuinfo.read_text()
  model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
  if model:
    assert common_timing.cpu_name().startswith(model[1].strip())
  if re.search(r"^flags\s*:.*\bavx512f\b", text, re.M):
    assert "AVX-512" in common_timing.cpu_name()
  assert common_timing.machine().startswith(common_timing.cpu_name())


def test_docs_name_no_cpu_model_by_hand():
  """Machine names come from the provenance lines of results.md (hosts differ between runs)."""
  offenders = []
  for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if CPU_NAMES.search(line):
        offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
  assert not offenders, "\n".join(offenders)


@pytest.mark.slow
def test_gpu_check_smoke_mode_runs_every_section(tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(tmp_path)],
                        capture_output=True, text=True, timeout=600, check=False,
                        env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  result = json.loads((tmp_path / "gpu_results_smoke.json").read_text())
  assert result["device"] and result["jax"] and result["date"] and result["smoke"]
  assert set(result["sections"]) == {"dion", "complex_momentum", "fed_round", "fedast_jobs", "sweep"}
  for name, sec in result["sections"].items():
    assert sec["status"] == "ok" or sec["status"].startswith("skipped: "), (name, sec["status"])
  for name in ("dion", "complex_momentum", "fed_round"):  # on main: these pieces exist
    sec = result["sections"][name]
    assert sec["status"] == "ok" and sec["rows"], name
    assert all(isinstance(r["ms (median)"], float) or str(r["ms (median)"]).startswith("skipped: ")
               for r in sec["rows"]), sec["rows"]
  md = (tmp_path / "gpu_results_smoke.md").read_text()
  assert result["device"] in md and "## dion" in md


_BENCH_REF = re.compile(r"benchmarks/(?:run\.py (\w+)|(\w+)\.py)")
_DECIMAL = re.compile(r"(?<![\w./])(\d+\.\d+)x?(?![\w./])")


def _numbers(value, out: set[str]) -> set[str]:
  """Every number in a results.json entry, as text at 1, 2, 3 and 4 decimals."""
  if isinstance(value, dict):
    for v in value.values():
      _numbers(v, out)
  elif isinstance(value, list):
    for v in value:
      _numbers(v, out)
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    out.update(f"{float(value):.{d}f}" for d in range(1, 5))
  elif isinstance(value, str):
    for num in re.findall(r"\d+\.\d+", value):
      out.update(f"{float(num):.{d}f}" for d in range(1, 5) if d <= len(num.split(".")[1]))
  return out


def test_every_readme_number_next_to_a_benchmark_is_in_its_results():
  """A README paragraph (or table row) that names a benchmark quotes only numbers of its table
  (its rows, notes or provenance); a number after ``<=`` / ``>=`` is a goal, not a result."""
  results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
  text = (ROOT / "README.md").read_text()
  blocks = [b for para in re.split(r"\n\s*\n", text)
            for b in (para.splitlines() if para.lstrip().startswith("|") else [para])]
  offenders = []
  for block in blocks:
    names = {a or b for a, b in _BENCH_REF.findall(block)} - {"run", "gpu"}
    if not names:
      continue
    missing = [n for n in names if n not in results]
    assert not missing, f"README cites benchmarks without results: {missing}"
    known = set()
    for n in names:
      _numbers(results[n]["rows"], known)
      _numbers(results[n].get("notes", ""), known)
      _numbers(results[n].get("provenance", {}), known)
    for match in _DECIMAL.finditer(block):
      num = match[1]
      if num not in known and not block[:match.start()].rstrip().endswith(("<=", ">=")):  # goals
        offenders.append(f"{num} (next to {sorted(names)}): {block.strip()[:120]}")
  assert not offenders, "\n".join(offenders)


def test_over_floor_pairs_each_time_with_its_own_rate():
  # Five runs of code at 1.2-1.6x its floor; the host runs at full or half speed per run,
  # which divides both the run's speed and the GEMM rate timed next to it.
  flops, rate = 1e9, 50e9
  ratios, speeds = [1.2, 1.5, 1.3, 1.4, 1.6], [0.5, 1.0, 0.5, 1.0, 0.5]
  seconds = [q * flops / (rate * v) for q, v in zip(ratios, speeds)]
  rates = [rate * v for v in speeds]
  assert common_timing.over_floor(seconds, rates, flops) == pytest.approx(1.4)
  unpaired = statistics.median(seconds) * statistics.median(rates) / flops
  assert unpaired == pytest.approx(1.2)  # what the medians of each side would claim
  with pytest.raises(ValueError, match="paired samples"):
    common_timing.over_floor(seconds, rates[:-1], flops)
