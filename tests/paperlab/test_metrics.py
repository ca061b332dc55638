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


def _strict(text):
  def no_constants(name):
    raise AssertionError(f"bare {name} in the file")
  return [json.loads(line, parse_constant=no_constants) for line in text.splitlines()]


def test_non_finite_values_are_written_as_strict_json(tmp_path):
  w = metrics.MetricWriter(tmp_path)
  rec = w.write(1, {"loss": float("nan"), "acc": np.float32(np.inf), "ok": 1.0})
  assert rec == {"step": 1, "loss": None, "acc": None, "ok": 1.0}
  assert _strict((tmp_path / "metrics.jsonl").read_text())[0]["loss"] is None
  assert w.series("loss")[1].tolist() != w.series("loss")[1].tolist()  # NaN in memory again


def test_torn_last_line_is_dropped_and_the_file_rewritten_on_resume(tmp_path):
  w = metrics.MetricWriter(tmp_path)
  for s in (1, 2):
    w.write(s, {"loss": 0.5})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "lo')  # a crash while the line was written
  w = metrics.MetricWriter(tmp_path, resume_step=3)
  assert [r["step"] for r in w.records] == [1, 2]
  w.write(3, {"loss": 0.25})
  assert [r["step"] for r in _strict((tmp_path / "metrics.jsonl").read_text())] == [1, 2, 3]
  assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind


def test_run_progress_eta_skip_and_log_lines(caplog):
  import logging  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  with caplog.at_level(logging.INFO):
    with metrics.RunProgress(100, desc="toy", unit="round", log_every_s=0.05, disable=True) as bar:
      assert bar.eta() is None
      bar.skip(50)  # resumed work sets no rate
      assert bar.eta() is None and "50/100 round (50.0%)" in bar.status()
      with bar.phase("a long jitted call", units=25):
        time.sleep(0.3)  # the main thread is busy: the log thread still reports
      assert bar.done == 75 and bar.computed == 25
      eta = bar.eta()
      assert eta is not None and 0 < eta < 10 * bar.elapsed()
  lines = [r.getMessage() for r in caplog.records]
  ticks = [x for x in lines if x.startswith("progress: toy") and "phase a long jitted call" in x]
  assert len(ticks) >= 2, lines
  assert "phase: a long jitted call" in lines and any(x.startswith("phase done:") for x in lines)
  for bad in (0, -1):
    with pytest.raises(ValueError, match="total"):
      metrics.RunProgress(bad)


def test_run_progress_eta_leaves_out_the_first_chunk():
  import time  # pylint: disable=g-import-not-at-top
  with metrics.RunProgress(100, disable=True) as bar:
    time.sleep(0.5)  # start-up and the first compilation
    bar.advance(10)
    first = bar.eta()
    assert first is not None and first > 3.0  # 90 units at 10 per 0.5 s
    time.sleep(0.05)
    bar.advance(10)  # later chunks are fast: the ETA follows them
    assert bar.eta() < 0.05 * 80 / 10 * 3, bar.eta()
  assert metrics.format_seconds(3725) == "1:02:05" and metrics.format_seconds(None) == "?"


def test_heartbeat_fills_silent_phases_and_progress_interval_from_env(caplog, monkeypatch):
  import logging  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  with caplog.at_level(logging.INFO):
    metrics.start_heartbeat("toy", every_s=0.2)
    try:
      logging.getLogger("toy").info("loading the data")
      time.sleep(0.7)  # a silent phase outside any RunProgress
    finally:
      metrics.stop_heartbeat()
  beats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: toy still")]
  assert len(beats) >= 2 and "last: loading the data" in beats[0], beats
  monkeypatch.setenv(metrics.PROGRESS_ENV, "0.5")
  assert metrics.progress_every_s() == 0.5
  with metrics.RunProgress(10, disable=True) as bar:
    assert bar.log_every_s == 0.5
  for bad in ("0", "soon"):
    monkeypatch.setenv(metrics.PROGRESS_ENV, bad)
    with pytest.raises(ValueError, match="PAPERLAB_PROGRESS_EVERY_S"):
      metrics.progress_every_s()
