"""Optimisers, pure train / eval steps and the step function used by the loop.

Forward and feedback parameters form two Optax groups (``optax.partition``);
each group gets its own chain, as in the reference implementation:

.. math::

  g \\leftarrow \\mathrm{GC}(g) \\;(\\text{optional}), \\quad
  g \\leftarrow g \\cdot \\min\\big(1, \\tfrac{c}{\\|g\\|_{\\text{group}}}\\big), \\quad
  m \\leftarrow \\mu m + g + \\lambda\\theta, \\quad
  \\theta \\leftarrow \\theta - \\eta_t m

with a per-epoch cosine schedule for ``\\eta_t`` and an optional linear
warm-up that scales the *loss* by ``min(1, (t+1)/T_w)`` (the reference scales
the loss, not the learning rate, which differs once clipping is active).
The backprop baseline uses the same chains and loop with the end-to-end loss.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ccl_jax import losses
from ccl_jax.models import CCLNet
from paperlab import data as data_lib

Array = jax.Array
LossFn = Callable[..., tuple[Array, tuple[dict[str, Array], Array]]]
GROUPS = ("forward", "feedback")


class OptimConfig(NamedTuple):
  """SGD settings shared by both parameter groups.

  Attributes:
    learning_rate: peak learning rate.
    momentum: heavy-ball momentum (0 = plain SGD).
    weight_decay: L2 coefficient added to the gradient (PyTorch SGD style).
    clip_norm: global-norm clip applied per group; ``None`` disables it.
    cosine_epochs: length of the per-epoch cosine schedule; 0 = constant.
    eta_min: final learning rate of the cosine schedule.
    warmup_steps: loss warm-up length in steps; 0 = none.
    grad_centralization: subtract each weight gradient's per-output mean.
    steps_per_epoch: used by the per-epoch cosine schedule.
  """
  learning_rate: float = 1.0
  momentum: float = 0.0
  weight_decay: float = 0.0
  clip_norm: float | None = 1.0
  cosine_epochs: int = 0
  eta_min: float = 1e-3
  warmup_steps: int = 0
  grad_centralization: bool = False
  steps_per_epoch: int = 1


def centralize_gradients() -> optax.GradientTransformation:
  """Gradient centralisation (Yong et al., 2020) for matrix / conv kernels.

  .. math::

    g_{\\ldots, o} \\leftarrow g_{\\ldots, o} - \\mathrm{mean}_{\\ldots}(g_{\\ldots, o})

  The mean runs over every axis but the last (the output axis of Flax
  ``Linear`` and ``Conv`` kernels); vectors (biases) pass unchanged.

  Returns:
    A stateless ``optax.GradientTransformation``.
  """

  def update_fn(updates, state, params=None):
    del params

    def centre(g):
      if g.ndim < 2:
        return g
      return g - jnp.mean(g, axis=tuple(range(g.ndim - 1)), keepdims=True)

    return jax.tree.map(centre, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      update_fn)


def cosine_per_epoch(learning_rate: float, *, steps_per_epoch: int,
                     epochs: int, eta_min: float) -> optax.Schedule:
  """PyTorch ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch."""

  def schedule(count):
    epoch = jnp.minimum(count // steps_per_epoch, epochs)
    return eta_min + (learning_rate - eta_min) * 0.5 * (
        1.0 + jnp.cos(math.pi * epoch / epochs))

  return schedule


def group_labels(params: Any) -> Any:
  """Labels each leaf ``forward`` (inside a ``fwd`` map) or ``feedback``."""

  def label(path, _):
    names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
    if "fwd" in names:
      return "forward"
    if "bwd" in names:
      return "feedback"
    raise ValueError(f"parameter {jax.tree_util.keystr(path)} belongs to "
                     "neither a 'fwd' nor a 'bwd' map")

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  """Two independent SGD chains, one for the forward and one for the feedback net."""
  if cfg.cosine_epochs > 0:
    lr = cosine_per_epoch(cfg.learning_rate, steps_per_epoch=cfg.steps_per_epoch,
                          epochs=cfg.cosine_epochs, eta_min=cfg.eta_min)
  else:
    lr = cfg.learning_rate

  def chain():
    parts = [centralize_gradients()] if cfg.grad_centralization else []
    if cfg.clip_norm is not None:
      parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts += [optax.add_decayed_weights(cfg.weight_decay),
              optax.sgd(lr, momentum=cfg.momentum)]
    return optax.chain(*parts)

  return optax.partition({g: chain() for g in GROUPS}, group_labels)


def warmup_factor(step: Array, warmup_steps: int) -> Array:
  """``min(1, (step+1)/warmup_steps)``; 1 when ``warmup_steps == 0``."""
  return jnp.minimum(1.0, (step + 1) / jnp.maximum(warmup_steps, 1))


class Trainer(NamedTuple):
  """Everything a run needs that is not an array: structure and functions.

  Attributes:
    graphdef: the model's NNX graph definition (``nnx.split``).
    tx: the two-group optimiser.
    loss_fn: :func:`ccl_jax.losses.ccl_loss` or :func:`ccl_jax.losses.bp_loss`.
    loss_cfg: loss hyperparameters (its ``kind`` also picks accuracy vs MSE).
    warmup_steps: loss warm-up length.
  """
  graphdef: Any
  tx: optax.GradientTransformation
  loss_fn: LossFn
  loss_cfg: losses.LossConfig
  warmup_steps: int = 0

  def init(self, params: Any) -> dict[str, Any]:
    return {"params": params, "opt_state": self.tx.init(params)}

  @classmethod
  def create(cls, model: CCLNet, tx: optax.GradientTransformation,
             loss_fn: LossFn, loss_cfg: losses.LossConfig,
             warmup_steps: int = 0) -> tuple["Trainer", dict[str, Any]]:
    """Splits ``model`` into a trainer and its state ``{params, opt_state}``.

    Parameters are kept as a pure nested dict (what orbax stores best).
    """
    graphdef, state = nnx.split(model)
    trainer = cls(graphdef, tx, loss_fn, loss_cfg, warmup_steps)
    return trainer, trainer.init(nnx.to_pure_dict(state))

  def model(self, params: Any) -> CCLNet:
    return nnx.merge(self.graphdef, params)

  def train_step(self, state: dict[str, Any], x: Array, y: Array,
                 step: Array) -> tuple[dict[str, Any], dict[str, Array]]:
    """One optimisation step (pure)."""

    def objective(params):
      loss, aux = self.loss_fn(self.model(params), x, y, self.loss_cfg)
      return loss * warmup_factor(step, self.warmup_steps), (loss, aux)

    grads, (loss, (terms, out)) = jax.grad(objective, has_aux=True)(
        state["params"])
    updates, opt_state = self.tx.update(grads, state["opt_state"],
                                        state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, **terms}
    if self.loss_cfg.kind != "ae":
      metrics["train_acc"] = jnp.mean(jnp.argmax(out, -1) == y)
    return {"params": params, "opt_state": opt_state}, metrics

  def eval_batch(self, params: Any, x: Array, y: Array) -> dict[str, Array]:
    """Sums (not means) of the test metrics over one batch."""
    out = self.model(params)(x)
    if self.loss_cfg.kind == "ae":
      return {"mse": jnp.sum(jnp.mean((out - x) ** 2, axis=(1, 2, 3)))}
    ce = optax.softmax_cross_entropy_with_integer_labels(out, y)
    return {"ce": jnp.sum(ce), "acc": jnp.sum(jnp.argmax(out, -1) == y)}


def evaluate(eval_batch: Callable, params: Any, images: Array, labels: Array,
             batch_size: int = 1000) -> dict[str, float]:
  """Mean test metrics over a dataset, in fixed-size chunks (last one smaller)."""
  n = images.shape[0]
  totals: dict[str, float] = {}
  for start in range(0, n, batch_size):
    sums = eval_batch(params, images[start:start + batch_size],
                      labels[start:start + batch_size])
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return {k: v / n for k, v in totals.items()}


def epoch_batch_indices(num_examples: int, batch_size: int, seed: int,
                        start: int, count: int,
                        batches_per_epoch: int | None = None) -> np.ndarray:
  """`paperlab.data.batch_indices`, optionally using only the first batches.

  With ``batches_per_epoch = B`` every epoch visits only the first ``B``
  batches of its permutation (the reference autoencoder uses 101), so step
  ``s`` maps to position ``s mod B`` of epoch ``s div B``.
  """
  full = data_lib.steps_per_epoch(num_examples, batch_size)
  if batches_per_epoch is None or batches_per_epoch >= full:
    return data_lib.batch_indices(num_examples, batch_size, seed, start, count)
  rows = [data_lib.batch_indices(num_examples, batch_size, seed,
                                 (s // batches_per_epoch) * full +
                                 s % batches_per_epoch, 1)[0]
          for s in range(start, start + count)]
  return np.stack(rows)


def make_step_fn(trainer: Trainer, images: Array, labels: Array, *,
                 batch_size: int, seed: int, scan: bool = True,
                 batches_per_epoch: int | None = None):
  """Returns ``step_fn(state, step, n) -> (state, metrics)`` for the loop.

  The data stay on device; only the ``[n, batch]`` index array
  (`paperlab.data.batch_indices`, a pure function of ``(seed, step)``) is sent
  per call. With ``scan=True`` the ``n`` steps run in one ``lax.scan`` (fast for
  MLPs); with ``scan=False`` a Python loop calls a jitted single step, the
  right choice for conv nets on XLA:CPU (conv backward inside ``scan`` is
  ~25x slower there). Metrics are means over the ``n`` steps.
  ``batches_per_epoch``: see :func:`epoch_batch_indices`.
  """
  num_examples = images.shape[0]

  # The data are passed as arguments, not closed over: closed-over arrays
  # become compile-time constants of the jitted program.
  def one(state, images, labels, idx, step):
    return trainer.train_step(state, images[idx], labels[idx], step)

  @jax.jit
  def many(state, images, labels, idx, step0):
    def body(st, inp):
      i, ids = inp
      return one(st, images, labels, ids, step0 + i)
    state, mets = lax.scan(body, state, (jnp.arange(idx.shape[0]), idx))
    return state, jax.tree.map(jnp.mean, mets)

  one_jit = jax.jit(one)

  def step_fn(state, step, n):
    idx = jnp.asarray(epoch_batch_indices(num_examples, batch_size, seed,
                                          step, n, batches_per_epoch))
    if scan:
      return many(state, images, labels, idx, jnp.asarray(step))
    mets = []
    for i in range(n):
      state, m = one_jit(state, images, labels, idx[i], jnp.asarray(step + i))
      mets.append(m)
    return state, jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *mets)

  return step_fn


def prepare_inputs(images: np.ndarray, *, flat: bool, size: int | None = None,
                   mean: np.ndarray | None = None,
                   std: np.ndarray | None = None) -> np.ndarray:
  """uint8 ``[N, H, W, C]`` -> float32 network inputs.

  Args:
    images: uint8 images.
    flat: return ``[N, H*W*C]`` (MLP) instead of NHWC.
    size: resize (bilinear) to ``size x size`` first, e.g. 28 -> 32 for the
      CNN and the autoencoder; ``None`` keeps the size.
    mean: per-channel mean of the [0, 1] training images; with ``std``
      standardises the inputs (``None``: keep [0, 1]).
    std: per-channel standard deviation, see ``mean``.
  """
  x = data_lib.to_float(images)
  if size is not None and x.shape[1:3] != (size, size):
    x = np.asarray(jax.image.resize(x, (x.shape[0], size, size, x.shape[3]),
                                    "bilinear"))
  if mean is not None:
    x = (x - mean) / std
  return x.reshape(x.shape[0], -1) if flat else x
