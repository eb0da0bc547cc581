"""The authors' rate-fitting method, re-implemented with SciPy: the reference for E1's verdict.

The paper's code fitted ``(eta_h, eta_y)`` to one trajectory at a time (docs/theory.md
section 11): the sum of squared errors of ``h``, ``y`` and ``w`` over every epoch, the ODE
started at the measured first epoch and solved by SciPy's ``solve_ivp`` (Radau, SciPy's
default tolerances; :class:`LeanRadau`, the same solver with less Python around LAPACK); the
best of 200 log-spaced scales ``s`` (1e-6 .. 1e2) of ``(eta_h, eta_y) = s (ratio, 1)`` with
``ratio = h[-1]^2 / (dx2 dy2)``; then BFGS with finite-difference gradients, keeping whatever
BFGS reaches. :func:`fit_one` is that method.

It is here so that a fit of :func:`unijax.fit.fit_rates` can be judged against what the
authors' own pipeline gets on the same trajectory (``unijax run E1``; the networks match the
authors' PyTorch networks to float precision, ``tests/test_parity.py``, so the trajectories
are theirs). It is slow (a second or more per trajectory, one CPU core) and not
differentiable: use :func:`unijax.fit.fit_rates` to fit. Two details differ from the authors'
notebooks and are the correct alignment: the ODE is sampled at the integer epochs
``0 .. n_epochs - 1`` (the notebooks use ``linspace(0, n_epochs, n_epochs)``), and ``dx2``,
``dy2`` are arguments rather than the paper's 1 and 0.5.

The right-hand side is written out again in NumPy, independently of
:func:`unijax.theory.vector_field` (a test checks that the two agree).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import multiprocessing
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy.integrate import Radau, solve_ivp
from scipy.linalg import LinAlgWarning, get_lapack_funcs
from scipy.optimize import minimize
from scipy.sparse import issparse

from unijax._host import usable_cores

__all__ = ["AuthorsFit", "LeanRadau", "fit_one", "fit_many", "r2_of_rates", "rhs", "GRID",
           "worker_cpu_seconds"]

#: The scales of the authors' starting grid: ``(eta_h, eta_y) = s (ratio, 1)``.
GRID = np.logspace(-6, 2, 200)
#: The SSE the authors' objective returns for rates it cannot use (non-positive, failed solve).
_PENALTY = 1e10


def rhs(t: float, z, eta_h: float, eta_y: float, dx2: float, dy2: float) -> list[float]:
    """``d(h, y, w)/dt`` per epoch (paper Eq. 8, A.1), in the form ``solve_ivp`` calls."""
    h, y, w = z
    a = eta_h * dx2
    return [
        -a * w,
        -w * (eta_y * h + a * y / h),
        -0.5 * eta_y * (3.0 * w - y + dy2) * h - 0.5 * a * (y + w) * w / h,
    ]


class AuthorsFit(NamedTuple):
    """One trajectory fitted by the authors' method.

    Attributes:
        eta_h, eta_y: the rates BFGS reached (1/epoch; the grid's best if BFGS made no step).
        sse: the objective there (SSE of h, y, w over the fitted epochs).
        success: BFGS's own flag (the authors kept the result either way).
        n_solves: ODE solves spent (grid and BFGS).
    """

    eta_h: float
    eta_y: float
    sse: float
    success: bool
    n_solves: int


def _check(Z, dx2, dy2) -> np.ndarray:
    Z = np.asarray(Z)
    if np.iscomplexobj(Z):  # float64 would cut it to its real part silently
        raise ValueError(f"Z is complex (dtype {Z.dtype}); real numbers are required")
    Z = Z.astype(np.float64)
    if Z.ndim != 2 or Z.shape[1] != 3 or Z.shape[0] < 3:
        raise ValueError(f"Z must have shape (n_epochs >= 3, 3), got {Z.shape}")
    if not np.all(np.isfinite(Z)):
        raise ValueError("Z must be finite (a diverged trial cannot be fitted)")
    if not Z[0, 0] > 0 or Z[0, 1] < 0:
        raise ValueError(f"Z[0] must have h > 0 and y >= 0, got {Z[0].tolist()}")
    if not (np.isfinite(dx2) and dx2 > 0):
        raise ValueError(f"dx2 must be > 0, got {dx2}")
    if not (np.isfinite(dy2) and dy2 >= 0):
        raise ValueError(f"dy2 must be >= 0, got {dy2}")
    return Z


class LeanRadau(Radau):
    """SciPy's Radau with its dense LU steps calling LAPACK directly: the same solver, the same
    numbers bit for bit (``tests/test_authors.py``), about 1.3x as fast on this 3-variable
    system.

    Radau factors and solves 3 x 3 systems with :func:`scipy.linalg.lu_factor` and
    :func:`~scipy.linalg.lu_solve`, whose Python wrappers (batching, array-API dispatch) cost
    more than the LAPACK calls behind them: about a third of a fit's time. Here the same
    ``getrf``/``getrs`` routines are called on the same arrays, with the same finiteness check
    and the same singular-matrix warning; nothing else of the solver changes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if issparse(self.J):  # a sparse Jacobian: SciPy's splu path, left alone
            return
        lapack: dict[tuple[str, ...], Any] = {}

        def routine(name, *arrays):
            # The routine lu_factor / lu_solve pick for these dtypes (d or z here).
            key = (name, *(a.dtype.char for a in arrays))
            if key not in lapack:
                lapack[key] = get_lapack_funcs((name,), arrays)[0]
            return lapack[key]

        def lu(A):
            self.nlu += 1
            A = np.asarray_chkfinite(A)
            factors, piv, info = routine("getrf", A)(A, overwrite_a=True)
            if info > 0:
                warnings.warn(f"Diagonal number {info} is exactly zero. Singular matrix.",
                              LinAlgWarning, stacklevel=2)
            return factors, piv

        def solve_lu(LU, b):
            factors, piv = LU
            b = np.asarray_chkfinite(b)
            x, info = routine("getrs", factors, b)(factors, piv, b, trans=0, overwrite_b=True)
            if info != 0:
                raise ValueError(f"illegal value in {-info}th argument of internal getrs")
            return x

        self.lu = lu
        self.solve_lu = solve_lu


def _solve(Z0, ts, eta_h, eta_y, dx2, dy2, rtol, atol, method=LeanRadau):
    sol = solve_ivp(rhs, (ts[0], ts[-1]), Z0, method=method, t_eval=ts,
                    args=(eta_h, eta_y, dx2, dy2), rtol=rtol, atol=atol)
    if not sol.success or sol.y.shape[1] != ts.size:
        return None
    return sol.y.T


def fit_one(Z, *, dx2: float, dy2: float, rtol: float = 1e-3, atol: float = 1e-6,
            stock_radau: bool = False) -> AuthorsFit:
    """Fit ``(eta_h, eta_y)`` to one trajectory the authors' way (module docstring).

    Args:
        Z: measured ``(h, y, w)`` at every epoch ``0 .. n_epochs - 1``, shape ``(n_epochs, 3)``.
        dx2, dy2: squared input (> 0) and output (>= 0) distances of the two points.
        rtol, atol: ``solve_ivp``'s tolerances while fitting (SciPy's defaults, as the authors).
        stock_radau: solve with SciPy's own ``"Radau"`` (what the paper's code ran) instead
            of :class:`LeanRadau`: the same numbers, slower (benchmarks/bench_fit.py times
            both).

    Returns:
        :class:`AuthorsFit`.

    Raises:
        ValueError: ``Z`` not ``(n_epochs >= 3, 3)``, not finite, ``h0 <= 0`` or ``y0 < 0``;
            ``dx2 <= 0`` or ``dy2 < 0``.
    """
    Z = _check(Z, dx2, dy2)
    ts = np.arange(float(Z.shape[0]))
    n_solves = 0

    def sse(rates):
        nonlocal n_solves
        eta_h, eta_y = rates
        if not (eta_h > 0 and eta_y > 0):
            return _PENALTY
        n_solves += 1
        ys = _solve(Z[0], ts, eta_h, eta_y, dx2, dy2, rtol, atol,
                    "Radau" if stock_radau else LeanRadau)
        return _PENALTY if ys is None else float(np.sum((ys - Z) ** 2))

    ratio = Z[-1, 0] ** 2 / (dx2 * dy2) if dy2 > 0 else Z[-1, 0] ** 2 / dx2
    losses = [sse((s * ratio, s)) for s in GRID]
    s = GRID[int(np.argmin(losses))]
    res = minimize(sse, np.array([s * ratio, s]), method="BFGS")
    return AuthorsFit(float(res.x[0]), float(res.x[1]), float(res.fun), bool(res.success),
                      n_solves)


def r2_of_rates(Z, eta_h: float, eta_y: float, *, dx2: float, dy2: float, epochs=None,
                z0=None, rtol: float = 1e-8, atol: float = 1e-11) -> np.ndarray:
    """R^2 of ``h``, ``y``, ``w`` for the ODE with the given rates, scored on chosen epochs.

    The ODE is solved tightly (Radau) from ``z0`` (default: the measured first epoch
    ``Z[0]``) over every epoch and scored on ``epochs`` (default: all):
    ``R^2 = 1 - SSE / SST`` per variable. One evaluator for any fit's rates, so that two
    methods compare on equal terms.

    Args:
        Z: measured ``(h, y, w)`` at every epoch, shape ``(n_epochs, 3)``.
        eta_h, eta_y: rates (1/epoch); NaN or non-positive gives NaN.
        dx2, dy2: squared input/output distances.
        epochs: integer epochs to score on, shape ``(k,)`` (default every epoch).
        z0: the ODE's start at epoch 0, shape ``(3,)`` (a fitted start).

    Returns:
        ``(3,)`` R^2 of h, y, w (NaN if the rates are unusable or the solve fails).
    """
    Z = _check(Z, dx2, dy2)
    if not (np.isfinite(eta_h) and np.isfinite(eta_y) and eta_h > 0 and eta_y > 0):
        return np.full(3, np.nan)
    ts = np.arange(float(Z.shape[0]))
    start = Z[0] if z0 is None else np.asarray(z0, np.float64)
    ys = _solve(start, ts, eta_h, eta_y, dx2, dy2, rtol, atol)
    if ys is None:
        return np.full(3, np.nan)
    idx = slice(None) if epochs is None else np.asarray(epochs, int)
    z, m = Z[idx], ys[idx]
    sst = ((z - z.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1.0 - ((z - m) ** 2).sum(0) / sst, np.nan)


def _fit_and_score(Z, dx2, dy2, epochs):
    f = fit_one(Z, dx2=dx2, dy2=dy2)
    return (f.eta_h, f.eta_y), r2_of_rates(Z, f.eta_h, f.eta_y, dx2=dx2, dy2=dy2, epochs=epochs)


def _fit_in_worker(Z, dx2, dy2, epochs):
    """:func:`_fit_and_score` in a worker process, with the worker's pid and the CPU seconds
    it has used so far (its start-up included), for :func:`worker_cpu_seconds`."""
    return _fit_and_score(Z, dx2, dy2, epochs), os.getpid(), time.process_time()


#: CPU seconds each worker process had used at its latest finished fit, by pid.
_WORKER_CPU: dict[int, float] = {}


def worker_cpu_seconds() -> float:
    """CPU seconds used so far by the worker processes :func:`fit_many` started, start-up
    included, up to each one's latest finished fit (an idle worker uses none). Added to this
    process's own :func:`time.process_time`, it is the CPU time of a run that fitted in
    workers (the command reports it per experiment)."""
    with _POOL_LOCK:
        return float(sum(_WORKER_CPU.values()))


def _spawn_safe() -> bool:
    """Whether worker processes can be spawned: the ``__main__`` module is not a script, or a
    script that guards its top-level code with ``if __name__ == "__main__":`` (a spawned
    worker re-imports it; unguarded, it would run the whole script again and fail)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not str(path).endswith(".py"):
        return True  # an interactive session, python -c, or a console-script entry point
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    return re.search(r"""^\s*if\s+(__name__\s*==\s*['"]__main__['"]|['"]__main__['"]\s*==\s*"""
                     r"""__name__)""", text, re.MULTILINE) is not None


def fit_many(Zs, *, dx2: float, dy2: float, epochs=None, workers: int | None = None,
             progress: Any = None, desc: str = "authors' fits") -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_one` on many trajectories, each scored by :func:`r2_of_rates`.

    SciPy's solver runs on one core, so the trajectories are spread over ``workers`` processes
    (started fresh, ``spawn``: this module imports neither JAX nor anything that holds
    threads; started on the first call and kept for the next, :func:`_pool`); the numbers are
    those of a loop over :func:`fit_one`. A fresh process re-imports
    the main script, so when that script has no ``if __name__ == "__main__":`` guard (it
    would run again in every worker) the fits run in this process instead, one after another.

    Args:
        Zs: ``(n, n_epochs, 3)`` trajectories, every epoch.
        dx2, dy2: squared input/output distances (the same for all).
        epochs: the epochs the R^2 is scored on (default all), as :func:`r2_of_rates`.
        workers: processes (default: the CPU cores this process may use; 1: in this process).
        progress: ``progress(items, desc=...)`` wrapper of an iterable (e.g. tqdm), or None.

    Returns:
        ``eta: (n, 2)`` the rates reached, ``r2: (n, 3)`` their R^2 of h, y, w.
    """
    Zs = [np.asarray(Z, np.float64) for Z in Zs]
    for Z in Zs:
        _check(Z, dx2, dy2)
    n = len(Zs)
    eta, r2 = np.full((n, 2), np.nan), np.full((n, 3), np.nan)
    if workers is None:
        workers = usable_cores()
    wrap = progress if progress is not None else (lambda items, desc="": items)
    if workers <= 1 or n <= 1 or not _spawn_safe():
        for i in wrap(range(n), desc=desc):
            eta[i], r2[i] = _fit_and_score(Zs[i], dx2, dy2, epochs)
        return eta, r2
    try:
        futures = [_pool(workers).submit(_fit_in_worker, Z, dx2, dy2, epochs) for Z in Zs]
    except concurrent.futures.process.BrokenProcessPool:  # a worker died in an earlier call
        futures = [_pool(workers, fresh=True).submit(_fit_in_worker, Z, dx2, dy2, epochs)
                   for Z in Zs]
    for i in wrap(range(n), desc=desc):
        (eta[i], r2[i]), pid, cpu = futures[i].result()
        with _POOL_LOCK:
            _WORKER_CPU[pid] = max(cpu, _WORKER_CPU.get(pid, 0.0))
    return eta, r2


_POOL: dict[int, concurrent.futures.ProcessPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


@atexit.register
def _close_pools() -> None:
    # Shut the kept pools down while the interpreter is whole: collected during its teardown,
    # a pool's weakref callback meets modules already cleared and prints an ignored error.
    with _POOL_LOCK:
        pools = list(_POOL.values())
        _POOL.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _pool(workers: int, *, fresh: bool = False) -> concurrent.futures.ProcessPoolExecutor:
    """This process's pool of ``workers`` fitting processes, started on first use and kept for
    the next call: a spawned worker imports the main module again (the command's imports JAX:
    about 1.2 s of CPU each), so a run that fits in several experiments starts its workers
    once. ``fresh``: replace it (its workers died). The pools end with the process."""
    with _POOL_LOCK:
        pool = _POOL.get(workers)
        if pool is None or fresh:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            pool = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"))
            _POOL[workers] = pool
        return pool
