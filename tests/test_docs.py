"""The API reference builds from the docstrings with no pdoc warning."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _builder():
  spec = importlib.util.spec_from_file_location("build_api", ROOT / "docs" / "build_api.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_api_reference_builds_without_warnings(tmp_path):
  builder = _builder()
  problems = builder.build(tmp_path)
  assert problems == []
  for package in builder.PACKAGES:
    page = tmp_path / f"{package}.html"
    assert page.stat().st_size > 5000, package
  optim_page = (tmp_path / "optim.html").read_text()
  for name in ("scale_by_dion", "complex_adam", "muon_routed"):
    assert f'id="{name}"' in optim_page, name
