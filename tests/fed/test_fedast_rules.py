"""The pure FedAST / Sync-ST server rules against NumPy references and hand-computed cases."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fed import fedast_rules as rules


def _tree(rng):
  return {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2).astype(np.float32)}


def test_staleness_weight_is_one_or_the_polynomial():
  for s in range(6):
    assert rules.staleness_weight(s) == 1.0
    for a in (0.0, 0.5, 1.0, 2.0):
      assert rules.staleness_weight(s, "polynomial", a) == pytest.approx((1 + s) ** -a)
  with pytest.raises(ValueError, match="staleness"):
    rules.staleness_weight(1, "hinge")


def test_aggregate_buffer_is_the_weighted_mean_times_the_server_lr():
  rng = np.random.default_rng(0)
  params = _tree(rng)
  deltas = [_tree(rng) for _ in range(3)]
  weights = [1.0, 0.5, 0.25]
  out = rules.aggregate_buffer(params, deltas, weights, 0.7)
  for key in params:
    ref = params[key] + 0.7 / 3 * sum(w * d[key] for w, d in zip(weights, deltas))
    np.testing.assert_allclose(out[key], ref, rtol=1e-6)
    assert out[key].dtype == params[key].dtype
  one = rules.aggregate_buffer({"w": np.zeros(2)}, [{"w": np.array([2.0, 4.0])}] * 4, [1.0] * 4, 1.0)
  np.testing.assert_allclose(one["w"], [2.0, 4.0])  # four equal updates: their mean, not their sum
  with pytest.raises(ValueError, match="one weight per update"):
    rules.aggregate_buffer(params, deltas, [1.0], 1.0)


def test_buffer_size_follows_the_budget():
  for budget, ratio, b in ((96, 32, 3), (97, 32, 4), (32, 32, 1), (1, 32, 1), (64, 8, 8), (200, 32, 7)):
    assert rules.buffer_size("fedast", budget, ratio) == b == math.ceil(budget / ratio)
  assert rules.buffer_size("fedast_static", 200, 32, static_buffer=5) == 5
  assert rules.buffer_size("fedast_nobuffer", 200, 32) == 1


def test_normalized_spread_against_numpy():
  rng = np.random.default_rng(1)
  deltas = [_tree(rng) for _ in range(8)]
  flat = np.stack([np.concatenate([d["b"].ravel(), d["w"].ravel()]) for d in deltas]).astype(np.float64)
  mean = flat.mean(0)
  ref = ((flat - mean) ** 2).sum() / (len(flat) * mean @ mean)
  assert rules.normalized_spread(deltas) == pytest.approx(ref, rel=1e-6)
  assert rules.normalized_spread([{"w": np.ones(3)}] * 4) == 0.0


def test_realloc_scores_are_the_square_root_of_the_mean_spread():
  rng = np.random.default_rng(2)
  spreads = [list(rng.uniform(0, 9, size=n)) for n in (1, 3, 5)] + [[], [4.0]]
  active = [True, True, True, True, False]
  got = rules.realloc_scores(spreads, active)
  ref = [np.sqrt(np.mean(s)) for s in spreads[:3]] + [0.0, 0.0]
  np.testing.assert_allclose(got, ref)


def test_realloc_is_due_every_period_once_each_task_has_enough_versions():
  # P = floor(3/4 * 16) * 2 active tasks = 24 updates
  assert rules.realloc_due(24, 16, [9, 9], [True, True], 8)
  assert not rules.realloc_due(23, 16, [9, 9], [True, True], 8)
  assert not rules.realloc_due(24, 16, [9, 8], [True, True], 8)  # a task without > window versions
  assert rules.realloc_due(24, 16, [9, 0, 9], [True, False, True], 8)  # a finished task does not count
  assert not rules.realloc_due(10 ** 6, 16, [9, 9], [True, False], 8)  # one task left: nothing to split


def test_allocate_blocks_hand_case():
  # 4 blocks of 4: one each, then the two left to the larger shortfall (shares 0.8 / 3.2)
  assert rules.allocate_blocks([1.0, 4.0], [True, True], 16, 4) == [4, 12]
  assert rules.allocate_blocks([1.0, 4.0, 9.0], [True, False, True], 18, 4) == [4, 0, 14]  # 2 jobs fill no block
  assert rules.allocate_blocks([1.0, 1.0, 1.0], [True, True, True], 2, 4) == [1, 1, 0]  # too few jobs: even split


@settings(max_examples=50, deadline=None)
@given(scores=st.lists(st.floats(0, 10), min_size=1, max_size=5), total=st.integers(1, 400),
       block=st.integers(1, 40), mask=st.lists(st.booleans(), min_size=5, max_size=5))
def test_allocation_keeps_the_total(scores, total, block, mask):
  active = mask[:len(scores)]
  out = rules.allocate_blocks(scores, active, total, block)
  if any(active):
    assert sum(out) == total
    if total // block >= sum(active):
      assert all(o >= block for o, a in zip(out, active) if a)
  assert all(o == 0 for o, a in zip(out, active) if not a)


def test_release_budget_hand_cases():
  assert rules.release_budget([32, 64, 192], 0, [False, True, True]) == [0, 72, 216]
  assert rules.release_budget([96, 96, 96], 1, [True, False, True]) == [144, 0, 144]
  assert rules.release_budget([50, 0, 0], 0, [False, True, True]) == [0, 25, 25]  # others empty: equal shares
  assert rules.release_budget([0, 40, 50], 2, [False, True, False]) == [0, 90, 0]  # a finished task gets nothing
  assert rules.release_budget([10, 20], 1, [True, False]) == [30, 0]


def test_sync_rules_hand_cases():
  assert rules.sync_group_sizes(300, 3) == [100, 100, 100]
  assert rules.sync_group_sizes(10, 3) == [4, 3, 3]
  assert rules.sync_keep_count(100) == 30 and rules.sync_keep_count(20) == 20
  assert rules.sync_keep_count(100, "first_c", first_c=7) == 7
  assert rules.sync_keep_count(100, "fraction", fraction=0.1) == 10
  assert rules.sync_keep_count(3, "fraction", fraction=0.1) == 1
  kept, end = rules.sync_select([[5.0, 1.0, 3.0, 2.0], [2.0, 9.0, 4.0]], [2, 2])
  assert kept == [[1, 3], [0, 2]] and end == 4.0  # the slowest task's C-th finisher
  with pytest.raises(ValueError, match="sync rule"):
    rules.sync_keep_count(10, "median")
