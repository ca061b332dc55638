"""Tests for paperlab.data: offline sources, TFDS path (mock data), errors, batching."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from paperlab import data

HAS_FMNIST = (data.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()


@pytest.fixture
def no_tfds(tmp_path, monkeypatch):
  """An empty TFDS data dir, so only offline sources are used."""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  return tmp_path


@pytest.mark.skipif(not HAS_FMNIST, reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_offline_full(no_tfds):
  train = data.load("fashion_mnist", "train")
  test = data.load("fashion_mnist", "test")
  assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
  assert test.images.shape == (10000, 28, 28, 1)
  assert np.bincount(train.labels).tolist() == [6000] * 10
  assert np.bincount(test.labels).tolist() == [1000] * 10
  assert "Debian" in train.source and train.name == "fashion_mnist"


def test_mnist_offline_is_labelled_as_subset(no_tfds, caplog):
  caplog.set_level("INFO")
  train = data.load("mnist", "train")
  test = data.load("mnist", "test")
  assert train.name == "mnist (5k subset)"
  assert len(train) == 4000 and len(test) == 1000
  assert np.bincount(train.labels).tolist() == [400] * 10
  assert np.bincount(test.labels).tolist() == [100] * 10
  assert train.images.shape[1:] == (28, 28, 1) and train.images.max() > 200
  assert "5k subset" in caplog.text and "4000 examples" in caplog.text
  # Train and test are disjoint.
  flat_train = {r.tobytes() for r in train.images}
  assert not any(r.tobytes() in flat_train for r in test.images)


def test_digits_offline(no_tfds):
  train, test = data.load("digits", "train"), data.load("digits", "test")
  assert len(train) + len(test) == 1797 and len(test) == 360
  assert train.images.shape[1:] == (8, 8, 1) and train.images.max() == 255


def test_unknown_name_and_split():
  with pytest.raises(ValueError, match="Unknown dataset 'cifar11'"):
    data.load("cifar11")
  with pytest.raises(ValueError, match="Unknown split"):
    data.load("mnist", "validation")


def test_missing_dataset_says_how_to_get_it(no_tfds):
  with pytest.raises(FileNotFoundError, match="prepare_data.py cifar10"):
    data.load("cifar10", "train")


def test_missing_fashion_mnist_mentions_debian_package(no_tfds, monkeypatch):
  monkeypatch.setattr(data, "FASHION_MNIST_DIR", no_tfds / "nowhere")
  with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
    data.load("fashion_mnist", "test")


@pytest.mark.parametrize("name,shape,classes", [("cifar10", (32, 32, 3), 10),
                                                 ("mnist", (28, 28, 1), 10),
                                                 ("cifar100", (32, 32, 3), 100)])
def test_tfds_path_with_mock_data(no_tfds, name, shape, classes):
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(name, "train", offline=False)
  assert ds.images.shape == (12,) + shape and ds.images.dtype == np.uint8
  assert ds.labels.shape == (12,) and ds.num_classes == classes
  assert "TFDS" in ds.source and ds.name == name


def test_shakespeare_clients():
  clients = data.load_text("shakespeare")
  assert len(clients) > 1000
  assert all(isinstance(k, tuple) and len(k) == 2 for k in clients)
  hamlet = [k for k in clients if k[1] == "HAMLET"]
  assert hamlet and len(clients[hamlet[0]]) > 10000
  assert "**" not in clients[hamlet[0]]


def test_batch_indices_is_pure_and_covers_each_epoch():
  a = data.batch_indices(100, 10, seed=3, start=0, count=25)
  b = np.concatenate([data.batch_indices(100, 10, seed=3, start=s, count=1) for s in range(25)])
  np.testing.assert_array_equal(a, b)
  for epoch in range(2):
    assert sorted(a[epoch * 10:(epoch + 1) * 10].ravel().tolist()) == list(range(100))
  assert not np.array_equal(a[:10], a[10:20])  # a new permutation each epoch
  assert not np.array_equal(a, data.batch_indices(100, 10, seed=4, start=0, count=25))
  with pytest.raises(ValueError, match="batch_size"):
    data.batch_indices(10, 11, seed=0, start=0)
