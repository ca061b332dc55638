"""Scripts on the sweep engine: member i of a sweep equals the single run with member i's config.

Tiny configs (the 8x8 digits set, a few steps); every script's bad sweep flags
are one-line errors in tests/scripts/test_bad_input.py.
"""

import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import baseline_mlp  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

MLP_ARGS = ["--dataset", "digits", "--epochs", "2", "--hidden", "16", "--batch-size", "64",
            "--log-every", "11", "--checkpoint-every", "22"]


def _results(workdir):
  return json.loads((workdir / "results.json").read_text())["results"]


def test_baseline_mlp_member_equals_its_single_run(tmp_path):
  res = baseline_mlp.main(MLP_ARGS + ["--seeds", "0", "1", "--sweep", "lr=0.05,0.2",
                                      "--workdir", str(tmp_path / "sweep")])
  members = res["sweep"]["members"]
  assert [(m["seed"], m["lr"]) for m in members] == [(0, 0.05), (1, 0.05), (0, 0.2), (1, 0.2)]
  assert [p["test_acc"]["n"] for p in res["sweep"]["points"]] == [2, 2]
  for m in members[3:]:  # seed 1 and lr 0.2: neither the first seed nor the first value
    single = baseline_mlp.main(MLP_ARGS + ["--seed", str(m["seed"]), "--lr", str(m["lr"]),
                                           "--workdir", str(tmp_path / m["member"])])
    np.testing.assert_allclose(m["test_loss"], single["test_loss"], rtol=1e-4)
    np.testing.assert_allclose(m["test_acc"], single["test_acc"], rtol=1e-6)
  saved = json.loads((tmp_path / "sweep" / "results.json").read_text())
  assert saved["headline"][0]["metric"].startswith("BP MLP test accuracy (digits") and "lr=0.05" in \
      saved["headline"][0]["metric"]
  assert (tmp_path / "sweep" / "sweep.json").exists() and (tmp_path / "sweep" / "members.jsonl").exists()
