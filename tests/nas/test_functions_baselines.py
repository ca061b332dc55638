"""Benchmark functions (known minima, scaling) and the dense / pruned baselines."""

import jax
import numpy as np
import pytest

from nas import baselines
from nas import encoding as enc
from nas import functions as fns

MINIMA = {  # name: (x, y, f)
    "ackley": (0, 0, 0), "rastrigin": (0, 0, 0), "rosenbrock": (1, 1, 0), "himmelblau": (3, 2, 0),
    "beale": (3, 0.5, 0), "booth": (1, 3, 0), "matyas": (0, 0, 0), "three_hump_camel": (0, 0, 0),
    "six_hump_camel": (0.0898, -0.7126, -1.0316), "goldstein_price": (0, -1, 3), "sphere": (0, 0, 0),
    "levy": (1, 1, 0), "schaffer_n2": (0, 0, 0), "mccormick": (-0.54719, -1.54719, -1.9133),
    "bohachevsky": (0, 0, 0), "styblinski_tang": (-2.903534, -2.903534, -78.33233),
}


def test_known_minima():
  assert set(MINIMA) == set(fns.FUNCTIONS) and len(fns.FUNCTIONS) >= 12
  for name, (x, y, f) in MINIMA.items():
    fn = fns.FUNCTIONS[name].fn
    value = float(fn(np.array([x], float), np.array([y], float))[0])
    assert value == pytest.approx(f, abs=1e-3), name
    # Nearby points are not lower (a local check of the formula).
    for dx, dy in [(0.05, 0), (0, -0.05), (-0.03, 0.04)]:
      assert float(fn(np.array([x + dx]), np.array([y + dy]))[0]) >= value - 1e-9, name


def test_dataset_scaling():
  ds = fns.make_dataset("himmelblau", seed=0)
  assert ds.x_train.shape == (3750, 2) and ds.x_test.shape == (1250, 2)
  assert ds.y_train.min() == pytest.approx(-1.0) and ds.y_train.max() == pytest.approx(1.0)
  assert np.abs(ds.x_train).max() <= 1.0
  # Undo the scaling: targets are the function at the domain-scaled inputs.
  raw = -5.0 + (ds.x_test.astype(float) + 1) / 2 * 10.0
  lo, hi = ds.y_range
  expected = 2 * (fns.himmelblau(raw[:, 0], raw[:, 1]) - lo) / (hi - lo) - 1
  np.testing.assert_allclose(ds.y_test, expected, rtol=1e-4, atol=1e-4)
  again = fns.make_dataset("himmelblau", seed=0)
  np.testing.assert_array_equal(again.x_train, ds.x_train)
  with pytest.raises(ValueError, match="Unknown function"):
    fns.make_dataset("nope")


def test_dense_training_and_pruning():
  ds = fns.make_dataset("booth", seed=1, n_train=300, n_test=10)
  net = baselines.dense_net(jax.random.key(0, impl="rbg"), 2)
  assert int(baselines.count(net)) == enc.dense_param_count(2) - 14  # hidden biases start at zero
  trained, losses = jax.jit(lambda n: baselines.train(n, ds.x_train, ds.y_train, steps=300,
                                                      learning_rate=1e-2))(net)
  assert float(losses[-1]) < 0.05 * float(losses[0])
  assert int(baselines.count(trained)) == enc.dense_param_count(2)
  for target in (5, 30, 60):
    pruned, keep = baselines.magnitude_prune(trained, target)
    assert int(baselines.count(pruned)) == target
    kept = np.abs(np.asarray(pruned.w))[np.asarray(keep.w, bool)]
    dropped = np.abs(np.asarray(trained.w))[~np.asarray(keep.w, bool) & np.asarray(enc.real_entries(2).w, bool)]
    assert kept.min() >= dropped.max()
    tuned, _ = baselines.train(pruned, ds.x_train, ds.y_train, steps=20, learning_rate=1e-2, keep=keep)
    assert int(baselines.count(tuned)) <= target
  with pytest.raises(ValueError, match="activation"):
    baselines.dense_net(jax.random.key(0), 1, "relu")
