"""Every script rejects every bad command-line value with one `error:` line and exit code 2.

The values run through `paperlab.config.main` in this process (validation ends
before any data is loaded, so this is fast); one subprocess per script checks
the ``__main__`` wiring. No case may print a traceback or create the run
directory.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from paperlab import config

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import baseline_mlp  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import ccl  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import complex_momentum  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import dion  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import fed_partial  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import fedast  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import reproduce  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import swat_nn  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

COMMON = [  # run options and usage errors, the same for every script
    ("--preset nope", "invalid choice: 'nope'"), ("--nope 1", "Unrecognized options: --nope"),
    ("--workdir", "expected one argument"), ("--seed -1", "seed"),
]
CASES = {
    baseline_mlp: [
        ("--epochs 0", "epochs must be >= 1"), ("--epochs ten", "Error parsing --epochs"),
        ("--lr -1", "lr must be > 0"), ("--lr inf", "lr must be a finite number"),
        ("--lr nan", "lr must be a finite number"), ("--momentum 1", "momentum must be in"),
        ("--checkpoint-every 0", "checkpoint_every must be a positive multiple"),
        ("--checkpoint-every 150", "checkpoint_every must be a positive multiple"),
        ("--log-every 0", "log_every must be >= 1"), ("--hidden 0", "hidden widths"),
        ("--dataset imagenet", "dataset must be one of"), ("--batch-size 0", "batch_size"),
        ("--sweep nope=1", "unknown key 'nope'; this script sweeps lr, momentum, weight_decay"),
        ("--sweep lr=", "empty list"), ("--sweep lr=0.1,x", "'x' is not a number"),
        ("--sweep lr=0.1,-1", "lr must be > 0"), ("--sweep epochs=1,2", "cannot sweep epochs"),
        ("--sweep dataset=mnist,digits", "cannot group"), ("--seeds 2:1", "empty range"),
        ("--seeds 0:2 --mesh data=2", "without --mesh"),
    ],
    ccl: [
        ("--epochs 0", "epochs"), ("--methods", "methods must list"), ("--methods ccl ccl", "methods"),
        ("--methods sgd", "methods"), ("--seeds", "seeds must list"), ("--seeds -1", "seeds must be >= 0"),
        ("--lr 0", "lr must be > 0"), ("--bp-lr -1", "bp_lr"), ("--eta-min 5", "eta_min"),
        ("--val-fraction 0.6", "val_fraction"), ("--clip 0", "clip"), ("--checkpoint-epochs 0", "checkpoint_epochs"),
        ("--diag-examples 5", "diag_examples"), ("--batches-per-epoch 0", "batches_per_epoch"),
        ("--model rnn", "--model"), ("--model ae --channels 1 2 3 4 5 6", "at most 5"),
        ("--hidden 0", "widths"), ("--scale-c -1", "loss weights"), ("--warmup-steps -1", "warmup_steps"),
        ("--sweep nope=1", "unknown key 'nope'; this script sweeps lr, bp_lr, momentum"),
        ("--sweep lr=", "empty list"), ("--sweep lr=1,x", "'x' is not a number"),
        ("--sweep lr=1,-1", "lr must be > 0"), ("--sweep momentum=0.5,1", "momentum must be in"),
        ("--sweep epochs=1,2", "cannot sweep epochs"), ("--sweep model=mlp,cnn", "cannot group"),
        ("--sweep lr=1,2 --sweep momentum=0 --sweep-zip", "equal length"),
    ],
    dion: [
        ("--timing-calls 0", "timing_calls must be >= 1"), ("--eval-windows 0", "eval_windows must be >= 1"),
        ("--log-every 0", "log_every must be >= 1"), ("--arms dion-1/0", "Unknown arm 'dion-1/0'"),
        ("--arms dion-0", "Unknown arm"), ("--arms dion-nan", "Unknown arm"), ("--arms sgd", "Unknown arm"),
        ("--arms", "arms must list"), ("--arms muon muon", "arms must list"),
        ("--sweep-arms dion-2", "Unknown arm"), ("--dataset foo", "dataset 'foo' is not available"),
        ("--mesh fsdp=3", "mesh 'fsdp=3' needs 3 devices"), ("--mesh fsdp=16", "needs 16 devices"),
        ("--mesh fsdp=8 --d-model 60 --heads 4", "fsdp=8 does not divide dimension 60"),
        ("--mesh foo=2", "Unknown mesh axis"), ("--mesh fsdp=x", "Bad mesh entry"), ("--mesh fsdp=0", "size >= 1"),
        ("--steps 0", "steps must be >= 1"), ("--heads 5", "must divide d_model"),
        ("--eval-every 30", "multiple of log_every"), ("--warmdown 1", "warmdown"),
        ("--val-fraction 0", "val_fraction"), ("--sweep-batch-sizes 32", "must not repeat batch_size"),
        ("--sweep-batch-sizes 0", "sweep batch sizes"), ("--dion-lr 0", "dion_lr"),
        ("--qr-method svd", "qr_method"), ("--scalar-optimizer sgd", "scalar_optimizer"),
        ("--weight-decay -1", "weight_decay"),
        ("--sweep nope=1", "unknown key 'nope'"), ("--sweep adamw_lr=", "empty list"),
        ("--sweep adamw_lr=0.1,x", "'x' is not a number"), ("--sweep adamw_lr=0.1,-1", "adamw_lr must be > 0"),
        ("--sweep d_model=32,64", "cannot sweep d_model"), ("--sweep arms=adamw,muon", "cannot group"),
        ("--seeds 2:1", "empty range"), ("--seeds 0:2 --mesh fsdp=8", "without --mesh"),
    ],
    complex_momentum: [
        ("--sweep-steps 0", "sweep_steps must be >= 1"), ("--sweep-lrs", "sweep_lrs must list"),
        ("--sweep-lrs 0.1 -1", "sweep_lrs"), ("--heat-alphas", "heat_alphas must list"),
        ("--parts", "parts must be"), ("--parts foo", "parts must be"), ("--gan-seeds -1", "gan_seeds"),
        ("--parts gan --gan-seeds 0", "runs nothing"), ("--alpha -1", "alpha must be > 0"),
        ("--curve-steps 5", "curve_steps"), ("--gan-b2 1", "gan_b2"), ("--gan-samples 0", "gan_samples"),
        ("--fmnist-samples 1", "fmnist_samples"), ("--gan-angles 0.3 nan", "finite"), ("--gan-angles 0", "gan_angles"),
        ("--gan-d-steps 0", "gan_d_steps"), ("--gan-ema 1", "gan_ema"), ("--gan-magnitude 1", "magnitudes"),
        ("--sweep-tol 0", "sweep_tol"), ("--heat-grid 1", "heat_grid"), ("--fmnist-lr 0", "fmnist_lr"),
        ("--gan-eval-every 0", "gan_eval_every"),
        ("--sweep gan_lr_x=1", "unknown key"), ("--sweep gan_steps=1,2", "gan_steps: this script sweeps only seeds"),
        ("--sweep gan_b2=0.5", "sweeps only seeds"), ("--seeds x", "expected integers"),
        ("--seeds 0:2 --parts sweep", "add gan to --parts"),
    ],
    swat_nn: [
        ("--checkpoint-every 0", "checkpoint_every must be a positive multiple"),
        ("--log-every 0", "log_every must be >= 1"), ("--functions", "non-empty subset"),
        ("--functions booth booth", "must not repeat"), ("--search-seeds 0", "search_seeds"), ("--functions nope", "unknown: \\['nope'\\]"),
        ("--ae-steps 0", "ae_steps must be >= 1"), ("--num-heads 0", "num_heads"),
        ("--d-model 30 --num-heads 4", "multiple of num_heads"), ("--search-warmup 2000", "warmup must be in"),
        ("--lr-z 0", "lr_z"), ("--dense-activation relu", "dense_activation"), ("--ae-clip -1", "ae_clip"),
        ("--functional-weight 0 --recon-weight 0", "must not both be 0"), ("--ae-warmup 5000", "ae_warmup"),
        ("--n-test 0", "n_test"), ("--finetune-steps -1", "finetune_steps"),
        ("--sweep lr_z=0.1,0.2", "sweeps only seeds"), ("--sweep nope=1", "unknown key 'nope'"),
        ("--seeds 1 1", "distinct"), ("--seeds 3:3", "empty range"), ("--seeds x", "expected integers"),
    ],
    fed_partial: [
        ("--sweep client_lr=", "empty list"), ("--sweep client_lr=0.1,x", "'x' is not a number"),
        ("--sweep client_lr=0.1,-1", "client_lr must be > 0"), ("--sweep nope=1", "unknown key 'nope'"),
        ("--sweep server_lr=1,2", "cannot sweep server_lr"), ("--sweep task=images", "cannot group"),
        ("--sweep client_lr=0.1 --mesh clients=2", "without --mesh"), ("--seeds 3:3", "empty range"),
        ("--seeds 1 1", "distinct"),
    ],
    fedast: [
        ("--sweep lr=0.1,0.2", "sweeps only seeds"), ("--sweep nope=1", "unknown key 'nope'"),
        ("--seeds 2:1", "empty range"), ("--seeds 1 1", "distinct"),
    ],
}
PARAMS = [(m, argv, msg) for m, cases in CASES.items() for argv, msg in COMMON + cases]


def _run_main(monkeypatch, capsys, fn, argv):
  monkeypatch.setattr(sys, "argv", ["script.py", *argv])
  monkeypatch.delenv(config.DEBUG_ENV, raising=False)
  with pytest.raises(SystemExit) as e:
    config.main(fn)
  return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("module, args, message", PARAMS,
                         ids=[f"{m.__name__}:{a}" for m, a, _ in PARAMS])
def test_bad_value_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys, module, args, message):
  workdir = tmp_path / "run"
  argv = args.split() + ([] if args == "--workdir" else ["--workdir", str(workdir)])
  rc, out = _run_main(monkeypatch, capsys, module.main, argv)
  assert rc == 2, out.err
  lines = out.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.err
  assert "Traceback" not in out.err + out.out
  assert __import__("re").search(message, lines[0]), lines[0]
  assert not workdir.exists()  # rejected before the run directory (and any data) is touched


def test_missing_dataset_names_a_flag_that_exists(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  rc, out = _run_main(monkeypatch, capsys, ccl.main, ["--dataset", "cifar10", "--workdir", str(tmp_path / "r")])
  errors = [x for x in out.err.splitlines() if x.startswith("error:")]
  assert rc == 2 and len(errors) == 1 and "Traceback" not in out.err
  assert errors[0].startswith("error: Dataset 'cifar10' (train) was not found")
  assert "--data-dir" in errors[0] and "--data_dir" not in errors[0]
  with pytest.raises(SystemExit):
    ccl.main(["--help"])
  assert "--data-dir DIR" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    ("--only nope", "unknown --only entries"), ("--preset nope", "preset 'nope' does not exist"),
    ("--preset paper", "preset 'paper' does not exist in dion"), ("--timeout-min 0", "timeout_min"),
])
def test_reproduce_rejects_bad_values(monkeypatch, capsys, args, message):
  rc, out = _run_main(monkeypatch, capsys, lambda: reproduce.main(), args.split())
  assert rc == 2 and out.err.startswith("error: ") and message in out.err
  assert out.err.count("\n") == 1


@pytest.mark.slow
def test_scripts_exit_2_from_the_command_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
  env.pop(config.DEBUG_ENV, None)
  names = ["baseline_mlp", "ccl", "dion", "complex_momentum", "swat_nn"]
  procs = {n: subprocess.Popen([sys.executable, str(ROOT / "scripts" / f"{n}.py"), "--seed", "-1",
                                "--workdir", str(tmp_path / n)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for n in names}
  procs["reproduce"] = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--only",
                                         "nope"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
  for name, p in procs.items():
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2, (name, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in out + err, (name, err)
  debug = subprocess.run([sys.executable, str(ROOT / "scripts" / "baseline_mlp.py"), "--lr", "-1", "--debug",
                          "--workdir", str(tmp_path / "d")], env=env, capture_output=True, text=True, timeout=300)
  assert debug.returncode == 1 and "Traceback" in debug.stderr and "lr must be > 0" in debug.stderr
