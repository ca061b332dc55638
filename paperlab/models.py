"""Small Flax NNX models shared by several experiments."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
  """Fully connected network ``sizes[0] -> ... -> sizes[-1]``.

  The activation follows every layer but the last. Inputs of any shape are
  flattened after the batch axis.
  """

  def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs,
               activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, use_bias: bool = True):
    if len(sizes) < 2 or min(sizes) < 1:
      raise ValueError(f"MLP sizes must list >= 2 positive widths, got {tuple(sizes)}.")
    self.layers = nnx.List([nnx.Linear(a, b, use_bias=use_bias, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = self.activation(x)
    return x
