"""Starting rates for the rate fit, straight from the data: integral matching (private).

The vector field of docs/theory.md section 2 is linear in ``(eta_h, eta_y)``, so integrating
it along the measured trajectory gives linear least-squares problems for the rates; five of
them come from one moment matrix of the data (:func:`initial_estimates`). No ODE solve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unijax.fit._lm import solve_spd
from unijax.fit._model import Trial

__all__ = ["cumtrapz", "initial_estimates", "lstsq_moments"]


def cumtrapz(f, ts):
    """Cumulative trapezoid integral along the first axis, starting at 0, same length."""
    dt = jnp.diff(ts)
    inc = 0.5 * (f[1:] + f[:-1]) * dt.reshape((-1,) + (1,) * (f.ndim - 1))
    return jnp.concatenate([jnp.zeros_like(f[:1]), jnp.cumsum(inc, axis=0)], axis=0)


def lstsq_moments(gram, rhs, active):
    """Least squares from its normal equations ``gram x = rhs`` over the ``active`` unknowns.

    ``gram``: ``(k, k)``, ``rhs``: ``(k,)``, ``active``: ``(k,)`` bools (inactive unknowns
    come back 0). Equilibrated Cholesky; NaN when (near-)singular so that the caller falls
    back. Written for a fixed ``k`` so that systems of different sizes run as one ``vmap``.
    """
    both = active[:, None] & active[None, :]
    gram = jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(active, 0.0, 1.0))
    coef, ok = solve_spd(gram, jnp.where(active, rhs, 0.0))
    ok = ok & jnp.all(jnp.where(active, jnp.diag(gram) > 0, True))
    return jnp.where(ok & jnp.all(jnp.isfinite(coef)), coef, jnp.nan)


# Integral matching: every equation below is a weighted sum over epochs of
# (features . x - target)^2, with features and targets taken from the series
# S = (A, B, C, D, E, 1, h, y, w, h^2) defined in initial_estimates. Each system is a list
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


def normal_equations(moments, weights, z_first):
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


def initial_estimates(trial: Trial):
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
    integrals = cumtrapz(integrands, ts) * jnp.array([-dx2, -1.0, -dx2, -0.5, -0.5 * dx2])
    series = jnp.concatenate([integrals, jnp.ones_like(h)[:, None], Z, (h * h)[:, None]], 1)
    # Padded epochs (weight 0) drop out of every sum.
    wt = trial.w()
    moments = (series * wt[:, None]).T @ series
    n = trial.n_epochs()

    def std(v):
        mean = jnp.sum(wt * v) / n
        return jnp.sqrt(jnp.sum(wt * (v - mean) ** 2) / n)

    weights = jnp.stack([1.0 / jnp.maximum(std(v), 1e-300) for v in (h, y, w)] + [1.0])
    gram, rhs, active = normal_equations(moments, weights, Z[0])
    x = jax.vmap(lstsq_moments)(gram, rhs, active)
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

