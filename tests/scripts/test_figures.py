"""Every script's figures on a tiny run: decoded images, labelled, titled with the run; log.txt never silent.

Each case runs a script end to end with tiny settings (in this process, so
JAX starts once) and a progress interval of 1 s (``PAPERLAB_PROGRESS_EVERY_S``),
then checks every PNG it wrote: the image decodes, has the size of its figure
and is not blank (pixel spread), and the facts `paperlab.plots.save` recorded
say it has a title that names the run, axis labels and a legend. The run's
``log.txt`` has progress lines and no gap longer than a few intervals.
"""

import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from paperlab import metrics, plots

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

EVERY_S = 1.0
# log.txt timestamps have 1 s resolution and the threads wake every second; neither thread can log
# while a C call holds the GIL (seen: 9 s on a 2-core machine at load 19), hence the margin.
MAX_GAP_S = 15

CASES = {
    "baseline_mlp": (["--dataset", "digits", "--epochs", "1", "--hidden", "16", "--log-every", "4",
                      "--checkpoint-every", "8"], ["curves.png"]),
    "ccl": (["--dataset", "digits", "--epochs", "2", "--hidden", "16", "16", "--batch-size", "32",
             "--batches-per-epoch", "3", "--diag-examples", "40", "--checkpoint-epochs", "1"],
            ["curves.png", "cos.png", "cka.png"]),
    "complex_momentum": (["--parts", "bilinear", "sweep", "gan", "fmnist", "--curve-steps", "20", "--heat-grid", "4",
                          "--heat-alphas", "0.05", "0.3", "--sweep-gammas", "2", "--sweep-lrs", "0.1",
                          "--sweep-steps", "20", "--gan-seeds", "1", "--gan-steps", "4", "--gan-eval-every", "2",
                          "--gan-batch", "8", "--gan-hidden", "4", "--gan-z-dim", "2", "--gan-samples", "16",
                          "--fmnist-steps", "2", "--fmnist-eval-every", "2", "--fmnist-classifier-steps", "2",
                          "--fmnist-samples", "64", "--fmnist-batch", "8", "--fmnist-hidden", "8",
                          "--fmnist-z-dim", "4"],
                         ["bilinear_simultaneous.png", "bilinear_alternating.png",
                          "spectral_radius_heatmaps.png", "adversarial_sweep.png", "adversarial_sweep_rho.png",
                          "gan_modes.png", "gan_hq.png", "gan_samples.png", "fmnist_is.png", "fmnist_fd.png",
                          "fmnist_samples.png"]),
    "dion": (["--arms", "adamw", "--sweep-arms", "adamw", "--sweep-batch-sizes", "8",
              "--steps", "4", "--log-every", "2", "--eval-every", "2", "--d-model", "16", "--layers", "1",
              "--heads", "2", "--seq-len", "16", "--batch-size", "4", "--eval-windows", "8",
              "--timing-calls", "1"], ["val_loss.png", "batch_sweep.png"]),
    "swat_nn": (["--d-model", "16", "--num-heads", "2", "--ae-steps", "4", "--ae-batch", "4", "--ae-points", "16",
                 "--ae-warmup", "1", "--heldout-nets", "4", "--functions", "booth", "sphere",
                 "--n-train", "64", "--n-test", "32", "--search-steps", "20", "--search-warmup", "5",
                 "--anneal-steps", "10", "--dense-steps", "10", "--finetune-steps", "5", "--log-every", "2",
                 "--checkpoint-every", "4"],
                ["ae_heldout_loss.png", "architectures.png", "surfaces.png", "search_mse.png"]),
}


def _run(name, argv, workdir, monkeypatch):
  module = __import__(name)
  argv = [*argv, "--workdir", str(workdir)]
  if name == "dion":  # reads sys.argv (multi-process flags come first)
    monkeypatch.setattr(sys, "argv", ["dion.py", *argv])
    module.main()
  else:
    module.main(argv)


def check_png(path, run_name):
  """Decodes ``path`` and checks its size, its pixels and its recorded labels; returns the facts."""
  with Image.open(path) as im:
    im.load()
    pixels = np.asarray(im.convert("RGB"), dtype=float)
  facts = plots.read_facts(path)
  assert facts, f"{path.name} was not written by paperlab.plots.save"
  width, height = facts["size_px"]
  assert pixels.shape == (height, width, 3), (path.name, pixels.shape, facts["size_px"])
  assert width >= 300 and height >= 200, path.name
  assert pixels.std() > 10, f"{path.name} is (nearly) blank"
  assert (pixels.min(axis=2) < 128).mean() > 0.002, f"{path.name} has almost nothing drawn"
  assert plots.missing_labels(facts) == [], (path.name, plots.missing_labels(facts))
  assert f"run '{run_name}'" in facts["title"], (path.name, facts["title"])
  return facts


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_tiny_run_figures_and_progress_log(name, tmp_path, monkeypatch):
  argv, expected = CASES[name]
  monkeypatch.setenv(metrics.PROGRESS_ENV, str(EVERY_S))
  workdir = tmp_path / f"tiny_{name}"
  try:
    _run(name, argv, workdir, monkeypatch)
  finally:
    metrics.stop_heartbeat()
  pngs = sorted(p.name for p in workdir.rglob("*.png"))
  assert set(expected) <= set(pngs), pngs
  facts = {p: check_png(workdir / p, workdir.name) for p in pngs}
  if name == "dion":  # batch sizes as plain ticks
    assert facts["batch_sweep.png"]["axes"][0]["xticklabels"] == ["4", "8"]
  text = (workdir / "log.txt").read_text()
  assert "progress:" in text
  gap, before = metrics.longest_silence(text)
  assert gap <= MAX_GAP_S, f"log.txt silent for {gap} s after: {before}"
