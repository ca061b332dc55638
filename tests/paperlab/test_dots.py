"""paperlab.dots: the same values as the traced function, in the minor-contraction layout."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fed import simulate as sim
from paperlab import dots


def _mlp(p, x):
  h = jax.nn.relu(x @ p["w1"] + p["b1"])
  return h @ p["w2"]


def _params(key, d=64, h=32, o=4):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (d, h)) / 8, "b1": jnp.zeros(h),
          "w2": jax.random.normal(k2, (h, o)) / 6}


def _loss(p, x):
  return jnp.mean(jnp.square(_mlp(p, x)))


def _close(a, b, tol=1e-5):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def test_layout_puts_batch_first_and_contracting_last():
  # x^T g: a (k, m) operand contracted on dim 0 becomes its (m, k) transpose.
  assert (dots.minor_contraction_layout((((0,), (0,)), ((), ())), 2)
          == ((1, 0), (((1,), (0,)), ((), ()))))
  # Already (m, k) @ (k, n): nothing to do.
  assert (dots.minor_contraction_layout((((1,), (0,)), ((), ())), 2)
          == (None, (((1,), (0,)), ((), ()))))
  # Batched, contracting dim in the middle: (b, k, m) -> (b, m, k).
  perm, dims = dots.minor_contraction_layout((((1,), (1,)), ((0,), (0,))), 3)
  assert perm == (0, 2, 1) and dims == (((2,), (1,)), ((0,), (0,)))


@pytest.mark.parametrize("jit", [False, True])
def test_gradients_match_autodiff(jit):
  p = _params(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (16, 64))
  fn = dots.contract_minor(jax.value_and_grad(_loss))
  if jit:
    fn = jax.jit(fn)
  _close(fn(p, x), jax.value_and_grad(_loss)(p, x))


def test_batched_einsum_nested_jit_scan_and_vmap():
  def loss(p, x):
    h = jnp.einsum("bij,bjk->bik", x, jnp.broadcast_to(p["w1"], (x.shape[0],) + p["w1"].shape))
    h = jax.jit(jax.nn.gelu)(h)
    h, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ p["w3"]), None), h, None, length=2)
    return jnp.sum(h @ p["w2"])

  p = _params(jax.random.key(2))
  p["w3"] = jax.random.normal(jax.random.key(3), (32, 32)) / 6
  x = jax.random.normal(jax.random.key(4), (3, 5, 8, 64))  # vmapped over 3, batch dim 5
  want = jax.vmap(jax.grad(loss), in_axes=(None, 0))(p, x)
  got = jax.jit(jax.vmap(dots.contract_minor(jax.grad(loss)), in_axes=(None, 0)))(p, x)
  _close(got, want, 1e-4)


def test_an_interpreter_failure_falls_back_to_fn_with_a_warning(monkeypatch):
  def broken(*_):
    raise AttributeError("no such jaxpr field")
  monkeypatch.setattr(dots, "_eval", broken)
  p = _params(jax.random.key(7))
  x = jax.random.normal(jax.random.key(8), (16, 64))
  with pytest.warns(RuntimeWarning, match="no such jaxpr field"):
    got = dots.contract_minor(jax.grad(_loss))(p, x)
  _close(got, jax.grad(_loss)(p, x))


def test_errors_of_fn_itself_are_raised():
  def bad(p, x):
    return p["w1"] @ x  # (64, 32) @ (16, 64): shapes do not match
  with pytest.raises(TypeError):
    dots.contract_minor(bad)(_params(jax.random.key(9)), jnp.ones((16, 64)))


def test_weight_gradient_is_swapped_unless_it_fixes_an_output_sharding():
  jaxpr = jax.make_jaxpr(jax.grad(_loss))(_params(jax.random.key(10)), jnp.ones((16, 64))).jaxpr
  consumers = dots._sole_consumers(jaxpr)  # pylint: disable=protected-access
  grads = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"
           and dots._swappable(e, consumers.get(e.outvars[0]))]  # pylint: disable=protected-access
  assert len(grads) == 2  # dW1 and dW2, each dot(g, x) followed by a transpose
  pinned = grads[0].replace(params=dict(grads[0].params, out_sharding=object()))
  consumer = consumers[grads[0].outvars[0]]
  assert not dots._swappable(pinned, consumer)  # pylint: disable=protected-access


def test_disabled_is_scoped():
  assert dots.default_for_backend("cpu")
  assert not dots.default_for_backend("gpu")
  with dots.disabled():
    assert not dots.default_for_backend("cpu")
  assert dots.default_for_backend("cpu")


def _lhs_contractions(hlo: str):
  """``(lhs rank, lhs contracting dims)`` of every dot in an optimized HLO module."""
  ranks = {m.group(1): len(m.group(2).split(",")) if m.group(2) else 0
           for m in re.finditer(r"%([\w.\-]+) = \w+\[([\d,]*)\]", hlo)}
  out = []
  for m in re.finditer(r" dot\(%([\w.\-]+), [^)]*\),[^\n]*lhs_contracting_dims=\{([\d,]*)\}", hlo):
    out.append((ranks[m.group(1)], tuple(int(d) for d in m.group(2).split(","))))
  return out


def _client_step_hlo():
  p = _params(jax.random.key(5))
  loss = lambda p, x, y: jnp.square(_mlp(p, x)[:, 0] - y)
  phase = sim.Phase(train="shared", tx=optax.sgd(0.1))
  merge = lambda u, v, frozen: u
  x = jax.random.normal(jax.random.key(6), (4, 2, 16, 64))  # 4 clients x 2 steps x 16 rows
  y = jnp.zeros((4, 2, 16))
  mask = jnp.ones((4, 2, 16), bool)

  def train(p, x, y, mask):
    return sim.local_train(loss, merge, [phase], p, {}, {}, x, y, mask)[0]

  return jax.jit(jax.vmap(train, in_axes=(None, 0, 0, 0))).lower(p, x, y, mask).compile().as_text()


def test_client_step_has_no_dot_contracting_the_leading_dim_on_cpu():
  """The weight gradients of a vmapped local step reach XLA:CPU as (m, k) @ (k, n) products."""
  assert jax.default_backend() == "cpu"
  found = _lhs_contractions(_client_step_hlo())
  assert found, "no dot in the HLO (the parser no longer matches it)"
  assert all(dims == (rank - 1,) for rank, dims in found), found


def test_without_the_rewrite_the_step_has_leading_dim_contractions():
  """The check above can fail: XLA's own layout contracts the rows of x."""
  with dots.disabled():
    found = _lhs_contractions(_client_step_hlo())
  assert any(dims != (rank - 1,) for rank, dims in found), found
