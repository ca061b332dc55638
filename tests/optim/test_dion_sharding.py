"""Dion on 8 simulated devices: sharded == unsharded, state layout, DP compressed sync, HLO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from paperlab import mesh as mesh_lib
from optim import collectives
from optim import _dion as D

FSDP, TP, DATA = mesh_lib.FSDP, mesh_lib.TP, mesh_lib.DATA

# Leaf layouts: (fan_in, fan_out) with FSDP on one dim and TP on the other. "down"
# puts TP on fan_in, so its P side is the short dim (orientation rule overrides
# the shape rule); "stack" is a scanned-layer stack.
SHAPES = {"up": (64, 128), "down": (128, 64), "stack": (2, 64, 32)}
SPECS = {"up": (FSDP, TP), "down": (TP, FSDP), "stack": (None, FSDP, TP)}


def _specs(mesh):
  keep = lambda e: e if e in mesh.axis_names else None
  return {k: P(*(keep(e) for e in v)) for k, v in SPECS.items()}


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}


def _run(mesh, specs, steps=5, rank_fraction=0.5):
  tx = D.scale_by_dion(rank_fraction, mesh=mesh, specs=specs)
  put = lambda tree: jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)),
                                  tree, specs)
  params = put(_tree(0))
  state = jax.jit(tx.init)(params)
  layout = lambda st: [(x.sharding, x.dtype, x.shape) for x in jax.tree.leaves(st)]
  before = layout(state)
  update = jax.jit(tx.update)
  for i in range(steps):
    u, state = update(put(_tree(1 + i)), state)
    params = jax.tree.map(lambda a, b: a + 0.01 * b, params, u)
  after = layout(state)
  return params, state, before, after


@pytest.fixture(scope="module")
def single_device_run():
  mesh = mesh_lib.make_mesh({FSDP: 1, TP: 1}, devices=jax.devices()[:1])
  return _run(mesh, _specs(mesh))


def test_orientation_rule():
  kw = dict(rank_fraction=0.25, rank_multiple_of=1, fsdp_axis=FSDP, tp_axis=TP)
  down = D.plan_leaf("down", (128, 64), P(TP, FSDP), **kw)
  assert not down.p_last and (down.p_dim, down.q_dim) == (128, 64)
  flipped = D.plan_leaf("x", (128, 64), P(FSDP, TP), **kw)  # TP on fan_out: P side = 64
  assert flipped.p_last and (flipped.p_dim, flipped.q_dim) == (64, 128)
  assert D.plan_leaf("x", (128, 64), None, **kw).p_last is False  # shape rule: Q on short dim
  with pytest.raises(ValueError, match="same dim"):
    D.plan_leaf("x", (128, 64), P((FSDP, TP), None), **kw)


@pytest.mark.parametrize("axes", [pytest.param({FSDP: 8}, marks=pytest.mark.slow),
                                  pytest.param({TP: 8}, marks=pytest.mark.slow),
                                  {FSDP: 4, TP: 2}], ids=["fsdp8", "tp8", "fsdp4xtp2"])
def test_sharded_equals_unsharded(axes, single_device_run):
  mesh = mesh_lib.make_mesh(axes)
  params, state, before, after = _run(mesh, _specs(mesh))
  ref_params, ref_state, _, _ = single_device_run
  for got, want in [(params, ref_params), (state.momentum, ref_state.momentum),
                    (state.q, ref_state.q)]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         atol=1e-5, rtol=1e-5), got, want)
  # shardings, dtypes and shapes of the state unchanged by update
  for (s0, d0, n0), (s1, d1, n1) in zip(before, after):
    assert d0 == d1 and n0 == n1 and s0.is_equivalent_to(s1, len(n0)), (s0, s1)
  same = lambda x, spec: x.sharding.is_equivalent_to(NamedSharding(mesh, spec), x.ndim)
  assert same(state.q["up"], P(FSDP if FSDP in axes else None, None))  # Q rows on the FSDP dim
  assert same(state.momentum["down"], _specs(mesh)["down"])  # M laid out like the parameter


def test_hlo_moves_no_full_matrix():
  mesh = mesh_lib.make_mesh({FSDP: 4, TP: 2})
  m, n = 256, 512
  specs = {"w": P(FSDP, TP)}
  tx = D.scale_by_dion(0.25, mesh=mesh, specs=specs)
  x = {"w": jax.device_put(jnp.ones((m, n)), NamedSharding(mesh, specs["w"]))}
  state = jax.jit(tx.init)(x)
  hlo = jax.jit(tx.update).lower(x, state).compile().as_text()
  found = collectives.collectives(hlo)
  assert found, "expected all-reduces of the small factors"
  biggest = max(c.elements for c in found)
  assert biggest <= n * (m // 4) // 2, (biggest, found)  # P is (512/tp) x 64 at most
  assert all(c.elements < m * n // 4 for c in found)


def _dp_setup(num=4):
  mesh = mesh_lib.make_mesh({DATA: num}, devices=jax.devices()[:num])
  shape = (32, 48)
  rng = np.random.default_rng(0)
  grads = [jnp.asarray(rng.standard_normal((num,) + shape), jnp.float32) for _ in range(3)]
  return mesh, shape, grads


def test_compressed_dp_sync_matches_synchronous_dion():
  mesh, shape, grads = _dp_setup()
  num = mesh.shape[DATA]
  tx_dp = D.scale_by_dion(0.25, data_axis=DATA)
  tx_sync = D.scale_by_dion(0.25)
  x = jnp.zeros(shape)
  state0 = tx_dp.init(x)
  stacked = jax.tree.map(lambda a: jnp.stack([a] * num), state0)

  def local(g, st):
    st = jax.tree.map(lambda a: a[0], st)
    u, st = tx_dp.update(g[0], st)
    return u[None], jax.tree.map(lambda a: a[None], st)

  step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(DATA), P(DATA)),
                               out_specs=(P(DATA), P(DATA))))
  sync_state = tx_sync.init(x)
  for g in grads:
    u, stacked = step(g, stacked)
    u_sync, sync_state = tx_sync.update(jnp.mean(g, 0), sync_state)
    for i in range(num):  # every replica applies the same update as synchronous Dion
      np.testing.assert_allclose(np.asarray(u[i]), np.asarray(u_sync), atol=2e-5)
  moms = np.asarray(stacked.momentum)
  np.testing.assert_allclose(moms.mean(0), np.asarray(sync_state.momentum), atol=2e-5)
  assert np.abs(moms[0] - moms[1]).max() > 1e-2  # decoupled per-replica momenta
  np.testing.assert_allclose(np.asarray(stacked.q[0]), np.asarray(sync_state.q), atol=2e-5)

  def sync_fn(st):
    st = jax.tree.map(lambda a: a[0], st)
    return jax.tree.map(lambda a: a[None], D.synchronize(st, DATA))

  synced = jax.jit(jax.shard_map(sync_fn, mesh=mesh, in_specs=P(DATA), out_specs=P(DATA)))(stacked)
  for i in range(num):
    np.testing.assert_allclose(np.asarray(synced.momentum[i]), np.asarray(sync_state.momentum),
                               atol=2e-5)


@pytest.mark.slow
def test_full_rank_dp_averages_gradients_instead():
  mesh, shape, grads = _dp_setup()
  num = mesh.shape[DATA]
  tx = D.scale_by_dion(1.0, data_axis=DATA)  # (m + n) r >= m n: plain gradient all-reduce
  stacked = jax.tree.map(lambda a: jnp.stack([a] * num), tx.init(jnp.zeros(shape)))

  def local(g, st):
    st = jax.tree.map(lambda a: a[0], st)
    _, st = tx.update(g[0], st)
    return jax.tree.map(lambda a: a[None], st)

  step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(DATA), P(DATA)), out_specs=P(DATA)))
  for g in grads:
    stacked = step(g, stacked)
  moms = np.asarray(stacked.momentum)
  np.testing.assert_allclose(moms[0], moms[-1], atol=1e-6)
