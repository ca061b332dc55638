"""Tests for paperlab.loop: exact resume, NaN guard, interruption, validation."""

import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import checkpoint, data, loop, metrics

N, B, SEED = 96, 8, 0
X = np.random.default_rng(0).normal(size=(N, 5)).astype(np.float32)
Y = jnp.asarray(X @ np.arange(1.0, 6.0, dtype=np.float32) + 0.1)
X = jnp.asarray(X)


TX = optax.adam(0.3)


def _init():
  params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
  return {"params": params, "opt": TX.init(params), "rng": jax.random.key(1)}, TX


@jax.jit
def _chunk(state, idx):  # compiled once for the whole module
  def body(s, ix):
    rng, sub = jax.random.split(s["rng"])
    noise = 1e-3 * jax.random.normal(sub, (B,))
    def loss_fn(p):
      return jnp.mean((X[ix] @ p["w"] + p["b"] - Y[ix] - noise) ** 2)
    loss, g = jax.value_and_grad(loss_fn)(s["params"])
    u, opt = TX.update(g, s["opt"], s["params"])
    return {"params": optax.apply_updates(s["params"], u), "opt": opt, "rng": rng}, loss
  state, losses = jax.lax.scan(body, state, idx)
  return state, {"loss": losses.mean()}


def _make_step_fn(tx, fail_at=None, nan_at=None, interrupt_at=None, poison_at=None, sleep=0.0):
  assert tx is TX
  chunk = _chunk

  def step_fn(state, step, n):
    if step == fail_at:
      raise RuntimeError("simulated crash")
    if step == interrupt_at:
      raise KeyboardInterrupt
    state, m = chunk(state, jnp.asarray(data.batch_indices(N, B, SEED, step, n)))
    if step == nan_at:
      m = {"loss": jnp.nan}
    if poison_at is not None and step == poison_at[0]:  # finite loss, non-finite new state
      state = poison_at[1](state)
    time.sleep(sleep)
    return state, m
  return step_fn


def _leaves(state):
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
          for x in jax.tree.leaves(state)]


def test_resume_after_crash_is_bitwise_exact(tmp_path):
  state0, tx = _init()
  ref, ref_hist = loop.train(state0, step_fn=_make_step_fn(tx), num_steps=60, workdir=tmp_path / "a",
                             log_every=10, checkpoint_every=20)
  state0, tx = _init()
  with pytest.raises(RuntimeError, match="simulated crash"):
    loop.train(state0, step_fn=_make_step_fn(tx, fail_at=50), num_steps=60, workdir=tmp_path / "b",
               log_every=10, checkpoint_every=20)
  assert checkpoint.Checkpointer(tmp_path / "b" / "checkpoints").latest_step() == 40
  state0, tx = _init()
  got, hist = loop.train(state0, step_fn=_make_step_fn(tx), num_steps=60, workdir=tmp_path / "b",
                         log_every=10, checkpoint_every=20)
  for a, b in zip(_leaves(ref), _leaves(got)):
    np.testing.assert_array_equal(a, b)  # bitwise
  assert [r["step"] for r in hist] == [10, 20, 30, 40, 50, 60]
  assert [r["loss"] for r in hist] == [r["loss"] for r in ref_hist]
  assert ref_hist[-1]["loss"] < 0.1 * ref_hist[0]["loss"]  # it really trained


def test_extending_a_finished_run_continues_it(tmp_path):
  state0, tx = _init()
  ref, _ = loop.train(state0, step_fn=_make_step_fn(tx), num_steps=40, workdir=tmp_path / "a", log_every=10)
  state0, tx = _init()
  loop.train(state0, step_fn=_make_step_fn(tx), num_steps=20, workdir=tmp_path / "b", log_every=10)
  state0, tx = _init()
  got, hist = loop.train(state0, step_fn=_make_step_fn(tx), num_steps=40, workdir=tmp_path / "b", log_every=10)
  for a, b in zip(_leaves(ref), _leaves(got)):
    np.testing.assert_array_equal(a, b)
  assert [r["step"] for r in hist] == [10, 20, 30, 40]
  # Rerunning a finished run does no work and returns the same state.
  state0, tx = _init()
  again, _ = loop.train(state0, step_fn=_make_step_fn(tx, fail_at=0), num_steps=40,
                        workdir=tmp_path / "b", log_every=10)
  for a, b in zip(_leaves(got), _leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path):
  state0, tx = _init()
  with pytest.raises(metrics.NonFiniteError, match="step 40"):
    loop.train(state0, step_fn=_make_step_fn(tx, nan_at=30), num_steps=60, workdir=tmp_path,
               log_every=10, checkpoint_every=20)
  ck = checkpoint.Checkpointer(tmp_path / "checkpoints")
  assert ck.all_steps() == [20]
  assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == [10, 20, 30]


def test_interrupt_saves_last_completed_chunk(tmp_path):
  state0, tx = _init()
  with pytest.raises(KeyboardInterrupt):
    loop.train(state0, step_fn=_make_step_fn(tx, interrupt_at=30), num_steps=60, workdir=tmp_path,
               log_every=10, checkpoint_every=60)
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 30


def test_eval_schedule_and_validation(tmp_path):
  state0, tx = _init()
  calls = []
  _, hist = loop.train(state0, step_fn=_make_step_fn(tx), num_steps=50, workdir=tmp_path, log_every=10,
                       eval_every=20, eval_fn=lambda s, step: calls.append(step) or {"val": 1.0})
  assert calls == [20, 40, 50]
  assert [("val" in r) for r in hist] == [False, True, False, True, True]
  for kwargs, msg in [({"log_every": 0}, "log_every"), ({"checkpoint_every": 15}, "multiple"),
                      ({"eval_every": 5}, "multiple"), ({"num_steps": -1}, "num_steps")]:
    args = {"num_steps": 10, "log_every": 10, **kwargs}
    with pytest.raises(ValueError, match=msg):
      loop.train(state0, step_fn=_make_step_fn(tx), workdir=tmp_path / "v", **args)


# ---------------------------------------------------------------------------
# Interrupts at every point of a chunk: the checkpoint label matches its contents.

STEPS, LOG, CKPT = 60, 10, 20


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run; its state after every chunk and its history."""
  wd = tmp_path_factory.mktemp("ref")
  state0, tx = _init()
  final, hist = loop.train(state0, step_fn=_make_step_fn(tx), num_steps=STEPS, workdir=wd,
                           log_every=LOG, checkpoint_every=LOG, max_to_keep=100)
  ck = checkpoint.Checkpointer(wd / "checkpoints")
  states = {s: _leaves(ck.restore(_init()[0], step=s)[0]) for s in ck.all_steps()}
  ck.close()
  return states, hist, _leaves(final)


def _assert_checkpoints_match(workdir, states):
  ck = checkpoint.Checkpointer(workdir / "checkpoints")
  steps = ck.all_steps()
  assert steps
  for s in steps:
    for a, b in zip(_leaves(ck.restore(_init()[0], step=s)[0]), states[s]):
      np.testing.assert_array_equal(a, b, err_msg=f"checkpoint {s} holds another step's state")
  ck.close()
  # The metrics file holds the record of every checkpointed chunk, and no torn line (records
  # past the checkpoint belong to lost work and are dropped on resume).
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  logged = [json.loads(x)["step"] for x in lines]
  assert [s for s in logged if s <= steps[-1]] == list(range(LOG, steps[-1] + 1, LOG))
  return steps[-1]


def _method(wrapper):
  return lambda self, *args, **kwargs: wrapper(self, *args, **kwargs)


class _Interrupt:
  """Raises KeyboardInterrupt from a wrapped function on its ``at``-th call (1-based)."""

  def __init__(self, fn, at, before=True, side_effect=None):
    self.fn, self.at, self.before, self.calls, self.side_effect = fn, at, before, 0, side_effect

  def __call__(self, *args, **kwargs):
    self.calls += 1
    if self.calls == self.at and self.before:
      if self.side_effect:
        self.side_effect(*args, **kwargs)
      raise KeyboardInterrupt
    out = self.fn(*args, **kwargs)
    if self.calls == self.at:
      raise KeyboardInterrupt
    return out


def _torn_line(self, record):
  with open(self.jsonl_path, "a") as f:  # half a record, then the interrupt
    f.write(json.dumps(record)[:7])


@pytest.mark.parametrize("point", ["compute", "device_get", "metrics", "checkpoint_before",
                                   "checkpoint_after", "checkpoint_twice"])
def test_interrupt_at_any_point_keeps_labels_and_resumes_bitwise(tmp_path, monkeypatch, reference,
                                                                  point):
  states, ref_hist, ref_final = reference
  state0, tx = _init()
  step_fn = _make_step_fn(tx)
  if point == "compute":  # inside the step function of the chunk 30 -> 40
    step_fn = _Interrupt(step_fn, at=4, before=False)
  elif point == "device_get":  # waiting for the metrics of chunk 30 -> 40, state already computed
    get = _Interrupt(jax.device_get, at=4)
    monkeypatch.setattr(jax, "device_get", lambda x: get(x) if isinstance(x, dict) else get.fn(x))
  elif point == "metrics":  # writing the record of step 40
    monkeypatch.setattr(metrics.MetricWriter, "append",
                        _method(_Interrupt(metrics.MetricWriter.append, at=4, side_effect=_torn_line)))
  elif point == "checkpoint_before":  # entering the save of step 40
    monkeypatch.setattr(checkpoint.Checkpointer, "save",
                        _method(_Interrupt(checkpoint.Checkpointer.save, at=2)))
  elif point == "checkpoint_after":  # orbax has written step 40 but the save has not returned
    monkeypatch.setattr(checkpoint.Checkpointer, "save",
                        _method(_Interrupt(checkpoint.Checkpointer.save, at=2, before=False)))
  elif point == "checkpoint_twice":  # a second Ctrl-C hits the save made on the way out
    save = checkpoint.Checkpointer.save
    calls = []

    def flaky_save(self, step, state):
      calls.append(step)
      if step >= 40:
        raise KeyboardInterrupt
      return save(self, step, state)
    monkeypatch.setattr(checkpoint.Checkpointer, "save", flaky_save)
    step_fn = _Interrupt(step_fn, at=5, before=False)
  with pytest.raises(KeyboardInterrupt):
    loop.train(state0, step_fn=step_fn, num_steps=STEPS, workdir=tmp_path, log_every=LOG,
               checkpoint_every=CKPT)
  monkeypatch.undo()
  latest = _assert_checkpoints_match(tmp_path, states)
  assert latest == (20 if point == "checkpoint_twice" else 30 if point in ("compute", "device_get")
                    else 40)
  state0, tx = _init()
  got, hist = loop.train(state0, step_fn=_make_step_fn(tx), num_steps=STEPS, workdir=tmp_path,
                         log_every=LOG, checkpoint_every=CKPT)
  for a, b in zip(_leaves(got), ref_final):
    np.testing.assert_array_equal(a, b)
  assert [r["loss"] for r in hist] == [r["loss"] for r in ref_hist]


# ---------------------------------------------------------------------------
# The NaN guard checks the new state and the eval values, not only the training loss.


def _nan_params(s):
  return {**s, "params": {**s["params"], "w": s["params"]["w"].at[0].set(jnp.nan)}}


def _inf_opt_state(s):
  return {**s, "opt": jax.tree.map(lambda x: x + jnp.inf if x.dtype == jnp.float32 else x, s["opt"])}


@pytest.mark.parametrize("poison, leaf", [(_nan_params, "['params']['w']"), (_inf_opt_state, "['opt']")])
def test_nonfinite_state_with_finite_loss_stops_and_keeps_a_finite_checkpoint(tmp_path, poison, leaf):
  state0, tx = _init()
  with pytest.raises(metrics.NonFiniteError, match=r"(?s)after step 50.*state leaves.*" + __import__("re").escape(leaf)) as e:
    loop.train(state0, step_fn=_make_step_fn(tx, poison_at=(40, poison)), num_steps=STEPS,
               workdir=tmp_path, log_every=LOG, checkpoint_every=CKPT)
  assert e.value.last_good == 40 and "step 40" in str(e.value)
  ck = checkpoint.Checkpointer(tmp_path / "checkpoints")
  assert ck.all_steps() == [20, 40]
  for s in ck.all_steps():
    for x in _leaves(ck.restore(_init()[0], step=s)[0]):
      assert np.all(np.isfinite(x)), f"checkpoint {s} has a non-finite leaf"
  assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == [10, 20, 30, 40]


def test_nonfinite_eval_value_stops_before_saving(tmp_path):
  state0, tx = _init()
  eval_fn = lambda s, step: {"val_loss": jnp.nan if step == 40 else 1.0}
  with pytest.raises(metrics.NonFiniteError, match="val_loss"):
    loop.train(state0, step_fn=_make_step_fn(tx), num_steps=STEPS, workdir=tmp_path, log_every=LOG,
               checkpoint_every=CKPT, eval_fn=eval_fn, eval_every=CKPT)
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps() == [20]


def test_nonfinite_state_check_is_one_small_transfer():
  tree = {"a": jnp.ones((3, 3)), "k": jax.random.key(0), "i": jnp.arange(3),
          "c": jnp.array([1 + 1j, jnp.nan], jnp.complex64), "b": jnp.array([1.0, jnp.inf], jnp.bfloat16)}
  assert metrics.nonfinite_leaves(tree) == ["['b']", "['c']"]
  assert metrics.nonfinite_leaves({"i": jnp.arange(2)}) == []


# ---------------------------------------------------------------------------
# Progress: one bar and one ETA over several loops; log lines during long chunks.


def test_shared_progress_counts_every_loop_and_resumed_work(tmp_path, caplog):
  state0, tx = _init()
  loop.train(state0, step_fn=_make_step_fn(tx), num_steps=20, workdir=tmp_path / "a", log_every=10)
  with metrics.RunProgress(20 + 40, desc="run", log_every_s=0.05, disable=True) as bar:
    with caplog.at_level(logging.INFO):
      state0, tx = _init()
      loop.train(state0, step_fn=_make_step_fn(tx), num_steps=20, workdir=tmp_path / "a",
                 log_every=10, progress=bar)
      assert bar.done == 20 and bar.computed == 0 and bar.eta() is None  # resumed: skipped
      loop.train(state0, step_fn=_make_step_fn(tx, sleep=0.15), num_steps=20, workdir=tmp_path / "b",
                 log_every=10, progress=bar, progress_weight=2.0)
    assert bar.done == 60 and bar.computed == 40 and bar.eta() == 0.0
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
  assert lines and all("/60 step" in x and "ETA" in x for x in lines)
  assert any("phase train" in x for x in lines)  # named while the chunk was running
