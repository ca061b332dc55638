"""scripts/swat_nn.py output path on synthetic search results: tables, figures, numbers before figures.

No training: rows, search results and the autoencoder history are made up
with the shapes the script produces (the compare preset, fixed-activation
columns included), so the table and figure code runs in seconds.
"""

import json
import pathlib
import sys

import numpy as np
import pytest

from nas import encoding
from nas import functions as fns
from paperlab import plots, runs

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import swat_nn  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

FUNCS = ("booth", "sphere")
SEEDS = 2


def _synthetic():
  """(data, found, chosen_depth, rows, history) of 2 functions x 2 search seeds."""
  data = [fns.make_dataset(name, n_train=16, n_test=8) for name in FUNCS]
  n = len(FUNCS) * SEEDS
  rng = np.random.default_rng(0)
  found = {}
  for depth in swat_nn.DEPTHS:
    h = encoding.H
    w = rng.uniform(-2, 2, (n, depth + 1, h, h)) * (rng.uniform(size=(n, depth + 1, h, h)) > 0.3)
    act = np.eye(3)[rng.integers(0, 3, (n, depth, h))]
    nets = encoding.Net(w.astype(np.float32), rng.uniform(-1, 1, (n, depth + 1, h)).astype(np.float32),
                        act.astype(np.float32), (rng.uniform(size=(n, depth, h)) > 0.4).astype(np.float32))
    found[depth] = {"nets": nets, "trace": {"mse": rng.uniform(0.1, 1.0, (n, 12))}}
  chosen = np.array([1 + i % len(swat_nn.DEPTHS) for i in range(n)])
  by_depth = lambda: {str(d): float(rng.uniform(0.1, 1)) for d in swat_nn.DEPTHS}  # noqa: E731
  rows = []
  for i in range(n):
    rows.append({"function": FUNCS[i % len(FUNCS)], "seed": i // len(FUNCS), "depth": int(chosen[i]),
                 "swat_test_mse": float(rng.uniform(0.1, 1)), "swat_active_neurons": 5, "swat_params": 20,
                 "dense_test_mse": 0.3, "dense_params": 30, "dense_active_neurons": 7,
                 "pruned_test_mse": 0.5, "tuned_test_mse": 0.4, "pruned_params": 20,
                 "fixed_test_mse": 0.35, "fixed_params": 22,
                 "swat_test_mse_by_depth": by_depth(), "swat_params_by_depth": by_depth(),
                 "tuned_test_mse_by_depth": by_depth(), "fixed_test_mse_by_depth": by_depth(),
                 "fixed_params_by_depth": by_depth()})
  history = [{"step": s, "heldout_loss": 1.0 / (s + 1), "heldout_loss_median": 0.5 / (s + 1),
              "heldout_loss_normalized": 0.8 / (s + 1)} for s in (0, 10, 20)]
  return data, found, chosen, rows, history


def _run(tmp_path):
  cfg = swat_nn.Config(functions=FUNCS, search_seeds=SEEDS, fixed_activation_ablation=True,
                       search_steps=12 * 16)
  return cfg, runs.prepare_run(cfg, paper="swat_nn", preset="test", workdir=tmp_path / "run")


def test_compare_tables_and_figures_from_synthetic_results(tmp_path):
  cfg, run = _run(tmp_path)
  data, found, chosen, rows, history = _synthetic()
  keys = ["swat_test_mse", "tuned_test_mse", "dense_test_mse", "swat_params", "dense_params",
          "fixed_test_mse", "fixed_params"]
  per_function = swat_nn.per_function_stats(rows, keys)
  comparison = swat_nn.comparison_markdown(per_function, fixed=True)
  assert "n=2 search seeds" in comparison and "fixed-act test MSE" in comparison
  lines = comparison.splitlines()
  assert len(lines) == 4 + len(FUNCS)
  assert {line.count("|") for line in lines[2:]} == {lines[2].count("|")}  # every row has every column
  assert lines[-1].endswith(f"| {swat_nn._ms(per_function['sphere']['fixed_params'])} |")
  depth = swat_nn.depth_markdown(rows, fixed=True)
  assert len(depth.splitlines()) == 2 + len(FUNCS) * len(swat_nn.DEPTHS)
  assert {line.count("|") for line in depth.splitlines()} == {8}
  swat_nn._write_figures(cfg, run, history, rows[:len(FUNCS)], data, found, chosen[:len(FUNCS)])
  for name in ("ae_heldout_loss.png", "architectures.png", "surfaces.png", "search_mse.png"):
    facts = plots.read_facts(run.path(name))
    assert facts and plots.missing_labels(facts) == [], (name, facts)


def test_numbers_are_written_before_the_figures(tmp_path):
  _, run = _run(tmp_path)

  def broken_figures():
    raise AttributeError("a plotting function that does not exist")
  headline = [{"metric": "SWAT-NN mean test MSE", "value": 0.5, "note": "synthetic"}]
  with pytest.raises(AttributeError):
    swat_nn.write_outputs(run, {"summary": {"x": 1.0}}, headline, {"total_seconds": 1.0},
                          ["| a |", "| b |"], broken_figures)
  assert json.loads(run.path("results.json").read_text())["results"]["summary"] == {"x": 1.0}
  assert run.path("table.md").read_text() == "| a |\n\n| b |\n"
