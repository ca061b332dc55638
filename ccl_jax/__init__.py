"""ccl_jax: Counter-Current Learning (Kao & Hariharan, NeurIPS 2024) in Flax NNX.

A forward network and a feedback network of mirrored shape, trained only by
layer-local losses; `CCLMLP`, `CCLCNN` and `CCLAutoencoder` are `CCLNet`s,
`ccl_loss` / `bp_loss` their objectives, `make_optimizer` the two-group Optax
transform and `Trainer` the pure train / eval steps.
"""

from ccl_jax import diagnostics, losses, models, train
from ccl_jax.losses import LossConfig, bp_loss, ccl_loss, ccl_terms
from ccl_jax.models import CCLCNN, CCLMLP, CCLAutoencoder, CCLNet, PairConv, PairDense
from ccl_jax.train import OptimConfig, Trainer, make_optimizer, make_step_fn

__all__ = (
    "CCLAutoencoder",
    "CCLCNN",
    "CCLMLP",
    "CCLNet",
    "LossConfig",
    "OptimConfig",
    "PairConv",
    "PairDense",
    "Trainer",
    "bp_loss",
    "ccl_loss",
    "ccl_terms",
    "diagnostics",
    "losses",
    "make_optimizer",
    "make_step_fn",
    "models",
    "train",
)
