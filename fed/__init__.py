"""fed: federated-learning simulation (partial personalization; FedAST).

Flat names::

    import fed
    algo = fed.fedalt(loss_fn, partition, optax.sgd(0.1), personal_tx=optax.sgd(0.1),
                      clients_per_round=10, chunk_size=5)
    state = algo.init(params, num_clients, jax.random.key(0))
    state, metrics = algo.round(state, client_data)

Submodules: `algorithms` (FedAvg / FedSim / FedAlt, fine-tuning, evaluation),
`simulate` (vmapped client execution), `personalization` (personal splits),
`datasets` (federated image / Shakespeare data), `models`, and FedAST:
`fedast` (the simulated-time runtime: ``fed.fedast.Simulation``,
``fed.fedast.RuntimeConfig``, ``fed.fedast.Task``) with its pure server rules
in `fedast_rules`.
"""

from fed import algorithms, datasets, fedast, fedast_rules, models, personalization, simulate
from fed.algorithms import (
    FedAlgorithm,
    FedState,
    evaluate_clients,
    fedalt,
    fedavg,
    fedsim,
    local_finetune,
    phases,
    server_optimizer,
)
from fed.personalization import LayerNames, Partition, label_params
from fed.simulate import ClientData, Phase

__all__ = (
    "ClientData",
    "FedAlgorithm",
    "FedState",
    "LayerNames",
    "Partition",
    "Phase",
    "algorithms",
    "datasets",
    "evaluate_clients",
    "fedalt",
    "fedast",
    "fedast_rules",
    "fedavg",
    "fedsim",
    "label_params",
    "local_finetune",
    "models",
    "personalization",
    "phases",
    "server_optimizer",
    "simulate",
)
