"""Pure functions that label a parameter tree for optimizer routing.

Matrix optimizers such as Dion or Muon should only see true hidden weight
matrices; biases, norm gains, embeddings and the output head go to a scalar
optimizer (AdamW or Lion). ``ndim == 2`` alone cannot tell an embedding table
or an LM head from a hidden matrix, so labels come from the leaf *path* first
and the number of dimensions second::

    labels = label_params(params)        # {'embed': {'embedding': 'embedding'}, ...}
    tx = optax.partition({MATRIX: ..., VECTOR: ..., EMBEDDING: ..., HEAD: ...}, labels)

or pass `labeler()` (a callable) wherever optax accepts ``param_labels``.

Convolution kernels (Flax layout ``(*window, in, out)``) get their own label,
`CONV`: the matrix optimizers of `optim.dion` and `optim.routed` see each one as
the matrix ``(prod(window) * in, out)`` (the Muon convention: the fan-in of a
conv layer is its receptive field times its input channels) and reshape the
update back, so a ``(3, 3, in, out)`` kernel is one ``(9 in, out)`` matrix, not
nine ``(in, out)`` matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

MATRIX = "matrix"  # hidden weight matrix (2-D, or a stack of same-shape 2-D matrices)
VECTOR = "vector"  # 0-D / 1-D leaves: biases, norm scales, gains
EMBEDDING = "embedding"  # token / position embedding tables
HEAD = "head"  # output projection to the vocabulary / classes
CONV = "conv"  # convolution kernel (*window, in, out), optimized as a (prod(window) * in, out) matrix

LABELS = (MATRIX, VECTOR, EMBEDDING, HEAD, CONV)

DEFAULT_EMBEDDING_KEYS = ("embed", "wte", "wpe", "tok_emb", "pos_emb")
DEFAULT_HEAD_KEYS = ("head", "unembed", "lm_head", "logits")
DEFAULT_CONV_KEYS = ("conv",)


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
  included); otherwise ``ndim <= 1`` gives `VECTOR`; ``ndim == 4`` (a 2-D conv
  kernel ``(kh, kw, in, out)``) or ``ndim == 3`` under a path component
  containing ``'conv'`` (a 1-D conv kernel) gives `CONV`; any other
  ``ndim >= 2`` gives `MATRIX` (3-D leaves are stacks of matrices, e.g. scanned
  layers).
  """
  if _matches(path, embedding_keys):
    return EMBEDDING
  if _matches(path, head_keys):
    return HEAD
  if ndim <= 1:
    return VECTOR
  if ndim == 4 or (ndim == 3 and _matches(path, DEFAULT_CONV_KEYS)):
    return CONV
  return MATRIX


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
