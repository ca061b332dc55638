"""SWAT-NN: MLP encoding, multi-scale autoencoder, latent architecture-and-weight search.

Modules: `encoding` (MLP <-> [7, 56, 2] tensor, forward pass, random teachers),
`autoencoder` (transformer autoencoder with one decoder per depth),
`search` (latent optimisation with pruning and penalties), `functions`
(2-D benchmark regression datasets), `baselines` (dense and pruned MLPs),
`figures` (architecture and surface plots).
"""
