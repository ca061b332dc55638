"""The multi-process data paths of the scripts, checked in one process with 8 devices.

Batches built shard by shard (each process its own rows) must equal the host
batches; the sharded supervised path must train and evaluate like the plain
one; padding the client axis for a mesh must not change what a round samples.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import lm, supervised
from paperlab import mesh as mesh_lib
from paperlab.models import MLP

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import baseline_mlp  # noqa: E402  pylint: disable=g-import-not-at-top
import dion as dion_script  # noqa: E402  pylint: disable=g-import-not-at-top
import fed_partial  # noqa: E402  pylint: disable=g-import-not-at-top


def test_window_batch_rows_are_that_slice_of_the_batch():
  ids = np.arange(1000, dtype=np.int32)
  x, y = lm.window_batch(ids, 8, 16, seed=3, step=5)
  xr, yr = lm.window_batch(ids, 8, 16, seed=3, step=5, rows=slice(2, 6))
  assert np.array_equal(xr, x[2:6]) and np.array_equal(yr, y[2:6])


def test_dion_batches_built_per_shard_equal_the_host_batches():
  mesh = mesh_lib.make_mesh("fsdp=4,tp=2")
  ids = np.random.default_rng(0).integers(0, 50, 3000).astype(np.int32)
  xs, ys = dion_script.train_batches(ids, 8, 12, 1, 40, 3, mesh)
  hx, hy = dion_script.train_batches(ids, 8, 12, 1, 40, 3)
  assert xs.sharding.is_equivalent_to(mesh_lib.sharding(mesh, None, mesh_lib.FSDP, None), 3)
  assert np.array_equal(np.asarray(xs), hx) and np.array_equal(np.asarray(ys), hy)


@pytest.mark.parametrize("field, value", [("batch_size", 6), ("eval_windows", 10),
                                          ("sweep_batch_sizes", (8, 2))])
def test_dion_batches_must_split_over_data_and_fsdp(field, value):
  cfg = dion_script.Config(mesh="data=2,fsdp=2,tp=2", **{field: value})
  with pytest.raises(ValueError, match=f"{field}=.* must be a multiple of 4"):
    cfg.validate()
  dion_script.Config(mesh="fsdp=2,tp=4", batch_size=6, eval_windows=10,
                     sweep_batch_sizes=(8, 2)).validate()  # tp does not split batches


def _mlp_problem():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((40, 16)).astype(np.float32)
  y = rng.integers(0, 3, 40).astype(np.int32)
  tx = optax.sgd(0.1, momentum=0.9)
  return x, y, tx


def test_sharded_supervised_path_trains_and_evaluates_like_the_plain_one():
  mesh = mesh_lib.make_mesh({mesh_lib.DATA: 8})
  x, y, tx = _mlp_problem()
  results = []
  for m in (None, mesh):
    graphdef, state = supervised.init_state(MLP([16, 8, 3], rngs=nnx.Rngs(0)), tx, m)
    step_fn = supervised.make_step_fn(graphdef, tx, x, y, batch_size=8, seed=0, mesh=m)
    state, chunk = step_fn(state, 0, 7)  # crosses an epoch boundary (5 batches per epoch)
    ev = supervised.evaluate(graphdef, state["params"], x[:30], y[:30], batch_size=12, mesh=m)
    results.append((state["params"], chunk, ev))
  (p0, c0, e0), (p1, c1, e1) = results
  assert all(x.sharding == mesh_lib.replicated(mesh) for x in jax.tree.leaves(p1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p0, p1)
  np.testing.assert_allclose(float(c0["loss"]), float(c1["loss"]), rtol=1e-6)
  # the last evaluation batch (6 examples over 8 devices) is padded and masked
  assert e0["test_acc"] == e1["test_acc"]
  np.testing.assert_allclose(e0["test_loss"], e1["test_loss"], rtol=1e-6)
  with pytest.raises(ValueError, match="multiple of the mesh's data axis"):
    supervised.make_step_fn(graphdef, tx, x, y, batch_size=12, seed=0, mesh=mesh)


def test_padded_client_axis_keeps_the_sampling():
  import fed  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  num, pad = 10, 6
  data = fed.ClientData(rng.standard_normal((num, 2, 4, 5)).astype(np.float32),
                        rng.integers(0, 3, (num, 2, 4)).astype(np.int32),
                        np.ones((num, 2, 4), bool), np.full(num, 8))
  padded = fed.ClientData(*(np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in data))
  params = {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)}
  loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(x @ p["w"], y)
  part = fed.Partition(params, fed.label_params(params, "none"))
  plain = fed.fedavg(loss, part, optax.sgd(0.5), clients_per_round=4)
  padded_algo = fed.fedavg(loss, part, optax.sgd(0.5), clients_per_round=4, num_clients=num)
  a, b = plain.init(params, num, jax.random.key(0)), padded_algo.init(params, num + pad, jax.random.key(0))
  for _ in range(3):
    assert np.array_equal(plain.sample(a, num), padded_algo.sample(b, num))
    a, _ = plain.round(a, data)
    b, _ = padded_algo.round(b, padded)
  np.testing.assert_allclose(a.shared["w"], b.shared["w"], atol=1e-6)
  with pytest.raises(ValueError, match="num_clients=3 must be >= clients_per_round=4"):
    fed.fedavg(loss, part, optax.sgd(0.5), clients_per_round=4, num_clients=3)


@pytest.mark.parametrize("config, message", [
    (baseline_mlp.Config(mesh="fsdp=8"), "data axis only"),
    (baseline_mlp.Config(mesh="data=3"), "batch_size=128 must be a multiple"),
    (fed_partial.Config(mesh="data=8"), "clients axis only"),
    (fed_partial.Config(mesh="clients=two"), "Bad mesh entry"),
])
def test_script_meshes_are_validated(config, message):
  with pytest.raises(ValueError, match=message):
    config.validate()
