"""Tests for fed.fedast: event clock, buffers, batching, allocation, determinism, resume."""

import jax
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from paperlab import checkpoint
from fed import fedast

D, K, STEPS, B = 6, 3, 2, 4


def _task(num_clients, name="lin", seed=0, **kw):
  rng = np.random.default_rng(seed)
  w_true = rng.normal(size=(D, K))
  x = rng.normal(size=(num_clients, STEPS, B, D)).astype(np.float32)
  y = np.argmax(x @ w_true, -1).astype(np.int32)
  xt = rng.normal(size=(200, D)).astype(np.float32)
  yt = np.argmax(xt @ w_true, -1)

  def loss_fn(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(xb @ p["w"] + p["b"], yb)

  def eval_fn(p):
    return float(np.mean(np.argmax(xt @ np.asarray(p["w"]) + np.asarray(p["b"]), -1) == yt))

  args = dict(name=name, init_params={"w": np.zeros((D, K), np.float32), "b": np.zeros(K, np.float32)},
              loss_fn=loss_fn, eval_fn=eval_fn, x=x, y=y, target=0.9, local_lr=0.5, global_lr=1.0,
              exp_mean=1.0, shift=0.5)
  args.update(kw)
  return fedast.Task(**args)


def _cfg(**kw):
  args = dict(num_clients=20, max_busy_clients=10, total_jobs=8, ratio=2, duration_scale=1.0, eval_every=1,
              max_time=60.0, seed=0)
  args.update(kw)
  return fedast.RuntimeConfig(**args)


def test_event_clock_and_staleness_on_a_hand_built_case():
  task = _task(2, exp_mean=0.0, shift=1.0, target=2.0)  # every job lasts exactly 1; never done
  sim = fedast.Simulation([task], _cfg(num_clients=2, max_busy_clients=2, total_jobs=3,
                                       speed_factors=(1.0,), speed_probs=(1.0,), method="fedast_nobuffer"))
  sim.budget = [0]  # no automatic top-ups: only the jobs dispatched below
  for client in (0, 0, 1):
    sim._dispatch(0, client=client)  # pylint: disable=protected-access
  assert [e[0] for e in sorted(sim.heap)] == [1.0, 1.0, 2.0]  # client 0 runs its two jobs back to back
  assert sim.jobs_on.tolist() == [2, 1]
  clocks = []
  for _ in range(3):
    sim.step()
    clocks.append(sim.clock)
  assert clocks == [1.0, 1.0, 2.0]
  assert [d[2] for d in sim.trace["deliveries"]] == [0, 1, 0]  # ties broken by dispatch order
  assert sim.trace["staleness"][0] == [0, 1, 2]  # b = 1: one version per delivery
  assert sim.version == [3] and sim.jobs_on.tolist() == [0, 0]


def test_buffer_of_one_without_staleness_is_sequential_sgd():
  task = _task(20)
  sim = fedast.Simulation([task], _cfg(method="fedast_nobuffer", total_jobs=1, max_time=30.0))
  sim.run()
  deliveries = sim.trace["deliveries"]
  assert len(deliveries) > 5 and all(s == 0 for s in sim.trace["staleness"][0])
  trainer = fedast.JobTrainer(task)
  params = task.init_params
  for _, _, client, _ in deliveries:
    params = jax.tree.map(np.add, params, trainer.single(params, client))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(sim.params[0])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_batched_jobs_equal_job_by_job(mode):
  task = _task(20)
  trainer = fedast.JobTrainer(task, mode=mode)
  rng = np.random.default_rng(1)
  versions = [{"w": rng.normal(size=(D, K)).astype(np.float32), "b": rng.normal(size=K).astype(np.float32)}
              for _ in range(3)]
  for n in (1, 5, 9, 70):  # exercises the 8- and 64-job chunks and padding
    picks = rng.integers(0, 3, n)
    clients = rng.integers(0, 20, n).tolist()
    batched = trainer.batched([versions[i] for i in picks], clients)
    for j in range(n):
      single = trainer.single(versions[picks[j]], clients[j])
      for a, b in zip(jax.tree.leaves(batched[j]), jax.tree.leaves(single)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batched_and_job_by_job_simulations_give_the_same_trace():
  tasks = [_task(20, "a"), _task(20, "b", seed=1)]
  runs = []
  for batched in (True, False):
    sim = fedast.Simulation(tasks, _cfg(executor="auto" if batched else "single", max_time=20.0))
    sim.run()
    runs.append(sim)
  assert runs[0].trace["deliveries"] == runs[1].trace["deliveries"]
  np.testing.assert_allclose([e[3] for e in runs[0].trace["eval"]], [e[3] for e in runs[1].trace["eval"]],
                             atol=1e-6)
  assert runs[0].computed_batches < runs[0].trace["jobs_done"] / 2  # really batched


@settings(max_examples=50, deadline=None)
@given(scores=st.lists(st.floats(0, 10), min_size=1, max_size=5), total=st.integers(1, 400),
       block=st.integers(1, 40), mask=st.lists(st.booleans(), min_size=5, max_size=5))
def test_allocation_keeps_the_total(scores, total, block, mask):
  active = mask[:len(scores)]
  out = fedast.allocate_blocks(scores, active, total, block)
  if any(active):
    assert sum(out) == total
    if total // block >= sum(active):
      assert all(o >= block for o, a in zip(out, active) if a)
  assert all(o == 0 for o, a in zip(out, active) if not a)


def test_reallocation_and_capacity_invariants():
  tasks = [_task(30, "a", target=0.8), _task(30, "b", seed=1, target=0.97, shift=1.5)]
  cfg = _cfg(num_clients=30, max_busy_clients=12, max_jobs_per_client=2, total_jobs=16, ratio=4, window=3,
             max_time=80.0)
  sim = fedast.Simulation(tasks, cfg)
  seen = {"busy": 0, "per_client": 0}

  def check(s):
    seen["busy"] = max(seen["busy"], int(np.count_nonzero(s.jobs_on)))
    seen["per_client"] = max(seen["per_client"], int(s.jobs_on.max()))
    assert sum(s.active) <= cfg.total_jobs
    for i in range(2):  # stored versions: exactly the current one and those jobs in flight started from
      if s.done_time[i] is None:
        assert set(s.versions[i]) == {e[4] for e in s.heap if e[2] == i} | {s.version[i]}

  sim.run(callback=check)
  assert seen["busy"] <= cfg.max_busy_clients and seen["per_client"] <= cfg.max_jobs_per_client
  assert len(sim.trace["alloc"]) >= 2  # reallocated (or released) at least once
  for row in sim.trace["alloc"]:
    assert sum(row[1:]) == cfg.total_jobs
  assert sim.done_time[0] is not None  # task a reached its target


def test_same_seed_same_trace_and_checkpoint_resume_is_identical(tmp_path):
  tasks = [_task(20, "a"), _task(20, "b", seed=1)]
  full = fedast.Simulation(tasks, _cfg())
  full.run()
  again = fedast.Simulation(tasks, _cfg())
  again.run()
  assert again.trace == full.trace
  other = fedast.Simulation(tasks, _cfg(seed=1))
  other.run()
  assert other.trace["deliveries"] != full.trace["deliveries"]

  part = fedast.Simulation(tasks, _cfg())
  part.run(max_events=40)
  arrays, meta = part.state_dict()
  checkpoint.save_flat(tmp_path, 40, arrays, meta)
  _, arrays, meta = checkpoint.load_flat(tmp_path)
  resumed = fedast.Simulation(tasks, _cfg())
  resumed.load_state_dict(arrays, meta)
  resumed.run()
  assert resumed.trace == full.trace
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(a, b)


def test_sync_rounds():
  tasks = [_task(20, "a"), _task(20, "b", seed=1, shift=2.0)]
  sim = fedast.Simulation(tasks, _cfg(method="sync", sync_keep=0.6, max_time=30.0))
  sim.run(max_events=3)
  assert sim.round == 3 and sim.version == [3, 3]
  assert sim.trace["jobs_done"] == 3 * 2 * 3  # 10 busy clients: 5 per task, 3 of them kept
  seq = fedast.Simulation(tasks, _cfg(method="sequential", max_time=1e9))
  seq.run()
  assert seq.done_time[0] is not None and seq.done_time[1] is not None
  assert seq.done_time[0] < seq.done_time[1]  # one task after the other


def test_staleness_weight_and_validation():
  assert fedast.staleness_weight(3) == 1.0
  assert fedast.staleness_weight(3, "polynomial", 0.5) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="method"):
    fedast.Simulation([_task(20)], _cfg(method="fedbuff"))
  with pytest.raises(ValueError, match="data for 20 clients"):
    fedast.Simulation([_task(20)], _cfg(num_clients=30))
  with pytest.raises(ValueError, match="unique"):
    fedast.Simulation([_task(20), _task(20)], _cfg())
