"""The NaN guard in the scripts: Dion's LM loop, the GAN loops, the SWAT-NN search."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from paperlab import config, metrics, runs

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import complex_momentum  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import complex_momentum_gan  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import dion  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import swat_nn  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _float_leaves(step_dir):
  tree = ocp.StandardCheckpointer().restore((step_dir / "default").absolute())
  return [np.asarray(x) for x in jax.tree.leaves(tree) if np.asarray(x).dtype.kind == "f"]


@pytest.mark.slow
def test_dion_divergence_keeps_only_finite_checkpoints(tmp_path, monkeypatch, capsys):
  wd = tmp_path / "run"
  argv = ["--arms", "adamw", "--adamw-lr", "1e5", "--scalar-lr", "1e5", "--steps", "8", "--log-every", "1",
          "--eval-every", "1", "--sweep-batch-sizes", "--d-model", "16", "--layers", "1", "--heads", "2",
          "--seq-len", "16", "--batch-size", "4", "--eval-windows", "8", "--timing-calls", "1",
          "--workdir", str(wd)]
  monkeypatch.setattr(sys, "argv", ["dion.py", *argv])
  with pytest.raises(SystemExit) as e:
    config.main(dion.main)
  assert e.value.code == 1
  err = capsys.readouterr().err
  # Which goes non-finite first, the state or the validation loss, depends on rounding; both are
  # named (the state-leaves message itself is pinned in tests/paperlab/test_loop.py).
  assert "error: Non-finite values after step" in err and "hint:" in err
  assert "state leaves" in err or "metrics {'val_loss': nan}" in err, err
  ckpts = wd / "adamw_b4" / "checkpoints"
  steps = sorted(p for p in ckpts.iterdir() if p.name.isdigit())
  assert steps, "no checkpoint kept"
  for step_dir in steps:  # every kept checkpoint is finite, leaf by leaf
    leaves = _float_leaves(step_dir)
    assert leaves and all(np.isfinite(x).all() for x in leaves), step_dir
  assert not (wd / "results.json").exists()


def _tiny_gan_cfg():
  return complex_momentum.Config(parts=("gan",), gan_seeds=1, gan_steps=4, gan_eval_every=2, gan_batch=8,
                                 gan_hidden=4, gan_z_dim=2, gan_samples=16)


def test_gan_loop_stops_on_a_non_finite_generator(tmp_path, monkeypatch):
  cfg = _tiny_gan_cfg()
  run = runs.Run(workdir=tmp_path, paper="complex_momentum", preset="quick")
  steps = complex_momentum_gan.GanSetup.steps

  def poisoned(self, state, start, n):  # finite scores at step 2, NaN generator weights after step 4
    state = steps(self, state, start, n)
    scale = jnp.where(start >= 2, jnp.nan, 1.0)  # traced: the steps are jitted
    return state._replace(players=(jax.tree.map(lambda x: x * scale, state.players[0]),
                                   state.players[1]))
  monkeypatch.setattr(complex_momentum_gan.GanSetup, "steps", poisoned)
  with pytest.raises(metrics.NonFiniteError, match=r"(?s)after step 4.*players") as e:
    complex_momentum_gan.gan_experiment(cfg, run, complex_momentum.gan_methods(cfg))
  assert e.value.last_good == 2
  assert all(np.isfinite(x).all() for x in _float_leaves(tmp_path / "gan" / "checkpoints" / "2"))


def test_swat_search_guard_names_the_functions():
  good = {"z": np.ones((3, 2)), "t": np.zeros(3), "mask": np.ones((3, 2), bool)}
  swat_nn._require_finite(good, "the search", ["a", "b", "c"])  # pylint: disable=protected-access
  bad = {**good, "z": good["z"].copy()}
  bad["z"][1, 0] = np.nan
  bad["t"] = np.array([0.0, 0.0, np.inf])
  with pytest.raises(metrics.NonFiniteError, match=r"the search is not finite for b, c\."):
    swat_nn._require_finite(bad, "the search", ["a", "b", "c"])  # pylint: disable=protected-access
