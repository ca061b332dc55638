"""Seed statistics for headline rows: mean, sample std, n and a 95% t interval.

A headline over seeds is written as ``mean +- std (n=N)``; the 95% confidence
interval of the mean is ``mean +- t_{0.975, n-1} * std / sqrt(n)`` (Student t,
sample standard deviation with ``n - 1`` degrees of freedom):

>>> s = summarize([1.0, 2.0, 3.0])
>>> round(s["mean"], 3), round(s["std"], 3), s["n"]
(2.0, 1.0, 3)
>>> round(s["ci95_low"], 3), round(s["ci95_high"], 3)
(-0.484, 4.484)
>>> spread(s)
'2 +- 1 (n=3)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ("summarize", "spread", "t975")


def t975(dof: int) -> float:
  """The 0.975 quantile of Student's t with ``dof`` degrees of freedom."""
  if dof < 1:
    raise ValueError(f"t975 needs dof >= 1, got {dof}.")
  from scipy import stats  # pylint: disable=g-import-not-at-top  (scipy only when needed)
  return float(stats.t.ppf(0.975, dof))


def summarize(values: Sequence[float]) -> dict:
  """``{"mean", "std", "n", "ci95_low", "ci95_high", "values"}`` of ``values``.

  ``std`` is the sample standard deviation (0 for one value, whose interval is
  the value itself). Raises ``ValueError`` for an empty sequence.
  """
  x = np.asarray(list(values), dtype=np.float64).ravel()
  if x.size == 0:
    raise ValueError("summarize needs at least one value.")
  mean = float(x.mean())
  std = float(x.std(ddof=1)) if x.size > 1 else 0.0
  half = t975(x.size - 1) * std / math.sqrt(x.size) if x.size > 1 else 0.0
  return {"mean": mean, "std": std, "n": int(x.size), "ci95_low": mean - half,
          "ci95_high": mean + half, "values": [float(v) for v in x]}


def spread(s: dict, digits: int = 3, ci: bool = False) -> str:
  """``"mean +- std (n=N)"`` with ``digits`` significant digits (and the CI)."""
  text = f"{s['mean']:.{digits}g} +- {s['std']:.{digits}g} (n={s['n']})"
  if ci:
    text += f", 95% CI [{s['ci95_low']:.{digits}g}, {s['ci95_high']:.{digits}g}]"
  return text
