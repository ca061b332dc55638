"""scripts/fed_partial.py: config errors before any data loading; a tiny end-to-end run that resumes."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))

import fed_partial as script  # noqa: E402  pylint: disable=g-import-not-at-top

from paperlab import config  # noqa: E402


@pytest.mark.parametrize("args, match", [
    (["--rounds", "0"], "rounds must be >= 1"),
    (["--dataset", "foo"], "dataset must be one of"),
    (["--stateless_eval", "v0"], "stateless_eval must be one of"),
    (["--seeds", "1", "1"], "seeds must be distinct"),
    (["--eval_every", "0"], "eval_every must be >= 1"),
    (["--alpha", "0"], "alpha must be > 0"),
])
def test_bad_config_is_a_one_line_error_before_data_loading(tmp_path, monkeypatch, args, match):
  def no_data(*a, **k):
    raise AssertionError("data were loaded before the config was validated")
  monkeypatch.setattr(script, "build_task", no_data)
  with pytest.raises(config.ConfigError, match=match) as err:
    script.main(["--preset", "quick", "--workdir", str(tmp_path / "run")] + args)
  assert "\n" not in str(err.value)


def test_every_preset_validates():
  for name, preset in script.PRESETS.items():
    preset.validate()
    assert preset.rounds >= 1, name
  assert script.PRESETS["fmnist3"].run_seeds == (0, 1, 2)


@pytest.mark.slow
def test_pipeline_runs_writes_results_and_resumes(tmp_path):
  argv = ["--preset", "quick", "--workdir", str(tmp_path / "run"), "--dataset", "digits",
          "--num_clients", "6", "--clients_per_round", "3", "--batch_size", "16",
          "--max_client_examples", "64", "--hidden", "16", "--adapter_dim", "2",
          "--pretrain_rounds", "4", "--rounds", "2", "--eval_every", "2", "--splits", "output", "full",
          "--algorithms", "fedalt", "--finetune_epochs", "1", "--permute_fraction", "0.2",
          "--seeds", "0", "1"]
  first = script.main(argv)
  out = tmp_path / "run"
  for name in ("config.json", "results.json", "curves.png", "table.md", "seed0/cells.json",
               "seed1/cells.json"):
    assert (out / name).exists(), name
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(out / "curves.png") as img:  # one panel for pretraining + one per split
    assert img.size[0] > 2.5 * img.size[1] and img.getextrema() != ((255, 255),) * len(img.getbands())
  results = json.loads((out / "results.json").read_text())
  assert {row["metric"].split(",")[0] for row in results["headline"]} >= {
      "FedAvg (no personalization) mean acc", "full-model personalization mean acc"}
  table = first["summary"]["table"]
  assert set(table) == {"output", "full"}
  assert set(table["output"]) == {"finetune", "fedalt stateful"}
  assert 0 < first["personal_fraction"]["output"] < 0.5 and first["personal_fraction"]["full"] == 1.0
  for cell in list(table["output"].values()) + [first["summary"]["pretrained"], first["summary"]["ditto"]]:
    for key in ("acc_mean", "acc_p10"):
      values = cell[key]["values"]
      assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
      assert cell[key]["mean"] == pytest.approx(sum(values) / 2)
      assert cell[key]["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
  assert "ft_acc_mean" in table["output"]["fedalt stateful"]  # the local fine-tune column
  assert first["per_seed"]["0"]["table"] != first["per_seed"]["1"]["table"]  # seeds differ
  # A rerun of the finished experiment reuses the checkpoints and cached cells.
  again = script.main(argv)
  assert again["summary"] == first["summary"]
  with pytest.raises(ValueError, match="clients_per_round"):
    script.main(argv[:4] + ["--clients_per_round", "0"])
