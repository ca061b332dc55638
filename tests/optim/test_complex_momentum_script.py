"""End-to-end run of scripts/complex_momentum.py with tiny settings."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_script_tiny_run(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, str(ROOT / "scripts" / "complex_momentum.py"), "--preset", "quick",
         "--workdir", str(workdir), "--parts", "bilinear", "gan",
         "--curve-steps", "40", "--heat-alphas", "0.05", "--heat-grid", "3",
         "--gan-seeds", "1", "--gan-steps", "20", "--gan-eval-every", "10",
         "--gan-samples", "100"]
  env = dict(os.environ, TQDM_DISABLE="1")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  rows = {r["metric"]: r["value"] for r in results["headline"]}
  sim = rows["SimCM spectral radius, bilinear game, alpha=0.05, beta=0.9e^(i pi/8)"]
  assert abs(sim - 0.98569) < 1e-4
  assert rows["max |rho - reference| over the spectral-radius table"] < 1e-4
  for png in ("bilinear_simultaneous.png", "spectral_radius_heatmaps.png",
              "gan_modes.png", "gan_samples.png"):
    assert (workdir / png).stat().st_size > 0
  # Bad input is rejected before any compute.
  bad = subprocess.run(cmd[:4] + ["--workdir", str(tmp_path / "bad"), "--alpha", "-1"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
  assert bad.returncode != 0 and "alpha must be > 0" in bad.stderr
