"""Levenberg-Marquardt for small least-squares problems, batched by ``vmap`` (private).

The loop of :func:`unijax.fit.fit_rates` and :func:`unijax.fit.fit_eta_mean`: a
``lax.while_loop`` that evaluates the model exactly once per iteration (one call site, so the
ODE solve inside it is compiled once), moves on to the next start while no evaluation has
succeeded, and stops early on a stall. Its dense linear algebra (equilibrated Cholesky of
``k x k`` matrices, ``k <= 5``) lives here too. It measured faster than Optimistix's
Levenberg-Marquardt on the rate fit (``benchmarks/bench_lm.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array

__all__ = ["LMState", "inv_psd", "levenberg_marquardt", "solve_spd"]


def _cholesky(a):
    """Lower Cholesky factor of a small symmetric matrix, as rows of scalars, unrolled.

    Written out rather than ``jnp.linalg.cholesky`` so that the compiled fit calls no LAPACK
    kernel (whose start-up costs a SciPy import, ~0.3 s, in a fresh process); for ``k <= 5``
    it is also cheaper under ``vmap``. A matrix that is not positive definite gives NaN (the
    square root of a negative pivot), as LAPACK's does.
    """
    k = a.shape[0]
    low = [[None] * k for _ in range(k)]
    for j in range(k):
        pivot = a[j, j] - sum((low[j][m] ** 2 for m in range(j)), jnp.zeros((), a.dtype))
        low[j][j] = jnp.sqrt(pivot)
        for i in range(j + 1, k):
            dot = sum((low[i][m] * low[j][m] for m in range(j)), jnp.zeros((), a.dtype))
            low[i][j] = (a[i, j] - dot) / low[j][j]
    return low


def _cho_solve(low, b):
    """Solve ``L L^T x = b`` by forward and back substitution (``b``: ``(k,)`` or ``(k, m)``)."""
    k = len(low)
    y = []
    for i in range(k):
        y.append((b[i] - sum((low[i][m] * y[m] for m in range(i)), jnp.zeros_like(b[i])))
                 / low[i][i])
    x = [None] * k
    for i in reversed(range(k)):
        x[i] = (y[i] - sum((low[m][i] * x[m] for m in range(i + 1, k)), jnp.zeros_like(b[i]))
                ) / low[i][i]
    return jnp.stack(x)


def solve_spd(a, b):
    """Solve ``a x = b`` for a small symmetric positive-definite ``a``, with a flag.

    Cholesky after equilibrating by the diagonal (the parameters' curvatures differ by orders
    of magnitude). ``ok`` is False (and ``x`` NaN) when ``a`` is not numerically positive
    definite.
    """
    diag = jnp.diag(a)
    d = jnp.sqrt(jnp.where(diag > 0, diag, 1.0))
    scale = d if b.ndim == 1 else d[:, None]
    a = a / d[:, None] / d[None, :]
    low = _cholesky(0.5 * (a + a.T))  # symmetrized, as jnp.linalg.cholesky does
    pivots = jnp.stack([low[i][i] for i in range(a.shape[0])])
    finite = jnp.all(jnp.stack([jnp.isfinite(v) for row in low for v in row if v is not None]))
    ok = jnp.all(diag > 0) & finite & jnp.all(pivots > 1e-7)
    x = _cho_solve(low, b / scale) / scale
    return jnp.where(ok, x, jnp.nan), ok


def inv_psd(a):
    """Inverse of a small symmetric positive-definite matrix, NaN when it is not one."""
    return solve_spd(a, jnp.eye(a.shape[0], dtype=a.dtype))


class LMState(NamedTuple):
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


def levenberg_marquardt(evaluate, starts, *, max_iters, xtol, ftol, flag=None):
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
        The final :class:`LMState`.
    """
    p0 = starts[0]
    k = p0.shape[0]
    _, _, _, aux_shape = jax.eval_shape(evaluate, p0)
    aux0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), aux_shape)

    def propose(p, hess, grad, lam):
        diag = jnp.diag(hess)
        damped = hess + jnp.diag(lam * (diag + 1e-12 * jnp.max(diag)))
        step, ok = solve_spd(damped, -grad)
        step = jnp.where(ok, step, 0.0)
        return p + step, -(2.0 * step @ grad + step @ hess @ step)

    def body(s: LMState) -> LMState:
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
        newton, newton_ok = solve_spd(hess, -grad)
        converged = jnp.isfinite(sse) & newton_ok & (jnp.max(jnp.abs(newton)) <= xtol)
        p_eval, pred = propose(p, hess, grad, lam)
        n_iter = s.n_iter + 1
        # Nothing accepted yet (the start's solve failed): try the next start, if any.
        p_eval = jnp.where(jnp.isfinite(sse), p_eval, starts[jnp.minimum(n_iter, len(starts) - 1)])
        no_start = ~jnp.isfinite(sse) & (n_iter >= len(starts))
        done = converged | (n_iter >= max_iters) | (n_stuck >= 6) | no_start
        return LMState(p, p_start, sse, hess, grad, aux, p_eval, pred, lam, nu, n_iter, n_stuck,
                       flagged, converged, done)

    init = LMState(
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

