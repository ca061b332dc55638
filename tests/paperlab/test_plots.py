"""Tests for paperlab.plots: rendered images, recorded facts, tick labels."""

import types

import numpy as np
import pytest
from matplotlib import pyplot as plt
from PIL import Image

from paperlab import plots


def decoded(path):
  """The PNG decoded to an RGB array (fails on a truncated or invalid file)."""
  with Image.open(path) as im:
    im.load()
    return np.asarray(im.convert("RGB"), dtype=float)


def assert_figure(path, size_px):
  pixels = decoded(path)
  assert pixels.shape[:2] == (size_px[1], size_px[0])
  assert pixels.std() > 5.0, "a blank image"
  facts = plots.read_facts(path)
  assert facts["size_px"] == list(size_px)
  assert plots.missing_labels(facts) == [], plots.missing_labels(facts)
  return facts


RUN = types.SimpleNamespace(paper="toy", preset="quick", workdir="runs/toy/quick")


def test_writers_render_labelled_images(tmp_path):
  title = plots.run_title(RUN, "loss")
  assert title == "loss\ntoy run 'quick' (preset quick)"
  p = plots.line_plot({"a": ([0, 1, 2], [3, 2, 1]), "b": ([0, 2], [1, 1])}, tmp_path / "x/line.png",
                      xlabel="step", ylabel="loss", logy=True, hline=1.5, hline_label="target", title=title)
  facts = assert_figure(p, (768, 504))
  sweep = plots.line_plot({"a": ([16, 32, 128], [3, 2, 1])}, tmp_path / "sweep.png", logx=True,
                          xlabel="batch size", ylabel="loss", title="t")
  assert plots.read_facts(sweep)["axes"][0]["xticklabels"] == ["16", "32", "128"]
  assert facts["title"] == title and facts["axes"][0]["legend"] == ["a", "b", "target"]
  hist = [{"step": s, "loss": 1.0 / (s + 1), "acc": s / 10} for s in range(10)]
  assert_figure(plots.learning_curves(hist, ["loss", "acc"], tmp_path / "c.png", title="t",
                                      ylabels={"acc": "accuracy (fraction)"}), (1008, 456))
  assert_figure(plots.heatmap(np.random.rand(3, 4), tmp_path / "h.png", x=range(4), y=range(3),
                              xlabel="x", ylabel="y", cbar_label="z", title="t"), (672, 528))
  assert_figure(plots.image_grid(np.random.rand(10, 8, 8, 1), tmp_path / "g.png", ncols=5, title="t"),
                (720, 360))


def test_missing_labels_are_named(tmp_path, caplog):
  p = plots.line_plot({"a": ([0, 1], [1, 2])}, tmp_path / "p.png", xlabel="", ylabel="y")
  assert plots.missing_labels(plots.read_facts(p)) == ["a title", "the x label of panel 0 (untitled)"]
  assert "lacks a title" in caplog.text
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  ax.set_xlabel("x")
  ax.set_ylabel("y")
  ax.set_title("t")
  assert plots.missing_labels(plots.read_facts(plots.save(fig, tmp_path / "q.png"))) == ["a legend"]


@pytest.mark.parametrize("sizes", [(16, 32, 64, 128, 256), (8, 128)])
def test_log_axis_ticks_are_the_values(tmp_path, sizes):
  fig, ax = plt.subplots()
  ax.plot(sizes, np.ones(len(sizes)))
  ax.set_xscale("log")
  plots._plain_log_axis(ax.xaxis, np.asarray(sizes, float))  # pylint: disable=protected-access
  fig.canvas.draw()
  labels = [t.get_text() for t in ax.get_xticklabels()]
  assert labels == [str(s) for s in sizes]
  assert [t.get_text() for t in ax.xaxis.get_minorticklabels()] == []
  plt.close(fig)
