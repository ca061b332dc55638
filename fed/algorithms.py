"""FedAvg / FedSim / FedAlt with partial participation, stateful clients, fine-tuning.

Pillutla et al., "Federated Learning with Partial Model Personalization",
ICML 2022 (https://arxiv.org/abs/2204.03809). Shared parameters ``u`` live on
the server, personal parameters ``v_i`` on client ``i``. Each round ``t``:

.. math::

   S_t &\\sim \\text{uniform } m\\text{-subset of } \\{1..N\\}
         \\text{ (without replacement, from } (\\text{seed}, t))\\\\
   (u_i, v_i^+) &= \\text{LocalTrain}_i(u, v_i) \\quad i \\in S_t\\\\
   g &= \\frac{\\sum_{i \\in S_t} a_i (u - u_i)}{\\sum_{i \\in S_t} a_i}, \\qquad
   u \\leftarrow u + \\text{ServerOpt}(g)

with ``a_i`` the client's example count (``weighting='batches'``: its batch
count, as in the reference code). *LocalTrain* is one phase for FedAvg
(``u`` only) and FedSim (``(u, v)`` jointly, Jacobi style), and two for FedAlt
(``v`` with ``u`` frozen, then ``u`` with the *new* ``v`` frozen; Gauss-Seidel
style, each phase with its own optimizer, step cap and learning rate).
ServerOpt is any Optax transform of the pseudo-gradient ``g``: ``sgd(1.0)``
gives FedAvg's plain average, ``adam`` / ``yogi`` give FedAdam / FedYogi.

Stateful clients keep ``v_i`` in a stacked ``[N, ...]`` store (gathered and
scattered by sampled index; unsampled rows never change). Stateless clients
start every round from the common initial ``v_0``; for evaluation they are,
by default, given their last trained ``v_i`` (``stateless_eval='cached'``: a
stacked cache written like the stateful store but never read for training, as
the reference code evaluates stateless clients), or ``v_0``
(``stateless_eval='fresh'``).

One round is one jitted program (`FedAlgorithm.round`); `FedAlgorithm.loop_round`
runs the same maths as a Python loop over clients (see `fed.simulate`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from fed import personalization as pz
from fed import simulate as sim
from paperlab import distributed

ALGORITHMS = ("fedavg", "fedsim", "fedalt")
WEIGHTINGS = ("examples", "batches", "uniform")
SERVER_OPTIMIZERS = ("sgd", "adam", "yogi")
STATELESS_EVALS = ("cached", "fresh")


class FedState(NamedTuple):
  """Everything that changes between rounds (the checkpointed state)."""

  shared: pz.Flat  # u
  server_opt: Any  # server Optax state
  personal: pz.Flat  # stacked [N, ...] (stateful) or the common v_0 (stateless)
  frozen: pz.Flat  # leaves no algorithm trains (e.g. unused adapters)
  round: jax.Array  # int32 scalar
  key: jax.Array  # typed PRNG key: sampling and batch order come from (key, round)
  cache: pz.Flat  # stateless, stateless_eval='cached': every client's last trained v_i [N, ...]; else {}


def phases(algorithm: str, tx: optax.GradientTransformation, *,
           personal_tx: optax.GradientTransformation | None = None,
           personal_steps: int | None = None, shared_steps: int | None = None,
           prox: float | None = None) -> tuple[sim.Phase, ...]:
  """Local-training phases of an algorithm.

  Args:
    algorithm: ``'fedavg'``, ``'fedsim'`` or ``'fedalt'``.
    tx: client transform (FedAvg, FedSim; FedAlt's shared phase).
    personal_tx: FedAlt's personal-phase transform (default ``tx``).
    personal_steps / shared_steps: FedAlt's step caps per phase (None: one
      pass over the client's data each).
    prox: ``lambda`` of the proximal term on ``v`` towards its value at the
      start of the round (FedSim, FedAlt's personal phase); None: no term.
  """
  if algorithm == "fedavg":
    return (sim.Phase("shared", tx),)
  if algorithm == "fedsim":
    return (sim.Phase("all", tx, prox=prox, prox_block="personal"),)
  if algorithm == "fedalt":
    return (sim.Phase("personal", personal_tx or tx, personal_steps, prox),
            sim.Phase("shared", tx, shared_steps))
  raise ValueError(f"Unknown algorithm {algorithm!r}; use one of {ALGORITHMS}.")


def server_optimizer(name: str, learning_rate: float, *, momentum: float = 0.0, b1: float = 0.9,
                     b2: float = 0.99, eps: float = 1e-3) -> optax.GradientTransformation:
  """Server transform applied to the pseudo-gradient (FedAvg / FedAvgM, FedAdam, FedYogi)."""
  if learning_rate <= 0:
    raise ValueError(f"server learning rate must be > 0, got {learning_rate}.")
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=momentum or None)
  if name == "adam":
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "yogi":
    return optax.yogi(learning_rate, b1=b1, b2=b2, eps=eps)
  raise ValueError(f"Unknown server optimizer {name!r}; use one of {SERVER_OPTIMIZERS}.")


def _sub(a, b):
  return jax.tree.map(jnp.subtract, a, b)


class FedAlgorithm:
  """A federated algorithm over a fixed client population.

  Args:
    loss_fn: ``(params, x, y) -> per-example losses [B]``.
    partition: `fed.personalization.Partition` of the model's params.
    local_phases: local training of a sampled client (see `phases`).
    server_tx: server transform of the pseudo-gradient.
    clients_per_round: ``m``, sampled without replacement each round.
    stateful: keep each client's ``v_i`` across rounds.
    epochs: passes over the client's batches per phase.
    weighting: ``'examples'``, ``'batches'`` or ``'uniform'`` aggregation weights.
    chunk_size: clients per `vmap` (None: the backend's fastest measured
      setting, `fed.simulate.default_chunk_size`; pass ``clients_per_round``
      for every sampled client of a device at once).
    mesh: shard the sampled-client axis over this mesh's ``'clients'`` axis.
    client_lr_schedule: ``round -> scale`` of the client updates (the
      reference code's per-round schedule); None: constant 1.
    num_clients: sample from the first this many clients of the data (None:
      all); lets the data's client axis be padded (with empty clients) to a
      multiple of the mesh's ``'clients'`` axis without changing the sampling.
    stateless_eval: which ``v_i`` `client_personal` gives a stateless client:
      ``'cached'`` (its last trained ``v_i``; ``v_0`` until it is first
      sampled) or ``'fresh'`` (``v_0``). Training always starts from ``v_0``.
  """

  def __init__(self, loss_fn: sim.LossFn, partition: pz.Partition,
               local_phases: Sequence[sim.Phase], server_tx: optax.GradientTransformation, *,
               clients_per_round: int, stateful: bool = True, epochs: int = 1,
               weighting: str = "examples", chunk_size: int | None = None,
               mesh: Mesh | None = None,
               client_lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
               num_clients: int | None = None, stateless_eval: str = "cached"):
    if clients_per_round < 1:
      raise ValueError(f"clients_per_round must be >= 1, got {clients_per_round}.")
    if epochs < 1:
      raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if weighting not in WEIGHTINGS:
      raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
    if chunk_size is not None and chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}.")
    if stateless_eval not in STATELESS_EVALS:
      raise ValueError(f"stateless_eval must be one of {STATELESS_EVALS}, got {stateless_eval!r}.")
    if num_clients is not None and num_clients < clients_per_round:
      raise ValueError(f"num_clients={num_clients} must be >= clients_per_round={clients_per_round}.")
    self.num_clients = num_clients
    self.loss_fn = loss_fn
    self.partition = partition
    self.phases = tuple(local_phases)
    self.server_tx = server_tx
    self.clients_per_round = clients_per_round
    self.stateful = stateful
    self.stateless_eval = stateless_eval
    self.epochs = epochs
    self.weighting = weighting
    self.chunk_size = chunk_size
    self.mesh = mesh
    self.client_lr_schedule = client_lr_schedule
    self._rounds = {spread: jax.jit(functools.partial(self._round, spread=spread))
                    for spread in (False, True)}
    self._prepare_jit = jax.jit(self._prepare)
    self._finish_jit = jax.jit(self._finish)
    self._accumulate = jax.jit(lambda acc, u, u_i, w: jax.tree.map(
        lambda a, x, y: a + w * (x - y), acc, u, u_i))
    self._loop_trainer = sim.LoopTrainer(loss_fn, partition.merge, self.phases)
    gather = jax.jit(lambda data, idx, perms: tuple(a[idx[:, None], perms] for a in data[:3]))
    self._gather = lambda data, idx, perms: tuple(np.asarray(a) for a in gather(data, idx, perms))

  # -- state -----------------------------------------------------------------

  def init(self, params: Any, num_clients: int, key: jax.Array) -> FedState:
    """Initial state: ``u``, ``v_0`` (stacked for every client if stateful), frozen leaves."""
    if num_clients < self.clients_per_round:
      raise ValueError(f"clients_per_round={self.clients_per_round} exceeds the "
                       f"{num_clients} clients.")
    shared, personal, frozen = self.partition.split(params)
    cache = {}
    if self.stateful:
      personal = jax.tree.map(jnp.array, pz.stack(personal, num_clients))
    elif self._caches:
      cache = jax.tree.map(jnp.array, pz.stack(personal, num_clients))
    return FedState(shared, self.server_tx.init(shared), personal, frozen,
                    jnp.zeros((), jnp.int32), key, cache)

  @property
  def _caches(self) -> bool:
    return not self.stateful and self.stateless_eval == "cached"

  def sample(self, state: FedState, num_clients: int) -> jax.Array:
    """The round's clients: a pure function of ``(state.key, state.round)``."""
    key = jax.random.fold_in(jax.random.fold_in(state.key, state.round), 0)
    return jnp.argsort(jax.random.uniform(key, (num_clients,)))[:self.clients_per_round]

  # -- one round -------------------------------------------------------------

  def _prepare(self, state: FedState, data: sim.ClientData):
    """Sampled clients, their batch orders, starting ``v``, weights and lr scale."""
    num_clients, steps = data.mask.shape[:2]
    idx = self.sample(state, self.num_clients or num_clients)
    # A fresh batch order per client and round (one sort of uniform draws).
    order_key = jax.random.fold_in(jax.random.fold_in(state.key, state.round), 1)
    perms = jnp.argsort(jax.random.uniform(order_key, (self.clients_per_round, steps)), axis=1)
    if self.stateful:
      v = pz.gather(state.personal, idx)
    else:
      v = pz.stack(state.personal, self.clients_per_round)
    mask = data.mask[idx]
    weights = {"examples": mask.sum(axis=(1, 2)), "batches": mask.any(axis=2).sum(axis=1),
               "uniform": jnp.ones(self.clients_per_round)}[self.weighting].astype(jnp.float32)
    lr_scale = (jnp.ones((), jnp.float32) if self.client_lr_schedule is None
                else jnp.asarray(self.client_lr_schedule(state.round), jnp.float32))
    return idx, perms, v, weights, lr_scale

  def _finish(self, state: FedState, idx, delta_sum, new_v, losses, weights):
    total = jnp.maximum(weights.sum(), 1e-12)
    pseudo_grad = jax.tree.map(lambda d: d / total, delta_sum)
    updates, server_opt = self.server_tx.update(pseudo_grad, state.server_opt, state.shared)
    shared = optax.apply_updates(state.shared, updates)
    personal = pz.scatter(state.personal, idx, new_v) if self.stateful else state.personal
    cache = pz.scatter(state.cache, idx, new_v) if self._caches else state.cache
    metrics = {k: jnp.sum(weights * v) / total for k, v in losses.items() if k.startswith("loss")}
    metrics["delta_norm"] = optax.tree.norm(pseudo_grad)
    return FedState(shared, server_opt, personal, state.frozen, state.round + 1,
                    state.key, cache), metrics

  def _client(self, broadcast, client):
    u, frozen, lr_scale, data = broadcast
    v, i, perm = client
    if data is None:  # the client's own rows were gathered before the client axis was split
      x, y, mask = (a[perm] for a in i)
    else:  # each client gathers its own batches, so the sampled data is never copied as a whole
      x, y, mask = (a[i][perm] for a in data)
    u_i, v_i, metrics = sim.local_train(self.loss_fn, self.partition.merge, self.phases, u, v,
                                        frozen, x, y, mask, epochs=self.epochs, lr_scale=lr_scale)
    return _sub(u, u_i), (v_i, metrics)

  def round(self, state: FedState, data: sim.ClientData) -> tuple[FedState, dict]:
    """One round (one jitted program). Client-sharded data (rows spread over devices or
    processes) stay in place: the sampled rows are gathered (masked gather + all-reduce of
    those rows) and split over the client axis; other data are broadcast to every client."""
    spread = (self.mesh is not None and isinstance(data.x, jax.Array)
              and not data.x.sharding.is_fully_replicated)
    return self._rounds[spread](state, data)

  def _round(self, state: FedState, data: sim.ClientData, *,
             spread: bool = False) -> tuple[FedState, dict]:
    idx, perms, v, weights, lr_scale = self._prepare(state, data)
    arrays = (data.x, data.y, data.mask)
    if not spread:
      broadcast, clients = (state.shared, state.frozen, lr_scale, arrays), (v, idx, perms)
    else:
      picked = tuple(a[idx] for a in arrays)
      broadcast, clients = (state.shared, state.frozen, lr_scale, None), (v, picked, perms)
    delta_sum, (new_v, losses) = sim.map_clients(
        self._client, broadcast, clients, weights, chunk_size=self.chunk_size, mesh=self.mesh)
    return self._finish(state, idx, delta_sum, new_v, losses, weights)

  def loop_round(self, state: FedState, data: sim.ClientData) -> tuple[FedState, dict]:
    """`round` with a Python loop over clients and steps (FedJAX's jit backend)."""
    idx, perms, v, weights, lr_scale = self._prepare_jit(state, data)
    x, y, mask = self._gather(data, idx, perms)
    acc = jax.tree.map(jnp.zeros_like, state.shared)
    new_vs, losses = [], []
    for i in range(self.clients_per_round):
      v_i = jax.tree.map(lambda a, i=i: a[i], v)
      u_i, v_i, metrics = self._loop_trainer(state.shared, v_i, state.frozen, x[i], y[i], mask[i],
                                             epochs=self.epochs, lr_scale=lr_scale)
      acc = self._accumulate(acc, state.shared, u_i, weights[i])
      new_vs.append(v_i)
      losses.append(metrics)
    new_v = jax.tree.map(lambda *a: jnp.stack(a), *new_vs)
    losses = jax.tree.map(lambda *a: jnp.stack(a), *losses)
    return self._finish_jit(state, idx, acc, new_v, losses, weights)

  def step_fn(self, data: sim.ClientData) -> Callable[[FedState, int, int], tuple[FedState, dict]]:
    """A `paperlab.loop.train` step function: ``n`` rounds from absolute round ``step``.

    Rounds are pure functions of ``(state, data)`` (sampling and batch order
    come from ``(key, round)``), so a resumed run repeats an uninterrupted one.
    """
    data = sim.ClientData(*(jnp.asarray(a) for a in data))

    def run(state: FedState, step: int, n: int):
      if int(state.round) != step:
        raise ValueError(f"state is at round {int(state.round)}, the loop asked for {step}.")
      history = []
      for _ in range(n):
        state, metrics = self.round(state, data)
        history.append(metrics)
      return state, jax.tree.map(lambda *a: jnp.mean(jnp.stack(a)), *history)
    return run

  # -- personalization and evaluation ---------------------------------------

  def client_personal(self, state: FedState, num_clients: int) -> pz.Flat:
    """Every client's ``v_i`` for evaluation, stacked ``[num_clients, ...]``.

    Stateful: the store. Stateless: the cache of last trained ``v_i``
    (``stateless_eval='cached'``) or ``v_0`` for all (``'fresh'``).
    """
    if self.stateful:
      return state.personal
    return state.cache if self._caches else pz.stack(state.personal, num_clients)


@functools.lru_cache(maxsize=64)
def _finetune_program(loss_fn, merge, local_phases, epochs, chunk_size, mesh):
  trains_shared = any(p.train != "personal" for p in local_phases)

  def client(broadcast, c):
    u, frozen = broadcast
    v, x, y, mask = c
    u_i, v_i, _ = sim.local_train(loss_fn, merge, local_phases, u, v, frozen, x, y, mask,
                                  epochs=epochs)
    return (), ((u_i if trains_shared else ()), v_i)

  @jax.jit
  def run(shared, personal, frozen, x, y, mask):
    _, kept = sim.map_clients(client, (shared, frozen), (personal, x, y, mask),
                              jnp.zeros(mask.shape[0]), chunk_size=chunk_size, mesh=mesh)
    return kept
  return run


def local_finetune(loss_fn: sim.LossFn, partition: pz.Partition, local_phases: Sequence[sim.Phase],
                   shared: pz.Flat, personal: pz.Flat, frozen: pz.Flat, data: sim.ClientData, *,
                   epochs: int = 1, chunk_size: int | None = None,
                   mesh: Mesh | None = None) -> tuple[Any, pz.Flat]:
  """Local training of every client from ``(u, v_i)`` with no server.

  The fine-tuning baselines: ``[Phase('personal', tx)]`` (personal part only),
  ``[Phase('all', tx)]`` (full model), ``[Phase('all', tx, prox=0.1)]``
  (Ditto-style L2 towards the starting global model).

  Returns:
    ``(u_i, v_i)`` stacked over clients; ``u_i`` is ``()`` when no phase
    trains the shared block (then every client keeps ``u``).
  """
  run = _finetune_program(loss_fn, partition.merge, tuple(local_phases), epochs, chunk_size, mesh)
  return run(shared, personal, frozen, jnp.asarray(data.x), jnp.asarray(data.y),
             jnp.asarray(data.mask))


@functools.lru_cache(maxsize=64)
def _eval_program(metric_fn, merge, shared_per_client, chunk_size, mesh):
  def client(broadcast, c):
    frozen, shared = broadcast
    u, v, x, y, mask = c
    u = shared if not shared_per_client else u
    return (), sim.client_sums(metric_fn, merge(u, v, frozen), x, y, mask)

  @jax.jit
  def run(shared, personal, frozen, x, y, mask):
    per_client_u = shared if shared_per_client else jnp.zeros(mask.shape[0])
    _, kept = sim.map_clients(client, (frozen, shared), (per_client_u, personal, x, y, mask),
                              jnp.zeros(mask.shape[0]), chunk_size=chunk_size, mesh=mesh)
    return kept
  return run


def evaluate_clients(metric_fn: Callable[[Any, Any, Any], dict[str, jax.Array]],
                     partition: pz.Partition, shared: Any, personal: pz.Flat, frozen: pz.Flat,
                     data: sim.ClientData, *, shared_per_client: bool = False,
                     chunk_size: int | None = None, mesh: Mesh | None = None,
                     percentile: float = 10.0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Per-client test metrics with client ``i`` using ``(u or u_i, v_i)``.

  ``metric_fn(params, x, y) -> {name: per-example values [B]}``.

  Returns:
    ``(summary, per_client)``: size-weighted mean and ``percentile``-th
    percentile across clients of each metric (`fed.simulate.summarize`), and
    the per-client masked sums with their ``count``.
  """
  run = _eval_program(metric_fn, partition.merge, shared_per_client, chunk_size, mesh)
  per_client = distributed.to_host(run(shared, personal, frozen, jnp.asarray(data.x),
                                       jnp.asarray(data.y), jnp.asarray(data.mask)))
  return sim.summarize(per_client, percentile=percentile), per_client


# -- builders (the flat `fed.fedavg` / `fed.fedsim` / `fed.fedalt` names) --------


def fedavg(loss_fn: sim.LossFn, partition: pz.Partition, client_tx: optax.GradientTransformation,
           server_tx: optax.GradientTransformation | None = None, **kwargs: Any) -> FedAlgorithm:
  r"""FedAvg (McMahan et al. 2017): clients train ``u`` only; ``u <- u + ServerOpt(g)``.

  ``g = sum_i a_i (u - u_i) / sum_i a_i`` over the round's sampled clients;
  ``server_tx`` defaults to ``optax.sgd(1.0)`` (the plain weighted average).
  Other keyword arguments go to `FedAlgorithm` (``clients_per_round`` is required).

  >>> import optax
  >>> from fed import personalization as pz
  >>> params = {"w": jnp.zeros((2, 1))}
  >>> part = pz.Partition(params, pz.label_params(params, "none"))
  >>> loss = lambda p, x, y: jnp.square(x @ p["w"] - y[:, None]).mean(-1)
  >>> algo = fedavg(loss, part, optax.sgd(0.1), clients_per_round=2)
  >>> [p.train for p in algo.phases]
  ['shared']
  """
  return FedAlgorithm(loss_fn, partition, phases("fedavg", client_tx),
                      server_tx if server_tx is not None else optax.sgd(1.0), **kwargs)


def fedsim(loss_fn: sim.LossFn, partition: pz.Partition, client_tx: optax.GradientTransformation,
           server_tx: optax.GradientTransformation | None = None, *, prox: float | None = None,
           **kwargs: Any) -> FedAlgorithm:
  r"""FedSim (Pillutla et al. 2022): each local step updates ``(u, v_i)`` jointly.

  ``(u, v) <- (u, v) - eta * grad_{(u, v)} [f_i(u, v) + prox/2 ||v - v^0||^2]``
  (Jacobi style), then the server step of `fedavg` on ``u``.
  """
  return FedAlgorithm(loss_fn, partition, phases("fedsim", client_tx, prox=prox),
                      server_tx if server_tx is not None else optax.sgd(1.0), **kwargs)


def fedalt(loss_fn: sim.LossFn, partition: pz.Partition, client_tx: optax.GradientTransformation,
           server_tx: optax.GradientTransformation | None = None, *,
           personal_tx: optax.GradientTransformation | None = None,
           personal_steps: int | None = None, shared_steps: int | None = None,
           prox: float | None = None, **kwargs: Any) -> FedAlgorithm:
  r"""FedAlt (Pillutla et al. 2022): ``v_i`` with ``u`` frozen, then ``u`` with the new ``v_i``.

  Personal phase (``personal_tx``, at most ``personal_steps`` steps):
  ``v <- v - eta_v grad_v [f_i(u, v) + prox/2 ||v - v^0||^2]``; shared phase
  (``client_tx``, at most ``shared_steps``): ``u <- u - eta_u grad_u f_i(u, v^+)``
  (Gauss-Seidel style), then the server step of `fedavg` on ``u``.
  """
  local = phases("fedalt", client_tx, personal_tx=personal_tx, personal_steps=personal_steps,
                 shared_steps=shared_steps, prox=prox)
  return FedAlgorithm(loss_fn, partition, local,
                      server_tx if server_tx is not None else optax.sgd(1.0), **kwargs)
