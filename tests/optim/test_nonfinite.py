"""Non-finite gradients: Dion, complex momentum and complex Adam skip the leaf, per leaf."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optim
from optim import _dion as D
from optim import labels as L


def _randn(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _poison(x, value, where=(1, 2)):
  return x.at[where].set(value)


def _leaves_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


PARAMS = {"a": (24, 40), "b": (24, 40), "c": (40, 24), "s": (2, 16, 24)}


def _tree(seed):
  return {k: _randn(seed + i, s) for i, (k, s) in enumerate(PARAMS.items())}


@pytest.mark.parametrize("value,grouped", [(np.nan, True), (-np.inf, False)])
def test_dion_skips_only_the_bad_leaf(value, grouped):
  params = _tree(0)
  tx = D.scale_by_dion(0.5, group_same_shape=grouped)
  update = jax.jit(tx.update)
  _, state = update(_tree(10), tx.init(params))  # a finite step first: M != 0
  bad = _tree(20)
  bad["a"] = _poison(bad["a"], value)
  bad["s"] = _poison(bad["s"], value, (1, 3, 4))  # a stack is skipped as a whole
  u, new = update(bad, state)
  clean_u, clean = update(_tree(20), state)
  for k in ("a", "s"):
    assert np.all(np.asarray(u[k]) == 0.0), k
    np.testing.assert_array_equal(np.asarray(new.momentum[k]), np.asarray(state.momentum[k]))
    np.testing.assert_array_equal(np.asarray(new.q[k]), np.asarray(state.q[k]))
    assert int(new.nonfinite_count[k]) == 1
  for k in ("b", "c"):  # the others take their normal step, bit for bit
    np.testing.assert_array_equal(np.asarray(u[k]), np.asarray(clean_u[k]))
    np.testing.assert_array_equal(np.asarray(new.q[k]), np.asarray(clean.q[k]))
    assert int(new.nonfinite_count[k]) == 0
  for leaf in jax.tree.leaves((u, new.momentum, new.q)):
    assert np.all(np.isfinite(np.asarray(leaf)))
  u2, after = update(_tree(30), new)  # and the next finite step is a normal one
  assert np.all(np.isfinite(np.asarray(u2["a"]))) and np.any(np.asarray(u2["a"]) != 0)
  assert int(after.nonfinite_count["a"]) == 1


def test_dion_alias_skips_weight_decay_too():
  params = {"w": _randn(0, (24, 40)), "v": _randn(1, (24, 40)), "bias": _randn(2, (40,))}
  tx = optim.dion(0.1, 0.5, weight_decay=0.3)
  grads = jax.tree.map(lambda x: x + 1.0, params)
  grads["w"] = _poison(grads["w"], np.nan)
  u, state = jax.jit(tx.update)(grads, tx.init(params), params)
  assert np.all(np.asarray(u["w"]) == 0.0)
  assert np.all(np.isfinite(np.asarray(u["v"]))) and np.any(np.asarray(u["v"]) != 0)
  dion_state = state.inner_states[L.MATRIX].inner_state[0]
  assert int(dion_state.nonfinite_count["w"]) == 1
  assert int(dion_state.nonfinite_count["v"]) == 0


def test_dion_all_zero_gradients_after_steps_are_finite():
  params = {"w": _randn(0, (24, 40))}
  tx = D.scale_by_dion(0.25)
  update = jax.jit(tx.update)
  state = tx.init(params)
  u, state = update({"w": jnp.zeros((24, 40))}, state)  # B = 0: zero update
  assert np.all(np.asarray(u["w"]) == 0.0)
  u, state = update({"w": _randn(1, (24, 40))}, state)
  for _ in range(3):  # zero gradients: the momentum keeps driving finite updates
    u, state = update({"w": jnp.zeros((24, 40))}, state)
    assert np.all(np.isfinite(np.asarray(u["w"]))) and np.any(np.asarray(u["w"]) != 0)
  assert int(state.nonfinite_count["w"]) == 0


CM_MAKERS = {
    "momentum": lambda: optim.scale_by_complex_momentum(0.9, 0.3),
    "momentum_complex_buffer": lambda: optim.scale_by_complex_momentum(0.9, 0.3,
                                                                       complex_buffer=True),
    "adam": lambda: optim.scale_by_complex_adam(0.9, 0.3),
    "adam_complex_buffer": lambda: optim.scale_by_complex_adam(0.9, 0.3, complex_buffer=True),
}


def _state_without(state, field):
  return {k: v for k, v in state._asdict().items() if k not in field}


@pytest.mark.parametrize("make,value", [(m, [np.nan, np.inf][i % 2])
                                        for i, m in enumerate(CM_MAKERS)], ids=list(CM_MAKERS))
def test_complex_optimizers_skip_only_the_bad_leaf(make, value):
  tx = CM_MAKERS[make]()
  params = {"a": _randn(0, (5, 3)), "b": _randn(1, (4,))}
  update = jax.jit(tx.update)
  _, state = update({"a": _randn(2, (5, 3)), "b": _randn(3, (4,))}, tx.init(params))
  good = {"a": _randn(4, (5, 3)), "b": _randn(5, (4,))}
  bad = dict(good, a=_poison(good["a"], value))
  u, new = update(bad, state)
  clean_u, clean = update(good, state)
  assert np.all(np.asarray(u["a"]) == 0.0)
  np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(clean_u["b"]))
  for field, old in _state_without(state, ("count", "nonfinite_count")).items():
    np.testing.assert_array_equal(np.asarray(getattr(new, field)["a"]), np.asarray(old["a"]))
    np.testing.assert_array_equal(np.asarray(getattr(new, field)["b"]),
                                  np.asarray(getattr(clean, field)["b"]))
  assert int(new.nonfinite_count["a"]) == 1 and int(new.nonfinite_count["b"]) == 0
  for leaf in jax.tree.leaves((u, new)):
    assert np.all(np.isfinite(np.asarray(leaf)))


@pytest.mark.parametrize("make", list(CM_MAKERS), ids=list(CM_MAKERS))
def test_complex_optimizers_all_zero_gradients_are_finite(make):
  tx = CM_MAKERS[make]()
  params = {"a": jnp.zeros((5, 3))}
  state = tx.init(params)
  for _ in range(3):
    u, state = tx.update({"a": jnp.zeros((5, 3))}, state)
    assert np.all(np.asarray(u["a"]) == 0.0)
  assert int(state.nonfinite_count["a"]) == 0
