"""Counter-current dual networks (Kao & Hariharan, NeurIPS 2024) in Flax NNX.

Every layer is a *pair*: a forward map ``f_l`` (d_{l-1} -> d_l) and a feedback
map ``g_l`` of mirrored shape (d_l -> d_{l-1}) with its own weights. The
forward net maps the input ``x = a_0`` to ``a_1, ..., a_L`` (logits or a
reconstruction); the feedback net runs the other way, from the target
``c_L = t`` down to ``c_{L-1}, ..., c_0`` (``c_0`` lives in input space):

.. math::

  a_l = \\phi(f_l(\\mathrm{sg}(a_{l-1}))), \\qquad
  c_{l-1} = \\phi(g_l(\\mathrm{sg}(c_l))),

with ``sg`` the stop-gradient applied to every layer input during CCL
training, ``\\phi`` the hidden activation, no activation on ``a_L`` and none on
``c_0``. The local losses pair ``a_l`` with ``c_l`` (see :mod:`ccl_jax.losses`),
so the loss of pair ``l`` trains exactly ``f_l`` and ``g_{l+1}``.

Three families share one container, :class:`CCLNet`:

* :class:`CCLMLP`: bias-free dense layers, ELU (784-256x5-10 in the paper).
* :class:`CCLCNN`: five 3x3 convolutions then a dense output layer. ``cnn``
  uses stride-2 convolutions; ``cnn_pool`` uses stride-1 convolutions plus 2x2
  max-pooling. Feedback = nearest x2 upsampling + 3x3 stride-1 convolution.
* :class:`CCLAutoencoder`: stride-2 conv encoder, upsample+conv decoder; its
  feedback net mirrors it and is fed the target image.

Inference uses the forward net only (``model(x)``).
"""

from __future__ import annotations

from collections.abc import Sequence
import math

import jax
from jax import lax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

ACTIVATIONS = {"elu": jax.nn.elu, "relu": jax.nn.relu, "tanh": jnp.tanh}


def torch_uniform(fan_in: int) -> nnx.Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default Linear/Conv init."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def scaled(init: nnx.Initializer, factor: float) -> nnx.Initializer:
  """Multiplies an initializer's draw by ``factor`` (0 gives a zero init)."""

  def scaled_init(key, shape, dtype=jnp.float32):
    return factor * init(key, shape, dtype)

  return scaled_init


def upsample2(x: Array) -> Array:
  """Nearest-neighbour x2 upsampling of an NHWC batch."""
  return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


def max_pool2(x: Array) -> Array:
  """2x2 max-pooling with stride 2 (odd sizes are floored, as in PyTorch)."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                           "VALID")


class PairDense(nnx.Module):
  """Dense pair: ``fwd`` (d_in -> d_out) and ``bwd`` (d_out -> d_in).

  With ``in_shape`` set, the forward map flattens its input first and the
  feedback map reshapes its output back to ``in_shape`` (the conv -> dense
  boundary of the CNN).
  """

  def __init__(self, d_in: int, d_out: int, *, use_bias: bool = False,
               in_shape: tuple[int, ...] | None = None, rngs: nnx.Rngs):
    self.in_shape = in_shape
    self.fwd = nnx.Linear(d_in, d_out, use_bias=use_bias,
                          kernel_init=torch_uniform(d_in),
                          bias_init=torch_uniform(d_in), rngs=rngs)
    self.bwd = nnx.Linear(d_out, d_in, use_bias=use_bias,
                          kernel_init=torch_uniform(d_out),
                          bias_init=torch_uniform(d_out), rngs=rngs)

  def forward(self, x: Array, act=None) -> Array:
    if self.in_shape is not None:
      x = x.reshape(x.shape[0], -1)
    h = self.fwd(x)
    return h if act is None else act(h)

  def feedback(self, y: Array) -> Array:
    out = self.bwd(y)
    if self.in_shape is not None:
      out = out.reshape(out.shape[0], *self.in_shape)
    return out


def _conv(c_in: int, c_out: int, stride: int, use_bias: bool, rngs: nnx.Rngs,
          kernel_init: nnx.Initializer | None = None) -> nnx.Conv:
  fan_in = 9 * c_in
  return nnx.Conv(c_in, c_out, (3, 3), strides=stride,
                  padding=((1, 1), (1, 1)), use_bias=use_bias,
                  kernel_init=kernel_init or torch_uniform(fan_in),
                  bias_init=torch_uniform(fan_in), rngs=rngs)


class PairConv(nnx.Module):
  """Convolutional pair that halves (``up=False``) or doubles the resolution.

  Down (encoder / classifier): ``f`` = 3x3 conv with stride 2, or with
  ``pool=True`` a stride-1 conv whose activated output is 2x2 max-pooled;
  ``g`` = nearest x2 upsample then 3x3 stride-1 conv (c_out -> c_in).
  Up (decoder): ``f`` = upsample + stride-1 conv, ``g`` = stride-2 conv.
  ``forward`` takes the activation as an argument because it must come
  before the pooling.
  """

  def __init__(self, c_in: int, c_out: int, *, up: bool = False,
               pool: bool = False, use_bias: bool = True,
               fwd_init: nnx.Initializer | None = None,
               bwd_init: nnx.Initializer | None = None, rngs: nnx.Rngs):
    if up and pool:
      raise ValueError("PairConv: pool=True is only defined for up=False")
    self.up = up
    self.pool = pool
    f_stride = 1 if (up or pool) else 2
    g_stride = 2 if up else 1
    self.fwd = _conv(c_in, c_out, f_stride, use_bias, rngs, fwd_init)
    self.bwd = _conv(c_out, c_in, g_stride, use_bias, rngs, bwd_init)

  def forward(self, x: Array, act=None) -> Array:
    h = self.fwd(upsample2(x) if self.up else x)
    if act is not None:
      h = act(h)
    return max_pool2(h) if self.pool else h

  def feedback(self, y: Array) -> Array:
    return self.bwd(y if self.up else upsample2(y))


class CCLNet(nnx.Module):
  """A stack of layer pairs with CCL's forward and feedback passes.

  Attributes:
    layers: the pairs, bottom (input side) first.
    activation: name of the hidden activation (``elu``, ``relu``, ``tanh``).
  """

  def __init__(self, layers: Sequence[nnx.Module], activation: str):
    if activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {activation!r}; "
                       f"choose one of {sorted(ACTIVATIONS)}")
    self.layers = nnx.List(list(layers))
    self.activation = activation

  @property
  def num_layers(self) -> int:
    return len(self.layers)

  def forward(self, x: Array, *, detach: bool) -> list[Array]:
    """Forward net. Returns ``[a_0 = x, a_1, ..., a_L]``.

    Args:
      x: input batch.
      detach: stop the gradient at every layer input (CCL); ``False`` gives
        the ordinary end-to-end differentiable net (BP).
    """
    act = ACTIVATIONS[self.activation]
    acts = [x]
    last = self.num_layers - 1
    for i, layer in enumerate(self.layers):
      h = lax.stop_gradient(acts[-1]) if detach else acts[-1]
      acts.append(layer.forward(h, None if i == last else act))
    return acts

  def feedback(self, target: Array, *, detach: bool = True) -> list[Array]:
    """Feedback net. Returns ``[c_0, c_1, ..., c_{L-1}, c_L = target]``.

    For classifiers ``target`` is the K x K identity (one row per class).
    """
    act = ACTIVATIONS[self.activation]
    sigs = [target]
    for i in reversed(range(self.num_layers)):
      h = lax.stop_gradient(sigs[0]) if detach else sigs[0]
      h = self.layers[i].feedback(h)
      sigs.insert(0, h if i == 0 else act(h))
    return sigs

  def __call__(self, x: Array) -> Array:
    """Inference: the forward net only, no stop-gradients."""
    return self.forward(x, detach=False)[-1]


class CCLMLP(CCLNet):
  """Bias-free MLP pair stack, e.g. ``sizes=(784, 256, 256, 256, 256, 256, 10)``."""

  def __init__(self, sizes: Sequence[int] = (784,) + (256,) * 5 + (10,), *,
               activation: str = "elu", use_bias: bool = False,
               rngs: nnx.Rngs):
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
      raise ValueError(f"MLP sizes must be >= 2 positive ints, got {sizes}")
    pairs = [PairDense(int(a), int(b), use_bias=use_bias, rngs=rngs)
             for a, b in zip(sizes[:-1], sizes[1:])]
    super().__init__(pairs, activation)


CNN_CHANNELS = (128, 128, 256, 256, 512)


class CCLCNN(CCLNet):
  """Five-conv classifier (``cnn``: stride 2; ``cnn_pool``: stride 1 + pool).

  Spatial size must halve cleanly through ``len(channels)`` stages (32 -> 1
  for the paper's five stages). ``cnn`` convs have biases; ``cnn_pool`` convs
  do not; the dense output pair has none (as in the reference code).
  """

  def __init__(self, in_shape: tuple[int, int, int] = (32, 32, 3),
               num_classes: int = 10, channels: Sequence[int] = CNN_CHANNELS,
               *, pool: bool = False, activation: str = "elu",
               rngs: nnx.Rngs):
    h, w, c = in_shape
    if h % 2 ** len(channels) or w % 2 ** len(channels):
      raise ValueError(f"input {h}x{w} cannot be halved {len(channels)} times "
                       "exactly; resize it (e.g. to 32x32)")
    pairs = []
    for c_out in channels:
      pairs.append(PairConv(c, c_out, pool=pool, use_bias=not pool, rngs=rngs))
      c, h, w = c_out, h // 2, w // 2
    pairs.append(PairDense(h * w * c, num_classes, in_shape=(h, w, c),
                           rngs=rngs))
    super().__init__(pairs, activation)


class CCLAutoencoder(CCLNet):
  """Conv autoencoder pair stack: ``len(channels)`` down then as many up.

  Encoder ``in_c -> channels[0] -> ... -> channels[-1]`` (stride-2 convs),
  decoder back to ``in_c`` (upsample + conv). The initialisation follows the
  reference: orthogonal kernels, decoder forward kernels and encoder feedback
  kernels scaled by ``small_init`` (1e-3), and the first encoder's feedback
  and the last decoder's forward kernel start at zero.
  """

  def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64,
                                                                      128),
               *, activation: str = "relu", small_init: float = 1e-3,
               rngs: nnx.Rngs):
    ortho = nnx.initializers.orthogonal()
    widths = [in_channels, *channels]
    n = len(channels)
    pairs = []
    for i in range(n):
      pairs.append(PairConv(widths[i], widths[i + 1], rngs=rngs,
                            fwd_init=ortho,
                            bwd_init=scaled(ortho, 0.0 if i == 0 else
                                            small_init)))
    for i in range(n):
      c_in, c_out = widths[n - i], widths[n - i - 1]
      pairs.append(PairConv(c_in, c_out, up=True, rngs=rngs,
                            fwd_init=scaled(ortho, 0.0 if i == n - 1 else
                                            small_init),
                            bwd_init=ortho))
    super().__init__(pairs, activation)
