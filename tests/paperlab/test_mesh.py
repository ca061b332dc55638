"""Tests for paperlab.mesh (8 simulated CPU devices)."""

import jax
import numpy as np
import pytest

from paperlab import mesh


def test_parse_mesh():
  assert mesh.parse_mesh("fsdp=4,tp=2") == {"fsdp": 4, "tp": 2}
  assert mesh.parse_mesh("") == {}
  for bad, msg in [("fsdp=4,fsdp=2", "twice"), ("pp=2", "Unknown mesh axis"), ("fsdp", "AXIS=SIZE"),
                   ("tp=0", ">= 1")]:
    with pytest.raises(ValueError, match=msg):
      mesh.parse_mesh(bad)


def test_make_mesh_and_shardings():
  assert len(jax.devices()) == 8
  m = mesh.make_mesh("fsdp=4,tp=2")
  assert m.axis_names == (mesh.FSDP, mesh.TP) and m.devices.shape == (4, 2)
  assert mesh.axis_size(m, mesh.TP) == 2 and mesh.axis_size(m, mesh.DATA) == 1
  x = jax.device_put(np.arange(64.0).reshape(8, 8), mesh.sharding(m, mesh.FSDP, mesh.TP))
  assert x.addressable_shards[0].data.shape == (2, 4)
  # Axes missing from the mesh are dropped from the spec.
  only_fsdp = mesh.make_mesh({"fsdp": 8})
  s = mesh.sharding(only_fsdp, mesh.FSDP, mesh.TP)
  assert s.spec == jax.sharding.PartitionSpec(mesh.FSDP, None)
  with pytest.raises(ValueError, match="needs 6 devices but 8"):
    mesh.make_mesh({"fsdp": 3, "tp": 2})
  one = mesh.make_mesh({"data": 1}, devices=jax.devices()[:1])
  assert one.size == 1
