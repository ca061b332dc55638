"""Tests for paperlab.plots: each writer produces a PNG."""

import numpy as np

from paperlab import plots


def _is_png(path):
  return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
  p = plots.line_plot({"a": ([0, 1, 2], [3, 2, 1]), "b": ([0, 2], [1, 1])}, tmp_path / "x/line.png",
                      xlabel="step", ylabel="loss", logy=True, hline=1.5, hline_label="target")
  assert _is_png(p)
  hist = [{"step": s, "loss": 1.0 / (s + 1), "acc": s / 10} for s in range(10)]
  assert _is_png(plots.learning_curves(hist, ["loss", "acc"], tmp_path / "c.png", title="t"))
  assert _is_png(plots.heatmap(np.random.rand(3, 4), tmp_path / "h.png", x=range(4), y=range(3),
                               xlabel="x", ylabel="y"))
  assert _is_png(plots.image_grid(np.random.rand(10, 8, 8, 1), tmp_path / "g.png", ncols=5))
