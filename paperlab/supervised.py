"""Plain supervised classification with backprop: the reference training path.

Pure functions over ``nnx.split`` state (measured on CPU: split/merge with
`jax.jit` is about 2x faster than `nnx.jit` for small models). A chunk of steps
is one `lax.scan` (fine for dense models; for conv models use
``scan_chunks=False``, a Python loop of jitted steps, because conv backward
inside `lax.scan` is ~25x slower on XLA:CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab import data as data_lib


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, dict[str, Any]]:
  """Splits ``model`` into ``(graphdef, {"params", "opt_state"})``."""
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  return graphdef, {"params": params, "opt_state": tx.init(params)}


def _apply(graphdef, params, x):
  model = nnx.merge(graphdef, params)
  return model(x)


def make_step_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, x: np.ndarray,
                 y: np.ndarray, *, batch_size: int, seed: int,
                 scan_chunks: bool = True) -> Callable[[Any, int, int], tuple[Any, dict]]:
  """A `paperlab.loop.train` step function for softmax classification.

  The batch of absolute step ``s`` is `paperlab.data.batch_indices` of
  ``(seed, s)``, so resumed runs are exact.
  """
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  n = int(y.shape[0])
  data_lib.steps_per_epoch(n, batch_size)  # validates batch_size

  def one_step(state, xb, yb):
    def loss_fn(params):
      logits = _apply(graphdef, params, xb)
      return cross_entropy(logits, yb), logits
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state}, (loss, accuracy(logits, yb))

  @jax.jit
  def chunk(state, x, y, idx):
    def body(s, ix):
      return one_step(s, x[ix], y[ix])
    state, (loss, acc) = jax.lax.scan(body, state, idx)
    return state, {"loss": loss.mean(), "train_acc": acc.mean()}

  @jax.jit
  def single(state, x, y, ix):
    return one_step(state, x[ix], y[ix])

  def step_fn(state, step, count):
    idx = jnp.asarray(data_lib.batch_indices(n, batch_size, seed, step, count))
    if scan_chunks:
      return chunk(state, x, y, idx)
    losses, accs = [], []
    for ix in idx:
      state, (loss, acc) = single(state, x, y, ix)
      losses.append(loss)
      accs.append(acc)
    return state, {"loss": jnp.mean(jnp.stack(losses)), "train_acc": jnp.mean(jnp.stack(accs))}

  return step_fn


@functools.partial(jax.jit, static_argnums=0)
def _batch_stats(graphdef, params, xb, yb):
  logits = _apply(graphdef, params, xb)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
  return ce.sum(), (jnp.argmax(logits, -1) == yb).sum()


def evaluate(graphdef: nnx.GraphDef, params: Any, x: np.ndarray, y: np.ndarray, *,
             batch_size: int = 2000, prefix: str = "test") -> dict[str, float]:
  """Mean loss and accuracy over ``(x, y)`` in batches."""
  total_loss, correct = 0.0, 0
  for i in range(0, len(y), batch_size):
    loss, hits = _batch_stats(graphdef, params, jnp.asarray(x[i:i + batch_size]),
                              jnp.asarray(y[i:i + batch_size]))
    total_loss += float(loss)
    correct += int(hits)
  return {f"{prefix}_loss": total_loss / len(y), f"{prefix}_acc": correct / len(y)}
