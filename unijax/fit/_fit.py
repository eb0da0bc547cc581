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
  ``vmap``-ed over trials inside one ``jit`` (on CPU, every batch of two or more trials runs
  as chunks of 8, the last padded, from two threads per core: one program for any batch size,
  both cores busy). It is two programs, the optimizer and the assessment of its optimum,
  which a first fit compiles side by side; on CPU with XLA's older loop emitters, and for a
  single trajectory without the ``vmap`` and without LLVM's optimisation, which compile in a
  third of the time (docs/benchmarks.md, "What cut the cold first fit").
* **One program for every length, compiled once per machine.** The epochs are padded to a
  length bucket with per-epoch weights 0 on the padding (:mod:`unijax.fit._args`), so
  lengths 2945 to 3456 run one compiled program (four buckets per doubling), and the fit
  equals the unpadded one to round-off. JAX's persistent compilation cache (over a private
  directory only, :mod:`unijax._cache`) spares a later process the compilation; nothing
  traced is read back from disk.
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

The implementation lives in private modules of one idea each: the arguments, options and
length buckets (``_args``), the ODE model and its Jacobian (``_model``), the starting
estimates (``_start``), the Levenberg-Marquardt loop (``_lm``), standard errors, R^2
and status (``_stats``), the compiled per-trial fit (``_program``), running it (program
cache, chunks, devices, retries: ``_run``) and the loss-curve fit (``_mean``). This
module is the public surface. They are imported on the first fit, not with this module.

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

import inspect
import warnings
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from unijax import _batch, _cache
from unijax._checks import (
    as_real_array,
    check_bool,
    check_finite,
    check_int,
    check_positive,
    check_x64,
    is_concrete,
)
from unijax.fit import _args as _fit_args
from unijax.fit import _run as _fit_run
from unijax.fit._options import (
    MAX_REL_STDERR,
    MIN_R2,
    RETRY_MAX_STEPS,
    OptimizerOptions,
    SolverOptions,
    merge,
)
from unijax.fit._status import FitStatus, status_counts
from unijax.results import _files as results
from unijax.results._keep import Keepable, json_number

# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------




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
        good_fit: the R^2 of each of h, y, w (those that vary in the data; at least one
            must, else nothing was fitted) is at least ``min_r2`` (default :data:`MIN_R2`).
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
        return results.to_xarray(self, grid=grid, ts=ts)

    def to_dataframe(self, *, grid=None):
        """Tidy ``pandas.DataFrame``, a row per trial (see :func:`unijax.results.to_dataframe`)."""
        return results.to_dataframe(self, grid=grid)

    def summary_dict(self) -> dict:
        """The numbers of :meth:`summary` as a JSON-ready dict (NaN written as ``None``)."""
        use = np.atleast_1d(np.asarray(self.usable))
        m = self.mean_over_usable()
        r2 = np.atleast_2d(np.asarray(self.r2))[use]
        count = lambda x: int(np.sum(np.asarray(x)))  # noqa: E731
        return {
            "type": "RateFit", "n_trials": int(use.size), "n_usable": int(use.sum()),
            "n_converged": count(self.converged), "n_identified": count(self.identified),
            "n_good_fit": count(self.good_fit), "status_counts": self.status_counts(),
            "eta_h_mean": json_number(m.eta_h), "eta_y_mean": json_number(m.eta_y),
            "eta_h_std": json_number(m.std_eta_h), "eta_y_std": json_number(m.std_eta_y),
            "median_r2": dict(zip("hyw", (json_number(v) for v in np.nanmedian(r2, axis=0)),
                                  strict=True)) if use.any() else None,
        }

    def labelled_arrays(self, *, grid=None, ts=None) -> tuple[dict, dict, dict]:
        """``({name: (dims, values)}, coords, attrs)``, NumPy only: what
        :func:`unijax.results.to_xarray` labels. Dims ``trial`` (or ``gain, seed[, layer]``
        given the ``grid`` TrainResult that was fitted), ``epoch`` (``ts``, default
        ``0 .. n - 1``), ``variable``."""
        single = np.ndim(self.eta_h) == 0
        dims, coords = ([], {}) if single else _grid_dims(grid)
        shape = tuple(len(coords[d]) for d in dims) if grid is not None else None

        def lead(a):
            a = np.asarray(a)
            return a if shape is None or single else a.reshape(shape + a.shape[1:])

        if grid is not None and not single and int(np.prod(shape)) != self.n_trials:
            raise ValueError(f"grid has {int(np.prod(shape))} trials ({dims}), the fit "
                             f"{self.n_trials}")
        out = {k: (dims, lead(getattr(self, k))) for k in (
            "eta_h", "eta_y", "stderr_eta_h", "stderr_eta_y", "sse", "status", "converged",
            "identified", "good_fit", "ode_ok", "step_budget_hit", "max_steps", "n_iters",
            "n_ode_steps")}
        out["r2"] = (dims + ["variable"], lead(self.r2))
        out["z0_fit"] = (dims + ["variable"], lead(self.z0_fit))
        coords["variable"] = ["h", "y", "w"]
        if self.z_fit is not None:
            out["z_fit"] = (dims + ["epoch", "variable"], lead(self.z_fit))
            n_ep = np.shape(self.z_fit)[-2]
            coords["epoch"] = np.arange(n_ep) if ts is None else np.asarray(ts)
        return out, coords, {"rate_unit": "1/epoch", "time_unit": "epoch"}


def _grid_dims(grid) -> tuple[list[str], dict]:
    """Leading dims of a per-trial array: ``trial``, or the grid's ``gain, seed[, layer]``."""
    if grid is None:
        return ["trial"], {}
    dims = ["gain", "seed"] + (["layer"] if grid.layer_axis else [])
    coords = {"gain": np.asarray(grid.gains), "seed": np.asarray(grid.seeds)}
    if grid.layer_axis:
        coords["layer"] = list(grid.layers)
    return dims, coords


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

    def summary_dict(self) -> dict:
        """The numbers of :meth:`summary` as a JSON-ready dict (NaN written as ``None``)."""
        conv = np.atleast_1d(np.asarray(self.converged))
        mean, sd, n = self.mean_over_converged()
        return {
            "type": "MeanFit", "n_trials": int(conv.size), "n_converged": int(n),
            "eta_mean_mean": json_number(mean), "eta_mean_std": json_number(sd),
            "median_r2": json_number(np.nanmedian(np.atleast_1d(np.asarray(self.r2))[conv]))
            if conv.any() else None,
        }


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _defaults(fn) -> dict:
    """The keyword defaults of ``fn`` (what a flat keyword left alone holds)."""
    return {k: v.default for k, v in inspect.signature(fn).parameters.items()
            if v.default is not inspect.Parameter.empty}


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
    solver: SolverOptions | None = None,
    optimizer: OptimizerOptions | None = None,
) -> RateFit:
    """Fit the effective rates ``(eta_h, eta_y)`` to measured ``(h, y, w)`` trajectories.

    Minimizes the SSE of docs/theory.md section 11 over epochs of ``h``, ``y`` and ``w`` (all
    weighted equally, as there), the ODE of section 2 started from each trial's measured first
    point, by Levenberg-Marquardt in ``(log eta_h, log eta_y)`` with the Jacobian from
    forward-mode differentiation through the Diffrax solve. All trials are fitted in one
    compiled call (``vmap`` inside ``jit``); the program is compiled once per shape and option
    set and reused; trajectory lengths share a program by buckets (four per doubling, at least
    128 epochs), and JAX's cache keeps the compilation for later processes. On CPU, every batch of
    two trials or more runs as chunks of 8 trials, the last padded with copies (one compiled
    program for any batch size), from two threads per core; a single trial runs alone.

    The trials are laid over the devices of ``mesh`` (default: every device of every process,
    after :func:`unijax.distributed.initialize`; on one device, as above). CPU devices of one
    process share its cores: their trials run as on one device, the first. Otherwise each
    device fits its slice (on CPU as chunks of 8 trials one after another, elsewhere one
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
        solver: ``rtol``, ``atol``, ``max_steps``, ``retry_max_steps`` as one
            :class:`SolverOptions`, in place of those keywords.
        optimizer: ``max_iters``, ``opt_rtol``, ``opt_atol``, ``max_rel_stderr``, ``min_r2``,
            ``scales`` as one :class:`OptimizerOptions`, in place of those keywords. A
            setting given both as a keyword and in an options object is refused.

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
    # The option objects, where given, in place of the flat keywords (a field given both ways
    # is refused).
    defaults = _defaults(fit_rates)
    sv = merge("solver", solver, SolverOptions, dict(
        rtol=rtol, atol=atol, max_steps=max_steps, retry_max_steps=retry_max_steps), defaults)
    rtol, atol, max_steps, retry_max_steps = (sv["rtol"], sv["atol"], sv["max_steps"],
                                              sv["retry_max_steps"])
    op = merge("optimizer", optimizer, OptimizerOptions, dict(
        max_iters=max_iters, opt_rtol=opt_rtol, opt_atol=opt_atol,
        max_rel_stderr=max_rel_stderr, min_r2=min_r2, scales=scales), defaults)
    max_iters, opt_rtol, opt_atol = op["max_iters"], op["opt_rtol"], op["opt_atol"]
    max_rel_stderr, min_r2, scales = op["max_rel_stderr"], op["min_r2"], op["scales"]
    ts_arr, Z_arr, dx2_b, dy2_b, init_b, opts, single, retries, where_b = _fit_args.prepare_fit(
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
    fields = RateFit.__dataclass_fields__
    fitted = np.flatnonzero(where_b)
    if fitted.size == 0:
        return RateFit(**_fit_run.squeeze(
            _fit_run.not_fitted(None, fitted, n, n_epochs, rt, fields), single))
    # Every length of a bucket runs one program: epochs padded, with weights (_fit_args).
    grid = _fit_args.make_grid(ts_arr)
    batch = {"Z": _fit_args.pad_epochs(Z_arr, grid.ts.shape[0]), "dx2": dx2_b, "dy2": dy2_b,
             "init": init_b}

    def fit_rows(rows, opts_):
        # Retries refit a few rows in the batch's own compiled shape (see _fit_run.fit_rows).
        return _fit_run.fit_rows(grid, batch, fitted[rows], opts=opts_, return_trajectory=rt,
                                 mesh=mesh, width=n)

    out = fit_rows(np.arange(fitted.size), opts)
    out = _fit_run.with_retries(out, opts, retries, fit_rows)
    if rt:
        out["z_fit"] = out["z_fit"][:, :n_epochs]  # the padding cut off
    if fitted.size < n:
        out = _fit_run.not_fitted(out, fitted, n, n_epochs, rt, fields)
    return RateFit(**_fit_run.squeeze(out, single))


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
    where: Bool[ArrayLike, "*n_trials"] | None = None,
    optimizer: OptimizerOptions | None = None,
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
        optimizer: the four settings above as one :class:`OptimizerOptions` (its
            ``max_iters``, ``opt_rtol``, ``opt_atol``, ``max_rel_stderr``; ``min_r2`` and
            ``scales`` are the rate fit's), in place of the flat keywords.
        where: optional bool ``(n_trials,)``: fit only these curves; the others are neither
            checked nor fitted (they may hold NaN) and come back NaN, ``converged=False``,
            ``n_iters=0``. On CPU every batch of two or more curves runs as chunks of 8 (one
            compiled program for any batch size), as :func:`fit_rates`.

    Returns:
        :class:`MeanFit` (leading ``(n_trials,)`` axis absent for one curve). A curve whose
        mean part is absent (``m0 = 0``) does not determine ``eta_mean``: ``converged=False``.

    Raises:
        ValueError: shapes that do not match, non-finite values, ``ts`` not strictly
            increasing, ``dy2 < 0``, ``m0 < 0`` (in the curves ``where`` selects).

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
    # Imported on first use: it imports the theory and Diffrax, which a rate fit loaded from
    # disk never needs (import unijax.fit stays light).
    from unijax.fit import _mean as _fit_mean

    check_x64("unijax.fit.fit_eta_mean")
    op = merge("optimizer", optimizer, OptimizerOptions, dict(
        max_iters=max_iters, opt_rtol=opt_rtol, opt_atol=opt_atol,
        max_rel_stderr=max_rel_stderr), _defaults(fit_eta_mean))
    max_iters, opt_rtol, opt_atol = op["max_iters"], op["opt_rtol"], op["opt_atol"]
    max_rel_stderr = op["max_rel_stderr"]
    if not is_concrete((ts, loss, z, dy2, m0)):
        raise ValueError("fit_eta_mean is a jitted entry point; call it with concrete arrays.")
    loss_arr = as_real_array("loss", loss).astype(float)
    z_arr = as_real_array("z", z).astype(float)
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
    ts_arr = _fit_args.check_ts_for(ts, n_epochs, "loss")
    sel = _fit_args.check_where(where, n_trials, single)
    rows = np.flatnonzero(sel)
    check_finite("loss", loss_arr[rows])
    check_finite("z", z_arr[rows])
    dy2_b = _fit_args.as_batch("dy2", dy2, n_trials)
    check_positive("dy2", dy2_b[rows], allow_zero=True)
    if m0 is None:
        m0_b = np.full(n_trials, np.nan)  # NaN: fit m0 (see _fit_mean_one)
    else:
        m0_b = _fit_args.as_batch("m0", m0, n_trials)
        check_positive("m0", m0_b[rows], allow_zero=True)
    for name, v in (
        ("opt_rtol", opt_rtol),
        ("opt_atol", opt_atol),
        ("max_rel_stderr", max_rel_stderr),
    ):
        check_positive(name, v)
    check_int("max_iters", max_iters, lo=1)
    opts = _fit_mean.MeanOpts(int(max_iters), float(opt_rtol), float(opt_atol),
                              float(max_rel_stderr), 61)
    out = _fit_mean.fit_rows(jnp.asarray(ts_arr), {"loss": loss_arr, "z": z_arr, "dy2": dy2_b,
                                                    "m0": m0_b}, rows, opts=opts)
    return MeanFit(**_fit_run.squeeze(out, single))
