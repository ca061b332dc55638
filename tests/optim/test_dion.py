"""Dion: golden values against a NumPy reference and the spec's invariants (b.2-12, 15-20)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim import _dion as D
from optim import labels as L
from optim import orthogonalize as orth
from optim import routed


def _randn(seed, shape, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, jnp.float32)


# ---------------------------------------------------------------- NumPy reference


def numpy_dion(x0, grads, q0, *, lr, mu, wd, eps=1e-8):
  """Dion written from the paper in torch (out, in) layout with Householder QR.

  ``x0`` and ``grads`` are in Flax (in, out) layout; ``q0`` is the initial Q
  (short-dim x r). Returns the final (x, momentum, q) in Flax layout.
  """
  x = np.asarray(x0, np.float64).T  # torch layout (m, n) = (fan_out, fan_in)
  m_, n_ = x.shape
  mom = np.zeros_like(x)
  q = np.asarray(q0, np.float64)
  transpose = m_ < n_
  for g in grads:
    mom = mom + np.asarray(g, np.float64).T
    b = mom.T if transpose else mom
    p = np.linalg.qr(b @ q)[0]
    r = b.T @ p
    b_new = b - (1 - mu) * p @ r.T
    mom = b_new.T if transpose else b_new
    q = r / (np.linalg.norm(r, axis=0, keepdims=True) + eps)
    u = p @ q.T
    u = u.T if transpose else u
    x = (1 - lr * wd) * x - lr * np.sqrt(m_ / n_) * u
  return x.T, mom.T, q


def _align_signs(q, ref):
  return q * np.sign(np.sum(q * ref, axis=0, keepdims=True))


@pytest.mark.parametrize("shape,method", [((24, 40), "rcqr"), ((40, 24), "rcqr"),
                                          ((40, 24), "cqr"), ((24, 40), "qr")])
def test_golden_three_steps_vs_numpy(shape, method):
  lr, mu, wd = 0.05, 0.9, 0.1
  x0 = _randn(0, shape)
  grads = [_randn(10 + i, shape) for i in range(3)]
  tx = optax.chain(D.scale_by_dion(0.5, mu, qr_method=method, key=3),
                   optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))
  state = tx.init(x0)
  q0 = np.asarray(state[0].q)
  x = x0
  step = jax.jit(tx.update)
  for g in grads:
    u, state = step(g, state, x)
    x = optax.apply_updates(x, u)
  ref_x, ref_m, ref_q = numpy_dion(x0, grads, q0, lr=lr, mu=mu, wd=wd)
  np.testing.assert_allclose(np.asarray(x), ref_x, atol=2e-5)
  np.testing.assert_allclose(np.asarray(state[0].momentum), ref_m, atol=2e-4)
  q = np.asarray(state[0].q)
  np.testing.assert_allclose(_align_signs(q, ref_q), ref_q, atol=1e-4)
  assert q.shape == (min(shape), 12)


# ---------------------------------------------------------------- core invariants


def _step(b, q, **kw):
  fn = jax.jit(lambda b, q: D.power_step(b[None], q[None], jax.random.key(0), **kw))
  return fn(jnp.asarray(b, jnp.float32), jnp.asarray(q, jnp.float32))


def test_unit_columns_and_frobenius_norm():
  out = _step(_randn(0, (48, 32)), _randn(1, (32, 8)))
  norms = np.linalg.norm(np.asarray(out.q[0]), axis=0)
  r_norms = np.linalg.norm(np.asarray(out.r[0]), axis=0)
  np.testing.assert_allclose(norms, r_norms / (r_norms + 1e-8), rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out.direction[0])), np.sqrt(8), rtol=1e-5)


@pytest.mark.parametrize("mu", [0.95, 1.0])
def test_error_feedback_identity(mu):
  b = np.asarray(_randn(2, (48, 32)), np.float64)
  out = _step(b, _randn(3, (32, 8)), mu=mu)
  p, m_new = np.asarray(out.p[0], np.float64), np.asarray(out.momentum[0], np.float64)
  np.testing.assert_allclose(p.T @ m_new, mu * p.T @ b, atol=1e-4)
  proj = np.eye(48) - p @ p.T
  np.testing.assert_allclose(proj @ m_new, proj @ b, atol=1e-4)
  if mu == 1.0:
    np.testing.assert_allclose(m_new, b, atol=1e-5)


def test_full_rank_momentum_is_mu_times_b():
  b = np.asarray(_randn(4, (40, 24)), np.float64)
  out = _step(b, _randn(5, (24, 24)), mu=0.9)
  np.testing.assert_allclose(np.asarray(out.momentum[0]), 0.9 * b, atol=1e-4)


def test_polar_factor_from_right_singular_vectors():
  b = np.asarray(_randn(6, (40, 24)), np.float64)
  u, _, vt = np.linalg.svd(b, full_matrices=False)
  out = _step(b, vt.T)
  np.testing.assert_allclose(np.asarray(out.direction[0]), u @ vt, atol=1e-4)


def test_repeated_steps_converge_to_truncated_polar():
  rng = np.random.default_rng(7)
  u, _ = np.linalg.qr(rng.standard_normal((40, 40)))
  v, _ = np.linalg.qr(rng.standard_normal((24, 24)))
  s = np.concatenate([[10.0, 5.0, 2.5, 1.25], np.linspace(0.3, 0.1, 20)])
  b = (u[:, :24] * s) @ v.T
  q = _randn(8, (24, 4))
  step = jax.jit(lambda q: D.power_step(jnp.asarray(b, jnp.float32)[None], q, jax.random.key(0)))
  out = None
  for _ in range(30):
    out = step(q[None] if out is None else out.q)
  np.testing.assert_allclose(np.asarray(out.direction[0]), u[:, :4] @ v[:, :4].T, atol=1e-4)


def _run(tx, params, grads):
  state = tx.init(params)
  updates = []
  update = jax.jit(tx.update)
  for g in grads:
    u, state = update(g, state, params)
    updates.append(u)
  return updates, state


def test_scale_invariance():
  x = _randn(0, (32, 48))
  grads = [_randn(i, (32, 48)) for i in range(3)]
  tx = D.scale_by_dion(0.25)
  u1, s1 = _run(tx, x, grads)
  u2, s2 = _run(tx, x, [7.0 * g for g in grads])
  for a, b in zip(u1, u2):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
  np.testing.assert_allclose(np.asarray(s2.momentum), 7.0 * np.asarray(s1.momentum), rtol=1e-4,
                             atol=1e-4)


def test_rotation_equivariance_and_sign_flip():
  rng = np.random.default_rng(9)
  u_rot, _ = np.linalg.qr(rng.standard_normal((48, 48)))
  v_rot, _ = np.linalg.qr(rng.standard_normal((32, 32)))
  b = np.asarray(_randn(10, (48, 32)), np.float64)
  q = np.asarray(_randn(11, (32, 8)), np.float64)
  out = _step(b, q)
  rot = _step(u_rot @ b @ v_rot.T, v_rot @ q)
  np.testing.assert_allclose(np.asarray(rot.direction[0]),
                             u_rot @ np.asarray(out.direction[0]) @ v_rot.T, atol=1e-4)
  p, qn = np.asarray(out.p[0]), np.asarray(out.q[0])
  flip = np.ones(8)
  flip[[1, 5]] = -1
  np.testing.assert_allclose((p * flip) @ (qn * flip).T, p @ qn.T, atol=1e-6)


def test_transpose_symmetry():
  x = _randn(0, (24, 56))
  grads = [_randn(i, (24, 56)) for i in range(2)]
  u, _ = _run(D.scale_by_dion(0.5), x, grads)
  ut, _ = _run(D.scale_by_dion(0.5), x.T, [g.T for g in grads])
  for a, b in zip(u, ut):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b).T * (56 / 24), atol=1e-5)


def test_zero_gradient_gives_zero_update_and_only_weight_decay():
  params = {"w": _randn(0, (32, 48)), "b": _randn(1, (48,))}
  tx = D.dion(0.1, 0.5, weight_decay=0.2)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  u, state = jax.jit(tx.update)(zeros, state, params)
  np.testing.assert_allclose(np.asarray(u["w"]), -0.1 * 0.2 * np.asarray(params["w"]), rtol=1e-6)
  dion_state = state.inner_states[L.MATRIX].inner_state[0]
  q = np.asarray(dion_state.q["w"])
  assert np.all(np.isfinite(q))
  np.testing.assert_allclose(np.linalg.norm(q, axis=0), 1.0, rtol=1e-6)
  assert np.all(np.asarray(dion_state.momentum["w"]) == 0.0)


def test_weight_decay_and_shape_scale():
  shapes = {"tall": (128, 64), "wide": (64, 128), "square": (64, 64)}
  x = {k: _randn(i, s) for i, (k, s) in enumerate(shapes.items())}
  tx = D.dion(0.1, 0.25, weight_decay=0.3)
  u, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, x), tx.init(x), x)
  for k in shapes:  # only weight decay acts, whatever sqrt(fan_out / fan_in) is
    np.testing.assert_allclose(np.asarray(x[k] + u[k]), (1 - 0.1 * 0.3) * np.asarray(x[k]),
                               rtol=1e-6)
  (u,), _ = _run(D.scale_by_dion(0.25), x, [jax.tree.map(lambda a: a + 1.0, x)])
  for k, shape in shapes.items():
    expected = np.sqrt(shape[1] / shape[0]) * np.sqrt(D.dion_rank(0.25, *shape))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u[k])), expected, rtol=1e-5)


def test_rank_formula_and_q_shapes():
  assert D.dion_rank(0.3, 10, 20) == 3  # not 4 from 3.0000000000000004
  assert D.dion_rank(0.25, 64, 128) == 16
  assert D.dion_rank(0.1, 64, 128, rank_multiple_of=8) == 8  # 6.4 -> 8, never floored
  assert D.dion_rank(1 / 16, 30, 100) == 2  # 1.875 -> 2
  assert D.dion_rank(1.0, 64, 48, rank_multiple_of=32) == 48  # capped
  state = D.scale_by_dion(0.5).init({"a": jnp.zeros((16, 40)), "b": jnp.zeros((40, 16)),
                                     "s": jnp.zeros((3, 8, 24))})
  assert state.q["a"].shape == (16, 8) and state.q["b"].shape == (16, 8)
  assert state.q["s"].shape == (3, 8, 4)


def test_stacked_matrices_equal_separate_leaves():
  stack = _randn(0, (3, 16, 24))
  g = _randn(1, (3, 16, 24))
  tx = D.scale_by_dion(0.5, qr_method="qr")
  st = tx.init(stack)
  u, _ = tx.update(g, st, stack)
  for i in range(3):
    single = tx.init(stack[i])._replace(q=st.q[i])
    ui, _ = tx.update(g[i], single, stack[i])
    np.testing.assert_allclose(np.asarray(u[i]), np.asarray(ui), atol=1e-5)


# ---------------------------------------------------------------- routing


def test_bias_only_model_reproduces_adamw():
  params = {"b1": _randn(0, (5,)), "norm": {"scale": _randn(1, (7,))}}
  grads = [jax.tree.map(lambda x, i=i: _randn(20 + i, x.shape), params) for i in range(3)]
  ours = D.dion(3e-3, weight_decay=0.1, scalar_weight_decay=0.05)
  ref = optax.adamw(3e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05)
  s1, s2 = ours.init(params), ref.init(params)
  for g in grads:
    u1, s1 = ours.update(g, s1, params)
    u2, s2 = ref.update(g, s2, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6),
                 u1, u2)


def test_only_matrices_get_dion_state_and_bad_leaf_raises():
  params = {"embed": {"embedding": jnp.zeros((10, 8))}, "w": jnp.zeros((8, 16)),
            "bias": jnp.zeros(16), "head": {"kernel": jnp.zeros((16, 10))}}
  state = D.dion(0.01).init(params)
  dion_state = state.inner_states[L.MATRIX].inner_state[0]
  arrays = {L.path_str(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(dion_state.q)[0]}
  assert arrays == {"w": (8, 8)}
  with pytest.raises(ValueError, match=r"'layer/bias'.*\(16,\)"):
    D.scale_by_dion().init({"layer": {"bias": jnp.zeros(16)}})


@pytest.mark.parametrize("kind,scale", [("lion", 1 / np.sqrt(16)), ("adamw", 1.0)])
def test_head_learning_rate_rule(kind, scale):
  params = {"head": {"kernel": _randn(0, (16, 10))}}
  g = {"head": {"kernel": _randn(1, (16, 10))}}
  u, _ = D.dion(0.01, scalar_optimizer=kind).update(g, D.dion(0.01, scalar_optimizer=kind).init(
      params), params)
  plain = routed.make_scalar_optimizer(kind, 0.01, b1=0.95, b2=0.98)
  ref, _ = plain.update(g, plain.init(params), params)
  np.testing.assert_allclose(np.asarray(u["head"]["kernel"]),
                             scale * np.asarray(ref["head"]["kernel"]), rtol=1e-6)


def test_bad_hyperparameters_raise():
  for kwargs, word in [({"rank_fraction": 0.0}, "rank_fraction"),
                       ({"rank_fraction": 1.5}, "rank_fraction"),
                       ({"qr_method": "svd"}, "qr_method"), ({"power_iters": 0}, "power_iters"),
                       ({"mu": 1.5}, "mu"), ({"oversample": 0.5}, "oversample")]:
    with pytest.raises(ValueError, match=word):
      D.scale_by_dion(**kwargs)
  with pytest.raises(ValueError, match="scalar_optimizer"):
    D.dion(0.01, scalar_optimizer="sgd")


# ---------------------------------------------------------------- jit, determinism, degenerate


def test_jit_does_not_retrace_and_cholesky_failure_is_contained(monkeypatch):
  traces = []
  x = {"w": _randn(0, (32, 48))}
  tx = D.dion(0.01, 0.25)

  @jax.jit
  def step(params, state, g):
    traces.append(1)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  state = tx.init(x)
  for i in range(4):
    x, state = step(x, state, {"w": _randn(i, (32, 48))})
  assert len(traces) == 1
  monkeypatch.setattr(orth, "cholesky_upper", lambda a: jnp.full_like(a, jnp.nan))
  params = {"w": _randn(0, (32, 48))}
  state = tx.init(params)
  step = jax.jit(step.__wrapped__)  # retrace with the failing Cholesky
  for i in range(3):
    params, state = step(params, state, {"w": _randn(i, (32, 48))})
  assert np.all(np.isfinite(np.asarray(params["w"])))
  assert np.all(np.isfinite(np.asarray(state.inner_states[L.MATRIX].inner_state[0].q["w"])))


def test_determinism_and_leaf_ids():
  params = {"a": _randn(0, (32, 48)), "b": _randn(0, (32, 48))}
  grads = {"a": _randn(1, (32, 48)), "b": _randn(1, (32, 48))}
  tx = D.scale_by_dion(0.25, key=7)
  update = jax.jit(tx.update)  # the key lives in the state: one compiled update serves all
  u1, _ = update(grads, tx.init(params))
  u2, _ = update(grads, D.scale_by_dion(0.25, key=jax.random.key(7)).init(params))
  np.testing.assert_array_equal(np.asarray(u1["a"]), np.asarray(u2["a"]))
  assert not np.allclose(np.asarray(u1["a"]), np.asarray(u1["b"]))  # own Q / sketch per leaf
  u3, _ = update(grads, D.scale_by_dion(0.25, key=8).init(params))
  assert not np.allclose(np.asarray(u1["a"]), np.asarray(u3["a"]))


def test_rank_deficient_momentum_is_finite_and_captured():
  rng = np.random.default_rng(0)
  b = np.outer(rng.standard_normal(48), rng.standard_normal(32))
  b += np.outer(rng.standard_normal(48), rng.standard_normal(32))  # rank 2 < r = 8
  for method in orth.QR_METHODS:
    out = _step(b, _randn(1, (32, 8)), qr_method=method)
    for field in out:
      assert np.all(np.isfinite(np.asarray(field))), method
    pr = np.asarray(out.p[0], np.float64) @ np.asarray(out.r[0], np.float64).T
    np.testing.assert_allclose(pr, b, atol=1e-4 * np.abs(b).max())


# ---------------------------------------------------------------- optax conventions


def test_updates_are_added_and_descend_a_quadratic():
  target = _randn(0, (32, 48))
  x = jnp.zeros((32, 48))
  tx = D.dion(0.5, 0.5, weight_decay=0.0)
  state = tx.init({"w": x})
  loss = lambda w: 0.5 * jnp.sum((w - target) ** 2)
  start = float(loss(x))
  step = jax.jit(tx.update)
  for _ in range(20):
    u, state = step({"w": jax.grad(loss)(x)}, state, {"w": x})
    x = optax.apply_updates(x, u["w"])
  assert float(loss(x)) < 0.5 * start


def test_inject_hyperparams_and_schedule():
  params = {"w": _randn(0, (32, 48)), "b": jnp.zeros(48)}
  grads = [jax.tree.map(lambda x, i=i: _randn(i, x.shape), params) for i in range(3)]
  injected = optax.inject_hyperparams(D.dion, static_args=D.DION_STATIC_ARGS)(
      learning_rate=0.02, rank_fraction=0.5, mu=0.9)
  plain = D.dion(0.02, 0.5, 0.9)
  u1, _ = _run(injected, params, grads)
  u2, _ = _run(plain, params, grads)
  for a, b in zip(u1, u2):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6),
                 a, b)
  sched = optax.linear_schedule(0.02, 0.0, 3)
  u3, _ = _run(D.dion(sched, 0.5, 0.9), params, grads)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6),
               u3[0], u2[0])
  assert np.linalg.norm(np.asarray(u3[2]["w"])) < np.linalg.norm(np.asarray(u2[2]["w"]))


def test_grouped_same_shape_leaves_equal_per_leaf_steps():
  params = {"a": _randn(0, (16, 24)), "b": _randn(1, (16, 24)), "c": _randn(2, (24, 16))}
  grads = [jax.tree.map(lambda x, i=i: _randn(10 + i, x.shape), params) for i in range(2)]
  grouped, _ = _run(D.scale_by_dion(0.5, qr_method="qr"), params, grads)
  single, _ = _run(D.scale_by_dion(0.5, qr_method="qr", group_same_shape=False), params, grads)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5),
               grouped, single)


# ---------------------------------------------------------------- input checks


def test_transposed_gradient_names_the_leaf():
  tx = D.scale_by_dion(0.5)
  params = {"layer": {"w": jnp.zeros((16, 24))}}
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"'layer/w' has shape \(24, 16\).*\(16, 24\)"):
    tx.update({"layer": {"w": jnp.zeros((24, 16))}}, state, params)


def test_integer_parameters_are_refused():
  with pytest.raises(ValueError, match=r"'w'.*int32"):
    D.scale_by_dion().init({"w": jnp.zeros((8, 8), jnp.int32)})


def test_update_comes_back_in_the_parameter_dtype():
  params = {"w": jnp.zeros((16, 24), jnp.bfloat16)}
  tx = D.dion(0.1, 0.5)
  u, _ = tx.update({"w": _randn(0, (16, 24))}, tx.init(params), params)  # f32 gradient
  assert u["w"].dtype == jnp.bfloat16
  u, _ = D.scale_by_dion(0.5).update({"w": _randn(0, (16, 24))},
                                     D.scale_by_dion(0.5).init(params))
  assert u["w"].dtype == jnp.bfloat16  # no params given: the dtype the state keeps
