"""The SWAT-NN experiment script rejects bad settings before any compute."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))

import swat_nn  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.parametrize("argv, message", [
    (["--functions", "booth", "nope"], "unknown: \\['nope'\\]"),
    (["--search-warmup", "2000"], "warmup must be in"),
    (["--d-model", "30", "--num-heads", "4"], "multiple of num_heads"),
    (["--dense-activation", "relu"], "dense_activation"),
    (["--checkpoint-every", "75"], "checkpoint_every"),
])
def test_rejects_bad_config(tmp_path, argv, message):
  with pytest.raises(ValueError, match=message):
    swat_nn.main(argv + ["--workdir", str(tmp_path)])
  assert not (tmp_path / "config.json").exists()


def test_presets_are_valid_and_table_renders():
  for cfg in swat_nn.PRESETS.values():
    cfg.validate()
  row = {"function": "booth", "depth": 2, "swat_test_mse": 0.01, "swat_active_neurons": 5, "swat_params": 20,
         "dense_test_mse": 0.02, "dense_params": 85, "pruned_test_mse": 0.5, "tuned_test_mse": 0.1}
  summary = {k: row[k] for k in row if k not in ("function", "depth")}
  summary["dense_active_neurons"] = 14
  text = swat_nn.table_markdown([row], summary)
  assert "| booth | 2 | 0.01 | 5 | 20 | 0.02 | 85 | 0.5 | 0.1 |" in text
