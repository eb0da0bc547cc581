"""The rate fit's arguments: checks at the Python boundary, the static options they become,
and the epoch grid padded to a length bucket (private; NumPy only, no tracing).

**Length buckets.** The compiled fit takes its epochs padded to :func:`bucket_size` ``(n)``:
the next of the sizes ``2^(k/4)`` (rounded up to a multiple of :data:`BUCKET_ROUND`) at or
above ``n``, at least :data:`MIN_BUCKET`: 2945 to 3456 epochs run one program, 3457 to 4096
the next, 5825 to 6912 another, so a new length does not compile anything new unless it starts
a new bucket. Most of a fit's cost grows with the padded epochs (the solution sampled at every
epoch, with its Jacobian), so four buckets per doubling pad by less than a quarter above 1024
epochs (15% for the paper's 6000; powers of two padded it to 8192, +37%). The padding repeats the
last measured epoch and row with weight 0 (:class:`Grid`), so the fit of a padded trajectory
is that of the trajectory alone, to round-off (``tests/test_fit_buckets.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from unijax._checks import (
    as_real_array,
    check_bool,
    check_finite,
    check_int,
    check_positive,
    check_x64,
    is_concrete,
)

__all__ = ["FitOpts", "Grid", "MIN_BUCKET", "SolveOpts", "as_batch", "bucket_size",
           "check_trajectories", "check_ts_for", "check_where", "compiler_options", "make_grid",
           "prepare_fit"]

#: Smallest length bucket (epochs). The starting points are ranked on at most 128 epochs
#: (:data:`N_SCORE`), so shorter buckets would save little.
MIN_BUCKET = 128

#: Bucket sizes are multiples of this (epochs).
BUCKET_ROUND = 64

#: Epochs (at most, evenly spread) on which the starting points are ranked.
N_SCORE = 128

#: Epochs (at most, evenly spread) of the sum in the initial-state sensitivity of the
#: standard errors (``_stats.start_sensitivity``).
N_SENSITIVITY = 256


def compiler_options(platform: str, batch: int) -> dict[str, object] | None:
    """XLA's options for compiling the fit of ``batch`` trials on ``platform`` (None: XLA's
    defaults).

    On CPU the fit is compile-bound for a first result, so: XLA's older loop emitters for the
    elementwise fusions (``xla_cpu_use_fusion_emitters=False``), which compile the fit in about
    60% of the time and run it as fast, with the same results; and, for a single trajectory,
    LLVM without optimisation (``xla_backend_optimization_level=0``): its compilation takes
    another third off, its run (milliseconds) takes about 1.7x as long. Batches keep LLVM's
    optimisation, where the run is what counts. Measured on the 2-core Xeon: "What cut the cold
    first fit" in benchmarks/README.md.
    """
    if platform != "cpu":
        return None
    options: dict[str, object] = {"xla_cpu_use_fusion_emitters": False}
    if batch == 1:
        options["xla_backend_optimization_level"] = 0
    return options


class SolveOpts(NamedTuple):
    """Static solver settings (hashable: they select the compiled program)."""

    rtol: float
    atol: float
    max_steps: int


class FitOpts(NamedTuple):
    """Static options of the compiled fit (one program per distinct value). Field names are
    the keyword names of :func:`unijax.fit.fit_rates`."""

    solve: SolveOpts
    max_iters: int
    opt_rtol: float
    opt_atol: float
    max_rel_stderr: float
    min_r2: float
    scales: tuple[float, ...]
    has_init: bool
    fit_initial: bool


def bucket_size(n: int) -> int:
    """Padded length of a trajectory of ``n`` epochs: the smallest ``2^(k/4)`` rounded up to a
    multiple of :data:`BUCKET_ROUND` that is ``>= n``, at least :data:`MIN_BUCKET`."""
    n = int(n)
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    k = int(np.floor(4 * np.log2(n))) - 1  # a step below, in case of rounding in the log
    while True:
        size = -(-int(np.ceil(2.0 ** (k / 4))) // BUCKET_ROUND) * BUCKET_ROUND
        if size >= n:
            return size
        k += 1


def subsample_index(n: int, n_max: int) -> np.ndarray:
    """At most ``n_max`` of ``n`` epochs, evenly spread, first and last kept."""
    if n <= n_max:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, n_max).round().astype(int))


class Grid(NamedTuple):
    """The epochs of a batch padded to ``m`` (its bucket): data, not static, so one compiled
    program serves every length in the bucket.

    Attributes:
        ts: epochs ``(m,)``, padded by repeating the last measured epoch (the ODE solve ends
            there; a padded RK4 interval has length 0).
        weight: ``(m,)``, 1.0 on measured epochs, 0.0 on padding.
        score_idx, score_w: ``(min(N_SCORE, m),)`` epochs that rank the starting points
            (:func:`subsample_index` of the measured ones, padded with the last) and their
            weights.
        sens_idx, sens_w: the same with ``N_SENSITIVITY`` for the standard errors.
    """

    ts: np.ndarray
    weight: np.ndarray
    score_idx: np.ndarray
    score_w: np.ndarray
    sens_idx: np.ndarray
    sens_w: np.ndarray


def _padded(idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.zeros(size)
    w[: idx.size] = 1.0
    return np.concatenate([idx, np.full(size - idx.size, idx[-1])]).astype(np.int32), w


def make_grid(ts: np.ndarray, m: int | None = None) -> Grid:
    """The :class:`Grid` of the measured epochs ``ts`` ``(n,)`` padded to ``m`` (default
    :func:`bucket_size` ``(n)``)."""
    n = ts.shape[0]
    m = bucket_size(n) if m is None else m
    pad = m - n
    weight = np.concatenate([np.ones(n), np.zeros(pad)])
    score = _padded(subsample_index(n, N_SCORE), min(N_SCORE, m))
    sens = _padded(subsample_index(n, N_SENSITIVITY), min(N_SENSITIVITY, m))
    return Grid(np.concatenate([ts, np.full(pad, ts[-1])]), weight, *score, *sens)


def pad_epochs(Z: np.ndarray, m: int) -> np.ndarray:
    """``Z`` ``(n_trials, n, 3)`` padded to ``m`` epochs by repeating its last row."""
    return np.concatenate([Z, np.repeat(Z[:, -1:], m - Z.shape[1], axis=1)], axis=1)


def as_batch(name: str, value, n_trials: int) -> np.ndarray:
    arr = as_real_array(name, value).astype(float)
    if arr.ndim == 0:
        return np.full((n_trials,), float(arr))
    if arr.shape != (n_trials,):
        raise ValueError(
            f"{name} must be a scalar or have shape (n_trials,) = ({n_trials},); "
            f"got shape {arr.shape}."
        )
    return arr


def check_ts_for(ts, n_epochs: int, what: str) -> np.ndarray:
    arr = as_real_array("ts", ts).astype(float)
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


def check_where(where, n_trials: int, single: bool) -> np.ndarray:
    """``where`` (bool ``(n_trials,)``, or one bool for a single trajectory; None: all) as a
    ``(n_trials,)`` bool mask; the check of ``fit_rates`` and ``fit_eta_mean`` alike."""
    if where is None:
        return np.ones(n_trials, bool)
    sel = np.asarray(where)
    if sel.dtype != bool or sel.shape not in ((n_trials,), () if single else (n_trials,)):
        raise ValueError(
            f"where must be a bool array of shape (n_trials,) = ({n_trials},)"
            + (" or a bool" if single else "")
            + f"; got dtype {sel.dtype}, shape {sel.shape}."
        )
    return np.broadcast_to(sel, (n_trials,))


def check_trajectories(Z, where) -> tuple[np.ndarray, bool, np.ndarray]:
    """``(Z as (n_trials, n_epochs, 3), single, where as (n_trials,) bool)``; only the trials
    selected by ``where`` (default all) must be finite and start with ``h0 > 0, y0 >= 0``."""
    arr = as_real_array("Z", Z).astype(float)
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
    sel = check_where(where, n, single)
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



def check_batch(ts, Z_arr, dx2, dy2, init):
    """Validate ``ts``, ``dx2``, ``dy2``, ``init`` against checked trajectories ``Z_arr``
    ``(n_trials, n_epochs, 3)``; returns them as per-trial host arrays."""
    n_trials, n_epochs = Z_arr.shape[:2]
    ts_arr = check_ts_for(ts, n_epochs, "Z")
    check_positive("dx2", dx2)
    check_positive("dy2", dy2, allow_zero=True)
    dx2_b = as_batch("dx2", dx2, n_trials)
    dy2_b = as_batch("dy2", dy2, n_trials)
    if init is None:
        init_b = np.ones((n_trials, 2))
    else:
        check_positive("init (eta_h, eta_y)", init)
        init_b = as_real_array("init", init).astype(float)
        if init_b.shape == (2,):
            init_b = np.broadcast_to(init_b, (n_trials, 2))
        if init_b.shape != (n_trials, 2):
            raise ValueError(
                f"init must have shape (2,) or (n_trials, 2) = ({n_trials}, 2); "
                f"got {np.asarray(init).shape}."
            )
    return ts_arr, dx2_b, dy2_b, init_b


def prepare_fit(
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
    Z_arr, single, where_b = check_trajectories(Z, where)
    ts_arr, dx2_b, dy2_b, init_b = check_batch(ts, Z_arr, dx2, dy2, init)
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
    scales_arr = as_real_array("scales", scales).astype(float)
    if scales_arr.ndim > 1 or scales_arr.size == 0:
        raise ValueError(
            f"scales={scales!r} is out of range: need one or more factors > 0 (a scalar or a "
            "1-D sequence) applied to each data-based starting estimate."
        )
    check_positive("scales", scales_arr)
    scales = tuple(float(s) for s in np.atleast_1d(scales_arr))
    opts = FitOpts(
        solve=SolveOpts(float(rtol), float(atol), int(max_steps)),
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

