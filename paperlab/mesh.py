"""Mesh axis names and small helpers for building device meshes.

Every package refers to mesh axes through the constants below; no other module
spells a raw axis string. Meshes are plain `jax.sharding.Mesh` objects, so the
same programs run on one CPU, on 8 simulated CPU devices in tests, and on a
multi-host accelerator mesh under `jax.distributed.initialize`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"  # data parallelism: batch axis, per-replica optimizer state
FSDP = "fsdp"  # fully-sharded data parallel: parameters sharded on one dim
TP = "tp"  # tensor parallel: parameters sharded on the other dim
CLIENTS = "clients"  # federated simulation: the sampled-client axis
SWEEP = "sweep"  # sweeps: the member axis of a stacked train state (paperlab.sweep)

AXES = (DATA, FSDP, TP, CLIENTS, SWEEP)


def parse_mesh(spec: str) -> dict[str, int]:
  """Parses a mesh description such as ``"fsdp=4,tp=2"`` into ``{axis: size}``.

  Raises:
    ValueError: on an unknown axis name, a repeated axis or a non-positive size.
  """
  shape: dict[str, int] = {}
  if not spec.strip():
    return shape
  for part in spec.split(","):
    name, sep, size = part.partition("=")
    name = name.strip()
    if not sep or not size.strip().isdigit():
      raise ValueError(
          f"Bad mesh entry {part!r} in {spec!r}: expected AXIS=SIZE, e.g. 'fsdp=4,tp=2'.")
    if name not in AXES:
      raise ValueError(f"Unknown mesh axis {name!r} in {spec!r}; known axes: {', '.join(AXES)}.")
    if name in shape:
      raise ValueError(f"Mesh axis {name!r} given twice in {spec!r}.")
    if int(size) < 1:
      raise ValueError(f"Mesh axis {name!r} must have size >= 1, got {size}.")
    shape[name] = int(size)
  return shape


def make_mesh(shape: Mapping[str, int] | str,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a `Mesh` with the given ``{axis: size}`` (or ``"fsdp=4,tp=2"``).

  The product of the sizes must equal the number of devices used. With
  ``devices=None`` all of `jax.devices()` are used.

  Raises:
    ValueError: if the axis sizes do not multiply to the number of devices.
  """
  if isinstance(shape, str):
    shape = parse_mesh(shape)
  for name in shape:
    if name not in AXES:
      raise ValueError(f"Unknown mesh axis {name!r}; known axes: {', '.join(AXES)}.")
  devices = list(jax.devices() if devices is None else devices)
  size = math.prod(shape.values()) if shape else 1
  if size != len(devices):
    raise ValueError(
        f"Mesh {dict(shape)} needs {size} devices but {len(devices)} are available. "
        "On CPU, simulate more with XLA_FLAGS=--xla_force_host_platform_device_count=N "
        "(set before JAX is imported).")
  names = tuple(shape) or (DATA,)
  dims = tuple(shape.values()) or (1,)
  return Mesh(np.asarray(devices, dtype=object).reshape(dims), names)


def sharding(mesh: Mesh, *spec: str | tuple[str, ...] | None) -> NamedSharding:
  """`NamedSharding` for ``PartitionSpec(*spec)``; axes absent from the mesh are dropped.

  Dropping lets one layout rule (e.g. ``(FSDP, TP)``) serve meshes that only
  have some of the axes.
  """
  def keep(entry):
    if entry is None:
      return None
    if isinstance(entry, tuple):
      kept = tuple(a for a in entry if a in mesh.axis_names)
      return kept or None
    return entry if entry in mesh.axis_names else None
  return NamedSharding(mesh, PartitionSpec(*(keep(e) for e in spec)))


def replicated(mesh: Mesh) -> NamedSharding:
  """A fully replicated sharding on ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def axis_size(mesh: Mesh, name: str) -> int:
  """Size of axis ``name`` in ``mesh`` (1 if the mesh lacks it)."""
  return int(mesh.shape.get(name, 1))
