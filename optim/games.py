"""Differentiable games: players, simultaneous and alternating play, stability.

A game with n players is a tuple of per-player losses. Loss ``i`` is a function
``loss_i(players, *args) -> scalar`` of the tuple of all players' parameters
(any pytrees) and of optional extra arguments (a data batch, a PRNG key).
Player ``i`` descends its own loss with respect to its own parameters only, with
its own Optax transform. A two-player zero-sum game ``min_x max_y f(x, y)`` is
``(f, -f)``.

Play is pure: ``make_step(game, txs, mode)`` returns ``step(state, *args)``
over a :class:`PlayState`, so it jits, scans, vmaps over hyperparameters, and can
be linearised: :func:`iteration_matrix` is the Jacobian of one step (via
``jax.jacfwd``) at a given state, and :func:`spectral_radius` its largest
eigenvalue modulus. At a fixed point, a spectral radius below 1 means local
linear convergence at that rate; above 1, divergence.

Reference: Lorraine et al., "Complex Momentum for Optimization in Games",
AISTATS 2022, https://arxiv.org/abs/2102.08431.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Game",
    "PlayState",
    "zero_sum",
    "bilinear_game",
    "quadratic_game",
    "init_play",
    "player_gradient",
    "make_step",
    "play",
    "iteration_matrix",
    "spectral_radius",
]

Loss = Callable[..., jax.Array]
Mode = Literal["simultaneous", "alternating"]


class Game(NamedTuple):
  """Per-player losses; ``losses[i](players, *args)`` is player i's loss."""

  losses: tuple[Loss, ...]

  @property
  def num_players(self) -> int:
    return len(self.losses)


class PlayState(NamedTuple):
  """Parameters and optimizer states of every player."""

  players: tuple[Any, ...]
  opt_states: tuple[Any, ...]


def zero_sum(f: Loss) -> Game:
  """The two-player game ``min_x max_y f((x, y), *args)``."""
  return Game((f, lambda players, *args: -f(players, *args)))


def bilinear_game(a: jax.typing.ArrayLike) -> Game:
  r"""The bilinear zero-sum game :math:`\min_x \max_y x^\top A y`.

  Args:
    a: the matrix :math:`A` (a scalar gives the scalar game ``x * a * y``).

  Returns:
    A two-player :class:`Game` on vectors ``x`` (or scalars for a scalar ``a``).
  """
  a = jnp.asarray(a)

  def f(players):
    x, y = players
    return x @ a @ y if a.ndim == 2 else jnp.sum(x * a * y)

  return zero_sum(f)


def quadratic_game(gamma: jax.typing.ArrayLike, a: jax.Array, b: jax.Array,
                   c: jax.Array) -> Game:
  r"""Games that interpolate between adversarial and cooperative.

  .. math::

    \min_x \max_y\; x^\top(\gamma A)y + x^\top((1-\gamma)B)x
      - y^\top((1-\gamma)C)y.

  :math:`\gamma=1` is the bilinear (purely adversarial) game, :math:`\gamma=0`
  two separate minimisations of :math:`x^\top B x` and :math:`y^\top C y`
  (purely cooperative). With positive definite :math:`B, C` the unique
  equilibrium is the origin for every :math:`\gamma \in [0, 1]`.

  Args:
    gamma: adversarialness :math:`\gamma` (may be traced, e.g. under ``vmap``).
    a: ``[dx, dy]`` interaction matrix.
    b: ``[dx, dx]`` matrix of the x player's own quadratic.
    c: ``[dy, dy]`` matrix of the y player's own quadratic.

  Returns:
    A two-player :class:`Game` on ``(x, y)``.
  """
  if a.ndim != 2 or b.shape != (a.shape[0],) * 2 or c.shape != (a.shape[1],) * 2:
    raise ValueError(
        "quadratic_game needs a: [dx, dy], b: [dx, dx], c: [dy, dy]; got "
        f"a {a.shape}, b {b.shape}, c {c.shape}.")

  def f(players):
    x, y = players
    return (gamma * (x @ a @ y) + (1 - gamma) * (x @ b @ x)
            - (1 - gamma) * (y @ c @ y))

  return zero_sum(f)


def _per_player(txs, n: int) -> tuple[optax.GradientTransformation, ...]:
  if isinstance(txs, optax.GradientTransformation):
    return (txs,) * n
  txs = tuple(txs)
  if len(txs) != n:
    raise ValueError(f"got {len(txs)} optimizers for a game of {n} players; "
                     "pass one per player or a single one for all.")
  return txs


def init_play(game: Game, txs, players: Sequence[Any]) -> PlayState:
  """Initial :class:`PlayState`: each player's optimizer state for its params.

  Args:
    game: the game.
    txs: one Optax transform per player, or one for all players.
    players: initial parameters, one pytree per player.

  Returns:
    The initial state.
  """
  players = tuple(players)
  if len(players) != game.num_players:
    raise ValueError(f"got parameters for {len(players)} players; the game has "
                     f"{game.num_players}.")
  txs = _per_player(txs, game.num_players)
  return PlayState(players, tuple(tx.init(p) for tx, p in zip(txs, players)))


def player_gradient(game: Game, i: int, players: tuple, *args) -> Any:
  """Gradient of player ``i``'s loss with respect to its own parameters."""

  def own_loss(p):
    return game.losses[i](players[:i] + (p,) + players[i + 1:], *args)

  return jax.grad(own_loss)(players[i])


def _apply(tx, grad, opt_state, params):
  updates, opt_state = tx.update(grad, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def make_step(game: Game, txs, mode: Mode = "simultaneous",
              order: Sequence[int] | None = None) -> Callable[..., PlayState]:
  """One round of play: every player takes one optimizer step.

  ``simultaneous``: all gradients are taken at the current parameters, then all
  players move. ``alternating``: players move one after another in ``order``
  (default ``0, 1, ..., n-1``), each seeing the others' newest parameters.

  Args:
    game: the game.
    txs: one Optax transform per player, or one for all players.
    mode: ``"simultaneous"`` or ``"alternating"``.
    order: the order of play for ``alternating`` (a permutation of players).

  Returns:
    ``step(state: PlayState, *args) -> PlayState``; ``args`` go to every loss.
  """
  n = game.num_players
  txs = _per_player(txs, n)
  if mode not in ("simultaneous", "alternating"):
    raise ValueError(f"mode must be 'simultaneous' or 'alternating', got {mode!r}.")
  order = tuple(range(n)) if order is None else tuple(order)
  if sorted(order) != list(range(n)):
    raise ValueError(f"order must be a permutation of 0..{n - 1}, got {order}.")

  def simultaneous(state: PlayState, *args) -> PlayState:
    grads = [player_gradient(game, i, state.players, *args) for i in range(n)]
    new = [_apply(txs[i], grads[i], state.opt_states[i], state.players[i])
           for i in range(n)]
    return PlayState(tuple(p for p, _ in new), tuple(s for _, s in new))

  def alternating(state: PlayState, *args) -> PlayState:
    players, opt_states = list(state.players), list(state.opt_states)
    for i in order:
      grad = player_gradient(game, i, tuple(players), *args)
      players[i], opt_states[i] = _apply(txs[i], grad, opt_states[i], players[i])
    return PlayState(tuple(players), tuple(opt_states))

  return simultaneous if mode == "simultaneous" else alternating


def play(step: Callable[..., PlayState], state: PlayState, num_steps: int,
         record: Callable[[PlayState], Any] | None = None):
  """Runs ``num_steps`` rounds with ``jax.lax.scan``.

  Args:
    step: from :func:`make_step` (no extra arguments).
    state: the initial state.
    num_steps: number of rounds.
    record: maps each new state to what is stacked along the steps (default:
      the global L2 norm of all players' parameters, computed with scaling so
      that it neither underflows nor overflows before the values do).

  Returns:
    ``(final_state, records)`` with records stacked over ``num_steps``.
  """
  record = record or (lambda s: _scaled_norm(s.players))

  def body(s, _):
    s = step(s)
    return s, record(s)

  return jax.lax.scan(body, state, None, length=num_steps)


def _scaled_norm(tree) -> jax.Array:
  """Global L2 norm as ``m * |x / m|`` with ``m = max |x|``."""
  leaves = [jnp.ravel(x) for x in jax.tree.leaves(tree)]
  m = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
  safe = jnp.where(m > 0, m, 1.0)
  return m * jnp.sqrt(sum(jnp.sum(jnp.abs(x / safe) ** 2) for x in leaves))


def _is_variable(path, leaf) -> bool:
  """Inexact leaves that evolve, not injected hyperparameters."""
  if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
    return False
  return not any(getattr(k, "name", None) == "hyperparams" for k in path)


def iteration_matrix(step: Callable[..., PlayState], state: PlayState,
                     *args) -> jax.Array:
  """Jacobian of one round of play with respect to the evolving state.

  The variables are every floating leaf of ``state`` (parameters and optimizer
  buffers; a complex leaf counts as its real and imaginary parts). Integer
  leaves (step counts) and hyperparameters held by ``optax.inject_hyperparams``
  stay fixed. For a linear game and a linear optimizer the matrix is the same at
  every state; otherwise pass the fixed point.

  Args:
    step: from :func:`make_step`.
    state: where to linearise, usually the equilibrium with zero buffers.
    *args: extra arguments for the step.

  Returns:
    A real ``[d, d]`` matrix, ``d`` the number of real variables.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  leaves = [leaf for _, leaf in flat]
  var_idx = [i for i, (path, leaf) in enumerate(flat) if _is_variable(path, leaf)]

  def to_vec(ls):
    parts = []
    for i in var_idx:
      x = jnp.asarray(ls[i])
      if jnp.iscomplexobj(x):
        parts += [jnp.real(x).ravel(), jnp.imag(x).ravel()]
      else:
        parts.append(x.ravel())
    return jnp.concatenate(parts)

  def from_vec(vec):
    ls, pos = list(leaves), 0
    for i in var_idx:
      x = jnp.asarray(leaves[i])
      size = x.size
      if jnp.iscomplexobj(x):
        re, im = vec[pos:pos + size], vec[pos + size:pos + 2 * size]
        ls[i] = jax.lax.complex(re, im).reshape(x.shape).astype(x.dtype)
        pos += 2 * size
      else:
        ls[i] = vec[pos:pos + size].reshape(x.shape).astype(x.dtype)
        pos += size
    return jax.tree.unflatten(treedef, ls)

  def f(vec):
    new = step(from_vec(vec), *args)
    return to_vec(jax.tree.leaves(new))

  return jax.jacfwd(f)(to_vec(leaves))


def spectral_radius(step: Callable[..., PlayState], state: PlayState,
                    *args) -> jax.Array:
  """Largest eigenvalue modulus of :func:`iteration_matrix` (CPU-only eig)."""
  return jnp.max(jnp.abs(jnp.linalg.eigvals(iteration_matrix(step, state, *args))))


def spectral_radius_of(matrices) -> np.ndarray:
  """Largest eigenvalue modulus of each ``[..., d, d]`` matrix, on the host (NumPy, float64).

  For iteration matrices computed in a sharded sweep: a batched LAPACK eig
  inside concurrent XLA:CPU device programs can deadlock their shared thread
  pool, so the eigenvalues are taken outside the device programs.
  """
  return np.abs(np.linalg.eigvals(np.asarray(matrices, np.float64))).max(axis=-1)
