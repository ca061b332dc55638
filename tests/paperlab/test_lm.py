"""Char-level LM helpers and a short Dion training run on a tiny CharGPT."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import lm
from optim import _dion as D
from optim import labels as L

TEXT = "to be, or not to be: that is the question.\n" * 40


def test_vocab_roundtrip_and_unknown_char():
  vocab = lm.CharVocab(TEXT)
  assert vocab.size == len(set(TEXT))
  ids = vocab.encode("to be")
  assert ids.dtype == np.int32 and vocab.decode(ids) == "to be"
  with pytest.raises(ValueError, match="'Z'"):
    vocab.encode("Z")


def test_window_batch_is_a_pure_function_of_seed_and_step():
  ids = np.arange(1000, dtype=np.int32)
  x1, y1 = lm.window_batch(ids, 4, 16, seed=0, step=7)
  x2, _ = lm.window_batch(ids, 4, 16, seed=0, step=7)
  x3, _ = lm.window_batch(ids, 4, 16, seed=0, step=8)
  np.testing.assert_array_equal(x1, x2)
  assert not np.array_equal(x1, x3)
  np.testing.assert_array_equal(y1[:, :-1], x1[:, 1:])  # targets are the next characters
  vx, vy = lm.eval_windows(ids, 16, 5)
  assert vx.shape == (5, 16) and np.all(vy == vx + 1)
  train, val = lm.split_ids(ids, 0.1)
  assert len(train) == 900 and val[0] == 900


def test_char_gpt_is_causal_and_labelled_for_routing():
  model = lm.CharGPT(11, 16, 2, 2, 8, rngs=nnx.Rngs(0))
  ids = jnp.arange(8)[None] % 11
  forward = nnx.jit(lambda m, x: m(x))
  logits = forward(model, ids)
  assert logits.shape == (1, 8, 11)
  changed = forward(model, ids.at[0, 5].set(3))
  np.testing.assert_allclose(np.asarray(logits[0, :5]), np.asarray(changed[0, :5]), atol=1e-6)
  assert not np.allclose(np.asarray(logits[0, 5:]), np.asarray(changed[0, 5:]))
  counts = L.count(L.label_params(nnx.to_pure_dict(nnx.state(model))))
  # 2 layers x (q, k, v, o, up, down); token + position embeddings; untied head;
  # 2 x 2 block norms + final norm.
  assert counts == {L.MATRIX: 12, L.EMBEDDING: 2, L.HEAD: 1, L.VECTOR: 5, L.CONV: 0}
  with pytest.raises(ValueError, match="heads"):
    lm.CharGPT(11, 10, 1, 3, 8, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_dion_trains_a_tiny_char_gpt():
  vocab = lm.CharVocab(TEXT)
  ids = vocab.encode(TEXT)
  model = lm.CharGPT(vocab.size, 32, 1, 2, 32, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  tx = D.dion(0.05, 0.5, scalar_learning_rate=1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def steps(params, opt_state, xs, ys):
    def body(carry, xy):
      p, o = carry
      loss, g = jax.value_and_grad(lambda p: lm.loss_fn(nnx.merge(graphdef, p), *xy))(p)
      u, o = tx.update(g, o, p)
      return (optax.apply_updates(p, u), o), loss
    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xs, ys))
    return params, opt_state, losses

  batches = [lm.window_batch(ids, 16, 32, seed=0, step=s) for s in range(60)]
  xs, ys = (np.stack(z) for z in zip(*batches))
  params, opt_state, losses = steps(params, opt_state, xs, ys)
  assert float(losses[0]) > 2.0
  # The text repeats one 43-character line: after 60 steps the model predicts it well.
  assert float(jnp.mean(losses[-5:])) < 0.5
