"""Builds the HTML API reference of the five packages from their docstrings (pdoc).

    python docs/build_api.py                 # -> build/api/index.html
    python docs/build_api.py --out DIR

Exits non-zero if pdoc warned about anything (an annotation it could not
resolve, a module that failed to import, a malformed docstring), so the
reference never silently degrades.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import pkgutil
import sys
import typing
import warnings

PACKAGES = ("optim", "fed", "ccl_jax", "nas", "paperlab")
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _modules() -> list[str]:
  names = []
  for package in PACKAGES:
    names.append(package)
    pkg = importlib.import_module(package)
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")]
  return names


def _resolve_namedtuple_signatures(module_names: list[str]) -> None:
  """Gives NamedTuple constructors the annotations of their class, resolved in its module.

  With postponed annotations the generated ``__new__`` keeps strings that can
  only be evaluated in the defining module, which pdoc does not do for
  NamedTuples; the class-level annotations resolve fine.
  """
  for name in module_names:
    module = importlib.import_module(name)
    for obj in vars(module).values():
      if (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")
          and obj.__module__ == name):
        try:
          hints = typing.get_type_hints(obj)
        except Exception:  # leave it to pdoc to report
          continue
        obj.__new__.__annotations__ = {k: hints[k] for k in obj._fields if k in hints}


def build(out: pathlib.Path) -> list[str]:
  """Writes the reference to ``out``; returns pdoc's warnings (empty when clean)."""
  import pdoc  # pylint: disable=import-outside-toplevel
  import pdoc.render  # pylint: disable=import-outside-toplevel
  modules = _modules()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    _resolve_namedtuple_signatures(modules)
    pdoc.render.configure(docformat="google", math=True, show_source=True,
                          footer_text="jax-paper-lab API reference")
    pdoc.pdoc(*PACKAGES, output_directory=out)
  return [f"{w.category.__name__}: {w.message}" for w in caught
          if "pdoc" in w.filename or issubclass(w.category, UserWarning)]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "api")
  args = parser.parse_args(argv)
  problems = build(args.out)
  for p in problems:
    print(f"warning: {p}", file=sys.stderr)
  print(f"Wrote {args.out / 'index.html'} ({len(problems)} warnings)")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
