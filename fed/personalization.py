"""Which parameters are personal: label functions over a params tree, and the split.

Partial personalization (Pillutla et al., ICML 2022) divides a model's
parameters into a shared part ``u`` (averaged by the server) and a personal
part ``v_i`` (kept by client ``i``). Here a *split* names which leaves are
personal, by the first component of each leaf's path (exact name match, never
substrings, so a split cannot silently grab extra leaves):

============ ================================================================
split        personal leaves
============ ================================================================
``none``     nothing (plain FedAvg)
``input``    the input layer (``LayerNames.input``)
``output``   the output layer (``LayerNames.output``)
``adapter``  the residual adapters and every normalization layer
             (``LayerNames.adapter`` + ``LayerNames.norm``), as in the
             reference code, where the adapter split also personalizes all
             GroupNorm / LayerNorm parameters
``full``     every leaf of the base model
============ ================================================================

Adapters are only part of the model for the ``adapter`` split: for every
other split they are *frozen* at their near-zero initialization (an adapter
with a zero up-projection is the identity), so ``none`` / ``input`` /
``output`` / ``full`` train exactly the base model.

`Partition` turns a params tree into three flat dicts ``{path: leaf}``
(shared, personal, frozen) and back; flat dicts vmap, stack, checkpoint and
gather by client index without caring about the model's container types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SPLITS = ("none", "input", "output", "adapter", "full")
SHARED, PERSONAL, FROZEN = "shared", "personal", "frozen"

Flat = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LayerNames:
  """First path components that identify each layer group of a model."""

  input: tuple[str, ...] = ("inp",)
  output: tuple[str, ...] = ("out",)
  adapter: tuple[str, ...] = ("adapters",)
  norm: tuple[str, ...] = ("norms",)


def _key_name(entry: Any) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def leaf_paths(params: Any) -> list[str]:
  """``'/'``-joined path of every leaf, in `jax.tree` leaf order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return ["/".join(_key_name(k) for k in path) for path, _ in flat]


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown personalization split {split!r}; use one of {SPLITS}.")


def label_params(params: Any, split: str, names: LayerNames = LayerNames()) -> Any:
  """A tree like ``params`` with ``'shared'`` / ``'personal'`` / ``'frozen'`` leaves.

  Raises:
    ValueError: unknown split, or the split's layer names match no leaf
      (e.g. ``input`` on a model whose input layer is called differently).
  """
  check_split(split)
  adapter_group = set(names.adapter) | set(names.norm)
  personal_group = {"none": set(), "input": set(names.input), "output": set(names.output),
                    "adapter": adapter_group, "full": None}[split]
  paths = leaf_paths(params)
  labels = []
  for path in paths:
    head = path.split("/")[0]
    is_adapter = head in names.adapter
    if split != "adapter" and is_adapter:
      labels.append(FROZEN)
    elif personal_group is None or head in personal_group:
      labels.append(PERSONAL)
    else:
      labels.append(SHARED)
  if split not in ("none", "full") and PERSONAL not in labels:
    raise ValueError(
        f"Split {split!r} selects no leaf: no path starts with any of {sorted(personal_group)}. "
        f"Leaf paths: {paths[:8]}{' ...' if len(paths) > 8 else ''}; pass LayerNames(...) "
        "matching the model.")
  return jax.tree.unflatten(jax.tree.structure(params), labels)


class Partition:
  """Splits a params tree by a label tree into flat shared / personal / frozen dicts.

  Args:
    params: a template params tree (only its structure and paths are kept).
    labels: a tree of the same structure with ``'shared'`` / ``'personal'`` /
      ``'frozen'`` leaves (see `label_params`).
  """

  def __init__(self, params: Any, labels: Any):
    self.treedef = jax.tree.structure(params)
    self.paths = leaf_paths(params)
    self.labels = jax.tree.leaves(labels)
    if len(self.labels) != len(self.paths):
      raise ValueError(f"labels has {len(self.labels)} leaves, params {len(self.paths)}.")
    bad = sorted({l for l in self.labels if l not in (SHARED, PERSONAL, FROZEN)})
    if bad:
      raise ValueError(f"Unknown labels {bad}; use {SHARED!r}, {PERSONAL!r}, {FROZEN!r}.")
    self.sizes = [int(np.prod(np.shape(x))) for x in jax.tree.leaves(params)]

  def _pick(self, params: Any, label: str) -> Flat:
    leaves = self.treedef.flatten_up_to(params)
    return {p: x for p, l, x in zip(self.paths, self.labels, leaves) if l == label}

  def split(self, params: Any) -> tuple[Flat, Flat, Flat]:
    """``params -> (shared, personal, frozen)`` flat dicts keyed by leaf path."""
    return (self._pick(params, SHARED), self._pick(params, PERSONAL),
            self._pick(params, FROZEN))

  def merge(self, shared: Mapping[str, Any], personal: Mapping[str, Any],
            frozen: Mapping[str, Any]) -> Any:
    """Inverse of `split`."""
    pools = {SHARED: shared, PERSONAL: personal, FROZEN: frozen}
    return jax.tree.unflatten(self.treedef,
                              [pools[l][p] for p, l in zip(self.paths, self.labels)])

  def count(self, label: str) -> int:
    return sum(s for s, l in zip(self.sizes, self.labels) if l == label)

  @property
  def personal_fraction(self) -> float:
    """Personal parameters / trained (shared + personal) parameters."""
    trained = self.count(SHARED) + self.count(PERSONAL)
    return self.count(PERSONAL) / trained if trained else 0.0


# ---------------------------------------------------------------------------
# Stacked per-client personal state


def stack(personal: Flat, num_clients: int) -> Flat:
  """Every client starts from the same ``personal``: leaves ``[num_clients, ...]``."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients,) + x.shape), personal)


def gather(store: Flat, clients: jax.Array) -> Flat:
  """Rows ``clients`` of a stacked store."""
  return jax.tree.map(lambda s: s[clients], store)


def scatter(store: Flat, clients: jax.Array, values: Flat) -> Flat:
  """Writes ``values`` (leading axis = ``len(clients)``) into rows ``clients``."""
  return jax.tree.map(lambda s, v: s.at[clients].set(v), store, values)
