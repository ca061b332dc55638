"""Personal splits select exactly the intended leaves; partition round trips; store ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fed import models
from fed import personalization as pz

MLP_LEAVES = {
    "inp": ["inp/bias", "inp/kernel"],
    "out": ["out/bias", "out/kernel"],
    "hidden": ["hidden/0/bias", "hidden/0/kernel"],
    "adapters": [f"adapters/{i}/{p}/{w}" for i in (0, 1) for p in ("down", "up")
                 for w in ("bias", "kernel")],
}
EXPECTED = {  # split -> (personal groups, frozen groups)
    "none": ((), ("adapters",)),
    "input": (("inp",), ("adapters",)),
    "output": (("out",), ("adapters",)),
    "adapter": (("adapters",), ()),
    "full": (("inp", "out", "hidden"), ("adapters",)),
}


def _mlp():
  return models.pure_params(models.AdapterMLP([12, 8, 8, 3], adapter_dim=2, rngs=nnx.Rngs(0)))[1]


@pytest.mark.parametrize("split", pz.SPLITS)
def test_each_split_selects_exactly_the_intended_leaves(split):
  params = _mlp()
  assert sorted(pz.leaf_paths(params)) == sorted(sum(MLP_LEAVES.values(), []))
  labels = dict(zip(pz.leaf_paths(params), jax.tree.leaves(pz.label_params(params, split))))
  personal, frozen = EXPECTED[split]
  want = {p: (pz.PERSONAL if g in personal else pz.FROZEN if g in frozen else pz.SHARED)
          for g, paths in MLP_LEAVES.items() for p in paths}
  assert labels == want


def test_adapter_split_takes_norm_layers_and_exact_names_only():
  # A tree with a norm layer and a decoy whose name merely contains "out".
  params = {"inp": {"w": jnp.ones(2)}, "norms": {"scale": jnp.ones(2)},
            "adapters": [{"w": jnp.ones(2)}], "output_proj": {"w": jnp.ones(2)},
            "out": {"w": jnp.ones(2)}}
  ad = dict(zip(pz.leaf_paths(params), jax.tree.leaves(pz.label_params(params, "adapter"))))
  assert ad == {"adapters/0/w": "personal", "inp/w": "shared", "norms/scale": "personal",
                "out/w": "shared", "output_proj/w": "shared"}
  out = dict(zip(pz.leaf_paths(params), jax.tree.leaves(pz.label_params(params, "output"))))
  assert [p for p, l in out.items() if l == "personal"] == ["out/w"]


def test_char_model_splits():
  params = models.pure_params(models.CharGRU(20, embed=4, hidden=8, adapter_dim=2,
                                             rngs=nnx.Rngs(0)))[1]
  for split, head in (("input", "inp"), ("output", "out"), ("adapter", "adapters")):
    labels = dict(zip(pz.leaf_paths(params), jax.tree.leaves(pz.label_params(params, split))))
    personal = {p.split("/")[0] for p, l in labels.items() if l == pz.PERSONAL}
    assert personal == {head}


def test_partition_round_trip_and_counts():
  params = _mlp()
  part = pz.Partition(params, pz.label_params(params, "output"))
  shared, personal, frozen = part.split(params)
  assert set(personal) == {"out/bias", "out/kernel"}
  back = part.merge(shared, personal, frozen)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))
  assert part.count(pz.PERSONAL) == 8 * 3 + 3
  trained = sum(x.size for x in jax.tree.leaves(params)) - part.count(pz.FROZEN)
  assert part.personal_fraction == pytest.approx(27 / trained)


def test_store_gather_scatter():
  store = pz.stack({"w": jnp.arange(3.0)}, 5)
  assert store["w"].shape == (5, 3)
  idx = jnp.array([4, 1])
  new = pz.scatter(store, idx, {"w": jnp.ones((2, 3)) * 7})
  np.testing.assert_array_equal(pz.gather(new, idx)["w"], 7 * np.ones((2, 3)))
  np.testing.assert_array_equal(new["w"][jnp.array([0, 2, 3])], store["w"][jnp.array([0, 2, 3])])


def test_bad_splits_are_rejected():
  params = _mlp()
  with pytest.raises(ValueError, match="Unknown personalization split"):
    pz.label_params(params, "head")
  with pytest.raises(ValueError, match="selects no leaf"):
    pz.label_params(params, "input", pz.LayerNames(input=("embedding",)))
  with pytest.raises(ValueError, match="Unknown labels"):
    pz.Partition(params, jax.tree.map(lambda _: "mine", params))
