"""optim package."""
from optim.dion import ScaleByDionState, scale_by_dion  # noqa: E402  (alias: optim.dion.dion)
from optim.labels import label_params, labeler  # noqa: E402
from optim.orthogonalize import orthonormalize  # noqa: E402
