"""Tests for paperlab.metrics."""

import json

import numpy as np
import pytest

from paperlab import metrics


def test_writer_jsonl_csv_and_resume_truncation(tmp_path):
  w = metrics.MetricWriter(tmp_path)
  for s in (10, 20, 30):
    w.write(s, {"loss": np.float32(1.0 / s), "acc": np.array(s / 100), "n": np.int32(s)})
  w.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [10, 20, 30]
  assert isinstance(json.loads(lines[0])["n"], int)
  csv_rows = (tmp_path / "metrics.csv").read_text().splitlines()
  assert csv_rows[0] == "step,name,value" and len(csv_rows) == 1 + 3 * 3
  # A restart from the step-20 checkpoint drops the record of step 30.
  w = metrics.MetricWriter(tmp_path, resume_step=20)
  w.write(30, {"loss": 0.5})
  steps, values = w.series("loss")
  assert steps.tolist() == [10, 20, 30] and values[-1] == 0.5
  assert len(metrics.read_jsonl(tmp_path / "metrics.jsonl")) == 3
  # A fresh writer starts a new file.
  assert metrics.MetricWriter(tmp_path).records == []
  with pytest.raises(ValueError, match="scalars"):
    w.write(40, {"v": np.ones(3)})


def test_check_finite():
  metrics.check_finite(3, {"loss": 1.0, "name": "x", "hist": np.ones(3)})
  with pytest.raises(metrics.NonFiniteError, match="step 3.*last good checkpoint"):
    metrics.check_finite(3, {"loss": float("nan")})
  metrics.check_finite(3, {"loss": 1.0, "other": float("inf")}, keys=["loss"])
  with pytest.raises(FloatingPointError):
    metrics.check_finite(3, {"loss": np.float32(np.inf)})


def test_progress_bar_counts(tmp_path):
  bar = metrics.progress(10, initial=4, desc="x", disable=False)
  bar.update(6)
  assert bar.n == 10
  bar.close()
