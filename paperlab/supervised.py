"""Plain supervised classification with backprop: the reference training path.

Pure functions over ``nnx.split`` state (measured on CPU: split/merge with
`jax.jit` is about 2x faster than `nnx.jit` for small models). A chunk of steps
is one `lax.scan` (fine for dense models; for conv models use
``scan_chunks=False``, a Python loop of jitted steps, because conv backward
inside `lax.scan` is ~25x slower on XLA:CPU).

With a ``mesh`` (an axis ``'data'``), every batch is a global array sharded
over that axis and each process reads only its devices' rows of the host
arrays (`paperlab.distributed.from_callback`), so the same code runs in one
process or several; parameters are replicated.
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
from paperlab import distributed
from paperlab import mesh as mesh_lib


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def init_state(model: nnx.Module, tx: optax.GradientTransformation,
               mesh: jax.sharding.Mesh | None = None) -> tuple[nnx.GraphDef, dict[str, Any]]:
  """Splits ``model`` into ``(graphdef, {"params", "opt_state"})``, replicated on ``mesh``."""
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  state = {"params": params, "opt_state": tx.init(params)}
  if mesh is not None:
    state = distributed.put(state, mesh_lib.replicated(mesh))
  return graphdef, state


def _batch_rows(mesh: jax.sharding.Mesh, host: np.ndarray, idx: np.ndarray) -> jax.Array:
  """``host[idx]`` sharded over ``'data'`` on the last axis of ``idx`` (the batch axis).

  Each process reads only the rows of its own devices.
  """
  k = idx.ndim
  sharding = mesh_lib.sharding(mesh, *(None,) * (k - 1), mesh_lib.DATA)
  shape = idx.shape + host.shape[1:]
  return distributed.from_callback(
      sharding, shape, lambda index: host[idx[index[:k]]][(slice(None),) * k + index[k:]])


def _apply(graphdef, params, x):
  model = nnx.merge(graphdef, params)
  return model(x)


def make_step_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, x: np.ndarray,
                 y: np.ndarray, *, batch_size: int, seed: int, scan_chunks: bool = True,
                 mesh: jax.sharding.Mesh | None = None) -> Callable[[Any, int, int], tuple[Any, dict]]:
  """A `paperlab.loop.train` step function for softmax classification.

  The batch of absolute step ``s`` is `paperlab.data.batch_indices` of
  ``(seed, s)``, so resumed runs are exact. With ``mesh`` the batches are
  sharded over its ``'data'`` axis (``batch_size`` must be a multiple of its
  size) and the data stay on the host.

  Raises:
    ValueError: ``batch_size`` outside ``[1, len(y)]`` or not a multiple of
      the ``'data'`` axis.
  """
  n = int(np.shape(y)[0])
  data_lib.steps_per_epoch(n, batch_size)  # validates batch_size
  if mesh is not None:
    shards = mesh_lib.axis_size(mesh, mesh_lib.DATA)
    if batch_size % shards:
      raise ValueError(f"batch_size={batch_size} must be a multiple of the mesh's data axis ({shards}).")
    return _sharded_step_fn(graphdef, tx, np.asarray(x), np.asarray(y), batch_size=batch_size,
                            seed=seed, mesh=mesh)
  x = jnp.asarray(x)
  y = jnp.asarray(y)

  one_step = functools.partial(_one_step, graphdef, tx)

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


def _one_step(graphdef, tx, state, xb, yb):
  def loss_fn(params):
    logits = _apply(graphdef, params, xb)
    return cross_entropy(logits, yb), logits
  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  return {"params": params, "opt_state": opt_state}, (loss, accuracy(logits, yb))


def _sharded_step_fn(graphdef, tx, x, y, *, batch_size, seed, mesh):
  n = int(y.shape[0])

  @jax.jit
  def chunk(state, xs, ys):
    state, (loss, acc) = jax.lax.scan(lambda s, b: _one_step(graphdef, tx, s, *b), state, (xs, ys))
    return state, {"loss": loss.mean(), "train_acc": acc.mean()}

  def step_fn(state, step, count):
    idx = data_lib.batch_indices(n, batch_size, seed, step, count)
    return chunk(state, _batch_rows(mesh, x, idx), _batch_rows(mesh, y, idx))
  return step_fn


@functools.partial(jax.jit, static_argnums=0)
def _batch_stats(graphdef, params, xb, yb):
  logits = _apply(graphdef, params, xb)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
  return ce.sum(), (jnp.argmax(logits, -1) == yb).sum()


@functools.partial(jax.jit, static_argnums=0)
def _masked_batch_stats(graphdef, params, xb, yb, keep):
  logits = _apply(graphdef, params, xb)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
  return jnp.sum(ce * keep), jnp.sum((jnp.argmax(logits, -1) == yb) * keep)


def evaluate(graphdef: nnx.GraphDef, params: Any, x: np.ndarray, y: np.ndarray, *,
             batch_size: int = 2000, prefix: str = "test",
             mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """Mean loss and accuracy over ``(x, y)`` in batches (sharded over ``'data'`` with a mesh).

  With a mesh the last batch is padded to a multiple of the data axis; the
  padding is masked out.
  """
  total_loss, correct = 0.0, 0
  if mesh is not None:
    shards = mesh_lib.axis_size(mesh, mesh_lib.DATA)
    x, y = np.asarray(x), np.asarray(y)
    for i in range(0, len(y), batch_size):
      real = min(batch_size, len(y) - i)
      slots = np.arange(real + (-real % shards))
      idx = i + np.minimum(slots, real - 1)  # padding repeats the last example, masked out
      keep = (slots < real).astype(np.float32)
      loss, hits = _masked_batch_stats(graphdef, params, _batch_rows(mesh, x, idx),
                                       _batch_rows(mesh, y, idx), _batch_rows(mesh, keep, slots))
      total_loss += float(loss)
      correct += int(hits)
    return {f"{prefix}_loss": total_loss / len(y), f"{prefix}_acc": correct / len(y)}
  for i in range(0, len(y), batch_size):
    loss, hits = _batch_stats(graphdef, params, jnp.asarray(x[i:i + batch_size]),
                              jnp.asarray(y[i:i + batch_size]))
    total_loss += float(loss)
    correct += int(hits)
  return {f"{prefix}_loss": total_loss / len(y), f"{prefix}_acc": correct / len(y)}
