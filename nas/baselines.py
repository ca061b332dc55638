"""Dense and magnitude-pruned MLP baselines in the same family as the searched nets.

The dense baseline is the 2-7-...-7-1 MLP (all neurons on, one fixed
activation) trained with full-batch Adam on the MSE. The pruned baseline keeps
the ``k`` largest-magnitude real weights and hidden biases of the trained dense
net (the output bias always stays), so that its parameter count matches a
searched model's, and optionally fine-tunes the survivors with the pruning
mask fixed:

.. math::

  \\theta \\leftarrow \\theta \\odot M, \\qquad
  M_i = [\\, |\\theta_i| \\ge |\\theta|_{(k)} \\,].
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nas import encoding


class Trainable(NamedTuple):
  w: jax.Array  # [L + 1, 7, 7]
  b: jax.Array  # [L + 1, 7]


def dense_net(key: jax.Array, depth: int, activation: str = "tanh") -> encoding.Net:
  """A dense net with LeCun-normal weights, zero biases, every neuron on."""
  if activation not in encoding.ACTIVATIONS:
    raise ValueError(f"activation must be one of {encoding.ACTIVATIONS}, got {activation!r}.")
  real = encoding.real_entries(depth)
  fan_in = jnp.full((depth + 1, 1, 1), float(encoding.H)).at[0].set(float(encoding.NUM_INPUTS))
  w = jax.random.normal(key, real.w.shape) / jnp.sqrt(fan_in) * real.w
  act = jax.nn.one_hot(jnp.full((depth, encoding.H), encoding.ACTIVATIONS.index(activation)),
                       encoding.NUM_ACTS)
  return encoding.Net(w=w, b=jnp.zeros_like(real.b), act=act, mask=real.mask)


def trainable_mask(net: encoding.Net) -> Trainable:
  """Real weights and biases of ``net``'s depth (padding is never trained)."""
  real = encoding.real_entries(encoding.depth_of(net))
  return Trainable(real.w, real.b)


def train(net: encoding.Net, x: jax.Array, y: jax.Array, *, steps: int, learning_rate: float | jax.Array,
          keep: Trainable | None = None, activation: str | None = None) -> tuple[encoding.Net, jax.Array]:
  """Full-batch Adam on the MSE over the entries selected by ``keep`` (default: all real ones).

  ``activation`` names the net's single activation (a faster forward pass;
  None reads ``net.act``). Returns the trained net and the MSE before each
  step ``[steps]``.
  """
  keep = trainable_mask(net) if keep is None else keep
  tx = optax.adam(learning_rate)
  theta = Trainable(net.w * keep.w, net.b * keep.b)

  def loss_fn(theta):
    return jnp.mean((encoding.forward(net._replace(w=theta.w, b=theta.b), x, activation) - y) ** 2)

  def step(carry, _):
    theta, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(theta)
    grads = jax.tree.map(jnp.multiply, grads, keep)
    updates, opt_state = tx.update(grads, opt_state, theta)
    return (optax.apply_updates(theta, updates), opt_state), loss

  (theta, _), losses = jax.lax.scan(step, (theta, tx.init(theta)), None, length=steps)
  return net._replace(w=theta.w, b=theta.b), losses


def count(net: encoding.Net, keep: Trainable | None = None) -> jax.Array:
  """Non-zero real weights and hidden biases, plus the output bias."""
  keep = trainable_mask(net) if keep is None else keep
  depth = encoding.depth_of(net)
  weights = jnp.sum((net.w * keep.w) != 0)
  biases = jnp.sum((net.b[:depth] * keep.b[:depth]) != 0)
  return weights + biases + 1


def magnitude_prune(net: encoding.Net, target: jax.Array | int) -> tuple[encoding.Net, Trainable]:
  """Keeps the ``target - 1`` largest |real weight or hidden bias| (plus the output bias).

  ``target`` may be traced; ties at the threshold are all kept.
  """
  depth = encoding.depth_of(net)
  real = trainable_mask(net)
  hidden_b = real.b.at[depth].set(0.0)
  mags = jnp.concatenate([(jnp.abs(net.w) * real.w).ravel(), (jnp.abs(net.b) * hidden_b).ravel()])
  n_keep = jnp.clip(jnp.asarray(target, jnp.int32) - 1, 0, mags.size)
  ranked = jnp.sort(mags)[::-1]
  cut = jnp.where(n_keep > 0, ranked[jnp.maximum(n_keep - 1, 0)], jnp.inf)
  cut = jnp.maximum(cut, jnp.finfo(mags.dtype).tiny)  # never keep exact zeros
  keep = Trainable((jnp.abs(net.w) >= cut) * real.w,
                   jnp.maximum((jnp.abs(net.b) >= cut) * hidden_b, real.b - hidden_b))
  return net._replace(w=net.w * keep.w, b=net.b * keep.b), keep
