"""JAX's persistent compilation cache, switched on by unijax's entry points (not on import).

Compiling the rate fit or a training program takes seconds to tens of seconds on a CPU; the
second process that needs the same program should not pay again. The first call of
``fit.fit_rates``, ``train.train``, ``train.train_model`` or the ``unijax`` command points JAX's
persistent cache at a user cache directory, unless the user has chosen otherwise:

* ``UNIJAX_NO_COMPILATION_CACHE=1`` (any non-empty value but ``0``): leave JAX's settings alone;
* a cache directory already set (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``): use that one;
* otherwise ``$UNIJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/unijax/jax``, else
  ``~/.cache/unijax/jax``.

Programs that compile in under JAX's ``jax_persistent_cache_min_compile_time_secs`` (1 s by
default) are not stored. Delete the directory to clear the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "enable_compilation_cache"]

_OPT_OUT = "UNIJAX_NO_COMPILATION_CACHE"


def cache_dir() -> Path:
    """The directory unijax uses for JAX's compilation cache when none is set."""
    if d := os.environ.get("UNIJAX_CACHE_DIR"):
        return Path(d).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "unijax" / "jax"


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at :func:`cache_dir` unless the user opted
    out or chose a directory; returns the directory in use (None when off). Idempotent."""
    import jax

    if os.environ.get(_OPT_OUT, "") not in ("", "0"):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return str(current)
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile as before, without a cache
        return None
    jax.config.update("jax_compilation_cache_dir", str(d))
    return str(d)
