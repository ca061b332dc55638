"""Tests for paperlab.runs and paperlab.config.main: forks, honest results, exit codes."""

import dataclasses
import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import checkpoint, config, loop, metrics, runs


@dataclasses.dataclass(frozen=True)
class Toy:
  """SGD on (w - 1)^2 from w = 3."""

  lr: float = 0.1
  steps: int = 100

  def validate(self):
    config.require(self.lr > 0, f"lr must be > 0, got {self.lr}.")


def _toy_main(argv):
  cfg, run = config.cli(Toy, {"quick": Toy()}, paper="toy", argv=argv)

  def step_fn(state, step, n):
    losses = []
    w = state["w"]
    for _ in range(n):
      losses.append((w - 1.0) ** 2)
      w = w - cfg.lr * 2.0 * (w - 1.0)
    return {"w": w}, {"loss": jnp.mean(jnp.stack(losses))}

  state, history = loop.train({"w": jnp.float32(3.0)}, step_fn=step_fn, num_steps=cfg.steps,
                              workdir=run.path("fit"), log_every=5, checkpoint_every=5,
                              max_to_keep=3)
  run.write_results({"w": float(state["w"])}, [{"metric": "final loss", "value": history[-1]["loss"]}])
  return run, state, history


def test_fork_with_a_lower_lr_after_a_nan_finishes(tmp_path):
  parent = tmp_path / "run"
  with pytest.raises(metrics.NonFiniteError) as e:
    _toy_main(["--lr", "20", "--workdir", str(parent)])  # |1 - 2 lr| = 39: overflows in ~13 steps
  last_good = e.value.last_good
  assert last_good is not None and last_good > 0
  # The advice "rerun with a lower lr" in the same directory is refused...
  with pytest.raises(config.ConfigError, match=r"different config \(lr: 20.0 -> 0.1\).*--fork-from"):
    _toy_main(["--lr", "0.1", "--workdir", str(parent)])
  # ... but a fork continues from the last good checkpoint and finishes.
  fork = tmp_path / "fork"
  run, state, history = _toy_main(["--lr", "0.1", "--fork-from", str(parent), "--workdir", str(fork)])
  assert np.isfinite(float(state["w"]))
  assert [r["step"] for r in history] == list(range(5, 101, 5))
  assert history[-1]["loss"] < 1e-6 * history[last_good // 5]["loss"]  # now converging
  saved = json.loads((fork / "config.json").read_text())
  assert saved["lr"] == 0.1
  assert saved["forked_from"]["run"] == str(parent) and saved["forked_from"]["step"] is None
  assert saved["forked_from"]["changes"] == ["lr: 20.0 -> 0.1"]
  assert saved["forked_from"]["copied"] == {"fit/checkpoints": last_good}
  assert json.loads((fork / "results.json").read_text())["status"] == "ok"
  # The same command again resumes the finished fork; the parent is untouched.
  again, state2, _ = _toy_main(["--lr", "0.1", "--fork-from", str(parent), "--workdir", str(fork)])
  assert float(state2["w"]) == float(state["w"])
  assert checkpoint.Checkpointer(parent / "fit" / "checkpoints").latest_step() == last_good


def test_fork_from_a_given_step_and_its_errors(tmp_path):
  parent = tmp_path / "run"
  _toy_main(["--steps", "30", "--workdir", str(parent)])
  run, _, history = _toy_main(["--steps", "30", "--lr", "0.2", "--fork-from", f"{parent}:22"])
  assert run.workdir == tmp_path / "run-fork"  # the default fork directory
  saved = json.loads((run.workdir / "config.json").read_text())["forked_from"]
  assert saved["step"] == 22 and saved["copied"] == {"fit/checkpoints": 20}
  parent_hist = metrics.read_jsonl(parent / "fit" / "metrics.jsonl")
  assert history[:4] == parent_hist[:4] and history[4]["loss"] != parent_hist[4]["loss"]
  with pytest.raises(config.ConfigError, match="not a run directory"):
    _toy_main(["--fork-from", str(tmp_path / "nothing"), "--workdir", str(tmp_path / "x")])
  with pytest.raises(config.ConfigError, match="other than the run it forks"):
    _toy_main(["--fork-from", str(parent), "--workdir", str(parent)])
  with pytest.raises(config.ConfigError, match=r"is a fork of .*'step': 22"):
    _toy_main(["--steps", "30", "--lr", "0.2", "--fork-from", str(parent)])


def test_results_are_strict_json_and_a_nan_headline_fails(tmp_path):
  run = runs.prepare_run(Toy(), paper="toy", preset="quick", workdir=tmp_path)
  run.write_results({"curve": [1.0, float("nan")], "best": float("inf")},
                    [{"metric": "acc", "value": 0.5}], timing={"wall_s": 3.0})
  text = (tmp_path / "results.json").read_text()
  res = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
  assert res["status"] == "ok" and res["results"] == {"curve": [1.0, None], "best": None}
  assert res["null_reasons"] == {"results.curve[1]": "was nan", "results.best": "was inf"}
  assert res["timing"] == {"wall_s": 3.0}
  for value, why in [(float("nan"), "not a number"), (None, "missing"), ("{128: nan}", "reads")]:
    with pytest.raises(runs.ResultError, match=f"'val loss' is {why}"):
      run.write_results({}, [{"metric": "acc", "value": 0.5}, {"metric": "val loss", "value": value}])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "failed" and "FAILED" in res["headline"][1]["note"]
  with pytest.raises(runs.ResultError, match="no headline"):
    run.write_results({}, [])
  run.write_results({}, [{"metric": "acc", "value": 0.5},  # a ratio over a zero gain is undefined
                         {"metric": "gain recovered", "value": float("nan"), "optional": True}])
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["status"] == "ok" and res["headline"][1] == {
      "metric": "gain recovered", "value": None, "note": "undefined: value not a number"}


def test_damaged_json_names_the_file(tmp_path):
  run = runs.prepare_run(Toy(), paper="toy", preset="quick", workdir=tmp_path)
  (tmp_path / "config.json").write_text('{"lr": 0.1, "ste')
  with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'} is damaged"):
    runs.prepare_run(Toy(), paper="toy", preset="quick", workdir=tmp_path)
  assert run.workdir == tmp_path


# ---------------------------------------------------------------------------
# config.main: one line on stderr, the exit code, a traceback only with --debug.


def _exit(monkeypatch, capsys, fn, argv=()):
  monkeypatch.setattr(sys, "argv", ["toy.py", *argv])
  monkeypatch.delenv(config.DEBUG_ENV, raising=False)
  with pytest.raises(SystemExit) as e:
    config.main(fn)
  return e.value.code, capsys.readouterr().err


def _raise(exc):
  def fn():
    raise exc
  return fn


@pytest.mark.parametrize("exc, code", [
    (config.ConfigError("lr must be > 0, got -1."), 2),
    (ValueError("two\nlines"), 2),
    (FileNotFoundError("Dataset 'cifar10' was not found.\nPrepare it."), 2),
    (checkpoint.CheckpointError("Could not restore checkpoint 7."), 1),
    (runs.ResultError("The run failed: headline 'x' is not a number."), 1),
])
def test_main_prints_one_error_line_and_exits(monkeypatch, capsys, exc, code):
  rc, err = _exit(monkeypatch, capsys, _raise(exc))
  assert rc == code
  assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
  assert " ".join(str(exc).split()) in err


def test_main_exit_codes_for_success_interrupt_and_bugs(monkeypatch, capsys):
  assert _exit(monkeypatch, capsys, lambda: None) == (0, "")
  exits = []
  monkeypatch.setattr(config, "_hard_exit", lambda code: exits.append(code) or sys.exit(code))
  rc, err = _exit(monkeypatch, capsys, _raise(KeyboardInterrupt()))
  assert rc == 130 and exits == [130]
  assert err.startswith("interrupted:") and "rerun the same command" in err
  with pytest.raises(RuntimeError, match="a bug"):  # not an input error: a traceback
    _exit(monkeypatch, capsys, _raise(RuntimeError("a bug")))
  with pytest.raises(ValueError, match="bad"):  # --debug shows the traceback
    _exit(monkeypatch, capsys, _raise(ValueError("bad")), argv=["--debug"])
  monkeypatch.setenv(config.DEBUG_ENV, "1")
  monkeypatch.setattr(sys, "argv", ["toy.py"])
  with pytest.raises(ValueError, match="bad"):
    config.main(_raise(ValueError("bad")))


def test_main_after_a_nan_prints_a_fork_command_that_works(monkeypatch, capsys, tmp_path):
  wd = tmp_path / "run"
  argv = ["--lr", "20", "--workdir", str(wd)]
  rc, err = _exit(monkeypatch, capsys, lambda: _toy_main(argv), argv=argv)
  assert rc == 1
  lines = [x for x in err.splitlines() if not x[:2].isdigit()]  # not the log lines
  assert lines[0].startswith("error: Non-finite values") and lines[1].startswith("hint: ")
  cmd = lines[1].split("run: ", 1)[1].replace(" <changed flags>", "").split()
  assert cmd[cmd.index("--fork-from") + 1] == str(wd) and "--lr" in cmd
  fork_argv = cmd[2:] + ["--lr", "0.1"]  # the printed command plus the changed flag
  _, state, _ = _toy_main(fork_argv)
  assert np.isfinite(float(state["w"]))
