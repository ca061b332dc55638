"""scripts/fedast.py: one-line errors before compute, NaN guard, atomic per-run files, labels, progress."""

import pathlib
import sys

import numpy as np
import pytest

from paperlab import config, files, metrics, runs

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "fed"))

import fedast as script  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from test_fedast import _task  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("flags, message", [
    ("--max-time 0", "max_time must be > 0"), ("--max-time -5", "max_time must be > 0"),
    ("--max-time nan", "max_time must be a finite number"), ("--methods nope", "unknown method 'nope'"),
    ("--methods", "methods must list"), ("--seeds -1", "seeds must be >= 0"), ("--seeds 0 0", "distinct seeds"),
    ("--tasks mnist_mlp", "one target per task"), ("--tasks nope --targets 0.5", "unknown task 'nope'"),
    ("--targets 0.8 0.7 1.5", "targets must be in"), ("--jobs-per-task 0", "jobs_per_task"),
    ("--fedast-global-lr 0", "fedast_global_lr"), ("--sync-global-lr -1", "sync_global_lr"),
    ("--sync-rule median", "sync_rule"), ("--sync-first-c 0", "sync_first_c"), ("--sync-keep 0", "sync_keep"),
    ("--staleness hinge", "staleness"), ("--staleness-exponent -1", "staleness_exponent"),
    ("--local-steps 0", "local_steps"), ("--batch-size 0", "batch_size"), ("--alpha 0", "alpha"),
    ("--eval-every 0", "eval_every"), ("--checkpoint-every 0", "checkpoint_every"),
    ("--max-busy-clients 2000", "max_busy_clients cannot exceed"), ("--ratio 0", "ratio"),
    ("--executor pmap", "executor"), ("--expected-time 0", "expected_time"),
])
def test_bad_values_are_one_line_errors_before_any_data_is_loaded(flags, message, tmp_path, monkeypatch, capsys):
  def no_data(*a, **k):
    raise AssertionError("data loaded before validation")

  monkeypatch.setattr(script.ft, "build", no_data)
  wd = tmp_path / "run"
  monkeypatch.setattr(sys, "argv", ["fedast.py", *flags.split(), "--workdir", str(wd)])
  with pytest.raises(SystemExit) as e:
    config.main(script.main)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not wd.exists()


def _tiny_cfg(**kw):
  args = dict(methods=("fedast", "sync"), seeds=(0,), tasks=("mnist_mlp", "fmnist_mlp"), targets=(0.9, 0.9),
              num_clients=20, max_busy_clients=10, jobs_per_task=4, ratio=2, eval_every=1, max_time=30.0,
              checkpoint_every=5, expected_time=30.0)
  args.update(kw)
  return script.Config(**args)


def _tiny_tasks():
  return [_task(20, "a"), _task(20, "b", seed=1)]


def test_diverging_lr_stops_the_script_with_the_nan_guard(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(script, "build_tasks", lambda cfg: _tiny_tasks())
  monkeypatch.setattr(sys, "argv", ["fedast.py", "--methods", "fedast", "--fedast-global-lr", "1e39",
                                    "--seeds", "0", "--max-time", "200", "--num-clients", "20", "--max-busy-clients",
                                    "10", "--jobs-per-task", "4", "--ratio", "2", "--workdir", str(tmp_path / "run")])
  with pytest.raises(SystemExit) as e:
    config.main(script.main)
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert "error: Task 'a': non-finite model leaves" in err or "error: Task 'b': non-finite model leaves" in err
  assert not (tmp_path / "run" / "results.json").exists()


def test_per_run_files_are_atomic_json_and_a_damaged_one_names_the_file(tmp_path):
  cfg = _tiny_cfg()
  run = runs.Run(workdir=tmp_path, paper="fedast", preset="quick")
  tasks = _tiny_tasks()
  out = script.simulate(tasks, cfg, "sync", 0, run)
  path = tmp_path / "sims" / "sync_0.json"
  assert files.load_json(path)["clock"] == out["clock"]
  assert not list(path.parent.glob(".*.tmp"))
  assert script.simulate(tasks, cfg, "sync", 0, run)["clock"] == out["clock"]  # read back, not rerun
  path.write_text(path.read_text()[:40])  # what a torn plain write would leave
  with pytest.raises(files.DamagedFileError, match=str(path)):
    script.simulate(tasks, cfg, "sync", 0, run)


def test_per_task_rows_keep_their_labels_when_a_task_misses_its_target():
  cfg = _tiny_cfg(methods=("fedast", "sync"), seeds=(0, 1))
  names = ["a", "b"]
  sims = {}
  for m, ta, tb in (("fedast", (10.0, 12.0), (None, 30.0)), ("sync", (20.0, 24.0), (40.0, 50.0))):
    for seed in (0, 1):
      times = {"a": ta[seed], "b": tb[seed]}
      sims[(m, seed)] = {"task_times": times, "all_done_time": None if None in times.values() else
                         max(times.values()), "jobs_done": 1, "mean_staleness": {"a": 0.0, "b": 0.0}}
  table = script.summarize(sims, cfg, names)
  assert table["fedast"]["task_times"]["a"] == {"mean": 11.0, "std": 1.0, "reached": 2}
  assert table["fedast"]["task_times"]["b"]["reached"] == 1
  rows = {r["metric"]: r for r in script.headline_rows(table, names, 2)}
  assert rows["FedAST time reduction vs Sync-ST: a"]["value"] == "50%"
  assert rows["FedAST time reduction vs Sync-ST: b"]["value"] is None  # missed by one FedAST seed
  assert "1/2 (FedAST)" in rows["FedAST time reduction vs Sync-ST: b"]["note"]
  assert rows["FedAST reduction vs Sync-ST"]["value"] == "n/a"


def test_progress_counts_simulated_time_and_revises_the_total(tmp_path):
  cfg = _tiny_cfg(methods=("sync",), seeds=(0, 1))
  run = runs.Run(workdir=tmp_path, paper="fedast", preset="quick")
  with metrics.RunProgress(2 * cfg.expected_time, disable=True) as bar:
    progress = script.SimTimeProgress(cfg, bar)
    out = script.simulate(_tiny_tasks(), cfg, "sync", 0, run, progress)
    assert bar.done == pytest.approx(out["clock"])
    assert bar.total == pytest.approx(2 * out["clock"])  # the second seed is guessed like the first
  assert np.isfinite(bar.total)
