"""Matplotlib figures written as PNG next to the metrics (headless backend).

Every figure of a run says what it shows: a title that names the run
(`run_title`), axis labels with units, and a legend. `save` writes the PNG
and records these facts (figure title; per panel: title, axis labels, x tick
labels, legend entries, whether it holds data) as JSON in the PNG's ``paperlab`` text chunk,
so a test can check a rendered figure without looking at it
(`read_facts`, `missing_labels`). A figure that lacks a label is still
written, with a warning that names what is missing.

On a log-scaled axis with a few distinct values (batch sizes, widths), the
values themselves are the ticks, written as plain numbers (16, 32, 128, not
``10^2``). In a multi-process run only process 0 writes the files.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from paperlab import distributed  # noqa: E402

log = logging.getLogger(__name__)

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]
FACTS_KEY = "paperlab"  # PNG text chunk with the figure's title, labels and legends
DPI = 120
MAX_VALUE_TICKS = 12  # log axes with at most this many distinct values get one tick per value


def run_title(run: Any, what: str) -> str:
  """``what`` and, on a second line, the run it comes from.

  Args:
    run: a `paperlab.runs.Run` (anything with ``paper``, ``preset`` and
      ``workdir``).
    what: what the figure shows.

  Returns:
    e.g. ``"Validation loss\\ndion run 'quick' (preset quick)"``.
  """
  return f"{what}\n{run.paper} run '{pathlib.Path(run.workdir).name}' (preset {run.preset})"


def _axis_facts(ax) -> dict[str, Any]:
  legend = ax.get_legend()
  has_data = bool(ax.lines or ax.collections or ax.images or ax.patches)
  return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
          "legend": [t.get_text() for t in legend.get_texts()] if legend is not None else [],
          "xticklabels": [t.get_text() for t in ax.get_xticklabels() if t.get_text()],
          "has_data": has_data and ax.axison, "images": bool(ax.images),
          "colorbar": ax.get_label() == "<colorbar>" or hasattr(ax, "_colorbar")}


def figure_facts(fig) -> dict[str, Any]:
  """Title, figure legend and per-panel labels / legends of a figure (JSON-ready)."""
  suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""  # pylint: disable=protected-access
  fig_legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
  axes = [_axis_facts(ax) for ax in fig.axes]
  title = suptitle or next((a["title"] for a in axes if a["title"]), "")
  return {"title": title, "suptitle": suptitle, "figure_legend": fig_legend, "axes": axes,
          "size_px": [int(round(v * DPI)) for v in fig.get_size_inches()]}


def missing_labels(facts: Mapping[str, Any]) -> list[str]:
  """What a figure's facts lack: a title, axis labels of data panels, a legend.

  Panels that show images (``imshow``) need no axis labels (the figure's
  title or the panel titles say what they are); a labelled colour bar is the
  legend of a colour map; a colour bar needs a label.
  """
  out = []
  if not facts["title"]:
    out.append("a title")
  data_axes = [a for a in facts["axes"] if a["has_data"] and not a["colorbar"]]
  for i, a in enumerate(data_axes):
    name = f"panel {i} ({a['title'] or 'untitled'})"
    if a["images"]:
      continue
    if not a["xlabel"]:
      out.append(f"the x label of {name}")
    if not a["ylabel"]:
      out.append(f"the y label of {name}")
  for a in facts["axes"]:
    if a["colorbar"] and not (a["ylabel"] or a["xlabel"]):
      out.append("the colour bar's label")
  plot_axes = [a for a in data_axes if not a["images"]]
  colorbars = [a for a in facts["axes"] if a["colorbar"]]
  if (plot_axes and not facts["figure_legend"] and not colorbars
      and not any(a["legend"] for a in plot_axes)):
    out.append("a legend")
  return out


def save(fig, path: str | pathlib.Path, *, tight: bool = True) -> pathlib.Path:
  """Writes ``fig`` as a PNG with its facts (see `figure_facts`); closes it.

  Args:
    fig: a matplotlib figure.
    path: where the PNG goes (parent directories are created).
    tight: apply ``tight_layout`` first (False for constrained-layout figures).

  Returns:
    ``path`` as a `pathlib.Path`.
  """
  path = pathlib.Path(path)
  if distributed.is_main():
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
      fig.tight_layout()
    fig.canvas.draw()  # tick labels exist only once drawn
    facts = figure_facts(fig)
    missing = missing_labels(facts)
    if missing:
      log.warning("Figure %s lacks %s.", path.name, ", ".join(missing))
    fig.savefig(path, dpi=DPI, metadata={FACTS_KEY: json.dumps(facts), "Title": facts["title"]})
  plt.close(fig)
  return path


def read_facts(path: str | pathlib.Path) -> dict[str, Any]:
  """The facts `save` recorded in a PNG ({} for a PNG written otherwise)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    text = im.info.get(FACTS_KEY)
  return json.loads(text) if text else {}


def value_ticks(axis, values: Sequence[float]) -> None:
  """Puts one tick at each of ``values``, labelled as a plain number (no minor ticks)."""
  values = sorted({float(v) for v in values})
  axis.set_major_locator(ticker.FixedLocator(values))
  axis.set_major_formatter(ticker.FixedFormatter([f"{v:g}" for v in values]))
  axis.set_minor_locator(ticker.NullLocator())


def _plain_log_axis(axis, values: np.ndarray) -> None:
  distinct = np.unique(values[np.isfinite(values) & (values > 0)])
  if 0 < len(distinct) <= MAX_VALUE_TICKS:
    value_ticks(axis, distinct)
  else:
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def line_plot(series: Series, path: str | pathlib.Path, *, xlabel: str, ylabel: str,
              title: str = "", logy: bool = False, logx: bool = False,
              hline: float | None = None, hline_label: str = "",
              xticks: Sequence[float] | None = None) -> pathlib.Path:
  """One line per ``label -> (x, y)``, with a legend; returns the PNG path.

  Args:
    series: ``label -> (x, y)``; the labels form the legend.
    path: PNG path.
    xlabel: x-axis label, with its unit (e.g. ``"training step"``).
    ylabel: y-axis label, with its unit (e.g. ``"validation loss (nats/char)"``).
    title: what the figure shows and the run it comes from (`run_title`).
    logy: log-scaled y axis.
    logx: log-scaled x axis; with at most `MAX_VALUE_TICKS` distinct x values
      the ticks are those values as plain numbers.
    hline: draw a dashed horizontal reference line at this y.
    hline_label: its legend entry.
    xticks: explicit x ticks (plain numbers).
  """
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  xs = []
  for label, (x, y) in series.items():
    x = np.asarray(x, dtype=float)
    xs.append(x)
    ax.plot(x, np.asarray(y), label=label, marker="." if len(x) < 30 else None)
  if hline is not None:
    ax.axhline(hline, color="gray", linestyle="--", linewidth=1, label=hline_label or "reference")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=10)
  if logy:
    ax.set_yscale("log")
  if logx:
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis, np.concatenate(xs) if xs else np.zeros(0))
  if xticks is not None:
    value_ticks(ax.xaxis, xticks)
  ax.grid(alpha=0.3)
  if series or hline is not None:
    ax.legend(fontsize=8)
  return save(fig, path)


def learning_curves(history: Sequence[Mapping[str, Any]], keys: Sequence[str],
                    path: str | pathlib.Path, *, title: str = "", xlabel: str = "training step",
                    ylabels: Mapping[str, str] | None = None, label: str = "this run",
                    logy: bool = False) -> pathlib.Path:
  """Plots metrics records (as written by `paperlab.metrics.MetricWriter`), one panel per key.

  Args:
    history: metrics records ``{"step": s, key: value, ...}``.
    keys: one panel per key.
    path: PNG path.
    title: the figure's title (`run_title`).
    xlabel: x-axis label of every panel, with its unit.
    ylabels: ``key -> y-axis label with its unit`` (default: the key).
    label: legend entry of the curves.
    logy: log-scaled y axes.
  """
  ylabels = dict(ylabels or {})
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
  for ax, key in zip(axes[0], keys):
    pts = [(r["step"], r[key]) for r in history if key in r and r[key] is not None]
    if pts:
      x, y = zip(*pts)
      ax.plot(x, y, marker="." if len(x) < 30 else None, label=label)
      ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabels.get(key, key))
    ax.set_title(key, fontsize=9)
    ax.grid(alpha=0.3)
    if logy:
      ax.set_yscale("log")
  if title:
    fig.suptitle(title, fontsize=10)
  return save(fig, path)


def heatmap(values: np.ndarray, path: str | pathlib.Path, *, x: Sequence[float], y: Sequence[float],
            xlabel: str, ylabel: str, title: str = "", cbar_label: str = "",
            cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None) -> pathlib.Path:
  """``values[i, j]`` at ``(x[j], y[i])``; the colour bar is the legend; returns the PNG path."""
  fig, ax = plt.subplots(figsize=(5.6, 4.4))
  mesh = ax.pcolormesh(np.asarray(x), np.asarray(y), np.asarray(values), shading="auto",
                       cmap=cmap, vmin=vmin, vmax=vmax)
  fig.colorbar(mesh, ax=ax, label=cbar_label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=10)
  return save(fig, path)


def image_grid(images: np.ndarray, path: str | pathlib.Path, *, ncols: int = 8,
               title: str = "", row_labels: Sequence[str] | None = None) -> pathlib.Path:
  """Grid of images ``[N, H, W]`` or ``[N, H, W, C]`` with values in [0, 1].

  ``row_labels`` name the rows (the legend of the grid); ``title`` says what
  the images are and names the run.
  """
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  n = len(images)
  nrows = -(-n // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.2 * nrows + (0.6 if title else 0)),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      ax.imshow(np.clip(images[i], 0, 1), cmap="gray" if images.ndim == 3 else None, vmin=0, vmax=1)
  if row_labels:
    for r, label in enumerate(row_labels[:nrows]):
      axes[r, 0].set_title(label, fontsize=7, loc="left")
  if title:
    fig.suptitle(title, fontsize=9)
  return save(fig, path)


def sweep_plot(points: Sequence[Mapping[str, Any]], key: str, metric: str, path: str | pathlib.Path, *,
               title: str = "", logx: bool | None = None) -> pathlib.Path:
  """Final ``metric`` vs swept hyperparameter ``key``: mean over seeds, bars of one std.

  ``points`` are `paperlab.sweep.aggregate` rows; one line per combination of
  the other swept keys. ``logx`` defaults to True when the values span more
  than a factor of 10 and are all positive.
  """
  lines: dict[str, list[tuple[float, float, float]]] = {}
  for p in points:
    others = ", ".join(f"{k}={v:g}" for k, v in p["point"].items() if k != key)
    stats = p[metric]
    lines.setdefault(others or "all seeds", []).append((p["point"][key], stats["mean"], stats["std"]))
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  xs_all = []
  for label, pts in lines.items():
    x, y, e = (np.asarray(v, float) for v in zip(*sorted(pts)))
    xs_all += list(x)
    ax.errorbar(x, y, yerr=np.nan_to_num(e), marker="o", capsize=3, label=label)
  xs = np.asarray(xs_all)
  if logx is None:
    logx = bool(xs.size and np.all(xs > 0) and xs.max() > 10 * xs.min())
  if logx:
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis, xs)
  n = max((p[metric]["n"] for p in points), default=0)
  ax.set_xlabel(key)
  ax.set_ylabel(f"final {metric} (mean +- std, up to {n} seeds)")
  ax.set_title(title or f"final {metric} vs {key}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return save(fig, path)


_save = save  # the former private name, still used by callers written before `save` was public
