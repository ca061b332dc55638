"""End-to-end: scripts/fed_partial.py on a tiny digits task, then a rerun that resumes."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))

import fed_partial as script  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.slow
def test_pipeline_runs_writes_results_and_resumes(tmp_path):
  argv = ["--preset", "quick", "--workdir", str(tmp_path / "run"), "--dataset", "digits",
          "--num_clients", "6", "--clients_per_round", "3", "--batch_size", "16",
          "--max_client_examples", "64", "--hidden", "16", "--adapter_dim", "2",
          "--pretrain_rounds", "4", "--rounds", "2", "--eval_every", "2", "--splits", "output", "full",
          "--algorithms", "fedalt", "--finetune_epochs", "1", "--permute_fraction", "0.2"]
  first = script.main(argv)
  out = tmp_path / "run"
  for name in ("config.json", "results.json", "curves.png", "table.md", "cells.json"):
    assert (out / name).exists(), name
  results = json.loads((out / "results.json").read_text())
  assert {row["metric"].split(",")[0] for row in results["headline"]} >= {
      "FedAvg (no personalization) mean acc", "full-model personalization mean acc"}
  table = first["table"]
  assert set(table) == {"output", "full"}
  assert set(table["output"]) == {"finetune", "fedalt stateful"}
  assert 0 < first["personal_fraction"]["output"] < 0.5 and first["personal_fraction"]["full"] == 1.0
  for cell in list(table["output"].values()) + [first["pretrained"], first["ditto"]]:
    assert 0.0 <= cell["acc_p10"] <= 1.0 and 0.0 <= cell["acc_mean"] <= 1.0
  # A rerun of the finished experiment reuses the checkpoints and cached cells.
  again = script.main(argv)
  assert again["table"] == first["table"] and again["pretrained"] == first["pretrained"]
  with pytest.raises(ValueError, match="clients_per_round"):
    script.main(argv[:4] + ["--clients_per_round", "0"])
