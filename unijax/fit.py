"""Effective learning rates fitted to measured trajectories, by gradient through the ODE solver.

docs/theory.md section 11 (paper appendix B.1): record ``(h, y, w)`` at a hidden layer every epoch,
then find the two effective rates ``(eta_h, eta_y)`` (units 1/epoch) that minimize

    SSE = sum_t (h_t - h_ode(t))^2 + (y_t - y_ode(t))^2 + (w_t - w_ode(t))^2,

the ODE of section 2 started from the measured first point ``(h_0, y_0, w_0)``. Then the third
rate ``eta_mean`` is fitted to the training-loss curve (section 3).

How (and why it is fast):

* **Initial estimates straight from the data.** The vector field is *linear* in
  ``(eta_h, eta_y)``, so integrating the ODE along the measured trajectory gives linear
  equations for the rates, e.g. ``h_t = h_0 - eta_h dx2 int_0^t w`` ("integral matching";
  integrals, not finite differences, so noise averages out). Five small least-squares
  systems (all equations with the initial state free, anchored at the first point, the
  ``h`` equation with the invariant of section 4, ...) come from one moment matrix of the
  data. These candidates and scales of them (x0.3, x1, x3) are ranked by a cheap fixed-step
  solve on a subsample of the epochs, and the best starts the optimizer. No 200-point grid.
* **Levenberg-Marquardt in log-rates** on the residuals of section 11, the Jacobian by
  forward-mode differentiation through the adaptive Diffrax solve (two parameters: one solve
  carrying two tangents gives residuals and Jacobian together). The loop is a small
  ``lax.while_loop`` that evaluates the solve exactly once per iteration, moves on to the next
  start if a start's solve fails, and stops a trial early when it stalls, so one hopeless
  trial does not hold a whole batch for ``max_iters`` iterations. Two or three iterations
  are typical.
* **One compiled call for all trials**: the per-trial fit is written for one trajectory and
  ``vmap``-ed over trials inside one ``jit`` (on CPU, large batches run as chunks of 8 trials
  from two threads per core: one program, both cores busy).
* **Cheap sampling of the solution.** The solve saves its accepted steps only; the solution is
  evaluated at the measured epochs by quintic Hermite interpolation (value, first and second
  derivative from the vector field at both ends of each step): ~6x cheaper than Diffrax's
  dense output at thousands of points inside a ``vmap``, and accurate to ~1e-7 of the
  variables' scale at the default tolerances (interpolation error O(dt^6)).
* **Standard errors** from the Gauss-Newton approximation of the Hessian at the optimum,
  ``cov(log eta) = sigma^2 (J^T J)^{-1}``, ``sigma^2 = SSE / (3 (n - 1) - 2)`` (the first
  epoch's residuals vanish by construction), mapped to the rates by the delta method, plus
  the propagated noise of the measured first point, which the ODE starts from and which
  dominates the error of noisy fits (or, with ``fit_initial=True``, the initial state is
  fitted too and its uncertainty is part of ``J^T J``).

Every trial's result keeps three things apart: the optimizer finished (``converged``), the
data determine both rates (``identified``: relative standard errors below
:data:`MAX_REL_STDERR`), and the fit is good (``good_fit``: R^2 of each of h, y, w at least
:data:`MIN_R2`). ``status`` (:class:`FitStatus`) names the first that fails; only
``status == OK`` trials are usable as rates (:meth:`RateFit.mean_over_usable`), the others are
counted by reason, never averaged in. Rates of a fit whose optimizer did not finish are NaN; the
R^2 of a poor fit is reported all the same. A trial whose optimizer could not finish because an
ODE solve ran out of steps (a stiff trajectory) is fitted again with larger step budgets
(:data:`RETRY_MAX_STEPS`) rather than dropped.

Everything computes in float64: switch JAX's 64-bit mode on first.

Example:
    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> import jax.numpy as jnp
    >>> from unijax import fit, theory
    >>> ts = jnp.arange(2000.0)
    >>> Z = theory.solve(jnp.array([0.01, 1e-3, -0.01]), ts,
    ...                  eta_h=4e-3, eta_y=6e-3, dx2=1.0, dy2=0.5)
    >>> res = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5)
    >>> bool(res.converged), round(float(res.eta_h), 6), round(float(res.eta_y), 6)
    (True, 0.004, 0.006)

References:
    L. van Rossem, A. M. Saxe. When Representations Align: Universality in Representation
    Learning Dynamics. ICML 2024. arXiv:2402.09142 (appendix B.1).
"""

from __future__ import annotations

import enum
import functools
import warnings
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from unijax import _batch, _cache, theory
from unijax._checks import (
    check_bool,
    check_finite,
    check_int,
    check_positive,
    check_x64,
    is_concrete,
)
from unijax._keep import Keepable

__all__ = [
    "FitStatus",
    "MAX_REL_STDERR",
    "MIN_R2",
    "RETRY_MAX_STEPS",
    "status_counts",
    "RateFit",
    "MeanFit",
    "RateMean",
    "fit_rates",
    "fit_eta_mean",
]


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


#: Default quality criterion of a fit: R^2 of each of h, y, w at or above this
#: (``fit_rates(min_r2=...)``). The paper's fits reach R^2 > 0.99 on its well-fitted rows; below
#: 0.9 the ODE misses a visible part of the trajectory and its rates describe something else.
MIN_R2 = 0.9

#: Default identification criterion: both relative standard errors ``stderr / eta`` below this
#: (``fit_rates(max_rel_stderr=...)``).
MAX_REL_STDERR = 0.1

#: Default retry budgets: a trial whose optimizer did not finish after some ODE solve ran out of
#: steps is fitted again with each of these ``max_steps`` in turn (``fit_rates(retry_max_steps=
#: ...)``): stiff trajectories (very large initial weights) need thousands of explicit steps.
RETRY_MAX_STEPS = (4096, 32768)


class FitStatus(enum.IntEnum):
    """Outcome of one trial's rate fit (``RateFit.status``), like Diffrax's ``Solution.result``.

    The first that applies, in this order:

    * ``STEP_BUDGET`` (4): the optimizer did not finish, limited by the ODE step budget
      (``step_budget_hit``), even at the largest of ``retry_max_steps`` (rates NaN; R^2 and
      the curve are those of the best point reached, NaN if no solve succeeded).
    * ``ODE_FAILED`` (5): no ODE solve succeeded at any start (``h`` reached 0 or the numbers
      overflowed): nothing was fitted (rates, R^2, curve all NaN).
    * ``OPTIMIZER_FAILED`` (3): Levenberg-Marquardt ran out of iterations (rates NaN; R^2 and
      the curve of the best point reached). A stall (SciPy's ftol stop) counts as finished.
    * ``NOT_IDENTIFIED`` (2): the optimizer finished, but the data do not determine both rates
      (``J^T J`` singular, or a relative standard error ``>= max_rel_stderr``).
    * ``POOR_FIT`` (1): finished and identified, but R^2 of h, y or w is below ``min_r2``.
    * ``OK`` (0): all three hold: the rates may be used.
    * ``NOT_FITTED`` (-1): the trial was left out by ``fit_rates(where=...)`` (all fields
      NaN, False or 0).
    """

    NOT_FITTED = -1
    OK = 0
    POOR_FIT = 1
    NOT_IDENTIFIED = 2
    OPTIMIZER_FAILED = 3
    STEP_BUDGET = 4
    ODE_FAILED = 5


def status_counts(status: ArrayLike) -> dict[str, int]:
    """``{FitStatus name: number of trials}`` for the statuses that occur, in code order."""
    codes = np.asarray(status).ravel()
    return {s.name: int(np.sum(codes == s)) for s in FitStatus if np.any(codes == s)}


class RateMean(NamedTuple):
    """Mean of fitted rates over the usable trials only (``status == FitStatus.OK``).

    Attributes:
        eta_h, eta_y: means over usable trials (1/epoch); NaN when there are none.
        std_eta_h, std_eta_y: sample standard deviations across those trials (ddof=1; NaN
            for fewer than two).
        n_used: number of usable trials averaged.
        n_excluded: number of trials left out (their reasons: :meth:`RateFit.status_counts`).
    """

    eta_h: Float[Array, ""]
    eta_y: Float[Array, ""]
    std_eta_h: Float[Array, ""]
    std_eta_y: Float[Array, ""]
    n_used: Int[Array, ""]
    n_excluded: Int[Array, ""]


def _nanmedian_columns(a):
    """Column medians of the finite entries, NaN (without a warning) for a column of NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=0)


def _masked_mean_std(x, mask):
    n = jnp.sum(mask)
    mean = jnp.sum(jnp.where(mask, x, 0.0)) / jnp.where(n > 0, n, jnp.nan)
    var = jnp.sum(jnp.where(mask, (x - mean) ** 2, 0.0)) / jnp.where(n > 1, n - 1, jnp.nan)
    return mean, jnp.sqrt(var), n


class RateFit(Keepable, eqx.Module):
    """Result of :func:`fit_rates`, a frozen pytree.

    Shapes are for a batch of ``n_trials`` trajectories; for a single trajectory
    (``Z`` of shape ``(n_epochs, 3)``) the leading ``n_trials`` axis is absent.

    Three things are kept apart per trial: the optimizer finished (``converged``), the rates
    are identified (``identified``), the fit is good (``good_fit``); ``status`` names the first
    that fails (:class:`FitStatus`), and only ``status == OK`` trials are usable as rates.

    Attributes:
        eta_h, eta_y: fitted effective rates (1/epoch), shape ``(n_trials,)``; NaN where the
            optimizer did not finish (``converged=False``).
        stderr_eta_h, stderr_eta_y: standard errors of the rates (1/epoch), from the
            Gauss-Newton Hessian ``J^T J`` at the optimum, assuming independent residuals with
            one common variance ``sigma^2`` for h, y and w, estimated from ``sse``. When the
            ODE starts at the measured first point, the noise of that point (estimated from
            second differences of the first epochs) is propagated too: it dominates the error
            of noisy fits; see ``fit_initial``. NaN where ``converged=False``.
        cov_log_rates: covariance of ``(log eta_h, log eta_y)``, shape ``(n_trials, 2, 2)``.
        sse: sum of squared errors of section 11 at the best point reached, ``(n_trials,)``
            (inf when no solve succeeded).
        r2: coefficient of determination of h, y, w at the best point reached, shape
            ``(n_trials, 3)``: reported for poor fits too; NaN for a variable that is constant
            in the data, and for all three when no solve succeeded.
        status: :class:`FitStatus` code, int32 ``(n_trials,)``.
        converged: the optimizer finished: Levenberg-Marquardt's Gauss-Newton step fell below
            ``opt_atol`` at a point where the ODE solve succeeded.
        identified: converged, and the data determine both rates: ``J^T J`` is positive
            definite and both relative standard errors are finite and below
            ``max_rel_stderr`` (default :data:`MAX_REL_STDERR`).
        good_fit: the R^2 of each of h, y, w (those that vary in the data) is at least
            ``min_r2`` (default :data:`MIN_R2`).
        ode_ok: some ODE solve succeeded (there is a best point, hence ``r2`` and ``z_fit``).
        step_budget_hit: the (last) fit of this trial was limited by the ODE step budget:
            some solve ran out of steps and the best point reached needed at least half of
            ``max_steps`` (or no solve succeeded). Such trials are retried when the optimizer
            did not finish.
        max_steps: the step budget of the fit reported (``max_steps``, or a retry budget).
        n_iters: optimizer iterations, shape ``(n_trials,)``.
        n_ode_steps: solver steps of the final ODE solve, shape ``(n_trials,)``.
        init_eta_h, init_eta_y: where the optimizer started (1/epoch).
        z0_fit: the initial state the fitted ODE starts from, shape ``(n_trials, 3)``: the
            measured first point, or the fitted one with ``fit_initial=True``.
        z_fit: the fitted trajectory at ``ts``, shape ``(n_trials, n_epochs, 3)``, or None
            when ``return_trajectory=False``.
    """

    eta_h: Float[Array, "*b"]
    eta_y: Float[Array, "*b"]
    stderr_eta_h: Float[Array, "*b"]
    stderr_eta_y: Float[Array, "*b"]
    cov_log_rates: Float[Array, "*b 2 2"]
    sse: Float[Array, "*b"]
    r2: Float[Array, "*b 3"]
    status: Int[Array, "*b"]
    converged: Bool[Array, "*b"]
    identified: Bool[Array, "*b"]
    good_fit: Bool[Array, "*b"]
    ode_ok: Bool[Array, "*b"]
    step_budget_hit: Bool[Array, "*b"]
    max_steps: Int[Array, "*b"]
    n_iters: Int[Array, "*b"]
    n_ode_steps: Int[Array, "*b"]
    init_eta_h: Float[Array, "*b"]
    init_eta_y: Float[Array, "*b"]
    z0_fit: Float[Array, "*b 3"]
    z_fit: Float[Array, "*b n 3"] | None

    @property
    def n_trials(self) -> int:
        """Number of trajectories fitted (1 for a single trajectory)."""
        return int(np.size(self.eta_h))

    @property
    def usable(self) -> np.ndarray:
        """``status == FitStatus.OK``: converged, identified and a good fit (bool array)."""
        return np.asarray(self.status) == FitStatus.OK

    @property
    def n_failed(self) -> int:
        """Number of trials that are not usable (``status != OK``, any reason)."""
        return int(np.sum(~self.usable))

    def status_counts(self) -> dict[str, int]:
        """``{FitStatus name: number of trials}`` for the statuses that occur."""
        return status_counts(self.status)

    def mean_over_usable(self) -> RateMean:
        """Mean and spread of the rates over usable trials only (``status == OK``)."""
        mask = jnp.atleast_1d(jnp.asarray(self.usable))
        mh, sh, n = _masked_mean_std(jnp.atleast_1d(self.eta_h), mask)
        my, sy, _ = _masked_mean_std(jnp.atleast_1d(self.eta_y), mask)
        return RateMean(mh, my, sh, sy, n, mask.size - n)

    def summary(self) -> str:
        """A few lines for a log: the three counts, the reasons, mean rates and fit quality."""
        use = np.atleast_1d(self.usable)
        count = lambda x: int(np.sum(np.asarray(x)))  # noqa: E731
        m = self.mean_over_usable()
        bad = {k: v for k, v in self.status_counts().items() if k != FitStatus.OK.name}
        lines = [
            f"RateFit: {use.sum()}/{use.size} usable; {count(self.converged)} converged, "
            f"{count(self.identified)} identified, {count(self.good_fit)} good fit"
            + (" (excluded: " + ", ".join(f"{v} {k.lower()}" for k, v in bad.items()) + ")"
               if bad else ""),
        ]
        r2_all = np.atleast_2d(np.asarray(self.r2))
        if use.any():
            rel_h = np.atleast_1d(np.asarray(self.stderr_eta_h / self.eta_h))[use]
            rel_y = np.atleast_1d(np.asarray(self.stderr_eta_y / self.eta_y))[use]
            one = use.sum() == 1  # one trial: its standard error; no spread over trials

            def rate(name, mean, sd, rel):
                if one:
                    return f"  {name} = {float(mean):.6g} (rel. stderr {rel[0]:.2g}) 1/epoch"
                return (f"  {name} = {float(mean):.6g} (sd {float(sd):.3g}, "
                        f"median rel. stderr {np.median(rel):.2g}) 1/epoch")

            lines += [
                rate("eta_h", m.eta_h, m.std_eta_h, rel_h),
                rate("eta_y", m.eta_y, m.std_eta_y, rel_y),
                "  median R^2 (h, y, w), usable = "
                + ", ".join(f"{v:.4f}" for v in _nanmedian_columns(r2_all[use])),
            ]
        fitted = np.atleast_1d(np.asarray(self.ode_ok)) & ~use
        if fitted.any():  # the excluded fits' quality is reported, not hidden
            med = _nanmedian_columns(r2_all[fitted])
            lines.append("  median R^2 (h, y, w), excluded = "
                         + ", ".join("n/a" if not np.isfinite(v) else f"{v:.4f}" for v in med))
        return "\n".join(lines)


    def to_xarray(self, *, grid=None, ts=None):
        """``xarray.Dataset`` with dims ``trial`` (or ``gain, seed[, layer]`` given the
        ``grid`` TrainResult that was fitted), ``epoch``, ``variable`` (see
        :func:`unijax.results.to_xarray`; needs ``unijax[labels]``)."""
        from unijax import results

        return results.to_xarray(self, grid=grid, ts=ts)

    def to_dataframe(self, *, grid=None):
        """Tidy ``pandas.DataFrame``, a row per trial (see :func:`unijax.results.to_dataframe`)."""
        from unijax import results

        return results.to_dataframe(self, grid=grid)


class MeanFit(Keepable, eqx.Module):
    """Result of :func:`fit_eta_mean`, a frozen pytree (leading axis absent for one trial).

    Attributes:
        eta_mean: rate of the mean output (1/epoch), shape ``(n_trials,)``.
        m0: ``||ybar - gbar(0)||^2``, given or fitted (>= 0), shape ``(n_trials,)``.
        stderr_eta_mean, stderr_m0: Gauss-Newton standard errors (``stderr_m0`` is 0 when
            ``m0`` was given).
        sse: sum of squared errors of the loss curve; r2: its R^2, shape ``(n_trials,)``.
        converged: optimizer success, finite numbers, ``m0 > 0`` and
            ``stderr_eta_mean / eta_mean < max_rel_stderr``.
        n_iters: optimizer iterations.
        loss_fit: the fitted loss curve, shape ``(n_trials, n_epochs)``.
    """

    eta_mean: Float[Array, "*b"]
    m0: Float[Array, "*b"]
    stderr_eta_mean: Float[Array, "*b"]
    stderr_m0: Float[Array, "*b"]
    sse: Float[Array, "*b"]
    r2: Float[Array, "*b"]
    converged: Bool[Array, "*b"]
    n_iters: Int[Array, "*b"]
    loss_fit: Float[Array, "*b n"]

    @property
    def n_failed(self) -> int:
        """Number of trials with ``converged=False``."""
        return int(np.sum(~np.asarray(self.converged)))

    def mean_over_converged(self) -> tuple[Float[Array, ""], Float[Array, ""], Int[Array, ""]]:
        """``(mean eta_mean, its sample std, n_used)`` over converged trials only."""
        return _masked_mean_std(jnp.atleast_1d(self.eta_mean), jnp.atleast_1d(self.converged))

    def summary(self) -> str:
        """One line for a log: converged count, mean rate over converged trials, median R^2."""
        d = self.summary_dict()
        return (f"MeanFit: {d['n_converged']}/{d['n_trials']} converged; eta_mean = "
                f"{d['eta_mean_mean']} (sd {d['eta_mean_std']}) 1/epoch, median R^2 (loss) = "
                f"{d['median_r2']}")



# ---------------------------------------------------------------------------------------------
# The ODE solution sampled at the measured epochs
# ---------------------------------------------------------------------------------------------


class _SolveOpts(NamedTuple):
    """Static solver settings (hashable: they select the compiled program)."""

    rtol: float
    atol: float
    max_steps: int


def _field(z, rates, dx2, dy2):
    return theory.vector_field(z, eta_h=rates[0], eta_y=rates[1], dx2=dx2, dy2=dy2)


def _trajectory(z0, ts, log_rates, dx2, dy2, opts: _SolveOpts):
    """ODE from ``z0`` at ``ts[0]``, sampled at ``ts`` (:func:`unijax.theory.integrate`):
    ``(ys (n, 3), ok, num_steps, hit)``, ``hit`` when the solve ran out of its step budget
    ``opts.max_steps``.

    Forward-mode differentiable in ``log_rates`` (``diffrax.ForwardMode``). The step-size
    controller is not differentiated (Diffrax stops its gradient), so the derivative is that of
    the discrete solution on its own mesh, consistent with finite differences to the tolerance.
    """
    rates = jnp.exp(log_rates)
    sol = theory.integrate(z0, ts, eta_h=rates[0], eta_y=rates[1], dx2=dx2, dy2=dy2,
                           rtol=opts.rtol, atol=opts.atol, max_steps=opts.max_steps,
                           adjoint=diffrax.ForwardMode())
    return sol.ys, sol.ok, sol.num_steps, sol.max_steps_reached


class _Trial(NamedTuple):
    """One trial's data, the pytree that is vmapped over."""

    ts: Float[Array, " n"]
    Z: Float[Array, "n 3"]
    dx2: Float[Array, ""]
    dy2: Float[Array, ""]
    # Scales of the initial-state parameters; None: from Z (see _start_scale).
    start_scale: Float[Array, "2"] | None = None


def _start_scale(trial: _Trial):
    """Scales of the initial-state parameters: ``z0 = (h0 e^q0, y0 + s_y q1, w0 + s_w q2)``.

    Unit-free parameters keep Levenberg-Marquardt's damping sensible; ``h0 > 0`` is kept by
    the log.
    """
    if trial.start_scale is not None:
        return trial.start_scale
    return jnp.maximum(jnp.max(jnp.abs(trial.Z[:, 1:]), axis=0), 1e-12)


def _unpack(p, trial: _Trial):
    """Parameters -> ``(log_rates (2,), z0 (3,))``. ``p`` is ``(2,)`` (rates only; the ODE
    starts at the measured first point) or ``(5,)`` (rates and initial state)."""
    z_meas = trial.Z[0]
    if p.shape[0] == 2:
        return p, z_meas
    s = _start_scale(trial)
    z0 = jnp.stack([z_meas[0] * jnp.exp(p[2]), z_meas[1] + s[0] * p[3], z_meas[2] + s[1] * p[4]])
    return p[:2], z0


def _model(p, trial: _Trial, opts: _SolveOpts):
    log_rates, z0 = _unpack(p, trial)
    return _trajectory(z0, trial.ts, log_rates, trial.dx2, trial.dy2, opts)


def _evaluate(p, trial: _Trial, opts: _SolveOpts):
    """One forward-mode solve: ``(SSE, J^T J, J^T r, (ys, steps, J, hit))`` at the parameters
    ``p`` (``hit``: the solve ran out of its step budget).

    ``jacfwd`` runs the ODE once carrying one tangent per parameter (the primal part is not
    batched): residuals and Jacobian ``(3n, n_p)`` together, at about the cost of
    ``1 + n_p / 2`` plain solves. (That layout matters: XLA on CPU contracts ``J^T J`` over
    ``(3n, n_p)`` several times faster than over the tangent-major ``(n_p, n, 3)``.) A failed
    solve gives ``SSE = inf`` (and zeros elsewhere), which the optimizer rejects.
    """

    def f(q):
        ys, ok, steps, hit = _model(q, trial, opts)
        r = (ys - trial.Z).reshape(-1)
        return r, (r, ys, ok, steps, hit)

    jac, (r, ys, ok, steps, hit) = jax.jacfwd(f, has_aux=True)(p)
    sse = jnp.sum(r**2)
    hess, grad = jac.T @ jac, jac.T @ r
    ok = ok & jnp.isfinite(sse) & jnp.all(jnp.isfinite(hess)) & jnp.all(jnp.isfinite(grad))
    hess = jnp.where(ok, hess, 0.0)
    grad = jnp.where(ok, grad, 0.0)
    return jnp.where(ok, sse, jnp.inf), hess, grad, (ys, steps, jac, hit)


# ---------------------------------------------------------------------------------------------
# Small dense linear algebra and the Levenberg-Marquardt loop
# ---------------------------------------------------------------------------------------------


def _solve_spd(a, b):
    """Solve ``a x = b`` for a small symmetric positive-definite ``a``, with a flag.

    Cholesky after equilibrating by the diagonal (the parameters' curvatures differ by orders
    of magnitude). ``ok`` is False (and ``x`` NaN) when ``a`` is not numerically positive
    definite.
    """
    diag = jnp.diag(a)
    d = jnp.sqrt(jnp.where(diag > 0, diag, 1.0))
    scale = d if b.ndim == 1 else d[:, None]
    chol = jnp.linalg.cholesky(a / d[:, None] / d[None, :])
    ok = jnp.all(diag > 0) & jnp.all(jnp.isfinite(chol)) & jnp.all(jnp.diag(chol) > 1e-7)
    chol = jnp.where(ok, chol, jnp.eye(a.shape[0], dtype=a.dtype))
    x = jax.scipy.linalg.cho_solve((chol, True), b / scale) / scale
    return jnp.where(ok, x, jnp.nan), ok


def _inv_psd(a):
    """Inverse of a small symmetric positive-definite matrix, NaN when it is not one."""
    return _solve_spd(a, jnp.eye(a.shape[0], dtype=a.dtype))


class _LMState(NamedTuple):
    """Carry of the Levenberg-Marquardt loop (all per trial)."""

    p: Array  # accepted parameters, (k,)
    p_start: Array  # the start the optimizer went from (the first accepted point)
    sse: Array  # SSE at p; inf before the first accepted evaluation
    hess: Array  # J^T J at p, (k, k)
    grad: Array  # J^T r at p, (k,)
    aux: tuple  # the evaluation's extras at p
    p_eval: Array  # the proposal evaluated next
    pred: Array  # SSE decrease predicted for it by the Gauss-Newton model
    lam: Array  # Marquardt damping
    nu: Array  # growth factor of lam after a rejection (Nielsen)
    n_iter: Array  # evaluations so far
    n_stuck: Array  # consecutive evaluations without useful progress
    flagged: Array  # some evaluation raised ``flag`` (for the fit: ran out of ODE steps)
    converged: Array
    done: Array


def _levenberg_marquardt(evaluate, starts, *, max_iters, xtol, ftol, flag=None):
    """Minimize ``SSE(p) = |r(p)|^2`` by Levenberg-Marquardt (Marquardt scaling, Nielsen's
    damping update) from the first of ``starts`` (``(m, k)``, best first) whose evaluation
    succeeds: while nothing has been accepted, a failed evaluation moves on to the next.

    ``evaluate(p) -> (sse, J^T J, J^T r, aux)`` is called exactly once per iteration, at the
    proposal (one call site: the solver inside it is compiled once). Converged when the
    undamped Gauss-Newton step from the best point is below ``xtol`` in every parameter (the
    parameters are logs or unit-free, so this is a relative accuracy). Stops early, not
    converged, after 6 evaluations in a row that improve SSE by less than ``ftol`` relative
    (a flat or noisy valley: the batch should not wait ``max_iters`` for it).
    ``flag(aux) -> bool``, if given, is or-ed over every evaluation, accepted or not, into
    ``flagged`` (the rate fit records whether any solve ran out of its step budget).

    Returns:
        The final :class:`_LMState`.
    """
    p0 = starts[0]
    k = p0.shape[0]
    _, _, _, aux_shape = jax.eval_shape(evaluate, p0)
    aux0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), aux_shape)

    def propose(p, hess, grad, lam):
        diag = jnp.diag(hess)
        damped = hess + jnp.diag(lam * (diag + 1e-12 * jnp.max(diag)))
        step, ok = _solve_spd(damped, -grad)
        step = jnp.where(ok, step, 0.0)
        return p + step, -(2.0 * step @ grad + step @ hess @ step)

    def body(s: _LMState) -> _LMState:
        sse_e, hess_e, grad_e, aux_e = evaluate(s.p_eval)
        flagged = s.flagged | (False if flag is None else flag(aux_e))
        first = ~jnp.isfinite(s.sse)
        accept = sse_e < s.sse
        rho = (s.sse - sse_e) / jnp.where(s.pred > 0, s.pred, jnp.inf)
        lam = jnp.where(
            accept,
            jnp.where(first, s.lam, s.lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)),
            s.lam * s.nu,
        )
        nu = jnp.where(accept, 2.0, 2.0 * s.nu)
        p, sse, hess, grad, aux = jax.tree.map(
            lambda new, old: jnp.where(accept, new, old),
            (s.p_eval, sse_e, hess_e, grad_e, aux_e),
            (s.p, s.sse, s.hess, s.grad, s.aux),
        )
        p_start = jnp.where(first & accept, s.p_eval, s.p_start)
        gain = s.sse - sse_e
        useful = accept & (first | (gain > ftol * sse_e))
        n_stuck = jnp.where(useful | first, 0, s.n_stuck + 1)
        newton, newton_ok = _solve_spd(hess, -grad)
        converged = jnp.isfinite(sse) & newton_ok & (jnp.max(jnp.abs(newton)) <= xtol)
        p_eval, pred = propose(p, hess, grad, lam)
        n_iter = s.n_iter + 1
        # Nothing accepted yet (the start's solve failed): try the next start, if any.
        p_eval = jnp.where(jnp.isfinite(sse), p_eval, starts[jnp.minimum(n_iter, len(starts) - 1)])
        no_start = ~jnp.isfinite(sse) & (n_iter >= len(starts))
        done = converged | (n_iter >= max_iters) | (n_stuck >= 6) | no_start
        return _LMState(
            p,
            p_start,
            sse,
            hess,
            grad,
            aux,
            p_eval,
            pred,
            lam,
            nu,
            n_iter,
            n_stuck,
            flagged,
            converged,
            done,
        )

    init = _LMState(
        p=p0,
        p_start=p0,
        sse=jnp.asarray(jnp.inf, p0.dtype),
        hess=jnp.zeros((k, k), p0.dtype),
        grad=jnp.zeros((k,), p0.dtype),
        aux=aux0,
        p_eval=p0,
        pred=jnp.asarray(1.0, p0.dtype),
        lam=jnp.asarray(1e-3, p0.dtype),
        nu=jnp.asarray(2.0, p0.dtype),
        n_iter=jnp.asarray(0),
        n_stuck=jnp.asarray(0),
        flagged=jnp.asarray(False),
        converged=jnp.asarray(False),
        done=jnp.asarray(False),
    )
    return jax.lax.while_loop(lambda s: ~s.done, body, init)


# ---------------------------------------------------------------------------------------------
# Initial estimates from the data (no ODE solves)
# ---------------------------------------------------------------------------------------------


def _cumtrapz(f, ts):
    """Cumulative trapezoid integral along the first axis, starting at 0, same length."""
    dt = jnp.diff(ts)
    inc = 0.5 * (f[1:] + f[:-1]) * dt.reshape((-1,) + (1,) * (f.ndim - 1))
    return jnp.concatenate([jnp.zeros_like(f[:1]), jnp.cumsum(inc, axis=0)], axis=0)


def _lstsq_moments(gram, rhs, active):
    """Least squares from its normal equations ``gram x = rhs`` over the ``active`` unknowns.

    ``gram``: ``(k, k)``, ``rhs``: ``(k,)``, ``active``: ``(k,)`` bools (inactive unknowns
    come back 0). Equilibrated Cholesky; NaN when (near-)singular so that the caller falls
    back. Written for a fixed ``k`` so that systems of different sizes run as one ``vmap``.
    """
    both = active[:, None] & active[None, :]
    gram = jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(active, 0.0, 1.0))
    coef, ok = _solve_spd(gram, jnp.where(active, rhs, 0.0))
    ok = ok & jnp.all(jnp.where(active, jnp.diag(gram) > 0, True))
    return jnp.where(ok & jnp.all(jnp.isfinite(coef)), coef, jnp.nan)


# Integral matching: every equation below is a weighted sum over epochs of
# (features . x - target)^2, with features and targets taken from the series
# S = (A, B, C, D, E, 1, h, y, w, h^2) defined in _initial_estimates. Each system is a list
# of blocks (equation weight, feature rows (5 unknowns x 10 series), target (10 series)), so
# its normal equations come from the one moment matrix S^T S.
_A, _B, _C, _D, _E, _ONE, _H, _Y, _W, _H2 = range(10)


def _sel(*cols):
    """Feature map of a block: unknown ``j`` uses series ``cols[j]`` (None: absent)."""
    m = np.zeros((5, 10))
    for j, c in enumerate(cols):
        if c is not None:
            m[j, c] = 1.0
    return m


def _vec(**coef):
    v = np.zeros(10)
    for name, c in coef.items():
        v[globals()["_" + name.upper()]] = c
    return v


_h_block = (_sel(_A, None, _ONE, None, None), _vec(h=1.0))
_y_block = (_sel(_C, _B, None, _ONE, None), _vec(y=1.0))
_w_block = (_sel(_E, _D, None, None, _ONE), _vec(w=1.0))
_ALL = (True,) * 5
_SYSTEMS = (
    # (1) all three equations, unknowns (eta_h, eta_y, h0, y0, w0).
    (((0, _h_block), (1, _y_block), (2, _w_block)), _ALL),
    # (2) anchored at the measured first point: x0 enters the target (see below).
    (((0, _h_block), (1, _y_block), (2, _w_block)), (True, True, False, False, False)),
    # (3a) the h equation alone: (eta_h, h0).
    (((0, _h_block),), (True, False, True, False, False)),
    # (3b) the invariant y = c h^2 + K h: (c, K) in the first two slots.
    (((3, (_sel(_H2, _H), _vec(y=1.0))),), (True, True, False, False, False)),
    # (4) the h and w equations: (eta_h, eta_y, h0, w0).
    (((0, _h_block), (2, _w_block)), (True, True, True, False, True)),
)


def _normal_equations(moments, weights, z_first):
    """Stacked normal equations of :data:`_SYSTEMS`: ``gram (5, 5, 5)``, ``rhs (5, 5)``."""
    grams, rhss = [], []
    for i, (blocks, _) in enumerate(_SYSTEMS):
        gram, rhs = jnp.zeros((5, 5)), jnp.zeros(5)
        for eq, (feat, target) in blocks:
            feat, target = jnp.asarray(feat), jnp.asarray(target)
            if i == 1 and eq < 3:
                # Anchored: the initial-state unknowns are fixed at the measured first point
                # and move to the target side.
                target = target - z_first[eq] * jnp.asarray(_vec(one=1.0))
            w2 = weights[eq] ** 2
            gram = gram + w2 * feat @ moments @ feat.T
            rhs = rhs + w2 * feat @ moments @ target
        grams.append(gram)
        rhss.append(rhs)
    actives = np.array([a for _, a in _SYSTEMS])
    return jnp.stack(grams), jnp.stack(rhss), jnp.asarray(actives)


def _initial_estimates(trial: _Trial):
    """Candidate ``(eta_h, eta_y)`` pairs from the data alone, and an initial-state estimate.

    The vector field is linear in the rates, so integrating each equation of section 2 along
    the measured trajectory gives linear equations ("integral matching"):

        h_t = h_0 + eta_h A_t,              A = -dx2 int w
        y_t = y_0 + eta_y B_t + eta_h C_t,  B = -int w h,   C = -dx2 int w y / h
        w_t = w_0 + eta_y D_t + eta_h E_t,  D = -1/2 int (3w - y + dy2) h,
                                            E = -1/2 dx2 int (y + w) w / h

    (integrals from ``ts[0]`` to ``t``; integrals rather than derivatives so noise averages
    out). Candidates: (1) all three equations jointly with ``(h_0, y_0, w_0)`` free, which also
    estimates the initial state from the whole trajectory rather than from one noisy epoch;
    (2) the same anchored at the measured first point; (3) the h equation for ``eta_h``, then
    ``eta_y = c eta_h dx2`` with ``c`` from the invariant of section 4, ``y = c h^2 + K h``;
    (4) the h and w equations without y; (5) a fallback whose time scale is a tenth of the
    recording. Each equation is weighted by the inverse spread of its variable. All five
    least-squares problems come from one ``10 x 10`` moment matrix of the series involved,
    so this costs one pass over the data. Anything non-finite or non-positive (noisy,
    barely-moving data) is replaced by the fallback.

    Returns:
        ``(candidates (5, 2), z0_estimate (3,))``; the estimate falls back to the measured
        first point when candidate (1) is unusable.
    """
    ts, Z, dx2, dy2 = trial.ts, trial.Z, trial.dx2, trial.dy2
    h, y, w = Z[:, 0], Z[:, 1], Z[:, 2]
    # The 1/h terms only feed initial guesses; keep them finite when noise pushes h to ~0.
    h_safe = jnp.maximum(h, 1e-3 * jnp.max(jnp.abs(h)))
    integrands = jnp.stack(
        [w, w * h, w * y / h_safe, (3.0 * w - y + dy2) * h, (y + w) * w / h_safe], axis=1
    )
    integrals = _cumtrapz(integrands, ts) * jnp.array([-dx2, -1.0, -dx2, -0.5, -0.5 * dx2])
    series = jnp.concatenate([integrals, jnp.ones_like(h)[:, None], Z, (h * h)[:, None]], 1)
    moments = series.T @ series
    weights = jnp.stack([1.0 / jnp.maximum(jnp.std(v), 1e-300) for v in (h, y, w)] + [1.0])
    gram, rhs, active = _normal_equations(moments, weights, Z[0])
    x = jax.vmap(_lstsq_moments)(gram, rhs, active)
    eh3, c = x[2, 0], x[3, 0]
    cand = jnp.stack([x[0, :2], x[1, :2], jnp.stack([eh3, c * eh3 * dx2]), x[4, :2]])
    duration = ts[-1] - ts[0]
    fallback = jnp.stack([10.0 / (duration * dx2), 10.0 / (duration * jnp.maximum(dy2, 1e-3))])
    cand = jnp.where(jnp.isfinite(cand) & (cand > 0), cand, fallback)
    cand = jnp.concatenate([cand, fallback[None]], axis=0)
    x1 = x[0]
    # Keep the estimated start physical: y0 >= 0 and, by Cauchy-Schwarz on
    # w = y - dy . dyhat, |w0 - y0| <= sqrt(dy2 y0). Noise on a start near h = y = 0 easily
    # flips the sign of w0 otherwise, and with it the whole trajectory.
    y0 = jnp.maximum(x1[3], 0.0)
    reach = jnp.sqrt(dy2 * y0)
    z0 = jnp.stack([x1[2], y0, jnp.clip(x1[4], y0 - reach, y0 + reach)])
    z0_ok = jnp.all(jnp.isfinite(z0)) & (z0[0] > 0)
    return cand, jnp.where(z0_ok, z0, Z[0])


# ---------------------------------------------------------------------------------------------
# The per-trial fit and its batched, compiled entry point
# ---------------------------------------------------------------------------------------------


class _FitOpts(NamedTuple):
    """Static options of the compiled fit (one program per distinct value). Field names are
    the keyword names of :func:`fit_rates` (``unijax.distributed`` builds it from them)."""

    solve: _SolveOpts
    max_iters: int
    opt_rtol: float
    opt_atol: float
    max_rel_stderr: float
    min_r2: float
    scales: tuple[float, ...]
    has_init: bool
    fit_initial: bool


def _score(p, trial: _Trial, substeps: int = 3):
    """SSE of the ODE from the parameters ``p`` on the trial's epochs, by classical RK4 with
    ``substeps`` fixed steps per interval (``inf`` when it fails or reaches ``h <= 0``).

    Only used to rank starting points (on a subsample of the epochs, see :func:`_subsample`):
    a fixed-step ``lax.scan`` compiles in a fraction of the time of an adaptive solve and is
    accurate enough to rank; the fit itself uses the adaptive solver.
    """
    log_rates, z0 = _unpack(p, trial)
    rates = jnp.exp(log_rates)

    def field(z):
        return _field(z, rates, trial.dx2, trial.dy2)

    def interval(z, dt):
        h = dt / substeps
        for _ in range(substeps):
            k1 = field(z)
            k2 = field(z + 0.5 * h * k1)
            k3 = field(z + 0.5 * h * k2)
            k4 = field(z + h * k3)
            z = z + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return z, z

    _, zs = jax.lax.scan(interval, z0, jnp.diff(trial.ts))
    zs = jnp.concatenate([z0[None], zs])
    sse = jnp.sum((zs - trial.Z) ** 2)
    return jnp.where(jnp.isfinite(sse) & jnp.all(zs[:, 0] > 0), sse, jnp.inf)


def _subsample_index(n: int, n_max: int) -> np.ndarray:
    """At most ``n_max`` of ``n`` epochs, evenly spread, first and last kept (static)."""
    if n <= n_max:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, n_max).round().astype(int))


def _subsample(trial: _Trial, n_max: int) -> _Trial:
    """The trial on at most ``n_max`` epochs: enough to rank starting points, or for a sum
    over epochs of smooth terms, at a fraction of the cost of all epochs."""
    idx = _subsample_index(trial.ts.shape[0], n_max)
    if idx.size == trial.ts.shape[0]:
        return trial
    return trial._replace(ts=trial.ts[idx], Z=trial.Z[idx], start_scale=_start_scale(trial))


def _start_params(z0, trial: _Trial):
    """Initial-state parameters ``q`` of :func:`_unpack` that give the state ``z0``."""
    s = _start_scale(trial)
    z_meas = trial.Z[0]
    return jnp.stack(
        [jnp.log(z0[0] / z_meas[0]), (z0[1] - z_meas[1]) / s[0], (z0[2] - z_meas[2]) / s[1]]
    )


def _r2(Z, ys):
    """R^2 of h, y, w ``(3,)`` (NaN for a variable constant in the data) and which vary."""
    ss_res = jnp.sum((Z - ys) ** 2, axis=0)
    ss_tot = jnp.sum((Z - jnp.mean(Z, axis=0)) ** 2, axis=0)
    varies = ss_tot > 0
    return jnp.where(varies, 1.0 - ss_res / jnp.where(varies, ss_tot, 1.0), jnp.nan), varies


def _start_noise(Z, n_head: int = 32):
    """Noise standard deviation of h, y, w near the first epoch, shape ``(3,)``.

    From second differences of the first ``n_head`` epochs: for a trajectory that is smooth on
    the scale of an epoch, ``Z[t+1] - 2 Z[t] + Z[t-1]`` is noise with variance ``6 sigma^2``.
    Local, so multiplicative noise on a small starting point is not overstated.
    """
    head = Z[: min(n_head, Z.shape[0])]
    d2 = head[2:] - 2.0 * head[1:-1] + head[:-2]
    return jnp.sqrt(jnp.mean(d2**2, axis=0) / 6.0)


def _covariance_fitted_start(hess, sse, n_epochs):
    """Covariance of ``(log eta_h, log eta_y)`` with the initial state fitted: the ``2x2``
    block of ``sigma^2 (J^T J)^{-1}`` over all five parameters, ``sigma^2 = SSE / (3n - 5)``.
    """
    inv, ok = _inv_psd(hess)
    return sse / (3 * n_epochs - 5) * inv[:2, :2], ok


def _start_sensitivity(p, trial: _Trial, opts: _SolveOpts, ys, jac, step: float = 1e-4):
    """``J_r^T J_q`` ``(2, 3)``: how the residuals' rate directions couple to a shift of the
    (measured, not fitted) initial state, ``q`` as in :func:`_unpack`.

    Only the standard errors use it, so it is cheap rather than exact: ``J_q`` by forward
    differences of three plain solves (a step of ``1e-4`` in ``q``; the adaptive mesh's
    jitter, ~``rtol``, stays ~1e-3 of the difference), and the sum over epochs taken on 256
    of them, evenly spread, scaled up (the summands are smooth in time).
    """
    n = trial.ts.shape[0]
    idx = _subsample_index(n, 256)
    sub = _subsample(trial, 256)
    rows = (3 * idx[:, None] + np.arange(3)[None, :]).reshape(-1)

    def column(dq):
        shifted, _, _, _ = _model(jnp.concatenate([p, dq]), sub, opts)
        return ((shifted - ys[idx]) / step).reshape(-1)

    j_start = jax.vmap(column)(step * jnp.eye(3, dtype=p.dtype))  # (3, 3 n_sub)
    return (j_start @ jac[rows]).T * (n / idx.size)


def _covariance_measured_start(hess, cross, sse, trial: _Trial, z0):
    """Covariance of ``(log eta_h, log eta_y)`` with the ODE started at the measured point.

    ``hess = J_r^T J_r`` ``(2, 2)`` in the log-rates; ``cross = J_r^T J_q`` ``(2, 3)`` with
    the initial-state parameters ``q`` of :func:`_unpack`. ``sigma^2 = SSE / (3 (n - 1) - 2)``
    (the first epoch's residuals vanish by construction). The first point's own noise moves
    the estimate too: to first order ``d(log eta) = -G dz0``,
    ``G = (J_r^T J_r)^{-1} J_r^T J_z``, so ``cov = sigma^2 (J_r^T J_r)^{-1} + G S G^T`` with
    ``S`` the first point's noise covariance (diagonal, from :func:`_start_noise`).
    """
    sigma2 = sse / (3 * (trial.ts.shape[0] - 1) - 2)
    # dz0/dq = diag(h0, s_y, s_w): back to the natural units of z0, then times its noise.
    dz_dq = jnp.concatenate([z0[:1], _start_scale(trial)])
    inv, ok = _inv_psd(hess)
    g = inv @ (cross / dz_dq * _start_noise(trial.Z))
    return sigma2 * inv + g @ g.T, ok


def _fit_one(trial: _Trial, init, opts: _FitOpts):
    """Fit one trajectory; returns a dict of per-trial arrays (vmapped by the caller)."""
    cand, z0_est = _initial_estimates(trial)
    if opts.has_init:
        cand = jnp.log(init)[None]
        scales = jnp.zeros(1)
    else:
        # Every candidate and a few scales of it. Integral matching is usually within a few %
        # already; the scales rescue the noisy and barely-moving cases where it is not.
        cand = jnp.log(cand)
        scales = jnp.log(jnp.asarray(opts.scales))
    rate_starts = (cand[:, None, :] + scales[None, :, None]).reshape(-1, 2)
    if opts.fit_initial:
        # The initial state starts at the integral-matching estimate (fitted to the whole
        # trajectory) or at the measured first epoch, whichever scores better.
        q_starts = jnp.stack([_start_params(z0_est, trial), jnp.zeros(3)])
        n_r, n_q = rate_starts.shape[0], q_starts.shape[0]
        starts = jnp.concatenate(
            [jnp.repeat(rate_starts, n_q, axis=0), jnp.tile(q_starts, (n_r, 1))], axis=1
        )
    else:
        starts = rate_starts
    # Scored by one batched fixed-step solve on a subsample of the epochs; the optimizer
    # starts from the best.
    scoring = _subsample(trial, 128)
    sses = jax.vmap(lambda p: _score(p, scoring))(starts)
    # The best four, best first: the optimizer falls back on the next if a start's adaptive
    # solve fails.
    order = jnp.argsort(sses)[: min(4, starts.shape[0])]
    starts = starts[order]

    lm = _levenberg_marquardt(
        lambda p: _evaluate(p, trial, opts.solve),
        starts,
        max_iters=opts.max_iters,
        xtol=opts.opt_atol,
        ftol=opts.opt_rtol,
        flag=lambda aux: aux[3],
    )
    p = lm.p
    start = lm.p_start[:2]
    # Everything at the optimum comes from the loop's last accepted evaluation.
    sse, (ys, steps, jac, _) = lm.sse, lm.aux
    log_rates, z0 = _unpack(p, trial)
    if opts.fit_initial:
        cov, pos_def = _covariance_fitted_start(lm.hess, sse, trial.ts.shape[0])
    else:
        cross = _start_sensitivity(p, trial, opts.solve, ys, jac)
        cov, pos_def = _covariance_measured_start(lm.hess, cross, sse, trial, z0)
    # ode_ok: some solve succeeded, so there is a best point reached (its curve and R^2 are
    # reported even when the optimizer did not finish there).
    ode_ok = jnp.isfinite(sse)
    # Limited by the step budget: some solve ran out of steps, and the best point reached
    # itself needed half the budget or more (or nothing was reached). Proposals that wander
    # into stiff regions while the best point is not stiff do not count: more steps would
    # not help those (the optimizer failed for another reason).
    budget_bound = lm.flagged & (~ode_ok | (steps >= opts.solve.max_steps // 2))
    # A stall (six evaluations in a row that lower the SSE by < opt_rtol relative, SciPy's
    # ftol stop) is a finished optimization: a minimum, good or poor; unless the step budget
    # limited it (then more steps are tried).
    converged = (lm.converged | ((lm.n_stuck >= 6) & ~budget_bound)) & ode_ok
    rel_se = jnp.sqrt(jnp.diag(cov))  # stderr of log(eta) = relative stderr of eta
    rates = jnp.exp(log_rates)
    identified = (
        converged
        & pos_def
        & jnp.all(jnp.isfinite(rates))
        & jnp.all(jnp.isfinite(rel_se))
        & jnp.all(rel_se < opts.max_rel_stderr)
    )
    r2, varies = _r2(trial.Z, ys)
    r2 = jnp.where(ode_ok, r2, jnp.nan)
    # A variable that is constant in the data has no variance to explain: it does not count.
    good_fit = ode_ok & jnp.all(jnp.where(varies, r2 >= opts.min_r2, True))
    status = jnp.select(
        [~converged & budget_bound, ~ode_ok, ~converged, ~identified, ~good_fit],
        [int(s) for s in (FitStatus.STEP_BUDGET, FitStatus.ODE_FAILED,
                          FitStatus.OPTIMIZER_FAILED, FitStatus.NOT_IDENTIFIED,
                          FitStatus.POOR_FIT)],
        int(FitStatus.OK),
    ).astype(jnp.int32)
    # Rates exist only where the optimizer finished: never the start or a stale point.
    nan_unless = lambda ok, x: jnp.where(ok, x, jnp.nan)  # noqa: E731
    return dict(
        eta_h=nan_unless(converged, rates[0]),
        eta_y=nan_unless(converged, rates[1]),
        stderr_eta_h=nan_unless(converged, rates[0] * rel_se[0]),
        stderr_eta_y=nan_unless(converged, rates[1] * rel_se[1]),
        cov_log_rates=nan_unless(converged, cov),
        sse=sse,
        r2=r2,
        status=status,
        converged=converged,
        identified=identified,
        good_fit=good_fit,
        ode_ok=ode_ok,
        step_budget_hit=budget_bound,
        max_steps=jnp.asarray(opts.solve.max_steps, jnp.int32),
        n_iters=lm.n_iter,
        n_ode_steps=steps,
        init_eta_h=jnp.exp(start[0]),
        init_eta_y=jnp.exp(start[1]),
        z0_fit=nan_unless(ode_ok, z0),
        z_fit=nan_unless(ode_ok, ys),
    )


@functools.partial(jax.jit, static_argnames=("opts", "return_trajectory"))
def _fit_batch(ts, Z, dx2, dy2, init, *, opts: _FitOpts, return_trajectory: bool):
    """All trials in one compiled call: ``vmap`` of the per-trial fit."""

    def one(Zi, dx2i, dy2i, initi):
        return _fit_one(_Trial(ts, Zi, dx2i, dy2i), initi, opts)

    out = jax.vmap(one)(Z, dx2, dy2, init)
    if not return_trajectory:
        out["z_fit"] = None
    return out


def _fit_rows(ts, batch: dict, rows, *, opts: _FitOpts, return_trajectory: bool, mesh,
              width: int) -> dict:
    """The trials ``rows`` of ``batch`` (host arrays ``Z, dx2, dy2, init`` of ``width``
    trials), fitted on ``mesh``: host arrays ``(rows.size, ...)``.

    One device: on CPU, chunks of 8 trials from threads when ``width >= 16``, else one
    ``vmap`` of ``width`` trials (``rows`` padded with copies of the last to a whole number of
    chunks, or to ``width``), so any subset of the batch runs the batch's compiled program.
    Several devices: each fits its slice as chunks, in one program for the mesh.
    """
    part = {k: v[rows] for k, v in batch.items()}

    def run(ts_, b):
        return _fit_batch(ts_, b["Z"], b["dx2"], b["dy2"], b["init"], opts=opts,
                          return_trajectory=return_trajectory)

    devices = list(mesh.devices.flat)
    if len(devices) > 1 or not devices[0].process_index == jax.process_index():
        return _batch.map_over_devices(run, ts, part, mesh)
    size, threads = _batch.cpu_chunking(width, devices[0].platform)
    total = -(-rows.size // size) * size
    idx = _batch.pad_index(np.arange(rows.size), total)
    ts_dev = jax.device_put(ts, devices[0])
    out = _batch.map_chunks(functools.partial(run, ts_dev),
                            {k: v[idx] for k, v in part.items()},
                            size=size, threads=threads, device=devices[0], label="fit")
    return {k: None if v is None else v[: rows.size] for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Validation at the Python boundary
# ---------------------------------------------------------------------------------------------


def _as_batch(name: str, value, n_trials: int) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        return np.full((n_trials,), float(arr))
    if arr.shape != (n_trials,):
        raise ValueError(
            f"{name} must be a scalar or have shape (n_trials,) = ({n_trials},); "
            f"got shape {arr.shape}."
        )
    return arr


def _check_ts_for(ts, n_epochs: int, what: str) -> np.ndarray:
    arr = np.asarray(ts, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"ts must be a 1-D array of epochs, shape (n_epochs,); got {arr.shape}.")
    if arr.shape[0] != n_epochs:
        raise ValueError(
            f"ts has {arr.shape[0]} epochs but {what} has {n_epochs} (its epoch axis); "
            "they must match."
        )
    check_finite("ts", arr)
    d = np.diff(arr)
    if np.any(d <= 0):
        i = int(np.argmax(d <= 0))
        raise ValueError(
            f"ts must be strictly increasing; ts[{i}]={float(arr[i])!r} >= "
            f"ts[{i + 1}]={float(arr[i + 1])!r}."
        )
    return arr


def _check_trajectories(Z, where) -> tuple[np.ndarray, bool, np.ndarray]:
    """``(Z as (n_trials, n_epochs, 3), single, where as (n_trials,) bool)``; only the trials
    selected by ``where`` (default all) must be finite and start with ``h0 > 0, y0 >= 0``."""
    arr = np.asarray(Z, dtype=float)
    single = arr.ndim == 2
    if arr.ndim not in (2, 3) or arr.shape[-1] != 3:
        raise ValueError(
            "Z must have shape (n_epochs, 3) or (n_trials, n_epochs, 3) holding (h, y, w) "
            f"per epoch; got shape {arr.shape}."
        )
    if single:
        arr = arr[None]
    if arr.shape[0] < 1 or arr.shape[1] < 3:
        raise ValueError(
            f"Z needs at least 1 trial and 3 epochs (two rates are fitted); got shape "
            f"{np.asarray(Z).shape}."
        )
    n = arr.shape[0]
    if where is None:
        sel = np.ones(n, bool)
    else:
        sel = np.asarray(where)
        if sel.dtype != bool or sel.shape not in ((n,), () if single else (n,)):
            raise ValueError(
                f"where must be a bool array of shape (n_trials,) = ({n},)"
                + (" or a bool" if single else "")
                + f"; got dtype {sel.dtype}, shape {sel.shape}."
            )
        sel = np.broadcast_to(sel, (n,))
    bad = ~np.isfinite(arr) & sel[:, None, None]
    if bad.any():
        trial, epoch, var = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"Z must be finite everywhere; found {int(bad.sum())} NaN/inf value(s), first in "
            f"trial {trial}, epoch {epoch}, variable {'hyw'[var]}"
            + ("" if where is None else " (leave such trials out with where=...)") + "."
        )
    h0, y0 = arr[:, 0, 0], arr[:, 0, 1]
    if np.any((h0 <= 0) & sel):
        i = int(np.argmax((h0 <= 0) & sel))
        raise ValueError(
            f"Z[{i}, 0, 0] (h0, the initial squared hidden distance of trial {i}) = {h0[i]!r} "
            "is out of range: must lie in (0, inf) (the ODE is singular at h = 0)."
        )
    if np.any((y0 < 0) & sel):
        i = int(np.argmax((y0 < 0) & sel))
        raise ValueError(
            f"Z[{i}, 0, 1] (y0, the initial squared output distance of trial {i}) = {y0[i]!r} "
            "is out of range: must lie in [0, inf)."
        )
    return arr, single, np.array(sel)


def _not_fitted(fitted_out: dict | None, rows: np.ndarray, n: int, n_epochs: int,
                return_trajectory: bool) -> dict:
    """The outputs of ``n`` trials of which only ``rows`` were fitted (``fitted_out``, or None
    when none was): the others NaN (floats), False, 0 (integers), status ``NOT_FITTED``."""
    shapes = {"cov_log_rates": (2, 2), "r2": (3,), "z0_fit": (3,), "z_fit": (n_epochs, 3)}
    ints = ("max_steps", "n_iters", "n_ode_steps")
    bools = ("converged", "identified", "good_fit", "ode_ok", "step_budget_hit")
    out = {}
    for k in RateFit.__dataclass_fields__:
        if k == "z_fit" and not return_trajectory:
            out[k] = None
            continue
        if k == "status":
            out[k] = np.full(n, FitStatus.NOT_FITTED, np.int32)
        elif k in bools:
            out[k] = np.zeros(n, bool)
        elif k in ints:
            out[k] = np.zeros(n, np.int32 if fitted_out is None else fitted_out[k].dtype)
        else:
            out[k] = np.full((n, *shapes.get(k, ())), np.nan)
        if fitted_out is not None:
            out[k] = out[k].astype(np.asarray(fitted_out[k]).dtype)
            out[k][rows] = fitted_out[k]
    return out


def _squeeze(out: dict, single: bool) -> dict:
    if not single:
        return out
    return {k: (None if v is None else v[0]) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _check_batch(ts, Z_arr, dx2, dy2, init):
    """Validate ``ts``, ``dx2``, ``dy2``, ``init`` against checked trajectories ``Z_arr``
    ``(n_trials, n_epochs, 3)``; returns them as per-trial host arrays."""
    n_trials, n_epochs = Z_arr.shape[:2]
    ts_arr = _check_ts_for(ts, n_epochs, "Z")
    check_positive("dx2", dx2)
    check_positive("dy2", dy2, allow_zero=True)
    dx2_b = _as_batch("dx2", dx2, n_trials)
    dy2_b = _as_batch("dy2", dy2, n_trials)
    if init is None:
        init_b = np.ones((n_trials, 2))
    else:
        check_positive("init (eta_h, eta_y)", init)
        init_b = np.asarray(init, dtype=float)
        if init_b.shape == (2,):
            init_b = np.broadcast_to(init_b, (n_trials, 2))
        if init_b.shape != (n_trials, 2):
            raise ValueError(
                f"init must have shape (2,) or (n_trials, 2) = ({n_trials}, 2); "
                f"got {np.asarray(init).shape}."
            )
    return ts_arr, dx2_b, dy2_b, init_b


def _prepare_fit(
    ts, Z, dx2, dy2, init, *, where, caller: str, rtol, atol, max_steps, max_iters, opt_rtol,
    opt_atol, max_rel_stderr, min_r2, retry_max_steps, scales, fit_initial,
):
    """The argument checks and compiled options of :func:`fit_rates`: ``(ts, Z, dx2, dy2,
    init, opts, single, retries, where)``: float64 host arrays of the batch, ``single`` when
    ``Z`` was one trajectory, the retry budgets above ``max_steps`` (increasing), and the
    trials to fit as a ``(n_trials,)`` bool array."""
    check_x64(caller)
    if not is_concrete((ts, Z, dx2, dy2, init)):
        raise ValueError(
            f"{caller} is a jitted entry point; call it with concrete arrays, not inside "
            "jit/vmap (it already fits all trials in one compiled call)."
        )
    Z_arr, single, where_b = _check_trajectories(Z, where)
    ts_arr, dx2_b, dy2_b, init_b = _check_batch(ts, Z_arr, dx2, dy2, init)
    for name, v in (
        ("rtol", rtol),
        ("atol", atol),
        ("opt_rtol", opt_rtol),
        ("opt_atol", opt_atol),
        ("max_rel_stderr", max_rel_stderr),
    ):
        check_positive(name, v)
    if not (isinstance(min_r2, (int, float, np.floating, np.integer)) and min_r2 <= 1.0):
        raise ValueError(f"min_r2={min_r2!r} is out of range: must be a number <= 1 "
                         "(R^2 of each of h, y, w that a good fit reaches).")
    for name, v in (("max_steps", max_steps), ("max_iters", max_iters)):
        check_int(name, v, lo=1)
    check_bool("fit_initial", fit_initial)
    retries = tuple(int(b) for b in np.atleast_1d(np.asarray(retry_max_steps, dtype=np.int64)))
    if any(b <= a for a, b in zip(retries, retries[1:], strict=False)) or any(
        b < 1 for b in retries
    ):
        raise ValueError(
            f"retry_max_steps={retry_max_steps!r} is out of range: must be increasing "
            "integers >= 1."
        )
    retries = tuple(b for b in retries if b > int(max_steps))  # smaller ones add nothing
    scales = tuple(float(s) for s in np.atleast_1d(scales))
    check_positive("scales", np.asarray(scales))
    opts = _FitOpts(
        solve=_SolveOpts(float(rtol), float(atol), int(max_steps)),
        max_iters=int(max_iters),
        opt_rtol=float(opt_rtol),
        opt_atol=float(opt_atol),
        max_rel_stderr=float(max_rel_stderr),
        min_r2=float(min_r2),
        scales=scales,
        has_init=init is not None,
        fit_initial=bool(fit_initial),
    )
    f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    return (f64(ts_arr), Z_arr, f64(dx2_b), f64(dy2_b), f64(init_b), opts, single, retries,
            where_b)


def _with_retries(out: dict, opts: _FitOpts, retries: tuple[int, ...], refit) -> dict:
    """Fit again, with each larger step budget of ``retries`` in turn, the trials whose
    optimizer did not finish after an ODE solve ran out of steps (stiff trajectories).

    ``refit(rows, opts) -> dict`` fits the trials ``rows`` (indices) with ``opts``; their
    entries of ``out`` are replaced by the new fit (whose ``max_steps`` field says which
    budget produced it). Returns ``out`` unchanged (same arrays) when no trial needs it.
    """
    for budget in retries:
        rows = np.flatnonzero(
            np.asarray(out["step_budget_hit"]) & ~np.asarray(out["converged"])
        )
        if rows.size == 0:
            break
        again = refit(rows, opts._replace(solve=opts.solve._replace(max_steps=budget)))
        merged = {}
        for k, v in out.items():
            if v is None:
                merged[k] = None
                continue
            arr = np.array(v)  # a writable host copy
            arr[rows] = np.asarray(again[k])
            merged[k] = arr
        out = merged
    return out


def fit_rates(
    ts: Float[ArrayLike, " n_epochs"],
    Z: Float[ArrayLike, "*n_trials n_epochs 3"],
    *,
    dx2: Float[ArrayLike, "*n_trials"],
    dy2: Float[ArrayLike, "*n_trials"],
    init: Float[ArrayLike, "*n_trials 2"] | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    max_steps: int = 512,
    max_iters: int = 64,
    opt_rtol: float = 1e-6,
    opt_atol: float = 1e-4,
    max_rel_stderr: float = MAX_REL_STDERR,
    min_r2: float = MIN_R2,
    retry_max_steps: tuple[int, ...] = RETRY_MAX_STEPS,
    scales: tuple[float, ...] = (0.3, 1.0, 3.0),
    fit_initial: bool = False,
    return_trajectory: bool = True,
    where: Bool[ArrayLike, "*n_trials"] | None = None,
    mesh: Mesh | None = None,
) -> RateFit:
    """Fit the effective rates ``(eta_h, eta_y)`` to measured ``(h, y, w)`` trajectories.

    Minimizes the SSE of docs/theory.md section 11 over epochs of ``h``, ``y`` and ``w`` (all
    weighted equally, as there), the ODE of section 2 started from each trial's measured first
    point, by Levenberg-Marquardt in ``(log eta_h, log eta_y)`` with the Jacobian from
    forward-mode differentiation through the Diffrax solve. All trials are fitted in one
    compiled call (``vmap`` inside ``jit``); the program is compiled once per shape and option
    set and reused. On CPU, batches of 16 trials or more run as chunks of 8 trials (one
    compiled program for any batch size) from two threads per core.

    The trials are laid over the devices of ``mesh`` (default: every device of every process,
    after :func:`unijax.distributed.initialize`; on one device, as above). With several
    devices each fits its slice (on CPU as chunks of 8 trials one after another, elsewhere one
    ``vmap``) in one program compiled once for the mesh, without communication; every process
    passes the same host arrays and receives the whole result. Numbers equal the one-device
    ones up to how XLA vectorizes another program (seen on CPU: equal iteration counts and
    flags, rates within 1e-12 relative).

    Args:
        ts: epochs of the measurements, strictly increasing, shape ``(n_epochs,)``, the same
            for all trials (e.g. ``arange(n_epochs)``).
        Z: measured ``(h, y, w)``, shape ``(n_epochs, 3)`` for one trajectory or
            ``(n_trials, n_epochs, 3)``; ``h0 > 0``, ``y0 >= 0``; ``n_epochs >= 3``.
        dx2: squared input distance ``||x2 - x1||^2`` (> 0), scalar or ``(n_trials,)``.
        dy2: squared output distance ``||y2 - y1||^2`` (>= 0), scalar or ``(n_trials,)``.
        init: optional starting rates ``(eta_h, eta_y)`` (1/epoch, > 0), shape ``(2,)`` or
            ``(n_trials, 2)``; default: estimated from the data (integral matching and the
            invariant, see the module docstring), best of ``scales`` times each estimate.
        rtol, atol: ODE step-size tolerances used while fitting. Their error (~1e-7 of the
            variables' scale at the defaults) is far below any measurement noise.
        max_steps: ODE step budget per solve (~50-150 are used on typical trajectories at
            the default tolerances); a solve that runs out counts as failed: the optimizer
            rejects that step. Trials whose optimizer then does not finish are fitted again
            with the budgets of ``retry_max_steps``.
        retry_max_steps: increasing step budgets for those trials, tried in turn until none
            is left (default :data:`RETRY_MAX_STEPS`; ``()``: no retry; budgets not above
            ``max_steps`` are skipped). Stiff trajectories (fast dynamics, e.g. very large
            initial weights, that an explicit solver must follow with steps far below an
            epoch) need them; only the trials concerned are refitted, in the batch's
            compiled shape.
        max_iters: Levenberg-Marquardt iteration budget.
        opt_atol: convergence: the Gauss-Newton step from the best point is below this in
            every parameter (log-rates, so a relative accuracy of the rates; 1e-4 is ten
            times below the 0.1% asked of clean fits, far below noise-limited errors). Keep
            it well above the ODE tolerances: the solution is smooth in the rates only to
            ``~rtol``.
        opt_rtol: a step that lowers the SSE by less than this fraction makes no progress;
            six in a row stop the trial at a minimum, good or poor (``converged=True``, as
            SciPy's ``ftol`` stop), unless the ODE step budget limited it (then retried).
        max_rel_stderr: a trial is ``identified`` only when both relative standard errors
            ``stderr / eta`` are below this (default :data:`MAX_REL_STDERR` = 0.1).
        min_r2: a trial is a ``good_fit`` only when the R^2 of each of h, y, w (those not
            constant in the data) is at least this (default :data:`MIN_R2` = 0.9; <= 1).
        scales: factors applied to each data-based estimate before scoring (a tiny
            multi-start, evaluated in the same compiled call).
        fit_initial: also fit the initial state ``(h0, y0, w0)`` (three more parameters)
            instead of starting the ODE at the measured first point as section 11 does. With
            noisy data the measured first point carries the noise of one epoch into the whole
            trajectory and dominates the error of the rates; fitting it removes that (at about
            twice the cost per iteration). The SSE is then smaller than section 11's.
        return_trajectory: also return the fitted trajectory ``z_fit``.
        where: optional bool ``(n_trials,)``: fit only these trials. The others are neither
            checked nor fitted (they may hold NaN, e.g. diverged runs); they come back with
            status ``NOT_FITTED`` and NaN/False/0 fields. Any subset of a batch runs the
            batch's compiled program (padded with copies of a fitted trial).
        mesh: the devices to fit on (a ``jax.sharding.Mesh``; its devices are used as one
            axis). Default: all devices.

    Returns:
        :class:`RateFit`; per-trial fields have a leading ``(n_trials,)`` axis, absent when
        ``Z`` is one trajectory. ``status`` (:class:`FitStatus`) says per trial whether the
        rates are usable (``OK``) or why not; ``converged``, ``identified`` and ``good_fit``
        are the three criteria apart.

    Raises:
        ValueError: ``dx2 <= 0``, ``dy2 < 0``, NaN/inf in ``Z`` (naming trial and epoch),
            ``Z`` of the wrong shape, ``ts`` not strictly increasing or not matching ``Z``,
            ``h0 <= 0``, ``y0 < 0``, non-positive ``init``, bad options.
        RuntimeError: JAX's 64-bit mode is off.

    Example:
        >>> import jax; jax.config.update("jax_enable_x64", True)
        >>> import jax.numpy as jnp
        >>> from unijax import fit, theory
        >>> ts = jnp.arange(1000.0)
        >>> z0 = jnp.array([[0.02, 0.002, -0.02], [0.5, 0.1, -0.1]])
        >>> Z = jnp.stack([theory.solve(z, ts, eta_h=8e-3, eta_y=5e-3, dx2=1.0, dy2=0.5)
        ...                for z in z0])
        >>> res = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5)
        >>> res.eta_h.shape, int(res.n_failed)
        ((2,), 0)
    """
    _cache.enable_compilation_cache()  # later processes skip compiling
    ts_arr, Z_arr, dx2_b, dy2_b, init_b, opts, single, retries, where_b = _prepare_fit(
        ts, Z, dx2, dy2, init, where=where, caller="unijax.fit.fit_rates", rtol=rtol,
        atol=atol, max_steps=max_steps, max_iters=max_iters, opt_rtol=opt_rtol,
        opt_atol=opt_atol, max_rel_stderr=max_rel_stderr, min_r2=min_r2,
        retry_max_steps=retry_max_steps, scales=scales, fit_initial=fit_initial,
    )
    rt = check_bool("return_trajectory", return_trajectory)
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None; got {type(mesh).__name__}.")
    mesh = _batch.batch_mesh(None if mesh is None else list(mesh.devices.flat))
    n, n_epochs = Z_arr.shape[:2]
    batch = {"Z": Z_arr, "dx2": dx2_b, "dy2": dy2_b, "init": init_b}
    fitted = np.flatnonzero(where_b)
    if fitted.size == 0:
        return RateFit(**_squeeze(_not_fitted(None, fitted, n, n_epochs, rt), single))

    def fit_rows(rows, opts_):
        # Retries refit a few rows in the batch's own compiled shape (see _fit_rows).
        return _fit_rows(ts_arr, batch, fitted[rows], opts=opts_, return_trajectory=rt,
                         mesh=mesh, width=n)

    out = fit_rows(np.arange(fitted.size), opts)
    out = _with_retries(out, opts, retries, fit_rows)
    if fitted.size < n:
        out = _not_fitted(out, fitted, n, n_epochs, rt)
    return RateFit(**_squeeze(out, single))


# ---------------------------------------------------------------------------------------------
# The third rate: eta_mean from the loss curve (section 3)
# ---------------------------------------------------------------------------------------------


class _MeanOpts(NamedTuple):
    max_iters: int
    opt_rtol: float
    opt_atol: float
    max_rel_stderr: float
    n_grid: int


def _fit_mean_one(ts, loss, z, dy2, m0_given, opts: _MeanOpts):
    """Fit ``eta_mean`` (and ``m0`` where ``m0_given`` is NaN) to one loss curve.

    Whether ``m0`` is fitted is data, not a static option, so given and fitted ``m0`` share
    one compiled program.
    """
    fit_m0 = jnp.isnan(m0_given)
    t = ts - ts[0]
    # What the mean output must explain: L - 1/4 (w + 1/2 (dy2 - y)) = 1/2 m0 e^{-2 eta t}.
    target = loss - 0.25 * (z[:, 2] + 0.5 * (dy2 - z[:, 1]))

    def m0_of(log_eta):
        # m0 enters linearly: for given eta its least-squares value is closed-form (variable
        # projection), clipped at 0 (m0 is a squared distance).
        e = 0.5 * jnp.exp(-2.0 * jnp.exp(log_eta) * t)
        best = jnp.maximum(jnp.dot(e, target) / jnp.maximum(jnp.dot(e, e), 1e-300), 0.0)
        return jnp.where(fit_m0, best, m0_given)

    def residuals(log_eta):
        log_eta = log_eta[0]
        return 0.5 * m0_of(log_eta) * jnp.exp(-2.0 * jnp.exp(log_eta) * t) - target

    # Start: the best of a log grid spanning decay times from 1/1000 to 1000 durations.
    duration = jnp.maximum(t[-1], 1e-12)
    grid = jnp.linspace(jnp.log(1e-3 / duration), jnp.log(1e3 / duration), opts.n_grid)
    sse_grid = jax.vmap(lambda le: jnp.sum(residuals(le[None]) ** 2))(grid)
    start = grid[jnp.argmin(jnp.where(jnp.isfinite(sse_grid), sse_grid, jnp.inf))]

    def evaluate(p):
        jac, r = jax.jacfwd(lambda q: (residuals(q), residuals(q)), has_aux=True)(p)
        sse = jnp.sum(r**2)
        ok = jnp.isfinite(sse) & jnp.all(jnp.isfinite(jac))
        return jnp.where(ok, sse, jnp.inf), jac.T @ jac, jac.T @ r, ()

    lm = _levenberg_marquardt(
        evaluate,
        start[None, None],
        max_iters=opts.max_iters,
        xtol=opts.opt_atol,
        ftol=opts.opt_rtol,
    )
    log_eta = lm.p[0]
    eta = jnp.exp(log_eta)
    m0 = m0_of(log_eta)
    e = 0.5 * jnp.exp(-2.0 * eta * t)
    r = m0 * e - target
    sse = jnp.sum(r**2)
    n = ts.shape[0]
    # Gauss-Newton covariance in (log eta, m0): dr/dlog eta = -2 eta t m0 e, dr/dm0 = e.
    j_eta = -2.0 * eta * t * m0 * e
    jj = jnp.dot(j_eta, j_eta)
    inv, pos_def2 = _inv_psd(jnp.stack([j_eta, e], 1).T @ jnp.stack([j_eta, e], 1))
    var_log_eta = jnp.where(fit_m0, sse / (n - 2) * inv[0, 0], sse / (n - 1) / jj)
    se_m0 = jnp.where(fit_m0, jnp.sqrt(sse / (n - 2) * inv[1, 1]), 0.0)
    pos_def = jnp.where(fit_m0, pos_def2, jj > 0)
    rel_se = jnp.sqrt(var_log_eta)
    loss_fit = theory.loss_curve(ts, z, eta_mean=eta, dy2=dy2, m0=m0)
    ss_tot = jnp.sum((loss - jnp.mean(loss)) ** 2)
    r2 = jnp.where(ss_tot > 0, 1.0 - sse / jnp.where(ss_tot > 0, ss_tot, 1.0), jnp.nan)
    converged = (
        lm.converged
        & jnp.isfinite(eta)
        & jnp.isfinite(sse)
        & (m0 > 0)
        & pos_def
        & (rel_se < opts.max_rel_stderr)
    )
    return dict(
        eta_mean=eta,
        m0=m0,
        stderr_eta_mean=eta * rel_se,
        stderr_m0=se_m0,
        sse=sse,
        r2=r2,
        converged=converged,
        n_iters=lm.n_iter,
        loss_fit=loss_fit,
    )


@functools.partial(jax.jit, static_argnames=("opts",))
def _fit_mean_batch(ts, loss, z, dy2, m0, *, opts: _MeanOpts):
    return jax.vmap(lambda li, zi, di, mi: _fit_mean_one(ts, li, zi, di, mi, opts))(
        loss, z, dy2, m0
    )


def fit_eta_mean(
    ts: Float[ArrayLike, " n_epochs"],
    loss: Float[ArrayLike, "*n_trials n_epochs"],
    z: Float[ArrayLike, "*n_trials n_epochs 3"],
    *,
    dy2: Float[ArrayLike, "*n_trials"],
    m0: Float[ArrayLike, "*n_trials"] | None = None,
    max_iters: int = 64,
    opt_rtol: float = 1e-12,
    opt_atol: float = 1e-8,
    max_rel_stderr: float = 0.1,
) -> MeanFit:
    """Fit the third rate ``eta_mean`` to training-loss curves, docs/theory.md section 3 (Eq. 9).

    With ``(h, y, w)`` known (typically ``RateFit.z_fit`` from :func:`fit_rates`), the loss is

        L(t) = 1/2 m0 exp(-2 eta_mean (t - ts[0]))  +  1/4 (w + 1/2 (dy2 - y)),

    so ``L - 1/4 (w + 1/2 (dy2 - y))`` is a pure exponential. ``m0`` (the initial squared
    error of the mean output, ``>= 0``) is fitted too when not given, in closed form for each
    ``eta_mean`` (variable projection). The start is the best point of a log grid, then
    Levenberg-Marquardt in ``log eta_mean``. No ODE solve is involved: this is cheap.

    Args:
        ts: epochs, strictly increasing, shape ``(n_epochs,)``.
        loss: training loss (``0.5 * mean squared error`` over the two points), shape
            ``(n_epochs,)`` or ``(n_trials, n_epochs)``.
        z: ``(h, y, w)`` at ``ts``, shape ``(n_epochs, 3)`` or ``(n_trials, n_epochs, 3)``.
        dy2: squared output distance (>= 0), scalar or ``(n_trials,)``.
        m0: ``||ybar - gbar(0)||^2`` (>= 0), scalar or ``(n_trials,)``; fitted when None.
        max_iters, opt_rtol, opt_atol: Levenberg-Marquardt budget and tolerances (as in
            :func:`fit_rates`; ``opt_atol`` bounds the last step in ``log eta_mean``).
        max_rel_stderr: ``converged`` requires ``stderr_eta_mean / eta_mean`` below this.

    Returns:
        :class:`MeanFit` (leading ``(n_trials,)`` axis absent for one curve). A curve whose
        mean part is absent (``m0 = 0``) does not determine ``eta_mean``: ``converged=False``.

    Raises:
        ValueError: shapes that do not match, non-finite values, ``ts`` not strictly
            increasing, ``dy2 < 0``, ``m0 < 0``.

    Example:
        >>> import jax; jax.config.update("jax_enable_x64", True)
        >>> import jax.numpy as jnp
        >>> from unijax import fit, theory
        >>> ts = jnp.arange(1000.0)
        >>> z = theory.solve(jnp.array([0.02, 0.002, -0.02]), ts,
        ...                  eta_h=8e-3, eta_y=5e-3, dx2=1.0, dy2=0.5)
        >>> loss = theory.loss_curve(ts, z, eta_mean=3e-3, dy2=0.5, m0=0.4)
        >>> res = fit.fit_eta_mean(ts, loss, z, dy2=0.5)
        >>> round(float(res.eta_mean), 6), round(float(res.m0), 6)
        (0.003, 0.4)
    """
    check_x64("unijax.fit.fit_eta_mean")
    if not is_concrete((ts, loss, z, dy2, m0)):
        raise ValueError("fit_eta_mean is a jitted entry point; call it with concrete arrays.")
    loss_arr = np.asarray(loss, dtype=float)
    z_arr = np.asarray(z, dtype=float)
    single = loss_arr.ndim == 1
    if loss_arr.ndim not in (1, 2):
        raise ValueError(
            f"loss must have shape (n_epochs,) or (n_trials, n_epochs); got {loss_arr.shape}."
        )
    if single:
        loss_arr, z_arr = loss_arr[None], z_arr[None]
    n_trials, n_epochs = loss_arr.shape
    if z_arr.shape != (n_trials, n_epochs, 3):
        raise ValueError(
            f"z must have shape {(n_epochs, 3) if single else (n_trials, n_epochs, 3)} "
            f"(h, y, w at the loss's epochs); got {np.asarray(z).shape}."
        )
    if n_epochs < 3:
        raise ValueError(f"loss needs at least 3 epochs; got {n_epochs}.")
    check_finite("loss", loss_arr)
    check_finite("z", z_arr)
    ts_arr = _check_ts_for(ts, n_epochs, "loss")
    check_positive("dy2", dy2, allow_zero=True)
    dy2_b = _as_batch("dy2", dy2, n_trials)
    if m0 is None:
        m0_b = np.full(n_trials, np.nan)  # NaN: fit m0 (see _fit_mean_one)
    else:
        check_positive("m0", m0, allow_zero=True)
        m0_b = _as_batch("m0", m0, n_trials)
    for name, v in (
        ("opt_rtol", opt_rtol),
        ("opt_atol", opt_atol),
        ("max_rel_stderr", max_rel_stderr),
    ):
        check_positive(name, v)
    check_int("max_iters", max_iters, lo=1)
    opts = _MeanOpts(int(max_iters), float(opt_rtol), float(opt_atol), float(max_rel_stderr), 61)
    out = _fit_mean_batch(
        jnp.asarray(ts_arr),
        jnp.asarray(loss_arr),
        jnp.asarray(z_arr),
        jnp.asarray(dy2_b),
        jnp.asarray(m0_b),
        opts=opts,
    )
    return MeanFit(**_squeeze(out, single))
