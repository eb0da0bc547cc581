"""Running the compiled rate fit: the program cache, chunks and devices, retries, padding
(private; imports no Diffrax until a program must be built).

**Programs are compiled once per machine.** One compiled fit serves every trajectory length of
a bucket (:mod:`unijax.fit._args`) and every batch of a chunk size. :func:`program` keeps it
for the process, and also stores the compiled executable next to JAX's persistent compilation
cache (in ``unijax_programs/`` under the directory :func:`unijax._cache.enable_compilation_cache`
returns; off with ``UNIJAX_NO_COMPILATION_CACHE=1``), keyed by the code (the package's source
hash), the JAX version, the device, the options and the argument shapes. A later process
loads it in a fraction of a second instead of tracing the fit again (about 2 s: JAX's own
persistent cache only skips the compilation that follows the tracing). A stored program that
cannot be loaded is compiled again and replaced.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
import threading
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from unijax import _batch, _cache
from unijax._version import code_version
from unijax.fit._args import FitOpts, Grid
from unijax.fit._status import FitStatus

__all__ = ["fit_rows", "not_fitted", "program", "squeeze", "with_retries"]

_PROGRAMS: dict[str, object] = {}  # this process's compiled programs, by key
_LOCK = threading.Lock()  # chunks run from threads: build each program once


def _fit_batch():
    # Imported on first use: it imports Diffrax, which a program loaded from disk never needs.
    from unijax.fit._program import fit_batch

    return fit_batch


@functools.cache
def _software() -> tuple[str, ...]:
    """What the compiled program depends on besides its arguments: unijax's source and the
    versions of the libraries traced into it (read without importing them)."""
    versions = []
    for dist in ("diffrax", "equinox", "lineax", "optimistix"):
        try:
            versions.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            versions.append("")
    return (code_version().source_sha256, jax.__version__, jaxlib.__version__, *versions)


def _key(args, opts: FitOpts, return_trajectory: bool, device) -> str:
    leaves = jax.tree_util.tree_leaves(args)
    spec = (
        _software(), device.platform, device.device_kind, jax.config.jax_enable_x64,
        repr(opts), return_trajectory, [(a.shape, str(a.dtype)) for a in leaves],
        os.environ.get("XLA_FLAGS", ""),
    )
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:32]


def _programs_dir() -> Path | None:
    d = _cache.enable_compilation_cache()
    if d is None or "://" in d:  # off, or a remote cache (gs://...) that JAX writes itself
        return None
    return Path(d) / "unijax_programs"


@functools.cache
def _init_kernels():
    # Kernels that XLA calls out to on CPU (LAPACK's, through jaxlib) get their entry points
    # when a program using them is lowered, which a loaded program never is; without them it
    # crashes. Lowering a tiny one resolves them (as jax.export does before calling a
    # deserialized module). The fit itself calls none (see _lm._cholesky); this is for a
    # program that does.
    jax.jit(jnp.linalg.cholesky).lower(jax.ShapeDtypeStruct((2, 2), jnp.float64))


def _load(path: Path, device):
    from jax.experimental import serialize_executable

    payload, in_tree, out_tree, calls_out = pickle.loads(path.read_bytes())
    if calls_out:
        _init_kernels()
    return serialize_executable.deserialize_and_load(
        payload, in_tree, out_tree, backend=device.client, execution_devices=[device])


def _store(path: Path, compiled) -> None:
    from jax.experimental import serialize_executable

    # Whether the program calls a kernel outside XLA (a custom call), recorded for _load.
    calls_out = "custom_call_target" in compiled.as_text()
    _store_bytes(path, pickle.dumps((*serialize_executable.serialize(compiled), calls_out)))


def _store_bytes(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one


def program(args, *, opts: FitOpts, return_trajectory: bool, device):
    """The compiled fit for ``args = (grid, Z, dx2, dy2, init)`` (their shapes and dtypes),
    ``opts`` and ``device``: a callable on such arguments returning the output dict.

    From this process's programs, else loaded from the stored executables, else traced,
    compiled (JAX's persistent cache may still save the compilation) and stored.
    """
    key = _key(args, opts, return_trajectory, device)
    with _LOCK:
        if key in _PROGRAMS:
            return _PROGRAMS[key]
        root = _programs_dir()
        path = None if root is None else root / f"fit-{key}.pkl"
        compiled = None

        def build():
            with jax.default_device(device):
                return _fit_batch().lower(
                    *args, opts=opts, return_trajectory=return_trajectory).compile()

        # An empty file marks a program that failed after loading (see _Checked): built in
        # every process, never stored again.
        tomb = path is not None and path.exists() and path.stat().st_size == 0
        if path is not None and path.exists() and not tomb:
            try:
                compiled = _Checked(_load(path, device), path, build)
            except Exception:  # noqa: BLE001 - a stale or foreign file: build it again
                compiled = None
        if compiled is None:
            compiled = build()
            if path is not None and not tomb:
                try:
                    _store(path, compiled)
                except Exception:  # noqa: BLE001 - not storable here (read-only, unsupported)
                    pass  # the fit runs all the same, compiled again by the next process
        _PROGRAMS[key] = compiled
        return compiled


class _Checked:
    """A loaded program whose first run is checked: if it fails, the stored file is emptied
    (a mark that this program is not to be stored again) and the program built again, and
    the call repeated.

    Seen on CPU (jaxlib 0.10.2): an executable stored by a process whose compilation JAX had
    answered from its own persistent cache loads, then fails when run ("Function
    ..._fusion not found"). Failures surface when the results are awaited, so the first call
    waits for its results here (later calls are asynchronous as usual).
    """

    def __init__(self, compiled, path: Path, build):
        self._compiled, self._path, self._build, self._checked = compiled, path, build, False

    def __call__(self, *args):
        if self._checked:
            return self._compiled(*args)
        try:
            out = jax.block_until_ready(self._compiled(*args))
        except jax.errors.JaxRuntimeError:
            _store_bytes(self._path, b"")
            self._compiled = self._build()
            out = self._compiled(*args)
        self._checked = True
        return out


def fit_rows(grid: Grid, batch: dict, rows, *, opts: FitOpts, return_trajectory: bool, mesh,
             width: int) -> dict:
    """The trials ``rows`` of ``batch`` (host arrays ``Z (width, m, 3), dx2, dy2, init`` of
    ``width`` trials, epochs padded to ``grid``), fitted on ``mesh``: host arrays
    ``(rows.size, ...)``.

    One device: the chunks of :func:`unijax._batch.cpu_chunking` (on CPU 8 trials, ``rows``
    padded with copies of the last to a whole number of chunks, so every batch of two or more
    runs one compiled program, :func:`program`; elsewhere one ``vmap`` of ``width`` trials).
    Several devices: each fits its slice as chunks, in one program for the mesh.
    """
    part = {k: v[rows] for k, v in batch.items()}
    devices = list(mesh.devices.flat)
    if len(devices) > 1 or not devices[0].process_index == jax.process_index():

        def traced(g, b):
            return _fit_batch()(g, b["Z"], b["dx2"], b["dy2"], b["init"], opts=opts,
                                return_trajectory=return_trajectory)

        return _batch.map_over_devices(traced, grid, part, mesh)
    size, threads = _batch.cpu_chunking(width, devices[0].platform)
    total = -(-rows.size // size) * size
    idx = _batch.pad_index(np.arange(rows.size), total)
    grid_dev = jax.device_put(grid, devices[0])

    def run(b):
        args = (grid_dev, b["Z"], b["dx2"], b["dy2"], b["init"])
        return program(args, opts=opts, return_trajectory=return_trajectory,
                       device=devices[0])(*args)

    out = _batch.map_chunks(run, {k: v[idx] for k, v in part.items()},
                            size=size, threads=threads, device=devices[0], label="fit")
    return {k: None if v is None else v[: rows.size] for k, v in out.items()}


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
