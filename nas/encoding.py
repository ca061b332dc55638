"""Fixed-size tensor encoding of small MLPs, their forward pass, random teachers.

SWAT-NN (Huang, Montazerin and Srivastava, "Simultaneous Weight and
Architecture Search in a learned latent space", IEEE BigData 2025,
https://arxiv.org/abs/2506.08270) works with the family of MLPs with 2 inputs,
1 output and ``L`` in {1, 2, 3, 4} hidden layers of at most ``H = 7`` neurons.
A smaller width is expressed by per-neuron on/off masks, and every hidden neuron
mixes three activations (sigmoid, tanh, leaky ReLU) with weights ``a``:

.. math::

  h_l = m_l \\odot \\sum_k a_{l,k} \\odot f_k(h_{l-1} W_l + b_l), \\qquad
  y = h_L W_{L+1} + b_{L+1}.

Tensor layout (one row per neuron index, channel 0 the values, channel 1 a 0/1
mask of which entries are real). For the layer ``l = 0 .. L`` (``L`` the output
layer), columns ``[11 l, 11 l + 7)`` hold ``W_l[in, out]`` zero-padded to 7x7,
column ``11 l + 7`` holds the bias (bias of unit ``j`` in row ``j``), and for
hidden layers columns ``[11 l + 8, 11 l + 11)`` hold the activation weights.
The ``L`` mask columns start at ``11 L + 8``; the width ``12 L + 8`` is padded
with zeros to 56.

`Net` stores the same numbers as arrays of static shape; its depth is
``net.w.shape[-3] - 1``. Rows 2..6 of the first weight block and columns 1..6
of the output block (and output bias entries 1..6) are padding: the forward
pass never reads them, so decoders may put anything there.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

H = 7  # max hidden width
MAX_DEPTH = 4  # max number of hidden layers
NUM_INPUTS = 2
NUM_ACTS = 3  # sigmoid, tanh, leaky ReLU
ACTIVATIONS = ("sigmoid", "tanh", "leaky_relu")
WIDTH = 12 * MAX_DEPTH + 8  # 56 columns
SHAPE = (H, WIDTH, 2)
LEAKY_SLOPE = 0.01
SPARSITIES = (0.0, 0.2, 0.4)


class Net(NamedTuple):
  """An MLP of the family, padded to static shapes (leading batch axes allowed).

  Attributes:
    w: ``[..., L + 1, 7, 7]`` weight blocks ``W[in, out]``; block ``L`` is the output layer.
    b: ``[..., L + 1, 7]`` biases.
    act: ``[..., L, 7, 3]`` activation mix weights (one-hot for a teacher).
    mask: ``[..., L, 7]`` neuron on/off values (0/1 for a teacher, soft when searched).
  """

  w: jax.Array
  b: jax.Array
  act: jax.Array
  mask: jax.Array


def depth_of(net: Net) -> int:
  return net.w.shape[-3] - 1


def width(depth: int) -> int:
  """Number of used columns for a depth-``depth`` MLP: ``12 L + 8``."""
  _check_depth(depth)
  return 12 * depth + 8


def _check_depth(depth: int) -> None:
  if not 1 <= depth <= MAX_DEPTH:
    raise ValueError(f"depth must be in 1..{MAX_DEPTH}, got {depth}.")


def real_entries(depth: int) -> Net:
  """0/1 `Net` marking the entries that carry meaning (the rest is padding)."""
  _check_depth(depth)
  w = jnp.ones((depth + 1, H, H))
  w = w.at[0, NUM_INPUTS:].set(0.0).at[depth, :, 1:].set(0.0)
  b = jnp.ones((depth + 1, H)).at[depth, 1:].set(0.0)
  return Net(w, b, jnp.ones((depth, H, NUM_ACTS)), jnp.ones((depth, H)))


def dense_param_count(depth: int) -> int:
  """Weights and biases of the dense 2-7-...-7-1 MLP: ``21 + 56 (L - 1) + 8``."""
  _check_depth(depth)
  return (NUM_INPUTS * H + H) + (depth - 1) * (H * H + H) + (H + 1)


def _layer_columns(net: Net) -> jax.Array:
  """The ``[7, 12 L + 8]`` value columns of one (unbatched) net."""
  depth = depth_of(net)
  cols = []
  for l in range(depth + 1):
    cols += [net.w[l], net.b[l][:, None]]
    if l < depth:
      cols.append(net.act[l])
  cols.append(net.mask.T)
  return jnp.concatenate(cols, axis=1)


def _pad_width(x: jax.Array) -> jax.Array:
  return jnp.pad(x, ((0, 0), (0, WIDTH - x.shape[1])))


def encode(net: Net) -> jax.Array:
  """``Net`` -> ``[7, 56, 2]`` tensor (values, real-entry mask); batched over leading axes."""
  if net.w.ndim > 3:
    return jax.vmap(encode)(net)
  depth = depth_of(net)
  values = _pad_width(_layer_columns(net))
  valid = _pad_width(_layer_columns(real_entries(depth)))
  return jnp.stack([values * valid, valid], axis=-1)


def parse(x: jax.Array, depth: int) -> Net:
  """Reads a depth-``depth`` `Net` from ``[..., 7, >= 12 L + 8]`` columns (no nonlinearity).

  Decoder outputs are parsed with this as raw numbers (activation logits,
  mask logits); `decode` of an `encode`d net gives the net back exactly.
  """
  _check_depth(depth)
  if x.shape[-1] < width(depth) or x.shape[-2] != H:
    raise ValueError(f"Need [..., {H}, >= {width(depth)}] columns for depth {depth}, got {x.shape}.")
  ws, bs, acts = [], [], []
  col = 0
  for l in range(depth + 1):
    ws.append(x[..., col:col + H])
    bs.append(x[..., col + H])
    col += H + 1
    if l < depth:
      acts.append(x[..., col:col + NUM_ACTS])
      col += NUM_ACTS
  mask = jnp.swapaxes(x[..., col:col + depth], -1, -2)
  return Net(jnp.stack(ws, -3), jnp.stack(bs, -2), jnp.stack(acts, -3), mask)


def decode(tensor: jax.Array, depth: int) -> Net:
  """``[..., 7, 56, 2]`` tensor -> `Net` of the given depth (channel 0)."""
  return parse(tensor[..., 0], depth)


_FNS = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh,
        "leaky_relu": lambda v: jax.nn.leaky_relu(v, LEAKY_SLOPE)}


def activate(pre: jax.Array, act: jax.Array) -> jax.Array:
  """Mix of sigmoid, tanh and leaky ReLU of ``pre`` with weights ``act[..., 3]``."""
  return sum(_FNS[name](pre) * act[..., k] for k, name in enumerate(ACTIVATIONS))


def forward(net: Net, x: jax.Array, activation: str | None = None) -> jax.Array:
  """Outputs ``[N]`` of one net on inputs ``x`` ``[N, 2]`` (soft activations, soft masks).

  With ``activation`` (one of `ACTIVATIONS`) every neuron uses that function
  and ``net.act`` is ignored: a cheaper path for nets with one fixed activation.

  The hidden values are kept feature-major (``[7, N]``, i.e. ``h^T = W^T h_prev^T``):
  XLA:CPU runs products of a 7-wide contraction and a long minor axis several
  times faster than the example-major ``[N, 7] @ [7, 7]`` (docs/swat_nn.md,
  "Speed"), and the activation mix fuses into one elementwise pass.
  """
  depth = depth_of(net)
  h = net.w[0, :NUM_INPUTS].T @ x.T
  for l in range(depth):
    if l:
      h = net.w[l].T @ h
    pre = h + net.b[l][:, None]
    h = (activate(pre, net.act[l][:, None, :]) if activation is None else _FNS[activation](pre)) \
        * net.mask[l][:, None]
  return net.w[depth, :, 0] @ h + net.b[depth, 0]


def batched_forward(nets: Net, x: jax.Array) -> jax.Array:
  """Outputs ``[B, N]`` of a batch of nets on shared inputs ``x`` ``[N, 2]``."""
  return jax.vmap(forward, in_axes=(0, None))(nets, x)


def _draws(key: jax.Array, batch: tuple[int, ...] = ()) -> dict[str, jax.Array]:
  """Every random number a max-depth teacher needs (one call per kind, so jit compiles fast)."""
  kw, kd, kb, km, ka = jax.random.split(key, 5)
  layers = (*batch, MAX_DEPTH + 1)
  return {"w": jax.random.uniform(kw, (*layers, H, H), minval=-5.0, maxval=5.0),
          "keep": jax.random.uniform(kd, (*layers, H, H)),
          "b": jax.random.uniform(kb, (*layers, H), minval=-1.0, maxval=1.0),
          "mask": jax.random.bernoulli(km, 0.5, (*batch, MAX_DEPTH, H)).astype(jnp.float32),
          "act": jax.random.randint(ka, (*batch, MAX_DEPTH, H), 0, NUM_ACTS)}


def _assemble(draws: dict[str, jax.Array], depth: int, sparsity: jax.Array | float) -> Net:
  real = real_entries(depth)
  w = draws["w"][..., :depth + 1, :, :] * (draws["keep"][..., :depth + 1, :, :] >= sparsity)
  return Net(w=w * real.w, b=draws["b"][..., :depth + 1, :] * real.b,
             act=jax.nn.one_hot(draws["act"][..., :depth, :], NUM_ACTS),
             mask=draws["mask"][..., :depth, :])


def random_net(key: jax.Array, depth: int, sparsity: jax.Array | float) -> Net:
  """One random teacher of the given depth.

  Weights ``U(-5, 5)``, each dropped with probability ``sparsity``; biases
  ``U(-1, 1)``; neuron masks ``Bernoulli(0.5)``; each neuron's activation
  uniformly one of the three. Padding entries are zero.
  """
  _check_depth(depth)
  return _assemble(_draws(key), depth, sparsity)


class TeacherBatch(NamedTuple):
  """A batch of random teachers sharing one depth and one set of input points."""

  tensors: jax.Array  # [B, 7, 56, 2]
  x: jax.Array  # [P, 2] inputs, U(-1, 1)
  y: jax.Array  # [B, P] teacher outputs
  depth: jax.Array  # () int32 in 1..4


def sample_teachers(key: jax.Array, batch_size: int, num_points: int,
                    depth: int | None = None, activation: str | None = None) -> TeacherBatch:
  """Random teacher MLPs as in SWAT-NN training; jit-able.

  Depth ~ U{1..4} (unless ``depth`` fixes it) and sparsity ~ U{0, 0.2, 0.4}
  are shared by the batch; weights are fresh per net; the ``num_points``
  inputs ~ U(-1, 1)^2 are shared by the batch. ``activation`` (one of
  `ACTIVATIONS`) gives every neuron that activation (the fixed-activation
  family) instead of a uniform draw of the three.
  """
  kdepth, ksp, knets, kx = jax.random.split(key, 4)
  sparsity = jnp.asarray(SPARSITIES)[jax.random.randint(ksp, (), 0, len(SPARSITIES))]
  x = jax.random.uniform(kx, (num_points, NUM_INPUTS), minval=-1.0, maxval=1.0)
  draws = _draws(knets, (batch_size,))
  if activation is not None:
    if activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {activation!r}.")
    draws["act"] = jnp.full_like(draws["act"], ACTIVATIONS.index(activation))

  def branch(d):
    def make(draws, sparsity, x):
      nets = _assemble(draws, d, sparsity)
      return encode(nets), batched_forward(nets, x)
    return make

  if depth is not None:
    _check_depth(depth)
    tensors, y = branch(depth)(draws, sparsity, x)
    return TeacherBatch(tensors, x, y, jnp.asarray(depth, jnp.int32))
  depth_arr = jax.random.randint(kdepth, (), 1, MAX_DEPTH + 1)
  tensors, y = jax.lax.switch(depth_arr - 1, [branch(d) for d in range(1, MAX_DEPTH + 1)],
                              draws, sparsity, x)
  return TeacherBatch(tensors, x, y, depth_arr)


def fix_activation(raw: jax.Array, depth: int, activation: str) -> jax.Array:
  """A decoded ``[7, 56]`` tensor whose activation columns all pick ``activation``.

  Every hidden layer's three activation logits become ``(+30, -30, -30)``
  rolled to the chosen one, so the soft mix (at any temperature <= 1) and the
  arg-max both give that activation: the fixed-activation variant of the search.
  """
  _check_depth(depth)
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
  logits = jnp.where(jnp.arange(NUM_ACTS) == ACTIVATIONS.index(activation), 30.0, -30.0)
  for l in range(depth):
    col = 11 * l + 8
    raw = raw.at[..., col:col + NUM_ACTS].set(jnp.broadcast_to(logits, raw[..., col:col + NUM_ACTS].shape))
  return raw
