"""Tests for paperlab.files: atomic writes, strict JSON, damaged files."""

import json
import math
import os

import numpy as np
import pytest

from paperlab import files


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  files.save_json(path, {"acc": 0.5})

  def crash(src, dst):
    raise KeyboardInterrupt  # Ctrl-C after the new text was written, before the rename
  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(KeyboardInterrupt):
    files.save_json(path, {"acc": 0.9, "more": list(range(1000))})
  monkeypatch.undo()
  assert json.loads(path.read_text()) == {"acc": 0.5}
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind
  plain = tmp_path / "plain.txt"
  plain.write_text("x")
  assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600


def test_strict_json_replaces_non_finite_values_and_says_where():
  clean, replaced = files.to_strict_json(
      {"a": [1.0, float("nan")], "b": {"c": np.float32(np.inf)}, "d": -math.inf, "e": np.arange(2), "f": "nan"})
  assert clean == {"a": [1.0, None], "b": {"c": None}, "d": None, "e": [0, 1], "f": "nan"}
  assert replaced == {"a[1]": "nan", "b.c": "inf", "d": "-inf"}
  text = files.dumps({"x": float("nan")})
  assert text == '{"x": null}'


def test_damaged_json_is_an_error_naming_the_file(tmp_path):
  path = tmp_path / "sims" / "fedast_0.json"
  files.atomic_write_text(path, '{"time": [1.0, 2')  # as a crash would have left a plain write
  with pytest.raises(files.DamagedFileError, match=rf"{path} is damaged.*Delete it"):
    files.load_json(path)
  with pytest.raises(FileNotFoundError):
    files.load_json(tmp_path / "missing.json")
