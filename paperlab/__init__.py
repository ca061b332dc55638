"""paperlab: the shared run kit of the six paper packages.

Datasets (`data`, `federated`, `lm`), typed configs and the CLI (`config`), the
resumable training loop (`loop`), orbax checkpoints (`checkpoint`), metrics
and the NaN guard (`metrics`), plots, mesh axis names (`mesh`), small models
and the supervised reference path. It depends on no other package of ours.
"""
