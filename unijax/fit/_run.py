"""Running the compiled rate fit: the program cache, chunks and devices, retries, padding
(private; imports no Diffrax until a program must be built).

**Programs are compiled once per process, and traced once per machine.** The fit is two
programs (:mod:`unijax.fit._program`: the optimizer, then the assessment of its optimum),
compiled side by side on first use. One compiled fit
serves every trajectory length of a bucket (:mod:`unijax.fit._args`) and every batch of a chunk
size; :func:`program` keeps it for the process. On CPU, with a private cache directory
(:func:`unijax._cache.program_dir`), the traced fit is kept there as ``jax.export`` bytes
(:mod:`unijax.fit._export`: data, never unpickled, checked on load, rebuilt on any failure), so
a later process skips tracing and lowering it, and JAX's persistent compilation cache answers
its compilation. Without one (``UNIJAX_NO_COMPILATION_CACHE=1``, no private directory) every
process traces the fit itself. (Earlier versions stored pickled executables under
``unijax_programs/``; unpickling a file that someone else could write runs their code. Those
files are ignored.)
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from unijax import _batch, _cache
from unijax.fit._args import FitOpts, Grid, compiler_options
from unijax.fit._status import FitStatus

__all__ = ["fit_rows", "not_fitted", "program", "squeeze", "with_retries"]

_PROGRAMS: dict[tuple, object] = {}  # this process's compiled programs, by signature
_LOCK = threading.Lock()  # chunks run from threads: build each program once


def _fit_batch():
    # Imported on first use: it imports Diffrax.
    from unijax.fit._program import fit_batch

    return fit_batch


def _signature(args, opts: FitOpts, return_trajectory: bool, device) -> tuple:
    leaves = jax.tree_util.tree_leaves(args)
    return (device, jax.config.jax_enable_x64, opts, return_trajectory,
            tuple((a.shape, str(a.dtype)) for a in leaves))


class _Staged:
    """The fit as its two compiled stages: ``(*args) -> dict`` (the optimizer's final state
    goes from the first to the second on the device)."""

    def __init__(self, optimize, assess):
        self.optimize, self.assess = optimize, assess

    def __call__(self, grid, Z, dx2, dy2, init) -> dict:
        return self.assess(self.optimize(grid, Z, dx2, dy2, init), grid, Z, dx2, dy2)


def _prepare_traced(stage: str, args, *, opts: FitOpts, return_trajectory: bool, device):
    """``stage`` traced and lowered in this process; returns ``finish() -> compiled``."""
    from unijax.fit._export import stage_shape
    from unijax.fit._program import fit_assess, fit_optimize

    options = compiler_options(device.platform, stage_shape(stage, args)[0])
    with jax.default_device(device):
        if stage == "optimize":
            lowered = fit_optimize.trace(*args, opts=opts).lower()
        else:
            lowered = fit_assess.trace(*args, opts=opts,
                                       return_trajectory=return_trajectory).lower()
    return lambda: lowered.compile(compiler_options=options)


def _build(args, opts: FitOpts, return_trajectory: bool, device) -> _Staged:
    """Both stages for ``args``: the first is compiled in a thread while the second is traced
    and compiled here (XLA's compilation releases the GIL), so that a first fit compiles on two
    cores: 2.5 s instead of 3.3 s for one 3000-epoch trajectory on the 2-core Xeon."""
    from unijax.fit._export import lm_spec, stage_shape

    if device.platform == "cpu" and (directory := _cache.program_dir()) is not None:
        # CPU only: that is where tracing is a large part of a first fit, and the only
        # platform whose exported programs are tested here.
        from unijax.fit._export import prepare

        prepare = functools.partial(prepare, directory=directory)
    else:
        prepare = _prepare_traced
    b, m = stage_shape("optimize", args)
    lm = tuple(jax.ShapeDtypeStruct(shape, dtype)
               for _, shape, dtype in lm_spec(b, m, opts.fit_initial))
    kw = dict(opts=opts, return_trajectory=return_trajectory, device=device)
    with ThreadPoolExecutor(1, thread_name_prefix="unijax-compile") as pool:
        first = pool.submit(prepare("optimize", args, **kw))
        second = prepare("assess", (lm, *args[:4]), **kw)()
        return _Staged(first.result(), second)


def program(args, *, opts: FitOpts, return_trajectory: bool, device):
    """The compiled fit for ``args = (grid, Z, dx2, dy2, init)`` (their shapes and dtypes),
    ``opts`` and ``device``: a callable on such arguments returning the output dict.

    From this process's programs, else built (:func:`_build`): each stage from its exported
    program in the private cache directory (:mod:`unijax.fit._export`), else traced and
    compiled (JAX's persistent cache may answer the compilation).
    """
    key = _signature(args, opts, return_trajectory, device)
    with _LOCK:
        if key not in _PROGRAMS:
            _PROGRAMS[key] = _build(args, opts, return_trajectory, device)
        return _PROGRAMS[key]


def fit_rows(grid: Grid, batch: dict, rows, *, opts: FitOpts, return_trajectory: bool, mesh,
             width: int) -> dict:
    """The trials ``rows`` of ``batch`` (host arrays ``Z (width, m, 3), dx2, dy2, init`` of
    ``width`` trials, epochs padded to ``grid``), fitted on ``mesh``: host arrays
    ``(rows.size, ...)``.

    CPU: the chunks of :func:`unijax._batch.cpu_chunking` (8 trials, ``rows`` padded with
    copies of the last to a whole number of chunks, so every batch of two or more runs one
    compiled program, :func:`program`), dispatched from threads on the first device of this
    process. The CPU devices of one process share its cores, which those threads already keep
    busy, and one device's program is the one stored for later processes: 64 trials of 6000
    epochs on two host devices of a 2-core Xeon, 0.16 s per call this way, 0.78 s with each
    device fitting its slice in a mesh program that every call compiled again. A mesh over
    several processes shares the chunks out between them, whole, and gathers the results, so
    every trial is fitted in the same chunk, by the same program, as in one process: the same
    numbers, bit for bit.
    Other platforms: each device fits its slice (one ``vmap``), in one program for the mesh.
    """
    part = {k: v[rows] for k, v in batch.items()}
    devices = list(mesh.devices.flat)
    if not all(d.platform == "cpu" for d in devices):

        def traced(g, b):
            return _fit_batch()(g, b["Z"], b["dx2"], b["dy2"], b["init"], opts=opts,
                                return_trajectory=return_trajectory)

        return _batch.map_over_devices(traced, grid, part, mesh)
    size, threads = _batch.cpu_chunking(width, "cpu")
    n_chunks = -(-rows.size // size)
    idx = _batch.pad_index(np.arange(rows.size), n_chunks * size)
    procs = sorted({d.process_index for d in devices})
    # Whole chunks per process, in order: process procs[i] fits the chunks of shares[i].
    shares = np.array_split(np.arange(n_chunks), len(procs))
    me = jax.process_index()
    mine = shares[procs.index(me)] if me in procs else np.arange(0)
    # A process with no chunk of its own (fewer chunks than processes) fits the last one
    # too, unused: it must know the outputs' shapes to take part in the gathering.
    todo = mine if mine.size else np.array([n_chunks - 1])
    device = next((d for d in devices if d.process_index == me), jax.local_devices()[0])
    grid_dev = jax.device_put(grid, device)

    def run(b):
        args = (grid_dev, b["Z"], b["dx2"], b["dy2"], b["init"])
        return program(args, opts=opts, return_trajectory=return_trajectory,
                       device=device)(*args)

    take = (todo[:, None] * size + np.arange(size)).ravel()
    out = _batch.map_chunks(run, {k: v[idx[take]] for k, v in part.items()},
                            size=size, threads=threads, device=device, label="fit")
    if len(procs) > 1 or me not in procs:
        out = _gather_shares(out, [c.size * size for c in shares], procs)
    return {k: None if v is None else v[: rows.size] for k, v in out.items()}


def _gather_shares(out: dict, counts: list[int], procs: list[int]) -> dict:
    """Every process's rows of ``out`` on every process: process ``procs[i]`` holds the next
    ``counts[i]`` rows (first in its ``out``); the rows come back in that order. Host arrays
    (padded to one shape for the gathering, which every process joins)."""
    from jax.experimental import multihost_utils

    most = max(max(counts), 1)

    def padded(a):
        a = np.asarray(a)
        keep = a[: min(a.shape[0], most)]
        return np.concatenate([keep, np.zeros((most - keep.shape[0], *a.shape[1:]), a.dtype)])

    local = {k: None if v is None else padded(v) for k, v in out.items()}
    every = multihost_utils.process_allgather(local, tiled=False)  # (processes, most, ...)
    return {k: None if v is None else np.concatenate(
                [np.asarray(v)[p, :c] for p, c in zip(procs, counts, strict=True)])
            for k, v in every.items()}


def not_fitted(fitted_out: dict | None, rows: np.ndarray, n: int, n_epochs: int,
               return_trajectory: bool, fields) -> dict:
    """The outputs of ``n`` trials of which only ``rows`` were fitted (``fitted_out``, or None
    when none was), one entry per name in ``fields``: the others NaN (floats), False, 0
    (integers), status ``NOT_FITTED``."""
    shapes = {"cov_log_rates": (2, 2), "r2": (3,), "z0_fit": (3,), "z_fit": (n_epochs, 3)}
    ints = ("max_steps", "n_iters", "n_ode_steps")
    bools = ("converged", "identified", "good_fit", "ode_ok", "step_budget_hit")
    out = {}
    for k in fields:
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


def squeeze(out: dict, single: bool) -> dict:
    if not single:
        return out
    return {k: (None if v is None else v[0]) for k, v in out.items()}


def with_retries(out: dict, opts: FitOpts, retries: tuple[int, ...], refit) -> dict:
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
