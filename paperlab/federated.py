"""Client partitions for federated simulation, and packing into padded arrays.

A partition is a list of int index arrays, one per client, that together cover
every example exactly once. Everything here is deterministic from a seed.

* `dirichlet_partition`: label skew, each class split over clients by
  Dirichlet(alpha) proportions (small alpha = each client sees few classes).
* `iid_partition`: a uniform random split into near-equal shares.
* `natural_partition`: group by a key per example (e.g. Shakespeare's
  (play, role)).
* `permutation_transforms` / `rotation_transforms` / `apply_client_transforms`:
  a fixed input transform per client, so that personal input layers matter.
* `pack_clients`: per-client data -> ``[clients, steps, batch, ...]`` arrays
  with an example mask, ready for `vmap` over clients and `lax.scan` over
  steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np


def _check_clients(num_clients: int, num_examples: int) -> None:
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}.")
  if num_clients > num_examples:
    raise ValueError(f"num_clients={num_clients} exceeds the {num_examples} examples.")


def iid_partition(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
  """Uniform random split of ``range(num_examples)`` into near-equal shares."""
  _check_clients(num_clients, num_examples)
  perm = np.random.default_rng(seed).permutation(num_examples)
  return [np.sort(part) for part in np.array_split(perm, num_clients)]


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float, seed: int,
                        *, min_size: int = 1, max_tries: int = 100) -> list[np.ndarray]:
  """Label-skewed split: class c goes to clients in Dirichlet(alpha) proportions.

  For each class, client shares ``p ~ Dir(alpha * 1)`` are drawn and the
  class's (shuffled) examples are cut at the cumulative shares. Draws are
  repeated until every client holds at least ``min_size`` examples.

  Args:
    labels: int array ``[N]``.
    num_clients: number of clients.
    alpha: concentration; small values (0.1) give few classes per client,
      large values (100) approach an IID split.
    seed: the partition is a pure function of the seed.
    min_size: minimum examples per client.
    max_tries: redraws before giving up.

  Returns:
    ``num_clients`` sorted index arrays covering each example exactly once.

  Raises:
    ValueError: bad arguments, or no draw satisfied ``min_size``.
  """
  labels = np.asarray(labels)
  _check_clients(num_clients, len(labels))
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0, got {alpha}.")
  if min_size * num_clients > len(labels):
    raise ValueError(f"min_size={min_size} x {num_clients} clients exceeds {len(labels)} examples.")
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  for _ in range(max_tries):
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in classes:
      idx = rng.permutation(np.flatnonzero(labels == c))
      shares = rng.dirichlet(np.full(num_clients, alpha))
      cuts = np.round(np.cumsum(shares)[:-1] * len(idx)).astype(int)
      for client, chunk in enumerate(np.split(idx, cuts)):
        parts[client].append(chunk)
    result = [np.sort(np.concatenate(p)) for p in parts]
    if min(len(p) for p in result) >= min_size:
      return result
  raise ValueError(
      f"No Dirichlet(alpha={alpha}) draw gave every one of {num_clients} clients >= {min_size} "
      f"examples in {max_tries} tries; raise alpha or lower num_clients / min_size.")


def dirichlet_sample_clients(labels: np.ndarray, num_clients: int, alpha: float, per_client: int,
                             seed: int) -> list[np.ndarray]:
  """Each client draws class proportions ``p ~ Dir(alpha)`` and ``per_client`` examples from them.

  Unlike `dirichlet_partition`, clients may share examples (each class's
  examples are drawn with replacement across clients, without replacement
  within a client while the class lasts). This is the FedAST-style setup for a
  pool of many clients with a fixed amount of data each, larger than the
  dataset allows for disjoint shares (e.g. 1000 clients x 300 examples on
  MNIST-5k).
  """
  labels = np.asarray(labels)
  if num_clients < 1 or per_client < 1:
    raise ValueError(f"num_clients and per_client must be >= 1, got {num_clients}, {per_client}.")
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0, got {alpha}.")
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  by_class = [np.flatnonzero(labels == c) for c in classes]
  out = []
  for _ in range(num_clients):
    counts = rng.multinomial(per_client, rng.dirichlet(np.full(len(classes), alpha)))
    picks = [rng.choice(idx, size=n, replace=n > len(idx)) for idx, n in zip(by_class, counts) if n]
    out.append(np.sort(np.concatenate(picks)))
  return out


def natural_partition(keys: Sequence[Hashable]) -> tuple[list[Hashable], list[np.ndarray]]:
  """Groups example indices by key, in first-seen key order.

  Returns:
    ``(client_keys, partition)``.
  """
  groups: dict[Hashable, list[int]] = {}
  for i, key in enumerate(keys):
    groups.setdefault(key, []).append(i)
  return list(groups), [np.asarray(v, np.int64) for v in groups.values()]


def check_partition(partition: Sequence[np.ndarray], num_examples: int) -> None:
  """Raises ValueError unless the partition covers each example exactly once."""
  flat = np.concatenate([np.asarray(p) for p in partition]) if partition else np.zeros(0, int)
  counts = np.bincount(flat, minlength=num_examples) if flat.size else np.zeros(num_examples)
  if flat.size and (flat.min() < 0 or flat.max() >= num_examples):
    raise ValueError("Partition holds indices outside [0, num_examples).")
  if not np.all(counts == 1):
    raise ValueError(
        f"Partition is not exact: {int(np.sum(counts == 0))} examples missing, "
        f"{int(np.sum(counts > 1))} repeated.")


# ---------------------------------------------------------------------------
# Per-client input transforms


def permutation_transforms(num_clients: int, num_pixels: int, seed: int,
                           fraction: float = 1.0) -> np.ndarray:
  """A fixed pixel permutation per client: int ``[num_clients, num_pixels]``.

  With ``fraction < 1`` only that fraction of pixel positions is shuffled
  (the rest stay in place), which sets how different clients' inputs look.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
  rng = np.random.default_rng(seed)
  perms = np.tile(np.arange(num_pixels), (num_clients, 1))
  k = int(round(fraction * num_pixels))
  for c in range(num_clients):
    moved = rng.choice(num_pixels, size=k, replace=False)
    perms[c, moved] = rng.permutation(moved)
  return perms


def rotation_transforms(num_clients: int, seed: int) -> np.ndarray:
  """A fixed number of quarter turns (0-3) per client: int ``[num_clients]``."""
  return np.random.default_rng(seed).integers(0, 4, size=num_clients)


def apply_client_transforms(images: np.ndarray, partition: Sequence[np.ndarray],
                            *, permutations: np.ndarray | None = None,
                            rotations: np.ndarray | None = None) -> np.ndarray:
  """Returns a copy of ``images`` [N, H, W, C] with each client's transform applied."""
  out = np.array(images, copy=True)
  n, h, w, c = out.shape
  for client, idx in enumerate(partition):
    x = out[idx]
    if rotations is not None:
      x = np.rot90(x, k=int(rotations[client]), axes=(1, 2))
    if permutations is not None:
      x = x.reshape(len(idx), h * w, c)[:, permutations[client]].reshape(len(idx), h, w, c)
    out[idx] = x
  return out


# ---------------------------------------------------------------------------
# Packing


@dataclasses.dataclass(frozen=True)
class ClientArrays:
  """Padded per-client data for a vmapped simulation.

  ``x``: ``[clients, steps, batch, ...]``; ``y``: ``[clients, steps, batch]``;
  ``mask``: bool ``[clients, steps, batch]``, True for real examples;
  ``num_examples``: int ``[clients]`` (real examples per client, before the
  per-client cap on steps).
  """

  x: np.ndarray
  y: np.ndarray
  mask: np.ndarray
  num_examples: np.ndarray

  @property
  def num_clients(self) -> int:
    return int(self.x.shape[0])

  @property
  def steps(self) -> int:
    return int(self.x.shape[1])

  def step_mask(self) -> np.ndarray:
    """bool ``[clients, steps]``: a step holds at least one real example."""
    return self.mask.any(axis=-1)

  def select(self, clients: np.ndarray) -> "ClientArrays":
    return ClientArrays(self.x[clients], self.y[clients], self.mask[clients],
                        self.num_examples[clients])


def pack_clients(x: np.ndarray, y: np.ndarray, partition: Sequence[np.ndarray], *,
                 batch_size: int, steps: int | None = None, seed: int = 0,
                 shuffle: bool = True) -> ClientArrays:
  """Packs each client's examples into ``[steps, batch]`` slots with a mask.

  Each client's examples are shuffled (from ``(seed, client)``) and laid out
  batch after batch; slots past the client's data are zero and masked out. With
  ``steps=None`` the step count is the largest client's ``ceil(n / batch)``;
  with a fixed ``steps`` a client with more data keeps only its first
  ``steps * batch_size`` examples, and one with less cycles through its data
  so every step is full (a client with a single example still gets full
  steps).

  Returns:
    `ClientArrays`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  sizes = np.array([len(p) for p in partition], np.int64)
  if np.any(sizes == 0):
    raise ValueError(f"Clients {np.flatnonzero(sizes == 0).tolist()[:10]} have no examples.")
  cycle = steps is not None
  if steps is None:
    steps = int(np.max(-(-sizes // batch_size)))
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  slots = steps * batch_size
  num = len(partition)
  xs = np.zeros((num, slots) + x.shape[1:], x.dtype)
  ys = np.zeros((num, slots) + y.shape[1:], y.dtype)
  mask = np.zeros((num, slots), bool)
  for c, idx in enumerate(partition):
    idx = np.asarray(idx)
    if shuffle:
      idx = np.random.default_rng([seed, c]).permutation(idx)
    take = np.resize(idx, slots) if cycle else idx[:slots]
    xs[c, :len(take)] = x[take]
    ys[c, :len(take)] = y[take]
    mask[c, :len(take)] = True
  shape = (num, steps, batch_size)
  return ClientArrays(xs.reshape(shape + x.shape[1:]), ys.reshape(shape + y.shape[1:]),
                      mask.reshape(shape), sizes)
