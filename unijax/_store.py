"""Atomic, resumable storage of experiment results (used by :mod:`unijax.cli`).

Layout of an output directory ``OUT``::

    OUT/<EXP>/config.json        the experiment's config and its hash (written when it starts)
    OUT/<EXP>/chunks/<id>.npz    finished pieces of work (one training run, one fit, ...)
    OUT/<EXP>/result.npz         the experiment's raw arrays
    OUT/<EXP>/*.png, *.pdf       its figures
    OUT/<EXP>/results.json       agreement figures; written last, it marks the experiment done

Every file is written atomically: to a temporary file in the same directory (name starting with
``.tmp-``), flushed and ``fsync``-ed, then moved over the target with ``os.replace`` (atomic on
POSIX and Windows), and the directory is ``fsync``-ed. A crash leaves either the old file or the
new one, never a torn one; stray ``.tmp-*`` files are ignored and cleaned up on the next start.

Every chunk and result carries the sha256 hash of its config (:func:`config_hash`), so a resumed
run never mixes results of different settings: :meth:`ResultStore.begin` refuses a directory
written with another config and names the keys that differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "HASH_KEY",
    "ConfigMismatchError",
    "ResultStore",
    "atomic_save_json",
    "atomic_save_npz",
    "atomic_savefig",
    "atomic_write_bytes",
    "canonical_json",
    "config_hash",
    "config_to_dict",
    "diff_configs",
    "load_npz",
    "to_jsonable",
]

#: Name of the entry holding the config hash inside every stored ``.npz``.
HASH_KEY = "__config_hash__"
_TMP_PREFIX = ".tmp-"


# ---------------------------------------------------------------------------------------------
# Canonical JSON and config hashes
# ---------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for ``obj``: dataclasses/``eqx.Module`` become dicts, tuples lists,
    NumPy scalars and 0-d arrays Python numbers, arrays nested lists, NaN/inf ``None``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)) or type(obj).__module__.startswith("jax"):
        arr = np.asarray(obj)
        return to_jsonable(arr.item()) if arr.ndim == 0 else to_jsonable(arr.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store a value of type {type(obj).__name__} as JSON: {obj!r}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """The fields of a config dataclass as a JSON-ready dict (see :func:`to_jsonable`)."""
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")
    return to_jsonable(config)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, floats by ``repr`` (round-trip exact)."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: Any, *, name: str | None = None) -> str:
    """sha256 (hex) of the canonical JSON of ``config``'s fields, prefixed by ``name``.

    Two configs hash equal iff every field is equal (floats compared exactly) and the names
    (default: the config's class, qualified by module) agree.
    """
    if name is None:
        name = f"{type(config).__module__}.{type(config).__qualname__}"
    payload = canonical_json({"name": name, "config": config_to_dict(config)})
    return hashlib.sha256(payload.encode()).hexdigest()


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between two config dicts (incl. keys in only one), sorted."""
    keys = set(old) | set(new)
    return sorted(k for k in keys if canonical_json(old.get(k)) != canonical_json(new.get(k)))


class ConfigMismatchError(ValueError):
    """A directory holds results of a different config; ``keys`` lists what differs."""

    def __init__(self, message: str, keys: list[str]):
        super().__init__(message)
        self.keys = keys


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    # Directory fsync makes the rename durable; not supported everywhere (e.g. Windows).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX + path.name + ".")
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename). Returns the path."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` (converted by :func:`to_jsonable`) as indented JSON, atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def atomic_save_npz(
    path: str | os.PathLike, arrays: Mapping[str, Any], *, config_hash: str | None = None
) -> Path:
    """Save ``arrays`` (name -> array-like) as a compressed ``.npz``, atomically.

    With ``config_hash`` the hash is stored under :data:`HASH_KEY`. Object arrays are refused
    (they would need pickle to load).
    """
    out = {}
    for k, v in arrays.items():
        arr = np.asarray(v)
        if arr.dtype == object:
            raise TypeError(f"array {k!r} has dtype object; store numbers or strings only")
        out[k] = arr
    if config_hash is not None:
        out[HASH_KEY] = np.asarray(config_hash)
    return _atomic_write(path, lambda f: np.savez_compressed(f, **out))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (without pickle), the hash entry included if present."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def atomic_savefig(fig, stem: str | os.PathLike, *, formats=("png", "pdf"), dpi=150) -> list[Path]:
    """Save a matplotlib figure as ``stem.png`` and ``stem.pdf`` (each atomically)."""
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(atomic_write_bytes(Path(f"{stem}.{fmt}"), buf.getvalue()))
    return paths


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class ResultStore:
    """Finished experiments and chunks of one output directory, checked by config hash.

    Args:
        outdir: the output directory (created on first write).

    Typical use (what the CLI does)::

        store = ResultStore("unijax_out")
        h = store.begin("E3", config)           # raises ConfigMismatchError on a different config
        if not store.is_finished("E3", h):
            cache = store.chunk_cache("E3", h)  # cache(id, compute) -> arrays, resumable
            ...
            store.save_result("E3", arrays, summary, config_hash=h)
    """

    def __init__(self, outdir: str | os.PathLike):
        self.outdir = Path(outdir)

    # paths ------------------------------------------------------------------------------------
    def exp_dir(self, name: str) -> Path:
        return self.outdir / name

    def _chunk_path(self, name: str, chunk: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in chunk)
        return self.exp_dir(name) / "chunks" / f"{safe}.npz"

    # config -----------------------------------------------------------------------------------
    def stored_config(self, name: str) -> dict | None:
        """The ``config.json`` of experiment ``name`` (``{"config": ..., "config_hash": ...}``)."""
        return _read_json(self.exp_dir(name) / "config.json")

    def check(self, name: str, config: Any) -> str:
        """Hash of ``config``; raises :class:`ConfigMismatchError` if ``name`` was started with
        a different config in this directory. Writes nothing."""
        h = config_hash(config)
        old = self.stored_config(name)
        if old is not None and old.get("config_hash") != h:
            keys = diff_configs(old.get("config", {}), config_to_dict(config))
            shown = ", ".join(
                f"{k} (stored {canonical_json(old.get('config', {}).get(k))}, "
                f"now {canonical_json(config_to_dict(config).get(k))})"
                for k in keys
            )
            raise ConfigMismatchError(
                f"{self.exp_dir(name)} holds results of a different {name} config; differing "
                f"keys: {shown or '(code version)'}. Use another --out, or --fresh to discard "
                "the old results",
                keys,
            )
        return h

    def begin(self, name: str, config: Any, *, fresh: bool = False) -> str:
        """Start (or resume) experiment ``name``: check the config, record it, return its hash.

        Args:
            fresh: discard whatever the directory holds for ``name`` first.

        Raises:
            ConfigMismatchError: the directory holds ``name`` run with another config.
        """
        d = self.exp_dir(name)
        if fresh and d.exists():
            shutil.rmtree(d)
        h = self.check(name, config)
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.rglob(_TMP_PREFIX + "*"):  # left by a crash between write and rename
            with contextlib.suppress(OSError):
                stale.unlink()
        if self.stored_config(name) is None:
            atomic_save_json(
                d / "config.json",
                {"experiment": name, "config": config_to_dict(config), "config_hash": h},
            )
        return h

    # chunks -----------------------------------------------------------------------------------
    def chunk_done(self, name: str, chunk: str, config_hash: str) -> bool:
        """True when chunk ``chunk`` of ``name`` is stored with hash ``config_hash``."""
        return self.load_chunk(name, chunk, config_hash) is not None

    def load_chunk(self, name: str, chunk: str, config_hash: str) -> dict[str, np.ndarray] | None:
        """The chunk's arrays (without the hash entry), or None if absent/other hash/corrupt."""
        path = self._chunk_path(name, chunk)
        if not path.exists():
            return None
        try:
            arrays = load_npz(path)
        except Exception:  # a torn file cannot exist, but a foreign or damaged one can
            return None
        if str(arrays.pop(HASH_KEY, "")) != config_hash:
            return None
        return arrays

    def save_chunk(self, name: str, chunk: str, arrays: Mapping[str, Any], config_hash: str):
        """Store one finished chunk atomically."""
        return atomic_save_npz(self._chunk_path(name, chunk), arrays, config_hash=config_hash)

    def chunk_cache(self, name: str, config_hash: str, *, agree=None,
                    writer: bool = True) -> ChunkCache:
        """A :class:`ChunkCache` backed by this store (``agree``, ``writer``: see there)."""
        return ChunkCache(self, name, config_hash, agree=agree, writer=writer)

    # results ----------------------------------------------------------------------------------
    def is_finished(self, name: str, config_hash: str) -> bool:
        """True when ``results.json`` and ``result.npz`` of ``name`` both carry ``config_hash``."""
        summary = _read_json(self.exp_dir(name) / "results.json")
        if summary is None or summary.get("config_hash") != config_hash:
            return False
        path = self.exp_dir(name) / "result.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                return HASH_KEY in z.files and str(z[HASH_KEY]) == config_hash
        except (OSError, ValueError):
            return False

    def save_result(
        self,
        name: str,
        arrays: Mapping[str, Any],
        summary: Mapping[str, Any],
        *,
        config_hash: str,
    ) -> Path:
        """Write ``result.npz`` then ``results.json`` (the completion marker), atomically."""
        d = self.exp_dir(name)
        atomic_save_npz(d / "result.npz", arrays, config_hash=config_hash)
        return atomic_save_json(d / "results.json", {**summary, "config_hash": config_hash})

    def load_result(self, name: str) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, summary)`` of a finished experiment (arrays without the hash entry)."""
        d = self.exp_dir(name)
        summary = _read_json(d / "results.json")
        if summary is None:
            raise FileNotFoundError(f"{d / 'results.json'} does not exist or is unreadable")
        arrays = load_npz(d / "result.npz")
        stored = str(arrays.pop(HASH_KEY, ""))
        if stored != summary.get("config_hash"):
            raise ValueError(f"{d}: result.npz and results.json carry different config hashes")
        return arrays, summary

    def load_summary(self, name: str) -> dict | None:
        """``results.json`` of ``name`` or None."""
        return _read_json(self.exp_dir(name) / "results.json")


class ChunkCache:
    """Memoization of named pieces of work, persisted in a :class:`ResultStore`.

    ``cache(chunk_id, compute)`` returns the stored arrays of ``chunk_id`` if they exist with
    this config's hash, else calls ``compute()`` (which returns name -> array), stores the
    result atomically and returns it. ``hits`` and ``misses`` count the two cases.

    Several processes computing together (``unijax run`` on many hosts) share one cache:
    ``agree(key, fn)`` returns the writing process's ``fn()`` on every process, so all take
    the same branch (read the chunk, or compute it together), and only ``writer`` stores it.
    The defaults serve one process.
    """

    def __init__(self, store: ResultStore, name: str, config_hash: str, *, agree=None,
                 writer: bool = True):
        self.store, self.name, self.config_hash = store, name, config_hash
        self.agree = agree if agree is not None else (lambda key, fn: fn())
        self.writer = writer
        self.hits = 0
        self.misses = 0

    def __call__(
        self, chunk: str, compute: Callable[[], Mapping[str, Any]]
    ) -> dict[str, np.ndarray]:
        held: dict[str, Any] = {}

        def stored() -> bool:
            held["arrays"] = self.store.load_chunk(self.name, chunk, self.config_hash)
            return held["arrays"] is not None

        if self.agree(f"{self.name}/chunk/{chunk}", stored):
            got = held["arrays"] if "arrays" in held else self.store.load_chunk(
                self.name, chunk, self.config_hash)
            if got is None:
                raise RuntimeError(
                    f"chunk {chunk!r} of {self.name} is stored in {self.store.outdir} as the "
                    "writing process sees it but cannot be read by this one: the output "
                    "directory must be shared by all processes (NFS, Lustre, ...)"
                )
            self.hits += 1
            return got
        self.misses += 1
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        if self.writer:
            self.store.save_chunk(self.name, chunk, arrays, self.config_hash)
        return arrays


def memory_cache() -> Callable[[str, Callable[[], Mapping[str, Any]]], dict[str, np.ndarray]]:
    """A cache with the :class:`ChunkCache` interface that stores nothing (plain recompute)."""

    def cache(chunk: str, compute):
        return {k: np.asarray(v) for k, v in compute().items()}

    return cache
