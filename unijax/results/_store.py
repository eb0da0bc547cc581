"""Atomic, resumable, self-checking storage of results (used by :mod:`unijax.cli` and
:mod:`unijax.sweep`).

Layout of an output directory ``OUT`` of ``unijax run`` (a sweep directory is laid out like one
experiment directory)::

    OUT/.unijax.json             marker: unijax wrote this directory (kind "run")
    OUT/report.md                the report (:mod:`unijax.report`)
    OUT/<EXP>/.unijax.json       marker (kind "experiment"; lists the figures unijax wrote)
    OUT/<EXP>/config.json        the experiment's config, its hash, the upstream rates it used
    OUT/<EXP>/chunks/<id>.npz    finished pieces of work (one training run, one fit, ...)
    OUT/<EXP>/result.npz         the experiment's raw arrays
    OUT/<EXP>/*.png, *.pdf       its figures
    OUT/<EXP>/results.json       agreement figures; written last, it marks the experiment done

**Never touch what unijax did not write.** Every directory unijax creates carries the marker
:data:`MARKER` (JSON: ``"written_by": "unijax"``, the kind of directory, the code version that
created it, the figure files written there). unijax writes, overwrites and deletes only its own
names inside a directory it marked: ``config.json``, ``result.npz``, ``results.json``, the
figures listed in the marker, ``chunks/*.npz``, temporary ``.tmp-*`` files, and ``report.md``
when it starts with the unijax report heading. Anything else is never touched, ``fresh``
included. :func:`claim_dir` decides whether a directory may be used: it creates and marks a new
(or empty) one, accepts one it marked, and refuses any other with :class:`ForeignDataError`
naming the path (an unmarked directory of an unijax older than the markers included).

**One writer per directory.** :func:`lock_dir` holds an exclusive lock (``filelock``) on
``.unijax.lock`` in the directory while a process writes there (``unijax run``,
:func:`unijax.sweep.run_sweep`, ``unijax report``); a second process is refused with
:class:`DirectoryInUseError`, naming the holder (pid, host, command) from
``.unijax.lock.json``.

**A versioned store.** Every stored file carries the store format version
:data:`STORE_VERSION` (``config.json``, ``results.json`` and the marker as ``store_version``;
every chunk and ``result.npz`` as the entry ``__store_version__``). Files of another version
are not read: :meth:`ResultStore.check` refuses a directory begun by another version (``--fresh``
recomputes it) and :meth:`ResultStore.load_result` raises :class:`OlderStoreError`.

**Atomic writes.** Every file is written to a temporary file in the same directory (name
starting with ``.tmp-``), flushed and ``fsync``-ed, then moved over the target with
``os.replace`` (atomic on POSIX and Windows), and the directory is ``fsync``-ed. A crash leaves
either the old file or the new one, never a torn one. A temporary file's name records the
process that made it (pid and a hash of the host name); stray ``.tmp-*`` files are ignored, and
removed only when provably stale: made by a process of this host that is gone (or by this
process and no longer being written), or older than :data:`STALE_TMP_S` seconds. Every OS
error of a write (a full disk, no permission, a name too long) names the file it was writing.

**Never trust a damaged file.** Every chunk and result carries the sha256 hash of its config
(:func:`config_hash`; for an experiment that used upstream rates, of the config and those
rates), the list of its arrays and the :func:`unijax._version.code_version` that computed it.
Reading validates all of it (and decompresses every array, which checks its CRC); a file that
fails is reported (the store's ``log``) and treated as absent, so the unit it held is
recomputed and everything else kept. A resumed run never mixes results of different settings:
:meth:`ResultStore.begin` refuses a directory written with another config, naming the keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unijax._dotted import dotted_keys
from unijax._version import code_version

__all__ = [
    "HASH_KEY",
    "MARKER",
    "ConfigMismatchError",
    "DamagedChunkError",
    "DamagedStoreError",
    "DirectoryInUseError",
    "ForeignDataError",
    "OlderStoreError",
    "STORE_VERSION",
    "ResultStore",
    "atomic_save_json",
    "atomic_save_npz",
    "atomic_savefig",
    "atomic_write_bytes",
    "canonical_json",
    "claim_dir",
    "config_hash",
    "config_to_dict",
    "diff_configs",
    "is_own_report",
    "load_npz",
    "lock_dir",
    "read_marker",
    "run_hash",
    "to_jsonable",
]

#: Name of the entry holding the config hash inside every stored ``.npz``.
HASH_KEY = "__config_hash__"
#: Entry listing the names of the arrays of a stored ``.npz`` (a missing array is detected).
MEMBERS_KEY = "__members__"
#: Entry holding the JSON of the code version that wrote a stored ``.npz``.
CODE_KEY = "__code_version__"
#: Entry holding the store format version of a stored ``.npz`` (see :data:`STORE_VERSION`).
VERSION_KEY = "__store_version__"
_META_KEYS = (HASH_KEY, MEMBERS_KEY, CODE_KEY, VERSION_KEY)
#: Version of the store's layout and file contents. Bumped whenever a stored file of the
#: previous version would be read differently; files of another version are not read.
#: Version 2: every file records it; chunks list their arrays; config.json has run_hash.
STORE_VERSION = 2
_TMP_PREFIX = ".tmp-"
#: A temporary file of another host (or without the owner's tag) counts as stale after this
#: many seconds; the longest write unijax makes takes seconds.
STALE_TMP_S = 6 * 3600.0
#: The marker file of every directory unijax creates.
MARKER = ".unijax.json"
#: The lock file (:func:`lock_dir`) and the holder's description next to it.
LOCK_NAME = ".unijax.lock"
LOCK_INFO = ".unijax.lock.json"
_OWN_HIDDEN = (MARKER, LOCK_NAME, LOCK_INFO)
#: Kinds of directories: a ``unijax run`` output, one experiment in it, a sweep.
KINDS = ("run", "experiment", "sweep")
#: Files unijax owns in an experiment or sweep directory it marked (besides figures, chunks).
OWN_FILES = ("config.json", "result.npz", "results.json")
CHUNKS_DIR = "chunks"
REPORT_NAME = "report.md"
#: First line of every report unijax writes: a ``report.md`` without it is not unijax's.
REPORT_HEADING = "# unijax report"
_HEX64 = re.compile(r"[0-9a-f]{64}")


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


def run_hash(config_hash: str, upstream: Any = None) -> str:
    """The hash results are stored under: ``config_hash`` itself without upstream inputs,
    else sha256 of it and the canonical JSON of ``upstream`` (e.g. the rates an experiment took
    from E1), so that a change upstream invalidates what was computed from it."""
    if upstream is None:
        return config_hash
    payload = canonical_json({"config_hash": config_hash, "upstream": upstream})
    return hashlib.sha256(payload.encode()).hexdigest()


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts (incl. keys in only one),
    sorted; nested blocks are compared leaf by leaf (:func:`unijax._dotted.dotted_keys`)."""
    old, new = dotted_keys(old), dotted_keys(new)
    keys = set(old) | set(new)
    return sorted(k for k in keys if canonical_json(old.get(k)) != canonical_json(new.get(k)))


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], str]:
    """``(keys, text)``: the differing dotted keys of two config dicts and, for a refusal's
    message, ``"rates.epochs (stored 400, now 600), ..."`` (``"(code version)"`` when the dicts
    agree and only the hash differs). A key that only one side has is shown as ``absent`` on
    the other."""
    keys = diff_configs(old, new)
    flat_old, flat_new = dotted_keys(old), dotted_keys(new)

    def shown(flat: Mapping[str, Any], k: str) -> str:
        return canonical_json(flat[k]) if k in flat else "absent"

    text = ", ".join(f"{k} (stored {shown(flat_old, k)}, now {shown(flat_new, k)})"
                     for k in keys)
    return keys, text or "(code version)"


class ConfigMismatchError(ValueError):
    """A directory holds results of a different config; ``keys`` lists what differs."""

    def __init__(self, message: str, keys: list[str]):
        super().__init__(message)
        self.keys = keys


class ForeignDataError(ValueError):
    """unijax refuses to write into, overwrite or delete ``path``: unijax did not write it."""

    def __init__(self, message: str, path: str | os.PathLike):
        super().__init__(message)
        self.path = Path(path)


class DamagedStoreError(ValueError):
    """A stored file cannot be used (unreadable, incomplete, inconsistent); names the file."""

    def __init__(self, message: str, path: str | os.PathLike):
        super().__init__(message)
        self.path = Path(path)


class OlderStoreError(DamagedStoreError):
    """A stored file was written in another store format (:data:`STORE_VERSION`); the message
    names it and says how to recompute it."""


class DirectoryInUseError(RuntimeError):
    """Another process holds the lock of ``path`` (:func:`lock_dir`); the message names it."""

    def __init__(self, message: str, path: str | os.PathLike):
        super().__init__(message)
        self.path = Path(path)


def older_text(what: str, version: Any) -> str:
    """``"<what> was written by an older unijax (store format 1; this unijax reads format
    2)"``: the start of every refusal of a file of another store version."""
    shown = version if isinstance(version, int) and not isinstance(version, bool) else 1
    age = "a newer" if isinstance(shown, int) and shown > STORE_VERSION else "an older"
    return (f"{what} was written by {age} unijax (store format {shown}; this unijax reads "
            f"format {STORE_VERSION})")


class DamagedChunkError(KeyError):
    """A stored chunk lacks an array its experiment asks for. ``name``, ``chunk``, ``key`` say
    which."""

    def __init__(self, name: str, chunk: str, key: str):
        super().__init__(f"chunk {chunk!r} of {name} has no array {key!r}")
        self.name, self.chunk, self.key = name, chunk, key

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.args[0]


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


#: Temporary paths this process is writing now (a stale-file sweep never removes them).
_IN_FLIGHT: set[str] = set()
_TMP_TAG = re.compile(r"\.p(\d+)h([0-9a-f]{8})\.")


def _host_hash() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _tmp_prefix(target: str) -> str:
    """``.tmp-<target>.p<pid>h<host hash>.``: whose temporary file it is. The target's name
    is shortened so that the temporary name stays within the file system's 255 bytes."""
    return f"{_TMP_PREFIX}{target[:64]}.p{os.getpid()}h{_host_hash()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's live process (or a pid we cannot ask about)
    return True


def is_stale_tmp(path: str | os.PathLike, *, now: float | None = None) -> bool:
    """True when the temporary file ``path`` is provably abandoned: made by a process of this
    host that no longer runs, or by this process and not being written now, or (made on
    another host, or without the owner's tag) older than :data:`STALE_TMP_S` seconds."""
    p = Path(path)
    m = _TMP_TAG.search(p.name)
    if m is not None and m.group(2) == _host_hash():
        pid = int(m.group(1))
        if pid == os.getpid():
            return os.path.abspath(p) not in _IN_FLIGHT
        return not _pid_alive(pid)
    try:
        age = (time.time() if now is None else now) - p.lstat().st_mtime
    except OSError:
        return False
    return age > STALE_TMP_S


def _named(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path`` (the file the caller asked for), not a temporary name."""
    return type(e)(e.errno, e.strerror or str(e), str(path)) if e.errno else e


def _atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, then ``os.replace``.

    Raises:
        OSError: the write failed (ENOSPC, EACCES, ENAMETOOLONG, ...); ``filename`` is
            ``path``, and nothing of the new content is left (the old file, if any, stays).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path.name))
    except OSError as e:
        raise _named(e, path) from e
    _IN_FLIGHT.add(os.path.abspath(tmp))
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _named(e, path) from e
        raise
    finally:
        _IN_FLIGHT.discard(os.path.abspath(tmp))
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

    With ``config_hash`` (a stored chunk or result) the hash is stored under :data:`HASH_KEY`,
    the sorted array names under :data:`MEMBERS_KEY` and the JSON of
    :func:`unijax._version.code_version` under :data:`CODE_KEY`. Object arrays are refused
    (they would need pickle to load). Every stored chunk or result also records
    :data:`STORE_VERSION` under :data:`VERSION_KEY`.
    """
    out = {}
    for k, v in arrays.items():
        if k in _META_KEYS:
            raise ValueError(f"array name {k!r} is reserved for the store's own entries")
        arr = np.asarray(v)
        if arr.dtype == object:
            raise TypeError(f"array {k!r} has dtype object; store numbers or strings only")
        out[k] = arr
    if config_hash is not None:
        out[HASH_KEY] = np.asarray(config_hash)
        out[MEMBERS_KEY] = np.asarray(sorted(arrays), dtype=str)
        out[CODE_KEY] = np.asarray(canonical_json(code_version().as_dict()))
        out[VERSION_KEY] = np.asarray(STORE_VERSION)
    return _atomic_write(path, lambda f: np.savez_compressed(f, **out))


def _npz_problem(e: BaseException) -> str:
    """Why an ``.npz`` could not be read, in words that never suggest unpickling it."""
    if "pickle" in str(e).lower():
        return "it is not NumPy array data (pickled or other content, which unijax never loads)"
    return _short(e)


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, each decompressed (CRC-checked); never pickle.
    Raises whatever NumPy or the OS raise (see :func:`_npz_problem`)."""
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError("a single .npy array, not an .npz archive")
    with z:
        return {k: z[k] for k in z.files}


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (without pickle), the store's entries included if present.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DamagedStoreError: it is not a readable ``.npz`` of plain arrays (the message names
            the file and why).
    """
    path = Path(path)
    try:
        return _open_npz(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # zero-byte, truncated, not a zip, bad CRC, pickled data, ...
        raise DamagedStoreError(f"{path} is not a readable .npz file ({_npz_problem(e)})",
                                path) from None


def atomic_savefig(fig, stem: str | os.PathLike, *, formats=("png", "pdf"), dpi=150) -> list[Path]:
    """Save a matplotlib figure as ``stem.png`` and ``stem.pdf`` (each atomically)."""
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(atomic_write_bytes(Path(f"{stem}.{fmt}"), buf.getvalue()))
    return paths



# ---------------------------------------------------------------------------------------------
# Reading stored files, fully checked
# ---------------------------------------------------------------------------------------------


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__


def _load_json(path: Path) -> tuple[Any, str | None]:
    """``(object, None)``; ``(None, None)`` when absent; ``(None, problem)`` when unreadable."""
    if not path.exists() and not path.is_symlink():
        return None, None
    try:
        return json.loads(path.read_bytes().decode("utf-8")), None
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except json.JSONDecodeError as e:
        return None, f"is not valid JSON ({e.msg} at line {e.lineno})"
    except (OSError, RecursionError, ValueError) as e:
        return None, f"cannot be read ({_short(e)})"


def _read_json(path: Path) -> dict | None:
    obj, _ = _load_json(path)
    return obj if isinstance(obj, dict) else None


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Every array of a stored ``.npz``, each decompressed (CRC-checked), and the list of
    members checked: ``(arrays, None)``; ``(None, None)`` absent; ``(None, problem)`` damaged."""
    if not path.exists() and not path.is_symlink():
        return None, None
    try:
        arrays = _open_npz(path)
    except Exception as e:  # zero-byte, truncated, not a zip, bad CRC, pickled data, ...
        return None, f"is unreadable ({_npz_problem(e)})"
    version = _stored_version(arrays)
    if version != STORE_VERSION:
        return None, _Older(older_text("it", version).removeprefix("it "))
    if MEMBERS_KEY not in arrays:
        return None, "does not list its arrays"
    listed = {str(x) for x in np.atleast_1d(arrays[MEMBERS_KEY])}
    present = set(arrays) - set(_META_KEYS)
    if listed != present:
        missing, extra = sorted(listed - present), sorted(present - listed)
        what = (f"lacks array(s) {', '.join(missing)}" if missing
                else f"has unlisted array(s) {', '.join(extra)}")
        return None, what
    return arrays, None


class _Older(str):
    """A problem text saying a file is of another store version (not damage)."""


def _stored_version(arrays: Mapping[str, np.ndarray]) -> int | None:
    v = arrays.get(VERSION_KEY)
    if v is None or np.ndim(v) != 0 or not np.issubdtype(np.asarray(v).dtype, np.integer):
        return None
    return int(v)


def _strip_meta(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k not in _META_KEYS}


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and not name.startswith("."))


#: The words of ``unijax.experiments._common.Verdict`` (the store sits below the experiments,
#: so it checks the stored words, not the enum; a test keeps the two equal).
VERDICT_WORDS = ("REPRODUCED", "AS AUTHORS", "NOT REPRODUCED", "NOT TESTED")


def _summary_problem(s: Any) -> str | None:
    """Why ``results.json`` content ``s`` cannot be used, or None (the fields the report and
    the CLI read have the types they expect)."""
    if not isinstance(s, dict):
        return f"is a JSON {type(s).__name__}, not an object"
    if not (isinstance(s.get("config_hash"), str) and _HEX64.fullmatch(s["config_hash"])):
        return "has no valid config_hash"
    agr = s.get("agreement", {})
    if not isinstance(agr, dict):
        return "agreement is not an object"
    if agr.get("passed", None) not in (True, False, None):
        return "agreement.passed is not true, false or null"
    if agr.get("verdict", None) not in (*VERDICT_WORDS, None):
        return f"agreement.verdict is not one of {', '.join(VERDICT_WORDS)}"
    rows = agr.get("rows", {})
    if not isinstance(rows, dict) or not all(
            isinstance(k, str) and v in VERDICT_WORDS for k, v in rows.items()):
        return "agreement.rows is not an object of row names to verdicts"
    counts = agr.get("counts", {})
    if not isinstance(counts, dict) or not all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
        or isinstance(v, str) for v in counts.values()
    ):
        return "agreement.counts is not an object of numbers"
    for k in ("diverged", "not_converged", "fit_failed"):
        if counts.get(k) is not None and not isinstance(counts[k], (int, float)):
            return f"agreement.counts.{k} is not a number"
    notes = agr.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        return "agreement.notes is not a list of strings"
    figures = s.get("figures", [])
    if not isinstance(figures, list) or not all(_plain_name(f) for f in figures):
        return "figures is not a list of file names"
    for k in ("wall_s", "cpu_s"):
        v = s.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"{k} is not a number"
    for k in ("environment", "config", "code_version"):
        if k in s and s[k] is not None and not isinstance(s[k], dict):
            return f"{k} is not an object"
    return None


def _config_problem(c: Any) -> str | None:
    if not isinstance(c, dict):
        return f"is a JSON {type(c).__name__}, not an object"
    if not (isinstance(c.get("config_hash"), str) and _HEX64.fullmatch(c["config_hash"])):
        return "has no valid config_hash"
    if not isinstance(c.get("config", {}), dict):
        return "config is not an object"
    if c.get("store_version") != STORE_VERSION:
        return None  # another version's: check() refuses it by name, never reads further
    if not (isinstance(c.get("run_hash"), str) and _HEX64.fullmatch(c["run_hash"])):
        return "has no valid run_hash"
    return None


def is_own_report(path: str | os.PathLike) -> bool:
    """True when ``path`` is a report unijax wrote (it starts with :data:`REPORT_HEADING`)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(REPORT_HEADING)).decode("utf-8", "replace") == REPORT_HEADING
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Markers: what unijax wrote
# ---------------------------------------------------------------------------------------------


def read_marker(directory: str | os.PathLike) -> dict | None:
    """The marker of ``directory`` if unijax wrote it (a JSON object with ``"written_by":
    "unijax"`` and a known ``kind``), else None (absent, unreadable or someone else's)."""
    m = _read_json(Path(directory) / MARKER)
    if m is None or m.get("written_by") != "unijax" or m.get("kind") not in KINDS:
        return None
    files = m.get("files", [])
    m["files"] = [f for f in files if _plain_name(f)] if isinstance(files, list) else []
    return m


def _write_marker(directory: Path, kind: str, *, name: str | None, files=(),
                  created: str | None = None) -> None:
    atomic_save_json(directory / MARKER, {
        "written_by": "unijax",
        "kind": kind,
        "name": name,
        "created": created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "created_by": code_version().as_dict(),
        "store_version": STORE_VERSION,
        "files": sorted(set(files)),
        "about": "unijax wrote this directory. It writes, overwrites and deletes here only its "
                 "own files (config.json, result.npz, results.json, report.md, chunks/*.npz, "
                 ".unijax.lock, .unijax.lock.json, .tmp-* and the figures listed under "
                 "'files'); anything else is never touched.",
    })


def _looks_like_old_unijax(d: Path) -> bool:
    """An unmarked directory with unijax's layout (an unijax older than the markers)."""
    with contextlib.suppress(OSError):
        if (d / "config.json").is_file():
            return True
        return any((p / "config.json").is_file() and not (p / MARKER).exists()
                   for p in d.iterdir() if p.is_dir() and not p.is_symlink())
    return False


def claim_dir(directory: str | os.PathLike, kind: str, *, name: str | None = None,
              dry_run: bool = False, clean: bool = False) -> Path:
    """Make sure unijax may write into ``directory`` as a ``kind`` directory, and mark it.

    A missing or empty directory (or one holding only unijax's lock and temporary files) is
    created and marked; a directory unijax marked as ``kind`` is accepted as it is; any other
    is refused.

    Args:
        kind: ``"run"``, ``"experiment"`` or ``"sweep"``.
        name: the experiment's name, recorded in a new marker.
        dry_run: check only; create and write nothing.
        clean: delete the provably stale ``.tmp-*`` files in it (:func:`is_stale_tmp`).

    Returns:
        the directory.

    Raises:
        ForeignDataError: unijax did not write ``directory`` (or wrote a different kind); the
            message names it and what unijax does not recognise.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got kind={kind!r}")
    d = Path(directory)
    if d.is_symlink() and not d.exists():
        raise ForeignDataError(f"{d} is a dangling symbolic link; unijax does not write there", d)
    if d.exists() and not d.is_dir():
        raise ForeignDataError(f"{d} exists and is not a directory; unijax leaves it alone", d)
    if not d.exists():
        if not dry_run:
            d.mkdir(parents=True, exist_ok=True)
            _write_marker(d, kind, name=name)
        return d
    if (d / MARKER).exists() or (d / MARKER).is_symlink():
        m = read_marker(d)
        if m is None:
            raise ForeignDataError(
                f"{d / MARKER} is not a marker unijax wrote (unreadable or foreign), so unijax "
                f"does not touch {d}; if unijax did write this directory, delete that file and "
                "run again", d)
        if m["kind"] != kind:
            raise ForeignDataError(
                f"{d} is a unijax {m['kind']} directory, not a {kind} directory; choose "
                "another output directory", d)
        if clean and not dry_run:
            _clean_tmp(d)
        return d
    # unijax's own lock and temporary files (a crash before the marker was in place) do not
    # count.
    entries = sorted(p.name for p in d.iterdir()
                     if not p.name.startswith(_TMP_PREFIX) and p.name not in _OWN_HIDDEN)
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        old = (" It looks like the output of an unijax older than these markers, whose store "
               "format this unijax does not read: use a new directory (and delete this one "
               "yourself if you no longer need it)." if _looks_like_old_unijax(d) else "")
        raise ForeignDataError(
            f"{d} is not empty and unijax did not write it (no {MARKER}; it holds {shown}); "
            f"unijax will not write into or delete from it: choose a new or empty directory."
            + old, d)
    if not dry_run:
        _write_marker(d, kind, name=name)
        if clean:
            _clean_tmp(d)
    return d


def _clean_tmp(d: Path) -> None:
    """Delete the provably stale ``.tmp-*`` entries directly in ``d`` (:func:`is_stale_tmp`):
    never a file another live process is writing."""
    now = time.time()
    for stale in d.glob(_TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if not is_stale_tmp(stale, now=now):
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()


def _holder(d: Path, wait_s: float = 2.0) -> dict:
    """The lock holder's description; the holder writes it just after taking the lock, so a
    missing one (or one left by a dead process of this host) is read again for ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        info = _read_json(d / LOCK_INFO) or {}
        pid, host = info.get("pid"), info.get("host")
        current = isinstance(pid, int) and not (host == socket.gethostname()
                                                and not _pid_alive(pid))
        if current or time.monotonic() > deadline:
            return info if current else {}
        time.sleep(0.05)


@contextlib.contextmanager
def lock_dir(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` (created if missing) while in the block.

    The lock is ``filelock``'s on ``directory/.unijax.lock`` (an OS lock: it is released
    when the process ends, however it ends); ``.unijax.lock.json`` names the holder.

    Raises:
        DirectoryInUseError: another process holds it (the message names the holder: pid,
            host, command, since when).
        OSError: the lock file cannot be created (no permission, a full disk, ...).
    """
    import filelock  # the one user of filelock; kept out of `import unijax`

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(d / LOCK_NAME), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        info = _holder(d)
        if not info:
            # The holder removes its description just before it lets go of the lock: one that
            # said nothing for _holder's wait has most likely finished, so try once more.
            with contextlib.suppress(filelock.Timeout):
                lock.acquire()
    if not lock.is_locked:
        who = (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, running "
               f"{info.get('command', '?')!r} since {info.get('since', '?')}" if info
               else "a process that did not say who it is")
        raise DirectoryInUseError(
            f"{d} is being written by another unijax process ({who}); two processes may not "
            "write one directory at once: wait for it to finish, then run again (finished "
            "work is kept), or use another output directory", d) from None
    try:
        atomic_save_json(d / LOCK_INFO, {
            "pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(["unijax", *sys.argv[1:]])[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        yield d
    finally:
        with contextlib.suppress(OSError):
            (d / LOCK_INFO).unlink()
        lock.release()


def _stderr_log(msg: str) -> None:
    print(f"unijax: {msg}", file=sys.stderr, flush=True)


class _StoredArrays(dict):
    """Arrays of a stored chunk; asking for an array it lacks raises DamagedChunkError."""

    def __init__(self, arrays, *, name: str, chunk: str):
        super().__init__(arrays)
        self._where = (name, chunk)

    def __missing__(self, key):
        raise DamagedChunkError(*self._where, key)


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class ResultStore:
    """Finished experiments and chunks of one output directory, checked by config hash.

    Args:
        outdir: the directory holding one subdirectory per experiment (or sweep).
        log: called with one line whenever the store finds and sets aside a damaged file
            (default: print ``unijax: <line>`` to stderr).

    Typical use (what the CLI does)::

        store = ResultStore("unijax_out")
        h = store.begin("E3", config)           # raises ConfigMismatchError on a different config
        if store.finished_result("E3", h) is None:
            cache = store.chunk_cache("E3", h)  # cache(id, compute) -> arrays, resumable
            ...
            store.save_result("E3", arrays, summary, config_hash=h)

    Only directories :func:`claim_dir` accepted are written to (``begin`` claims); see the
    module docstring for what unijax owns there.
    """

    def __init__(self, outdir: str | os.PathLike, *, log: Callable[[str], None] | None = None):
        self.outdir = Path(outdir)
        self.log = log if log is not None else _stderr_log
        self._pending: dict[str, dict] = {}  # config.json of begun experiments, not yet written

    # paths ------------------------------------------------------------------------------------
    def exp_dir(self, name: str) -> Path:
        return self.outdir / name

    def _chunk_path(self, name: str, chunk: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in chunk)
        return self.exp_dir(name) / CHUNKS_DIR / f"{safe}.npz"

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.outdir))
        except ValueError:
            return str(path)

    def _require_own(self, name: str) -> Path:
        d = self.exp_dir(name)
        if read_marker(d) is None:
            raise ForeignDataError(
                f"{d} is not a directory unijax marked ({MARKER} missing or foreign); unijax "
                "writes only into directories it created (call begin first)", d)
        return d

    # config -----------------------------------------------------------------------------------
    def _config_json(self, name: str) -> tuple[dict | None, str | None]:
        obj, problem = _load_json(self.exp_dir(name) / "config.json")
        if obj is not None and problem is None:
            problem = _config_problem(obj)
        return (None, problem) if problem else (obj, None)

    def stored_version(self, name: str) -> tuple[bool, Any]:
        """``(stored, version)``: whether ``name`` has a readable ``results.json`` or
        ``config.json``, and the store format version it records (None: it records none, as
        before versions were recorded). Reads nothing else."""
        for f in ("results.json", "config.json"):
            obj = _read_json(self.exp_dir(name) / f)
            if obj is not None:
                return True, obj.get("store_version")
        return False, None

    def stored_config(self, name: str) -> dict | None:
        """The ``config.json`` of experiment ``name`` (``{"config": ..., "config_hash": ...}``),
        or None when absent or damaged; for an experiment this store began and has not yet
        stored anything of, the config it will record."""
        if name in self._pending:
            return self._pending[name]
        return self._config_json(name)[0]

    def check(self, name: str, config: Any, *, what: str | None = None,
              advice: str = "Use another --out, or --fresh to discard the old results") -> str:
        """Hash of ``config``; raises :class:`ConfigMismatchError` if ``name`` was started with
        a different config in this directory, naming the differing dotted keys (``what``: what
        the directory holds, default ``"results of a different {name} config"``; ``advice``
        ends the message), or by a unijax of another store format (:data:`STORE_VERSION`;
        ``keys == ["store_version"]``). Writes nothing."""
        h = config_hash(config)
        old = self.stored_config(name)
        if old is not None and old.get("store_version") != STORE_VERSION:
            head = older_text(str(self.exp_dir(name)), old.get("store_version"))
            raise ConfigMismatchError(
                f"{head} and does not read its results; recompute them: {advice}",
                ["store_version"])
        if old is not None and old.get("config_hash") != h:
            keys, shown = config_differences(old.get("config", {}), config_to_dict(config))
            what = what or f"results of a different {name} config"
            raise ConfigMismatchError(
                f"{self.exp_dir(name)} holds {what}; differing keys: {shown}. {advice}", keys)
        return h

    def begin(self, name: str, config: Any, *, fresh: bool = False, upstream: Any = None,
              kind: str = "experiment") -> str:
        """Start (or resume) experiment ``name``: claim its directory, check the config; returns
        the hash its chunks and result are stored under. The config is recorded in
        ``config.json`` just before the first chunk or result is stored.

        Args:
            fresh: first delete unijax's own files of ``name`` (see :meth:`discard`); files
                unijax did not write stay.
            upstream: JSON-able inputs taken from other experiments (the rates E4-E8 take from
                E1/E3); part of the returned hash (:func:`run_hash`), so stored chunks and
                results computed from other upstream inputs are recomputed, not reused.
            kind: ``"experiment"`` or ``"sweep"`` (what the directory's marker says).

        Raises:
            ForeignDataError: the directory exists and unijax did not write it.
            ConfigMismatchError: the directory holds ``name`` run with another config.
        """
        d = claim_dir(self.exp_dir(name), kind, name=name)
        if fresh:
            self.discard(name)
        h = self.check(name, config)
        self._clean_tmp(d)
        rh = run_hash(h, upstream)
        old, problem = (self._pending[name], None) if name in self._pending else \
            self._config_json(name)
        if problem:
            self.log(f"{self._rel(d / 'config.json')} {problem}; writing it again")
        if old is not None and old["run_hash"] != rh:

            def source(up: Any) -> str:
                return str(up.get("source", "?")) if isinstance(up, dict) else "none"

            self.log(f"{name}: its upstream inputs changed since it was stored (rates from "
                     f"{source(old.get('upstream'))}, now {source(upstream)}): recomputing it")
        if old is None or old["run_hash"] != rh:
            # Recorded with the first stored file, not now: a run refused before it stores
            # anything (e.g. too large for memory) leaves no config behind to refuse the
            # next, sensible, run in the same directory.
            self._pending[name] = {
                "experiment": name, "config": config_to_dict(config), "config_hash": h,
                "upstream": upstream, "run_hash": rh, "store_version": STORE_VERSION,
                "code_version": code_version().as_dict(),
            }
        return rh

    def record_config(self, name: str) -> None:
        """Write the ``config.json`` :meth:`begin` holds back (until the first chunk or result
        is stored) now; nothing when it is written already."""
        self._record_config(name)

    def _record_config(self, name: str) -> None:
        pending = self._pending.pop(name, None)
        if pending is not None:
            try:
                atomic_save_json(self.exp_dir(name) / "config.json", pending)
            except BaseException:
                self._pending[name] = pending
                raise

    def _clean_tmp(self, d: Path) -> None:
        # Left by a crash between write and rename: only unijax's own folders are looked in.
        for folder in (d, d / CHUNKS_DIR):
            if folder.is_dir() and not folder.is_symlink():
                _clean_tmp(folder)

    def discard(self, name: str) -> list[Path]:
        """Delete unijax's own files of ``name`` (config, result, summary, its listed figures,
        chunks, temporaries); everything else in the directory stays. Returns what was deleted.

        Raises:
            ForeignDataError: the directory is not one unijax marked.
        """
        d = self._require_own(name)
        self._pending.pop(name, None)
        marker = read_marker(d)
        gone = []
        for fname in (*OWN_FILES, *marker["files"]):
            p = d / fname
            if p.is_file() or p.is_symlink():
                p.unlink()
                gone.append(p)
        chunks = d / CHUNKS_DIR
        if chunks.is_dir() and not chunks.is_symlink():
            for c in chunks.iterdir():
                if (c.is_file() or c.is_symlink()) and c.suffix == ".npz":
                    c.unlink()
                    gone.append(c)
        self._clean_tmp(d)
        with contextlib.suppress(OSError):  # only if nothing foreign is left in it
            chunks.rmdir()
        if marker["files"]:
            _write_marker(d, marker["kind"], name=marker.get("name"), files=(),
                          created=marker.get("created"))
        return gone

    # chunks -----------------------------------------------------------------------------------
    def chunk_done(self, name: str, chunk: str, config_hash: str, *,
                   require: tuple[str, ...] = ()) -> bool:
        """True when chunk ``chunk`` of ``name`` is stored with hash ``config_hash`` and valid."""
        return self.load_chunk(name, chunk, config_hash, require=require) is not None

    def load_chunk(self, name: str, chunk: str, config_hash: str, *,
                   require: tuple[str, ...] = ()) -> dict[str, np.ndarray] | None:
        """The chunk's arrays (without the store's entries), or None if absent, stored with
        another hash, or damaged (unreadable, an array missing, one of ``require`` missing;
        then ``log`` says so and the caller recomputes it)."""
        path = self._chunk_path(name, chunk)
        arrays, problem = _read_npz(path)
        if problem is None and arrays is not None:
            if str(arrays.get(HASH_KEY, "")) != config_hash:
                return None  # another config's (or upstream's): not ours to use, not damage
            missing = [k for k in require if k not in arrays]
            if missing:
                problem = f"lacks array(s) {', '.join(missing)}"
        if problem:
            self.log(f"{self._rel(path)} {problem}: recomputing that chunk")
            return None
        if arrays is None:
            return None
        return _StoredArrays(_strip_meta(arrays), name=name, chunk=chunk)

    def save_chunk(self, name: str, chunk: str, arrays: Mapping[str, Any], config_hash: str):
        """Store one finished chunk atomically (in a directory unijax marked)."""
        self._require_own(name)
        self._record_config(name)
        return atomic_save_npz(self._chunk_path(name, chunk), arrays, config_hash=config_hash)

    def discard_chunk(self, name: str, chunk: str) -> None:
        """Delete a stored chunk (a damaged one), so that it is computed again."""
        self._require_own(name)
        with contextlib.suppress(FileNotFoundError):
            self._chunk_path(name, chunk).unlink()

    def chunk_cache(self, name: str, config_hash: str, *, agree=None,
                    writer: bool = True) -> ChunkCache:
        """A :class:`ChunkCache` backed by this store (``agree``, ``writer``: see there)."""
        return ChunkCache(self, name, config_hash, agree=agree, writer=writer)

    # results ----------------------------------------------------------------------------------
    def _result_state(self, name: str, config_hash: str | None, require=()):
        """``((arrays, summary), None)`` when finished and valid; ``(None, None)`` when not
        finished (or finished with another hash); ``(None, problem)`` when damaged."""
        d = self.exp_dir(name)
        summary, problem = _load_json(d / "results.json")
        if summary is None and problem is None:
            return None, None
        if problem is None and isinstance(summary, dict) and summary.get(
                "store_version") != STORE_VERSION:
            return None, _Older(older_text(str(d), summary.get("store_version")))
        if problem is None:
            problem = _summary_problem(summary)
        if problem:
            return None, f"{self._rel(d / 'results.json')} {problem}"
        if config_hash is not None and summary["config_hash"] != config_hash:
            return None, None
        arrays, problem = _read_npz(d / "result.npz")
        if isinstance(problem, _Older):
            return None, _Older(f"{d / 'result.npz'} {problem}")
        if problem:
            return None, f"{self._rel(d / 'result.npz')} {problem}"
        if arrays is None:
            return None, f"{self._rel(d / 'result.npz')} is missing"
        if str(arrays.get(HASH_KEY, "")) != summary["config_hash"]:
            return None, (f"{self._rel(d / 'result.npz')} and results.json carry different "
                          "config hashes")
        missing = [k for k in require if k not in arrays]
        if missing:
            return None, f"{self._rel(d / 'result.npz')} lacks array(s) {', '.join(missing)}"
        for f in summary.get("figures", []):
            if not (d / f).is_file():
                return None, f"figure {self._rel(d / f)} is missing"
        return (_strip_meta(arrays), summary), None

    def is_finished(self, name: str, config_hash: str) -> bool:
        """True when ``name`` is stored under ``config_hash`` and every file of it validates
        (``results.json``, ``result.npz`` with all its arrays, the figures). Logs nothing."""
        return self._result_state(name, config_hash)[0] is not None

    def finished_result(self, name: str, config_hash: str, *, require: tuple[str, ...] = ()
                        ) -> tuple[dict[str, np.ndarray], dict] | None:
        """``(arrays, summary)`` of ``name`` if finished under ``config_hash`` and valid (with
        every array of ``require``), else None; a damaged result is logged (its chunks stay,
        so recomputing it is cheap)."""
        got, problem = self._result_state(name, config_hash, require)
        if problem:
            self.log(f"{name}: stored result unusable ({problem}): recomputing it from its "
                     "chunks")
        return got

    def save_result(
        self,
        name: str,
        arrays: Mapping[str, Any],
        summary: Mapping[str, Any],
        *,
        config_hash: str,
    ) -> Path:
        """Write ``result.npz`` then ``results.json`` (the completion marker), atomically; the
        summary gains ``code_version``, ``config_hash`` and ``store_version``."""
        d = self._require_own(name)
        self._record_config(name)
        atomic_save_npz(d / "result.npz", arrays, config_hash=config_hash)
        return atomic_save_json(d / "results.json", {
            **summary, "code_version": code_version().as_dict(), "config_hash": config_hash,
            "store_version": STORE_VERSION})

    def save_figures(self, name: str, plot: Callable[[Path], Any]) -> list[Path]:
        """Call ``plot(folder)`` on an empty temporary folder, then move every file it wrote into
        ``name``'s directory, recording the names in the marker first (so that they are
        unijax's to overwrite or discard later). Returns the final paths.

        Raises:
            ForeignDataError: a file of that name exists there and unijax did not write it
                (nothing is moved).
        """
        d = self._require_own(name)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix("figures"), dir=d))
        except OSError as e:
            raise _named(e, d) from e
        _IN_FLIGHT.add(os.path.abspath(tmp))
        try:
            try:
                plot(tmp)
            except OSError as e:  # a full disk while the figures are drawn: name the folder
                raise (e if e.filename else _named(e, d)) from e
            made = sorted(p.name for p in tmp.iterdir() if p.is_file())
            marker = read_marker(d)
            for f in made:
                if not _plain_name(f) or f in OWN_FILES or f == CHUNKS_DIR:
                    raise ValueError(f"a figure may not be named {f!r}")
                target = d / f
                if (target.exists() or target.is_symlink()) and f not in marker["files"]:
                    raise ForeignDataError(
                        f"{target} exists and unijax did not write it; unijax does not "
                        "overwrite it: move it away and run again", target)
            if not set(made) <= set(marker["files"]):
                _write_marker(d, marker["kind"], name=marker.get("name"),
                              files=[*marker["files"], *made], created=marker.get("created"))
            for f in made:
                os.replace(tmp / f, d / f)
            _fsync_dir(d)
            return [d / f for f in made]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            _IN_FLIGHT.discard(os.path.abspath(tmp))

    def load_result(self, name: str) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, summary)`` of a finished experiment (arrays without the store's entries).

        Raises:
            FileNotFoundError: ``name`` has no ``results.json``.
            OlderStoreError: it was stored in another store format (:data:`STORE_VERSION`);
                the message says how to recompute it.
            DamagedStoreError: a file of it is damaged (the message names it and how).
        """
        d = self.exp_dir(name)
        got, problem = self._result_state(name, None)
        if isinstance(problem, _Older):
            raise OlderStoreError(
                f"{problem} and does not read it: recompute it with `unijax run {name} --fresh "
                f"--out {self.outdir}` (for a sweep: the same sweep command with --fresh)", d)
        if problem:
            raise DamagedStoreError(problem, d)
        if got is None:
            raise FileNotFoundError(f"{d / 'results.json'} does not exist")
        return got

    def load_summary(self, name: str) -> dict | None:
        """``results.json`` of ``name``, or None when absent or damaged."""
        s = _read_json(self.exp_dir(name) / "results.json")
        return s if s is not None and _summary_problem(s) is None else None


class ChunkCache:
    """Memoization of named pieces of work, persisted in a :class:`ResultStore`.

    ``cache(chunk_id, compute)`` returns the stored arrays of ``chunk_id`` if they exist with
    this config's hash (and validate), else calls ``compute()`` (which returns name -> array),
    stores the result atomically and returns it. ``hits`` and ``misses`` count the two cases.
    Asking stored arrays for a name they lack raises :class:`DamagedChunkError`.

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
        self.reused: set[str] = set()  # chunk ids read from the store
        self.computed: set[str] = set()  # chunk ids computed (and stored)
        # Chunks may be computed from several threads (one per device): their bookkeeping
        # and writes take turns, so the experiment's config.json still precedes every chunk.
        self._lock = threading.Lock()

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
            with self._lock:
                self.hits += 1
                self.reused.add(chunk)
            return got
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        with self._lock:
            self.misses += 1
            self.computed.add(chunk)
            if self.writer:
                self.store.save_chunk(self.name, chunk, arrays, self.config_hash)
        return arrays


def memory_cache() -> Callable[[str, Callable[[], Mapping[str, Any]]], dict[str, np.ndarray]]:
    """A cache with the :class:`ChunkCache` interface that stores nothing (plain recompute)."""

    def cache(chunk: str, compute):
        return {k: np.asarray(v) for k, v in compute().items()}

    return cache
