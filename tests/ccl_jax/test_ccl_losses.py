"""CCL losses: golden values against NumPy, locality of every term, BP wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ccl_jax import losses
from ccl_jax.models import CCLAutoencoder, CCLCNN, CCLMLP


def _elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _tiny_mlp(seed=0):
  """4-3-2 MLP with hand-set kernels, plus NumPy copies of them."""
  rng = np.random.default_rng(seed)
  model = CCLMLP((4, 3, 2), rngs=nnx.Rngs(0))
  w = {}
  for l, layer in enumerate(model.layers):
    for side in ("fwd", "bwd"):
      k = rng.normal(size=getattr(layer, side).kernel.shape).astype(np.float32)
      getattr(layer, side).kernel[...] = jnp.asarray(k)
      w[side, l] = k.astype(np.float64)
  return model, w


def _np_mlp_terms(w, x, y, scale_c=0.5):
  """Independent NumPy forward/feedback passes and loss terms."""
  k = 2
  onehot = np.eye(k)[y]
  a1 = _elu(x @ w["fwd", 0])
  logits = a1 @ w["fwd", 1]
  c1 = _elu(np.eye(k) @ w["bwd", 1])
  c0 = c1 @ w["bwd", 0]
  pair = lambda a, c: np.mean((a @ c.T - onehot) ** 2) * 256 / a.shape[1] * scale_c
  z = logits - logits.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  ce = -np.mean(logp[np.arange(len(y)), y])
  return {"pair_0": pair(x, c0), "pair_1": pair(a1, c1), "ce": ce}


def test_mlp_loss_golden_against_numpy():
  model, w = _tiny_mlp()
  x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
  y = np.array([0, 1, 1])
  terms, _ = losses.ccl_terms(model, jnp.asarray(x), jnp.asarray(y),
                              losses.LossConfig(kind="mlp", scale_c=0.5))
  ref = _np_mlp_terms(w, x.astype(np.float64), y)
  assert set(terms) == set(ref)
  for k in ref:
    np.testing.assert_allclose(float(terms[k]), ref[k], rtol=1e-5, err_msg=k)


def test_mlp_pair_loss_uses_feature_dim_scaling():
  # a = 0 => S = 0 => loss = mean(onehot^2) * 256/d * s_C = (1/K) * 256/d * s_C.
  a = jnp.zeros((5, 64))
  c = jnp.ones((10, 64))
  got = losses.mlp_pair_loss(a, c, jnp.arange(5), scale_c=0.5)
  np.testing.assert_allclose(float(got), 0.1 * 256 / 64 * 0.5, rtol=1e-6)


def _np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@pytest.mark.parametrize("with_keep", [False, True])
def test_cnn_pair_loss_golden_against_numpy(with_keep):
  rng = np.random.default_rng(2)
  a = rng.normal(size=(6, 2, 2, 3))
  c = rng.normal(size=(4, 2, 2, 3))
  y = np.array([0, 1, 2, 3, 0, 1])
  keep = np.array([1, 0, 1, 1, 0, 1.0]) if with_keep else None
  A = _np_normalize(a.reshape(6, -1))
  if with_keep:
    A = A * keep[:, None]
  B = _np_normalize(c.reshape(4, -1))
  ref = (0.7 * np.mean((A @ B.T - np.eye(4)[y]) ** 2) +
         0.3 * (np.mean((A @ A.T - np.eye(6)) ** 2) +
                np.mean((B @ B.T - np.eye(4)) ** 2)))
  got = losses.cnn_pair_loss(jnp.asarray(a, jnp.float32),
                             jnp.asarray(c, jnp.float32), jnp.asarray(y),
                             scale_c=0.7, scale_ssl=0.3,
                             keep=None if keep is None else jnp.asarray(keep))
  np.testing.assert_allclose(float(got), ref, rtol=1e-5)


def test_ae_pair_loss_golden_against_numpy():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(2, 4, 4, 3))
  c = rng.normal(size=(2, 4, 4, 3))

  def norm(x):
    x = x - x.mean(axis=(1, 2), keepdims=True)
    return x / np.sqrt((x ** 2).sum(axis=(1, 2), keepdims=True))

  mse = np.mean((a - c) ** 2)
  ref = 2.0 * (mse + np.mean((norm(a) - norm(c)) ** 2))
  af, cf = jnp.asarray(a, jnp.float32), jnp.asarray(c, jnp.float32)
  np.testing.assert_allclose(float(losses.ae_pair_loss(af, cf, scale_h=2.0)),
                             ref, rtol=1e-5)
  np.testing.assert_allclose(
      float(losses.ae_pair_loss(af, cf, scale_h=2.0, with_norm=False)),
      2.0 * mse, rtol=1e-5)


def _hits(grads):
  """Set of (layer, side) whose parameters have a nonzero gradient."""
  hit = set()
  for l, layer in nnx.to_pure_dict(grads)["layers"].items():
    for side, leaves in layer.items():
      if any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(leaves)):
        hit.add((int(l), side))
  return hit


def _hits_per_term(model, terms_fn):
  """{term name: set of (layer, side) it reaches}.

  One jitted gradient of a weighted sum of the terms, called once per term
  with one-hot weights (a Jacobian would vmap the conv backward, a slow path
  on XLA:CPU).
  """
  graphdef, params = nnx.split(model)
  f = lambda p: terms_fn(nnx.merge(graphdef, p))
  names = list(jax.eval_shape(f, params))
  grad_w = jax.jit(jax.grad(lambda p, w: sum(w[k] * v for k, v in f(p).items())))
  return {n: _hits(grad_w(params, {k: jnp.float32(k == n) for k in names}))
          for n in names}


def _nonzero_grads(model, term_fn):
  return _hits_per_term(model, lambda m: {"t": term_fn(m)})["t"]


_X_MLP = lambda: jax.random.normal(jax.random.key(0), (8, 20))
_X_IMG = lambda: jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
_CASES = {  # name: (model factory, input factory, loss config)
    "mlp": (lambda: CCLMLP((20, 16, 16, 12, 4), rngs=nnx.Rngs(0)), _X_MLP,
            losses.LossConfig(kind="mlp")),
    "cnn": (lambda: CCLCNN((32, 32, 3), 4, (4,) * 5, rngs=nnx.Rngs(0)),
            _X_IMG, losses.LossConfig(kind="cnn", scale_c=1.0, scale_ssl=0.5)),
    "cnn_pool": (lambda: CCLCNN((32, 32, 3), 4, (4,) * 5, pool=True,
                                rngs=nnx.Rngs(0)),
                 _X_IMG, losses.LossConfig(kind="cnn", filter_target=True)),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_each_term_reaches_only_its_own_pair(case):
  make_model, make_x, cfg = _CASES[case]
  model, x, y = make_model(), make_x(), jnp.arange(8) % 4
  n_layers = model.num_layers
  hits = _hits_per_term(model, lambda m: losses.ccl_terms(m, x, y, cfg)[0])
  assert sorted(hits) == sorted([f"pair_{l}" for l in range(n_layers)] + ["ce"])
  for name, hit in hits.items():
    if name == "ce":
      want = {(n_layers - 1, "fwd")}
    else:
      # pair l trains f_l (layer index l-1; none for l=0) and g_{l+1} (index l).
      l = int(name.split("_")[1])
      want = {(l, "bwd")} | ({(l - 1, "fwd")} if l > 0 else set())
    assert hit == want, (name, hit)


def test_autoencoder_terms_are_local():
  model = CCLAutoencoder(1, (4, 4), rngs=nnx.Rngs(0))
  # Break the zero / tiny reference init so that every gradient is visible.
  graphdef, params = nnx.split(model)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  model = nnx.merge(graphdef, jax.tree.unflatten(
      tree, [0.3 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)]))
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 1))
  cfg = losses.LossConfig(kind="ae")
  hits = _hits_per_term(model, lambda m: losses.ccl_terms(m, x, None, cfg)[0])
  n = model.num_layers
  assert sorted(hits) == sorted(f"pair_{l}" for l in range(n + 1))
  for l in range(n + 1):
    hit = hits[f"pair_{l}"]
    want = ({(l, "bwd")} if l < n else set()) | ({(l - 1, "fwd")} if l else set())
    assert hit == want, (l, hit)


def test_bp_loss_is_end_to_end_backprop_of_the_forward_net():
  model, w = _tiny_mlp(seed=4)
  x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
  y = jnp.array([1, 0, 1])
  graphdef, params = nnx.split(model)
  bp_grads = nnx.to_pure_dict(jax.jit(jax.grad(
      lambda p: losses.bp_loss(nnx.merge(graphdef, p), x, y,
                               losses.LossConfig())[0]))(params))

  def plain_mlp(w0, w1):  # written independently of the model code
    logits = jax.nn.elu(x @ w0) @ w1
    return losses.cross_entropy(logits, y)

  g0, g1 = jax.jit(jax.grad(plain_mlp, argnums=(0, 1)))(
      jnp.asarray(w["fwd", 0], jnp.float32), jnp.asarray(w["fwd", 1], jnp.float32))
  np.testing.assert_allclose(bp_grads["layers"][0]["fwd"]["kernel"], g0, rtol=1e-5)
  np.testing.assert_allclose(bp_grads["layers"][1]["fwd"]["kernel"], g1, rtol=1e-5)
  for l in (0, 1):  # the feedback net takes no part in BP
    assert not np.any(bp_grads["layers"][l]["bwd"]["kernel"])
  # Without the stop-gradients, the CE term alone reaches every forward layer;
  # with them (CCL), only the output layer.
  ce_hit = _nonzero_grads(model, lambda m: losses.cross_entropy(m(x), y))
  assert ce_hit == {(0, "fwd"), (1, "fwd")}


def test_unknown_loss_kind_is_rejected():
  model = CCLMLP((4, 3, 2), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown loss kind"):
    losses.ccl_terms(model, jnp.zeros((1, 4)), jnp.zeros(1, int),
                     losses.LossConfig(kind="vae"))


def test_normalised_losses_have_finite_gradients_at_zero_maps():
  # A dead (all-zero) ReLU map or a filtered row must not turn gradients to nan.
  a = jnp.zeros((2, 4, 4, 3)).at[0].set(1.0)
  c = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  g = jax.jit(jax.grad(lambda a: losses.ae_pair_loss(a, c)))(a)
  assert np.all(np.isfinite(g))
  g = jax.jit(jax.grad(lambda a: losses.cnn_pair_loss(a, c, jnp.array([0, 1]))))(a)
  assert np.all(np.isfinite(g))
