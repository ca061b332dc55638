"""scripts/reproduce.py: presets every script has, failed rows that link a log that exists."""

import importlib
import pathlib
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import reproduce  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_preset_names_read_from_source_match_every_script():
  for key, (script, _) in reproduce.REGISTRY.items():
    module = importlib.import_module(pathlib.Path(script).stem)
    assert reproduce.script_presets(key) == tuple(module.PRESETS), key
  common = reproduce.common_presets(list(reproduce.REGISTRY))
  assert "quick" in common
  for key in reproduce.REGISTRY:  # every preset offered for the whole job exists in every script
    assert set(common) <= set(importlib.import_module(pathlib.Path(reproduce.REGISTRY[key][0]).stem).PRESETS)
  assert "paper" in reproduce.script_presets("swat_nn")


FAKE = {
    "crash": "import sys; print('working...'); print('error: lr must be > 0, got -1.', file=sys.stderr); sys.exit(2)",
    "nan": """
        import json, pathlib, sys
        wd = pathlib.Path(sys.argv[sys.argv.index('--workdir') + 1]); wd.mkdir(parents=True, exist_ok=True)
        (wd / 'results.json').write_text(json.dumps({'status': 'failed', 'problems': ["'val loss' is not a number"],
            'headline': [{'metric': 'val loss', 'value': None, 'note': 'FAILED: value not a number'}]}))
    """,
    "torn": """
        import pathlib, sys
        wd = pathlib.Path(sys.argv[sys.argv.index('--workdir') + 1]); wd.mkdir(parents=True, exist_ok=True)
        (wd / 'results.json').write_text('{"status": "ok", "headl')
    """,
    "good": """
        import json, pathlib, sys
        wd = pathlib.Path(sys.argv[sys.argv.index('--workdir') + 1]); wd.mkdir(parents=True, exist_ok=True)
        (wd / 'results.json').write_text(json.dumps({'status': 'ok', 'headline': [{'metric': 'acc', 'value': 0.5}]}))
    """,
}


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
  registry = {}
  for name, code in FAKE.items():
    path = tmp_path / f"{name}.py"
    path.write_text("PRESETS = {'quick': None}\n" + textwrap.dedent(code))
    registry[name] = (str(path), f"paper {name}")
  monkeypatch.setattr(reproduce, "REGISTRY", registry)
  return tmp_path


def test_failed_runs_are_failed_rows_with_a_log_that_exists(fake_registry, capsys):
  runs_root = fake_registry / "runs"
  rc = reproduce.main(["--runs-root", str(runs_root)])
  assert rc == 1
  summary = (runs_root / "summary.md").read_text()
  assert "**Failed: crash, nan, torn.**" in summary
  for name in ("crash", "nan", "torn"):
    log = runs_root / name / "quick.reproduce.log"
    assert log.exists(), name
    row = next(line for line in summary.splitlines() if line.startswith(f"| paper {name} |"))
    assert "run failed" in row and str(log) in row, row
  crash_row = next(x for x in summary.splitlines() if x.startswith("| paper crash |"))
  assert "exit code 2" in crash_row and "error: lr must be > 0" in crash_row
  assert "working..." in (runs_root / "crash" / "quick.reproduce.log").read_text()
  assert "not a number" in next(x for x in summary.splitlines() if x.startswith("| paper nan |"))
  assert "results.json is damaged" in next(x for x in summary.splitlines() if x.startswith("| paper torn |"))
  assert "| paper good | acc | 0.5 |" in summary
  assert "working..." in capsys.readouterr().out  # the child's output is also shown live
