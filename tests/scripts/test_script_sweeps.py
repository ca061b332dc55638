"""Scripts on the sweep engine: member i of a sweep equals the single run with member i's config.

Tiny configs (the 8x8 digits set, a few steps); every script's bad sweep flags
are one-line errors in tests/scripts/test_bad_input.py.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nas import autoencoder as ae
from nas import functions as fns
from paperlab import config

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import baseline_mlp  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import ccl  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import fed_partial  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import swat_nn  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

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


CCL_ARGS = ["--dataset", "digits", "--epochs", "2", "--hidden", "16", "16", "--batch-size", "64",
            "--diag-examples", "50", "--batches-per-epoch", "6", "--methods", "ccl"]


def test_ccl_member_equals_the_loop_run_of_its_config(tmp_path, monkeypatch):
  res = ccl.main(CCL_ARGS + ["--seeds", "0", "1", "--sweep", "lr=0.5,1", "--workdir", str(tmp_path / "sweep")])
  assert [(r["seed"], r["values"]) for r in res["runs"]["ccl"]] == [
      (0, {"lr": 0.5}), (1, {"lr": 0.5}), (0, {"lr": 1.0}), (1, {"lr": 1.0})]
  assert len(res["sweep"]["ccl"]["points"]) == 2 and res["sweep"]["ccl"]["points"][0]["final"]["n"] == 2
  # The member (seed 1, lr 0.5; the default lr is 1) against one loop.train run of that config.
  monkeypatch.setattr(ccl, "use_engine", lambda cfg: False)
  single = ccl.main(CCL_ARGS + ["--seeds", "1", "--lr", "0.5", "--workdir", str(tmp_path / "single")])
  member, ref = res["runs"]["ccl"][1], single["runs"]["ccl"][0]
  assert member["selected_epoch"] == ref["selected_epoch"]
  np.testing.assert_allclose([member["final"], member["selected"]], [ref["final"], ref["selected"]], rtol=1e-6)
  rows = [json.loads(x) for x in (tmp_path / "sweep" / "ccl" / "members.jsonl").read_text().splitlines()]
  ref_rows = [json.loads(x) for x in (tmp_path / "single" / "ccl" / "m000" / "metrics.jsonl").read_text().splitlines()]
  rows = [r for r in rows if r["member"] == "m001"]
  assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == [6, 12]
  for r, ref_row in zip(rows, ref_rows):  # losses, accuracies and the cos / CKA diagnostics per epoch
    keys = sorted(set(ref_row) - {"step", "chunk_s"})
    assert set(keys) <= set(r) and "cka_0" in keys and "cos_2" in keys
    np.testing.assert_allclose([r[k] for k in keys], [ref_row[k] for k in keys], rtol=1e-6, atol=1e-7)


def test_ccl_sweep_keys_per_method():
  request = config.SweepRequest(numeric=(("lr", (0.5, 1.0)), ("bp_lr", (0.1,)), ("momentum", (0.0, 0.9))))
  cfg = ccl.Config()
  assert ccl.method_keys(cfg, "ccl", request) == {"lr": (0.5, 1.0), "momentum": (0.0, 0.9)}
  assert ccl.method_keys(cfg, "bp", request) == {"bp_lr": (0.1,), "momentum": (0.0, 0.9)}
  only_lr = config.SweepRequest(numeric=(("lr", (0.5, 1.0)),))
  assert ccl.method_keys(cfg, "bp", only_lr) == {"lr": (0.5, 1.0)}  # BP follows lr while bp_lr is None
  assert ccl.method_keys(ccl.Config(bp_lr=0.03), "bp", only_lr) == {}


def test_swat_nn_search_member_equals_its_single_search(monkeypatch):
  monkeypatch.setattr(swat_nn, "DEPTHS", (2,))  # one depth: one compile per search call
  cfg = swat_nn.Config(d_model=8, num_heads=2, search_steps=6, search_warmup=2, anneal_steps=3,
                       functions=("booth", "himmelblau"), n_train=16, n_test=8, seed=3)
  graphdef, state = ae.init_state(ae.Autoencoder(cfg.ae_config(), rngs=nnx.Rngs(0)), optax.adam(1e-3))
  data = [fns.make_dataset(n, seed=cfg.seed, n_train=cfg.n_train, n_test=cfg.n_test) for n in cfg.functions]
  both = swat_nn.latent_search(cfg, graphdef, state["params"], data, seeds=(0, 2))
  alone = swat_nn.latent_search(cfg, graphdef, state["params"], data, seeds=(2,))
  for depth in (2,):
    z_both, z_alone = both[depth]["params"]["z"], alone[depth]["params"]["z"]
    np.testing.assert_allclose(z_both[2:], z_alone, rtol=1e-5, atol=1e-6)  # entries of seed 2
    assert not np.allclose(z_both[:2], z_alone)  # seed 0 is another search


FED_ARGS = ["--preset", "quick", "--dataset", "digits", "--num_clients", "4", "--clients_per_round", "2",
            "--batch_size", "16", "--max_client_examples", "32", "--hidden", "8", "--adapter_dim", "2",
            "--pretrain_rounds", "2", "--rounds", "3", "--eval_every", "3", "--splits", "output",
            "--algorithms", "fedsim", "fedalt", "--finetune_epochs", "1", "--permute_fraction", "0.2"]


def test_fed_partial_client_lr_member_equals_its_single_run(tmp_path):
  argv = FED_ARGS + ["--sweep", "client_lr=0.05,0.3", "--workdir", str(tmp_path / "run")]
  cfg, run = config.cli(fed_partial.Config, fed_partial.PRESETS, paper="fed_partial", argv=argv,
                        sweep=config.SweepOptions(numeric=("client_lr",)))
  exp = fed_partial.Experiment(cfg, run)
  for algorithm in ("fedsim", "fedalt"):
    members = exp.federated_sweep(f"{algorithm}-sweep", "output", algorithm, exp.params, rounds=3, lrs=(0.05, 0.3))
    assert [lr for lr, _, _ in members] == [0.05, 0.3]
    _, ref, _ = exp.federated(f"{algorithm}-single", "output", algorithm, exp.params, rounds=3, lr=0.3)
    state = members[1][2]
    assert int(state.round) == int(ref.round) == 3
    for a, b in zip(jax.tree.leaves((state.shared, state.personal)), jax.tree.leaves((ref.shared, ref.personal)),
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=algorithm)
    other = members[0][2]
    assert not np.allclose(jax.tree.leaves(other.shared)[0], jax.tree.leaves(ref.shared)[0])
