"""Parameter labelling for optimizer routing."""

import jax.numpy as jnp
import pytest
from flax import nnx

from optim import labels as L


def _params():
  return {
      "embed": {"embedding": jnp.zeros((50, 16))},
      "block_0": {"attn": {"kernel": jnp.zeros((16, 48)), "bias": jnp.zeros(48)},
                  "norm": {"scale": jnp.zeros(16)}},
      "stack": {"kernel": jnp.zeros((3, 16, 16))},
      "lm_head": {"kernel": jnp.zeros((16, 50)), "bias": jnp.zeros(50)},
  }


def test_labels_by_path_then_ndim():
  labels = L.label_params(_params())
  assert labels["embed"]["embedding"] == L.EMBEDDING
  assert labels["block_0"]["attn"]["kernel"] == L.MATRIX
  assert labels["block_0"]["attn"]["bias"] == L.VECTOR
  assert labels["block_0"]["norm"]["scale"] == L.VECTOR
  assert labels["stack"]["kernel"] == L.MATRIX
  assert labels["lm_head"]["kernel"] == L.HEAD
  assert labels["lm_head"]["bias"] == L.HEAD
  assert L.count(labels) == {L.MATRIX: 2, L.VECTOR: 2, L.EMBEDDING: 1, L.HEAD: 2, L.CONV: 0}


def test_custom_keys_and_callable():
  fn = L.labeler(embedding_keys=("tok",), head_keys=("out",))
  labels = fn({"tok": jnp.zeros((4, 4)), "out": jnp.zeros((4, 4)), "w": jnp.zeros((4, 4))})
  assert labels == {"tok": L.EMBEDDING, "out": L.HEAD, "w": L.MATRIX}


def test_nnx_state_paths():
  class Net(nnx.Module):

    def __init__(self):
      self.embed = nnx.Embed(10, 8, rngs=nnx.Rngs(0))
      self.hidden = nnx.Linear(8, 8, rngs=nnx.Rngs(1))
      self.head = nnx.Linear(8, 10, rngs=nnx.Rngs(2))

  state = nnx.state(Net(), nnx.Param)
  labels = L.label_params(state)
  flat = {L.path_str(p): v for p, v in __import__("jax").tree_util.tree_flatten_with_path(labels)[0]}
  assert flat["embed/embedding/value"] == L.EMBEDDING or flat.get("embed/embedding") == L.EMBEDDING
  hidden = {k: v for k, v in flat.items() if k.startswith("hidden")}
  assert sorted(hidden.values()) == [L.MATRIX, L.VECTOR]
  assert {v for k, v in flat.items() if k.startswith("head")} == {L.HEAD}


def test_resolve_rejects_unknown_label():
  with pytest.raises(ValueError, match="'w'"):
    L.resolve({"w": "muon"}, {"w": jnp.zeros((2, 2))})


def test_conv_kernels_get_their_own_label():
  params = {"Conv_0": {"kernel": jnp.zeros((3, 3, 1, 8)), "bias": jnp.zeros(8)},
            "conv1d": {"kernel": jnp.zeros((5, 4, 8))}, "stack": {"kernel": jnp.zeros((3, 4, 4))}}
  labels = L.label_params(params)
  assert labels["Conv_0"]["kernel"] == L.CONV and labels["conv1d"]["kernel"] == L.CONV
  assert labels["Conv_0"]["bias"] == L.VECTOR and labels["stack"]["kernel"] == L.MATRIX
