"""Matplotlib figures written as PNG next to the metrics (headless backend).

In a multi-process run only process 0 writes the files.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from paperlab import distributed  # noqa: E402

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _save(fig, path: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path)
  if distributed.is_main():
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def line_plot(series: Series, path: str | pathlib.Path, *, xlabel: str, ylabel: str,
              title: str = "", logy: bool = False, logx: bool = False,
              hline: float | None = None, hline_label: str = "") -> pathlib.Path:
  """One line per ``label -> (x, y)``; returns the PNG path."""
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, (x, y) in series.items():
    ax.plot(np.asarray(x), np.asarray(y), label=label, marker="." if len(x) < 30 else None)
  if hline is not None:
    ax.axhline(hline, color="gray", linestyle="--", linewidth=1, label=hline_label or None)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  if logy:
    ax.set_yscale("log")
  if logx:
    ax.set_xscale("log")
  ax.grid(alpha=0.3)
  if len(series) > 1 or hline_label:
    ax.legend(fontsize=8)
  return _save(fig, path)


def learning_curves(history: Sequence[Mapping[str, Any]], keys: Sequence[str],
                    path: str | pathlib.Path, *, title: str = "", xlabel: str = "step",
                    logy: bool = False) -> pathlib.Path:
  """Plots metrics records (as written by `paperlab.metrics.MetricWriter`), one panel per key."""
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
  for ax, key in zip(axes[0], keys):
    pts = [(r["step"], r[key]) for r in history if key in r]
    if pts:
      x, y = zip(*pts)
      ax.plot(x, y, marker="." if len(x) < 30 else None)
    ax.set_xlabel(xlabel)
    ax.set_title(key)
    ax.grid(alpha=0.3)
    if logy:
      ax.set_yscale("log")
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def heatmap(values: np.ndarray, path: str | pathlib.Path, *, x: Sequence[float], y: Sequence[float],
            xlabel: str, ylabel: str, title: str = "", cbar_label: str = "",
            cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None) -> pathlib.Path:
  """``values[i, j]`` at ``(x[j], y[i])``; returns the PNG path."""
  fig, ax = plt.subplots(figsize=(5.6, 4.4))
  mesh = ax.pcolormesh(np.asarray(x), np.asarray(y), np.asarray(values), shading="auto",
                       cmap=cmap, vmin=vmin, vmax=vmax)
  fig.colorbar(mesh, ax=ax, label=cbar_label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def image_grid(images: np.ndarray, path: str | pathlib.Path, *, ncols: int = 8,
               title: str = "", row_labels: Sequence[str] | None = None) -> pathlib.Path:
  """Grid of images ``[N, H, W]`` or ``[N, H, W, C]`` with values in [0, 1]."""
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  n = len(images)
  nrows = -(-n // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.2 * nrows + (0.4 if title else 0)),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      ax.imshow(np.clip(images[i], 0, 1), cmap="gray" if images.ndim == 3 else None, vmin=0, vmax=1)
  if row_labels:
    for r, label in enumerate(row_labels[:nrows]):
      axes[r, 0].set_title(label, fontsize=7, loc="left")
  if title:
    fig.suptitle(title)
  return _save(fig, path)


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
    lines.setdefault(others, []).append((p["point"][key], stats["mean"], stats["std"]))
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  xs_all = []
  for label, pts in lines.items():
    x, y, e = (np.asarray(v, float) for v in zip(*sorted(pts)))
    xs_all += list(x)
    ax.errorbar(x, y, yerr=np.nan_to_num(e), marker="o", capsize=3, label=label or None)
  if logx is None:
    xs = np.asarray(xs_all)
    logx = bool(xs.size and np.all(xs > 0) and xs.max() > 10 * xs.min())
  if logx:
    ax.set_xscale("log")
  n = max((p[metric]["n"] for p in points), default=0)
  ax.set_xlabel(key)
  ax.set_ylabel(f"final {metric} (mean +- std over up to {n} seeds)")
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  if len(lines) > 1:
    ax.legend(fontsize=8)
  return _save(fig, path)
