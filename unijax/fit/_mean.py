"""The third rate, ``eta_mean``, fitted to a training-loss curve (private; the compiled program
of :func:`unijax.fit.fit_eta_mean`).

With ``(h, y, w)`` known, ``L - 1/4 (w + 1/2 (dy2 - y))`` is ``1/2 m0 exp(-2 eta_mean t)``
(docs/theory.md section 3): ``m0`` by variable projection, a log grid for the start, then
Levenberg-Marquardt in ``log eta_mean``. No ODE solve.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unijax import _batch, theory
from unijax.fit._lm import inv_psd, levenberg_marquardt

__all__ = ["MeanOpts", "fit_mean_batch", "fit_mean_one", "fit_rows"]


class MeanOpts(NamedTuple):
    max_iters: int
    opt_rtol: float
    opt_atol: float
    max_rel_stderr: float
    n_grid: int


def fit_mean_one(ts, loss, z, dy2, m0_given, opts: MeanOpts):
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

    lm = levenberg_marquardt(
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
    inv, pos_def2 = inv_psd(jnp.stack([j_eta, e], 1).T @ jnp.stack([j_eta, e], 1))
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
def fit_mean_batch(ts, loss, z, dy2, m0, *, opts: MeanOpts):
    return jax.vmap(lambda li, zi, di, mi: fit_mean_one(ts, li, zi, di, mi, opts))(
        loss, z, dy2, m0
    )


def fit_rows(ts, batch: dict, rows: np.ndarray, *, opts: MeanOpts) -> dict:
    """The curves ``rows`` of ``batch`` (host arrays ``loss (n, m)``, ``z (n, m, 3)``, ``dy2``,
    ``m0 (n,)``) fitted as :func:`unijax._batch.cpu_chunking`'s chunks on this process's first
    device; the other curves NaN, ``converged`` False, ``n_iters`` 0. Host arrays ``(n, ...)``."""
    n, m = batch["loss"].shape
    out = {k: np.full(n, np.nan) for k in ("eta_mean", "m0", "stderr_eta_mean", "stderr_m0",
                                          "sse", "r2")}
    out.update(converged=np.zeros(n, bool), n_iters=np.zeros(n, np.int32),
               loss_fit=np.full((n, m), np.nan))
    if rows.size == 0:
        return out
    device = jax.local_devices()[0]  # this process's (in a multi-process run, each fits alike)
    size, threads = _batch.cpu_chunking(n, device.platform)
    got = _batch.map_chunks(
        lambda b: fit_mean_batch(ts, b["loss"], b["z"], b["dy2"], b["m0"], opts=opts),
        {k: v[rows] for k, v in batch.items()}, size=size, threads=threads, device=device,
        label="loss fit")
    for k, v in got.items():
        out[k] = out[k].astype(v.dtype)
        out[k][rows] = v
    return out

