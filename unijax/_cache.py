"""JAX's persistent compilation cache, switched on by unijax's entry points (not on import),
and only over a directory that no one but the user can write.

Compiling the rate fit or a training program takes seconds to tens of seconds on a CPU; the
second process that needs the same program should not pay again. The first call of
``fit.fit_rates``, ``train.train``, ``train.train_model`` or the ``unijax`` command points JAX's
persistent cache at a user cache directory, unless the user has chosen otherwise:

* ``UNIJAX_NO_COMPILATION_CACHE=1`` (any non-empty value but ``0``): leave JAX's settings alone;
* a cache directory already set (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``): use that one, as it is;
* otherwise ``$UNIJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/unijax/jax`` (an absolute
  ``XDG_CACHE_HOME`` only: the XDG spec says a relative one is ignored), else
  ``~/.cache/unijax/jax``. A URL (``gs://bucket/cache``) is passed to JAX as it is.

**Trust.** JAX's cache holds compiled executables: native code that a later process loads and
runs. Whoever can write the directory can run code as the user. So a local directory that
unijax picks is used only when it, and every directory above it up to the user's home (or up to
``/`` outside it), is owned by the user (or root) and writable by no one else, as ``ssh``
checks ``~/.ssh`` (a root-owned directory with the sticky bit, such as ``/tmp``, may be
world-writable: no one else can rename or replace what the user owns in it). Otherwise the
cache stays off and one line on stderr says why. A directory the user sets for JAX, and a
remote URL, are the user's choice and are not checked. JAX's cache keys an executable by a
hash of the program's own text, the compile options, the JAX version and the device, so an
executable stored for other code or other shapes is never found for this one.

Beside it, in ``unijax_exports/`` (:func:`program_dir`), unijax keeps the traced rate fit as
``jax.export`` bytes (StableHLO in a flatbuffer: data, never unpickled, never Python), so that
a later process skips tracing it (:mod:`unijax.fit._export` says what is checked on load).
That directory is used only when it passes the same check, even under a cache directory the
user chose, and never under a URL.

Programs that compile in under JAX's ``jax_persistent_cache_min_compile_time_secs`` (1 s by
default) are not stored, except by the ``unijax`` command (:func:`store_every_program`).
Delete the directory to clear the cache.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

__all__ = [
    "cache_dir", "enable_compilation_cache", "program_dir", "store_every_program",
    "unsafe_reason",
]

_OPT_OUT = "UNIJAX_NO_COMPILATION_CACHE"
_EXPORTS = "unijax_exports"  # unijax's own subdirectory of JAX's cache directory
_WARNED: set[str] = set()  # the directories refused so far (one line on stderr each)


def _is_url(d: str) -> bool:
    return "://" in d


def cache_dir() -> Path | str:
    """The directory unijax uses for JAX's compilation cache when none is set: a local
    ``Path``, or a URL string (``gs://...``) left as it is (``Path`` would collapse its
    ``//``)."""
    if d := os.environ.get("UNIJAX_CACHE_DIR"):
        return d if _is_url(d) else Path(d).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME", "")
    # XDG Base Directory spec: "If an implementation encounters a relative path in any of
    # these variables it should consider the path invalid and ignore it."
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "unijax" / "jax"


def unsafe_reason(d: Path) -> str | None:
    """Why the local directory ``d`` (which exists) may hold files another user wrote, or
    None when it is safe: ``d`` and each directory above it, up to and including the user's
    home when ``d`` lies inside it (else up to ``/``), must be owned by the user or root and
    not writable by group or others; a root-owned parent with the sticky bit may be."""
    uid = os.geteuid()
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):
        home = None
    p = d.resolve()
    first = True
    while True:
        try:
            st = p.stat()
        except OSError as e:
            return f"{p} cannot be checked ({e.strerror})"
        if not stat.S_ISDIR(st.st_mode):
            return f"{p} is not a directory"
        if st.st_uid not in (uid, 0) or (first and st.st_uid != uid):
            return f"{p} is owned by uid {st.st_uid}, not by this user (uid {uid})"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky_root = st.st_uid == 0 and st.st_mode & stat.S_ISVTX and not first
        if writable and not sticky_root:
            who = [w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
                   if st.st_mode & bit]
            return f"{p} is writable by {' and '.join(who)} (mode {stat.filemode(st.st_mode)})"
        if p == home or p.parent == p:
            return None
        p, first = p.parent, False


def _make_private(d: Path) -> None:
    """Create ``d`` and its missing parents, each ``0o700`` (``Path.mkdir(parents=True)``
    would give the parents the umask's mode, group-writable under ``umask 002``)."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:  # made by a concurrent process: checked like any other
            pass


def _refuse(d, reason: str, what: str = "compilation cache off") -> None:
    if str(d) not in _WARNED:
        _WARNED.add(str(d))
        print(f"unijax: {what}: {reason}; unijax loads compiled programs only "
              "from a directory that no one else can write (set UNIJAX_CACHE_DIR to a private "
              "directory, or UNIJAX_NO_COMPILATION_CACHE=1 to silence this).", file=sys.stderr)


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at :func:`cache_dir` unless the user opted
    out or chose a directory, and only if that directory is private (see the module
    docstring); returns the directory in use (None when off). Idempotent."""
    import jax

    if os.environ.get(_OPT_OUT, "") not in ("", "0"):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return str(current)
    try:
        d = cache_dir()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry: nowhere to put it
        _refuse("~", "the home directory cannot be determined")
        return None
    if isinstance(d, str):  # a remote URL: JAX writes it itself; its permissions are the user's
        jax.config.update("jax_compilation_cache_dir", d)
        return d
    try:
        _make_private(d)
    except OSError as e:  # a read-only home: compile as before, without a cache
        _refuse(d, f"{d} cannot be created ({e.strerror})")
        return None
    if (reason := unsafe_reason(d)) is not None:
        _refuse(d, reason)
        return None
    jax.config.update("jax_compilation_cache_dir", str(d))
    return str(d)


def store_every_program() -> None:
    """Let JAX's persistent cache keep programs that compile in under a second too, unless the
    user chose a threshold (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``).

    For the ``unijax`` command: an experiment compiles dozens of such programs (one per
    network shape and chunk length), and a rerun compiled them all again (E1 at the quick
    preset: 33 programs, 12.5 s of its 96 s on a 2-core Xeon). Process-wide, so the library
    leaves JAX's default.
    """
    import jax

    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def program_dir() -> Path | None:
    """The directory of unijax's exported fit programs, ``<JAX's cache directory>/
    unijax_exports`` (created ``0o700``), or None when there is none to trust: the user opted
    out (``UNIJAX_NO_COMPILATION_CACHE``), JAX's persistent cache is off or a URL, or the
    directory fails :func:`unsafe_reason` (one line on stderr says so, once)."""
    import jax

    if os.environ.get(_OPT_OUT, "") not in ("", "0"):
        return None
    d = jax.config.jax_compilation_cache_dir
    if not d or _is_url(str(d)):
        return None
    p = Path(d).expanduser().absolute() / _EXPORTS
    what = "stored fit programs off"
    try:
        _make_private(p)
    except OSError as e:
        _refuse(p, f"{p} cannot be created ({e.strerror})", what)
        return None
    if (reason := unsafe_reason(p)) is not None:
        _refuse(p, reason, what)
        return None
    return p
