"""End to end: Ctrl-C a real script mid-training, rerun it: the results equal an uninterrupted run's."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import ccl  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# The Ctrl-C is sent once the CCL net (trained first) has logged its first epoch, leaving its
# other epochs and the whole BP net to go: a window of seconds.
EPOCHS = 20
ARGS = ["--dataset", "digits", "--epochs", str(EPOCHS), "--hidden", "32", "32", "--batch-size", "32",
        "--diag-examples", "100", "--seeds", "0"]


def _results(workdir):
  res = json.loads((workdir / "results.json").read_text())
  del res["timing"]  # wall-clock fields are the only ones allowed to differ
  return res


@pytest.mark.slow
def test_sigint_mid_training_then_rerun_equals_an_uninterrupted_run(tmp_path):
  ref = tmp_path / "ref"
  ccl.main(ARGS + ["--workdir", str(ref)])
  wd = tmp_path / "run"
  cmd = [sys.executable, str(ROOT / "scripts" / "ccl.py"), *ARGS, "--workdir", str(wd)]
  env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
  # A terminal's Ctrl-C: the child starts with SIGINT at its default even when this test runs
  # with it ignored (a suite started in the background by a non-interactive shell, `cmd &`,
  # ignores SIGINT, the child would inherit that, and Python would never raise KeyboardInterrupt).
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  metrics_file = wd / "ccl" / "metrics.jsonl"
  deadline = time.monotonic() + 600
  while proc.poll() is None and time.monotonic() < deadline:  # the CCL net has finished an epoch
    if metrics_file.exists() and metrics_file.read_text().count("\n") >= 1:
      break
    time.sleep(0.01)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(signal.SIGINT)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 130, out[-2000:]
  assert "interrupted:" in out and "Traceback" not in out
  steps = sorted(int(p.name) for p in (wd / "ccl" / "checkpoints").iterdir() if p.name.isdigit())
  per_epoch = json.loads(metrics_file.read_text().splitlines()[0])["step"]
  assert steps and steps[-1] % per_epoch == 0 and steps[-1] < EPOCHS * per_epoch  # saved by the interrupt
  assert not (wd / "results.json").exists()
  ccl.main(ARGS + ["--workdir", str(wd)])  # the same command again (in this process: faster)
  assert f"resuming at step {steps[-1]}" in (wd / "log.txt").read_text()
  assert _results(wd) == _results(ref)
