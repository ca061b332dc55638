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


def test_batch_claim_preset_adds_its_grid_unless_flags_given():
  argv = dion.preset_argv(["--preset", "batch_claim"])
  assert argv[2:] == list(dion.BATCH_CLAIM_FLAGS)
  assert dion.preset_argv(["--preset=batch_claim", "--seeds", "0"]) == ["--preset=batch_claim", "--seeds", "0"]
  assert dion.preset_argv(["--preset", "quick"]) == ["--preset", "quick"]
  cfg = dion.PRESETS["batch_claim"]
  largest = max(cfg.sweep_batch_sizes)
  assert dion._sweep_steps(cfg, largest) >= 500  # the protocol: >= 500 steps at the largest batch
  assert dion._sweep_steps(cfg, largest) * largest == cfg.steps * cfg.batch_size  # equal tokens
  assert {k.split("=")[0] for k in dion.BATCH_CLAIM_FLAGS if "=" in k} == {"adamw_lr", "muon_lr", "dion_lr"}


def _run(arm, batch, steps, curves):
  return {"arm": arm, "batch_size": batch, "steps": steps,
          "seed_curves": {s: [(steps // 2, v + 0.5), (steps, v)] for s, v in curves.items()}}


def test_claim_rows_pair_seeds_at_equal_fractions():
  runs = [_run("adamw", 16, 100, {"0": 2.0, "1": 2.2}), _run("muon", 16, 100, {"0": 1.5, "1": 1.9}),
          _run("dion-1", 16, 100, {"0": 1.5, "1": 2.0}), _run("adamw", 64, 25, {"0": 3.0, "1": 3.0}),
          _run("muon", 64, 25, {"0": 2.0, "1": 2.0})]  # batch 64 has no Dion arm: no rows
  rows = dion.claim_rows(runs, fractions=(0.5, 1.0))
  assert [(r["batch_size"], r["step"]) for r in rows] == [(16, 50), (16, 100)]
  final = rows[1]
  assert final["adamw_minus_muon"]["values"] == pytest.approx([0.5, 0.3])  # paired per seed
  assert final["adamw_minus_dion"]["values"] == pytest.approx([0.5, 0.2])
  assert final["dion_over_muon"]["values"] == pytest.approx([1.0, 2.0 / 1.9])
  assert rows[0]["adamw_minus_muon"]["values"] == pytest.approx([0.5, 0.3])
  assert len(dion.claim_table(rows)) == 4
