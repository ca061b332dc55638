"""Seed statistics of the headline rows."""

import numpy as np
import pytest

from paperlab import stats


def test_summary_and_t_interval():
  s = stats.summarize([0.85, 0.86, 0.87])
  assert s["n"] == 3 and s["mean"] == pytest.approx(0.86) and s["std"] == pytest.approx(0.01)
  half = 4.302653 * 0.01 / np.sqrt(3)  # t_{0.975, 2}
  assert s["ci95_low"] == pytest.approx(0.86 - half) and s["ci95_high"] == pytest.approx(0.86 + half)
  assert stats.spread(s, 3) == "0.86 +- 0.01 (n=3)"
  assert "95% CI" in stats.spread(s, ci=True)


def test_one_value_and_empty():
  s = stats.summarize([2.5])
  assert s["std"] == 0 and s["ci95_low"] == s["ci95_high"] == 2.5
  with pytest.raises(ValueError, match="at least one"):
    stats.summarize([])
