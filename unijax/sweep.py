"""Large sweeps, architectures x gains x seeds x layers, in resumable chunks, on one or many hosts.

A sweep trains every architecture of ``archs`` at every gain of ``gains`` from every seed of
``seeds``, records ``(h, y, w)`` at every layer of ``layers``, and (``fit=True``) fits the
effective rates ``(eta_h, eta_y)`` of each recorded layer of each trial (docs/theory.md section 11).

The grid is cut into chunks: one chunk is one :func:`unijax.train.train` call for one
architecture over a block of ``gains_per_chunk`` gains x ``seeds_per_chunk`` seeds (all
layers), then one :func:`unijax.fit.fit_rates` call over its trajectories (on the same devices).
Each finished chunk is written atomically (temporary file, ``fsync``, ``os.replace``) with the
sweep's config hash, by :class:`unijax.results._store.ResultStore`. A run killed at any moment
(SIGKILL included) and started again with the same config loads the finished chunks and
recomputes only the ones that were in flight; the merged result is the same as that of an
uninterrupted run, because every trial depends only on its own seed (key
``fold_in(key, seed)``) and gain, not on the chunk it falls in. Starting again with a
different config is refused, naming the differing keys (``fresh=True`` discards instead).
A damaged chunk or result (unreadable, an array missing or of the wrong shape) is reported on
stderr and recomputed; the others are kept.

``outdir`` must be new, empty, or a sweep directory unijax wrote (it carries the marker
``.unijax.json``); any other directory is refused with
:class:`unijax.results._store.ForeignDataError`. unijax writes and deletes there only its own files
(``fresh=True`` included): files you put in it stay.

Layout of ``outdir``::

    outdir/.unijax.json       marker: unijax wrote this sweep directory
    outdir/config.json        the sweep config and its hash (first start)
    outdir/chunks/<id>.npz    finished chunks, e.g. ``mlp_g0_s1.npz``
    outdir/result.npz         the merged arrays (see :class:`SweepResult`)
    outdir/results.json       summary; written last, it marks the sweep finished

Multi-host (after :func:`unijax.distributed.initialize`): chunk ``i`` is computed by process
``i % num_processes`` on that process's own devices; chunks are independent, so processes
never wait for each other until the end, and a dead process loses only its chunk in flight.
``outdir`` must be on a file system all processes see (NFS, Lustre, GPFS...); process 0
writes the merged result after a barrier, and every process returns it.

>>> from unijax import configs, sweep                               # doctest: +SKIP
>>> cfg = sweep.SweepConfig(train=configs.get("default", width=8, depth=2, epochs=50),
...                         archs=("mlp", "skip"), gains=(0.5, 1.0), seeds=tuple(range(8)),
...                         layers=(0, 1), seeds_per_chunk=4)
>>> res = sweep.run_sweep(cfg, "out/sweep")                         # doctest: +SKIP
>>> res.eta_h.shape   # (n_archs, n_gains, n_seeds, n_layers)        # doctest: +SKIP
(2, 2, 8, 2)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import _batch, distributed, fit, nets, train
from ._checks import check_seeds  # the same seed rules as train (range, no repeats)
from .configs import TrainConfig
from .results._store import (
    STORE_VERSION,
    DamagedStoreError,
    OlderStoreError,
    ResultStore,
    claim_dir,
    config_hash,
    lock_dir,
    older_text,
)

__all__ = [
    "SweepConfig",
    "SweepResult",
    "check_sweep_dir",
    "chunk_plan",
    "load_sweep",
    "run_sweep",
]


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _tuple(name: str, value, kind) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a non-empty sequence, got {name}={value!r}.")
    out = tuple(value)
    if not out:
        raise ValueError(f"{name} must be a non-empty sequence, got {name}={value!r}.")
    if kind is int:
        for v in out:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must hold integers >= 0, got {name}={value!r}.")
        out = tuple(int(v) for v in out)
    elif kind is float:
        try:
            out = tuple(float(v) for v in out)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must hold numbers, got {name}={value!r}.") from None
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat values, got {name}={value!r}.")
    return out


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A grid of training runs and fits, cut into chunks (frozen, hashable).

    Attributes:
        train: the base :class:`~unijax.configs.TrainConfig`; each grid point replaces its
            ``arch`` (the ``"dropout"`` architecture gets ``dropout=0.1`` if the base has 0)
            and trains at the grid's gains.
        archs: architectures, each in :data:`unijax.nets.ARCHITECTURES`, no repeats.
        gains: Xavier gains, each finite and > 0, no repeats.
        seeds: initialization seeds, integers >= 0, no repeats (trial key
            ``fold_in(key(key), seed)``).
        layers: recorded hidden layers, each in ``[0, train.depth)``; ``None``:
            ``(train.layer,)``. Always a tuple after construction.
        seeds_per_chunk, gains_per_chunk: block sizes of a chunk, integers >= 1 (clipped to
            the grid). The last block is padded with repeats of its last seed/gain (computed,
            then dropped) so that every chunk has the same shape and compiles once.
        fit: fit ``(eta_h, eta_y)`` to every recorded layer of every non-diverged trial.
        key: integer seed of the base ``jax.random.key``, in ``[0, 2**63 - 1]``.

    Raises:
        ValueError: any field out of range, naming it, its value and the valid range.
    """

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    archs: tuple[str, ...] = ("mlp",)
    gains: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0,)
    layers: tuple[int, ...] | None = None
    seeds_per_chunk: int = 8
    gains_per_chunk: int = 1
    fit: bool = True
    key: int = 0

    def __post_init__(self):
        if not isinstance(self.train, TrainConfig):
            raise ValueError(
                f"train must be a unijax.configs.TrainConfig, got {type(self.train).__name__}."
            )
        archs = _tuple("archs", self.archs, str)
        for a in archs:
            if a not in nets.ARCHITECTURES:
                raise ValueError(f"unknown arch {a!r} in archs; valid: {list(nets.ARCHITECTURES)}.")
        object.__setattr__(self, "archs", archs)
        gains = _tuple("gains", self.gains, float)
        for g in gains:
            if not (math.isfinite(g) and g > 0):
                raise ValueError(f"gains must be finite and > 0, got gain {g!r} in {gains}.")
        object.__setattr__(self, "gains", gains)
        seeds = check_seeds(_tuple("seeds", self.seeds, int))
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        layers = (self.train.layer,) if self.layers is None else self.layers
        layers = _tuple("layers", layers, int)
        for layer in layers:
            if not 0 <= layer < self.train.depth:
                raise ValueError(
                    f"layers must lie in [0, {self.train.depth - 1}] (train.depth="
                    f"{self.train.depth}), got layer {layer} in {layers}."
                )
        object.__setattr__(self, "layers", layers)
        for name in ("seeds_per_chunk", "gains_per_chunk", "key"):
            v = getattr(self, name)
            low = 0 if name == "key" else 1
            high = 2**63 - 1 if name == "key" else 2**31 - 1  # key: what jax.random.key takes
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= high:
                raise ValueError(f"{name}={v!r} is out of range: must be an integer >= {low} "
                                 f"and <= {high}.")
            object.__setattr__(self, name, int(v))
        if not isinstance(self.fit, (bool, np.bool_)):
            raise ValueError(f"fit must be True or False, got fit={self.fit!r}.")
        object.__setattr__(self, "fit", bool(self.fit))
        for a in archs:  # every grid point must be a valid config (e.g. conv needs depth >= 3)
            try:
                self.train_config(a)
            except ValueError as e:
                raise ValueError(f"arch {a!r} does not fit the base config: {e}") from None

    def train_config(self, arch: str) -> TrainConfig:
        """The training config of architecture ``arch`` (gains come from the grid)."""
        over: dict[str, Any] = {"arch": arch, "name": f"{self.train.name}_{arch}"}
        if arch == "dropout" and self.train.dropout == 0:
            over["dropout"] = nets.DEFAULT_DROPOUT
        return dataclasses.replace(self.train, **over)

    @classmethod
    def from_dict(cls, d: dict) -> SweepConfig:
        """Inverse of :func:`unijax.results._store.config_to_dict` (what ``config.json`` holds)."""
        d = dict(d)
        d["train"] = TrainConfig(**d["train"])
        for k in ("archs", "gains", "seeds", "layers"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """One block of the grid: architecture index, gain indices, seed indices (padded)."""

    index: int
    arch: int
    gains: tuple[int, ...]  # indices into cfg.gains, padded with repeats of the last
    seeds: tuple[int, ...]  # indices into cfg.seeds, padded likewise
    n_gains: int  # real (unpadded) counts
    n_seeds: int

    @property
    def id(self) -> str:
        return f"a{self.arch}_g{self.gains[0]}_s{self.seeds[0]}"


def _blocks(n: int, size: int) -> list[tuple[tuple[int, ...], int]]:
    size = min(size, n)
    out = []
    for start in range(0, n, size):
        idx = list(range(start, min(start + size, n)))
        real = len(idx)
        idx += [idx[-1]] * (size - real)
        out.append((tuple(idx), real))
    return out


def chunk_plan(cfg: SweepConfig) -> list[_Chunk]:
    """The chunks of ``cfg`` in order (architecture-major, then gain block, then seed block)."""
    chunks = []
    gb = _blocks(len(cfg.gains), cfg.gains_per_chunk)
    sb = _blocks(len(cfg.seeds), cfg.seeds_per_chunk)
    for a, (g, ng), (s, ns) in itertools.product(range(len(cfg.archs)), gb, sb):
        chunks.append(_Chunk(len(chunks), a, g, s, ng, ns))
    return chunks


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------

_TRAIN_FIELDS = ("loss", "final_loss", "diverged", "diverged_epoch", "h", "y", "w", "final_h")
_FIT_FIELDS = (
    "eta_h",
    "eta_y",
    "stderr_eta_h",
    "stderr_eta_y",
    "sse",
    "r2",
    "converged",
    "n_iters",
)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Merged arrays of a sweep (NumPy; ``A, G, S, L`` = archs, gains, seeds, layers).

    Time is in epochs (entry ``t`` = before the update of epoch ``t``), rates in 1/epoch.

    Attributes:
        config: the :class:`SweepConfig`.
        loss: ``(A, G, S, n_epochs)`` training loss; final_loss ``(A, G, S)``.
        diverged: ``(A, G, S)`` bool; diverged_epoch ``(A, G, S)`` int (-1: never).
        h, y, w: ``(A, G, S, L, n_epochs)`` two-point observables at each recorded layer.
        final_h: ``(A, G, S, L)``.
        eta_h, eta_y, stderr_eta_h, stderr_eta_y, sse: ``(A, G, S, L)`` fitted rates and
            their standard errors (NaN where not fitted); r2 ``(A, G, S, L, 3)``;
            converged ``(A, G, S, L)`` bool (False for diverged or unfitted trials);
            n_iters ``(A, G, S, L)``. All ``None`` when ``config.fit`` is False.
        n_chunks: number of chunks; n_computed: chunks computed by this call in this process
            (the rest were loaded from ``outdir``).
    """

    config: SweepConfig
    loss: np.ndarray
    final_loss: np.ndarray
    diverged: np.ndarray
    diverged_epoch: np.ndarray
    h: np.ndarray
    y: np.ndarray
    w: np.ndarray
    final_h: np.ndarray
    eta_h: np.ndarray | None
    eta_y: np.ndarray | None
    stderr_eta_h: np.ndarray | None
    stderr_eta_y: np.ndarray | None
    sse: np.ndarray | None
    r2: np.ndarray | None
    converged: np.ndarray | None
    n_iters: np.ndarray | None
    n_chunks: int
    n_computed: int

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields by name (what ``result.npz`` holds)."""
        names = _TRAIN_FIELDS + (_FIT_FIELDS if self.config.fit else ())
        return {k: getattr(self, k) for k in names}

    def summary(self) -> str:
        """A few lines for a log: grid, divergence, converged fits, mean rates."""
        d = self.summary_dict()
        g = d["grid"]
        lines = [
            f"SweepResult: {len(g['archs'])} archs x {len(g['gains'])} gains x {g['n_seeds']} "
            f"seeds x {len(g['layers'])} layers in {d['n_chunks']} chunks; "
            f"diverged: {d['n_diverged']}/{d['n_trials']} trials"
        ]
        if "rates" in d:
            lines.append(f"converged layer fits: {d['n_fit_converged']}")
            for r in d["rates"]:
                rates = ("no converged fit" if r["eta_h"] is None else
                         f"eta_h = {r['eta_h']:.4g}, eta_y = {r['eta_y']:.4g} 1/epoch")
                lines.append(f"  {r['arch']} gain {r['gain']:g} layer {r['layer']}: "
                             f"{r['n_converged']} converged, {rates}")
        return "\n".join(lines)

    def summary_dict(self) -> dict[str, Any]:
        """Counts and mean fitted rates per architecture and gain (JSON-ready)."""
        cfg = self.config
        out: dict[str, Any] = {
            "n_trials": int(self.diverged.size),
            "n_diverged": int(self.diverged.sum()),
            "n_chunks": self.n_chunks,
            "grid": {
                "archs": list(cfg.archs),
                "gains": list(cfg.gains),
                "n_seeds": len(cfg.seeds),
                "layers": list(cfg.layers),
            },
        }
        if cfg.fit:
            rows = []
            for a, arch in enumerate(cfg.archs):
                for g, gain in enumerate(cfg.gains):
                    for li, layer in enumerate(cfg.layers):
                        ok = self.converged[a, g, :, li]
                        rows.append(
                            {
                                "arch": arch,
                                "gain": gain,
                                "layer": layer,
                                "n_converged": int(ok.sum()),
                                "eta_h": float(np.mean(self.eta_h[a, g, ok, li]))
                                if ok.any()
                                else None,
                                "eta_y": float(np.mean(self.eta_y[a, g, ok, li]))
                                if ok.any()
                                else None,
                            }
                        )
            out["n_fit_converged"] = int(self.converged.sum())
            out["rates"] = rows
        return out


# ---------------------------------------------------------------------------------------------
# One chunk
# ---------------------------------------------------------------------------------------------


def _fit_chunk(ts, h, y, w, diverged, dx2, dy2, mesh) -> dict[str, np.ndarray]:
    """Fit every (gain, seed, layer) trajectory of a chunk; NaN/False where not fittable.

    ``h, y, w``: ``(G, S, L, E)``. One :func:`unijax.fit.fit_rates` call over all ``G * S * L``
    trials, unfittable ones masked out (``where``), so the fit compiles once per sweep.
    """
    G, S, L, E = h.shape
    Z = np.stack([h, y, w], axis=-1).astype(np.float64).reshape(G * S * L, E, 3)
    ok = np.isfinite(Z).all(axis=(1, 2)) & (Z[:, 0, 0] > 0) & (Z[:, 0, 1] >= 0)
    ok &= ~np.repeat(np.asarray(diverged).reshape(G * S), L)
    with jax.enable_x64(True):
        res = fit.fit_rates(ts, Z, dx2=dx2, dy2=dy2, where=ok, mesh=mesh,
                            return_trajectory=False)
    out = {k: np.asarray(getattr(res, k)) for k in _FIT_FIELDS}
    out["n_iters"] = out["n_iters"].astype(np.int64)
    return {k: v.reshape((G, S, L) + v.shape[1:]) for k, v in out.items()}


def _compute_chunk(cfg: SweepConfig, chunk: _Chunk) -> dict[str, np.ndarray]:
    """Train one chunk on this process's devices (and fit it); arrays with (G, S, ...) axes."""
    devices = jax.local_devices()
    seeds = [cfg.seeds[i] for i in chunk.seeds[: chunk.n_seeds]]
    # train refuses repeated seeds: pad the last block with unused seeds (computed, then
    # dropped) so that the chunk keeps its shape and its compiled program.
    used = set(seeds)
    spare = (s for s in itertools.count() if s not in used)
    seeds += [next(spare) for _ in range(len(chunk.seeds) - chunk.n_seeds)]
    res = train.train(
        cfg.train_config(cfg.archs[chunk.arch]),
        seeds=seeds,
        gains=[cfg.gains[i] for i in chunk.gains],
        layers=list(cfg.layers),
        key=jax.random.key(cfg.key),
        devices=devices,
    )
    if res.h is None:
        raise ValueError(
            f"dataset={cfg.train.dataset!r} records no two-point observables (h, y, w); a "
            "sweep needs a recorded pair (use dataset='two_points')."
        )
    arrays = {k: np.asarray(getattr(res, k)) for k in _TRAIN_FIELDS}
    if cfg.fit:
        mesh = _batch.batch_mesh(devices)
        ts = np.arange(res.n_epochs, dtype=np.float64)
        arrays.update(
            _fit_chunk(
                ts,
                arrays["h"],
                arrays["y"],
                arrays["w"],
                arrays["diverged"],
                res.dx2,
                res.dy2,
                mesh,
            )
        )
    return arrays


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------


def _check_resume(store: ResultStore, name: str, cfg: SweepConfig) -> str:
    """The config hash; refuses a directory holding another config, naming dotted keys."""
    return store.check(name, cfg, what="a sweep run with a different config",
                       advice="Use another output directory, or fresh=True (--fresh) to "
                       "discard the old results.")


def check_sweep_dir(cfg: SweepConfig, outdir: str | Path, *, fresh: bool = False) -> None:
    """Refuse, before any work and writing nothing, an ``outdir`` that :func:`run_sweep` would
    refuse: one unijax did not write (:class:`~unijax.results.ForeignDataError`) or, unless
    ``fresh``, one holding a sweep of another config (:class:`~unijax.results.ConfigMismatchError`,
    naming the dotted keys)."""
    outdir = Path(outdir).expanduser().resolve()
    claim_dir(outdir, "sweep", dry_run=True)
    if not fresh:
        _check_resume(ResultStore(outdir.parent), outdir.name, cfg)


_BARRIERS = itertools.count()


def _barrier(stage: str, h: str) -> None:
    distributed.barrier(f"unijax-sweep-{h[:12]}-{stage}-{next(_BARRIERS)}")


def _fields(cfg: SweepConfig) -> tuple[str, ...]:
    return _TRAIN_FIELDS + (_FIT_FIELDS if cfg.fit else ())


def _load_chunk(store: ResultStore, name: str, cfg: SweepConfig, chunk: _Chunk, h: str):
    """The stored arrays of ``chunk`` if present and whole (every field, its block's shape),
    else None (a damaged one is logged, to be recomputed)."""
    got = store.load_chunk(name, chunk.id, h, require=_fields(cfg))
    if got is None:
        return None
    block = (len(chunk.gains), len(chunk.seeds))
    bad = [k for k in _fields(cfg) if np.ndim(got[k]) < 2 or np.shape(got[k])[:2] != block]
    if bad:
        store.log(f"{name}/chunks/{chunk.id}.npz: array(s) {', '.join(bad)} do not have the "
                  f"chunk's shape {block}: recomputing that chunk")
        return None
    return got


def _merge(cfg: SweepConfig, chunks, load) -> dict[str, np.ndarray]:
    """Assemble per-chunk ``(G_blk, S_blk, ...)`` arrays into ``(A, G, S, ...)`` arrays."""
    A, G, S = len(cfg.archs), len(cfg.gains), len(cfg.seeds)
    merged: dict[str, np.ndarray] = {}
    for chunk in chunks:
        arrays = load(chunk)
        gi = np.asarray(chunk.gains[: chunk.n_gains])
        si = np.asarray(chunk.seeds[: chunk.n_seeds])
        for k, v in arrays.items():
            if k not in merged:
                merged[k] = np.zeros((A, G, S) + v.shape[2:], v.dtype)
            merged[k][chunk.arch, gi[:, None], si[None, :]] = v[: chunk.n_gains, : chunk.n_seeds]
    return merged


def run_sweep(
    cfg: SweepConfig,
    outdir: str | Path,
    *,
    progress: bool = True,
    fresh: bool = False,
) -> SweepResult:
    """Run (or resume, or just load) the sweep ``cfg`` in ``outdir``.

    Finished chunks found in ``outdir`` (same config hash) are loaded, the others computed
    and stored one by one; the merged arrays are written to ``outdir/result.npz`` and
    ``outdir/results.json``. With several processes (after
    :func:`unijax.distributed.initialize`), call it on every process with the same arguments:
    chunk ``i`` runs on process ``i % num_processes``; all return the same result.

    Args:
        cfg: the :class:`SweepConfig`.
        outdir: the sweep's directory (created; shared by all processes).
        progress: print one line per chunk to stderr.
        fresh: delete unijax's own files in ``outdir`` first (process 0), instead of
            resuming; files unijax did not write stay.

    Returns:
        :class:`SweepResult`.

    Raises:
        ForeignDataError (a ValueError): ``outdir`` exists and unijax did not write it (or it
            is not a sweep directory); nothing in it is touched.
        ConfigMismatchError (a ValueError): ``outdir`` holds a sweep with another config (or
            of an older store format); its message and ``.keys`` name the differing keys
            (dotted, e.g. ``train.width``).
        DirectoryInUseError: another process is writing ``outdir`` (named in the message).
        OSError: a write failed (a full disk, no permission); finished chunks are kept.
        FileNotFoundError: after all processes finished, a chunk file is missing (``outdir``
            not on a shared file system).
    """
    if not isinstance(cfg, SweepConfig):
        raise ValueError(f"cfg must be a SweepConfig, got {type(cfg).__name__}.")
    outdir = Path(outdir).expanduser().resolve()
    store = ResultStore(outdir.parent)
    name = outdir.name
    pid = jax.process_index()

    h = config_hash(cfg)
    with contextlib.ExitStack() as hold:
        if pid == 0:
            claim_dir(outdir, "sweep", dry_run=True)  # a foreign directory: refused, untouched
            if not fresh:
                _check_resume(store, name, cfg)
            hold.enter_context(lock_dir(outdir))  # one writing run per directory
            # Claims and marks the directory, cleans stale temp files; config.json is
            # recorded with the first stored chunk.
            store.begin(name, cfg, fresh=fresh, kind="sweep")
        return _run_sweep(cfg, outdir, store, h, progress)


def _run_sweep(cfg: SweepConfig, outdir: Path, store: ResultStore, h: str,
               progress: bool) -> SweepResult:
    """The rest of :func:`run_sweep`, with ``outdir`` held (process 0)."""
    import jax

    from . import distributed

    name = outdir.name
    pid, nproc = jax.process_index(), jax.process_count()
    _barrier("begin", h)
    if pid != 0:
        _check_resume(store, name, cfg)

    chunks = chunk_plan(cfg)
    got = store.finished_result(name, h, require=_fields(cfg))
    if got is not None and all(np.shape(got[0][k])[:3] == (len(cfg.archs), len(cfg.gains),
                                                            len(cfg.seeds)) for k in _fields(cfg)):
        return _result(cfg, got[0], len(chunks), 0)

    n_computed = 0
    mine = [c for c in chunks if c.index % nproc == pid]
    t_start = time.perf_counter()
    for j, chunk in enumerate(mine):
        if _load_chunk(store, name, cfg, chunk, h) is not None:
            continue
        t0 = time.perf_counter()
        arrays = _compute_chunk(cfg, chunk)
        store.save_chunk(name, chunk.id, arrays, h)
        n_computed += 1
        if progress:
            who = f"process {pid}/{nproc}: " if nproc > 1 else ""
            print(
                f"unijax sweep: {who}chunk {chunk.index + 1}/{len(chunks)} "
                f"arch={cfg.archs[chunk.arch]} "
                f"gains[{chunk.gains[0]}:{chunk.gains[0] + chunk.n_gains}] "
                f"seeds[{chunk.seeds[0]}:{chunk.seeds[0] + chunk.n_seeds}] "
                f"{time.perf_counter() - t0:.1f} s ({j + 1}/{len(mine)} done or loaded, "
                f"{time.perf_counter() - t_start:.0f} s so far)",
                file=sys.stderr,
                flush=True,
            )
    _barrier("chunks", h)

    def load(chunk):
        got = _load_chunk(store, name, cfg, chunk, h)
        if got is None:
            raise FileNotFoundError(
                f"chunk {chunk.id} (process {chunk.index % nproc}) is missing from "
                f"{outdir / 'chunks'} after all processes finished: the output directory must "
                "be on a file system shared by all processes."
            )
        return got

    merged = _merge(cfg, chunks, load)
    result = _result(cfg, merged, len(chunks), n_computed)
    if distributed.is_writer():
        store.save_result(name, result.arrays(), result.summary_dict(), config_hash=h)
    _barrier("done", h)
    return result


def _result(cfg: SweepConfig, arrays: dict, n_chunks: int, n_computed: int) -> SweepResult:
    fields = {k: arrays[k] for k in _TRAIN_FIELDS}
    fields.update({k: (arrays[k] if cfg.fit else None) for k in _FIT_FIELDS})
    return SweepResult(config=cfg, n_chunks=n_chunks, n_computed=n_computed, **fields)


def load_sweep(outdir: str | Path) -> SweepResult:
    """The finished sweep stored in ``outdir``.

    Raises:
        FileNotFoundError: not a sweep directory, or the sweep is unfinished or damaged.
        OlderStoreError: stored by an older unijax (another store format): recompute it.
        DamagedStoreError: its ``config.json`` does not hold a valid sweep config.
    """
    outdir = Path(outdir).expanduser().resolve()
    store = ResultStore(outdir.parent)
    stored = store.stored_config(outdir.name)
    if stored is None:
        raise FileNotFoundError(f"{outdir / 'config.json'} does not exist: not a sweep directory.")
    if stored.get("store_version") != STORE_VERSION:
        raise OlderStoreError(
            f"{older_text(str(outdir), stored.get('store_version'))} and does not read it: "
            "run the sweep again with --fresh (fresh=True) to recompute it", outdir)
    try:
        cfg = SweepConfig.from_dict(stored["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise DamagedStoreError(f"{outdir / 'config.json'} does not hold a valid sweep config "
                                f"({type(e).__name__}: {' '.join(str(e).split())[:160]})",
                                outdir / "config.json") from None
    got = store.finished_result(outdir.name, config_hash(cfg), require=_fields(cfg))
    if got is None:
        raise FileNotFoundError(
            f"the sweep in {outdir} is not finished, damaged, or was written by another code "
            "version: run it again with the same config to resume (or recompute what is "
            "damaged)."
        )
    return _result(cfg, got[0], len(chunk_plan(cfg)), 0)
