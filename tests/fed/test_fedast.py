"""Tests for the FedAST runtime: event clock, buffers, staleness, reallocation, release, Sync-ST, NaN guard, resume."""

import jax
import numpy as np
import optax
import pytest

from paperlab import checkpoint, metrics
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


def _unit_jobs(n_clients, **kw):
  """A runtime whose jobs all last exactly 1 (one speed, no exponential part), no automatic top-ups."""
  task = _task(n_clients, exp_mean=0.0, shift=1.0, target=2.0, **kw)
  return task, dict(num_clients=n_clients, max_busy_clients=n_clients, speed_factors=(1.0,), speed_probs=(1.0,))


def _hand_run(sim, clients):
  sim.budget = [0] * len(sim.tasks)  # only the jobs dispatched here
  for c in clients:
    sim._dispatch(0, client=c)  # pylint: disable=protected-access
  for _ in clients:
    sim.step()


def test_full_buffer_moves_the_model_by_the_mean_of_its_updates():
  task, pool = _unit_jobs(3, global_lr=0.7)
  sim = fedast.Simulation([task], _cfg(method="fedast_static", static_buffer=3, total_jobs=3, **pool))
  _hand_run(sim, [0, 1, 2])  # three jobs from version 0, delivered at time 1
  assert sim.version == [1]  # one server step for three updates
  trainer = fedast.JobTrainer(task)
  deltas = [trainer.single(task.init_params, c) for c in range(3)]
  for key in ("w", "b"):
    ref = task.init_params[key] + 0.7 / 3 * sum(d[key] for d in deltas)
    np.testing.assert_allclose(sim.params[0][key], ref, rtol=1e-5, atol=1e-7)


def test_dynamic_buffer_follows_the_budget():
  task, pool = _unit_jobs(20)
  sim = fedast.Simulation([task], _cfg(method="fedast", total_jobs=8, ratio=2, **pool))  # b = ceil(8 / 2) = 4
  sim.run(max_events=12)
  assert sim.budget == [8] and sim.version == [3]
  sim = fedast.Simulation([task], _cfg(method="fedast", total_jobs=8, ratio=8, **pool))  # b = 1
  sim.run(max_events=12)
  assert sim.version == [12]


def test_stale_updates_are_weighted():
  task, pool = _unit_jobs(3)
  sim = fedast.Simulation([task], _cfg(method="fedast_nobuffer", total_jobs=3, staleness="polynomial",
                                       staleness_exponent=1.0, **pool))
  _hand_run(sim, [0, 1, 2])  # all from version 0: staleness 0, 1, 2, each applied alone (b = 1)
  assert sim.trace["staleness"][0] == [0, 1, 2]
  trainer = fedast.JobTrainer(task)
  deltas = [trainer.single(task.init_params, c) for c in range(3)]
  for key in ("w", "b"):
    ref = task.init_params[key] + sum(d[key] / (1 + s) for s, d in enumerate(deltas))
    np.testing.assert_allclose(sim.params[0][key], ref, rtol=1e-5, atol=1e-7)


def _noisy_task(num_clients, name, seed):
  """Clients with random labels: their updates disagree (large normalised spread)."""
  task = _task(num_clients, name, seed=seed, target=2.0)
  y = np.random.default_rng(seed + 10).integers(0, K, size=np.shape(task.y)).astype(np.int32)
  return fedast.Task(**{**task.__dict__, "y": y})


def test_reallocation_runs_and_follows_the_square_root_of_the_spread():
  tasks = [_task(30, "consistent", target=2.0), _noisy_task(30, "noisy", seed=1)]
  cfg = _cfg(num_clients=30, max_busy_clients=20, max_jobs_per_client=2, total_jobs=16, ratio=2, window=3,
             max_time=1e9)
  sim = fedast.Simulation(tasks, cfg)
  sim.run(max_events=200)
  assert sim.trace["realloc"], "no reallocation ran"
  for _, means, budget in sim.trace["realloc"]:
    assert budget == fedast.allocate_blocks(np.sqrt(means).tolist(), [True, True], 16, 2)
    assert sum(budget) == 16
  _, means, budget = sim.trace["realloc"][0]
  assert means[1] > 2 * means[0]  # the noisy task's updates spread more
  assert budget[1] > budget[0] and budget != [8, 8]  # so it gets the larger share
  ratio = np.sqrt(means[1] / means[0])
  assert abs(budget[1] / 16 - ratio / (1 + ratio)) <= 2 / 16  # sqrt(v) shares, up to one block


def test_finished_task_releases_its_jobs_and_budget():
  tasks = [_task(30, "a", target=0.8), _task(30, "b", seed=1, target=2.0)]
  cfg = _cfg(num_clients=30, max_busy_clients=12, max_jobs_per_client=2, total_jobs=16, ratio=4, window=3,
             max_time=80.0)
  sim = fedast.Simulation(tasks, cfg)
  seen = {"busy": 0, "per_client": 0, "after": []}

  def check(s):
    seen["busy"] = max(seen["busy"], int(np.count_nonzero(s.jobs_on)))
    seen["per_client"] = max(seen["per_client"], int(s.jobs_on.max()))
    assert sum(s.active) <= cfg.total_jobs
    assert s.jobs_on.tolist() == np.bincount([e.client for e in s.heap], minlength=30).tolist()
    for i in range(2):  # stored versions: exactly the current one and those jobs in flight started from
      if s.done_time[i] is None:
        assert set(s.versions[i]) == {e.version for e in s.heap if e.task == i} | {s.version[i]}
    if s.done_time[0] is not None:
      seen["after"].append((s.budget[:], sorted({e.task for e in s.heap}), s.active[0]))

  sim.run(callback=check)
  assert seen["busy"] <= cfg.max_busy_clients and seen["per_client"] <= cfg.max_jobs_per_client
  assert sim.done_time[0] is not None and seen["after"]
  for budget, tasks_in_flight, active in seen["after"]:
    assert budget == [0, 16] and tasks_in_flight in ([], [1]) and active == 0
  assert all(d[0] <= sim.done_time[0] for d in sim.trace["deliveries"] if d[1] == 0)
  assert sim.trace["alloc"][-1][1:] == [0, 16]


class _FixedPermutations:
  def __init__(self, perms):
    self.perms = list(perms)

  def permutation(self, n):
    return np.asarray(self.perms.pop(0))[:n]


def test_sync_round_keeps_the_first_c_and_stragglers_stay_busy():
  tasks = [_task(6, "a", target=2.0), _task(6, "b", seed=1, target=2.0)]
  sim = fedast.Simulation(tasks, _cfg(method="sync", num_clients=6, max_busy_clients=6, sync_first_c=2))
  sim._duration = lambda task, client: 1.0 + client  # pylint: disable=protected-access
  sim.rng = _FixedPermutations([[0, 5, 2, 1, 4, 3], [0, 5, 2, 1, 4, 3]])
  sim.step()
  # a: clients 0, 5, 2 finish at 1, 6, 3 -> keeps 0, 2; b: 1, 4, 3 finish at 2, 5, 4 -> keeps 1, 3
  assert sim.clock == 4.0 and sim.trace["jobs_done"] == 4 and sim.trace["jobs_started"] == 6
  assert sim.free_at.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # dropped jobs (clients 4, 5) still run
  sim.step()
  # a: 0 -> 4+1=5, 5 -> busy until 6, then 6 -> 12, 2 -> 4+3=7: keeps 5, 7; b: 1 -> 6, 4 -> 5+5=10, 3 -> 8: keeps 6, 8
  assert sim.clock == 8.0 and sim.version == [2, 2]
  frac = fedast.Simulation(tasks, _cfg(method="sync", num_clients=6, max_busy_clients=6, sync_rule="fraction",
                                       sync_keep=0.4))
  frac.step()
  assert frac.trace["jobs_done"] == 2  # round(0.4 x 3) = 1 per task


def test_sync_round_moves_each_task_by_the_mean_of_its_kept_updates():
  tasks = [_task(20, "a", global_lr=0.5), _task(20, "b", seed=1, shift=2.0)]
  sim = fedast.Simulation(tasks, _cfg(method="sync", sync_first_c=3, max_time=1e9))
  params = sim.params[0]
  sim._duration = lambda task, client: 1.0 + client  # pylint: disable=protected-access
  sim.rng = _FixedPermutations([list(range(20))])
  sim.step()  # 10 busy clients: task a gets clients 0-4 and keeps 0, 1, 2
  assert sim.trace["jobs_done"] == 6 and sim.version == [1, 1] and sim.clock == 8.0  # b keeps 5, 6, 7
  trainer = fedast.JobTrainer(tasks[0])
  for key in ("w", "b"):
    ref = params[key] + 0.5 * np.mean([trainer.single(params, c)[key] for c in (0, 1, 2)], 0)
    np.testing.assert_allclose(sim.params[0][key], ref, rtol=1e-5, atol=1e-7)


def test_sequential_trains_one_task_after_the_other():
  tasks = [_task(20, "a"), _task(20, "b", seed=1, shift=2.0)]
  seq = fedast.Simulation(tasks, _cfg(method="sequential", max_time=1e9))
  seq.run()
  assert seq.done_time[0] is not None and seq.done_time[1] is not None
  assert seq.done_time[0] < seq.done_time[1]
  first = [e for e in seq.trace["eval"] if e[1] == 1 and e[0] <= seq.done_time[0]]
  assert all(e[2] == 0 for e in first)  # task b has no version before task a is done


def test_diverging_server_lr_stops_with_the_nan_guard():
  sim = fedast.Simulation([_task(20, global_lr=1e39)], _cfg(method="fedast_nobuffer", max_time=200.0))
  with pytest.raises(metrics.NonFiniteError, match="non-finite model leaves") as e:
    sim.run()
  assert isinstance(e.value.step, int) and e.value.step >= 1


def test_validation():
  with pytest.raises(ValueError, match="method"):
    fedast.Simulation([_task(20)], _cfg(method="fedbuff"))
  with pytest.raises(ValueError, match="data for 20 clients"):
    fedast.Simulation([_task(20)], _cfg(num_clients=30))
  with pytest.raises(ValueError, match="unique"):
    fedast.Simulation([_task(20), _task(20)], _cfg())
  for bad, msg in ((dict(max_time=0.0), "max_time"), (dict(sync_rule="median"), "sync_rule"),
                   (dict(sync_first_c=0), "sync_first_c"), (dict(executor="pmap"), "executor"),
                   (dict(staleness="hinge"), "staleness")):
    with pytest.raises(ValueError, match=msg):
      _cfg(**bad).validate()
