"""optim: Optax gradient transformations of the complex-momentum and Dion papers.

A flat, optax-like namespace::

    import optax, optim
    tx = optax.chain(optax.clip_by_global_norm(1.0), optim.dion(0.02, rank_fraction=0.25))
    tx = optim.complex_momentum(0.1, magnitude=0.9, angle=3.14159 / 8)

`scale_by_*` only transform updates; the aliases (`dion`, `complex_momentum`,
`complex_adam`, `muon_routed`, `adamw_routed`, `lion_routed`) chain them with
weight decay and the learning rate. Submodules: `games` (differentiable games,
simultaneous / alternating play, spectral radius), `labels` (label functions
that route leaves to optimizers), `orthogonalize` (QR / Cholesky-QR /
randomized Cholesky-QR), `routed` (the shared routing of the baselines),
`collectives` (bytes moved by the collectives of compiled HLO).
"""

from optim import collectives, games, labels, orthogonalize, routed
from optim._complex_momentum import (
    ScaleByComplexAdamState,
    ScaleByComplexBufferAdamState,
    ScaleByComplexBufferMomentumState,
    ScaleByComplexMomentumState,
    complex_adam,
    complex_momentum,
    scale_by_complex_adam,
    scale_by_complex_momentum,
)
from optim._dion import (
    DION_STATIC_ARGS,
    STATIC_ARGS,
    ScaleByDionState,
    dion,
    dion_rank,
    scale_by_dion,
    synchronize,
)
from optim.labels import label_params, labeler
from optim.orthogonalize import orthonormalize
from optim.routed import adamw as adamw_routed
from optim.routed import lion as lion_routed
from optim.routed import muon as muon_routed

__all__ = (
    "DION_STATIC_ARGS",
    "STATIC_ARGS",
    "ScaleByComplexAdamState",
    "ScaleByComplexBufferAdamState",
    "ScaleByComplexBufferMomentumState",
    "ScaleByComplexMomentumState",
    "ScaleByDionState",
    "adamw_routed",
    "collectives",
    "complex_adam",
    "complex_momentum",
    "dion",
    "dion_rank",
    "games",
    "label_params",
    "labeler",
    "labels",
    "lion_routed",
    "muon_routed",
    "orthogonalize",
    "orthonormalize",
    "routed",
    "scale_by_complex_adam",
    "scale_by_complex_momentum",
    "scale_by_dion",
    "synchronize",
)
