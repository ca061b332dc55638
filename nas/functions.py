"""Classic 2-D benchmark functions as regression datasets (written from their formulas).

Each function comes with its usual search domain. A dataset is 3750 train and
1250 test points drawn uniformly from the domain (as in the CORNN benchmark);
inputs are scaled to [-1, 1] by the domain and targets to [-1, 1] by the
*train* min / max (the test targets use the same scale, so they may leave
[-1, 1] slightly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

Fn = Callable[[np.ndarray, np.ndarray], np.ndarray]

PI = math.pi


def ackley(x, y):
  return (-20.0 * np.exp(-0.2 * np.sqrt(0.5 * (x**2 + y**2)))
          - np.exp(0.5 * (np.cos(2 * PI * x) + np.cos(2 * PI * y))) + math.e + 20.0)


def rastrigin(x, y):
  return 20.0 + x**2 - 10.0 * np.cos(2 * PI * x) + y**2 - 10.0 * np.cos(2 * PI * y)


def rosenbrock(x, y):
  return 100.0 * (y - x**2) ** 2 + (1.0 - x) ** 2


def himmelblau(x, y):
  return (x**2 + y - 11.0) ** 2 + (x + y**2 - 7.0) ** 2


def beale(x, y):
  return ((1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2)


def booth(x, y):
  return (x + 2 * y - 7.0) ** 2 + (2 * x + y - 5.0) ** 2


def matyas(x, y):
  return 0.26 * (x**2 + y**2) - 0.48 * x * y


def three_hump_camel(x, y):
  return 2 * x**2 - 1.05 * x**4 + x**6 / 6.0 + x * y + y**2


def six_hump_camel(x, y):
  return (4.0 - 2.1 * x**2 + x**4 / 3.0) * x**2 + x * y + (-4.0 + 4.0 * y**2) * y**2


def goldstein_price(x, y):
  a = 1 + (x + y + 1) ** 2 * (19 - 14 * x + 3 * x**2 - 14 * y + 6 * x * y + 3 * y**2)
  b = 30 + (2 * x - 3 * y) ** 2 * (18 - 32 * x + 12 * x**2 + 48 * y - 36 * x * y + 27 * y**2)
  return a * b


def sphere(x, y):
  return x**2 + y**2


def levy(x, y):
  w1, w2 = 1 + (x - 1) / 4, 1 + (y - 1) / 4
  return (np.sin(PI * w1) ** 2 + (w1 - 1) ** 2 * (1 + 10 * np.sin(PI * w1 + 1) ** 2)
          + (w2 - 1) ** 2 * (1 + np.sin(2 * PI * w2) ** 2))


def schaffer_n2(x, y):
  return 0.5 + (np.sin(x**2 - y**2) ** 2 - 0.5) / (1 + 0.001 * (x**2 + y**2)) ** 2


def mccormick(x, y):
  return np.sin(x + y) + (x - y) ** 2 - 1.5 * x + 2.5 * y + 1.0


def bohachevsky(x, y):
  return x**2 + 2 * y**2 - 0.3 * np.cos(3 * PI * x) - 0.4 * np.cos(4 * PI * y) + 0.7


def styblinski_tang(x, y):
  return 0.5 * (x**4 - 16 * x**2 + 5 * x + y**4 - 16 * y**2 + 5 * y)


class Function(NamedTuple):
  fn: Fn
  domain: tuple[tuple[float, float], tuple[float, float]]  # ((x_lo, x_hi), (y_lo, y_hi))


FUNCTIONS: dict[str, Function] = {
    "ackley": Function(ackley, ((-32.768, 32.768),) * 2),
    "rastrigin": Function(rastrigin, ((-5.12, 5.12),) * 2),
    "rosenbrock": Function(rosenbrock, ((-2.048, 2.048),) * 2),
    "himmelblau": Function(himmelblau, ((-5.0, 5.0),) * 2),
    "beale": Function(beale, ((-4.5, 4.5),) * 2),
    "booth": Function(booth, ((-10.0, 10.0),) * 2),
    "matyas": Function(matyas, ((-10.0, 10.0),) * 2),
    "three_hump_camel": Function(three_hump_camel, ((-5.0, 5.0),) * 2),
    "six_hump_camel": Function(six_hump_camel, ((-3.0, 3.0), (-2.0, 2.0))),
    "goldstein_price": Function(goldstein_price, ((-2.0, 2.0),) * 2),
    "sphere": Function(sphere, ((-5.12, 5.12),) * 2),
    "levy": Function(levy, ((-10.0, 10.0),) * 2),
    "schaffer_n2": Function(schaffer_n2, ((-100.0, 100.0),) * 2),
    "mccormick": Function(mccormick, ((-1.5, 4.0), (-3.0, 4.0))),
    "bohachevsky": Function(bohachevsky, ((-100.0, 100.0),) * 2),
    "styblinski_tang": Function(styblinski_tang, ((-5.0, 5.0),) * 2),
}


class Dataset(NamedTuple):
  """A scaled regression dataset; ``x`` in [-1, 1]^2, ``y`` scaled by the train range."""

  name: str
  x_train: np.ndarray  # [n_train, 2] float32
  y_train: np.ndarray  # [n_train]
  x_test: np.ndarray
  y_test: np.ndarray
  y_range: tuple[float, float]  # train (min, max) of the raw targets


def scale_targets(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Maps ``[lo, hi]`` to ``[-1, 1]`` linearly."""
  return 2.0 * (y - lo) / max(hi - lo, 1e-12) - 1.0


def make_dataset(name: str, *, seed: int = 0, n_train: int = 3750, n_test: int = 1250) -> Dataset:
  """Samples one function uniformly on its domain and scales it.

  Raises:
    ValueError: unknown function name or non-positive sizes.
  """
  if name not in FUNCTIONS:
    raise ValueError(f"Unknown function {name!r}; choose from {sorted(FUNCTIONS)}.")
  if n_train < 2 or n_test < 1:
    raise ValueError(f"Need n_train >= 2 and n_test >= 1, got {n_train}, {n_test}.")
  fn, domain = FUNCTIONS[name]
  # A per-function stream, stable whatever else is sampled.
  rng = np.random.default_rng([seed, sorted(FUNCTIONS).index(name)])
  lo = np.array([d[0] for d in domain])
  hi = np.array([d[1] for d in domain])
  u = rng.uniform(-1.0, 1.0, size=(n_train + n_test, 2))
  raw = lo + (u + 1.0) / 2.0 * (hi - lo)
  y = fn(raw[:, 0], raw[:, 1])
  y_lo, y_hi = float(y[:n_train].min()), float(y[:n_train].max())
  y = scale_targets(y, y_lo, y_hi)
  u, y = u.astype(np.float32), y.astype(np.float32)
  return Dataset(name, u[:n_train], y[:n_train], u[n_train:], y[n_train:], (y_lo, y_hi))
