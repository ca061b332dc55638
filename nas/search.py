"""Simultaneous weight and architecture search by optimising a latent code.

With the autoencoder frozen, SWAT-NN optimises a latent ``z`` (Adam, lr 0.1)
and a pruning threshold ``t`` (Adam, lr 1e-3, clamped to [0, 3]) so that the
MLP decoded by the depth-``L`` decoder fits a regression dataset. At step
``s`` the activation temperature is :math:`T_s = \\max(0.01, 1 - s/3000)`, and
the decoded numbers ``W, b, a, \\mu`` (``\\mu`` mask logits) give the soft net

.. math::

  m = \\sigma(\\mu), \\quad \\tilde m = \\sigma(200 (m - 0.5)), \\quad
  \\tilde W = W \\, \\sigma(200 (|W| - t)), \\quad
  \\alpha = \\mathrm{softmax}(a / T_s),

  \\mathcal{L} = \\mathrm{MSE}(\\hat f_{\\tilde W, b, \\alpha, \\tilde m}, y)
  + 10^{-4} \\sum_{ij} \\big(0.01\\, \\sigma(20 (|\\tilde W_{ij}| - t)) + 0.1 |\\tilde W_{ij}|\\big)
  - 0.4 \\, \\overline{\\mathrm{std}_j(m_{l})} + 0.001 \\, \\overline{m}.

The compactness terms use the raw sigmoid masks ``m`` (as the reference code
does); the sums run over real (non-padding) weights. After a warm-up the
parameters with the lowest total loss are kept; the final model zeroes
``|W| < t``, drops neurons with ``m < 0.5`` and takes the arg-max activation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nas import encoding

Decode = Callable[[jax.Array], jax.Array]  # z [7, d] -> raw [7, 56] of one depth


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Latent-search settings (defaults: the reference code)."""

  steps: int = 8001
  warmup: int = 3000  # the best total loss is taken from steps >= warmup
  anneal_steps: int = 3000  # T = max(min_temperature, 1 - step / anneal_steps)
  min_temperature: float = 0.01
  lr_z: float = 0.1
  lr_t: float = 1e-3
  max_threshold: float = 3.0  # t is clamped to [0, max_threshold]
  prune_sharpness: float = 200.0
  mask_sharpness: float = 200.0
  sparsity_coef: float = 1e-4
  count_coef: float = 0.01  # weight of sigmoid(count_sharpness (|W| - t)) in the sparsity term
  count_sharpness: float = 20.0
  l1_coef: float = 0.1  # weight of |W| in the sparsity term
  compact_coef: float = 0.4  # pushes masks to 0 / 1 (minus the mean std over neurons)
  active_coef: float = 1e-3  # fewer active neurons (mean mask)
  record_every: int = 50  # trace stride

  def validate(self) -> None:
    if self.steps < 1 or self.record_every < 1 or self.anneal_steps < 1:
      raise ValueError(f"steps, anneal_steps and record_every must be >= 1, got "
                       f"{self.steps}, {self.anneal_steps}, {self.record_every}.")
    if not 0 <= self.warmup < self.steps:
      raise ValueError(f"warmup must be in [0, steps), got {self.warmup} with steps={self.steps}.")
    if self.lr_z <= 0 or self.lr_t < 0:
      raise ValueError(f"lr_z must be > 0 and lr_t >= 0, got {self.lr_z}, {self.lr_t}.")
    if not 0 < self.min_temperature <= 1:
      raise ValueError(f"min_temperature must be in (0, 1], got {self.min_temperature}.")
    if self.max_threshold < 0:
      raise ValueError(f"max_threshold must be >= 0, got {self.max_threshold}.")

  def hyperparams(self) -> dict[str, jax.Array]:
    """The numeric settings as arrays (traced, so changing them does not recompile)."""
    skip = ("steps", "record_every", "lr_z", "lr_t")
    return {f.name: jnp.asarray(getattr(self, f.name), jnp.float32)
            for f in dataclasses.fields(self) if f.name not in skip}


def temperature(step: jax.Array | int, anneal_steps: jax.Array | float,
                min_temperature: jax.Array | float = 0.01) -> jax.Array:
  """Activation softmax temperature ``max(min_temperature, 1 - step / anneal_steps)``."""
  return jnp.maximum(min_temperature, 1.0 - jnp.asarray(step, jnp.float32) / anneal_steps)


def soft_net(raw: jax.Array, depth: int, threshold: jax.Array, temp: jax.Array,
             hp: dict[str, jax.Array]) -> tuple[encoding.Net, jax.Array]:
  """Soft-pruned, soft-masked net used during the search, and the raw masks ``m``."""
  net = encoding.parse(raw, depth)
  m = jax.nn.sigmoid(net.mask)
  w = net.w * jax.nn.sigmoid(hp["prune_sharpness"] * (jnp.abs(net.w) - threshold))
  return encoding.Net(w=w, b=net.b, act=jax.nn.softmax(net.act / temp, axis=-1),
                      mask=jax.nn.sigmoid(hp["mask_sharpness"] * (m - 0.5))), m


def search_loss(params: dict[str, jax.Array], decode: Decode, depth: int, x: jax.Array, y: jax.Array,
                temp: jax.Array, hp: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss and its terms for latent ``params = {"z", "t"}``."""
  net, m = soft_net(decode(params["z"]), depth, params["t"], temp, hp)
  mse = jnp.mean((encoding.forward(net, x) - y) ** 2)
  aw = jnp.abs(net.w)
  per_weight = hp["count_coef"] * jax.nn.sigmoid(hp["count_sharpness"] * (aw - params["t"])) + hp["l1_coef"] * aw
  sparsity = hp["sparsity_coef"] * jnp.sum(per_weight * encoding.real_entries(depth).w)
  compact = -hp["compact_coef"] * jnp.mean(jnp.std(m, axis=-1)) + hp["active_coef"] * jnp.mean(m)
  return mse + sparsity + compact, {"mse": mse, "sparsity": sparsity, "compact": compact}


class SearchState(NamedTuple):
  params: dict[str, jax.Array]  # {"z": [7, d], "t": ()}
  opt_state: Any
  best_loss: jax.Array  # inf until the warm-up ends
  best_params: dict[str, jax.Array]


class SearchOutput(NamedTuple):
  params: dict[str, jax.Array]  # selected {"z", "t"}
  best_loss: jax.Array  # total loss of the selection (inf if never selected)
  trace: dict[str, jax.Array]  # loss terms every record_every steps


def optimizer(cfg: SearchConfig) -> optax.GradientTransformation:
  """Adam(lr_z) on ``z`` and Adam(lr_t) on ``t``."""
  return optax.multi_transform({"z": optax.adam(cfg.lr_z), "t": optax.adam(cfg.lr_t)},
                               {"z": "z", "t": "t"})


def run_search(decode: Decode, depth: int, x: jax.Array, y: jax.Array, key: jax.Array,
               latent_shape: tuple[int, int], cfg: SearchConfig) -> SearchOutput:
  """Latent optimisation of one depth on one dataset (pure; jit / vmap it).

  ``z`` starts from N(0, 1) drawn with ``key`` and ``t`` from 0.
  """
  cfg.validate()
  hp = cfg.hyperparams()
  tx = optimizer(cfg)
  params = {"z": jax.random.normal(key, latent_shape), "t": jnp.zeros(())}
  grad_fn = jax.value_and_grad(search_loss, has_aux=True)

  def step(state: SearchState, s):
    temp = temperature(s, hp["anneal_steps"], hp["min_temperature"])
    (loss, terms), grads = grad_fn(state.params, decode, depth, x, y, temp, hp)
    better = (s >= hp["warmup"]) & (loss < state.best_loss)
    best_params = jax.tree.map(lambda new, old: jnp.where(better, new, old), state.params, state.best_params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = optax.apply_updates(state.params, updates)
    new["t"] = jnp.clip(new["t"], 0.0, hp["max_threshold"])
    state = SearchState(new, opt_state, jnp.where(better, loss, state.best_loss), best_params)
    return state, {"loss": loss, "temperature": temp, "threshold": state.params["t"], **terms}

  def block(state, s0):
    state, terms = jax.lax.scan(step, state, s0 + jnp.arange(cfg.record_every))
    return state, jax.tree.map(lambda v: v[-1], terms)

  init = SearchState(params, tx.init(params), jnp.asarray(jnp.inf), params)
  num_blocks = -(-cfg.steps // cfg.record_every)
  state, trace = jax.lax.scan(block, init, jnp.arange(num_blocks) * cfg.record_every)
  chosen = jax.tree.map(lambda b, p: jnp.where(jnp.isfinite(state.best_loss), b, p),
                        state.best_params, state.params)
  return SearchOutput(chosen, state.best_loss, trace)


def hard_net(raw: jax.Array, depth: int, threshold: jax.Array) -> encoding.Net:
  """Final model: ``|W| < t`` zeroed, neurons with ``sigmoid(mask) < 0.5`` off, arg-max activations."""
  net = encoding.parse(raw, depth)
  w = jnp.where(jnp.abs(net.w) >= threshold, net.w, 0.0) * encoding.real_entries(depth).w
  active = (jax.nn.sigmoid(net.mask) >= 0.5).astype(w.dtype)
  act = jax.nn.one_hot(jnp.argmax(net.act, axis=-1), encoding.NUM_ACTS, dtype=w.dtype)
  b = net.b * encoding.real_entries(depth).b
  # Weights and biases of dropped neurons are removed, as in the reference code.
  keep_in = jnp.concatenate([jnp.ones((1, encoding.H)).at[0, encoding.NUM_INPUTS:].set(0.0), active])
  keep_out = jnp.concatenate([active, jnp.ones((1, encoding.H)).at[0, 1:].set(0.0)])
  w = w * keep_in[:, :, None] * keep_out[:, None, :]
  return encoding.Net(w=w, b=b * keep_out, act=act, mask=active)


def count(net: encoding.Net) -> dict[str, jax.Array]:
  """Active hidden neurons and non-zero parameters (weights + active biases + output bias)."""
  active = jnp.sum(net.mask != 0, dtype=jnp.int32)
  weights = jnp.sum(net.w != 0, dtype=jnp.int32)
  return {"active_neurons": active, "nonzero_params": weights + active + 1}
