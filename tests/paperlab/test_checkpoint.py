"""Tests for paperlab.checkpoint: round trip, missing and corrupted checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import checkpoint


def _state(seed=0):
  k = jax.random.key(seed)
  return {"w": jax.random.normal(k, (3, 4)), "b": jnp.zeros(4, jnp.bfloat16),
          "count": jnp.array(5, jnp.int32), "rng": jax.random.key(seed + 1),
          "nested": (jnp.arange(3.0), [jnp.ones(2)])}


def test_round_trip_including_typed_keys(tmp_path):
  ck = checkpoint.Checkpointer(tmp_path / "ck", max_to_keep=2)
  assert ck.restore(_state()) is None  # nothing saved yet: fresh start
  for step in (10, 20, 30):
    ck.save(step, _state(step))
  assert ck.all_steps() == [20, 30]  # max_to_keep
  restored, step = ck.restore(_state())
  assert step == 30
  expected = _state(30)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    if jnp.issubdtype(b.dtype, jax.dtypes.prng_key):
      np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
      np.testing.assert_array_equal(jax.random.normal(a, (3,)), jax.random.normal(b, (3,)))
    else:
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(a, b)
  older, s = ck.restore(_state(), step=20)
  assert s == 20 and np.array_equal(older["w"], _state(20)["w"])
  ck.close()


def test_missing_directory_is_a_fresh_start(tmp_path):
  with checkpoint.Checkpointer(tmp_path / "nothing") as ck:
    assert ck.latest_step() is None and ck.restore(_state()) is None


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
  ck = checkpoint.Checkpointer(tmp_path / "ck")
  ck.save(7, _state())
  ck.close()
  step_dir = tmp_path / "ck" / "7"
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
  assert files
  for p in files:  # truncate every data file
    p.write_bytes(b"\x00garbage")
  ck = checkpoint.Checkpointer(tmp_path / "ck")
  with pytest.raises(checkpoint.CheckpointError, match=r"(?s)Could not restore checkpoint 7.*--fresh"):
    ck.restore(_state())


def test_structure_mismatch_gives_clear_error(tmp_path):
  ck = checkpoint.Checkpointer(tmp_path / "ck")
  ck.save(1, {"w": jnp.ones((2, 2))})
  with pytest.raises(checkpoint.CheckpointError, match="Could not restore checkpoint 1"):
    ck.restore({"w": jnp.ones((3, 3)), "extra": jnp.zeros(1)})


def test_flat_checkpoints_round_trip_and_keep_last(tmp_path):
  assert checkpoint.load_flat(tmp_path / "none") is None
  for step in (1, 2, 3):
    checkpoint.save_flat(tmp_path, step, {"a": np.arange(step), "empty": np.zeros((0, 2))},
                         {"clock": 1.5 * step, "big": 2 ** 70, "heap": [[1.0, 2, 3]]}, max_to_keep=2)
  assert checkpoint.flat_steps(tmp_path) == [2, 3]
  step, arrays, meta = checkpoint.load_flat(tmp_path)
  assert step == 3 and arrays["a"].tolist() == [0, 1, 2] and arrays["empty"].shape == (0, 2)
  assert meta == {"clock": 4.5, "big": 2 ** 70, "heap": [[1.0, 2, 3]]}
  (tmp_path / "step_3.npz").write_bytes(b"broken")
  with pytest.raises(checkpoint.CheckpointError, match="step_3.npz"):
    checkpoint.load_flat(tmp_path)
