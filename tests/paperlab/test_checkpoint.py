"""Tests for paperlab.checkpoint: round trip, missing and corrupted checkpoints."""

import shutil

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


def _big_state():
  return {"w": jax.random.normal(jax.random.key(0), (256, 256)), "b": jnp.ones(4)}


def _zero_range(path, offset=0, size=4096):
  data = bytearray(path.read_bytes())
  offset = min(offset, max(0, len(data) - size))
  data[offset:offset + size] = bytes(len(data[offset:offset + size]))
  path.write_bytes(bytes(data))  # same size, different bytes


def test_zeroed_bytes_in_a_data_file_are_detected(tmp_path):
  """Zero 4 KiB (same file size) at every 8 KiB of the array's data file: never a silent restore.

  Without the checksums, 7 of these 30 ranges restored silently wrong arrays
  (the rest fail to decompress); with them, every one is an error.
  """
  with checkpoint.Checkpointer(tmp_path / "ck") as ck:
    ck.save(5, _big_state())
    ck.save(9, _big_state())
  step_dir = tmp_path / "ck" / "9"
  biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  size = biggest.stat().st_size
  assert size > 200_000  # the 256 x 256 array's data file
  kinds = []
  for offset in range(0, size, 8192):
    copy = tmp_path / f"copy{offset}"
    shutil.copytree(tmp_path / "ck", copy)
    damaged = copy / biggest.relative_to(tmp_path / "ck")
    _zero_range(damaged, offset)
    assert damaged.stat().st_size == size
    bad_dir = copy / "9"
    with checkpoint.Checkpointer(copy) as ck:
      with pytest.raises(checkpoint.CheckpointError,
                         match=rf"(?s){bad_dir}.*delete {bad_dir}.*previous checkpoint \(step 5\).*--fresh") as e:
        ck.restore(_big_state())
      kinds.append("checksum" if "do not match the checksums" in str(e.value) else "unreadable")
      if offset == 0:
        restored, step = ck.restore(_big_state(), step=5)  # the fallback the message names works
        assert step == 5 and np.array_equal(restored["w"], _big_state()["w"])
    shutil.rmtree(copy)
  assert "checksum" in kinds  # some damage reads back as valid-looking arrays: only the CRC sees it


def test_valid_data_of_another_state_is_detected(tmp_path):
  """Data files swapped for another checkpoint's (readable, same shapes): the checksums catch it."""
  for name, seed in (("a", 0), ("b", 1)):
    with checkpoint.Checkpointer(tmp_path / name) as ck:
      ck.save(3, {"w": jax.random.normal(jax.random.key(seed), (64, 64))})
  shutil.rmtree(tmp_path / "a" / "3" / "default")
  shutil.copytree(tmp_path / "b" / "3" / "default", tmp_path / "a" / "3" / "default")
  with checkpoint.Checkpointer(tmp_path / "a") as ck:
    with pytest.raises(checkpoint.CheckpointError, match=r"do not match the checksums.*\['w'\]: crc32"):
      ck.restore({"w": jnp.zeros((64, 64))})


def test_damaged_metadata_cannot_switch_verification_off(tmp_path):
  with checkpoint.Checkpointer(tmp_path / "ck") as ck:
    ck.save(3, _big_state())
  meta = tmp_path / "ck" / "3" / "_CHECKPOINT_METADATA"
  assert meta.exists()
  _zero_range(meta, 0, meta.stat().st_size)
  with checkpoint.Checkpointer(tmp_path / "ck") as ck:
    with pytest.raises(checkpoint.CheckpointError, match="lost the checksums"):
      ck.restore(_big_state())


def test_checkpoint_without_checksums_restores_with_a_warning(tmp_path, caplog):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.CheckpointManager(tmp_path / "ck") as mgr:  # as written before checksums existed
    mgr.save(4, args=ocp.args.StandardSave(_big_state()))
    mgr.wait_until_finished()
  with checkpoint.Checkpointer(tmp_path / "ck") as ck:
    restored, step = ck.restore(_big_state())
  assert step == 4 and np.array_equal(restored["b"], np.ones(4))
  assert "no checksums" in caplog.text


def test_checksums_cover_every_array_and_change_with_its_bytes():
  sums = checkpoint.checksums({"a": np.zeros((2, 3), np.float32), "b": jnp.arange(4)})
  assert set(sums) == {"['a']", "['b']"} and sums["['a']"]["shape"] == [2, 3]
  other = checkpoint.checksums({"a": np.eye(2, 3, dtype=np.float32), "b": jnp.arange(4)})
  assert other["['a']"]["crc32"] != sums["['a']"]["crc32"]
  assert other["['b']"] == sums["['b']"]


def test_copy_steps_copies_up_to_a_step(tmp_path):
  with checkpoint.Checkpointer(tmp_path / "src", max_to_keep=5) as ck:
    for step in (10, 20, 30):
      ck.save(step, _state(step))
  assert checkpoint.copy_steps(tmp_path / "src", tmp_path / "dst", max_step=25) == 20
  with checkpoint.Checkpointer(tmp_path / "dst") as ck:
    assert ck.all_steps() == [10, 20]
    restored, step = ck.restore(_state())
    assert step == 20 and np.array_equal(restored["w"], _state(20)["w"])
  for step in (1, 2):
    checkpoint.save_flat(tmp_path / "flat", step, {"a": np.arange(step)}, {})
  assert checkpoint.copy_steps(tmp_path / "flat", tmp_path / "flat2") == 2
  assert checkpoint.flat_steps(tmp_path / "flat2") == [1, 2]
