"""paperlab: the shared run kit of the six paper packages.

Datasets (`data`, `federated`, `lm`), typed configs and the CLI (`config`), the
resumable training loop (`loop`), orbax checkpoints (`checkpoint`), metrics,
the NaN guard and the progress bar (`metrics`), run directories, forks and
results (`runs`), seed statistics (`stats`), atomic strict-JSON files
(`files`), plots, mesh axis names (`mesh`), multi-process runs
(`distributed`, the local launcher `launch`), small models, the supervised
reference path, and dot products in XLA:CPU's fast layout (`dots`). It
depends on no other package of ours.
"""

import importlib

__all__ = ("checkpoint", "config", "data", "distributed", "dots", "federated", "files", "launch",
           "lm", "loop", "mesh", "metrics", "models", "plots", "runs", "stats", "supervised")


def __getattr__(name: str):
  # Submodules load on first use: `import optim` needs only `paperlab.mesh`,
  # not TFDS (data) or matplotlib (plots).
  if name in __all__:
    return importlib.import_module(f"paperlab.{name}")
  raise AttributeError(f"module 'paperlab' has no attribute {name!r}")
