"""Complex momentum and complex Adam as Optax transforms.

Lorraine, Acuna, Vicol and Duvenaud, "Complex Momentum for Optimization in
Games", AISTATS 2022, https://arxiv.org/abs/2102.08431.

The momentum coefficient is a complex number
:math:`\\beta = |\\beta| e^{i \\theta}`, the momentum buffer is complex, and the
parameter step reads out its real part. Parameters and updates stay real, so the
transforms are drop-in replacements for heavy-ball momentum and for Adam.

Sign convention. Optax adds updates to parameters and the learning-rate scaling
flips the sign, so the buffer kept here is :math:`b = -\\mu` of the paper:
``b <- beta * b + g`` and ``update = -lr * Re(b)``, which is the paper's
``mu <- beta * mu - g``, ``omega <- omega + Re(alpha * mu)`` for a real step
size alpha.

Non-finite gradients. Both transforms check each gradient leaf: a leaf holding
a NaN or an infinity keeps its buffers unchanged and gets a zero update for that
step, and its entry of ``nonfinite_count`` in the state goes up by one (like
``optax.apply_if_finite``, but per leaf; complex Adam's shared step count still
advances).
"""

import math
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "ScaleByComplexMomentumState",
    "ScaleByComplexBufferMomentumState",
    "ScaleByComplexAdamState",
    "ScaleByComplexBufferAdamState",
    "scale_by_complex_momentum",
    "complex_momentum",
    "scale_by_complex_adam",
    "complex_adam",
]


class ScaleByComplexMomentumState(NamedTuple):
  """Two real buffers holding the complex momentum ``b = re + i * im``."""

  re: Any  # pytree like the params (accumulator dtype)
  im: Any
  nonfinite_count: Any  # per leaf: steps skipped for a NaN / inf gradient (int32)


class ScaleByComplexBufferMomentumState(NamedTuple):
  """One complex-dtype buffer (complex64, or complex128 for float64 leaves)."""

  buf: Any
  nonfinite_count: Any


class ScaleByComplexAdamState(NamedTuple):
  """Complex first moment as two real buffers, real second moment, count."""

  count: jax.Array  # shape=(), dtype=int32
  mu_re: Any
  mu_im: Any
  nu: Any
  nonfinite_count: Any


class ScaleByComplexBufferAdamState(NamedTuple):
  """Complex first moment as one complex-dtype buffer, real second moment."""

  count: jax.Array  # shape=(), dtype=int32
  mu: Any
  nu: Any
  nonfinite_count: Any


def _is_concrete(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_hyper(name: str, value, *, low: float = 0.0) -> None:
  """Validate a numeric hyperparameter given as a Python number.

  Arrays and tracers are not inspected (they may come from
  ``optax.inject_hyperparams`` or a sweep under ``jax.vmap``).
  """
  if _is_concrete(value) and not (math.isfinite(value) and value >= low):
    raise ValueError(
        f"{name} must be a finite number >= {low}, got {value!r}.")


def _check_angle(name: str, value) -> None:
  if _is_concrete(value) and not math.isfinite(value):
    raise ValueError(f"{name} must be a finite angle in radians, got {value!r}.")


def _polar(magnitude, angle):
  """Real and imaginary parts of ``magnitude * exp(i * angle)``.

  Python numbers stay Python floats (double precision, like a real ``decay``
  handed to ``optax.trace``), so angle 0 reproduces heavy ball bit for bit.
  """
  if _is_concrete(magnitude) and _is_concrete(angle):
    return magnitude * math.cos(angle), magnitude * math.sin(angle)
  return magnitude * jnp.cos(angle), magnitude * jnp.sin(angle)


def _rotate(br, bi, gr, gi, g, r, s, finite=None):
  r"""``(r', s') = (gr g + br r - bi s, gi g + bi r + br s)``: one step of the complex buffer.

  With a donated state (or inside ``lax.scan``) XLA:CPU updates buffers in
  place, and as written above each new buffer reads both old ones, so it copies
  both buffers first (the two updates are separate loops); those copies cost
  more than the update itself (``benchmarks/complex_momentum_step.py``).
  When ``br`` and ``bi`` are Python numbers with ``|br| >= |bi| / sqrt(3)``
  (angle within 60 degrees of 0 or of pi), ``r'`` is computed from ``s'``
  instead, using ``s = (s' - bi r - gi g) / br``:

  .. math::

    r' = (g_r + b_i g_i / b_r)\, g + (|\beta|^2 / b_r)\, r - (b_i / b_r)\, s',

  so ``s'`` overwrites ``s`` and then ``r'`` overwrites ``r`` with no copy. The
  coefficients grow at most to ``2|beta|``, so rounding stays at the float
  level; at angle 0 (``bi = 0``) both forms give ``gr g + br r`` exactly.
  Otherwise (traced hyperparameters, angles near pi/2) the direct form is used.

  ``finite`` (a traced bool, or None) guards the step: where it is False both
  buffers come back unchanged. In the reordered form ``r'`` is computed from the
  already guarded ``s'`` (equal to the unguarded one whenever ``r'`` is kept),
  so the guard adds no dependency on an old buffer after it is overwritten and
  both loops still run in place; selecting after the whole unguarded update made
  XLA keep the unguarded ``s'`` alive next to the guarded one (a copy of both
  buffers every step).
  """
  keep = (lambda new, old: new) if finite is None else (
      lambda new, old: jnp.where(finite, new, old))
  no_g_in_s = _is_concrete(gi) and gi == 0
  if (_is_concrete(br) and _is_concrete(bi) and _is_concrete(gr) and _is_concrete(gi)
      and br != 0 and abs(br) * math.sqrt(3) >= abs(bi)):
    s_new = keep(bi * r + br * s if no_g_in_s else bi * r + br * s + gi * g, s)
    r_new = keep((gr + bi * gi / br) * g + (br + bi * bi / br) * r - (bi / br) * s_new, r)
    return r_new, s_new
  r_new = keep(gr * g + (br * r - bi * s), r)
  s_new = keep(bi * r + br * s if no_g_in_s else (bi * r + br * s) + gi * g, s)
  return r_new, s_new


def _as_arrays(*xs):
  return tuple(jnp.asarray(x) for x in xs)


def _canonical(dtype):
  return None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)


def _complex_dtype(dtype):
  return jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64


def _zero_counts(params):
  return jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params)


def _finite(updates):
  """Per-leaf flag: every entry of the gradient leaf is finite."""
  return jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), updates)


def _count(finite, counts):
  return jax.tree.map(lambda f, c: c + jnp.logical_not(f).astype(c.dtype), finite, counts)


def _complex_zeros(params):
  return jax.tree.map(
      lambda p: jnp.zeros(jnp.shape(p), _complex_dtype(p.dtype)), params)


def scale_by_complex_momentum(
    magnitude: jax.typing.ArrayLike = 0.9,
    angle: jax.typing.ArrayLike = math.pi / 8,
    *,
    complex_buffer: bool = False,
    accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformation:
  r"""Heavy-ball momentum with a complex coefficient, real part read out.

  With :math:`\beta = |\beta| e^{i\theta}` and a complex buffer :math:`b_0 = 0`:

  .. math::

    b_{t+1} = \beta\, b_t + g_t, \qquad u_t = \operatorname{Re}(b_{t+1}).

  Stored as two real buffers :math:`b = r + i\,s` this is

  .. math::

    r_{t+1} = g_t + \operatorname{Re}\beta\, r_t - \operatorname{Im}\beta\, s_t,
    \qquad
    s_{t+1} = \operatorname{Im}\beta\, r_t + \operatorname{Re}\beta\, s_t,

  A gradient leaf with a NaN or an infinity leaves its buffers unchanged and
  gets a zero update (counted per leaf in ``nonfinite_count``).

  The output weights the gradient history with a damped cosine,
  :math:`u_t = \sum_k |\beta|^k \cos(k\theta)\, g_{t-k}`. With ``angle=0`` this is
  exactly ``optax.trace(decay=magnitude)``; with ``magnitude=0`` it is the
  identity.

  Args:
    magnitude: :math:`|\beta|`, a nonnegative number (0 gives plain gradient
      descent).
    angle: :math:`\arg\beta` in radians (0 gives heavy ball, :math:`\pi` negative
      momentum).
    complex_buffer: keep one complex-dtype buffer instead of two real ones. Same
      numbers up to float rounding. The two-buffer form is the default: it keeps
      every leaf in the parameter dtype and reduces to heavy ball bit for bit.
      With Python-number hyperparameters the two buffers are updated in an
      order that lets XLA overwrite both in place (see ``_rotate``); with
      traced ones (``inject_hyperparams``) XLA:CPU copies both buffers every
      step, which the complex buffer avoids (its speed there is not measured;
      ``benchmarks/complex_momentum_step.py`` times Python hyperparameters).
    accumulator_dtype: dtype of the real buffers (``None``: the parameter dtype).
      Ignored when ``complex_buffer`` is set.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> tx = scale_by_complex_momentum(0.9, jnp.pi / 8)
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.ones(2), state)
    >>> u, state = tx.update(jnp.ones(2), state)
    >>> print(u)  # 1 + 0.9 cos(pi/8)
    [1.8314916 1.8314916]

  References:
    Lorraine et al., `Complex Momentum for Optimization in Games
    <https://arxiv.org/abs/2102.08431>`_, 2022.

  .. seealso:: :func:`complex_momentum`, :func:`scale_by_complex_adam`.
  """
  _check_hyper("magnitude", magnitude)
  _check_angle("angle", angle)
  acc_dtype = _canonical(accumulator_dtype)

  if complex_buffer:

    def init_fn(params):
      return ScaleByComplexBufferMomentumState(_complex_zeros(params), _zero_counts(params))

    def update_fn(updates, state, params=None):
      del params
      finite = _finite(updates)
      beta = jax.lax.complex(*_as_arrays(*_polar(magnitude, angle)))
      buf = jax.tree.map(lambda f, g, b: jnp.where(f, beta.astype(b.dtype) * b + g, b),
                         finite, updates, state.buf)
      out = jax.tree.map(lambda f, g, b: jnp.where(f, jnp.real(b), 0).astype(g.dtype),
                         finite, updates, buf)
      return out, ScaleByComplexBufferMomentumState(
          buf, _count(finite, state.nonfinite_count))

    return optax.GradientTransformation(init_fn, update_fn)

  def init_fn(params):
    zeros = optax.tree.zeros_like(params, dtype=acc_dtype)
    return ScaleByComplexMomentumState(re=zeros, im=optax.tree.zeros_like(zeros),
                                       nonfinite_count=_zero_counts(params))

  def update_fn(updates, state, params=None):
    del params
    finite = _finite(updates)
    br, bi = _polar(magnitude, angle)
    pairs = jax.tree.map(lambda f, g, r, s: _rotate(br, bi, 1, 0, g, r, s, f),
                         finite, updates, state.re, state.im)
    re = jax.tree.map(lambda _, p: p[0], updates, pairs)
    im = jax.tree.map(lambda _, p: p[1], updates, pairs)
    out = jax.tree.map(lambda f, g, r: jnp.where(f, r, 0).astype(g.dtype), finite, updates, re)
    re = jax.tree.map(lambda r, old: r.astype(old.dtype), re, state.re)
    im = jax.tree.map(lambda s, old: s.astype(old.dtype), im, state.im)
    return out, ScaleByComplexMomentumState(
        re=re, im=im,
        nonfinite_count=_count(finite, state.nonfinite_count))

  return optax.GradientTransformation(init_fn, update_fn)


def complex_momentum(
    learning_rate: optax.ScalarOrSchedule,
    magnitude: jax.typing.ArrayLike = 0.9,
    angle: jax.typing.ArrayLike = math.pi / 8,
    *,
    complex_buffer: bool = False,
    accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformation:
  r"""SGD with complex momentum (SimCM when every player uses it).

  .. math::

    \mu_{t+1} = \beta \mu_t - g_t, \qquad
    \omega_{t+1} = \omega_t + \alpha \operatorname{Re}(\mu_{t+1}),
    \qquad \beta = |\beta| e^{i\theta}.

  ``angle=0`` is ``optax.sgd(learning_rate, momentum=magnitude)`` and
  ``magnitude=0`` is ``optax.sgd(learning_rate)``. For a constant gradient the
  step converges to :math:`-\alpha \operatorname{Re}(1/(1-\beta))\, g`, about
  1.146 g for :math:`\beta = 0.9e^{i\pi/8}` against 10 g for :math:`\beta=0.9`,
  so retune the learning rate when switching from heavy ball.

  Args:
    learning_rate: :math:`\alpha`, a number or an ``optax`` schedule.
    magnitude: :math:`|\beta|`.
    angle: :math:`\arg\beta` in radians.
    complex_buffer: see :func:`scale_by_complex_momentum`.
    accumulator_dtype: see :func:`scale_by_complex_momentum`.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> f = lambda w: jnp.sum(w ** 2)  # f(w0) = 5
    >>> tx = complex_momentum(0.1)
    >>> w = jnp.array([1.0, -2.0]); state = tx.init(w)
    >>> for _ in range(5):
    ...   u, state = tx.update(jax.grad(f)(w), state)
    ...   w = optax.apply_updates(w, u)
    >>> print(f"{f(w):.4f}")
    0.2368

  .. seealso:: :func:`scale_by_complex_momentum`.
  """
  _check_hyper("learning_rate", learning_rate)
  return optax.chain(
      scale_by_complex_momentum(magnitude, angle,
                                complex_buffer=complex_buffer,
                                accumulator_dtype=accumulator_dtype),
      optax.scale_by_learning_rate(learning_rate),
  )


def scale_by_complex_adam(
    b1_magnitude: jax.typing.ArrayLike = 0.9,
    b1_angle: jax.typing.ArrayLike = math.pi / 8,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
    *,
    complex_buffer: bool = False,
) -> optax.GradientTransformation:
  r"""Adam with a complex first-moment decay and a real-part read-out.

  This is the Adam-style (exponential moving average) form, chosen because
  ``b1_angle=0`` then reproduces ``optax.scale_by_adam(b1=b1_magnitude)``
  exactly. With :math:`\beta_1 = |\beta_1| e^{i\theta}` and step count
  :math:`t \ge 1`:

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \quad (\text{complex}), \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \\
    u_t &= \frac{\operatorname{Re}\big(m_t / (1 - \beta_1^t)\big)}
               {\sqrt{v_t / (1 - \beta_2^t) + \epsilon_{root}} + \epsilon}.

  The paper's heavy-ball form (``m = beta1 m - g``) differs from this one by the
  complex factor :math:`(1-\beta_1)` on the incoming gradient (and the sign);
  the two give the same direction only when the angle is 0. The complex bias
  correction :math:`1/(1-\beta_1^t)` tends to 1, as in Adam. A gradient leaf
  with a NaN or an infinity keeps its moments and gets a zero update (counted
  per leaf in ``nonfinite_count``; the step count :math:`t` still advances).

  Args:
    b1_magnitude: :math:`|\beta_1|` (0 gives RMSProp with bias correction, the
      BigGAN setting ``b1=0``).
    b1_angle: :math:`\arg\beta_1` in radians.
    b2: decay of the second moment.
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the two first-moment buffers (``None``: parameter dtype).
      Ignored when ``complex_buffer`` is set.
    complex_buffer: keep the first moment as one complex-dtype buffer (same
      numbers up to rounding; faster on XLA:CPU, see
      :func:`scale_by_complex_momentum`).

  Returns:
    An ``optax.GradientTransformation``.

  .. seealso:: :func:`complex_adam`, :func:`scale_by_complex_momentum`.
  """
  _check_hyper("b1_magnitude", b1_magnitude)
  _check_angle("b1_angle", b1_angle)
  _check_hyper("b2", b2)
  _check_hyper("eps", eps)
  _check_hyper("eps_root", eps_root)
  mu_dtype = _canonical(mu_dtype)

  def init_fn(params):
    count, nu = jnp.zeros([], jnp.int32), optax.tree.zeros_like(params)
    if complex_buffer:
      return ScaleByComplexBufferAdamState(count, _complex_zeros(params), nu,
                                           _zero_counts(params))
    mu = optax.tree.zeros_like(params, dtype=mu_dtype)
    return ScaleByComplexAdamState(count, mu, optax.tree.zeros_like(mu), nu, _zero_counts(params))

  def update_fn(updates, state, params=None):
    del params
    finite = _finite(updates)
    br, bi = _polar(b1_magnitude, b1_angle)
    # m <- beta1 m + (1 - beta1) g.
    if complex_buffer:
      beta = jax.lax.complex(*_as_arrays(br, bi))
      mu = jax.tree.map(
          lambda f, g, b: jnp.where(
              f, beta.astype(b.dtype) * b + (1 - beta).astype(b.dtype) * g, b),
          finite, updates, state.mu)
      mu_re, mu_im = jax.tree.map(jnp.real, mu), jax.tree.map(jnp.imag, mu)
    else:
      pairs = jax.tree.map(lambda f, g, r, s: _rotate(br, bi, 1 - br, -bi, g, r, s, f),
                           finite, updates, state.mu_re, state.mu_im)
      mu_re = jax.tree.map(lambda _, p: p[0], updates, pairs)
      mu_im = jax.tree.map(lambda _, p: p[1], updates, pairs)
    # nu <- b2 nu + (1 - b2) g^2 (optax's formula), or nu itself for a skipped leaf: an
    # elementwise select reads each old entry only to write it, so it stays one in-place loop.
    nu = jax.tree.map(lambda f, new, v: jnp.where(f, new, v), finite,
                      optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2), state.nu)
    count = optax.safe_increment(state.count)
    # 1 - beta1^t = dr + i di with dr >= 1 - |beta1|^t > 0, so the real part of
    # m / (dr + i di) is (re + im k) / (dr + di k) with k = di / dr (no cancelling,
    # and exactly re / dr when the angle is 0).
    power = b1_magnitude ** count
    dr = 1 - power * jnp.cos(count * b1_angle)
    di = -power * jnp.sin(count * b1_angle)
    k = di / dr
    den = dr + di * k
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    out = jax.tree.map(
        lambda f, g, r, s, v: jnp.where(
            f, (r + s * k.astype(r.dtype)) / den.astype(r.dtype)
            / (jnp.sqrt(v + eps_root) + eps), 0).astype(g.dtype),
        finite, updates, mu_re, mu_im, nu_hat)
    nu = optax.tree.cast_like(nu, state.nu)
    counts = _count(finite, state.nonfinite_count)
    if complex_buffer:
      return out, ScaleByComplexBufferAdamState(count, mu, nu, counts)
    return out, ScaleByComplexAdamState(
        count, optax.tree.cast_like(mu_re, state.mu_re),
        optax.tree.cast_like(mu_im, state.mu_im), nu, counts)

  return optax.GradientTransformation(init_fn, update_fn)


def complex_adam(
    learning_rate: optax.ScalarOrSchedule,
    b1_magnitude: jax.typing.ArrayLike = 0.9,
    b1_angle: jax.typing.ArrayLike = math.pi / 8,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
    *,
    complex_buffer: bool = False,
) -> optax.GradientTransformation:
  r"""Complex Adam: Adam with :math:`\beta_1 \in \mathbb{C}`.

  .. math::

    \omega_{t+1} = \omega_t - \alpha\,
      \frac{\operatorname{Re}\big(m_t / (1 - \beta_1^t)\big)}
           {\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

  with :math:`m_t, \hat v_t` as in :func:`scale_by_complex_adam`. ``b1_angle=0``
  is ``optax.adam(learning_rate, b1=b1_magnitude, ...)`` exactly.

  Args:
    learning_rate: :math:`\alpha`, a number or an ``optax`` schedule.
    b1_magnitude: :math:`|\beta_1|`.
    b1_angle: :math:`\arg\beta_1` in radians.
    b2: decay of the second moment.
    eps: added to the denominator outside the square root.
    eps_root: added inside the square root.
    mu_dtype: dtype of the first-moment buffers.
    complex_buffer: one complex-dtype first-moment buffer instead of two real.

  Returns:
    An ``optax.GradientTransformation``.

  .. seealso:: :func:`scale_by_complex_adam`, :func:`complex_momentum`.
  """
  _check_hyper("learning_rate", learning_rate)
  return optax.chain(
      scale_by_complex_adam(b1_magnitude, b1_angle, b2, eps, eps_root,
                            mu_dtype, complex_buffer=complex_buffer),
      optax.scale_by_learning_rate(learning_rate),
  )
