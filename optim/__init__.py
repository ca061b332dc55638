"""optim package."""
from optim.dion import ScaleByDionState, scale_by_dion  # noqa: E402  (alias: optim.dion.dion)
from optim.labels import label_params, labeler  # noqa: E402
from optim.orthogonalize import orthonormalize  # noqa: E402
from optim.complex_momentum import (  # noqa: E402  (alias: optim.complex_momentum.complex_momentum)
    ScaleByComplexAdamState, ScaleByComplexBufferAdamState,
    ScaleByComplexBufferMomentumState,
    ScaleByComplexMomentumState, complex_adam, scale_by_complex_adam,
    scale_by_complex_momentum)
from optim import games  # noqa: E402
