"""Shapes of the dual networks, mock-TFDS CIFAR through the CNN, diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from ccl_jax import diagnostics, losses, train
from ccl_jax.models import CCLAutoencoder, CCLCNN, CCLMLP
from paperlab import data


def _shapes(make, x_shape, target_shape):
  """Forward / feedback output shapes without computing (abstract eval)."""
  model = nnx.eval_shape(make)
  acts = jax.eval_shape(lambda m: m.forward(jnp.zeros(x_shape), detach=True),
                        model)
  sigs = jax.eval_shape(lambda m: m.feedback(jnp.zeros(target_shape)), model)
  return [a.shape for a in acts], [c.shape for c in sigs]


def test_paper_mlp_shapes():
  acts, sigs = _shapes(lambda: CCLMLP(rngs=nnx.Rngs(0)), (7, 784), (10, 10))
  assert acts == [(7, 784)] + [(7, 256)] * 5 + [(7, 10)]
  assert sigs == [(10, 784)] + [(10, 256)] * 5 + [(10, 10)]
  acts, sigs = _shapes(lambda: CCLMLP((3072, 1024, 1024, 1024, 100),
                                      rngs=nnx.Rngs(0)), (2, 3072), (100, 100))
  assert sigs == [(100, 3072)] + [(100, 1024)] * 3 + [(100, 100)]


@pytest.mark.parametrize("pool", [False, True])
def test_paper_cnn_shapes(pool):
  acts, sigs = _shapes(lambda: CCLCNN(pool=pool, rngs=nnx.Rngs(0)),
                       (2, 32, 32, 3), (10, 10))
  feats = [(32, 32, 3), (16, 16, 128), (8, 8, 128), (4, 4, 256), (2, 2, 256),
           (1, 1, 512)]
  assert acts == [(2, *f) for f in feats] + [(2, 10)]
  assert sigs == [(10, *f) for f in feats] + [(10, 10)]


def test_cnn_bias_and_kernel_layout():
  model = nnx.eval_shape(lambda: CCLCNN(rngs=nnx.Rngs(0)))
  assert model.layers[0].fwd.kernel.shape == (3, 3, 3, 128)
  assert model.layers[0].bwd.kernel.shape == (3, 3, 128, 3)
  assert model.layers[0].fwd.bias is not None
  pooled = nnx.eval_shape(lambda: CCLCNN(pool=True, rngs=nnx.Rngs(0)))
  assert pooled.layers[0].fwd.bias is None
  mlp = nnx.eval_shape(lambda: CCLMLP(rngs=nnx.Rngs(0)))
  assert mlp.layers[0].fwd.bias is None and mlp.layers[0].bwd.bias is None


def test_autoencoder_shapes_and_reference_init():
  acts, sigs = _shapes(lambda: CCLAutoencoder(1, (8, 16, 32), rngs=nnx.Rngs(0)),
                       (2, 32, 32, 1), (2, 32, 32, 1))
  feats = [(32, 32, 1), (16, 16, 8), (8, 8, 16), (4, 4, 32), (8, 8, 16),
           (16, 16, 8), (32, 32, 1)]
  assert acts == [(2, *f) for f in feats]
  assert sigs == acts
  model = CCLAutoencoder(1, (4, 4), rngs=nnx.Rngs(0))
  k = lambda l, side: np.abs(np.asarray(getattr(model.layers[l], side).kernel[...]))
  assert k(0, "bwd").max() == 0 and k(3, "fwd").max() == 0   # zero init
  assert 0 < k(1, "bwd").max() < 1e-2 and 0 < k(2, "fwd").max() < 1e-2  # x 1e-3
  assert k(0, "fwd").max() > 0.05 and k(3, "bwd").max() > 0.05  # orthogonal


def test_bad_sizes_are_rejected():
  with pytest.raises(ValueError, match="halved"):
    CCLCNN((28, 28, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="sizes"):
    CCLMLP((784,), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="activation"):
    CCLMLP((4, 2), activation="gelu", rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_mock_tfds_cifar_trains_through_the_cnn():
  with tfds.testing.mock_data(num_examples=16,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load("cifar10", "train")
  assert ds.images.shape == (16, 32, 32, 3)
  x = jnp.asarray(train.prepare_inputs(ds.images, flat=False, mean=0.5, std=0.25))
  y = jnp.asarray(ds.labels)
  model = CCLCNN((32, 32, 3), 10, (8,) * 5, pool=True, rngs=nnx.Rngs(0))
  trainer, state = train.Trainer.create(
      model, train.make_optimizer(train.OptimConfig(learning_rate=0.1)),
      losses.ccl_loss, losses.LossConfig(kind="cnn", scale_c=1.0,
                                         filter_target=True))
  step_fn = train.make_step_fn(trainer, x, y, batch_size=8, seed=0, scan=False)
  state, metrics = step_fn(state, 0, 2)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert sorted(metrics) == sorted(["loss", "ce", "train_acc"] +
                                   [f"pair_{l}" for l in range(6)])
  logits = trainer.model(state["params"])(x)
  assert logits.shape == (16, 10)


def test_cka_and_alignment_properties():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(50, 6)))
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  np.testing.assert_allclose(diagnostics.linear_cka(x, x), 1.0, rtol=1e-5)
  # Invariant to rotations and isotropic scaling of either side.
  np.testing.assert_allclose(diagnostics.linear_cka(x, 3.0 * x @ q), 1.0,
                             rtol=1e-4)
  y = jnp.asarray(rng.normal(size=(50, 4)))
  assert float(diagnostics.linear_cka(x, y)) < 0.5

  model = CCLMLP((5, 4, 3), rngs=nnx.Rngs(0))
  for layer in model.layers:   # make g_l the transpose of f_l
    layer.bwd.kernel[...] = layer.fwd.kernel[...].T
  np.testing.assert_allclose(diagnostics.weight_alignment(model), [1.0, 1.0],
                             rtol=1e-5)
  layer = model.layers[1]
  layer.bwd.kernel[...] = -layer.fwd.kernel[...].T
  np.testing.assert_allclose(diagnostics.weight_alignment(model), [1.0, -1.0],
                             rtol=1e-5)


def test_conv_kernel_adjoint_is_the_transposed_convolution():
  rng = np.random.default_rng(1)
  k = jnp.asarray(rng.normal(size=(3, 3, 2, 5)), jnp.float32)
  u = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(1, 6, 6, 5)), jnp.float32)
  conv = lambda a, w: jax.lax.conv_general_dilated(
      a, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(jnp.vdot(conv(u, k), v),
                             jnp.vdot(u, conv(v, diagnostics.kernel_adjoint(k))),
                             rtol=1e-4)
