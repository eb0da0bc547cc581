"""The two-point effective theory of representation learning (van Rossem & Saxe, ICML 2024).

A network ``f = g∘h`` trained on two points ``(x1, y1), (x2, y2)``. Three scalars describe its
representation (THEORY.md section 2, paper Eq. 7-8):

* ``h = ||h(x2) - h(x1)||^2``   squared hidden-layer distance,
* ``y = ||f(x2) - f(x1)||^2``   squared predicted-output distance,
* ``w = y - dy . (f(x2) - f(x1))``   alignment,

and obey, with the two effective learning rates ``eta_h, eta_y`` (units 1/epoch) and the data
constants ``dx2 = ||x2 - x1||^2``, ``dy2 = ||y2 - y1||^2``::

    dh/dt = -eta_h dx2 w
    dy/dt = -w (eta_y h + eta_h dx2 y / h)
    dw/dt = -1/2 eta_y (3 w - y + dy2) h  -  1/2 eta_h dx2 (y + w) w / h

Time ``t`` is in training epochs (full-batch gradient steps).

Everything here computes in float64: switch JAX's 64-bit mode on first
(``jax.config.update("jax_enable_x64", True)``, ``JAX_ENABLE_X64=1``, or
``with jax.enable_x64(True):``). Every function is a pure function of arrays, so it can be
``jit``-ed, ``vmap``-ed over rates and initial states, and differentiated in both.

References:
    L. van Rossem, A. M. Saxe. When Representations Align: Universality in Representation
    Learning Dynamics. ICML 2024. arXiv:2402.09142.
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from unijax._checks import check_finite, check_positive, check_x64, is_concrete

__all__ = [
    "ODESolution",
    "FixedPoints",
    "Stability",
    "SaddleDirections",
    "vector_field",
    "integrate",
    "solve",
    "loss_curve",
    "invariant",
    "invariant_c",
    "y_of_h",
    "reduced_vector_field",
    "fixed_points",
    "stability",
    "saddle_directions",
    "a_high",
    "a_low",
    "final_distance",
    "rich_limit",
    "lazy_limit",
    "identical_outputs",
]

Scalar = Float[ArrayLike, ""]


# ---------------------------------------------------------------------------------------------
# Validation (Python side, concrete values only)
# ---------------------------------------------------------------------------------------------


def _check_rates(**rates) -> None:
    for name, value in rates.items():
        check_positive(name, value)


def _check_data(dx2, dy2) -> None:
    check_positive("dx2", dx2)
    check_positive("dy2", dy2, allow_zero=True)


def _check_state(name: str, z) -> None:
    if not is_concrete(z):
        return
    arr = np.asarray(z, dtype=float)
    if arr.shape[-1:] != (3,):
        raise ValueError(f"{name} must have shape (..., 3) holding (h, y, w); got {arr.shape}.")
    check_finite(name, arr)
    check_positive(f"{name}[..., 0] (h0, squared hidden distance)", arr[..., 0])
    check_positive(f"{name}[..., 1] (y0, squared output distance)", arr[..., 1], allow_zero=True)


def _check_ts(ts) -> None:
    if not is_concrete(ts):
        return
    arr = np.asarray(ts, dtype=float)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError(f"ts must be a 1-D array of times (epochs); got shape {arr.shape}.")
    check_finite("ts", arr)
    if arr.size > 1 and not np.all(np.diff(arr) > 0):
        i = int(np.argmin(np.diff(arr) > 0))
        raise ValueError(
            f"ts must be strictly increasing; ts[{i}]={arr[i]!r} >= ts[{i + 1}]={arr[i + 1]!r}."
        )


# ---------------------------------------------------------------------------------------------
# The ODE (section 2)
# ---------------------------------------------------------------------------------------------


def vector_field(
    z: Float[ArrayLike, "3"], *, eta_h: Scalar, eta_y: Scalar, dx2: Scalar, dy2: Scalar
) -> Float[Array, "3"]:
    """Right-hand side of the (h, y, w) ODE, THEORY.md section 2 (paper Eq. 8, A.1).

    Args:
        z: state ``(h, y, w)``, shape ``(3,)``; ``h > 0``.
        eta_h, eta_y: effective learning rates of encoder and decoder (1/epoch).
        dx2, dy2: squared input and output distances of the two points.

    Returns:
        ``dz/dt``, shape ``(3,)``, per epoch.
    """
    h, y, w = z[0], z[1], z[2]
    a = eta_h * dx2
    dh = -a * w
    dy = -w * (eta_y * h + a * y / h)
    dw = -0.5 * eta_y * (3.0 * w - y + dy2) * h - 0.5 * a * (y + w) * w / h
    return jnp.stack([dh, dy, dw])


class ODESolution(NamedTuple):
    """A solution of the (h, y, w) ODE sampled at given times.

    Attributes:
        ts: sample times, shape ``(n,)``, epochs.
        ys: ``(h, y, w)`` at ``ts``, shape ``(n, 3)``; NaN everywhere when ``ok`` is False.
        ok: True when the solver reached ``ts[-1]`` with ``h > 0`` and finite values.
        num_steps: accepted + rejected solver steps (cost diagnostics).
    """

    ts: Float[Array, " n"]
    ys: Float[Array, "n 3"]
    ok: Bool[Array, ""]
    num_steps: Int[Array, ""]


def _term():
    def f(t, z, args):
        eta_h, eta_y, dx2, dy2 = args
        return vector_field(z, eta_h=eta_h, eta_y=eta_y, dx2=dx2, dy2=dy2)

    return diffrax.ODETerm(f)


def integrate(
    z0: Float[ArrayLike, "3"],
    ts: Float[ArrayLike, " n"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
    dy2: Scalar,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    max_steps: int = 16_384,
    solver: diffrax.AbstractSolver | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    dense: bool = True,
) -> ODESolution:
    """Integrate the ODE from ``z0`` at ``ts[0]`` and sample it at ``ts``, with a status flag.

    The solver is adaptive (Diffrax ``Tsit5`` with a PID step-size controller by default). With
    ``dense=True`` (default) the solution is stored as its dense interpolant and evaluated at
    ``ts`` afterwards, which keeps the cost independent of ``len(ts)``: saving thousands of
    points inside a ``vmap``-ed solve is much slower, because every step then checks every save
    point. The interpolant is 4th-order accurate for Tsit5, well inside the default tolerances.

    Args:
        z0: initial ``(h0, y0, w0)``, shape ``(3,)``; ``h0 > 0``, ``y0 >= 0``.
        ts: strictly increasing sample times (epochs), shape ``(n,)``; the solve starts at
            ``ts[0]``.
        eta_h, eta_y: effective learning rates (1/epoch), > 0.
        dx2, dy2: squared input distance (> 0) and output distance (>= 0).
        rtol, atol: step-size controller tolerances. The defaults match a tight implicit
            reference to ~1e-7 relative on the paper's trajectories.
        max_steps: solver step budget; running out sets ``ok=False``.
        solver: any Diffrax ODE solver; default ``diffrax.Tsit5()``.
        adjoint: Diffrax adjoint. Default ``RecursiveCheckpointAdjoint`` (reverse mode); pass
            ``diffrax.ForwardMode()`` for forward-mode derivatives (``jax.jacfwd``), which is
            what a least-squares fit in two rates wants.
        dense: evaluate the dense interpolant (True) or save at ``ts`` inside the solve.

    Returns:
        :class:`ODESolution` with ``ys`` of shape ``(n, 3)``.

    Raises:
        ValueError: on non-positive rates or ``dx2``, negative ``dy2``, ``h0 <= 0``,
            ``y0 < 0``, non-finite values, or ``ts`` not strictly increasing (concrete inputs).
    """
    check_x64("unijax.theory.integrate")
    _check_state("z0", z0)
    _check_ts(ts)
    _check_rates(eta_h=eta_h, eta_y=eta_y)
    _check_data(dx2, dy2)

    z0 = jnp.asarray(z0, dtype=jnp.float64)
    ts = jnp.asarray(ts, dtype=jnp.float64)
    args = tuple(jnp.asarray(a, dtype=jnp.float64) for a in (eta_h, eta_y, dx2, dy2))
    solver = diffrax.Tsit5() if solver is None else solver
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    t0, t1 = ts[0], ts[-1]
    # A single sample point: nothing to integrate, but keep one code path for jit/vmap.
    t1 = jnp.where(t1 > t0, t1, t0 + 1.0)
    saveat = diffrax.SaveAt(dense=True) if dense else diffrax.SaveAt(ts=ts)
    sol = diffrax.diffeqsolve(
        _term(),
        solver,
        t0=t0,
        t1=t1,
        dt0=None,
        y0=z0,
        args=args,
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        adjoint=adjoint,
        max_steps=max_steps,
        throw=False,
    )
    ys = jax.vmap(sol.evaluate)(ts) if dense else sol.ys
    ok = (
        (sol.result == diffrax.RESULTS.successful)
        & jnp.all(jnp.isfinite(ys))
        & jnp.all(ys[:, 0] > 0)
    )
    ys = jnp.where(ok, ys, jnp.nan)
    return ODESolution(ts=ts, ys=ys, ok=ok, num_steps=sol.stats["num_steps"])


def solve(
    z0: Float[ArrayLike, "3"],
    ts: Float[ArrayLike, " n"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
    dy2: Scalar,
    **solver_options,
) -> Float[Array, "n 3"]:
    """``(h, y, w)`` at times ``ts`` (epochs), shape ``(len(ts), 3)``.

    Same arguments as :func:`integrate` (``rtol``, ``atol``, ``max_steps``, ``solver``,
    ``adjoint``, ``dense`` pass through). A failed solve returns NaN, never silent numbers; use
    :func:`integrate` for the status flag.

    Example:
        >>> import jax; jax.config.update("jax_enable_x64", True)
        >>> import jax.numpy as jnp
        >>> from unijax import theory
        >>> ys = theory.solve(jnp.array([0.5, 0.01, 0.0]), jnp.arange(6000.0),
        ...                   eta_h=1e-3, eta_y=2e-3, dx2=1.0, dy2=0.5)
        >>> ys.shape
        (6000, 3)
    """
    return integrate(z0, ts, eta_h=eta_h, eta_y=eta_y, dx2=dx2, dy2=dy2, **solver_options).ys


# ---------------------------------------------------------------------------------------------
# Loss (section 3)
# ---------------------------------------------------------------------------------------------


def loss_curve(
    ts: Float[ArrayLike, " n"],
    z: Float[ArrayLike, "n 3"],
    *,
    eta_mean: Scalar,
    dy2: Scalar,
    m0: Scalar,
) -> Float[Array, " n"]:
    """Training loss predicted by the theory, THEORY.md section 3 (paper Eq. 9, A.2).

    ``L(t) = 1/2 m0 exp(-2 eta_mean (t - ts[0])) + 1/4 (w + 1/2 (dy2 - y))`` for the loss
    ``0.5 * mean squared error`` of a 1-D-output network on two points.

    Args:
        ts: times (epochs), shape ``(n,)``.
        z: ``(h, y, w)`` at ``ts``, shape ``(n, 3)``.
        eta_mean: rate of the mean output (1/epoch), > 0.
        dy2: squared output distance.
        m0: ``||ybar - gbar(0)||^2``, squared error of the mean output at ``ts[0]``, >= 0.

    Returns:
        Loss at ``ts``, shape ``(n,)``.
    """
    check_positive("eta_mean", eta_mean)
    check_positive("m0", m0, allow_zero=True)
    check_positive("dy2", dy2, allow_zero=True)
    ts = jnp.asarray(ts)
    z = jnp.asarray(z)
    mean_part = 0.5 * m0 * jnp.exp(-2.0 * eta_mean * (ts - ts[0]))
    return mean_part + 0.25 * (z[..., 2] + 0.5 * (dy2 - z[..., 1]))


# ---------------------------------------------------------------------------------------------
# Invariant and the reduced 2-D system (section 4)
# ---------------------------------------------------------------------------------------------


def invariant_c(*, eta_h: Scalar, eta_y: Scalar, dx2: Scalar) -> Float[Array, ""]:
    """``c = eta_y / (eta_h dx2)``, the slope of ``y/h`` against ``h`` (paper Eq. 23)."""
    return jnp.asarray(eta_y) / (jnp.asarray(eta_h) * jnp.asarray(dx2))


def invariant(
    h: Float[ArrayLike, "*b"],
    y: Float[ArrayLike, "*b"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
) -> Float[Array, "*b"]:
    """The conserved quantity ``K = y/h - c h``, THEORY.md section 4 (paper Eq. 24).

    Constant along every solution of the ODE; any shape, element-wise.
    """
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    h = jnp.asarray(h)
    return jnp.asarray(y) / h - c * h


def y_of_h(h, *, c, K):
    """``y(h) = c h^2 + K h`` on the level set of the invariant (paper Eq. 25)."""
    return c * h**2 + K * h


def reduced_vector_field(
    hw: Float[ArrayLike, "2"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
    dy2: Scalar,
    K: Scalar,
) -> Float[Array, "2"]:
    """The closed 2-D system in ``(h, w)`` with ``y = c h^2 + K h`` (THEORY.md section 4).

    Args:
        hw: ``(h, w)``, shape ``(2,)``.
        K: value of the invariant, :func:`invariant` of the initial state.

    Returns:
        ``d(h, w)/dt``, shape ``(2,)``.
    """
    hw = jnp.asarray(hw)
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    y = y_of_h(hw[0], c=c, K=K)
    z = jnp.stack([hw[0], y, hw[1]])
    dz = vector_field(z, eta_h=eta_h, eta_y=eta_y, dx2=dx2, dy2=dy2)
    return jnp.stack([dz[0], dz[2]])


# ---------------------------------------------------------------------------------------------
# Fixed points, stability, final distance (section 5)
# ---------------------------------------------------------------------------------------------


class FixedPoints(NamedTuple):
    """Fixed points of the reduced system on the level set ``K`` (all have ``w = 0``).

    Attributes:
        h_plus: the stable fixed point, the final squared hidden distance (>= 0).
        h_minus: the second root of ``c h^2 + K h - dy2``, <= 0 and unreachable.
        h_zero: the saddle at ``h = 0`` (always 0, kept for completeness).
        K: the invariant; c: ``eta_y / (eta_h dx2)``.
    """

    h_plus: Float[Array, "*b"]
    h_minus: Float[Array, "*b"]
    h_zero: Float[Array, "*b"]
    K: Float[Array, "*b"]
    c: Float[Array, "*b"]


def _roots(K, c, dy2):
    """Both roots of ``c h^2 + K h - dy2 = 0``, each in its cancellation-free form."""
    disc = jnp.sqrt(K**2 + 4.0 * c * dy2)
    pos = K > 0
    # For K > 0, -K + disc cancels: use the rationalized 2 dy2 / (K + disc) instead.
    h_plus = jnp.where(pos, 2.0 * dy2 / jnp.where(pos, K + disc, 1.0), (disc - K) / (2.0 * c))
    # For K < 0, -K - disc cancels: use Vieta, h_minus = -2 dy2 / (disc - K).
    neg_den = jnp.where(pos, 1.0, disc - K)
    h_minus = jnp.where(
        pos, -(K + disc) / (2.0 * c), jnp.where(neg_den > 0, -2.0 * dy2 / neg_den, 0.0)
    )
    return h_plus, h_minus


def fixed_points(
    h0: Float[ArrayLike, "*b"],
    y0: Float[ArrayLike, "*b"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
    dy2: Scalar,
) -> FixedPoints:
    """Fixed points reached from the initial ``(h0, y0)``, THEORY.md section 5 (Eq. 26-33).

    ``w = 0`` and ``h (dy2 - y(h)) = 0``: the saddle ``h = 0`` and the roots
    ``h_± = (-K ± sqrt(K^2 + 4 c dy2)) / (2c)``.
    """
    check_positive("h0", h0)
    check_positive("y0", y0, allow_zero=True)
    _check_rates(eta_h=eta_h, eta_y=eta_y)
    _check_data(dx2, dy2)
    h0 = jnp.asarray(h0)
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2) * jnp.ones_like(h0)
    K = invariant(h0, y0, eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    h_plus, h_minus = _roots(K, c, jnp.asarray(dy2))
    return FixedPoints(h_plus=h_plus, h_minus=h_minus, h_zero=jnp.zeros_like(h_plus), K=K, c=c)


class Stability(NamedTuple):
    """Linear stability of the reduced ``(h, w)`` system at a fixed point ``(h*, 0)``.

    Attributes:
        jacobian: shape ``(..., 2, 2)``, rows ``d(dh/dt)``, ``d(dw/dt)`` by columns ``h, w``.
        trace, det: of the Jacobian.
        eigenvalues: complex, shape ``(..., 2)``, in 1/epoch.
        stable: both eigenvalues have negative real part.
    """

    jacobian: Float[Array, "*b 2 2"]
    trace: Float[Array, "*b"]
    det: Float[Array, "*b"]
    eigenvalues: Array
    stable: Bool[Array, "*b"]


def stability(
    h_star: Float[ArrayLike, "*b"],
    *,
    K: Float[ArrayLike, "*b"],
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
    dy2: Scalar,
) -> Stability:
    """Jacobian, trace, determinant and eigenvalues at ``(h*, w = 0)``, THEORY.md section 5.

    ``J = [[0, -eta_h dx2], [1/2 eta_y h* y'(h*), -3/2 eta_y h* - 1/2 eta_h dx2 dy2 / h*]]``
    with ``y'(h) = 2 c h + K`` (at a fixed point ``y(h*) = dy2``). At ``h_plus`` the trace is
    negative and ``det = 1/2 eta_h dx2 eta_y h+ sqrt(K^2 + 4 c dy2) > 0``: stable. For the
    singular point ``h = 0`` use :func:`saddle_directions`.
    """
    check_positive("h_star", h_star)
    h = jnp.asarray(h_star)
    K = jnp.asarray(K)
    a = eta_h * dx2
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    y = y_of_h(h, c=c, K=K)
    dyp = 2.0 * c * h + K
    j00 = jnp.zeros_like(h)
    j01 = -a * jnp.ones_like(h)
    j10 = 0.5 * eta_y * h * dyp - 0.5 * eta_y * (dy2 - y)  # second term vanishes at a fixed point
    j11 = -1.5 * eta_y * h - 0.5 * a * y / h
    jac = jnp.stack([jnp.stack([j00, j01], -1), jnp.stack([j10, j11], -1)], -2)
    tr = j00 + j11
    det = j00 * j11 - j01 * j10
    eig = jnp.linalg.eigvals(jac)
    return Stability(jacobian=jac, trace=tr, det=det, eigenvalues=eig, stable=(tr < 0) & (det > 0))


class SaddleDirections(NamedTuple):
    """Linearization of the singular point ``h = 0`` along lines ``w = s h``.

    Attributes:
        slopes: the two roots ``s`` of ``s^2 - K s - eta_y dy2 / (eta_h dx2) = 0``,
            shape ``(..., 2)`` ordered (negative, positive).
        eigenvalues: growth rates ``-eta_h dx2 s`` along them (1/epoch), shape ``(..., 2)``:
            one positive, one negative (a saddle) whenever ``dy2 > 0``.
    """

    slopes: Float[Array, "*b 2"]
    eigenvalues: Float[Array, "*b 2"]


def saddle_directions(
    K: Float[ArrayLike, "*b"], *, eta_h: Scalar, eta_y: Scalar, dx2: Scalar, dy2: Scalar
) -> SaddleDirections:
    """The saddle at ``h = 0`` by direction of approach, THEORY.md section 5."""
    K = jnp.asarray(K)
    q = eta_y * dy2 / (eta_h * dx2)
    disc = jnp.sqrt(K**2 + 4.0 * q)
    s = jnp.stack([(K - disc) / 2.0, (K + disc) / 2.0], -1)
    return SaddleDirections(slopes=s, eigenvalues=-eta_h * dx2 * s)


def a_high(
    h0: Float[ArrayLike, "*b"],
    y0: Float[ArrayLike, "*b"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
) -> Float[Array, "*b"]:
    """``A_high = h0 - (eta_h/eta_y) dx2 y0/h0 = -K/c``, set by the initialization (Eq. 12)."""
    h0 = jnp.asarray(h0)
    return h0 - (eta_h / eta_y) * dx2 * jnp.asarray(y0) / h0


def a_low(*, eta_h: Scalar, eta_y: Scalar, dx2, dy2) -> Float[Array, "*b"]:
    """``A_low = sqrt(eta_h/eta_y) sqrt(dx2 dy2)``, set by the data (Eq. 13); any shape."""
    return jnp.sqrt(jnp.asarray(eta_h) / eta_y) * jnp.sqrt(jnp.asarray(dx2) * jnp.asarray(dy2))


def final_distance(
    h0: Float[ArrayLike, "*b"],
    y0: Float[ArrayLike, "*b"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2,
    dy2,
) -> Float[Array, "*b"]:
    """Final squared hidden distance ``h_final``, THEORY.md section 5 (paper Eq. 10-11).

    ``h_final = A_high/2 + sqrt(A_high^2/4 + A_low^2)``, evaluated without cancellation for
    ``A_high << 0``. Element-wise over any broadcastable shapes of ``h0, y0, dx2, dy2``.

    Args:
        h0: initial squared hidden distance, > 0.
        y0: initial squared output distance, >= 0.
        eta_h, eta_y: effective rates (1/epoch), > 0 (only their ratio matters).
        dx2, dy2: squared input (> 0) and output (>= 0) distances.

    Returns:
        The stable fixed point ``h_+`` (a *squared* distance).
    """
    check_positive("h0", h0)
    check_positive("y0", y0, allow_zero=True)
    _check_rates(eta_h=eta_h, eta_y=eta_y)
    _check_data(dx2, dy2)
    ah = a_high(h0, y0, eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    al2 = (jnp.asarray(eta_h) / eta_y) * jnp.asarray(dx2) * jnp.asarray(dy2)
    root = jnp.sqrt(ah**2 / 4.0 + al2)
    # For A_high < 0 the two terms cancel; the rationalized form A_low^2 / (root - A_high/2)
    # keeps full precision (lazy regime with anti-aligned initial outputs).
    safe = jnp.where(ah < 0, root - ah / 2.0, 1.0)
    return jnp.where(ah < 0, al2 / safe, ah / 2.0 + root)


def rich_limit(*, eta_h: Scalar, eta_y: Scalar, dx2, dy2) -> Float[Array, "*b"]:
    """``h_final`` as the initial weights go to zero (``A_high -> 0``): ``A_low`` (Eq. 13)."""
    return a_low(eta_h=eta_h, eta_y=eta_y, dx2=dx2, dy2=dy2)


def lazy_limit(h0, y0, *, eta_h: Scalar, eta_y: Scalar, dx2) -> Float[Array, "*b"]:
    """``h_final`` for large initial weights (``|A_high| >> A_low``): ``max(A_high, 0)``."""
    return jnp.maximum(a_high(h0, y0, eta_h=eta_h, eta_y=eta_y, dx2=dx2), 0.0)


# ---------------------------------------------------------------------------------------------
# Identical outputs (section 6)
# ---------------------------------------------------------------------------------------------


def identical_outputs(
    t: Float[ArrayLike, " n"],
    h0: Scalar,
    y0: Scalar,
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
) -> Float[Array, "n 3"]:
    """Closed-form solution when both points share one target (``dy2 = 0``), section 6.

    Then ``w = y`` and ``dh/dt = -alpha h - beta h^2`` with ``alpha = eta_h dx2 K``,
    ``beta = eta_y``, so
    ``h(t) = alpha h0 e^{-alpha t} / (alpha + beta h0 (1 - e^{-alpha t}))``
    (``alpha -> 0``: ``h0 / (1 + beta h0 t)``), ``y = w = c h^2 + K h``.

    Args:
        t: times since the start (epochs), shape ``(n,)``.
        h0, y0: initial squared hidden and output distances; the initial ``w0 = y0``.

    Returns:
        ``(h, y, w)`` at ``t``, shape ``(n, 3)``.
    """
    check_positive("h0", h0)
    check_positive("y0", y0, allow_zero=True)
    _check_rates(eta_h=eta_h, eta_y=eta_y)
    check_positive("dx2", dx2)
    t = jnp.asarray(t, dtype=jnp.result_type(float))
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    K = invariant(h0, y0, eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    alpha = eta_h * dx2 * K
    # (1 - e^{-alpha t}) / alpha, continuous through alpha = 0 (then it is t).
    small = jnp.abs(alpha * t) < 1e-8
    safe_alpha = jnp.where(small, 1.0, alpha)
    g = jnp.where(small, t * (1.0 - 0.5 * alpha * t), -jnp.expm1(-safe_alpha * t) / safe_alpha)
    h = h0 * jnp.exp(-alpha * t) / (1.0 + eta_y * h0 * g)
    y = y_of_h(h, c=c, K=K)
    return jnp.stack([h, y, y], -1)
