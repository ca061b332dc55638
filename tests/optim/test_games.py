"""Games toolkit: play rules, spectral radii against NumPy and the spec's table."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim import games
from optim import complex_momentum

PI8 = math.pi / 8
SIM, ALT = "simultaneous", "alternating"


def _rho(alpha, magnitude, angle, mode, a=1.0, **kw):
  game = games.bilinear_game(a)
  tx = complex_momentum(alpha, magnitude, angle, **kw)
  zero = jnp.zeros(()) if np.ndim(a) == 0 else jnp.zeros(np.shape(a)[0])
  state = games.init_play(game, tx, (zero, zero))
  return float(games.spectral_radius(games.make_step(game, tx, mode), state))


def _rhos(entries):
  """Spectral radii of (alpha, |beta|, arg beta, mode) entries, vmapped per mode."""
  out = {}
  for mode in (SIM, ALT):
    rows = [e for e in entries if e[3] == mode]
    if not rows:
      continue

    def rho(alpha, magnitude, angle, mode=mode):
      tx = complex_momentum(alpha, magnitude, angle)
      game = games.bilinear_game(1.0)
      state = games.init_play(game, tx, (jnp.zeros(()), jnp.zeros(())))
      return games.spectral_radius(games.make_step(game, tx, mode), state)

    cols = [jnp.array([e[i] for e in rows], jnp.float32) for i in range(3)]
    for e, r in zip(rows, np.asarray(jax.jit(jax.vmap(rho))(*cols))):
      out[tuple(e[:4])] = float(r)
  return out


def _numpy_iteration_matrix(alpha, beta, mode):
  """Hand-built linear map on (Re b_x, Im b_x, Re b_y, Im b_y, x, y), f = x y.

  Buffers b = -mu: b <- beta b + g, w <- w - alpha Re(b). g_x = y, g_y = -x.
  """
  br, bi = beta.real, beta.imag

  def player(state, i, grad_of):
    r, s = state[2 * i], state[2 * i + 1]
    g = grad_of(state)
    r_new = br * r - bi * s + g
    s_new = bi * r + br * s
    new = state.copy()
    new[2 * i], new[2 * i + 1] = r_new, s_new
    new[4 + i] = state[4 + i] - alpha * r_new
    return new

  gx = lambda st: st[5]
  gy = lambda st: -st[4]
  cols = []
  for e in np.eye(6):
    if mode == SIM:
      a = player(e, 0, gx)
      b = player(e, 1, gy)
      out = a.copy()
      out[2:4], out[5] = b[2:4], b[5]
    else:
      out = player(player(e, 0, gx), 1, gy)
    cols.append(out)
  return np.array(cols).T


def test_spectral_radius_matches_numpy_matrix():
  cases = [(a, m, t, mode) for mode in (SIM, ALT) for a, m, t in [
      (0.05, 0.9, PI8), (0.1, 0.8, PI8), (0.3, 0.71, math.pi / 4),
      (0.05, 0.5, math.pi), (0.5, 0.0, 0.0)]]
  ours = _rhos(cases)
  for alpha, magnitude, angle, mode in cases:
    beta = magnitude * np.exp(1j * angle)
    ref = np.max(np.abs(np.linalg.eigvals(
        _numpy_iteration_matrix(alpha, beta, mode))))
    assert abs(ours[(alpha, magnitude, angle, mode)] - ref) < 1e-5, (alpha, magnitude, angle, mode)


# (alpha, |beta|, arg beta, mode) -> spectral radius, from the spec's table.
SPEC_TABLE = [
    (0.01, 0.0, 0.0, SIM, 1.00005), (0.05, 0.0, 0.0, SIM, 1.0012),
    (0.1, 0.0, 0.0, SIM, 1.0050), (0.5, 0.0, 0.0, SIM, 1.1180),
    (0.05, 0.5, 0.0, SIM, 1.0138), (0.05, 0.9, 0.0, SIM, 1.1211),
    (0.5, 0.5, 0.0, SIM, 1.366), (0.5, 0.9, 0.0, SIM, 1.604),
    (0.01, 0.9, PI8, SIM, 0.99945), (0.05, 0.9, PI8, SIM, 0.98569),
    (0.1, 0.9, PI8, SIM, 1.05298), (0.5, 0.9, PI8, SIM, 1.5385),
    (0.01, 0.8, PI8, SIM, 0.99971), (0.05, 0.8, PI8, SIM, 0.99221),
    (0.1, 0.8, PI8, SIM, 0.97743), (0.5, 0.8, PI8, SIM, 1.4815),
    (0.01, 0.9, PI8, ALT, 0.99939), (0.05, 0.9, PI8, ALT, 0.98457),
    (0.1, 0.9, PI8, ALT, 1.05093), (0.5, 0.9, PI8, ALT, 1.4947),
    (0.1, 0.0, 0.0, ALT, 1.0), (0.5, 0.0, 0.0, ALT, 1.0),
    (0.1, 0.5, math.pi, ALT, 0.9985), (0.5, 0.5, math.pi, ALT, 0.9625),
]


def test_spec_table():
  ours = _rhos(SPEC_TABLE)
  for alpha, magnitude, angle, mode, expected in SPEC_TABLE:
    got = ours[(alpha, magnitude, angle, mode)]
    assert abs(got - expected) <= 1e-4, (alpha, magnitude, angle, mode, got, expected)


def test_gd_closed_forms():
  alphas = (0.01, 0.1, 0.5, 1.0)
  ours = _rhos([(a, 0.0, 0.0, mode) for a in alphas for mode in (SIM, ALT)])
  for a in alphas:
    np.testing.assert_allclose(ours[(a, 0.0, 0.0, SIM)], math.sqrt(1 + a ** 2), atol=1e-5)
    np.testing.assert_allclose(ours[(a, 0.0, 0.0, ALT)], 1.0, atol=1e-5)


def test_no_real_momentum_makes_simultaneous_converge():
  cases = [(a, float(b), 0.0, SIM) for b in np.linspace(0.0, 0.95, 8) for a in (0.01, 0.1)]
  assert all(r > 1.0 for r in _rhos(cases).values())


def test_complex_buffer_and_other_transforms_linearise():
  r_two = _rho(0.05, 0.9, PI8, SIM)
  r_one = _rho(0.05, 0.9, PI8, SIM, complex_buffer=True)
  np.testing.assert_allclose(r_one, r_two, atol=1e-5)
  # optax.sgd with momentum = complex momentum at angle 0.
  game = games.bilinear_game(1.0)
  tx = optax.sgd(0.05, momentum=0.5)
  st = games.init_play(game, tx, (jnp.zeros(()), jnp.zeros(())))
  np.testing.assert_allclose(
      games.spectral_radius(games.make_step(game, tx), st),
      _rho(0.05, 0.5, 0.0, SIM), atol=1e-6)
  # Injected hyperparameters are constants, not state variables.
  inj = optax.inject_hyperparams(complex_momentum)(0.05, 0.9, PI8)
  st = games.init_play(game, inj, (jnp.zeros(()), jnp.zeros(())))
  assert games.iteration_matrix(games.make_step(game, inj), st).shape == (6, 6)
  np.testing.assert_allclose(
      games.spectral_radius(games.make_step(game, inj), st), r_two, atol=1e-6)


def test_iterates_shrink_at_predicted_rate():
  game = games.bilinear_game(1.0)
  tx = complex_momentum(0.05, 0.9, PI8)
  state = games.init_play(game, tx, (jnp.ones(()), jnp.ones(())))
  step = games.make_step(game, tx, SIM)
  _, norms = jax.jit(lambda s: games.play(step, s, 2000))(state)
  norms = np.asarray(norms)
  assert 1e-13 < norms[-1] < 1e-12   # spec: 4.4e-13 (rho^2000 = 3.0e-13)
  slope = (np.log(norms[1999]) - np.log(norms[999])) / 1000
  np.testing.assert_allclose(math.exp(slope), 0.98569, atol=2e-4)
  # Same step size, GD or real momentum: the iterates grow.
  for magnitude in (0.0, 0.5):
    tx = complex_momentum(0.05, magnitude, 0.0)
    st = games.init_play(game, tx, (jnp.ones(()), jnp.ones(())))
    _, n = games.play(games.make_step(game, tx, SIM), st, 500)
    assert float(n[-1]) > math.sqrt(2)


def test_play_records_norms_without_underflow():
  game = games.bilinear_game(1.0)
  tx = optax.sgd(0.1)
  tiny = (jnp.array(3e-25), jnp.array(4e-25))
  state, norms = games.play(games.make_step(game, tx), games.init_play(game, tx, tiny), 1)
  expected = math.hypot(*(float(p) for p in state.players))
  np.testing.assert_allclose(float(norms[0]), expected, rtol=1e-6)
  assert expected > 0


def test_empirical_growth_matches_spectral_radius_on_matrix_game():
  a = jax.random.normal(jax.random.key(3), (3, 3))
  game = games.bilinear_game(a)
  tx = complex_momentum(0.02, 0.9, PI8)
  zero = jnp.zeros(3)
  rho = float(games.spectral_radius(games.make_step(game, tx, ALT),
                                    games.init_play(game, tx, (zero, zero))))
  state = games.init_play(game, tx, (jnp.ones(3), jnp.ones(3)))
  _, norms = games.play(games.make_step(game, tx, ALT), state, 3000)
  slope = (math.log(float(norms[-1])) - math.log(float(norms[1499]))) / 1500
  np.testing.assert_allclose(math.exp(slope), rho, atol=1e-3)


def test_simultaneous_and_alternating_one_step_golden():
  game = games.bilinear_game(2.0)   # f = 2 x y
  tx = optax.sgd(0.1)
  state = games.init_play(game, tx, (jnp.array(1.0), jnp.array(3.0)))
  sim = games.make_step(game, tx, SIM)(state)
  # x <- x - 0.1 * 2 y = 0.4 ; y <- y + 0.1 * 2 x = 3.2
  np.testing.assert_allclose([sim.players[0], sim.players[1]], [0.4, 3.2], rtol=1e-6)
  alt = games.make_step(game, tx, ALT)(state)
  # y sees the new x = 0.4: y <- 3 + 0.1 * 2 * 0.4 = 3.08
  np.testing.assert_allclose([alt.players[0], alt.players[1]], [0.4, 3.08], rtol=1e-6)
  rev = games.make_step(game, tx, ALT, order=(1, 0))(state)
  # y first: 3.2, then x <- 1 - 0.1 * 2 * 3.2 = 0.36
  np.testing.assert_allclose([rev.players[0], rev.players[1]], [0.36, 3.2], rtol=1e-6)


def test_quadratic_game_gradients_and_limits():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  a = jax.random.normal(k1, (3, 2))
  mb, mc = jax.random.normal(k2, (3, 3)), jax.random.normal(k3, (2, 2))
  b, c = mb @ mb.T + jnp.eye(3), mc @ mc.T + jnp.eye(2)
  x, y = jnp.arange(3.0), jnp.array([1.0, -2.0])
  for gamma in (0.0, 0.3, 1.0):
    game = games.quadratic_game(gamma, a, b, c)
    gx = games.player_gradient(game, 0, (x, y))
    gy = games.player_gradient(game, 1, (x, y))
    np.testing.assert_allclose(gx, gamma * a @ y + (1 - gamma) * (b + b.T) @ x,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gy, -gamma * a.T @ x + (1 - gamma) * (c + c.T) @ y,
                               rtol=1e-5, atol=1e-5)
  # gamma = 1 is the bilinear game.
  g1, gb = games.quadratic_game(1.0, a, b, c), games.bilinear_game(a)
  assert float(g1.losses[0]((x, y))) == pytest.approx(float(gb.losses[0]((x, y))))
  # Cooperative end: plain simultaneous GD converges.
  game = games.quadratic_game(0.0, a, b, c)
  tx = optax.sgd(0.02)
  _, norms = games.play(games.make_step(game, tx), games.init_play(game, tx, (x, y)),
                        2000)
  assert float(norms[-1]) < 1e-4


def test_three_player_alternating_uses_newest_parameters():
  # Player i minimises (p_i - p_{i-1})^2 (cyclic); with lr 0.5 and plain SGD
  # each player jumps to the newest value of its predecessor.
  losses = tuple(
      (lambda i: lambda ps: (ps[i] - ps[i - 1]) ** 2)(i) for i in range(3))
  game = games.Game(losses)
  tx = optax.sgd(0.5)
  state = games.init_play(game, tx, (jnp.array(1.0), jnp.array(2.0), jnp.array(4.0)))
  alt = games.make_step(game, tx, ALT)(state)
  np.testing.assert_allclose([float(p) for p in alt.players], [4.0, 4.0, 4.0])
  sim = games.make_step(game, tx, SIM)(state)
  np.testing.assert_allclose([float(p) for p in sim.players], [4.0, 1.0, 2.0])


def test_bad_inputs_raise():
  game = games.bilinear_game(1.0)
  with pytest.raises(ValueError, match="optimizers"):
    games.make_step(game, (optax.sgd(0.1),) * 3)
  with pytest.raises(ValueError, match="mode"):
    games.make_step(game, optax.sgd(0.1), "sequential")
  with pytest.raises(ValueError, match="permutation"):
    games.make_step(game, optax.sgd(0.1), ALT, order=(0, 0))
  with pytest.raises(ValueError, match="players"):
    games.init_play(game, optax.sgd(0.1), (jnp.zeros(()),))
  with pytest.raises(ValueError, match="quadratic_game"):
    games.quadratic_game(0.5, jnp.zeros((2, 3)), jnp.eye(2), jnp.eye(2))


def test_host_spectral_radius_matches_the_jax_one():
  game = games.bilinear_game(1.0)
  tx = complex_momentum(0.05, 0.9, math.pi / 8)
  state = games.init_play(game, tx, (jnp.zeros(()), jnp.zeros(())))
  step = games.make_step(game, tx)
  mats = np.stack([np.asarray(games.iteration_matrix(step, state))] * 2)
  np.testing.assert_allclose(games.spectral_radius_of(mats),
                             [float(games.spectral_radius(step, state))] * 2, rtol=1e-5)
  assert games.spectral_radius_of(-np.eye(3)) == 1.0  # modulus, not the signed eigenvalue
