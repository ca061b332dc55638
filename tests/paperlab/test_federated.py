"""Tests for paperlab.federated: partitions, client transforms, packing."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from paperlab import federated as fl


@settings(max_examples=25, deadline=None)
@given(n=st.integers(50, 400), clients=st.integers(1, 20), alpha=st.floats(0.05, 100.0),
       seed=st.integers(0, 10_000))
def test_dirichlet_covers_every_example_once(n, clients, alpha, seed):
  labels = np.random.default_rng(seed).integers(0, 5, n)
  parts = fl.dirichlet_partition(labels, clients, alpha, seed, min_size=1, max_tries=1000)
  assert len(parts) == clients
  fl.check_partition(parts, n)


def test_dirichlet_is_deterministic_and_skewed():
  labels = np.repeat(np.arange(10), 100)
  a = fl.dirichlet_partition(labels, 20, 0.1, seed=7)
  b = fl.dirichlet_partition(labels, 20, 0.1, seed=7)
  c = fl.dirichlet_partition(labels, 20, 0.1, seed=8)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  # alpha=0.1: most clients are dominated by few classes; alpha=1000: near uniform.
  top_share = np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in a])
  iid = fl.dirichlet_partition(labels, 20, 1000.0, seed=7)
  top_iid = np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in iid])
  assert top_share > 0.6 > 0.3 > top_iid


def test_dirichlet_errors():
  labels = np.zeros(10, int)
  with pytest.raises(ValueError, match="alpha"):
    fl.dirichlet_partition(labels, 2, 0.0, 0)
  with pytest.raises(ValueError, match="exceeds"):
    fl.dirichlet_partition(labels, 11, 1.0, 0)
  with pytest.raises(ValueError, match="min_size"):
    fl.dirichlet_partition(labels, 5, 1.0, 0, min_size=3)


def test_iid_and_natural_partitions():
  parts = fl.iid_partition(103, 10, seed=0)
  fl.check_partition(parts, 103)
  assert {len(p) for p in parts} <= {10, 11}
  keys = ["a", "b", "a", "c", "b", "a"]
  names, groups = fl.natural_partition(keys)
  assert names == ["a", "b", "c"]
  assert [g.tolist() for g in groups] == [[0, 2, 5], [1, 4], [3]]


def test_check_partition_detects_gaps_and_repeats():
  with pytest.raises(ValueError, match="1 examples missing"):
    fl.check_partition([np.array([0, 1]), np.array([3])], 4)
  with pytest.raises(ValueError, match="1 repeated"):
    fl.check_partition([np.array([0, 1]), np.array([1, 2, 3])], 4)


def test_client_transforms():
  perms = fl.permutation_transforms(4, 16, seed=0)
  assert all(sorted(p.tolist()) == list(range(16)) for p in perms)
  assert len({p.tobytes() for p in perms}) == 4
  half = fl.permutation_transforms(3, 100, seed=0, fraction=0.2)
  assert all(np.sum(p != np.arange(100)) <= 20 for p in half)
  images = np.arange(2 * 4 * 4).reshape(2, 4, 4, 1).astype(np.uint8)
  parts = [np.array([0]), np.array([1])]
  out = fl.apply_client_transforms(images, parts, permutations=perms, rotations=np.array([1, 0]))
  np.testing.assert_array_equal(
      out[0].reshape(16), np.rot90(images[0], 1, axes=(0, 1)).reshape(16)[perms[0]])
  np.testing.assert_array_equal(out[1].reshape(16), images[1].reshape(16)[perms[1]])
  np.testing.assert_array_equal(images[0].ravel(), np.arange(16))  # input untouched


def test_pack_clients_pads_and_masks():
  x = np.arange(23, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  y = np.arange(23)
  parts = [np.arange(0, 10), np.arange(10, 13), np.arange(13, 23)]
  packed = fl.pack_clients(x, y, parts, batch_size=4, seed=0)
  assert packed.x.shape == (3, 3, 4, 3) and packed.mask.shape == (3, 3, 4)
  assert packed.mask.sum(axis=(1, 2)).tolist() == [10, 3, 10]
  assert packed.num_examples.tolist() == [10, 3, 10]
  for c, p in enumerate(parts):
    got = sorted(packed.y[c][packed.mask[c]].tolist())
    assert got == p.tolist()  # every example of the client exactly once
  assert np.all(packed.x[~packed.mask] == 0)
  assert packed.step_mask().tolist() == [[True, True, True], [True, False, False], [True, True, True]]
  again = fl.pack_clients(x, y, parts, batch_size=4, seed=0)
  np.testing.assert_array_equal(packed.y, again.y)
  sub = packed.select(np.array([2, 0]))
  np.testing.assert_array_equal(sub.y[1], packed.y[0])


def test_pack_clients_fixed_steps_cycles_small_clients():
  x = np.arange(7, dtype=np.float32)[:, None]
  y = np.arange(7)
  packed = fl.pack_clients(x, y, [np.arange(5), np.arange(5, 7)], batch_size=3, steps=2, seed=1)
  assert packed.mask.all()
  assert set(packed.y[1].ravel().tolist()) == {5, 6}
  assert sorted(packed.y[0].ravel().tolist())[:5] == [0, 1, 2, 3, 4]
  with pytest.raises(ValueError, match="no examples"):
    fl.pack_clients(x, y, [np.arange(7), np.array([], int)], batch_size=2)


def test_dirichlet_sample_clients():
  labels = np.repeat(np.arange(10), 50)
  parts = fl.dirichlet_sample_clients(labels, 200, 0.1, per_client=30, seed=0)
  assert len(parts) == 200 and all(len(p) == 30 for p in parts)
  classes = np.mean([len(np.unique(labels[p])) for p in parts])
  near_iid = fl.dirichlet_sample_clients(labels, 200, 100.0, per_client=30, seed=0)
  assert classes < 4.5 < 9 < np.mean([len(np.unique(labels[p])) for p in near_iid])  # skew follows alpha
  again = fl.dirichlet_sample_clients(labels, 200, 0.1, per_client=30, seed=0)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again))
  with pytest.raises(ValueError, match="alpha"):
    fl.dirichlet_sample_clients(labels, 2, -1.0, per_client=3, seed=0)
