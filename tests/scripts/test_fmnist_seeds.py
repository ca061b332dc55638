"""The Fashion-MNIST GAN's seeds: members are optimizer x seed, seeds are paired, summaries over seeds."""

import pathlib
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import complex_momentum_fmnist as fm  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_members_are_optimizer_major_and_seeds_paired():
  x = np.zeros((8, 784), np.float32)
  gan = fm.FmnistGan(x, z_dim=2, hidden=3, batch_size=2, lr=1e-3, b2=0.999, magnitudes=[0.0, 0.8],
                     angles=[0.0, 0.3], seed=(5, 6, 7))
  assert np.asarray(gan.seed).tolist() == [5, 6, 7, 5, 6, 7]
  assert np.asarray(gan.magnitude).tolist() == pytest.approx([0, 0, 0, 0.8, 0.8, 0.8])
  state = jax.jit(gan.init)()
  leaves = [np.asarray(v) for v in jax.tree.leaves(state.players)]
  assert all(np.array_equal(v[0], v[3]) for v in leaves)  # same seed, other optimizer: same G and D
  assert not all(np.array_equal(v[0], v[1]) for v in leaves)  # other seed: other initial weights


def test_method_summaries_pair_by_seed():
  names, seeds = ["a", "b"], (0, 1, 2)
  final = {("a", s): {"IS": 2.0 + s, "FD": 10.0} for s in seeds}
  final.update({("b", s): {"IS": 2.5 + s, "FD": 10.0 - s} for s in seeds})
  out = fm.method_summaries(final, names, seeds, {"a": (0.0, 0.0), "b": (0.8, 0.3)})
  assert out["b"]["IS_per_seed"] == [2.5, 3.5, 4.5]
  assert out["b"]["IS_over_seeds"]["n"] == 3 and out["b"]["IS_over_seeds"]["std"] == pytest.approx(1.0)
  assert out["b"]["IS_minus_a"]["values"] == pytest.approx([0.5, 0.5, 0.5])  # paired: no seed spread
  assert out["b"]["FD_minus_a"]["values"] == pytest.approx([0.0, -1.0, -2.0])
  assert out["a"]["IS"] == 2.0  # the first seed's value stays at the top level
