"""The compiled rate fit: one trial's fit, ``vmap``-ed over a batch, in two stages (private;
the programs that :mod:`unijax.fit._run` compiles, caches and runs).

The first stage optimizes (:func:`fit_optimize`: the starts and Levenberg-Marquardt), the
second assesses the optimum (:func:`fit_assess`: the standard errors' sensitivity solve, R^2,
flags, status). Two programs rather than one, so that a first fit compiles them at the same
time, on two cores (:mod:`unijax.fit._run`); :func:`fit_batch` is both in one program.

Per trial: starting rates from the data (:mod:`unijax.fit._start`), a few scales of each
ranked by a cheap fixed-step solve on at most 128 epochs, Levenberg-Marquardt from the best
(:mod:`unijax.fit._lm`) on the residuals of the adaptive solve (:mod:`unijax.fit._model`), then
standard errors, flags and status (:mod:`unijax.fit._stats`). Its epochs come padded to a
length bucket with weights (:class:`unijax.fit._args.Grid`), so one program serves every length
in the bucket.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from unijax.fit._args import FitOpts, Grid
from unijax.fit._lm import LMState, levenberg_marquardt
from unijax.fit._model import Trial, evaluate, score, start_params, subsample
from unijax.fit._start import initial_estimates
from unijax.fit._stats import assess, covariance

__all__ = ["LM_TREE", "assess_one", "fit_assess", "fit_batch", "fit_optimize",
           "optimize_one"]


def _starts(trial: Trial, init, opts: FitOpts, grid: Grid):
    """Starting parameters for the optimizer, ``(<= 4, k)``, best first.

    Every data-based candidate times each of ``opts.scales`` (or the given ``init``), with,
    for ``fit_initial``, the initial state at the integral-matching estimate or at the measured
    first point; ranked by one batched fixed-step solve on the scoring epochs of ``grid``.
    """
    cand, z0_est = initial_estimates(trial)
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
        q_starts = jnp.stack([start_params(z0_est, trial), jnp.zeros(3)])
        n_r, n_q = rate_starts.shape[0], q_starts.shape[0]
        starts = jnp.concatenate(
            [jnp.repeat(rate_starts, n_q, axis=0), jnp.tile(q_starts, (n_r, 1))], axis=1
        )
    else:
        starts = rate_starts
    scoring = subsample(trial, grid.score_idx, grid.score_w)
    sses = jax.vmap(lambda p: score(p, scoring))(starts)
    # The best four, best first: the optimizer falls back on the next if a start's adaptive
    # solve fails.
    order = jnp.argsort(sses)[: min(4, starts.shape[0])]
    return starts[order]


def optimize_one(trial: Trial, init, opts: FitOpts, grid: Grid) -> LMState:
    """The optimizer's final state for one trajectory (the first stage of the fit)."""
    return levenberg_marquardt(
        lambda p: evaluate(p, trial, opts.solve),
        _starts(trial, init, opts, grid),
        max_iters=opts.max_iters,
        xtol=opts.opt_atol,
        ftol=opts.opt_rtol,
        flag=lambda aux: aux[3],
    )


def assess_one(lm: LMState, trial: Trial, opts: FitOpts, grid: Grid) -> dict:
    """Standard errors, flags and status at the optimizer's final state ``lm`` (the second
    stage): a dict of per-trial arrays."""
    cov, pos_def = covariance(lm, trial, opts, grid.sens_idx, grid.sens_w)
    return assess(lm, trial, opts, cov, pos_def)


#: How :class:`LMState` flattens (its ``aux`` is the evaluation's ``(ys, steps, J, hit)``):
#: the first stage returns the state's leaves, the second rebuilds it with this.
LM_TREE = jax.tree_util.tree_structure(LMState(*[0] * 5, (0,) * 4, *[0] * 9))


def _over_trials(fn, *batched):
    """``fn`` over the leading (trial) axis of the pytrees ``batched``: a ``vmap``; for a batch
    of one, a plain call with the axis put back. Batching the optimizer's and the solver's
    while loops is most of the tracing (0.82 s instead of 1.40 s for one 3000-epoch
    trajectory on the 2-core Xeon), which a first fit in a fresh process pays in full."""
    if jax.tree.leaves(batched)[0].shape[0] == 1:
        out = fn(*jax.tree.map(lambda a: a[0], batched))
        return jax.tree.map(lambda a: a[None], out)
    return jax.vmap(fn)(*batched)


def _trial(grid: Grid, Zi, dx2i, dy2i) -> Trial:
    return Trial(grid.ts, Zi, dx2i, dy2i, weight=grid.weight)


@functools.partial(jax.jit, static_argnames=("opts",))
def _fit_optimize(grid: Grid, Z, dx2, dy2, init, *, opts: FitOpts) -> tuple:
    """First stage, all trials: the leaves of each trial's final :class:`LMState` (in
    :data:`LM_TREE` order, leading axis ``b``), from ``Z (b, m, 3)``, ``dx2, dy2 (b,)``,
    ``init (b, 2)``; ``grid`` (the padded epochs) is shared."""

    def one(Zi, dx2i, dy2i, initi):
        lm = optimize_one(_trial(grid, Zi, dx2i, dy2i), initi, opts, grid)
        if opts.fit_initial:
            # The second stage needs no Jacobian then (J^T J is kept): none is handed over,
            # which lets XLA drop it from the loop's carry, as it did in one program (a chunk
            # of 8 trials at 6000 epochs: 57 ms with it, 35 ms without).
            ys, steps, jac, hit = lm.aux
            lm = lm._replace(aux=(ys, steps, jac[:0], hit))
        return lm

    return tuple(jax.tree.leaves(_over_trials(one, Z, dx2, dy2, init)))


@functools.partial(jax.jit, static_argnames=("opts", "return_trajectory"))
def _fit_assess(lm: tuple, grid: Grid, Z, dx2, dy2, *, opts: FitOpts, return_trajectory: bool):
    """Second stage, all trials: the result fields (:class:`unijax.fit.RateFit`'s per-trial
    arrays, ``z_fit`` None unless ``return_trajectory``) from the first stage's output."""

    def one(lmi, Zi, dx2i, dy2i):
        state = jax.tree_util.tree_unflatten(LM_TREE, lmi)
        return assess_one(state, _trial(grid, Zi, dx2i, dy2i), opts, grid)

    out = _over_trials(one, lm, Z, dx2, dy2)
    if not return_trajectory:
        out["z_fit"] = None
    return out


@functools.partial(jax.jit, static_argnames=("opts", "return_trajectory"))
def _fit_batch(grid: Grid, Z, dx2, dy2, init, *, opts: FitOpts, return_trajectory: bool):
    """Both stages in one program (:func:`fit_optimize`, then :func:`fit_assess`)."""
    lm = _fit_optimize(grid, Z, dx2, dy2, init, opts=opts)
    return _fit_assess(lm, grid, Z, dx2, dy2, opts=opts, return_trajectory=return_trajectory)


# Exported under these names; traced as "_fit_optimize", "_fit_assess" and "_fit_batch", the
# names the tests' trace counters (tests/_compiles.py) know the fit programs by.
fit_optimize = _fit_optimize
fit_assess = _fit_assess
fit_batch = _fit_batch
