"""End-to-end run of scripts/complex_momentum.py with tiny settings.

In this process (JAX starts once), through `paperlab.config.main` as the
command line runs it, so exit codes and stderr messages are the script's own.
"""

import json
import pathlib
import sys

import pytest

from paperlab import config

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import complex_momentum  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _cli(argv, monkeypatch):
  """Runs the script's command line in this process; returns its exit code."""
  monkeypatch.setattr(sys, "argv", ["complex_momentum.py", *argv])
  with pytest.raises(SystemExit) as e:
    config.main(lambda: complex_momentum.main(argv))
  return e.value.code


@pytest.mark.slow
def test_script_tiny_run(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "run"
  argv = ["--preset", "quick", "--workdir", str(workdir), "--parts", "sweep", "gan",
          "--sweep-gammas", "2", "--sweep-lrs", "0.1", "--sweep-steps", "20",
          "--gan-seeds", "1", "--gan-steps", "10", "--gan-eval-every", "5",
          "--gan-samples", "100", "--seeds", "0:2", "--gan-hidden", "8", "--gan-batch", "16",
          "--gan-sn-iters", "1"]
  # Bad input is rejected before any compute.
  assert _cli(argv[:2] + ["--workdir", str(tmp_path / "bad"), "--alpha", "-1"], monkeypatch) != 0
  assert "alpha must be > 0" in capsys.readouterr().err
  assert _cli(argv[:2] + ["--workdir", str(tmp_path / "bad"), "--sweep", "gan_lr_g=0.1"], monkeypatch) == 2
  assert "gan_lr_g: this script sweeps only seeds" in capsys.readouterr().err
  assert not (tmp_path / "bad" / "results.json").exists()
  assert _cli(argv, monkeypatch) == 0, capsys.readouterr().err[-3000:]
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
