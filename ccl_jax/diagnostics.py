"""Diagnostics of the paper: forward/feedback weight alignment and CKA.

* Weight alignment of layer pair ``l``: the cosine between the forward kernel
  ``f_l`` and the adjoint of its mirrored feedback kernel ``g_l`` (the only
  feedback map with the transposed shape of ``f_l``). For dense kernels the
  adjoint is the transpose; for 3x3 convolutions it swaps the channel axes
  and flips the kernel in space.

  .. math::

    \\cos_l = \\frac{\\langle W_{f_l}, W_{g_l}^{\\top} \\rangle}
                   {\\|W_{f_l}\\| \\, \\|W_{g_l}\\|}

* CKA between ``a_l`` (N x d, one row per example) and ``c_l`` (K x d, one
  row per class). To match rows, every example is paired with the feedback
  row of its own class, ``C = c_l[y]`` (N x d), and linear CKA is taken
  between ``a_l`` and ``C``:

  .. math::

    \\mathrm{CKA}(X, Y) = \\frac{\\|Y_c^{\\top} X_c\\|_F^2}
        {\\|X_c^{\\top} X_c\\|_F\\, \\|Y_c^{\\top} Y_c\\|_F}

  with ``X_c`` the row-centred matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ccl_jax.models import CCLNet

Array = jax.Array


def kernel_adjoint(kernel: Array) -> Array:
  """Adjoint of a Flax kernel: transpose (dense) or flip + swap IO (conv)."""
  if kernel.ndim == 2:
    return kernel.T
  return jnp.flip(jnp.swapaxes(kernel, -1, -2), axis=tuple(range(kernel.ndim - 2)))


def weight_alignment(model: CCLNet) -> Array:
  """Cosine between each ``f_l`` kernel and the adjoint of ``g_l``: ``[L]``."""
  cos = []
  for layer in model.layers:
    f = layer.fwd.kernel[...]
    g = kernel_adjoint(layer.bwd.kernel[...])
    # A zero kernel (the autoencoder's zero init) has cosine 0, not nan.
    norms = jnp.maximum(jnp.linalg.norm(f) * jnp.linalg.norm(g), 1e-30)
    cos.append(jnp.vdot(f, g) / norms)
  return jnp.stack(cos)


def linear_cka(x: Array, y: Array) -> Array:
  """Linear CKA of two row-matched matrices ``[n, d1]`` and ``[n, d2]``."""
  x = x - jnp.mean(x, axis=0)
  y = y - jnp.mean(y, axis=0)
  cross = jnp.sum((y.T @ x) ** 2)
  return cross / (jnp.linalg.norm(x.T @ x) * jnp.linalg.norm(y.T @ y))


def pair_cka(model: CCLNet, x: Array, labels: Array) -> Array:
  """CKA between ``a_l`` and ``c_l[y]`` for ``l = 0..L-1``: ``[L]``."""
  acts = model.forward(x, detach=True)
  k = acts[-1].shape[-1]
  sigs = model.feedback(jnp.eye(k, dtype=acts[-1].dtype), detach=True)
  out = []
  for a, c in zip(acts[:-1], sigs[:-1]):
    out.append(linear_cka(a.reshape(a.shape[0], -1),
                          c.reshape(k, -1)[labels]))
  return jnp.stack(out)
