"""Tests of the sweep flags of paperlab.config.cli: --seeds, --sweep, --sweep-zip and their errors."""

import dataclasses
import json

import pytest

from paperlab import config, sweep


@dataclasses.dataclass(frozen=True)
class Cfg:
  lr: float = 0.1
  wd: float = 0.0
  width: int = 8
  rank: int = 4
  method: str = "a"
  seed: int = 0

  def validate(self):
    config.require(self.lr > 0, f"lr must be > 0, got {self.lr}.")


PRESETS = {"quick": Cfg()}
OPTIONS = config.SweepOptions(numeric=("lr", "wd"), static=("rank",))


def _cli(tmp_path, *argv, options=OPTIONS):
  return config.cli(Cfg, PRESETS, paper="toy", sweep=options, argv=[*argv, "--workdir", str(tmp_path / "w")])


def test_seeds_and_grid(tmp_path):
  cfg, run = _cli(tmp_path, "--seeds", "0:3", "--sweep", "lr=0.01,0.1", "--sweep", "rank=2,4", "--lr", "0.2")
  assert cfg.lr == 0.2 and run.sweep.seeds == (0, 1, 2)
  assert dict(run.sweep.numeric) == {"lr": (0.01, 0.1)} and dict(run.sweep.static) == {"rank": (2, 4)}
  grid = sweep.grid_from(run.sweep)
  assert len(grid) == 6 and grid.members()[3].values == {"lr": 0.1}
  assert json.loads((tmp_path / "w" / config.SWEEP_FILE).read_text())["seeds"] == [0, 1, 2]


def test_seed_list_zip_and_no_flags(tmp_path):
  _, run = _cli(tmp_path, "--seeds", "4", "7", "--sweep", "lr=1,2", "--sweep", "wd=0,0.1", "--sweep-zip")
  grid = sweep.grid_from(run.sweep)
  assert run.sweep.seeds == (4, 7) and len(grid) == 4
  _, run = _cli(tmp_path / "b")
  assert not run.sweep and sweep.grid_from(run.sweep, default_seeds=(3,)).seeds == (3,)


@pytest.mark.parametrize("argv, message", [
    (["--sweep", "lrr=1,2"], r"unknown key 'lrr'; this script sweeps lr, wd, rank"),
    (["--sweep", "lr="], r"empty list of values for lr"),
    (["--sweep", "lr"], r"expected KEY=V1,V2"),
    (["--sweep", "lr=0.1,fast"], r"'fast' is not a number \(lr is a numeric field\)"),
    (["--sweep", "width=8,16"], r"cannot sweep width \(it changes shapes"),
    (["--sweep", "method=a,b"], r"method is a static setting that this script cannot group"),
    (["--sweep", "lr=0.1,-1"], r"--sweep lr=-1: lr must be > 0"),
    (["--sweep", "lr=1", "--sweep", "lr=2"], r"given twice"),
    (["--seeds", "a"], r"expected integers"),
    (["--seeds", "3:3"], r"empty range"),
    (["--seeds"], r"at least one seed"),
    (["--seeds", "1", "1"], r"distinct"),
    (["--sweep", "lr=1,2", "--sweep", "wd=1", "--sweep-zip"], r"equal length"),
])
def test_bad_sweep_flags_are_one_line_errors_before_anything(tmp_path, argv, message):
  with pytest.raises(config.ConfigError, match=message) as e:
    _cli(tmp_path, *argv)
  assert "\n" not in str(e.value)
  assert not (tmp_path / "w").exists()


def test_seed_is_not_an_abbreviation_of_seeds(tmp_path):
  cfg, run = _cli(tmp_path, "--seed", "3")
  assert cfg.seed == 3 and run.sweep.seeds is None


def test_script_without_sweeps_refuses_the_flags(tmp_path):
  with pytest.raises(config.ConfigError, match="does not run sweeps"):
    _cli(tmp_path, "--seeds", "0:2", options=None)


@dataclasses.dataclass(frozen=True)
class OwnSeeds:
  seeds: tuple[int, ...] = (0,)
  lr: float = 0.1


def test_own_seeds_field_takes_ranges_and_seed_only_scripts_name_seeds(tmp_path):
  cli = lambda *argv: config.cli(OwnSeeds, {"quick": OwnSeeds()}, paper="toy", sweep=config.SweepOptions(),  # noqa: E731
                                 argv=[*argv, "--workdir", str(tmp_path / "w")])
  cfg, run = cli("--seeds", "0:3", "7")
  assert cfg.seeds == (0, 1, 2, 7) and run.sweep.seeds is None
  assert cli("--seeds=2:4", "--lr", "0.5", "--fresh")[0].seeds == (2, 3)
  with pytest.raises(config.ConfigError, match=r"--sweep lr: this script sweeps only seeds \(--seeds"):
    cli("--sweep", "lr=0.1,0.2", "--fresh")
  with pytest.raises(config.ConfigError, match="empty range"):
    cli("--seeds", "3:3", "--fresh")
