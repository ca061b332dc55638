"""nas: SWAT-NN, simultaneous weight and architecture search in a learned latent space.

Modules: `encoding` (MLP <-> [7, 56, 2] tensor, forward pass, random teachers),
`autoencoder` (transformer autoencoder with one decoder per depth),
`search` (latent optimisation with pruning and penalties), `functions`
(2-D benchmark regression datasets), `baselines` (dense and pruned MLPs),
`figures` (architecture and surface plots; import it explicitly, it loads
matplotlib). The main names are re-exported flat: `nas.Autoencoder`,
`nas.run_search`, `nas.make_dataset`, ...
"""

from nas import autoencoder, baselines, encoding, functions, search
from nas.autoencoder import AEConfig, Autoencoder
from nas.encoding import Net, decode, encode, forward, random_net, sample_teachers
from nas.functions import make_dataset
from nas.search import SearchConfig, SearchOutput, hard_net, run_search

__all__ = (
    "AEConfig",
    "Autoencoder",
    "Net",
    "SearchConfig",
    "SearchOutput",
    "autoencoder",
    "baselines",
    "decode",
    "encode",
    "encoding",
    "forward",
    "functions",
    "hard_net",
    "make_dataset",
    "random_net",
    "run_search",
    "sample_teachers",
    "search",
)
