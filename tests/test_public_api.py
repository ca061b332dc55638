"""The flat, optax-like import surface: every public name of every package."""

import importlib
import subprocess
import sys
import tomllib
import pathlib
import types

import pytest

PACKAGES = ("optim", "fed", "ccl_jax", "nas", "paperlab")
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_imports(name):
  package = importlib.import_module(name)
  assert package.__all__, name
  assert len(set(package.__all__)) == len(package.__all__)
  for public in package.__all__:
    assert getattr(package, public) is not None, f"{name}.{public}"
  assert (pathlib.Path(package.__file__).parent / "py.typed").exists()


def test_functions_are_not_shadowed_by_modules():
  import fed
  import optim
  for fn in (optim.dion, optim.scale_by_dion, optim.complex_momentum, optim.complex_adam,
             optim.scale_by_complex_momentum, optim.scale_by_complex_adam, optim.muon_routed,
             fed.fedavg, fed.fedsim, fed.fedalt):
    assert callable(fn) and not isinstance(fn, types.ModuleType), fn
  for module in (optim.games, optim.labels, fed.simulate):
    assert isinstance(module, types.ModuleType)


def test_optim_builds_in_a_user_chain():
  import jax.numpy as jnp
  import optax
  import optim
  params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optim.dion(0.02, rank_fraction=0.25))
  updates, _ = tx.update(params, tx.init(params), params)
  assert updates["w"].shape == (8, 4)


def test_importing_the_libraries_skips_tfds_and_matplotlib():
  code = ("import sys, optim, ccl_jax, nas, paperlab, paperlab.mesh; "
          "print(sorted(m for m in ('tensorflow_datasets', 'matplotlib') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"JAX_PLATFORMS": "cpu", "PATH": ""}, timeout=120)
  assert out.stdout.strip() == "[]", out.stdout


def test_wheel_has_no_generic_top_level_package():
  import setuptools
  cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
  include = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
  found = setuptools.find_packages(str(ROOT), include=include)
  top = {p.split(".")[0] for p in found}
  assert top == set(PACKAGES), top
  assert "common" not in top
