"""End-to-end: the walking-skeleton script and the main job's summary."""

import json
import pathlib
import shutil
import sys

import pytest

from paperlab import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import baseline_mlp  # noqa: E402  pylint: disable=g-import-not-at-top
import reproduce  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.slow
def test_baseline_trains_resumes_and_writes_results(tmp_path):
  argv = ["--dataset", "mnist", "--epochs", "3", "--hidden", "64", "--lr", "0.1", "--log-every", "10",
          "--checkpoint-every", "30", "--workdir", str(tmp_path)]
  res = baseline_mlp.main(argv)
  assert res["dataset"] == "mnist (5k subset)" and res["test_examples"] == 1000
  assert res["test_acc"] > 0.85
  for name in ("config.json", "metrics.jsonl", "metrics.csv", "curves.png", "results.json", "log.txt"):
    assert (tmp_path / name).exists(), name
  headline = json.loads((tmp_path / "results.json").read_text())["headline"]
  assert headline[0]["value"] == res["test_acc"] and "5k subset" in headline[0]["metric"]
  # A rerun resumes from the final checkpoint and reproduces the same numbers.
  assert baseline_mlp.main(argv)["test_acc"] == res["test_acc"]
  # Corrupted checkpoint bytes (same file size) are an error naming the step, not a silent restore;
  # the fallback the message names (delete that step) resumes from the previous one, exactly.
  ckpts = tmp_path / "checkpoints"
  last = max((p for p in ckpts.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  data_file = max((p for p in last.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  raw = bytearray(data_file.read_bytes())
  raw[:4096] = bytes(min(4096, len(raw)))
  data_file.write_bytes(bytes(raw))
  with pytest.raises(checkpoint.CheckpointError, match=f"(?s){last}.*delete {last}"):
    baseline_mlp.main(argv)
  shutil.rmtree(last)
  assert baseline_mlp.main(argv)["test_acc"] == res["test_acc"]


def test_baseline_rejects_bad_config(tmp_path):
  with pytest.raises(ValueError, match="dataset must be one of"):
    baseline_mlp.main(["--dataset", "imagenet", "--workdir", str(tmp_path)])
  with pytest.raises(ValueError, match="checkpoint_every"):
    baseline_mlp.main(["--checkpoint-every", "150", "--workdir", str(tmp_path)])


def test_summary_table_lists_every_headline_row():
  outcomes = [{"key": "a", "paper": "A", "seconds": 12.0, "ok": True, "command": "python a.py",
               "rows": [{"metric": "acc", "value": 0.91234, "note": "n"},
                        {"metric": "loss", "value": 0.1, "note": ""}]},
              {"key": "b", "paper": "B", "seconds": 3.0, "ok": False,
               "rows": [{"metric": "run failed", "value": "exit code 1"}]},
              {"key": "c", "paper": "C", "seconds": 1.0, "ok": True,
               "rows": [{"metric": "max |x|", "value": 1.0, "note": "a|b"}]}]
  text = reproduce.summary_markdown(outcomes, reproduce.Args(), 15.0)
  assert "| A | acc | 0.9123 | n | 12 s |" in text
  assert "|  | loss | 0.1 |  |  |" in text
  assert "| B | run failed | exit code 1 |" in text and "**Failed: b.**" in text
  assert "| C | max \\|x\\| | 1 | a\\|b | 1 s |" in text  # pipes in cells are escaped


def test_reproduce_rejects_unknown_entries():
  with pytest.raises(ValueError, match="unknown --only"):
    reproduce.main(["--only", "nope"])
