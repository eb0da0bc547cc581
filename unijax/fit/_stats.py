"""What a rate fit's optimum says: R^2, standard errors, and the per-trial flags and status
(private).

Standard errors come from the Gauss-Newton approximation of the Hessian at the optimum,
``cov(log eta) = sigma^2 (J^T J)^{-1}``, mapped to the rates by the delta method, plus the
propagated noise of the measured first point, which the ODE starts from and which dominates the
error of noisy fits (with ``fit_initial=True`` the initial state is fitted instead and its
uncertainty is part of ``J^T J``). Sums over epochs skip padded ones (weight 0, see
:mod:`unijax.fit._args`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unijax.fit._args import FitOpts, SolveOpts
from unijax.fit._lm import LMState, inv_psd
from unijax.fit._model import Trial, model, start_scale, subsample, unpack
from unijax.fit._status import FitStatus

__all__ = ["assess", "covariance", "r2"]


def r2(Z, ys, weight):
    """R^2 of h, y, w ``(3,)`` over the epochs of ``weight`` 1, and whether each varies
    ``(3,)``: R^2 is NaN for a variable that is constant in the data.

    Constant means a total sum of squares within what rounding can leave of a constant: the
    data are shifted by their first epoch (a constant then sums to exactly 0), and a sum
    ``<= n (eps n max|z|)^2`` (the bound of the error of the mean of ``n`` terms, squared,
    times ``n``) counts as 0.
    """
    w = weight[:, None]
    n = jnp.sum(weight)
    shifted = Z - Z[:1]
    mean = jnp.sum(w * shifted, axis=0) / n
    ss_res = jnp.sum(w * (Z - ys) ** 2, axis=0)
    ss_tot = jnp.sum(w * (shifted - mean) ** 2, axis=0)
    scale = jnp.max(w * jnp.abs(Z), axis=0)
    tol = n * (jnp.finfo(Z.dtype).eps * n * scale) ** 2
    varies = ss_tot > tol
    return jnp.where(varies, 1.0 - ss_res / jnp.where(varies, ss_tot, 1.0), jnp.nan), varies


def start_noise(Z, weight, n_head: int = 32):
    """Noise standard deviation of h, y, w near the first epoch, shape ``(3,)``.

    From second differences of the first ``n_head`` epochs: for a trajectory that is smooth on
    the scale of an epoch, ``Z[t+1] - 2 Z[t] + Z[t-1]`` is noise with variance ``6 sigma^2``.
    Local, so multiplicative noise on a small starting point is not overstated. A difference
    that reaches a padded epoch does not count.
    """
    head = Z[: min(n_head, Z.shape[0])]
    d2 = head[2:] - 2.0 * head[1:-1] + head[:-2]
    w = weight[2 : head.shape[0]][:, None]
    return jnp.sqrt(jnp.sum(w * d2**2, axis=0) / jnp.sum(w) / 6.0)


def _covariance_fitted_start(hess, sse, n_epochs):
    """Covariance of ``(log eta_h, log eta_y)`` with the initial state fitted: the ``2x2``
    block of ``sigma^2 (J^T J)^{-1}`` over all five parameters, ``sigma^2 = SSE / (3n - 5)``.
    """
    inv, ok = inv_psd(hess)
    return sse / (3 * n_epochs - 5) * inv[:2, :2], ok


def start_sensitivity(p, trial: Trial, opts: SolveOpts, ys, jac, sub_idx, sub_w,
                      step: float = 1e-4):
    """``J_r^T J_q`` ``(2, 3)``: how the residuals' rate directions couple to a shift of the
    (measured, not fitted) initial state, ``q`` as in :func:`unijax.fit._model.unpack`.

    Only the standard errors use it, so it is cheap rather than exact: ``J_q`` by forward
    differences of three plain solves (a step of ``1e-4`` in ``q``; the adaptive mesh's
    jitter, ~``rtol``, stays ~1e-3 of the difference), and the sum over epochs taken on the
    epochs ``sub_idx`` (weights ``sub_w``: at most 256 measured epochs, evenly spread), scaled
    up (the summands are smooth in time).
    """
    sub = subsample(trial, sub_idx, sub_w)
    rows = (3 * sub_idx[:, None] + jnp.arange(3)[None, :]).reshape(-1)

    def column(dq):
        shifted, _, _, _ = model(jnp.concatenate([p, dq]), sub, opts)
        return ((shifted - ys[sub_idx]) / step * sub_w[:, None]).reshape(-1)

    j_start = jax.vmap(column)(step * jnp.eye(3, dtype=p.dtype))  # (3, 3 n_sub)
    return (j_start @ jac[rows]).T * (trial.n_epochs() / jnp.sum(sub_w))


def _covariance_measured_start(hess, cross, sse, trial: Trial, z0):
    """Covariance of ``(log eta_h, log eta_y)`` with the ODE started at the measured point.

    ``hess = J_r^T J_r`` ``(2, 2)`` in the log-rates; ``cross = J_r^T J_q`` ``(2, 3)`` with
    the initial-state parameters ``q``. ``sigma^2 = SSE / (3 (n - 1) - 2)`` (the first epoch's
    residuals vanish by construction). The first point's own noise moves the estimate too: to
    first order ``d(log eta) = -G dz0``, ``G = (J_r^T J_r)^{-1} J_r^T J_z``, so
    ``cov = sigma^2 (J_r^T J_r)^{-1} + G S G^T`` with ``S`` the first point's noise
    covariance (diagonal, from :func:`start_noise`).
    """
    sigma2 = sse / (3 * (trial.n_epochs() - 1) - 2)
    # dz0/dq = diag(h0, s_y, s_w): back to the natural units of z0, then times its noise.
    dz_dq = jnp.concatenate([z0[:1], start_scale(trial)])
    inv, ok = inv_psd(hess)
    g = inv @ (cross / dz_dq * start_noise(trial.Z, trial.w()))
    return sigma2 * inv + g @ g.T, ok


def covariance(lm: LMState, trial: Trial, opts: FitOpts, sens_idx, sens_w):
    """``(cov of (log eta_h, log eta_y) (2, 2), J^T J positive definite)`` at the optimum
    ``lm`` (the loop's last accepted evaluation)."""
    ys, _, jac, _ = lm.aux
    if opts.fit_initial:
        return _covariance_fitted_start(lm.hess, lm.sse, trial.n_epochs())
    _, z0 = unpack(lm.p, trial)
    cross = start_sensitivity(lm.p, trial, opts.solve, ys, jac, sens_idx, sens_w)
    return _covariance_measured_start(lm.hess, cross, lm.sse, trial, z0)


def assess(lm: LMState, trial: Trial, opts: FitOpts, cov, pos_def) -> dict:
    """One trial's result fields (the per-trial arrays of :class:`unijax.fit.RateFit`) from
    the optimizer's final state ``lm`` and the covariance: the three criteria kept apart
    (converged, identified, good fit), the status naming the first that fails, and NaN rates
    where the optimizer did not finish."""
    sse, (ys, steps, _, _) = lm.sse, lm.aux
    log_rates, z0 = unpack(lm.p, trial)
    start = lm.p_start[:2]
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
    r2_, varies = r2(trial.Z, ys, trial.w())
    r2_ = jnp.where(ode_ok, r2_, jnp.nan)
    # A variable that is constant in the data has no variance to explain: it does not count;
    # a trajectory in which nothing varies has nothing fitted, so it is not a good fit.
    good_fit = ode_ok & jnp.any(varies) & jnp.all(jnp.where(varies, r2_ >= opts.min_r2, True))
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
        r2=r2_,
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
