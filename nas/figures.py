"""Figures of found MLPs: architecture drawings and fitted surfaces (PNG)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nas import encoding  # noqa: E402
from nas import functions as fns  # noqa: E402
from paperlab import plots  # noqa: E402

COLORS = {"sigmoid": "tab:orange", "tanh": "tab:blue", "leaky_relu": "tab:green"}


def _draw(ax, net: encoding.Net, title: str) -> None:
  net = jax.device_get(net)
  depth = encoding.depth_of(net)
  layers = [np.arange(encoding.NUM_INPUTS)] + [np.flatnonzero(net.mask[l]) for l in range(depth)] + [np.arange(1)]
  pos = {}
  for li, units in enumerate(layers):
    for k, j in enumerate(units):
      pos[li, j] = (li, k - (len(units) - 1) / 2)
  scale = max(float(np.abs(net.w).max()), 1e-9)
  for l in range(depth + 1):
    for i in layers[l]:
      for j in layers[l + 1]:
        w = float(net.w[l, i, j])
        if w:
          (x0, y0), (x1, y1) = pos[l, i], pos[l + 1, j]
          ax.plot([x0, x1], [y0, y1], color="tab:red" if w < 0 else "black",
                  linewidth=0.3 + 2.5 * abs(w) / scale, alpha=0.6, zorder=1)
  for (li, j), (x, y) in pos.items():
    if 0 < li <= depth:
      color = COLORS[encoding.ACTIVATIONS[int(np.argmax(net.act[li - 1, j]))]]
    else:
      color = "lightgray"
    ax.scatter([x], [y], s=120, color=color, edgecolor="black", zorder=2)
  n_params = int(np.count_nonzero(net.w)) + int(net.mask.sum()) + 1
  ax.set_title(f"{title}\n{int(net.mask.sum())} neurons, {n_params} params", fontsize=9)
  ax.axis("off")


def architectures(nets: Sequence[encoding.Net], titles: Sequence[str], path: str | pathlib.Path, *,
                  title: str = "Found architectures") -> pathlib.Path:
  """One panel per net: active neurons coloured by activation, edges by |weight| (red: negative).

  ``title`` is the figure's title (name the run: `paperlab.plots.run_title`).
  """
  fig, axes = plt.subplots(1, len(nets), figsize=(3.2 * len(nets), 3.6), squeeze=False)
  for ax, net, panel in zip(axes[0], nets, titles):
    _draw(ax, net, panel)
  handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=n) for n, c in COLORS.items()]
  handles += [plt.Line2D([], [], color="black", label="weight > 0 (width: |w|)"),
              plt.Line2D([], [], color="tab:red", label="weight < 0")]
  fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  return plots.save(fig, path, tight=False)


def surfaces(nets: Sequence[encoding.Net], data: Sequence[fns.Dataset], path: str | pathlib.Path,
             resolution: int = 60, *, title: str = "Targets and found models") -> pathlib.Path:
  """Target (top row) and found model (bottom row) on a grid over the scaled domain.

  One colour bar per column (scaled target units); ``title`` names the run.
  """
  g = np.linspace(-1, 1, resolution, dtype=np.float32)
  gx, gy = np.meshgrid(g, g)
  grid = np.stack([gx.ravel(), gy.ravel()], -1)
  fig, axes = plt.subplots(2, len(nets), figsize=(3.4 * len(nets), 6.0), squeeze=False,
                           constrained_layout=True)
  for k, (net, ds) in enumerate(zip(nets, data)):
    fn, domain = fns.FUNCTIONS[ds.name]
    lo = np.array([d[0] for d in domain])
    hi = np.array([d[1] for d in domain])
    raw = lo + (grid + 1) / 2 * (hi - lo)
    target = fns.scale_targets(fn(raw[:, 0], raw[:, 1]), *ds.y_range).reshape(gx.shape)
    fit = np.asarray(encoding.forward(net, jnp.asarray(grid))).reshape(gx.shape)
    vmin, vmax = float(target.min()), float(target.max())
    for row, (values, label) in enumerate([(target, "target"), (fit, "SWAT-NN")]):
      ax = axes[row, k]
      im = ax.imshow(values, origin="lower", extent=(-1, 1, -1, 1), vmin=vmin, vmax=vmax, cmap="viridis")
      ax.set_title(f"{ds.name}: {label}", fontsize=9)
      ax.set_xlabel("x1 (scaled to [-1, 1])", fontsize=8)
      ax.set_ylabel("x2 (scaled to [-1, 1])", fontsize=8)
      ax.tick_params(labelsize=7)
    cbar = fig.colorbar(im, ax=axes[:, k], shrink=0.8)
    cbar.set_label("f(x1, x2) (scaled targets)", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
  fig.suptitle(title, fontsize=9)
  return plots.save(fig, path, tight=False)
