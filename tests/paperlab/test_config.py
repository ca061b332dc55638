"""Tests for paperlab.config: presets, overrides, validation, run directories."""

import dataclasses
import json

import pytest

from paperlab import config


@dataclasses.dataclass(frozen=True)
class Inner:
  width: int = 8

  def validate(self):
    config.require(self.width > 0, f"width must be > 0, got {self.width}.")


@dataclasses.dataclass(frozen=True)
class Cfg:
  """A toy experiment."""

  lr: float = 0.1  # learning rate
  steps: int = 10
  name: str = "a"
  sizes: tuple[int, ...] = (4, 4)
  inner: Inner = Inner()

  def validate(self):
    config.require(self.lr > 0, f"lr must be > 0, got {self.lr}.")


PRESETS = {"quick": Cfg(), "paper": Cfg(steps=1000, sizes=(64, 64))}


def test_presets_and_overrides(tmp_path):
  cfg, run = config.cli(Cfg, PRESETS, paper="toy", argv=["--workdir", str(tmp_path / "r")])
  assert cfg == Cfg() and run.preset == "quick"
  cfg, run = config.cli(Cfg, PRESETS, paper="toy",
                        argv=["--preset", "paper", "--lr", "0.5", "--sizes", "1", "2", "3",
                              "--inner.width", "3", "--workdir", str(tmp_path / "p")])
  assert cfg == Cfg(lr=0.5, steps=1000, sizes=(1, 2, 3), inner=Inner(3))
  saved = json.loads((tmp_path / "p" / "config.json").read_text())
  assert saved["lr"] == 0.5 and saved["inner"] == {"width": 3}
  assert config.from_dict(Cfg, saved) == cfg


def test_default_workdir(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  _, run = config.cli(Cfg, PRESETS, paper="toy", argv=["--preset", "paper"])
  assert run.workdir.as_posix() == "runs/toy/paper"
  assert (tmp_path / "runs/toy/paper/config.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--lrr", "1"], r"^Unrecognized options: --lrr, 1; perhaps you meant --lr \(see --help\)$"),
    (["--steps", "ten"], r"^value error: Error parsing --steps: invalid literal .*'ten' \(see --help\)$"),
    (["--steps"], r"Missing value for argument '--steps'"),
    (["--preset", "huge"], r"invalid choice: 'huge'"),
    (["--workdir"], r"--workdir: expected one argument"),
    (["--lr", "inf"], r"^lr must be a finite number, got inf\.$"),
    (["--sizes", "1", "nan"], r"sizes"),
])
def test_usage_errors_are_one_line_config_errors(tmp_path, argv, message, capsys):
  with pytest.raises(config.ConfigError, match=message) as e:
    config.cli(Cfg, PRESETS, paper="toy", argv=argv + ["--workdir", str(tmp_path / "w")])
  assert "\n" not in str(e.value)
  assert capsys.readouterr().err == ""  # tyro's box is not printed
  assert not (tmp_path / "w").exists()


def test_validate_rejects_bad_values_before_anything_is_written(tmp_path):
  with pytest.raises(ValueError, match="lr must be > 0, got -1.0"):
    config.cli(Cfg, PRESETS, paper="toy", argv=["--lr", "-1", "--workdir", str(tmp_path / "r")])
  with pytest.raises(ValueError, match="width must be > 0"):
    config.cli(Cfg, PRESETS, paper="toy", argv=["--inner.width", "0", "--workdir", str(tmp_path / "r")])
  assert not (tmp_path / "r").exists()


def test_changed_config_in_same_workdir_is_an_error_unless_fresh(tmp_path):
  wd = str(tmp_path / "r")
  config.cli(Cfg, PRESETS, paper="toy", argv=["--workdir", wd])
  (tmp_path / "r" / "marker").write_text("x")
  config.cli(Cfg, PRESETS, paper="toy", argv=["--workdir", wd])  # same config: resume
  assert (tmp_path / "r" / "marker").exists()
  with pytest.raises(ValueError, match=r"lr: 0.1 -> 0.2.*--fresh"):
    config.cli(Cfg, PRESETS, paper="toy", argv=["--workdir", wd, "--lr", "0.2"])
  cfg, _ = config.cli(Cfg, PRESETS, paper="toy", argv=["--workdir", wd, "--lr", "0.2", "--fresh"])
  assert cfg.lr == 0.2 and not (tmp_path / "r" / "marker").exists()


def test_fresh_refuses_non_run_directory(tmp_path):
  (tmp_path / "precious.txt").write_text("keep me")
  with pytest.raises(ValueError, match="not a run directory"):
    config.cli(Cfg, PRESETS, paper="toy", argv=["--workdir", str(tmp_path), "--fresh"])
  assert (tmp_path / "precious.txt").exists()


def test_help_lists_presets_and_options(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    config.cli(Cfg, PRESETS, paper="toy", description="Toy experiment.", argv=["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for text in ("Toy experiment", "--preset", "quick", "paper", "steps=1000", "--lr", "learning rate"):
    assert text in out


def test_write_results(tmp_path):
  _, run = config.cli(Cfg, PRESETS, paper="toy", argv=["--workdir", str(tmp_path)])
  run.write_results({"acc": 0.5}, [{"metric": "acc", "value": 0.5}])
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["headline"] == [{"metric": "acc", "value": 0.5, "note": ""}]
  assert res["config"]["lr"] == 0.1 and res["results"] == {"acc": 0.5}
  with pytest.raises(ValueError, match="needs 'metric' and 'value'"):
    run.write_results({}, [{"value": 1}])
