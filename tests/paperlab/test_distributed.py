"""paperlab.distributed and paperlab.launch: settings, global arrays, output guards, the launcher.

The two slow tests start real processes: 2 processes x 4 CPU devices run the
scenarios of `test_distributed_worker` (Dion fsdp=4 x tp=2 training steps,
Dion's compressed data-parallel sync, client-sharded FedAvg rounds, checkpoints
both ways) once, while this process (8 devices) computes the same scenarios
as the reference; and a peer killed mid-run must stop the others.
"""

import dataclasses
import io
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from paperlab import checkpoint, config, distributed, launch, metrics, plots
from paperlab import mesh as mesh_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "paperlab" / "test_distributed_worker.py"
sys.path.insert(0, str(WORKER.parent))

import test_distributed_worker as worker  # noqa: E402  pylint: disable=g-import-not-at-top

@dataclasses.dataclass(frozen=True)
class _Cfg:
  lr: float = 0.1


ENV = {distributed.ENV_COORDINATOR: "10.0.0.1:1234", distributed.ENV_NUM_PROCESSES: "4",
       distributed.ENV_PROCESS_ID: "2"}


# ---------------------------------------------------------------- settings


def test_flags_override_the_launcher_environment():
  settings, rest = distributed.parse_argv(["--preset", "quick", "--process-id", "3", "--lr", "1"], ENV)
  assert rest == ["--preset", "quick", "--lr", "1"]
  assert (settings.coordinator, settings.num_processes, settings.process_id) == ("10.0.0.1:1234", 4, 3)
  assert settings.requested and not settings.auto
  auto, _ = distributed.parse_argv(["--distributed"], ENV)
  assert auto.auto and auto.coordinator is None and auto.process_id is None
  assert not distributed.parse_argv(["--preset", "quick"], {})[0].requested
  assert distributed.settings_from_env({distributed.ENV_HEARTBEAT: "7"}).heartbeat_timeout == 7


@pytest.mark.parametrize("settings, message", [
    (distributed.Settings(coordinator="h:1", num_processes=2), "--process-id as well"),
    (distributed.Settings(num_processes=2, process_id=0), "--coordinator as well"),
    (distributed.Settings(coordinator="h:1", num_processes=2, process_id=2), r"--process-id must be in \[0, 2\)"),
    (distributed.Settings(coordinator="h:1", num_processes=0, process_id=0), "--num-processes must be >= 1"),
    (distributed.Settings(coordinator="nohost", num_processes=2, process_id=0), "HOST:PORT"),
    (distributed.Settings(coordinator="h:99999", num_processes=2, process_id=0), "HOST:PORT"),
    (distributed.Settings(auto=True, coordinator="h:1"), "--distributed detects the cluster"),
    (distributed.Settings(heartbeat_timeout=0), "heartbeat_timeout must be >= 1"),
])
def test_bad_settings_fail_before_anything_starts(settings, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize(settings)


def test_bad_flag_values_name_the_flag():
  with pytest.raises(ValueError, match="--num-processes must be an integer"):
    distributed.parse_argv(["--num-processes", "two"], {})
  with pytest.raises(ValueError, match="PAPERLAB_PROCESS_ID must be an integer"):
    distributed.settings_from_env({distributed.ENV_PROCESS_ID: "x"})


def test_a_single_process_run_starts_nothing():
  assert distributed.initialize(distributed.Settings()) is False
  assert distributed.process_count() == 1 and distributed.is_main()
  distributed.barrier("no-op")


def test_single_process_scripts_refuse_several_processes(monkeypatch, tmp_path):
  with pytest.raises(SystemExit, match="scripts/toy.py runs in a single process only"):
    config.cli(_Cfg, {"quick": _Cfg()}, paper="toy", argv=["--num-processes", "2"])
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
  with pytest.raises(SystemExit, match="single process only"):
    config.cli(_Cfg, {"quick": _Cfg()}, paper="toy", argv=["--workdir", str(tmp_path)])
  sys.path.insert(0, str(ROOT / "scripts"))
  import reproduce  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit, match="scripts/reproduce.py runs in a single process only"):
    reproduce.main([])
  assert not any(tmp_path.iterdir())  # stopped before the run directory was made


def test_multiprocess_scripts_read_the_flags_before_their_config(tmp_path):
  with pytest.raises(ValueError, match="need --coordinator, --process-id as well"):
    config.cli(_Cfg, {"quick": _Cfg()}, paper="toy", multiprocess=True,
               argv=["--num-processes", "2", "--workdir", str(tmp_path / "run")])
  cfg, _ = config.cli(_Cfg, {"quick": _Cfg()}, paper="toy", multiprocess=True,
                      argv=["--lr", "0.5", "--workdir", str(tmp_path / "run")])
  assert cfg.lr == 0.5


# ---------------------------------------------------------------- global arrays (one process)


class _Pieces:
  """A stand-in sharding whose local devices hold the given row blocks."""

  def __init__(self, *blocks):
    self.blocks = blocks

  def addressable_devices_indices_map(self, shape):
    del shape
    return {i: (slice(a, b), slice(None)) for i, (a, b) in enumerate(self.blocks)}


def test_local_rows_is_the_contiguous_block_of_this_process():
  assert distributed.local_rows(_Pieces((4, 6), (2, 4), (2, 4)), (8, 3)) == slice(2, 6)
  assert distributed.local_rows(_Pieces((0, 3)), (3, 5), axis=1) == slice(0, 5)
  with pytest.raises(ValueError, match="non-contiguous rows of axis 0"):
    distributed.local_rows(_Pieces((0, 2), (4, 6)), (8, 3))


def test_global_array_helpers_round_trip():
  mesh = mesh_lib.make_mesh({mesh_lib.FSDP: 4, mesh_lib.TP: 2})
  rows = NamedSharding(mesh, P(mesh_lib.FSDP, mesh_lib.TP))
  host = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
  assert distributed.local_rows(rows, host.shape) == slice(0, 8)
  a = distributed.from_rows(rows, host)
  b = distributed.from_callback(rows, host.shape, lambda index: host[index])
  c = distributed.from_local(rows, host, host.shape)
  for x in (a, b, c):
    assert x.sharding == rows and np.array_equal(distributed.to_host(x), host)
  committed = jax.device_put(jnp.ones(3), jax.devices()[1])
  tree = distributed.put({"w": host, "key": jax.random.key(4), "c": committed},
                         mesh_lib.replicated(mesh))
  assert all(x.sharding == mesh_lib.replicated(mesh) for x in jax.tree.leaves(tree))
  assert np.array_equal(jax.random.normal(tree["key"], (2,)), jax.random.normal(jax.random.key(4), (2,)))
  assert np.array_equal(distributed.to_host(tree)["key"], jax.random.key_data(jax.random.key(4)))
  assert distributed.put(a, rows) is a  # already placed


def test_only_the_main_process_writes(monkeypatch, tmp_path):
  monkeypatch.setattr(distributed, "is_main", lambda: False)
  monkeypatch.setenv("TQDM_DISABLE", "0")  # the progress bar is off for another reason
  writer = metrics.MetricWriter(tmp_path / "m")
  assert writer.write(5, {"loss": 1.5}) == {"step": 5, "loss": 1.5}
  assert writer.records == [{"step": 5, "loss": 1.5}]
  plots.line_plot({"a": ([0, 1], [1, 2])}, tmp_path / "p.png", xlabel="x", ylabel="y")
  run = config.prepare_run(_Cfg(), paper="t", preset="q", workdir=tmp_path / "run")
  run.write_results({"x": 1}, [{"metric": "m", "value": 1}])
  config.setup_logging(tmp_path)
  root = logging.getLogger()
  assert root.level == logging.WARNING
  assert not any(getattr(h, "baseFilename", "").startswith(str(tmp_path)) for h in root.handlers)
  assert list(tmp_path.iterdir()) == []  # no metrics, plot, config, results or log file
  assert metrics.progress(10).disable


def test_sharded_round_moves_only_the_sampled_clients():
  """The client-sharded FedAvg round never gathers every client's data onto a device."""
  mesh = mesh_lib.make_mesh({mesh_lib.CLIENTS: 8})
  algo, params, data, num = worker._fed_problem(mesh)  # pylint: disable=protected-access
  state = distributed.put(algo.init(params, num, jax.random.key(0)), mesh_lib.replicated(mesh))
  # the program round() runs for client-sharded data (data.x is spread over the 'clients' axis)
  program = algo._rounds[not data.x.sharding.is_fully_replicated]  # pylint: disable=protected-access
  hlo = program.lower(state, data).compile().as_text()
  from optim import collectives  # pylint: disable=g-import-not-at-top
  biggest = max(c.elements for c in collectives.collectives(hlo))
  per_client = int(np.prod(data.x.shape[1:]))
  assert biggest <= algo.clients_per_round * per_client, (biggest, data.x.shape)


# ---------------------------------------------------------------- the launcher (no JAX in the children)


def _py(code: str) -> list[str]:
  return [sys.executable, "-c", code]


def test_launcher_prefixes_output_and_sets_each_process_up():
  out = io.StringIO()
  code = ("import os; e = os.environ; print('id', e['PAPERLAB_PROCESS_ID'], 'of', e['PAPERLAB_NUM_PROCESSES'],"
          " e['PAPERLAB_COORDINATOR'], e['JAX_NUM_CPU_DEVICES'], e['XLA_FLAGS'])")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_foo=1")
  assert launch.launch(_py(code), num_processes=2, devices_per_process=3, port=4567, env=env,
                       out=out) == 0
  lines = out.getvalue().splitlines()
  for i in (0, 1):
    assert (f"[p{i}] id {i} of 2 127.0.0.1:4567 3 --xla_foo=1 "
            "--xla_force_host_platform_device_count=3") in lines, lines


def test_launcher_stops_the_others_when_one_fails(tmp_path):
  out = io.StringIO()
  marker = tmp_path / "grandchild.pid"
  code = ("import os, signal, subprocess, sys, time\n"
          "if os.environ['PAPERLAB_PROCESS_ID'] == '1': sys.exit(3)\n"
          "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # forces the SIGKILL path
          f"g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
          f"open({str(marker)!r}, 'w').write(str(g.pid)); time.sleep(60)")
  t0 = time.monotonic()
  code_ = launch.launch(_py(code), num_processes=2, grace=0.5, out=out)
  assert time.monotonic() - t0 < 20
  text = out.getvalue()
  assert code_ == 3, text
  assert "[launch] process 1 failed (exit code 3)" in text
  assert "stopping the processes still running: p0" in text
  assert re.search(r"run failed after .* p0: killed by SIGKILL; p1: exit code 3", text), text
  status = pathlib.Path(f"/proc/{int(marker.read_text())}/status")
  time.sleep(0.2)  # the whole process group went (gone, or a zombie nobody has reaped yet)
  assert not status.exists() or "zombie" in status.read_text()


def test_launcher_deadline():
  out = io.StringIO()
  assert launch.launch(_py("import time; time.sleep(60)"), num_processes=2, timeout=1.0,
                       out=out) == 124
  assert "[launch] timeout after 1 s" in out.getvalue()


def test_launcher_rejects_bad_arguments(capsys):
  for argv, message in ((["-n", "0", __file__], "must be >= 1"), (["-n", "2", "nope.py"], "not found"),
                        (["-n", "2", "--devices-per-process", "0", __file__], "must be >= 1")):
    with pytest.raises(SystemExit):
      launch.main(argv)
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- real processes (slow)


def _run(cmd: list[str], log: pathlib.Path, deadline: float, **env) -> subprocess.Popen:
  return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                          start_new_session=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1", **env))


def _finish(proc: subprocess.Popen, deadline: float) -> int:
  try:
    return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  deadline = time.monotonic() + 420
  one, two = tmp_path / "one", tmp_path / "two"
  with checkpoint.Checkpointer(one) as ck:  # written by this single process
    ck.save(5, worker.checkpoint_state(5))
  log = tmp_path / "launch.txt"
  proc = _run([sys.executable, "-m", "paperlab.launch", "-n", "2", "--devices-per-process", "4",
               "--timeout", "400", str(WORKER), "match", str(two), str(one)], log, deadline)
  try:
    reference = worker.scenarios()  # one process, 8 devices, while the two run
  finally:
    code = _finish(proc, deadline)
  text = log.read_text()
  assert code == 0, text[-4000:]
  got = dict(np.load(two / "results.npz"))
  assert {k for k in got if not k.startswith("restored/")} == set(reference)
  worst: dict[str, float] = {}
  for key, want in reference.items():
    np.testing.assert_allclose(got[key], want, atol=1e-5, rtol=1e-5, err_msg=key)
    diff = float(np.max(np.abs(got[key].astype(np.float64) - want))) if want.size else 0.0
    worst[key.split("/")[0]] = max(worst.get(key.split("/")[0], 0.0), diff)
  print("max |2 processes - 1 process|:", {k: f"{v:.1e}" for k, v in worst.items()})
  # each process put only its own clients' rows on its devices
  assert [(two / f"rows_p{i}.txt").read_text() for i in (0, 1)] == ["0 8", "8 16"]
  # the checkpoint of one process, restored in two
  expected = worker.checkpoint_values(worker.checkpoint_state(5))
  assert int(got["restored/at"]) == 5
  for key, want in expected.items():
    np.testing.assert_array_equal(got[f"restored/{key}"], want, err_msg=key)
  # the checkpoint of two processes, restored in one
  with checkpoint.Checkpointer(two / "ckpt") as ck:
    restored, step = ck.restore(worker.checkpoint_state(0))
  assert step == 7
  assert restored["w"].sharding == worker.checkpoint_state(0)["w"].sharding
  for key, want in worker.checkpoint_values(worker.checkpoint_state(7)).items():
    np.testing.assert_array_equal(worker.checkpoint_values(restored)[key], want, err_msg=key)


@pytest.mark.slow
def test_a_killed_peer_stops_the_others_with_a_message(tmp_path):
  """Process 1 dies by SIGKILL; process 0 (the coordinator) must exit by itself, non-zero."""
  deadline = time.monotonic() + 200
  log = tmp_path / "launch.txt"
  t0 = time.monotonic()
  proc = _run([sys.executable, "-m", "paperlab.launch", "-n", "2", "--devices-per-process", "2",
               "--grace", "150", str(WORKER), "die", "1"], log, deadline)
  code = _finish(proc, deadline)
  elapsed = time.monotonic() - t0
  text = log.read_text()
  assert code != 0, text[-3000:]
  assert "[launch] process 1 failed (killed by SIGKILL)" in text
  assert "stopping the processes" not in text, "process 0 had to be stopped by the launcher"
  assert re.search(r"run failed after [\d.]+ s: p0: (exit code [1-9]\d*|killed by SIG\w+); "
                   r"p1: killed by SIGKILL", text), text[-3000:]
  assert ("JAX distributed service detected fatal errors" in text  # JAX says why
          or "Gloo all-reduce failed" in text), text[-3000:]
  assert elapsed < 120 + 15, elapsed  # 2 minutes after the kill, plus start-up
  print(f"killed peer: the launch ended after {elapsed:.1f} s;", re.findall(r"run failed after .*", text))
