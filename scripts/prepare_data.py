"""Prepares TFDS image datasets on a machine with internet access.

Downloads and writes datasets in the ``array_record`` format, which
`paperlab.data.load` reads through ``tfds.data_source`` without TensorFlow. Run
it where the network is open, then copy the data directory to the offline
machine (or point ``$TFDS_DATA_DIR`` at it):

    pip install '.[tf]'
    python scripts/prepare_data.py cifar10 cifar100 emnist --data_dir ~/tensorflow_datasets

Fashion-MNIST, the MNIST 5k subset, digits and Shakespeare need no preparation
(see the README's data section).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import tyro

from paperlab import data, distributed

# TFDS names; emnist defaults to the 62-class "byclass" config.
_TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
               "cifar100": "cifar100", "emnist": "emnist/byclass"}


@dataclasses.dataclass(frozen=True)
class Args:
  """Datasets to prepare."""

  names: tyro.conf.Positional[tuple[str, ...]]  # e.g. cifar10 cifar100 emnist mnist
  data_dir: pathlib.Path = data.default_data_dir()


def main(argv=None) -> None:
  distributed.require_single_process("scripts/prepare_data.py", sys.argv[1:] if argv is None else argv)
  args = tyro.cli(Args, args=argv, description=__doc__)
  if not args.names:
    raise SystemExit(f"error: name at least one dataset: {', '.join(_TFDS_NAMES)}.")
  bad = [n for n in args.names if n not in _TFDS_NAMES]
  if bad:
    raise SystemExit(f"error: cannot prepare {bad}; choose from {', '.join(_TFDS_NAMES)}.")
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise SystemExit("error: preparing image datasets needs TensorFlow: pip install '.[tf]'") from e
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for name in args.names:
    builder = tfds.builder(_TFDS_NAMES[name], data_dir=str(args.data_dir))
    builder.download_and_prepare(file_format="array_record")
    print(f"Prepared {name} in {builder.data_dir}")


if __name__ == "__main__":
  main()
