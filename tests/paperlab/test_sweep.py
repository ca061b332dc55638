"""Tests of paperlab.sweep: members equal single runs, sharding, per-member freeze, resume, grids."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import sweep

DATA_X = np.asarray(jax.random.normal(jax.random.key(99), (64, 16)), np.float32)
DATA_Y = np.asarray(jax.random.randint(jax.random.key(98), (64,), 0, 10))
BATCH = 8


def _sgd(learning_rate, weight_decay):
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=0.9))


# SGD with momentum: Adam's g / sqrt(v) magnifies the last-bit differences of a batched matmul
# on near-zero gradients beyond 1e-6; the bitwise tests hold for any transform.
TX = sweep.injectable(_sgd, learning_rate=1e-2, weight_decay=0.0)


def init_fn(key, hp):
  k1, k2, k3 = jax.random.split(key, 3)
  params = {"w1": jax.random.normal(k1, (16, 32)) / 4, "b1": jnp.zeros(32),
            "w2": jax.random.normal(k2, (32, 10)) / 6, "b2": jnp.zeros(10)}
  opt_state = sweep.set_hyperparams(TX.init(params), learning_rate=hp["learning_rate"],
                                    weight_decay=hp.get("weight_decay", 0.0))
  return {"params": params, "opt_state": opt_state, "key": k3}


def loss_fn(p, x, y):
  h = jax.nn.relu(x @ p["w1"] + p["b1"])
  logits = h @ p["w2"] + p["b2"]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def step_fn(state, hp, step, data):
  x, y = data
  i = (step * BATCH) % x.shape[0]
  xb, yb = jax.lax.dynamic_slice_in_dim(x, i, BATCH), jax.lax.dynamic_slice_in_dim(y, i, BATCH)
  key, sub = jax.random.split(state["key"])
  xb = xb + 0.01 * jax.random.normal(sub, xb.shape)  # randomness carried in the state
  loss, g = jax.value_and_grad(loss_fn)(state["params"], xb, yb)
  updates, opt_state = TX.update(g, state["opt_state"], state["params"])
  return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
          "key": key}, {"loss": loss}


_single_init = jax.jit(init_fn)


@jax.jit(static_argnums=3)
def _single_steps(s, hp, data, n):
  return jax.lax.scan(lambda s, t: step_fn(s, hp, t, data), s, jnp.arange(n, dtype=jnp.int32))


def single_run(seed, values, n):
  """The ordinary single run of one config: jitted init, then a lax.scan of jitted steps."""
  hp = {"seed": jnp.int32(seed), **{k: jnp.float32(v) for k, v in values.items()}}
  state = _single_init(jax.random.key(seed), hp)
  state, losses = _single_steps(state, hp, (DATA_X, DATA_Y), n)
  return state, losses["loss"].mean()


GRID = sweep.Grid.product(seeds=(0, 1), learning_rate=(1e-2, 3e-2, 1e-1))


def _engine(chunk_size, devices=None, grid=GRID):
  return sweep.Sweep(grid, init_fn, step_fn, data=(DATA_X, DATA_Y), chunk_size=chunk_size,
                     devices=devices)


def _leaves(tree):
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
          for x in jax.tree.leaves(tree)]


def _assert_same(a, b, bitwise=True):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    if bitwise:
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_grid_members_ids_and_zip():
  g = sweep.Grid.zipped(seeds=(3, 4), a=(1, 2), b=(0.5, 0.25)) * sweep.Grid.product(c=(7, 8))
  ms = g.members()
  assert len(g) == len(ms) == 8 and ms[0].id == "m000"
  assert ms[0].values == {"a": 1.0, "b": 0.5, "c": 7.0} and ms[0].seed == 3
  assert ms[1].seed == 4 and ms[2].values["c"] == 8.0 and ms[4].values["a"] == 2.0
  assert g.to_dict({"a": 0, "seed": 0, "z": 1})["members"][1]["config"] == {
      "a": 1.0, "b": 0.5, "c": 7.0, "seed": 4, "z": 1}


@pytest.mark.parametrize("bad, match", [
    (lambda: sweep.Grid.product(lr=()), "empty"),
    (lambda: sweep.Grid.product(lr=("x",)), "not a number"),
    (lambda: sweep.Grid.zipped(a=(1, 2), b=(1,)), "differ in length"),
    (lambda: sweep.Grid(seeds=()), "at least one seed"),
    (lambda: sweep.Grid.product(seeds=(1, 1)), "distinct")])
def test_bad_grids_raise(bad, match):
  with pytest.raises(ValueError, match=match):
    bad()


def test_chunk_size_one_is_bitwise_the_single_run():
  engine = _engine(1, devices=1)
  stacked, metrics = engine.run(engine.init(), 0, 12)
  for m in engine.members:
    ref, loss = single_run(m.seed, m.values, 12)
    _assert_same(engine.unstack(stacked["state"], m.index), ref)
    assert float(metrics["loss"][m.index]) == float(loss)


def test_chunked_member_matches_single_run():
  engine = _engine(4, devices=1)
  assert engine.padded == 8
  stacked, _ = engine.run(engine.init(), 0, 4)
  for m in engine.members:
    ref, _ = single_run(m.seed, m.values, 4)
    _assert_same(engine.unstack(stacked["state"], m.index), ref, bitwise=False)


def test_sharded_equals_unsharded():
  assert jax.device_count() == 8
  results = []
  for devices in (jax.devices(), 1):  # an explicit list shards over all 8 simulated devices
    engine = _engine(2, devices=devices)
    stacked = engine.init()
    if devices != 1:
      assert stacked["state"]["params"]["w1"].sharding.spec == jax.sharding.PartitionSpec("sweep")
      assert len(stacked["state"]["key"].sharding.device_set) == 8
    stacked, _ = engine.run(stacked, 0, 6)
    results.append(jax.tree.map(lambda x: x[:engine.num_members], stacked))
  _assert_same(*results)


def test_nan_member_is_frozen_and_others_unaffected():
  grid = sweep.Grid.product(seeds=(0,), learning_rate=(1e-2, 1e38, 3e-2))
  engine = _engine(4, devices=1, grid=grid)
  clean = _engine(4, devices=1, grid=sweep.Grid.product(seeds=(0,), learning_rate=(1e-2, 1e-2, 3e-2)))
  a, ma = engine.run(engine.init(), 0, 10)
  b, _ = clean.run(clean.init(), 0, 10)
  failed = engine.failures(a)
  assert list(failed) == ["m001"] and 0 <= failed["m001"] < 10
  assert not bool(a["alive"][1]) and bool(a["alive"][0]) and np.isnan(float(ma["loss"][1]))
  for i in (0, 2):
    _assert_same(engine.unstack(a["state"], i), clean.unstack(b["state"], i))
  assert all(np.all(np.isfinite(x)) for x in _leaves(engine.unstack(a["state"], 1)["params"]))


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
  engine = _engine(2)
  full, final, history = engine.train(tmp_path / "full", num_steps=12, log_every=4, checkpoint_every=4)
  assert len(history) == 3 and "loss/m000" in history[-1] and history[-1]["alive"] == 6
  part = tmp_path / "part"
  engine.train(part, num_steps=8, log_every=4, checkpoint_every=4)
  resumed, final2, history2 = _engine(2).train(part, num_steps=12, log_every=4, checkpoint_every=4)
  _assert_same(full, resumed)
  assert history == history2 or [r["loss"] for r in history] == [r["loss"] for r in history2]
  rows = [json.loads(line) for line in (part / "members.jsonl").read_text().splitlines()]
  assert rows[0]["member"] == "m000" and "learning_rate" in rows[0] and "seed" in rows[0]
  assert json.loads((part / "sweep.json").read_text())["members"][5]["id"] == "m005"


def test_aggregate_mean_std_ci():
  grid = sweep.Grid.product(seeds=(0, 1, 2), x=(1.0, 2.0))
  members = grid.members()
  final = {"loss": np.array([1.0, 2.0, 3.0, 5.0, 5.0, np.nan])}
  pts = sweep.aggregate(members, final, failed={"m005": 3})
  assert pts[0]["loss"]["mean"] == 2.0 and pts[0]["loss"]["std"] == 1.0 and pts[0]["loss"]["n"] == 3
  assert abs(pts[0]["loss"]["ci95"] - 4.302652729911275 / 3 ** 0.5) < 1e-9
  assert pts[1]["loss"]["n"] == 2 and pts[1]["failed"] == {"m005": 3}
  assert "2 +- 1 (n=3)" in sweep.table(pts, ["x"])


def test_default_chunk_size():
  assert sweep.default_chunk_size(10_000, 256, "cpu") == 16
  assert sweep.default_chunk_size(2_500_000, 16, "cpu") == 1
  assert sweep.default_chunk_size(2_500_000, 256, "gpu") == 256


def test_set_hyperparams_unknown_key():
  with pytest.raises(ValueError, match="no injected hyperparameter"):
    sweep.set_hyperparams(TX.init({"w": jnp.zeros(2)}), lr=1.0)


def test_readme_sweeps_example_runs(tmp_path, capsys):
  import pathlib  # pylint: disable=g-import-not-at-top
  text = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
  block = text.split("On your own Optax chain (this runs as is):")[1].split("```python\n")[1].split("```")[0]
  exec(compile(block.replace('"/tmp/my_sweep"', repr(str(tmp_path / "s"))), "README", "exec"), {})  # pylint: disable=exec-used
  out = capsys.readouterr().out
  assert "| 0.1 | 0 |" in out and "(n=4)" in out


def test_default_devices_at_most_one_per_core():
  n = min(jax.device_count(), sweep.usable_cores())
  assert len(sweep.default_devices()) == n
  assert _engine(2).mesh.devices.size == n
  assert _engine(2, devices=jax.devices()).mesh.devices.size == 8  # explicit: as asked
  with pytest.raises(ValueError, match="only 8 devices"):
    _engine(2, devices=9)


def test_chunk_program_has_no_cross_device_collective():
  engine = _engine(2, devices=jax.devices())
  stacked = engine.init()
  engine.run(stacked, 0, 3)
  hlo = engine._run_jit[3].lower(stacked, engine.hp, jnp.int32(0), engine.data).compile().as_text()
  for op in ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter"):
    assert op not in hlo, op
  out = sweep.evaluate(lambda hp: hp["learning_rate"] * 2, GRID, devices=jax.devices())
  assert isinstance(out, np.ndarray) and out.shape == (len(GRID),)  # padding dropped on the host


def test_wait_raises_on_a_stalled_program():
  import threading  # pylint: disable=g-import-not-at-top
  release = threading.Event()

  def blocked(x):
    release.wait(20)
    return x

  timer = threading.Timer(10, release.set)  # a broken guard returns only after this
  timer.start()
  try:
    # A sharded program runs asynchronously; its host callback waits on the event, idle.
    mesh = sweep._sweep_mesh(2)
    call = jax.jit(sweep.member_map(
        lambda h: jax.pure_callback(blocked, jax.ShapeDtypeStruct((), jnp.float32), h), mesh, 1, 1))
    out = call(jnp.ones(2))
    with pytest.raises(sweep.SweepStalled, match="made no progress"):
      sweep.wait(out, stall_s=1.0)
  finally:
    release.set()
    timer.cancel()
  np.testing.assert_array_equal(sweep.wait(out), [1.0, 1.0])


def _counter_init(key, hp):
  del key
  return {"w": jnp.zeros(3) + hp["seed"]}


def _counter_step(state, hp, step, data):
  """w <- 0.5 w + 1; loss NaN from step ``nan_loss_at`` on; w NaN after step ``nan_state_at``."""
  del data
  w = 0.5 * state["w"] + 1.0
  loss = jnp.where(step >= hp["nan_loss_at"], jnp.nan, jnp.sum(w))
  w = jnp.where(step == hp["nan_state_at"], jnp.nan, w)
  return {"w": w}, {"loss": loss}


def test_frozen_member_keeps_chunk_start_state_and_reports_exact_step():
  never = 1000.0
  grid = sweep.Grid.zipped(nan_loss_at=(never, 5, 7, never), nan_state_at=(never, never, never, 11))
  engine = sweep.Sweep(grid, _counter_init, _counter_step, chunk_size=2, devices=1)
  stacked = engine.init()
  states = [stacked]
  for start in (0, 4, 8):  # chunks of 4 steps: 0..3, 4..7, 8..11
    stacked, metrics = engine.run(stacked, start, 4)
    states.append(stacked)
  # loss NaN at 0-based step 5 (the 6th step) and 7 (the 8th); only the state after step 11.
  assert engine.failures(stacked) == {"m001": 6, "m002": 8, "m003": 12}
  for member, chunk_start in ((1, 1), (2, 1), (3, 2)):  # index into states: after 4 or 8 steps
    kept = engine.unstack(states[chunk_start]["state"], member)
    for later in states[chunk_start + 1:]:
      _assert_same(engine.unstack(later["state"], member), kept)
  assert list(np.asarray(states[-1]["alive"])[:4]) == [True, False, False, False]
  assert np.isnan(float(metrics["loss"][1])) and np.isfinite(float(metrics["loss"][0]))
  np.testing.assert_allclose(np.asarray(stacked["state"]["w"][0]), 2 - 2 * 0.5 ** 12)


def test_train_goes_on_past_a_frozen_member_and_stops_when_all_are(tmp_path):
  grid = sweep.Grid.zipped(nan_loss_at=(1000.0, 5), nan_state_at=(1000.0, 1000.0))
  engine = sweep.Sweep(grid, _counter_init, _counter_step, chunk_size=2, devices=1)
  state, final, history = engine.train(tmp_path / "one", num_steps=12, log_every=4)
  assert engine.failures(state) == {"m001": 6} and history[-1]["alive"] == 1
  assert np.isfinite(final["loss"][0]) and np.isnan(final["loss"][1])
  both = sweep.Sweep(sweep.Grid.zipped(nan_loss_at=(3, 5), nan_state_at=(1000.0, 1000.0)),
                     _counter_init, _counter_step, chunk_size=2, devices=1)
  with pytest.raises(FloatingPointError, match="every member of sweep is frozen"):
    both.train(tmp_path / "all", num_steps=12, log_every=4)


def test_apply_with_shared_data_is_each_members_function_compiled_once():
  engine = _engine(2, devices=1)
  stacked = engine.init()

  def test_loss(state, hp, data):
    return {"loss": loss_fn(state["params"], *data), "lr": hp["learning_rate"]}

  out = engine.apply(test_loss, stacked, (DATA_X, DATA_Y))
  for m in engine.members:
    ref = loss_fn(engine.unstack(stacked["state"], m.index)["params"], DATA_X, DATA_Y)
    np.testing.assert_allclose(out["loss"][m.index], ref, rtol=1e-6)
    assert float(out["lr"][m.index]) == np.float32(m.values["learning_rate"])
  first = engine._apply_jit[(test_loss, False)]  # pylint: disable=protected-access
  engine.apply(test_loss, stacked, (DATA_X[::-1], DATA_Y[::-1]))  # other values, same program
  assert len(engine._apply_jit) == 1 and engine._apply_jit[(test_loss, False)] is first  # pylint: disable=protected-access
