"""Small models for the federated experiments, with the layer names the splits use.

`AdapterMLP` names its layers ``inp`` (input layer), ``hidden``, ``adapters``
(one residual bottleneck adapter after each hidden activation) and ``out``
(output layer), matching `fed.personalization.LayerNames()`. An adapter is
``h + W_up relu(W_down h)`` with ``W_up`` initialised near zero (std 1e-3),
so a fresh adapter is almost the identity. The MLP has no normalization
layers.

`CharGRU` (Shakespeare next-character prediction) names its layers ``inp``
(embedding), ``cell`` (GRU), ``adapters`` and ``out``.

`classifier_fns` / `sequence_fns` turn a model's graphdef into the pure
``loss_fn(params, x, y) -> [B]`` and ``metric_fn`` the simulator needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class Adapter(nnx.Module):
  """Residual bottleneck adapter ``h + W_up relu(W_down h)``."""

  def __init__(self, width: int, bottleneck: int, *, rngs: nnx.Rngs):
    self.down = nnx.Linear(width, bottleneck, rngs=rngs)
    self.up = nnx.Linear(bottleneck, width, kernel_init=nnx.initializers.normal(1e-3), rngs=rngs)

  def __call__(self, h: jax.Array) -> jax.Array:
    return h + self.up(jax.nn.relu(self.down(h)))


class AdapterMLP(nnx.Module):
  """``inp -> relu -> adapter -> [hidden -> relu -> adapter]* -> out``; inputs are flattened.

  Args:
    sizes: ``(in, hidden_1, ..., hidden_k, out)`` with ``k >= 1``.
    adapter_dim: adapter bottleneck width.
    input_scale: inputs are multiplied by this first (1/255 for uint8 pixels).
  """

  def __init__(self, sizes: Sequence[int], *, adapter_dim: int = 16, input_scale: float = 1.0,
               rngs: nnx.Rngs):
    if len(sizes) < 3 or min(sizes) < 1:
      raise ValueError(f"AdapterMLP needs (in, hidden..., out) with >= 1 hidden layer, got {sizes}.")
    if adapter_dim < 1:
      raise ValueError(f"adapter_dim must be >= 1, got {adapter_dim}.")
    self.inp = nnx.Linear(sizes[0], sizes[1], rngs=rngs)
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[1:-2], sizes[2:-1])])
    self.adapters = nnx.List([Adapter(w, adapter_dim, rngs=rngs) for w in sizes[1:-1]])
    self.out = nnx.Linear(sizes[-2], sizes[-1], rngs=rngs)
    self.input_scale = input_scale

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32) * self.input_scale
    h = self.adapters[0](jax.nn.relu(self.inp(h)))
    for layer, adapter in zip(self.hidden, self.adapters[1:]):
      h = adapter(jax.nn.relu(layer(h)))
    return self.out(h)


class CharGRU(nnx.Module):
  """Character model: embedding -> GRU -> adapter -> logits at every position."""

  def __init__(self, vocab: int, *, embed: int = 8, hidden: int = 128, adapter_dim: int = 16,
               rngs: nnx.Rngs):
    self.inp = nnx.Embed(vocab, embed, rngs=rngs)
    self.cell = nnx.GRUCell(embed, hidden, rngs=rngs)
    self.adapters = nnx.List([Adapter(hidden, adapter_dim, rngs=rngs)])
    self.out = nnx.Linear(hidden, vocab, rngs=rngs)
    self.hidden = hidden

  def __call__(self, tokens: jax.Array) -> jax.Array:
    emb = self.inp(tokens)  # [B, T, E]
    carry = jnp.zeros((tokens.shape[0], self.hidden), emb.dtype)
    _, hs = _scan_cell(self.cell, carry, emb)
    return self.out(self.adapters[0](hs))


def _scan_cell(cell, carry, emb):
  def body(c, x_t):
    c, h = cell(c, x_t)
    return c, h
  carry, hs = jax.lax.scan(body, carry, jnp.swapaxes(emb, 0, 1))
  return carry, jnp.swapaxes(hs, 0, 1)


def _apply(graphdef, params, x):
  return nnx.merge(graphdef, params)(x)


def classifier_fns(graphdef: nnx.GraphDef):
  """``(loss_fn, metric_fn)`` for softmax classification with integer labels ``[B]``."""

  def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(_apply(graphdef, params, x), y)

  def metric_fn(params, x, y):
    logits = _apply(graphdef, params, x)
    return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, y),
            "acc": (jnp.argmax(logits, -1) == y).astype(jnp.float32)}
  return loss_fn, metric_fn


def sequence_fns(graphdef: nnx.GraphDef, pad_id: int = 0):
  """``(loss_fn, metric_fn)`` for next-token prediction; ``y`` ``[B, T]``, ``pad_id`` ignored.

  Per-example values are means over the example's non-pad positions.
  """

  def per_example(values, y):
    keep = (y != pad_id).astype(values.dtype)
    return jnp.sum(values * keep, -1) / jnp.maximum(keep.sum(-1), 1.0)

  def loss_fn(params, x, y):
    logits = _apply(graphdef, params, x)
    return per_example(optax.softmax_cross_entropy_with_integer_labels(logits, y), y)

  def metric_fn(params, x, y):
    logits = _apply(graphdef, params, x)
    return {"loss": per_example(optax.softmax_cross_entropy_with_integer_labels(logits, y), y),
            "acc": per_example((jnp.argmax(logits, -1) == y).astype(jnp.float32), y)}
  return loss_fn, metric_fn


def pure_params(model: nnx.Module):
  """``(graphdef, params)`` with params as a plain nested dict."""
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)
