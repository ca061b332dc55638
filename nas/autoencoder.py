"""Multi-scale transformer autoencoder over encoded MLPs, trained by a functional loss.

The encoder reads the 7 rows of an encoded MLP (``[7, 56, 2]``, see
`nas.encoding`) as 7 tokens and returns a latent ``z`` of shape ``[7, d]``.
There is one decoder per depth ``L = 1..4``; decoder ``L`` maps ``z`` to
``[7, 56]`` numbers parsed with the depth-``L`` layout (weights, biases,
activation logits, mask logits). The loss is functional: each decoded MLP is
run on the teacher's input points and the best decoder counts,

.. math::

  \\mathcal{L} = \\frac{1}{B} \\sum_b \\min_{L} \\frac{1}{P} \\sum_p
  \\big(\\hat f_{L}(D_L(E(x_b)))(u_p) - f_b(u_p)\\big)^2 .

The paper's loss has no weight-reconstruction term. `make_step_fn` can add
one (`reconstruction_loss`, on the decoder of the teacher's depth only) and
scale down the functional term; with the paper's loss alone a small model
trained for a few thousand steps does not learn to reconstruct the teachers.
The paper uses GPT-2 stacks; here each stack is a small pre-LN, bias-free Flax
NNX transformer (no pretrained weights are needed by the method).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nas import encoding


TEACHER_PRNG = "rbg"  # PRNG implementation for the random teachers


@dataclasses.dataclass(frozen=True)
class AEConfig:
  """Sizes of the autoencoder."""

  d_model: int = 64  # token width (GPT-2 small: 768)
  num_heads: int = 4
  enc_layers: int = 1  # transformer blocks in the encoder
  dec_layers: int = 1  # transformer blocks in each of the 4 decoders
  mlp_ratio: int = 4

  def validate(self) -> None:
    if self.d_model < 1 or self.num_heads < 1 or self.d_model % self.num_heads:
      raise ValueError(f"d_model ({self.d_model}) must be a positive multiple of num_heads ({self.num_heads}).")
    if self.enc_layers < 1 or self.dec_layers < 1 or self.mlp_ratio < 1:
      raise ValueError(f"enc_layers, dec_layers and mlp_ratio must be >= 1, got "
                       f"{self.enc_layers}, {self.dec_layers}, {self.mlp_ratio}.")


class Block(nnx.Module):
  """Pre-LN transformer block without biases: self-attention, then a GELU MLP."""

  def __init__(self, d: int, num_heads: int, mlp_ratio: int, *, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.ln1 = nnx.LayerNorm(d, use_bias=False, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, use_bias=False, rngs=rngs)
    self.proj = nnx.Linear(d, d, use_bias=False, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, use_bias=False, rngs=rngs)
    self.fc1 = nnx.Linear(d, mlp_ratio * d, use_bias=False, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_ratio * d, d, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    *lead, n, d = x.shape
    hd = d // self.num_heads
    q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
    q, k, v = (t.reshape(*lead, n, self.num_heads, hd) for t in (q, k, v))
    att = jax.nn.softmax(jnp.einsum("...qhc,...khc->...hqk", q, k) / jnp.sqrt(hd), axis=-1)
    x = x + self.proj(jnp.einsum("...hqk,...khc->...qhc", att, v).reshape(*lead, n, d))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class Stack(nnx.Module):
  """Transformer blocks followed by a final LayerNorm."""

  def __init__(self, cfg: AEConfig, num_layers: int, *, rngs: nnx.Rngs):
    self.blocks = nnx.List([Block(cfg.d_model, cfg.num_heads, cfg.mlp_ratio, rngs=rngs)
                            for _ in range(num_layers)])
    self.ln = nnx.LayerNorm(cfg.d_model, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.blocks:
      x = block(x)
    return self.ln(x)


class Decoder(nnx.Module):
  """Latent ``[..., 7, d]`` -> raw ``[..., 7, 56]`` numbers of one depth."""

  def __init__(self, cfg: AEConfig, *, rngs: nnx.Rngs):
    self.stack = Stack(cfg, cfg.dec_layers, rngs=rngs)
    self.head = nnx.Linear(cfg.d_model, encoding.WIDTH, rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    return self.head(self.stack(z))


class Autoencoder(nnx.Module):
  """Row-token encoder and one decoder per depth."""

  def __init__(self, cfg: AEConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.embed = nnx.Linear(2 * encoding.WIDTH, cfg.d_model, use_bias=False, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (encoding.H, cfg.d_model)))
    self.encoder = Stack(cfg, cfg.enc_layers, rngs=rngs)
    self.decoders = nnx.List([Decoder(cfg, rngs=rngs) for _ in range(encoding.MAX_DEPTH)])

  def encode(self, tensors: jax.Array) -> jax.Array:
    """``[..., 7, 56, 2]`` -> latent ``[..., 7, d]``."""
    rows = tensors.reshape(*tensors.shape[:-2], 2 * encoding.WIDTH)
    return self.encoder(self.embed(rows) + self.pos[...])

  def decode(self, z: jax.Array, depth: int) -> jax.Array:
    """Latent -> raw ``[..., 7, 56]`` output of the depth-``depth`` decoder."""
    return self.decoders[depth - 1](z)


def soft_net(raw: jax.Array, depth: int, temperature: jax.Array | float = 1.0) -> encoding.Net:
  """Decoder numbers -> soft `Net`: softmax(logits / T) activations, sigmoid masks."""
  net = encoding.parse(raw, depth)
  return net._replace(act=jax.nn.softmax(net.act / temperature, axis=-1),
                      mask=jax.nn.sigmoid(net.mask))


def decoder_losses(model: Autoencoder, z: jax.Array, x: jax.Array, y: jax.Array,
                   normalize: bool = False) -> jax.Array:
  """Output MSE ``[4, B]`` of each depth's decoded MLP against teacher outputs ``y`` ``[B, P]``.

  With ``normalize`` each teacher's MSE is divided by ``var(y_b) + 1`` (an
  option not in the paper, to keep teachers with huge outputs from dominating).
  """
  raws = [model.decode(z, depth) for depth in range(1, encoding.MAX_DEPTH + 1)]
  return _output_losses(raws, x, y, normalize)


def _output_losses(raws: list[jax.Array], x: jax.Array, y: jax.Array, normalize: bool) -> jax.Array:
  losses = []
  for depth, raw in enumerate(raws, start=1):
    pred = encoding.batched_forward(soft_net(raw, depth), x)
    losses.append(jnp.mean((pred - y) ** 2, axis=-1))
  losses = jnp.stack(losses)
  if normalize:
    losses = losses / (jnp.var(y, axis=-1) + 1.0)
  return losses


def reconstruction_loss(raw: jax.Array, tensors: jax.Array, depth: int) -> jax.Array:
  """Per-teacher loss ``[B]`` of decoder output ``raw`` ``[B, 7, 56]`` against encoded teachers.

  Not in the paper. Only entries that carry meaning for a depth-``depth`` net
  count (`encoding.real_entries`): the mean squared error of the weights and
  biases, plus the cross-entropy of the activation logits against the
  teacher's one-hot activations, plus the binary cross-entropy of the mask
  logits against the teacher's 0/1 masks (both averaged over neurons).
  """
  target = encoding.decode(tensors, depth)
  net = encoding.parse(raw, depth)
  real = encoding.real_entries(depth)
  sq = (jnp.sum(real.w * (net.w - target.w) ** 2, axis=(-3, -2, -1))
        + jnp.sum(real.b * (net.b - target.b) ** 2, axis=(-2, -1)))
  weights = sq / (jnp.sum(real.w) + jnp.sum(real.b))
  act = -jnp.mean(jnp.sum(target.act * jax.nn.log_softmax(net.act, axis=-1), axis=-1), axis=(-2, -1))
  mask = jnp.mean(optax.sigmoid_binary_cross_entropy(net.mask, target.mask), axis=(-2, -1))
  return weights + act + mask


def functional_loss(losses: jax.Array) -> jax.Array:
  """Mean over the batch of the min over decoders of ``losses`` ``[4, B]``."""
  return jnp.mean(jnp.min(losses, axis=0))


def init_state(model: Autoencoder, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, dict[str, Any]]:
  """``(graphdef, {"params", "opt_state"})`` of a fresh model."""
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  return graphdef, {"params": params, "opt_state": tx.init(params)}


def bind(graphdef: nnx.GraphDef, params: Any) -> Autoencoder:
  """The module with ``params`` (a pure dict from `init_state`)."""
  return nnx.merge(graphdef, params)


def _depth_reconstruction(raws: list[jax.Array], tensors: jax.Array, depth: int) -> jax.Array:
  return reconstruction_loss(raws[depth - 1], tensors, depth)


def make_step_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *, batch_size: int,
                 num_points: int, seed: int, normalize: bool = False, functional_weight: float = 1.0,
                 recon_weight: float = 0.0, activation: str | None = None
                 ) -> Callable[[Any, int, int], tuple[Any, dict]]:
  """A `paperlab.loop.train` step function; teachers are drawn inside the jitted step.

  The training loss is ``functional_weight * functional_loss + recon_weight *
  mean(reconstruction_loss)``, the reconstruction on the decoder of the
  batch's depth; the defaults are the paper's (functional loss only). The
  teacher batch of absolute step ``s`` comes from ``fold_in(key(seed), s)``,
  so a resumed run sees the same batches. The keys use the ``rbg`` generator:
  on XLA:CPU it compiles about 5x faster than the default threefry.

  ``activation`` (one of `nas.encoding.ACTIVATIONS`) trains on teachers whose
  neurons all use it: the fixed-activation autoencoder of the ablation.

  Chunk metrics: ``loss`` (the functional loss, whatever the weights),
  ``recon`` (the reconstruction loss, also when its weight is 0) and
  ``best_decoder_is_teacher_depth``.
  """
  base = jax.random.key(seed, impl=TEACHER_PRNG)
  recon_by_depth = [functools.partial(_depth_reconstruction, depth=d) for d in range(1, encoding.MAX_DEPTH + 1)]

  def one_step(state, step):
    batch = encoding.sample_teachers(jax.random.fold_in(base, step), batch_size, num_points,
                                     activation=activation)

    def loss_fn(params):
      model = bind(graphdef, params)
      z = model.encode(batch.tensors)
      raws = [model.decode(z, depth) for depth in range(1, encoding.MAX_DEPTH + 1)]
      losses = _output_losses(raws, batch.x, batch.y, normalize)
      func = functional_loss(losses)
      recon = jnp.mean(jax.lax.switch(batch.depth - 1, recon_by_depth, raws, batch.tensors))
      total = functional_weight * func
      if recon_weight:
        total = total + recon_weight * recon
      return total, (func, recon, losses)

    (_, (loss, recon, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    correct_depth = jnp.mean(jnp.argmin(losses, axis=0) + 1 == batch.depth)
    return {"params": params, "opt_state": opt_state}, (loss, recon, correct_depth)

  @jax.jit
  def chunk(state, steps):
    state, (loss, recon, correct) = jax.lax.scan(one_step, state, steps)
    return state, {"loss": loss.mean(), "recon": recon.mean(), "best_decoder_is_teacher_depth": correct.mean()}

  def step_fn(state, step, count):
    return chunk(state, jnp.arange(step, step + count))

  return step_fn


def make_eval_fn(graphdef: nnx.GraphDef, *, seed: int, nets_per_depth: int,
                 num_points: int, activation: str | None = None) -> Callable[[Any], dict[str, jax.Array]]:
  """Functional loss on a fixed held-out set of random MLPs (every depth).

  Returns ``params -> {"heldout_loss", "heldout_loss_median",
  "heldout_loss_normalized", "heldout_loss_depth<L>"}`` (per-net min-over-decoder
  MSE; normalized divides each by ``var(y) + 1``). ``activation`` fixes the
  held-out teachers' activation as in `make_step_fn`.
  """
  key = jax.random.key(seed, impl=TEACHER_PRNG)
  batches = [encoding.sample_teachers(jax.random.fold_in(key, d), nets_per_depth, num_points, depth=d,
                                      activation=activation)
             for d in range(1, encoding.MAX_DEPTH + 1)]

  @jax.jit
  def evaluate(params):
    model = bind(graphdef, params)
    out, raw, norm = {}, [], []
    for d, batch in enumerate(batches, start=1):
      losses = decoder_losses(model, model.encode(batch.tensors), batch.x, batch.y)
      per_net = jnp.min(losses, axis=0)
      out[f"heldout_loss_depth{d}"] = per_net.mean()
      raw.append(per_net)
      norm.append(per_net / (jnp.var(batch.y, axis=-1) + 1.0))
    out["heldout_loss"] = jnp.concatenate(raw).mean()
    out["heldout_loss_median"] = jnp.median(jnp.concatenate(raw))
    out["heldout_loss_normalized"] = jnp.concatenate(norm).mean()
    return out

  return evaluate
