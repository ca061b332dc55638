"""Route hidden matrices and scalar-optimizer groups with one set of labels.

A matrix optimizer (Dion, Muon, or plain AdamW for a baseline) only sees the
leaves labelled `optim.labels.MATRIX`; vectors, embeddings and the output head
always get the same scalar optimizer (AdamW or Lion), so comparisons between
matrix optimizers hold the scalar optimizer fixed (the paper's research data
shows the scalar choice moves final loss by more than the matrix choice).

Scalar groups, as in the Dion reference training code:

* vectors (biases, norm gains): ``scalar_b1, scalar_b2``, weight decay
  ``scalar_weight_decay`` (default 0);
* embeddings: betas ``(0.95, 0.98)``, no weight decay;
* head: betas ``(0.95, 0.98)``, no weight decay, learning rate times
  ``1/sqrt(fan_in)`` with Lion and times 1 with AdamW.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax import lax
from optax.contrib import MuonDimensionNumbers

from optim import labels as labels_lib

SCALAR_OPTIMIZERS = ("adamw", "lion")


def scale_by_inv_sqrt_fan_in() -> optax.GradientTransformation:
  """Multiplies each update of ndim >= 2 by ``1/sqrt(shape[-2])`` (Flax fan_in).

  .. math::
    u \\leftarrow u / \\sqrt{\\mathrm{fan_{in}}}
  """
  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * (u.shape[-2] ** -0.5) if u.ndim >= 2 else u, updates), state
  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _as_matrix(x: Any) -> Any:
  return x.reshape(-1, x.shape[-1]) if hasattr(x, "ndim") and x.ndim > 2 else x


def as_matrices(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  r"""Runs ``inner`` on every leaf reshaped to ``(prod(shape[:-1]), shape[-1])``.

  For convolution kernels ``(*window, in, out)``: ``inner`` sees the matrix
  ``(prod(window) * in, out)`` and its updates are reshaped back to the kernel's
  shape, so a conv kernel's update is ``inner``'s update of that matrix.

  .. math::
    u = \mathrm{reshape}(\mathrm{inner}(\mathrm{reshape}(g, (-1, c_{out}))), \mathrm{shape}(g))
  """
  def flat(tree):
    return jax.tree.map(_as_matrix, tree)

  def init_fn(params):
    return inner.init(flat(params))

  def update_fn(updates, state, params=None):
    out, state = inner.update(flat(updates), state, None if params is None else flat(params))
    return jax.tree.map(lambda u, g: u.reshape(g.shape), out, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def pmean_updates(axis_name: str) -> optax.GradientTransformation:
  """Averages updates over a ``shard_map`` axis (plain data-parallel gradient sync)."""
  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: lax.pmean(u, axis_name), updates), state
  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_scalar_optimizer(kind: str, learning_rate: optax.ScalarOrSchedule, *, b1: Any, b2: Any,
                     eps: Any = 1e-8, weight_decay: Any = 0.0) -> optax.GradientTransformation:
  """AdamW (bias-corrected, decoupled weight decay) or Lion.

  Raises:
    ValueError: unknown ``kind``.
  """
  if kind == "adamw":
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if kind == "lion":
    return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
  raise ValueError(f"scalar_optimizer must be one of {SCALAR_OPTIMIZERS}, got {kind!r}.")


def routed(matrix: optax.GradientTransformation, learning_rate: optax.ScalarOrSchedule, *,
           labels: Any = None, scalar_optimizer: str = "adamw",
           scalar_learning_rate: optax.ScalarOrSchedule | None = None, scalar_b1: Any = 0.9,
           scalar_b2: Any = 0.95, scalar_eps: Any = 1e-8, scalar_weight_decay: Any = 0.0,
           embed_b1: Any = 0.95, embed_b2: Any = 0.98,
           data_axis: str | None = None) -> optax.GradientTransformation:
  """``optax.partition`` of ``matrix`` and the three scalar groups.

  Convolution kernels (`labels.CONV`) get their own instance of ``matrix``,
  run on each kernel flattened to ``(prod(window) * in, out)`` (`as_matrices`).

  Args:
    matrix: transformation for `labels.MATRIX` leaves (it applies its own lr).
    learning_rate: base learning rate, used for the scalar groups unless
      ``scalar_learning_rate`` is given.
    labels: label tree or callable (default `optim.labels.label_params`).
    scalar_optimizer: ``'adamw'`` or ``'lion'``.
    scalar_learning_rate: learning rate of the scalar groups.
    scalar_b1, scalar_b2, scalar_eps, scalar_weight_decay: vector group settings.
    embed_b1, embed_b2: betas of the embedding and head groups.
    data_axis: inside ``shard_map`` over this axis, average the scalar groups'
      gradients first (the matrix transform syncs itself).

  Returns:
    The partitioned `optax.GradientTransformation`.

  Raises:
    ValueError: unknown scalar optimizer or label.
  """
  if scalar_optimizer not in SCALAR_OPTIMIZERS:
    raise ValueError(
        f"scalar_optimizer must be one of {SCALAR_OPTIMIZERS}, got {scalar_optimizer!r}.")
  lr = learning_rate if scalar_learning_rate is None else scalar_learning_rate
  pre = (pmean_updates(data_axis),) if data_axis is not None else ()

  def scalar(b1, b2, wd, *post):
    opt = make_scalar_optimizer(scalar_optimizer, lr, b1=b1, b2=b2, eps=scalar_eps,
                                weight_decay=wd)
    return optax.chain(*pre, opt, *post)

  head_post = (scale_by_inv_sqrt_fan_in(),) if scalar_optimizer == "lion" else ()
  transforms = {
      labels_lib.MATRIX: matrix,
      labels_lib.CONV: as_matrices(matrix),
      labels_lib.VECTOR: scalar(scalar_b1, scalar_b2, scalar_weight_decay),
      labels_lib.EMBEDDING: scalar(embed_b1, embed_b2, 0.0),
      labels_lib.HEAD: scalar(embed_b1, embed_b2, 0.0, *head_post),
  }
  return optax.partition(transforms, lambda params: labels_lib.resolve(labels, params))


def _muon_dims(tree: Any) -> Any:
  return jax.tree.map(lambda x: MuonDimensionNumbers(x.ndim - 2, x.ndim - 1), tree)


def muon(learning_rate: optax.ScalarOrSchedule, *, beta: Any = 0.95, ns_steps: int = 5,
         weight_decay: Any = 0.01, nesterov: bool = True, **kwargs: Any) -> optax.GradientTransformation:
  """``optax.contrib.muon`` on the matrices, the shared scalar groups elsewhere.

  Matrices (and stacks of them, batched over leading axes) get optax's Muon
  with its ``sqrt(max(1, fan_out/fan_in))`` shape scale. ``kwargs`` go to `routed`.
  """
  matrix = optax.contrib.muon(learning_rate, beta=beta, ns_steps=ns_steps,
                              weight_decay=weight_decay, nesterov=nesterov,
                              muon_weight_dimension_numbers=_muon_dims)
  return routed(matrix, learning_rate, **kwargs)


def adamw(learning_rate: optax.ScalarOrSchedule, *, b1: Any = 0.9, b2: Any = 0.95,
          eps: Any = 1e-8, weight_decay: Any = 0.01, **kwargs: Any) -> optax.GradientTransformation:
  """``optax.adamw`` on the matrices, the shared scalar groups elsewhere."""
  matrix = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  return routed(matrix, learning_rate, **kwargs)


def lion(learning_rate: optax.ScalarOrSchedule, *, b1: Any = 0.9, b2: Any = 0.99,
         weight_decay: Any = 0.01, **kwargs: Any) -> optax.GradientTransformation:
  """``optax.lion`` on the matrices, the shared scalar groups elsewhere."""
  matrix = optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
  return routed(matrix, learning_rate, **kwargs)

