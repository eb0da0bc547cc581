"""Input validation shared by the public modules.

Checks run in Python on concrete values, before anything is traced, so that bad input fails
with a message that names the argument, its value and the valid range. Traced values (inside a
user's own `jit`) are let through unchecked: there the solver's status flags take over.
"""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds values we can inspect (not a tracer)."""
    leaves = jax.tree_util.tree_leaves(x)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def _describe(name: str, arr: np.ndarray) -> str:
    if arr.size == 1:
        return f"{name}={arr.reshape(()).item()!r}"
    return f"{name} (shape {arr.shape}, min {np.nanmin(arr):.4g}, max {np.nanmax(arr):.4g})"


def check_finite(name: str, x) -> None:
    """Raise if `x` contains NaN or inf."""
    if not is_concrete(x):
        return
    arr = np.asarray(x)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        raise ValueError(
            f"{name} must be finite everywhere; found {len(bad)} NaN/inf value(s), first at "
            f"index {tuple(int(i) for i in bad[0])}."
        )


def check_positive(name: str, x, *, allow_zero: bool = False) -> None:
    """Raise unless every element of `x` is finite and > 0 (>= 0 with `allow_zero`)."""
    if not is_concrete(x):
        return
    arr = np.asarray(x, dtype=float)
    check_finite(name, arr)
    ok = arr >= 0 if allow_zero else arr > 0
    if not np.all(ok):
        valid = "[0, inf)" if allow_zero else "(0, inf)"
        raise ValueError(f"{_describe(name, arr)} is out of range: must lie in {valid}.")


def check_x64(where: str) -> None:
    """The theory is float64 by contract; refuse to run silently in float32."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            f"{where} computes in float64, but JAX's 64-bit mode is off. Switch it on before "
            "calling: `jax.config.update('jax_enable_x64', True)` at the top of your script, "
            "`JAX_ENABLE_X64=1` in the environment, or locally `with jax.enable_x64(True): ...`."
        )
