"""FedAvg / FedSim / FedAlt: golden numbers, executor parity, sharding, invariants, resume."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import loop, mesh as mesh_lib
from fed import algorithms as alg
from fed import models
from fed import personalization as pz
from fed import simulate as sim

N, S, B, D, K = 12, 3, 5, 20, 3


def _data(seed=0, n=N):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, S, B, D)).astype(np.float32)
  y = rng.integers(0, K, (n, S, B)).astype(np.int32)
  mask = rng.random((n, S, B)) < 0.8
  mask[3] = False  # a client without data
  mask[4, 1:] = False  # a client with one real step
  return sim.ClientData(x, y, mask, mask.sum((1, 2)))


def _loss(p, x, y):
  h = jnp.tanh(x @ p["inp"]["w"] + p["inp"]["b"])
  return optax.softmax_cross_entropy_with_integer_labels(h @ p["out"]["w"] + p["out"]["b"], y)


def _metrics(p, x, y):
  h = jnp.tanh(x @ p["inp"]["w"] + p["inp"]["b"])
  logits = h @ p["out"]["w"] + p["out"]["b"]
  return {"acc": (jnp.argmax(logits, -1) == y).astype(jnp.float32)}


def _model(split="output"):
  """A two-layer net as a plain dict (few leaves: quick to compile)."""
  rng = np.random.default_rng(0)
  params = {"inp": {"w": jnp.asarray(rng.normal(size=(D, 16)) / np.sqrt(D), jnp.float32),
                    "b": jnp.zeros(16)},
            "out": {"w": jnp.asarray(rng.normal(size=(16, K)) / 4, jnp.float32), "b": jnp.zeros(K)}}
  return params, _loss, _metrics, pz.Partition(params, pz.label_params(params, split))


def _algo(name, split="output", stateful=True, **kw):
  params, loss_fn, _, part = _model(split)
  local = alg.phases(name, optax.sgd(0.1, momentum=0.5), personal_tx=optax.sgd(0.2),
                     personal_steps=2 if name == "fedalt" else None)
  kw.setdefault("clients_per_round", 5)
  a = alg.FedAlgorithm(loss_fn, part, local, alg.server_optimizer("adam", 0.01), stateful=stateful,
                       **kw)
  return a, a.init(params, N, jax.random.key(3))


def _max_diff(a, b):
  d = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))) if x.size else 0.0, a, b)
  return max(jax.tree.leaves(d), default=0.0)


# ---------------------------------------------------------------------------
# Golden: FedAvg with one local SGD step and full participation = one centralized step


def _softmax_grad_np(w, b, x, y):
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  return x.T @ p / len(y), p.mean(0)


def test_fedavg_one_step_full_participation_is_a_centralized_step():
  rng = np.random.default_rng(1)
  sizes = [5, 2, 4, 1]  # unequal clients: example weighting makes the average exact
  x = np.zeros((4, 1, 5, D), np.float32)
  y = np.zeros((4, 1, 5), np.int32)
  mask = np.zeros((4, 1, 5), bool)
  for c, n in enumerate(sizes):
    x[c, 0, :n] = rng.normal(size=(n, D))
    y[c, 0, :n] = rng.integers(0, K, n)
    mask[c, 0, :n] = True
  data = sim.ClientData(x, y, mask, mask.sum((1, 2)))
  w0 = rng.normal(size=(D, K)).astype(np.float32) * 0.3
  b0 = rng.normal(size=K).astype(np.float32) * 0.1
  params = {"out": {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}}

  def loss_fn(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(xb @ p["out"]["w"] + p["out"]["b"], yb)

  part = pz.Partition(params, pz.label_params(params, "none"))
  a = alg.FedAlgorithm(loss_fn, part, alg.phases("fedavg", optax.sgd(0.7)),
                       alg.server_optimizer("sgd", 1.0), clients_per_round=4)
  state, _ = a.round(a.init(params, 4, jax.random.key(0)), data)
  xs, ys = x[mask], y[mask]
  gw, gb = _softmax_grad_np(w0.astype(np.float64), b0.astype(np.float64), xs.astype(np.float64), ys)
  np.testing.assert_allclose(state.shared["out/w"], w0 - 0.7 * gw, atol=1e-6)
  np.testing.assert_allclose(state.shared["out/b"], b0 - 0.7 * gb, atol=1e-6)
  # Batch weighting (the reference code's) weights every client equally here: not centralized.
  a_b = alg.FedAlgorithm(loss_fn, part, alg.phases("fedavg", optax.sgd(0.7)),
                         alg.server_optimizer("sgd", 1.0), clients_per_round=4, weighting="batches")
  state_b, _ = a_b.round(a_b.init(params, 4, jax.random.key(0)), data)
  per_client = [_softmax_grad_np(w0.astype(np.float64), b0.astype(np.float64),
                                 x[c, 0, :n].astype(np.float64), y[c, 0, :n])[0]
                for c, n in enumerate(sizes)]
  np.testing.assert_allclose(state_b.shared["out/w"], w0 - 0.7 * np.mean(per_client, 0), atol=1e-6)


# ---------------------------------------------------------------------------
# vmapped round == Python-loop round; sharded == unsharded


@pytest.mark.parametrize("name", alg.ALGORITHMS)
def test_vmapped_round_matches_python_loop(name):
  data = _data()
  a, state = _algo(name, chunk_size=2)
  vm, lp = state, state
  for _ in range(2):
    vm, m_vm = a.round(vm, data)
    lp, m_lp = a.loop_round(lp, data)
  assert int(vm.round) == 2
  assert _max_diff((vm.shared, vm.personal, vm.server_opt), (lp.shared, lp.personal, lp.server_opt)) < 1e-6
  assert _max_diff(m_vm, m_lp) < 1e-6
  assert _max_diff(vm.shared, state.shared) > 1e-3  # something was trained


def test_sharded_round_matches_unsharded():
  # 6 clients over 8 devices (padded), FedAlt: both phases and the stateful store.
  mesh = mesh_lib.make_mesh({mesh_lib.CLIENTS: 8})
  data = _data()
  plain, state = _algo("fedalt", clients_per_round=6)
  sharded, _ = _algo("fedalt", clients_per_round=6, mesh=mesh, chunk_size=1)
  a, b = state, state
  for _ in range(2):
    a, _ = plain.round(a, data)
    b, _ = sharded.round(b, data)
  assert _max_diff((a.shared, a.personal), (b.shared, b.personal)) < 1e-6


# ---------------------------------------------------------------------------
# Invariants


def test_stateful_store_changes_only_sampled_clients():
  data = _data()
  a, state = _algo("fedalt", clients_per_round=4)
  for _ in range(3):
    idx = np.asarray(a.sample(state, N))
    assert len(set(idx.tolist())) == 4  # without replacement
    np.testing.assert_array_equal(idx, np.asarray(a.sample(state, N)))  # deterministic
    new, _ = a.round(state, data)
    for c in range(N):
      same = all(np.array_equal(new.personal[k][c], state.personal[k][c]) for k in state.personal)
      has_data = data.mask[c].any()
      assert same == (c not in idx or not has_data), c
    state = new
  rounds = {tuple(np.asarray(a.sample(state._replace(round=jnp.int32(r)), N))) for r in range(5)}
  assert len(rounds) > 1  # sampling changes with the round


def test_stateless_clients_restart_from_v0():
  data = _data()
  a, state = _algo("fedsim", stateful=False)
  new, _ = a.round(state, data)
  assert _max_diff(new.personal, state.personal) == 0.0  # v_0 is never overwritten
  assert jax.tree.leaves(new.personal)[0].shape == jax.tree.leaves(state.personal)[0].shape
  assert _max_diff(new.shared, state.shared) > 1e-4


def test_fedalt_phases_touch_only_their_own_leaves():
  params, loss_fn, _, part = _model("output")
  u, v, frozen = part.split(params)
  data = _data()
  x, y, mask = data.x[0], data.y[0], data.mask[0]
  personal_phase, shared_phase = alg.phases("fedalt", optax.sgd(0.3))
  u1, v1, _ = sim.local_train(loss_fn, part.merge, [personal_phase], u, v, frozen, x, y, mask)
  assert _max_diff(u1, u) == 0.0 and _max_diff(v1, v) > 1e-4
  u2, v2, _ = sim.local_train(loss_fn, part.merge, [shared_phase], u1, v1, frozen, x, y, mask)
  assert _max_diff(v2, v1) == 0.0 and _max_diff(u2, u1) > 1e-4
  u3, v3, m = sim.local_train(loss_fn, part.merge, [personal_phase, shared_phase], u, v, frozen,
                              x, y, mask)
  assert _max_diff((u3, v3), (u2, v2)) < 1e-7  # Gauss-Seidel: phase 2 sees the new v
  u_old, _, _ = sim.local_train(loss_fn, part.merge, [shared_phase], u, v, frozen, x, y, mask)
  assert _max_diff(u_old, u2) > 1e-5  # ... which differs from using the old v
  assert int(m["steps_0"]) == int(m["steps_1"]) == int(mask.any(-1).sum())


def test_masked_steps_leave_state_unchanged_and_step_caps_hold():
  params, loss_fn, _, part = _model("output")
  u, v, frozen = part.split(params)
  data = _data()
  x, y = data.x[0], data.y[0]
  empty = np.zeros_like(data.mask[0])
  for phase in alg.phases("fedsim", optax.adam(0.1)) + alg.phases("fedalt", optax.sgd(0.1)):
    u1, v1, m = sim.local_train(loss_fn, part.merge, [phase], u, v, frozen, x, y, empty)
    assert _max_diff((u1, v1), (u, v)) == 0.0 and int(m["steps_0"]) == 0
  # A cap of 1 step equals a client whose data is only the first batch.
  capped = sim.Phase("personal", optax.sgd(0.3), max_steps=1)
  one = np.zeros_like(empty)
  one[0] = True
  _, v_cap, m = sim.local_train(loss_fn, part.merge, [capped], u, v, frozen, x, y,
                                np.ones_like(empty), epochs=2)
  _, v_one, _ = sim.local_train(loss_fn, part.merge, [sim.Phase("personal", optax.sgd(0.3))], u, v,
                                frozen, x, y, one)
  assert int(m["steps_0"]) == 1 and _max_diff(v_cap, v_one) < 1e-7


def test_first_local_step_keeps_the_broadcast_params_shared_under_vmap():
  """Under a vmap over clients the first local step's forward product reads the shared
  (unbatched) server weights: every client of a chunk goes through one larger GEMM."""
  params, loss_fn, _, part = _model("none")
  u, v, frozen = part.split(params)
  data = _data()
  phases = alg.phases("fedavg", optax.sgd(0.1))

  def clients(x, y, mask):
    return sim.local_train(loss_fn, part.merge, phases, u, v, frozen, x, y, mask)[0]
  jaxpr = jax.make_jaxpr(jax.vmap(clients))(data.x[:2], data.y[:2], data.mask[:2])
  shapes = [tuple(x.aval.shape) for eqn in _eqns(jaxpr.jaxpr) if eqn.primitive.name == "dot_general"
            for x in eqn.invars]
  assert (D, 16) in shapes, shapes  # the shared first-layer weights, not a (2, D, 16) stack
  u1 = jax.vmap(clients)(data.x[:2], data.y[:2], data.mask[:2])
  for c in range(2):
    one = sim.local_train(loss_fn, part.merge, phases, u, v, frozen, data.x[c], data.y[c],
                          data.mask[c])[0]
    assert _max_diff(jax.tree.map(lambda a: a[c], u1), one) < 1e-6


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


# ---------------------------------------------------------------------------
# FedAlt's personal optimizer and step caps, FedSim's joint step: against NumPy


def _net_grads_np(p, x, y, m):
  """Gradients of the masked mean cross-entropy of `_loss` (float64)."""
  h = np.tanh(x @ p["inp/w"] + p["inp/b"])
  logits = h @ p["out/w"] + p["out/b"]
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  prob[np.arange(len(y)), y] -= 1.0
  d_logits = prob * m[:, None] / max(1.0, m.sum())
  d_pre = (d_logits @ p["out/w"].T) * (1 - h ** 2)
  return {"inp/w": x.T @ d_pre, "inp/b": d_pre.sum(0), "out/w": h.T @ d_logits,
          "out/b": d_logits.sum(0)}


def _client_np(c=0):
  data = _data()
  return (data.x[c].astype(np.float64), data.y[c], data.mask[c].astype(np.float64),
          data.x[c], data.y[c], data.mask[c])


def _np_params(*blocks):
  return {k: np.asarray(v, np.float64) for b in blocks for k, v in b.items()}


def test_fedalt_personal_optimizer_and_step_cap_match_numpy():
  params, loss_fn, _, part = _model("output")
  u, v, frozen = part.split(params)
  xs, ys, ms, x, y, mask = _client_np()
  real = int(mask.any(-1).sum())
  assert real == 3
  p_lr, s_lr = 0.3, 0.1
  for cap in (1, 2, 4):
    a = alg.fedalt(loss_fn, part, optax.sgd(s_lr), personal_tx=optax.sgd(p_lr), personal_steps=cap,
                   clients_per_round=2)
    u1, v1, m = sim.local_train(loss_fn, part.merge, a.phases, u, v, frozen, x, y, mask, epochs=2)
    assert int(m["steps_0"]) == cap and int(m["steps_1"]) == 2 * real  # the cap is the personal one's
    w = _np_params(u, v)
    for t in range(cap):  # personal phase: v only, personal lr, u frozen
      g = _net_grads_np(w, xs[t % 3], ys[t % 3], ms[t % 3])
      for k in v:
        w[k] = w[k] - p_lr * g[k]
    for t in range(2 * real):  # shared phase: u only, client lr, the new v frozen
      g = _net_grads_np(w, xs[t % 3], ys[t % 3], ms[t % 3])
      for k in u:
        w[k] = w[k] - s_lr * g[k]
    for k in v:
      np.testing.assert_allclose(v1[k], w[k], atol=2e-6, err_msg=f"cap {cap}: {k}")
    for k in u:
      np.testing.assert_allclose(u1[k], w[k], atol=2e-6, err_msg=f"cap {cap}: {k}")


def test_fedalt_with_zero_personal_lr_leaves_v_unchanged_in_a_round():
  params, loss_fn, _, part = _model("output")
  data = _data()
  a = alg.fedalt(loss_fn, part, optax.sgd(0.1), personal_tx=optax.sgd(0.0), clients_per_round=N)
  state = a.init(params, N, jax.random.key(0))
  new, _ = a.round(state, data)
  assert _max_diff(new.personal, state.personal) == 0.0
  assert _max_diff(new.shared, state.shared) > 1e-3
  b = alg.fedalt(loss_fn, part, optax.sgd(0.1), clients_per_round=N)  # personal_tx defaults to tx
  assert _max_diff(b.round(b.init(params, N, jax.random.key(0)), data)[0].personal,
                   state.personal) > 1e-3


def test_fedsim_joint_step_matches_numpy():
  params, loss_fn, _, part = _model("output")
  u, v, frozen = part.split(params)
  xs, ys, ms, x, y, mask = _client_np()
  lr = 0.2
  a = alg.fedsim(loss_fn, part, optax.sgd(lr), clients_per_round=2)
  u1, v1, m = sim.local_train(loss_fn, part.merge, a.phases, u, v, frozen, x, y, mask)
  assert int(m["steps_0"]) == 3
  w = _np_params(u, v)
  for t in range(3):  # Jacobi: u and v step together from the same point
    g = _net_grads_np(w, xs[t], ys[t], ms[t])
    w = {k: w[k] - lr * g[k] for k in w}
  for k in v:
    np.testing.assert_allclose(v1[k], w[k], atol=2e-6, err_msg=k)
  for k in u:
    np.testing.assert_allclose(u1[k], w[k], atol=2e-6, err_msg=k)


def test_stateless_cache_holds_last_trained_v_and_fresh_gives_v0():
  data = _data()
  a_sf, s_sf = _algo("fedsim", stateful=True)
  a_c, s_c = _algo("fedsim", stateful=False)
  a_f, s_f = _algo("fedsim", stateful=False, stateless_eval="fresh")
  v0 = jax.tree.map(lambda x: x[0], s_sf.personal)
  assert s_f.cache == {} and s_sf.cache == {}
  r_sf, _ = a_sf.round(s_sf, data)
  r_c, _ = a_c.round(s_c, data)
  r_f, _ = a_f.round(s_f, data)
  # Round 1 starts from v_0 in both settings: the cache equals the stateful store.
  assert _max_diff(a_c.client_personal(r_c, N), r_sf.personal) < 1e-7
  assert _max_diff(a_f.client_personal(r_f, N), pz.stack(v0, N)) == 0.0
  assert _max_diff(r_c.personal, v0) == 0.0  # training still restarts from v_0
  # Round 2: stateless training starts from v_0 again; the cache keeps the newest v_i.
  r2_c, _ = a_c.round(r_c, data)
  idx = np.asarray(a_c.sample(r_c, N))
  p_c = a_c.client_personal(r2_c, N)
  for c in range(N):
    moved = any(not np.array_equal(p_c[k][c], a_c.client_personal(r_c, N)[k][c]) for k in p_c)
    assert moved == (c in idx and bool(data.mask[c].any())), c
  with pytest.raises(ValueError, match="stateless_eval"):
    _algo("fedsim", stateful=False, stateless_eval="v0")


def test_prox_term_matches_numpy():
  # Two SGD steps on f(w) = 0.5 * mean((x w - y)^2) + (lam/2) ||w - w0||^2.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 3)).astype(np.float32)
  y = rng.normal(size=(2, 4)).astype(np.float32)
  w0 = rng.normal(size=3).astype(np.float32)
  params = {"out": {"w": jnp.asarray(w0)}}
  part = pz.Partition(params, pz.label_params(params, "full"))
  u, v, frozen = part.split(params)
  loss_fn = lambda p, xb, yb: 0.5 * (xb @ p["out"]["w"] - yb) ** 2  # noqa: E731
  lam, lr = 0.5, 0.1
  _, v2, _ = sim.local_train(loss_fn, part.merge, [sim.Phase("personal", optax.sgd(lr), prox=lam)],
                             u, v, frozen, x, y, np.ones((2, 4), bool))
  w = w0.astype(np.float64)
  for s in range(2):
    grad = x[s].T @ (x[s] @ w - y[s]) / 4 + lam * (w - w0)
    w = w - lr * grad
  np.testing.assert_allclose(v2["out/w"], w, atol=1e-6)


# ---------------------------------------------------------------------------
# Fine-tuning baselines, evaluation, resume, a short run reaching a stated quality


def test_local_finetune_variants_and_evaluation():
  params, loss_fn, metric_fn, part = _model("output")
  u, v, frozen = part.split(params)
  data = _data()
  vs = pz.stack(v, N)
  u_i, v_i = alg.local_finetune(loss_fn, part, [sim.Phase("personal", optax.sgd(0.3))], u, vs,
                                frozen, data, epochs=2)
  assert u_i == () and jax.tree.leaves(v_i)[0].shape[0] == N
  full = pz.Partition(params, pz.label_params(params, "full"))
  fu, fv, ff = full.split(params)
  _, far = alg.local_finetune(loss_fn, full, [sim.Phase("personal", optax.sgd(0.3))], fu,
                              pz.stack(fv, N), ff, data, epochs=3)
  _, near = alg.local_finetune(loss_fn, full, [sim.Phase("personal", optax.sgd(0.3), prox=3.0)],
                               fu, pz.stack(fv, N), ff, data, epochs=3)
  dist = lambda t: sum(float(jnp.sum((a - b[None]) ** 2)) for a, b in zip(jax.tree.leaves(t), jax.tree.leaves(fv)))  # noqa: E731
  assert dist(near) < 0.25 * dist(far)  # the Ditto-style prox keeps clients near the global model
  summary, per_client = alg.evaluate_clients(metric_fn, part, u, v_i, frozen, data)
  count = per_client["count"]
  assert count.tolist() == data.mask.sum((1, 2)).tolist()
  acc = per_client["acc"][count > 0] / count[count > 0]
  np.testing.assert_allclose(summary["acc_mean"], per_client["acc"].sum() / count.sum(), rtol=1e-6)
  np.testing.assert_allclose(summary["acc_p10"], np.percentile(acc, 10), rtol=1e-6)
  assert summary["clients"] == N - 1


def test_resume_is_exact(tmp_path):
  data = _data()
  a, state = _algo("fedalt")
  full, _ = loop.train(state, step_fn=a.step_fn(data), num_steps=4, workdir=tmp_path / "a",
                       log_every=1, checkpoint_every=2)
  part, _ = loop.train(state, step_fn=a.step_fn(data), num_steps=2, workdir=tmp_path / "b",
                       log_every=1, checkpoint_every=2)
  resumed, _ = loop.train(state, step_fn=a.step_fn(data), num_steps=4, workdir=tmp_path / "b",
                          log_every=1, checkpoint_every=2)
  assert int(resumed.round) == 4
  assert _max_diff((full.shared, full.personal, full.server_opt),
                   (resumed.shared, resumed.personal, resumed.server_opt)) == 0.0


@pytest.mark.slow
def test_partial_personalization_solves_per_client_label_permutations():
  # Each client relabels classes with its own permutation: no shared model can
  # fit every client, a personal output layer can.
  rng = np.random.default_rng(0)
  n, k, d = 8, 4, 10
  centers = rng.normal(size=(k, d)) * 3
  perms = [rng.permutation(k) for _ in range(n)]
  y_true = rng.integers(0, k, (n, 4, 16))
  x = (centers[y_true] + rng.normal(size=(n, 4, 16, d))).astype(np.float32)
  y = np.stack([perms[c][y_true[c]] for c in range(n)]).astype(np.int32)
  data = sim.ClientData(x, y, np.ones((n, 4, 16), bool), np.full(n, 64))
  graphdef, params = models.pure_params(models.AdapterMLP([d, 16, k], adapter_dim=2, rngs=nnx.Rngs(1)))
  loss_fn, metric_fn = models.classifier_fns(graphdef)
  acc = {}
  for split, name in (("none", "fedavg"), ("output", "fedalt"), ("output", "fedsim")):
    part = pz.Partition(params, pz.label_params(params, split))
    a = alg.FedAlgorithm(loss_fn, part, alg.phases(name, optax.sgd(0.1)),
                         alg.server_optimizer("sgd", 1.0), clients_per_round=4)
    state = a.init(params, n, jax.random.key(0))
    for _ in range(30):
      state, _ = a.round(state, data)
    acc[split, name] = alg.evaluate_clients(metric_fn, part, state.shared,
                                            a.client_personal(state, n), state.frozen, data)[0]["acc_mean"]
  assert acc["none", "fedavg"] < 0.6
  assert acc["output", "fedalt"] > 0.9 and acc["output", "fedsim"] > 0.9


def test_bad_configuration_is_rejected():
  params, loss_fn, _, part = _model()
  with pytest.raises(ValueError, match="algorithm"):
    alg.phases("fedprox", optax.sgd(0.1))
  with pytest.raises(ValueError, match="server optimizer"):
    alg.server_optimizer("adagrad", 0.1)
  with pytest.raises(ValueError, match="weighting"):
    alg.FedAlgorithm(loss_fn, part, alg.phases("fedavg", optax.sgd(0.1)), optax.sgd(1.0),
                     clients_per_round=2, weighting="size")
  a = alg.FedAlgorithm(loss_fn, part, alg.phases("fedavg", optax.sgd(0.1)), optax.sgd(1.0),
                       clients_per_round=20)
  with pytest.raises(ValueError, match="exceeds"):
    a.init(params, N, jax.random.key(0))
  with pytest.raises(ValueError, match="train"):
    sim.Phase("both", optax.sgd(0.1))
