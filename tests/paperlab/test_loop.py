"""Tests for paperlab.loop: exact resume, NaN guard, interruption, validation."""

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


def _init():
  params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
  tx = optax.adam(0.3)
  return {"params": params, "opt": tx.init(params), "rng": jax.random.key(1)}, tx


def _make_step_fn(tx, fail_at=None, nan_at=None, interrupt_at=None):
  @jax.jit
  def chunk(state, idx):
    def body(s, ix):
      rng, sub = jax.random.split(s["rng"])
      noise = 1e-3 * jax.random.normal(sub, (B,))
      def loss_fn(p):
        return jnp.mean((X[ix] @ p["w"] + p["b"] - Y[ix] - noise) ** 2)
      loss, g = jax.value_and_grad(loss_fn)(s["params"])
      u, opt = tx.update(g, s["opt"], s["params"])
      return {"params": optax.apply_updates(s["params"], u), "opt": opt, "rng": rng}, loss
    state, losses = jax.lax.scan(body, state, idx)
    return state, {"loss": losses.mean()}

  def step_fn(state, step, n):
    if step == fail_at:
      raise RuntimeError("simulated crash")
    if step == interrupt_at:
      raise KeyboardInterrupt
    state, m = chunk(state, jnp.asarray(data.batch_indices(N, B, SEED, step, n)))
    if step == nan_at:
      m = {"loss": jnp.nan}
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
