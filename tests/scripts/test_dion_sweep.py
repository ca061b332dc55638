"""scripts/dion.py with --seeds and --sweep: an lr grid per arm, per-point mean +- std, best point compared."""

import json
import pathlib
import sys

import pytest

from paperlab import config

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import dion  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.slow
def test_lr_grid_per_arm(tmp_path, monkeypatch):
  wd = tmp_path / "run"
  argv = ["--arms", "adamw", "dion-1/2", "--sweep-arms", "--sweep-batch-sizes", "--steps", "10", "--log-every", "5",
          "--eval-every", "5", "--d-model", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
          "--batch-size", "4", "--eval-windows", "8", "--timing-calls", "1", "--workdir", str(wd),
          "--seeds", "0", "1", "--sweep", "adamw_lr=0.001,0.01"]
  monkeypatch.setattr(sys, "argv", ["dion.py", *argv])
  with pytest.raises(SystemExit) as e:
    config.main(dion.main)
  assert e.value.code == 0
  results = json.loads((wd / "results.json").read_text())
  adamw, dion_arm = results["results"]["runs"]
  assert len(adamw["sweep"]["points"]) == 2 and len(adamw["sweep"]["members"]) == 4  # 2 lrs x 2 seeds
  assert len(dion_arm["sweep"]["points"]) == 1 and dion_arm["seeds"] == 2  # adamw_lr is not Dion's
  assert adamw["best_point"]["adamw_lr"] in (0.001, 0.01)
  best = min(adamw["sweep"]["points"], key=lambda p: p["val_loss"]["mean"])
  assert adamw["final_val_loss"] == best["val_loss"]["mean"]
  assert (wd / "adamw_b4" / "sweep.json").exists() and (wd / "adamw_b4" / "sweep_val_loss_vs_adamw_lr.png").exists()
