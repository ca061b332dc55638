"""Federated datasets: label-matched test splits, transforms, Shakespeare, EMNIST (mock TFDS)."""

import numpy as np
import pytest

from fed import datasets


def test_matched_test_partition_follows_train_class_proportions():
  rng = np.random.default_rng(0)
  train_labels = np.repeat(np.arange(4), 100)
  parts = [np.flatnonzero(train_labels < 2), np.flatnonzero(train_labels == 2),
           np.flatnonzero(train_labels == 3)[:30], np.flatnonzero(train_labels == 3)[30:]]
  test_labels = rng.permutation(np.repeat(np.arange(4), 50))
  test = datasets.matched_test_partition(train_labels, parts, test_labels, seed=0)
  flat = np.concatenate(test)
  assert sorted(flat.tolist()) == list(range(200))  # every test example exactly once
  assert set(test_labels[test[0]]) == {0, 1} and len(test[0]) == 100
  assert set(test_labels[test[1]]) == {2}
  assert len(test[2]) == 15 and len(test[3]) == 35  # class 3 cut 30:70


def test_federated_digits_with_input_transforms():
  fd = datasets.federated_images("digits", num_clients=6, alpha=0.5, seed=0, batch_size=8,
                                 test_batch_size=16, permute_fraction=0.5, max_client_examples=100)
  assert fd.num_clients == 6 and fd.num_classes == 10
  x, mask = fd.train.x, fd.train.mask
  assert x.shape[:3] == mask.shape and x.shape[3:] == (8, 8, 1) and x.dtype == np.uint8
  assert fd.train.mask.sum((1, 2)).max() <= 100
  assert fd.test.mask.sum() == 360  # the whole digits test split, spread over clients
  info = fd.describe()
  assert info["clients"] == 6 and info["test_examples"] == 360
  # Each client's train and test classes agree (label-matched test split).
  for c in range(6):
    train_classes = set(fd.train.y[c][fd.train.mask[c]].tolist())
    test_classes = set(fd.test.y[c][fd.test.mask[c]].tolist())
    assert test_classes <= train_classes


def test_shakespeare_clients_from_a_corpus():
  corpus = {("hamlet", "HAMLET"): "to be or not to be " * 20, ("hamlet", "HORATIO"): "ay " * 50,
            ("lear", "FOOL"): "nuncle " * 3}
  fd = datasets.shakespeare(seq_len=10, min_chars=100, batch_size=4, test_batch_size=4,
                            corpus=corpus)
  assert fd.num_clients == 2  # the fool speaks too little
  vocab = datasets.char_vocab([corpus[("hamlet", "HAMLET")], corpus[("hamlet", "HORATIO")]])
  assert fd.num_classes == len(vocab) + 1
  x, y, m = fd.train.x[0], fd.train.y[0], fd.train.mask[0]
  assert x.shape[-1] == 10
  np.testing.assert_array_equal(x[m][:, 1:], y[m][:, :-1])  # targets are inputs shifted by one
  n_hamlet = len(corpus[("hamlet", "HAMLET")]) // 11
  assert m.sum() + fd.test.mask[0].sum() == n_hamlet
  with pytest.raises(ValueError, match="No"):
    datasets.shakespeare(seq_len=10, min_chars=10_000, corpus=corpus)


def test_emnist_through_mock_tfds(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=120, data_dir=str(tmp_path)):
    fd = datasets.federated_images("emnist", num_clients=4, alpha=1.0, seed=0, batch_size=5,
                                   test_batch_size=10)
  assert fd.num_classes == 62 and fd.train.x.shape[3:] == (28, 28, 1)
  assert fd.train.mask.sum() == 120 and fd.test.mask.sum() == 120
