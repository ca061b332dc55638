"""Pure functions that label a parameter tree for optimizer routing.

Matrix optimizers such as Dion or Muon should only see true hidden weight
matrices; biases, norm gains, embeddings and the output head go to a scalar
optimizer (AdamW or Lion). ``ndim == 2`` alone cannot tell an embedding table
or an LM head from a hidden matrix, so labels come from the leaf *path* first
and the number of dimensions second::

    labels = label_params(params)        # {'embed': {'embedding': 'embedding'}, ...}
    tx = optax.partition({MATRIX: ..., VECTOR: ..., EMBEDDING: ..., HEAD: ...}, labels)

or pass `labeler()` (a callable) wherever optax accepts ``param_labels``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

MATRIX = "matrix"  # hidden weight matrix (2-D, or a stack of same-shape 2-D matrices)
VECTOR = "vector"  # 0-D / 1-D leaves: biases, norm scales, gains
EMBEDDING = "embedding"  # token / position embedding tables
HEAD = "head"  # output projection to the vocabulary / classes

LABELS = (MATRIX, VECTOR, EMBEDDING, HEAD)

DEFAULT_EMBEDDING_KEYS = ("embed", "wte", "wpe", "tok_emb", "pos_emb")
DEFAULT_HEAD_KEYS = ("head", "unembed", "lm_head", "logits")


def path_str(path: Sequence[Any]) -> str:
  """``'a/b/0/kernel'`` for a JAX key path (dict keys, attributes, indices)."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _matches(path: str, keys: Sequence[str]) -> bool:
  names = path.lower().split("/")
  return any(key in name for key in keys for name in names)


def label_leaf(path: str, ndim: int, *, embedding_keys: Sequence[str] = DEFAULT_EMBEDDING_KEYS,
               head_keys: Sequence[str] = DEFAULT_HEAD_KEYS) -> str:
  """Label of one leaf from its path string and number of dimensions.

  Order of the rules: a path component containing an embedding key gives
  `EMBEDDING`; one containing a head key gives `HEAD` (biases of the head
  included); otherwise ``ndim <= 1`` gives `VECTOR` and ``ndim >= 2`` `MATRIX`.
  """
  if _matches(path, embedding_keys):
    return EMBEDDING
  if _matches(path, head_keys):
    return HEAD
  return VECTOR if ndim <= 1 else MATRIX


def label_params(params: Any, *, embedding_keys: Sequence[str] = DEFAULT_EMBEDDING_KEYS,
                 head_keys: Sequence[str] = DEFAULT_HEAD_KEYS) -> Any:
  """Tree of labels (same structure as ``params``), see `label_leaf`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: label_leaf(path_str(path), jax.numpy.ndim(x),
                                 embedding_keys=embedding_keys, head_keys=head_keys), params)


def labeler(*, embedding_keys: Sequence[str] = DEFAULT_EMBEDDING_KEYS,
            head_keys: Sequence[str] = DEFAULT_HEAD_KEYS) -> Callable[[Any], Any]:
  """`label_params` with fixed keys, as a callable for ``optax.partition``."""
  return lambda params: label_params(params, embedding_keys=embedding_keys, head_keys=head_keys)


def resolve(labels: Any, params: Any) -> Any:
  """Label tree from a tree, a callable or ``None`` (the default `label_params`).

  Raises:
    ValueError: a label outside `LABELS`, naming the leaf path.
  """
  if labels is None:
    labels = label_params
  tree = labels(params) if callable(labels) else labels
  for path, label in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if label not in LABELS:
      raise ValueError(f"Unknown label {label!r} at {path_str(path)!r}; expected one of {LABELS}.")
  return tree


def count(labels: Any) -> dict[str, int]:
  """Number of leaves per label (for logging which parameters go where)."""
  out = dict.fromkeys(LABELS, 0)
  for label in jax.tree.leaves(labels):
    out[label] += 1
  return out
