"""The generated --help of every script: each flag has its own help text."""

import collections
import importlib
import pathlib
import sys
import warnings

import pytest
import tyro

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

SCRIPTS = ("baseline_mlp", "ccl", "complex_momentum", "dion", "fed_partial", "fedast", "swat_nn")


def _field_helps(config_cls) -> dict[str, str]:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    parser = tyro.extras.get_parser(config_cls)
  return {a.dest: (a.help or "").split("(default")[0].strip() for a in parser._actions  # pylint: disable=protected-access
          if a.dest != "help"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_help_text_is_shared_by_two_flags(name):
  helps = _field_helps(importlib.import_module(name).Config)
  by_text = collections.defaultdict(list)
  for dest, text in helps.items():
    if text:
      by_text[text].append(dest)
  shared = {text: dests for text, dests in by_text.items() if len(dests) > 1}
  assert not shared, f"{name}: one comment is the help of several flags: {shared}"


def test_every_swat_nn_flag_has_help():
  helps = _field_helps(importlib.import_module("swat_nn").Config)
  assert not [d for d, text in helps.items() if not text]
