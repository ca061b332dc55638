"""Runs a script in N local processes under `jax.distributed` (CPU devices, loopback).

    python -m paperlab.launch -n 2 --devices-per-process 4 scripts/dion.py --preset quick \\
        --mesh fsdp=4,tp=2

Every process runs ``python SCRIPT ARGS...`` with the environment that
`paperlab.distributed.initialize` reads (coordinator ``127.0.0.1:<free
port>``, process count and index) and ``JAX_PLATFORMS=cpu`` with
``JAX_NUM_CPU_DEVICES`` simulated devices each, so the run sees
``n * devices_per_process`` devices in all. Output lines are prefixed
``[p<i>]``. The launcher returns 0 when every process does. When one fails,
the others get ``--grace`` seconds to stop by themselves (JAX's runtime stops
the peers of a dead process after its heartbeat timeout), then their process
groups are terminated; the launcher prints which process failed and returns
its exit code (1 for a signal). ``--timeout`` bounds the whole run (exit code
124). This is for tests and laptops; on a cluster, start one process per host
with its scheduler (see docs/distributed.md).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from paperlab import distributed

_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return int(s.getsockname()[1])


def process_env(base: Mapping[str, str], *, process_id: int, num_processes: int, port: int,
                devices_per_process: int) -> dict[str, str]:
  """The environment of local process ``process_id``."""
  env = dict(base)
  env[distributed.ENV_COORDINATOR] = f"127.0.0.1:{port}"
  env[distributed.ENV_NUM_PROCESSES] = str(num_processes)
  env[distributed.ENV_PROCESS_ID] = str(process_id)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_NUM_CPU_DEVICES"] = str(devices_per_process)
  # A device-count XLA flag inherited from the caller (e.g. a test session) would disagree.
  flags = _DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
  flags = f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
  env["XLA_FLAGS"] = flags
  env["PYTHONUNBUFFERED"] = "1"
  return env


def _pump(stream, prefix: str, out, lock: threading.Lock) -> None:
  for raw in iter(stream.readline, b""):
    line = raw.decode("utf-8", "replace").rstrip("\n")
    with lock:
      out.write(f"{prefix}{line}\n")
      out.flush()
  stream.close()


def _describe(code: int | None) -> str:
  if code is None:
    return "still running"
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exit code {code}"


def _stop(procs: Sequence[subprocess.Popen], wait_s: float = 5.0) -> None:
  """SIGTERM then SIGKILL to the process group of every child still running."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait_s
    while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
      time.sleep(0.05)


def launch(command: Sequence[str], *, num_processes: int, devices_per_process: int = 1,
           timeout: float | None = None, grace: float = 10.0, env: Mapping[str, str] | None = None,
           out=None, port: int | None = None) -> int:
  """Runs ``command`` in ``num_processes`` local processes; returns the exit code.

  Args:
    command: the program and its arguments (e.g. ``[sys.executable, "x.py"]``).
    num_processes: processes to start (process 0 hosts the coordinator).
    devices_per_process: simulated CPU devices of each process.
    timeout: seconds for the whole run (None: no limit); past it every
      process is stopped and 124 returned.
    grace: after the first failure, seconds the others get to exit by
      themselves before they are stopped.
    env: base environment (default ``os.environ``).
    out: where prefixed output and messages go (default ``sys.stdout``).
    port: coordinator port (default: a free one).

  Raises:
    ValueError: ``num_processes`` or ``devices_per_process`` below 1, or an
      empty command (before anything starts).
  """
  if num_processes < 1:
    raise ValueError(f"-n/--num-processes must be >= 1, got {num_processes}.")
  if devices_per_process < 1:
    raise ValueError(f"--devices-per-process must be >= 1, got {devices_per_process}.")
  if not command:
    raise ValueError("No script given: python -m paperlab.launch -n N script.py [args...].")
  if grace < 0 or (timeout is not None and timeout <= 0):
    raise ValueError(f"--grace must be >= 0 and --timeout > 0, got {grace} and {timeout}.")
  out = sys.stdout if out is None else out
  port = free_port() if port is None else port
  base = os.environ if env is None else env
  lock = threading.Lock()

  def say(msg: str) -> None:
    with lock:
      out.write(f"[launch] {msg}\n")
      out.flush()

  procs: list[subprocess.Popen] = []
  pumps: list[threading.Thread] = []
  start = time.monotonic()
  try:
    for i in range(num_processes):
      p = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, start_new_session=True,
                           env=process_env(base, process_id=i, num_processes=num_processes,
                                           port=port, devices_per_process=devices_per_process))
      procs.append(p)
      t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", out, lock), daemon=True)
      t.start()
      pumps.append(t)
    failed, failed_at = None, None
    while True:
      codes = [p.poll() for p in procs]
      if failed is None:
        bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
          failed, failed_at = bad[0], time.monotonic()
          say(f"process {failed} failed ({_describe(codes[failed])}); the other processes get "
              f"{grace:g} s to exit before they are stopped.")
      if all(c is not None for c in codes):
        break
      now = time.monotonic()
      if failed is not None and now - failed_at > grace:
        say("stopping the processes still running: "
            + ", ".join(f"p{i}" for i, c in enumerate(codes) if c is None))
        _stop(procs)
        break
      if timeout is not None and now - start > timeout:
        say(f"timeout after {timeout:g} s; stopping every process.")
        _stop(procs)
        for t in pumps:
          t.join(timeout=2)
        say("; ".join(f"p{i}: {_describe(p.poll())}" for i, p in enumerate(procs)))
        return 124
      time.sleep(0.05)
  except BaseException:  # Ctrl-C or anything else: never leave processes behind
    _stop(procs)
    raise
  for t in pumps:
    t.join(timeout=2)
  codes = [p.poll() for p in procs]
  if failed is None:
    return 0
  say(f"run failed after {time.monotonic() - start:.1f} s: "
      + "; ".join(f"p{i}: {_describe(c)}" for i, c in enumerate(codes)))
  code = codes[failed]
  return code if code is not None and code > 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m paperlab.launch", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("-n", "--num-processes", type=int, required=True, help="local processes")
  parser.add_argument("--devices-per-process", type=int, default=1,
                      help="simulated CPU devices per process (default 1)")
  parser.add_argument("--timeout", type=float, default=None,
                      help="seconds for the whole run (default: no limit)")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds the others get to exit after one fails (default 10)")
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
  parser.add_argument("script", help="the Python script to run")
  parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the script")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.script):
    parser.error(f"script {args.script!r} not found")
  command = [sys.executable, "-u", args.script] + args.args
  try:
    return launch(command, num_processes=args.num_processes,
                  devices_per_process=args.devices_per_process, timeout=args.timeout,
                  grace=args.grace, port=args.port)
  except ValueError as err:
    parser.error(str(err))
    return 2


if __name__ == "__main__":
  sys.exit(main())
