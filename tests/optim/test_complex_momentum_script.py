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
         "--workdir", str(workdir), "--parts", "sweep", "gan",
         "--sweep-gammas", "2", "--sweep-lrs", "0.1", "--sweep-steps", "50",
         "--gan-seeds", "1", "--gan-steps", "20", "--gan-eval-every", "10",
         "--gan-samples", "100", "--seeds", "0:2", "--gan-hidden", "8", "--gan-batch", "16",
         "--gan-sn-iters", "1"]
  # The suite's environment as is (8 simulated CPU devices): the sweep engine uses at most one
  # device per core by default, which keeps its batched eigvals off a saturated XLA:CPU pool.
  env = dict(os.environ, TQDM_DISABLE="1")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  rows = {r["metric"]: r["value"] for r in results["headline"]}
  # gamma = 1 is the bilinear game: only complex momentum has rho < 1 there.
  rhos = rows["best spectral radius at gamma=1 (bilinear, simultaneous): complex / +mom / -mom / GD"]
  complex_rho, *real_rhos = (float(v) for v in rhos.split(" / "))
  assert complex_rho < 1.0 <= min(real_rhos) + 1e-5
  gan = results["results"]["gan"]["methods"]
  assert len(gan) == 5 and all(0 <= r["mean_modes"] <= 8 for r in gan.values())
  assert all(r["window"]["modes"]["n"] == 2 for r in gan.values())  # --seeds 0:2
  for png in ("adversarial_sweep.png", "adversarial_sweep_rho.png", "gan_modes.png",
              "gan_samples.png"):
    assert (workdir / png).stat().st_size > 0
  # Bad input is rejected before any compute.
  bad = subprocess.run(cmd[:4] + ["--workdir", str(tmp_path / "bad"), "--alpha", "-1"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
  assert bad.returncode != 0 and "alpha must be > 0" in bad.stderr
  bad = subprocess.run(cmd[:4] + ["--workdir", str(tmp_path / "bad"), "--sweep", "gan_lr_g=0.1"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
  assert bad.returncode == 2 and "gan_lr_g: this script sweeps only seeds" in bad.stderr
