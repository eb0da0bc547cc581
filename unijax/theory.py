"""The two-point effective theory of representation learning (van Rossem & Saxe, ICML 2024).

A network ``f = g∘h`` trained on two points ``(x1, y1), (x2, y2)``. Three scalars describe its
representation (docs/theory.md section 2, paper Eq. 7-8):

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
``with jax.enable_x64(True):``); with it off every function raises ``RuntimeError`` rather
than lose precision silently. Every function is a pure function of arrays, so it can be
``jit``-ed, ``vmap``-ed over rates and initial states, and differentiated in both.

Every function validates its arguments before tracing: a value out of range (a rate <= 0, a
negative squared distance, NaN, ``None``, a non-increasing ``ts``, a wrong shape) raises
``ValueError`` naming the argument, its value and the valid range. Values are checked when
concrete; under a caller's ``jit``/``vmap`` only shapes are (values are traced), and a failed
solve then shows in :attr:`ODESolution.ok`.

References:
    L. van Rossem, A. M. Saxe. When Representations Align: Universality in Representation
    Learning Dynamics. ICML 2024. arXiv:2402.09142.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from unijax._batch import BATCH_AXIS, batch_mesh, blocked_rows, pad_index
from unijax._checks import (
    as_float64,
    as_real_array,
    check_finite,
    check_int,
    check_ndim,
    check_positive,
    check_x64,
    checked,
    is_concrete,
)
from unijax._codes import Coded
from unijax.distributed import put

__all__ = [
    "ODESolution",
    "SolveResult",
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
    "LazyScaling",
    "lazy_rescale",
    "lazy_unscale",
    "a_high_from_final",
    "final_distance_density",
    "initial_distance_at_depth",
    "fit_depth_gain",
    "pairwise_sq_distances",
    "pairwise_a_low",
    "pairwise_final_distance",
    "exponential_weighting",
    "exponential_weighting_from_data",
]

Scalar = Float[ArrayLike, ""]


# ---------------------------------------------------------------------------------------------
# Validation (Python side, concrete values only)
# ---------------------------------------------------------------------------------------------


def _state(name: str, z, *, batch: bool) -> Array:
    """A state ``(h, y, w)`` of shape ``(3,)`` (``(..., 3)`` with ``batch``); h > 0, y >= 0."""
    shape = np.shape(z) if not is_concrete(z) else np.shape(as_real_array(name, z))
    if (shape[-1:] != (3,)) if batch else (shape != (3,)):
        want = "(..., 3)" if batch else "(3,)"
        raise ValueError(f"{name} must have shape {want} holding (h, y, w); got {shape}.")
    if is_concrete(z):
        arr = as_real_array(name, z)
        check_finite(name, arr)
        h, y = ("h0", "y0") if name == "z0" else ("h", "y")
        check_positive(f"{name}[..., 0] ({h}, squared hidden distance)", arr[..., 0])
        check_positive(f"{name}[..., 1] ({y}, squared output distance)", arr[..., 1],
                       allow_zero=True)
    return jnp.asarray(z, dtype=jnp.float64)


def _times(name: str, ts, *, increasing: bool = True) -> Array:
    """1-D, non-empty, finite times (epochs), strictly increasing unless told otherwise."""
    if is_concrete(ts):
        arr = as_real_array(name, ts)
        if arr.ndim != 1 or arr.size < 1:
            raise ValueError(
                f"{name} must be a non-empty 1-D array of times (epochs); got shape {arr.shape}."
            )
        check_finite(name, arr)
        if increasing and arr.size > 1 and not np.all(np.diff(arr) > 0):
            i = int(np.argmin(np.diff(arr) > 0))
            raise ValueError(
                f"{name} must be strictly increasing; {name}[{i}]={float(arr[i])!r} >= "
                f"{name}[{i + 1}]={float(arr[i + 1])!r}."
            )
    else:
        check_ndim(name, ts, 1, " of times (epochs)")
    return jnp.asarray(ts, dtype=jnp.float64)


def _hw(name: str, hw) -> Array:
    """A reduced state ``(h, w)`` of shape ``(2,)`` with ``h > 0``."""
    hw = as_float64(name, hw, ndim=1)
    if hw.shape != (2,):
        raise ValueError(f"{name} must have shape (2,) holding (h, w); got {hw.shape}.")
    check_positive(f"{name}[0] (h, squared hidden distance)", hw[0])
    return hw


def _scaled_states(name: str, z) -> Array:
    """Rescaled states ``(..., 3)``; only real numbers are required (a failed solve's NaN
    rows pass through)."""
    if is_concrete(z):
        as_real_array(name, z)
    z = jnp.asarray(z, dtype=jnp.float64)
    if z.shape[-1:] != (3,):
        raise ValueError(f"{name} must have shape (..., 3) holding (h~, y~, w~); got {z.shape}.")
    return z


def _tolerance(name: str, x):
    """A scalar > 0, passed on as given (a Python float stays static for the compiled solve)."""
    as_float64(name, x, "pos", ndim=0)
    return x


# The argument kinds of the `_checked` specs below, beyond the real numbers of
# `unijax._checks.checked` (``x``, ``x>0``, ``x>=0``, with ``()`` for a scalar).
_KINDS = {
    "state": functools.partial(_state, batch=False),
    "states": functools.partial(_state, batch=True),
    "times": _times,
    "elapsed": functools.partial(as_float64, sign="nonneg", ndim=(0, 1),
                                 what=" of times since the start (epochs)"),
    "hw": _hw,
    "scaled_states": _scaled_states,
    "tol": _tolerance,
    "count": functools.partial(check_int, lo=1),
}
# Each public function states its checks once, in the decorator: they run in Python on the
# caller's values before the body (and so before anything is traced).
_checked = functools.partial(checked, where="unijax.theory", kinds=_KINDS)


# ---------------------------------------------------------------------------------------------
# The ODE (section 2)
# ---------------------------------------------------------------------------------------------


@_checked("z:state eta_h>0() eta_y>0() dx2>0() dy2>=0()")
def vector_field(
    z: Float[ArrayLike, "3"], *, eta_h: Scalar, eta_y: Scalar, dx2: Scalar, dy2: Scalar
) -> Float[Array, "3"]:
    """Right-hand side of the (h, y, w) ODE, docs/theory.md section 2 (paper Eq. 8, A.1).

    Args:
        z: state ``(h, y, w)``, shape ``(3,)``; ``h > 0``.
        eta_h, eta_y: effective learning rates of encoder and decoder (1/epoch).
        dx2, dy2: squared input and output distances of the two points.

    Returns:
        ``dz/dt``, shape ``(3,)``, per epoch.

    Raises:
        ValueError: ``z`` not of shape ``(3,)``, ``h <= 0`` or ``y < 0``; rates or ``dx2``
            not > 0, ``dy2 < 0``, or any of them not a scalar (values checked when concrete).
        RuntimeError: JAX's 64-bit mode is off.
    """
    h, y, w = z[0], z[1], z[2]
    a = eta_h * dx2
    dh = -a * w
    dy = -w * (eta_y * h + a * y / h)
    dw = -0.5 * eta_y * (3.0 * w - y + dy2) * h - 0.5 * a * (y + w) * w / h
    return jnp.stack([dh, dy, dw])


class SolveResult(Coded):
    """How a solve of the ODE ended (``ODESolution.result``), like Diffrax's ``RESULTS``: an
    integer code in the arrays, and a message for each (``SolveResult.MAX_STEPS.message``)."""

    SUCCESSFUL = (0, "reached ts[-1] with h > 0 and finite values")
    MAX_STEPS = (1, "ran out of its step budget max_steps before ts[-1]")
    SOLVER_FAILED = (2, "the solver stopped before ts[-1] (step size or a non-finite step)")
    LEFT_DOMAIN = (3, "reached ts[-1], but h fell to 0 or a value is not finite")


class ODESolution(NamedTuple):
    """A solution of the (h, y, w) ODE sampled at given times.

    Attributes:
        ts: sample times, shape ``(n,)``, epochs.
        ys: ``(h, y, w)`` at ``ts``, shape ``(n, 3)``; NaN everywhere when ``ok`` is False.
        ok: True when the solver reached ``ts[-1]`` with ``h > 0`` and finite values.
        num_steps: accepted + rejected solver steps (cost diagnostics).
        max_steps_reached: the solve ran out of its step budget ``max_steps``.
        result: a :class:`SolveResult` code (int): why ``ok`` is False, or ``SUCCESSFUL``.
    """

    ts: Float[Array, " n"]
    ys: Float[Array, "n 3"]
    ok: Bool[Array, ""]
    num_steps: Int[Array, ""]
    max_steps_reached: Bool[Array, ""]
    result: Int[Array, ""]


def _rhs(t, z, args):
    eta_h, eta_y, dx2, dy2 = args
    return vector_field(z, eta_h=eta_h, eta_y=eta_y, dx2=dx2, dy2=dy2)


# One term object for the module: Diffrax caches its compiled solve on the term's identity, so a
# fresh closure per call would recompile every time.
_TERM = diffrax.ODETerm(_rhs)


@_checked("z0:state ts:times eta_h>0() eta_y>0() dx2>0() dy2>=0() "
          "rtol:tol atol:tol max_steps:count")
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
) -> ODESolution:
    """Integrate the ODE from ``z0`` at ``ts[0]`` and sample it at ``ts``, with a status flag.

    The solver is adaptive (Diffrax ``Tsit5`` with a PID step-size controller by default). Only
    its accepted steps are stored; the solution at ``ts`` is a quintic Hermite interpolant
    through them (values, and first and second time derivatives from the vector field), error
    ``O(dt^6)`` per step, well inside the tolerances. This keeps the cost nearly independent
    of ``len(ts)``: for 8 vmapped trajectories at 6000 epochs a solve is 3-7x faster than
    evaluating Diffrax's dense interpolant at every epoch and 18-34x faster than saving at
    ``ts`` inside the solve; under ``jax.jacfwd`` (the rate fit) it is at least as fast as
    the dense interpolant (``benchmarks/bench_ode_sampling.py``). Every solve of the ODE in
    unijax (the theory curves, the rate fit) goes through here.

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

    Returns:
        :class:`ODESolution` with ``ys`` of shape ``(n, 3)``.

    Raises:
        ValueError: on non-positive rates or ``dx2``, negative ``dy2``, ``h0 <= 0``,
            ``y0 < 0``, non-finite values, ``ts`` not strictly increasing (values checked when
            concrete); ``z0`` not of shape ``(3,)``, rates or distances not scalars, ``ts``
            not 1-D; ``rtol``/``atol`` not > 0, ``max_steps`` not an integer >= 1, ``solver``
            or ``adjoint`` not a Diffrax solver/adjoint.
        RuntimeError: JAX's 64-bit mode is off.
    """
    if solver is None:
        solver = diffrax.Tsit5()
    elif not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(f"solver={solver!r} is not a Diffrax solver (e.g. diffrax.Tsit5()).")
    if adjoint is None:
        adjoint = diffrax.RecursiveCheckpointAdjoint()
    elif not isinstance(adjoint, diffrax.AbstractAdjoint):
        raise ValueError(
            f"adjoint={adjoint!r} is not a Diffrax adjoint (e.g. diffrax.ForwardMode())."
        )
    args = (eta_h, eta_y, dx2, dy2)
    return _integrate(z0, ts, args, rtol, atol, max_steps, solver, adjoint)


def _hermite5(ts, tk, yk, fk, gk):
    """Quintic Hermite interpolant through knots ``tk`` (padded with inf), evaluated at ``ts``.

    ``yk, fk, gk``: value, first and second time derivative at the knots, shape ``(m, 3)``.
    Error O(dt^6) per step: well below the step's own error at the tolerances used here.
    """
    n_knots = jnp.sum(jnp.isfinite(tk))
    # The same index as the default method; unrolled, the binary search over the knots runs
    # as straight-line code for every epoch at once: the rate fit (8 trials, 6912 epochs)
    # took 0.65x the time (the "scan" default: a loop per step, "sort": 0.80x).
    i = jnp.clip(jnp.searchsorted(tk, ts, side="right", method="scan_unrolled") - 1, 0,
                 n_knots - 2)
    t0, t1 = tk[i], tk[i + 1]
    d = (t1 - t0)[:, None]
    s = ((ts - t0) / (t1 - t0))[:, None]
    s2 = s * s
    s3 = s2 * s
    s4 = s3 * s
    s5 = s4 * s
    h0 = 1.0 - 10.0 * s3 + 15.0 * s4 - 6.0 * s5
    h1 = s - 6.0 * s3 + 8.0 * s4 - 3.0 * s5
    h2 = 0.5 * (s2 - 3.0 * s3 + 3.0 * s4 - s5)
    h3 = 0.5 * (s3 - 2.0 * s4 + s5)
    h4 = -4.0 * s3 + 7.0 * s4 - 3.0 * s5
    h5 = 10.0 * s3 - 15.0 * s4 + 6.0 * s5
    return (
        h0 * yk[i]
        + h1 * d * fk[i]
        + h2 * d * d * gk[i]
        + h3 * d * d * gk[i + 1]
        + h4 * d * fk[i + 1]
        + h5 * yk[i + 1]
    )


@eqx.filter_jit
def _integrate(z0, ts, args, rtol, atol, max_steps, solver, adjoint) -> ODESolution:
    t0, t1 = ts[0], ts[-1]
    # A single sample point: nothing to integrate, but keep one code path for jit/vmap.
    t1 = jnp.where(t1 > t0, t1, t0 + 1.0)
    sol = diffrax.diffeqsolve(
        _TERM,
        solver,
        t0=t0,
        t1=t1,
        dt0=None,
        y0=z0,
        args=args,
        saveat=diffrax.SaveAt(t0=True, steps=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        adjoint=adjoint,
        max_steps=max_steps,
        throw=False,
    )
    tk, yk = sol.ts, sol.ys
    valid = jnp.isfinite(tk)
    # Unused rows of the step buffer hold inf; give them a harmless state. The derivatives
    # are computed for the whole buffer after the solve, vectorized: ~3x cheaper than saving
    # them from inside the loop, which must then carry them through every step.
    yk = jnp.where(valid[:, None], yk, z0)

    def field(z):
        return _rhs(None, z, args)

    fk, gk = jax.vmap(lambda z: jax.jvp(field, (z,), (field(z),)))(yk)  # z' and z'' = Df z'
    ys = _hermite5(ts, tk, yk, fk, gk)
    ok = (
        (sol.result == diffrax.RESULTS.successful)
        & jnp.all(jnp.isfinite(ys))
        & jnp.all(ys[:, 0] > 0)
        & jnp.all(yk[:, 0] > 0)
    )
    ys = jnp.where(ok, ys, jnp.nan)
    max_steps_reached = sol.result == diffrax.RESULTS.max_steps_reached
    result = jnp.where(
        ok, int(SolveResult.SUCCESSFUL),
        jnp.where(max_steps_reached, int(SolveResult.MAX_STEPS),
                  jnp.where(sol.result == diffrax.RESULTS.successful,
                            int(SolveResult.LEFT_DOMAIN), int(SolveResult.SOLVER_FAILED))))
    return ODESolution(ts=ts, ys=ys, ok=ok, num_steps=sol.stats["num_steps"],
                       max_steps_reached=max_steps_reached, result=result.astype(jnp.int32))


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


@_checked("ts:times z eta_mean>0() m0>=0() dy2>=0()")
def loss_curve(
    ts: Float[ArrayLike, " n"],
    z: Float[ArrayLike, "n 3"],
    *,
    eta_mean: Scalar,
    dy2: Scalar,
    m0: Scalar,
) -> Float[Array, " n"]:
    """Training loss predicted by the theory, docs/theory.md section 3 (paper Eq. 9, A.2).

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

    Raises:
        ValueError: ``ts`` not 1-D and strictly increasing, ``z`` not of shape ``(n, 3)``,
            ``eta_mean`` not > 0, ``dy2`` or ``m0`` negative, or any of the three not a
            scalar (values checked when concrete).
        RuntimeError: JAX's 64-bit mode is off.
    """
    if z.shape != (ts.shape[0], 3):
        raise ValueError(
            f"z must have shape (len(ts), 3) = ({ts.shape[0]}, 3) holding (h, y, w) at ts; got "
            f"{z.shape}."
        )
    mean_part = 0.5 * m0 * jnp.exp(-2.0 * eta_mean * (ts - ts[0]))
    return mean_part + 0.25 * (z[..., 2] + 0.5 * (dy2 - z[..., 1]))


# ---------------------------------------------------------------------------------------------
# Invariant and the reduced 2-D system (section 4)
# ---------------------------------------------------------------------------------------------


@_checked("eta_h>0 eta_y>0 dx2>0")
def invariant_c(*, eta_h: Scalar, eta_y: Scalar, dx2: Scalar) -> Float[Array, ""]:
    """``c = eta_y / (eta_h dx2)``, the slope of ``y/h`` against ``h`` (paper Eq. 23).

    Rates and ``dx2`` must be > 0 (any broadcastable shapes); float64.
    """
    return eta_y / (eta_h * dx2)


@_checked("h>0 y>=0")
def invariant(
    h: Float[ArrayLike, "*b"],
    y: Float[ArrayLike, "*b"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
) -> Float[Array, "*b"]:
    """The conserved quantity ``K = y/h - c h``, docs/theory.md section 4 (paper Eq. 24).

    Constant along every solution of the ODE; any shape, element-wise. ``h > 0``, ``y >= 0``,
    rates and ``dx2`` > 0.
    """
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    return y / h - c * h


@_checked("h>=0 c>0 K")
def y_of_h(h, *, c, K):
    """``y(h) = c h^2 + K h`` on the level set of the invariant (paper Eq. 25).

    ``h >= 0`` (a squared distance), ``c > 0`` (:func:`invariant_c`), ``K`` any finite value
    (:func:`invariant`); broadcastable shapes, float64.
    """
    return _y_of_h(h, c, K)


def _y_of_h(h, c, K):
    return c * h**2 + K * h


@_checked("hw:hw eta_h>0() eta_y>0() dx2>0() dy2>=0() K()")
def reduced_vector_field(
    hw: Float[ArrayLike, "2"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
    dy2: Scalar,
    K: Scalar,
) -> Float[Array, "2"]:
    """The closed 2-D system in ``(h, w)`` with ``y = c h^2 + K h`` (docs/theory.md section 4).

    Args:
        hw: ``(h, w)``, shape ``(2,)``.
        K: value of the invariant, :func:`invariant` of the initial state.

    Returns:
        ``d(h, w)/dt``, shape ``(2,)``.

    Raises:
        ValueError: ``hw`` not of shape ``(2,)`` or ``h <= 0``; rates or ``dx2`` not > 0,
            ``dy2 < 0``, ``K`` not finite, or any of them not a scalar.
        RuntimeError: JAX's 64-bit mode is off.
    """
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    y = _y_of_h(hw[0], c, K)
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


@_checked("h0>0 y0>=0 eta_h>0 eta_y>0 dx2>0 dy2>=0")
def fixed_points(
    h0: Float[ArrayLike, "*b"],
    y0: Float[ArrayLike, "*b"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
    dy2: Scalar,
) -> FixedPoints:
    """Fixed points reached from the initial ``(h0, y0)``, docs/theory.md section 5 (Eq. 26-33).

    ``w = 0`` and ``h (dy2 - y(h)) = 0``: the saddle ``h = 0`` and the roots
    ``h_± = (-K ± sqrt(K^2 + 4 c dy2)) / (2c)``. ``h0 > 0``, ``y0 >= 0``, rates and ``dx2``
    > 0, ``dy2 >= 0``; broadcastable shapes, float64.
    """
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2) * jnp.ones_like(h0)
    K = invariant(h0, y0, eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    h_plus, h_minus = _roots(K, c, dy2)
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


@_checked("h_star>0 K eta_h>0 eta_y>0 dx2>0 dy2>=0")
def stability(
    h_star: Float[ArrayLike, "*b"],
    *,
    K: Float[ArrayLike, "*b"],
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
    dy2: Scalar,
) -> Stability:
    """Jacobian, trace, determinant and eigenvalues at ``(h*, w = 0)``, docs/theory.md section 5.

    ``J = [[0, -eta_h dx2], [1/2 eta_y h* y'(h*), -3/2 eta_y h* - 1/2 eta_h dx2 dy2 / h*]]``
    with ``y'(h) = 2 c h + K`` (at a fixed point ``y(h*) = dy2``). At ``h_plus`` the trace is
    negative and ``det = 1/2 eta_h dx2 eta_y h+ sqrt(K^2 + 4 c dy2) > 0``: stable. For the
    singular point ``h = 0`` use :func:`saddle_directions`. ``h_star > 0``, ``K`` finite, rates
    and ``dx2`` > 0, ``dy2 >= 0``; float64.
    """
    h = h_star
    a = eta_h * dx2
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    y = _y_of_h(h, c, K)
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


@_checked("K eta_h>0 eta_y>0 dx2>0 dy2>=0")
def saddle_directions(
    K: Float[ArrayLike, "*b"], *, eta_h: Scalar, eta_y: Scalar, dx2: Scalar, dy2: Scalar
) -> SaddleDirections:
    """The saddle at ``h = 0`` by direction of approach, docs/theory.md section 5.

    ``K`` finite, rates and ``dx2`` > 0, ``dy2 >= 0``; float64.
    """
    q = eta_y * dy2 / (eta_h * dx2)
    disc = jnp.sqrt(K**2 + 4.0 * q)
    s = jnp.stack([(K - disc) / 2.0, (K + disc) / 2.0], -1)
    return SaddleDirections(slopes=s, eigenvalues=-eta_h * dx2 * s)


@_checked("h0>0 y0>=0 eta_h>0 eta_y>0 dx2>0")
def a_high(
    h0: Float[ArrayLike, "*b"],
    y0: Float[ArrayLike, "*b"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2: Scalar,
) -> Float[Array, "*b"]:
    """``A_high = h0 - (eta_h/eta_y) dx2 y0/h0 = -K/c``, set by the initialization (Eq. 12).

    ``h0 > 0``, ``y0 >= 0``, rates and ``dx2`` > 0; broadcastable shapes, float64.
    """
    return h0 - (eta_h / eta_y) * dx2 * y0 / h0


@_checked("eta_h>0 eta_y>0 dx2>0 dy2>=0")
def a_low(*, eta_h: Scalar, eta_y: Scalar, dx2, dy2) -> Float[Array, "*b"]:
    """``A_low = sqrt(eta_h/eta_y) sqrt(dx2 dy2)``, set by the data (Eq. 13); any shape.

    Rates and ``dx2`` > 0, ``dy2 >= 0``; float64.
    """
    return jnp.sqrt(eta_h / eta_y) * jnp.sqrt(dx2 * dy2)


@_checked("eta_h>0 eta_y>0 dx2>0 dy2>=0")
def final_distance(
    h0: Float[ArrayLike, "*b"],
    y0: Float[ArrayLike, "*b"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    dx2,
    dy2,
) -> Float[Array, "*b"]:
    """Final squared hidden distance ``h_final``, docs/theory.md section 5 (paper Eq. 10-11).

    ``h_final = A_high/2 + sqrt(A_high^2/4 + A_low^2)``, evaluated without cancellation for
    ``A_high << 0``. Element-wise over any broadcastable shapes of ``h0, y0, dx2, dy2``.

    Args:
        h0: initial squared hidden distance, > 0.
        y0: initial squared output distance, >= 0.
        eta_h, eta_y: effective rates (1/epoch), > 0 (only their ratio matters).
        dx2, dy2: squared input (> 0) and output (>= 0) distances.

    Returns:
        The stable fixed point ``h_+`` (a *squared* distance). Finite for any rate ratio
        whose answer is (e.g. ``eta_h/eta_y = 1e160`` with ``y0 > 0`` tends to
        ``dy2 h0 / y0``); ``inf`` only where ``h_+`` itself exceeds float64's range.

    Raises:
        ValueError: ``h0 <= 0``, ``y0 < 0``, rates or ``dx2`` not > 0, ``dy2 < 0``, or any
            value not finite (checked when concrete).
        RuntimeError: JAX's 64-bit mode is off.
    """
    ah = a_high(h0, y0, eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    al2 = (eta_h / eta_y) * dx2 * dy2
    q = ah**2 / 4.0 + al2
    root = jnp.sqrt(q)
    # For A_high < 0 the two terms cancel; the rationalized form A_low^2 / (root - A_high/2)
    # keeps full precision (lazy regime with anti-aligned initial outputs).
    safe = jnp.where(ah < 0, root - ah / 2.0, 1.0)
    plain = jnp.where(ah < 0, al2 / safe, ah / 2.0 + root)
    # A rate ratio far from 1 (eta_h/eta_y = 1e160) overflows A_high^2 or A_low^2, and the
    # plain form returns 0 (or NaN). The same root written with K = y0/h0 - c h0 and
    # c = eta_y/(eta_h dx2) (section 5: c h^2 + K h - dy2 = 0) squares nothing large: hypot
    # for the discriminant, and the rationalized branch 2 dy2/(K + disc) for K >= 0. It is
    # used only where the plain form overflows, so results elsewhere stay bit for bit.
    c = eta_y / (eta_h * dx2)
    k = y0 / h0 - c * h0
    disc = jnp.hypot(k, 2.0 * jnp.sqrt(c * dy2))
    den = jnp.where(k + disc > 0, k + disc, 1.0)
    c_safe = jnp.where(c > 0, c, 1.0)
    stable = jnp.where(k >= 0, jnp.where(k + disc > 0, 2.0 * dy2 / den, 0.0),
                       jnp.where(c > 0, (disc - k) / (2.0 * c_safe), jnp.inf))
    return jnp.where(jnp.isfinite(q), plain, stable)


def rich_limit(*, eta_h: Scalar, eta_y: Scalar, dx2, dy2) -> Float[Array, "*b"]:
    """``h_final`` as the initial weights go to zero (``A_high -> 0``): ``A_low`` (Eq. 13)."""
    check_x64("unijax.theory.rich_limit")
    return a_low(eta_h=eta_h, eta_y=eta_y, dx2=dx2, dy2=dy2)


def lazy_limit(h0, y0, *, eta_h: Scalar, eta_y: Scalar, dx2) -> Float[Array, "*b"]:
    """``h_final`` for large initial weights (``|A_high| >> A_low``): ``max(A_high, 0)``."""
    check_x64("unijax.theory.lazy_limit")
    return jnp.maximum(a_high(h0, y0, eta_h=eta_h, eta_y=eta_y, dx2=dx2), 0.0)


# ---------------------------------------------------------------------------------------------
# Identical outputs (section 6)
# ---------------------------------------------------------------------------------------------


@_checked("t:elapsed h0>0() y0>=0() eta_h>0() eta_y>0() dx2>0()")
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
    c = invariant_c(eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    K = invariant(h0, y0, eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    alpha = eta_h * dx2 * K
    # (1 - e^{-alpha t}) / alpha, continuous through alpha = 0 (then it is t).
    small = jnp.abs(alpha * t) < 1e-8
    safe_alpha = jnp.where(small, 1.0, alpha)
    g = jnp.where(small, t * (1.0 - 0.5 * alpha * t), -jnp.expm1(-safe_alpha * t) / safe_alpha)
    h = h0 * jnp.exp(-alpha * t) / (1.0 + eta_y * h0 * g)
    y = _y_of_h(h, c, K)
    return jnp.stack([h, y, y], -1)


# ---------------------------------------------------------------------------------------------
# Lazy limit (section 7)
# ---------------------------------------------------------------------------------------------


class LazyScaling(NamedTuple):
    """The ODE in rescaled variables: ``h = s h~, (y, w) = s^2 (y~, w~), t = t~ / s``.

    Attributes:
        z: rescaled state(s) ``(h~, y~, w~)``, shape ``(..., 3)``.
        t: rescaled times ``t~ = s t``.
        dy2: the effective output distance ``dy2 / s^2`` of the rescaled ODE.
    """

    z: Float[Array, "*b 3"]
    t: Float[Array, "*n"]
    dy2: Float[Array, ""]


@_checked("z:states t scale>0() dy2>=0")
def lazy_rescale(z, t, *, scale, dy2) -> LazyScaling:
    """Map a problem to the rescaled variables of docs/theory.md section 7 (paper Eq. 41-43).

    The ODE keeps its form in ``(h~, y~, w~, t~)`` with ``dy2 -> dy2 / s^2``: as the initial
    scale ``s`` grows the target distance vanishes from the dynamics, which become those of
    identical outputs (section 6): exponential decay, no plateau. Solving the rescaled problem
    and mapping back with :func:`lazy_unscale` gives the original solution exactly.

    Args:
        z: state(s) ``(h, y, w)``, shape ``(..., 3)``.
        t: times (epochs), any shape.
        scale: ``s > 0``, a scalar.
        dy2: squared output distance of the original problem, >= 0.

    Raises:
        ValueError: ``z`` not of shape ``(..., 3)`` or with ``h <= 0``, ``y < 0``; ``t`` not
            finite; ``scale`` not a scalar > 0; ``dy2 < 0``.
        RuntimeError: JAX's 64-bit mode is off.
    """
    factors = jnp.array([1.0, 2.0, 2.0])
    return LazyScaling(z=z / scale**factors, t=t * scale, dy2=dy2 / scale**2)


@_checked("z_scaled:scaled_states t_scaled scale>0()")
def lazy_unscale(z_scaled, t_scaled, *, scale):
    """Inverse of :func:`lazy_rescale`: returns ``(z, t)`` in the original variables.

    ``z_scaled``: shape ``(..., 3)`` (a failed solve's NaN rows pass through); ``t_scaled``
    any shape; ``scale > 0`` a scalar.
    """
    factors = jnp.array([1.0, 2.0, 2.0])
    return z_scaled * scale**factors, t_scaled / scale


# ---------------------------------------------------------------------------------------------
# Random features at initialization (section 8)
# ---------------------------------------------------------------------------------------------


@_checked("h_final>0 a_low>=0")
def a_high_from_final(h_final, *, a_low):
    """Invert ``h^2 - A_high h - A_low^2 = 0``: ``A_high = h - A_low^2 / h`` (paper Eq. 45).

    ``h_final > 0``, ``a_low >= 0``; broadcastable shapes, float64.
    """
    return h_final - a_low**2 / h_final


@_checked("h a_low>=0() a_high_mean() a_high_std>0()")
def final_distance_density(
    h: Float[ArrayLike, " n"], *, a_low: Scalar, a_high_mean: Scalar, a_high_std: Scalar
) -> Float[Array, " n"]:
    """Density of the final squared distance when ``A_high`` is Gaussian, section 8 (Eq. 44-48).

    ``h_final`` is a monotone function of ``A_high``, so its density is the pushforward
    ``p(h) = N(h - A_low^2/h; mean, std) (1 + A_low^2 / h^2)`` on ``h > 0`` (zero elsewhere).
    As the initial gain goes to zero, ``std -> 0`` and the density collapses onto ``A_low``.

    Args:
        h: points (> 0 for non-zero density), shape ``(n,)``.
        a_low: data scale ``A_low`` (>= 0).
        a_high_mean, a_high_std: mean and spread (> 0) of ``A_high`` over initializations;
            estimate them from sampled ``(h0, y0)`` with :func:`a_high`.

    Returns:
        ``p(h)``, shape ``(n,)``; integrates to 1 over ``h > 0``.

    Raises:
        ValueError: ``h`` or ``a_high_mean`` not finite, ``a_low < 0``, ``a_high_std`` not
            > 0 (the last three must be scalars).
        RuntimeError: JAX's 64-bit mode is off.
    """
    pos = h > 0
    hs = jnp.where(pos, h, 1.0)
    a = hs - a_low**2 / hs
    zscore = (a - a_high_mean) / a_high_std
    gauss = jnp.exp(-0.5 * zscore**2) / (jnp.sqrt(2.0 * jnp.pi) * a_high_std)
    return jnp.where(pos, gauss * (1.0 + a_low**2 / hs**2), 0.0)


# ---------------------------------------------------------------------------------------------
# Depth (section 9)
# ---------------------------------------------------------------------------------------------


@_checked("layer>=0 gain>0 dx2>0")
def initial_distance_at_depth(layer, *, gain, dx2):
    """``h0(l) ~ a^(2 l) dx2``: initial squared distance at hidden layer ``l`` (section 9).

    Args:
        layer: layer index (number of maps from the input, >= 0), any shape.
        gain: average per-layer gain ``a`` (> 0; < 1 at small initialization).
        dx2: squared input distance (> 0).
    """
    return gain ** (2.0 * layer) * dx2


@_checked("layers>=0(1) h0>0(1) dx2>0()")
def fit_depth_gain(layers, h0, *, dx2):
    """Least-squares estimate of the per-layer gain ``a`` from measured ``h0`` per layer.

    Fits ``log h0(l) = 2 l log a + log dx2`` (intercept fixed by the input distance).

    Args:
        layers: layer indices, shape ``(L,)``.
        h0: measured initial squared hidden distances at those layers, shape ``(L,)``, > 0.
        dx2: squared input distance (> 0).

    Returns:
        The gain ``a`` (scalar).

    Raises:
        ValueError: ``layers`` not 1-D, negative or all zero (the slope is then undefined),
            ``h0`` not of the same shape or not > 0, ``dx2`` not a scalar > 0.
        RuntimeError: JAX's 64-bit mode is off.
    """
    if h0.shape != layers.shape:
        raise ValueError(
            f"h0 must hold one value per layer, shape {layers.shape}; got {h0.shape}."
        )
    if is_concrete(layers) and not np.any(np.asarray(layers) > 0):
        raise ValueError(
            f"layers={np.asarray(layers).tolist()} has no layer > 0: the gain is not "
            "identified (h0 at layer 0 is dx2 whatever the gain)."
        )
    r = jnp.log(h0) - jnp.log(dx2)
    slope = jnp.sum(layers * r) / jnp.sum(layers**2)  # slope = 2 log a
    return jnp.exp(slope / 2.0)


# ---------------------------------------------------------------------------------------------
# Whole data sets: pairwise predictions and exponential weighting (section 10)
# ---------------------------------------------------------------------------------------------


def _check_matrix(name, x, n=None, d=None):
    """``x`` of shape ``(n_points, n_features)`` (``n`` points, ``d`` features when given)."""
    if is_concrete(x):
        check_finite(name, x)
    shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{name} must have shape (n_points, n_features); got {shape}.")
    if shape[0] < 1:
        raise ValueError(f"{name} has no points; got shape {shape}.")
    if n is not None and shape[0] != n:
        raise ValueError(f"{name} has {shape[0]} points; expected {n} (one per input).")
    if d is not None and shape[1] != d:
        raise ValueError(f"{name} has {shape[1]} features per point; expected {d}.")


def _matrix(name, x, n=None, d=None) -> Array:
    _check_matrix(name, x, n, d)
    return jnp.asarray(x, dtype=jnp.float64)


def _row_blocks(n: int, block_size: int | None) -> int:
    if block_size is None:
        return n
    return min(check_int("block_size", block_size, lo=1), n)


def _indices(name, idx, n: int) -> Array:
    """1-D integer indices into ``n`` points (values checked when concrete)."""
    check_ndim(name, idx, 1, f" of point indices in [0, {n})")
    if is_concrete(idx):
        arr = np.asarray(idx)
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer indices in [0, {n}); got dtype "
                             f"{arr.dtype} ({arr!r:.80}).")
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"{name} must index points in [0, {n}); got {arr}.")
    elif not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer indices; got dtype {idx.dtype}.")
    return jnp.asarray(idx)


def _sq_dist_block(a, b):
    """Squared Euclidean distances between rows of ``a (m, d)`` and ``b (n, d)``."""
    # The Gram form avoids an (m, n, d) difference tensor; clip the tiny negatives it makes.
    d = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(d, 0.0)


def pairwise_sq_distances(
    X: Float[ArrayLike, "n d"], Z: Float[ArrayLike, "m d"] | None = None, *, block_size=None
) -> Float[Array, "n m"]:
    """Squared Euclidean distances between the rows of ``X`` and ``Z`` (default ``X``).

    Computed in row blocks of ``block_size`` (memory ``O(block_size * m)`` besides the output).
    ``X`` and ``Z`` finite, with the same number of features; float64.
    """
    check_x64("unijax.theory.pairwise_sq_distances")
    X = _matrix("X", X)
    Z = X if Z is None else _matrix("Z", Z, d=X.shape[1])
    block = _row_blocks(X.shape[0], block_size)
    return blocked_rows(lambda rows: _sq_dist_block(X[rows], Z), X.shape[0], block)


@_checked("eta_h>0() eta_y>0()")
def pairwise_a_low(
    X: Float[ArrayLike, "n dx"],
    Y: Float[ArrayLike, "n dy"],
    *,
    eta_h: Scalar = 1.0,
    eta_y: Scalar = 1.0,
    block_size: int | None = None,
) -> Float[Array, "n n"]:
    """Rich-regime prediction for every pair: ``A_low[i, j] = sqrt(eta_h/eta_y) |dx| |dy|``.

    This is the predicted final *squared* hidden distance of pair ``(i, j)`` as the initial
    weights go to zero (section 10); its square root is the predicted distance. With the
    default unit rates it is the constant-free matrix ``A`` of the exponential weighting.

    Args:
        X: inputs, shape ``(n, dx)``. Y: targets, shape ``(n, dy)``.
        block_size: rows per block (``None``: one block).

    Returns:
        Shape ``(n, n)``, symmetric, zero diagonal.

    Raises:
        ValueError: ``X``/``Y`` not 2-D, not finite or with different numbers of points; rates
            not scalars > 0; ``block_size`` not an integer >= 1.
        RuntimeError: JAX's 64-bit mode is off.
    """
    X = _matrix("X", X)
    Y = _matrix("Y", Y, n=X.shape[0])
    k = jnp.sqrt(eta_h / eta_y)
    block = _row_blocks(X.shape[0], block_size)

    def rows_fn(rows):
        return k * jnp.sqrt(_sq_dist_block(X[rows], X) * _sq_dist_block(Y[rows], Y))

    return blocked_rows(rows_fn, X.shape[0], block)


@_checked("eta_h>0() eta_y>0()")
def pairwise_final_distance(
    X: Float[ArrayLike, "n dx"],
    Y: Float[ArrayLike, "n dy"],
    H0: Float[ArrayLike, "n width"],
    F0: Float[ArrayLike, "n dy"],
    *,
    eta_h: Scalar,
    eta_y: Scalar,
    block_size: int | None = None,
) -> Float[Array, "n n"]:
    """Predicted final squared hidden distance of every pair from its own initial distances.

    Section 5 applied to each pair ``(i, j)`` with ``dx2 = |x_i - x_j|^2``,
    ``dy2 = |y_i - y_j|^2``, ``h0 = |H0_i - H0_j|^2`` (initial hidden representations) and
    ``y0 = |F0_i - F0_j|^2`` (initial network outputs). Pairs with identical inputs or
    identical initial representations get 0.

    Args:
        X: inputs ``(n, dx)``; Y: targets ``(n, dy)``; H0: initial hidden layer ``(n, width)``;
            F0: initial outputs ``(n, dy)``.
        block_size: rows per block (``None``: one block).

    Returns:
        ``h_final`` for every pair, shape ``(n, n)``, zero diagonal.

    Raises:
        ValueError: an array not 2-D or not finite, the four with different numbers of points
            or ``F0`` with a different output dimension than ``Y``; rates not scalars > 0;
            ``block_size`` not an integer >= 1.
        RuntimeError: JAX's 64-bit mode is off.
    """
    X = _matrix("X", X)
    n = X.shape[0]
    Y = _matrix("Y", Y, n=n)
    H0 = _matrix("H0", H0, n=n)
    F0 = _matrix("F0", F0, n=n, d=Y.shape[1])
    block = _row_blocks(n, block_size)
    ratio = eta_h / eta_y

    def rows_fn(rows):
        dx2 = _sq_dist_block(X[rows], X)
        dy2 = _sq_dist_block(Y[rows], Y)
        h0 = _sq_dist_block(H0[rows], H0)
        y0 = _sq_dist_block(F0[rows], F0)
        valid = (h0 > 0) & (dx2 > 0)
        h0s = jnp.where(valid, h0, 1.0)
        ah = h0s - ratio * dx2 * y0 / h0s
        al2 = ratio * dx2 * dy2
        root = jnp.sqrt(ah**2 / 4.0 + al2)
        out = jnp.where(ah < 0, al2 / jnp.where(ah < 0, root - ah / 2.0, 1.0), ah / 2.0 + root)
        return jnp.where(valid, out, 0.0)

    return blocked_rows(rows_fn, n, block)


def exponential_weighting(A: Float[ArrayLike, "n n"]) -> Float[Array, "n n"]:
    """The paper's exponential weighting (Eq. 50): ``E @ A @ E`` with ``E = exp(-A)``.

    ``A`` is the pairwise prediction with the constant factor dropped (``|dx| |dy|``, see
    :func:`pairwise_a_low`). The element-wise square of the result is compared with measured
    squared hidden distances. For data sets too large for an ``(n, n)`` matrix, use
    :func:`exponential_weighting_from_data`.

    Raises:
        ValueError: ``A`` not square, not finite or negative somewhere.
        RuntimeError: JAX's 64-bit mode is off.
    """
    check_x64("unijax.theory.exponential_weighting")
    A = _matrix("A", A)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square (n, n); got {A.shape}.")
    check_positive("A", A, allow_zero=True)
    E = jnp.exp(-A)
    return E @ A @ E


def exponential_weighting_from_data(
    X: Float[ArrayLike, "n dx"],
    Y: Float[ArrayLike, "n dy"],
    *,
    rows: Int[ArrayLike, " r"] | None = None,
    cols: Int[ArrayLike, " c"] | None = None,
    block_size: int = 1024,
    mesh: Mesh | None = None,
) -> Float[Array, "r c"]:
    """Entries ``(E A E)[rows, cols]`` of the exponential weighting, never forming ``A``.

    ``A[i, j] = |x_i - x_j| |y_i - y_j|`` and ``E = exp(-A)``; the sums over the whole data set
    run in blocks of ``block_size`` points, so the peak memory is
    ``O((block_size + r) n + n c)`` floats instead of ``O(n^2)``: for 60,000 MNIST points,
    100 rows and columns and blocks of 1024, about 1.1 GB in float64.

    Args:
        X: inputs ``(n, dx)``; Y: targets ``(n, dy)``.
        rows, cols: indices of the wanted entries (default: all points).
        block_size: points per block of the inner sum.
        mesh: a ``jax.sharding.Mesh`` whose devices (used as one axis; after
            :func:`unijax.distributed.initialize` they may span processes) split the data
            set: each device owns ``n / n_devices`` points of the outer sum and runs over
            them in blocks of ``block_size``; the partial products are summed across devices
            (``psum``). Peak memory per device as above, independent of the device count;
            the work per device falls as ``1 / n_devices``. Default: one device.

    Returns:
        Shape ``(len(rows), len(cols))`` (a NumPy array, the same on every process, with
        ``mesh``), equal to the one-device result up to the order of summation.

    Raises:
        ValueError: ``X``/``Y`` not 2-D, not finite or with different numbers of points;
            ``rows``/``cols`` not 1-D integer indices in ``[0, n)``; ``block_size`` not an
            integer >= 1.
        RuntimeError: JAX's 64-bit mode is off.
    """
    check_x64("unijax.theory.exponential_weighting_from_data")
    X = _matrix("X", X)
    n = X.shape[0]
    Y = _matrix("Y", Y, n=n)
    rows = jnp.arange(n) if rows is None else _indices("rows", rows, n)
    cols = jnp.arange(n) if cols is None else _indices("cols", cols, n)
    block = check_int("block_size", block_size, lo=1)
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh or None; got {type(mesh).__name__}.")
        mesh = batch_mesh(list(mesh.devices.flat))
        return _exponential_weighting_sharded(X, Y, rows, cols, block, mesh)
    block = _row_blocks(n, block)

    def a_block(ia, ib):
        return jnp.sqrt(_sq_dist_block(X[ia], X[ib]) * _sq_dist_block(Y[ia], Y[ib]))

    n_blocks = -(-n // block)
    idx = jnp.arange(n_blocks * block).reshape(n_blocks, block)
    all_idx = jnp.arange(n)

    # P = E[rows, :] @ A, accumulated over blocks k of the inner index.
    def step(P, kb):
        valid = kb < n
        kb = jnp.minimum(kb, n - 1)
        e_rk = jnp.where(valid[None, :], jnp.exp(-a_block(rows, kb)), 0.0)  # (r, b)
        return P + e_rk @ a_block(kb, all_idx), None

    P0 = jnp.zeros((rows.shape[0], n), dtype=X.dtype)
    P, _ = jax.lax.scan(step, P0, idx)
    E_cols = jnp.exp(-a_block(all_idx, cols))  # (n, c)
    return P @ E_cols


def _exponential_weighting_sharded(X, Y, rows, cols, block_size: int, mesh: Mesh) -> np.ndarray:
    """:func:`exponential_weighting_from_data` over the devices of ``mesh`` (checked inputs):
    ``(E A E)[rows, cols] = sum_k E[rows, k] (sum_l A[k, l] E[l, cols])``, each device owning
    ``n / n_devices`` points ``k`` of the outer sum (padded with the last point, masked)."""
    X, Y = np.asarray(X), np.asarray(Y)
    rows, cols = np.asarray(rows), np.asarray(cols)
    n = X.shape[0]
    n_dev = mesh.shape[BATCH_AXIS]
    per_dev = -(-n // n_dev)
    block = int(min(block_size, per_dev))
    per_dev = -(-per_dev // block) * block  # each device: whole blocks
    total = per_dev * n_dev
    k_idx = pad_index(np.arange(n), total).astype(np.int32)
    k_valid = np.arange(total) < n

    def a_block(xa, ya, xb, yb):
        return jnp.sqrt(_sq_dist_block(xa, xb) * _sq_dist_block(ya, yb))

    def local(Xr, Yr, Xall, Yall, kk, kv):
        # kk, kv: this device's (per_dev,) point indices and validity.
        kk = kk.reshape(-1, block)
        kv = kv.reshape(-1, block)

        def step(Pacc, blk):
            kb, vb = blk
            xk, yk = Xall[kb], Yall[kb]
            e_rk = jnp.where(vb[None, :], jnp.exp(-a_block(Xr, Yr, xk, yk)), 0.0)  # (r, b)
            return Pacc + e_rk @ a_block(xk, yk, Xall, Yall), None  # (r, n)

        P0 = jax.lax.pcast(
            jnp.zeros((Xr.shape[0], Xall.shape[0]), Xall.dtype), (BATCH_AXIS,), to="varying"
        )
        Pacc, _ = jax.lax.scan(step, P0, (kk, kv))
        return jax.lax.psum(Pacc, BATCH_AXIS)

    rep = P()
    f = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(rep, rep, rep, rep, P(BATCH_AXIS), P(BATCH_AXIS)),
            out_specs=rep,
        )
    )

    def lay(arr, spec):
        return put(arr, NamedSharding(mesh, spec))

    Pm = f(
        lay(X[rows], rep),
        lay(Y[rows], rep),
        lay(X, rep),
        lay(Y, rep),
        lay(k_idx, P(BATCH_AXIS)),
        lay(k_valid, P(BATCH_AXIS)),
    )
    # (r, n) @ E[:, cols] (n, c): replicated, computed on every device; small next to the sum.
    E_cols = jax.jit(
        lambda Xa, Ya, Xc, Yc: jnp.exp(-a_block(Xa, Ya, Xc, Yc)),
    )(lay(X, rep), lay(Y, rep), lay(X[cols], rep), lay(Y[cols], rep))
    out = jax.jit(jnp.matmul)(Pm, E_cols)
    return np.asarray(out.addressable_data(0))  # replicated: every device holds all of it
