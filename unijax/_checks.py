"""Input validation shared by the public modules.

Checks run in Python on concrete values, before anything is traced, so that bad input fails
with a ``ValueError`` that names the argument, its value and the valid range. Traced values
(inside a user's own ``jit``/``vmap``) are let through unchecked: there the solver's status flags
take over. Shapes are static, so shape checks (:func:`check_ndim`) apply to tracers too.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: Largest seed accepted. A seed is folded into the base key as a uint32 and reported in an
#: integer array that is int32 when JAX's 64-bit mode is off; seeds in ``[0, 2**31 - 1]`` are
#: exact in both, so no two distinct seeds can alias (``2**32`` would train seed 0 again).
MAX_SEED = 2**31 - 1


def is_concrete(x) -> bool:
    """True when `x` holds values we can inspect (not a tracer)."""
    leaves = jax.tree_util.tree_leaves(x)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def _describe(name: str, arr: np.ndarray) -> str:
    if arr.size == 1:
        return f"{name}={arr.reshape(()).item()!r}"
    return f"{name} (shape {arr.shape}, min {np.nanmin(arr):.4g}, max {np.nanmax(arr):.4g})"


def as_real_array(name: str, x) -> np.ndarray:
    """``x`` as a NumPy array of real numbers; raise if it does not hold any.

    ``None``, strings, booleans, complex numbers, ragged nests and objects are refused with a
    message that says so (a ``None`` rate is missing, not "NaN").
    """
    if x is None:
        raise ValueError(f"{name}=None: a real number (or array of them) is required.")
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{name}={x!r} is a string; a real number (or array of them) is required.")
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}={x!r} is not an array of real numbers (ragged or mixed-type nesting)."
        ) from None
    kind = arr.dtype.kind
    # A scalar is shown as it is; an array by its dtype and shape (its repr spans lines).
    shown = f"{name}={x!r}" if arr.ndim == 0 else f"{name} (dtype {arr.dtype}, shape {arr.shape})"
    if kind == "b":
        raise ValueError(f"{shown} is boolean; a real number (or array of them) is required.")
    if kind == "c":
        raise ValueError(f"{shown} is complex; a real number (or array of them) is required.")
    if kind not in "iuf" and not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(
            f"{name} must hold real numbers; got {type(x).__name__} of dtype {arr.dtype} "
            f"({' '.join(repr(x).split())[:80]})."
        )
    # Standard NumPy numbers stay as they are (no copy of a large data set); others
    # (bfloat16) become float64 so that every NumPy function applies.
    return arr if kind in "iuf" else arr.astype(np.float64)


def check_finite(name: str, x) -> None:
    """Raise unless `x` holds real numbers, none of them NaN or inf."""
    if not is_concrete(x):
        return
    arr = as_real_array(name, x)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        if arr.size == 1:
            raise ValueError(f"{name}={arr.item()!r} is not finite: must be a finite number.")
        raise ValueError(
            f"{name} must be finite everywhere; found {len(bad)} NaN/inf value(s), first at "
            f"index {tuple(int(i) for i in bad[0])}."
        )


def check_positive(name: str, x, *, allow_zero: bool = False) -> None:
    """Raise unless every element of `x` is finite and > 0 (>= 0 with `allow_zero`)."""
    if not is_concrete(x):
        return
    arr = as_real_array(name, x)
    check_finite(name, arr)
    ok = arr >= 0 if allow_zero else arr > 0
    if not np.all(ok):
        valid = "[0, inf)" if allow_zero else "(0, inf)"
        raise ValueError(f"{_describe(name, arr)} is out of range: must lie in {valid}.")


def check_ndim(name: str, x, ndim: int | Sequence[int], what: str = "") -> None:
    """Raise unless ``x`` has ``ndim`` dimensions (static: applies to tracers too)."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if np.ndim(x) not in allowed:
        desc = "a scalar" if allowed == (0,) else " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name} must be {desc}{what}; got shape {np.shape(x)}.")


def out_of_range(name: str, value, must: str) -> ValueError:
    """The one message of a refused value: ``NAME=VALUE is out of range: must be MUST.``"""
    return ValueError(f"{name}={value!r} is out of range: must be {must}.")


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as a Python int; raise unless it is an integer (not a bool) in ``[lo, hi]``."""
    if hi is None:
        rng = "" if lo is None else f" >= {lo}"
    else:
        rng = f" in [{lo if lo is not None else '-inf'}, {hi}]"
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or (lo is not None and value < lo) or (hi is not None and value > hi)):
        raise out_of_range(name, value, f"an integer{rng}")
    return int(value)


def check_float(name: str, value, lo: float = 0.0, hi: float | None = None, *,
                lo_open: bool = True) -> float:
    """``value`` as a Python float; raise unless it is a finite real number (not a bool) in
    ``(lo, hi]`` (``[lo, hi]`` with ``lo_open=False``; no upper bound for ``hi=None``)."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(
        value, (bool, np.bool_))
    ok = ok and math.isfinite(value) and (value > lo if lo_open else value >= lo)
    ok = ok and (hi is None or value <= hi)
    if not ok:
        left = "(" if lo_open else "["
        rng = f"{left}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
        raise out_of_range(name, value, f"a finite number in {rng}")
    return float(value)


def check_floats(name: str, values: Sequence, lo: float = 0.0, **kw) -> None:
    """Raise unless ``values`` is non-empty and each passes :func:`check_float` (``name[i]``)."""
    if len(values) == 0:
        raise out_of_range(name, values, "at least one value")
    for i, v in enumerate(values):
        check_float(f"{name}[{i}]", v, lo, **kw)


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise out_of_range(name, value, f"one of {', '.join(map(str, choices))}")


def check_choices(name: str, values: Sequence[str], choices: Sequence[str]) -> None:
    """Raise unless ``values`` is non-empty, each one of ``choices``, none repeated."""
    among = f"among {', '.join(map(str, choices))}"
    if len(values) == 0:
        raise out_of_range(name, values, f"a non-empty list of choices {among}")
    for v in values:
        if v not in choices:
            raise out_of_range(name, values, f"a list of choices {among} ({v!r} is none)")
    repeated = sorted({v for v in values if list(values).count(v) > 1})
    if repeated:
        raise out_of_range(name, values, f"distinct choices: it repeats "
                           f"{', '.join(map(repr, repeated))}")


def check_bool(name: str, value) -> bool:
    """``value`` as a bool; raise unless it is ``True`` or ``False`` (``'no'`` is not False)."""
    if not isinstance(value, (bool, np.bool_)):
        raise out_of_range(name, value, "True or False")
    return bool(value)


def check_seeds(seeds, name: str = "seeds") -> np.ndarray:
    """Seeds as an int64 array (in the order given); raise unless they are a count or distinct ints.

    A count ``n`` in ``[1, MAX_SEED + 1]`` means seeds ``0 .. n-1``; a sequence must hold
    distinct integers in ``[0, MAX_SEED]`` (see :data:`MAX_SEED` for why the bound).
    """
    valid = (
        "a count n > 0 (seeds 0 .. n-1, n <= 2**31) or a non-empty sequence of distinct ints "
        ">= 0 and <= 2**31 - 1"
    )
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, (bool, np.bool_)):
        if not 1 <= seeds <= MAX_SEED + 1:
            raise ValueError(f"{name}={seeds!r} is out of range: must be {valid}.")
        return np.arange(int(seeds), dtype=np.int64)
    if (
        seeds is None
        or isinstance(seeds, (bool, np.bool_, float, np.floating, str, bytes))
        or not hasattr(seeds, "__iter__")
    ):
        raise ValueError(f"{name}={seeds!r} is invalid: must be {valid}.")
    items = list(np.asarray(seeds).ravel()) if hasattr(seeds, "shape") else list(seeds)
    if hasattr(seeds, "shape") and np.ndim(seeds) != 1:
        raise ValueError(f"{name} must be 1-D; got shape {np.shape(seeds)}. It must be {valid}.")
    if not items:
        raise ValueError(f"{name}={seeds!r} is empty: must be {valid}.")
    for i, s in enumerate(items):
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise ValueError(
                f"{name}[{i}]={s!r} is not an integer ({name}={seeds!r}): must be {valid}."
            )
        if not 0 <= s <= MAX_SEED:
            raise ValueError(f"{name}[{i}]={int(s)} is out of range [0, 2**31 - 1]; {name} "
                             f"must be {valid}.")
    arr = np.asarray([int(s) for s in items], dtype=np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"{name} repeats {uniq[counts > 1].tolist()} (each seed would be trained more than "
            f"once): must be {valid}."
        )
    return arr


def check_x64(where: str) -> None:
    """The theory is float64 by contract; refuse to run silently in float32."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            f"{where} computes in float64, but JAX's 64-bit mode is off. Switch it on before "
            "calling: `jax.config.update('jax_enable_x64', True)` at the top of your script, "
            "`JAX_ENABLE_X64=1` in the environment, or locally `with jax.enable_x64(True): ...`."
        )


def as_float64(name: str, x, sign: str | None = None, *, ndim=None, what: str = "") -> jax.Array:
    """Check ``x`` and return it as a float64 JAX array.

    ``sign``: ``"pos"`` (every element finite and > 0), ``"nonneg"`` (>= 0) or ``None`` (finite).
    Values are checked when concrete; ``ndim`` (an int or a tuple of allowed ones) always, as
    shapes are static. ``what`` follows the argument's name in a shape error.
    """
    if sign == "pos":
        check_positive(name, x)
    elif sign == "nonneg":
        check_positive(name, x, allow_zero=True)
    else:
        check_finite(name, x)
    if ndim is not None:
        check_ndim(name, x, ndim, what)
    return jnp.asarray(x, dtype=jnp.float64)


# One entry of a `checked` spec: ``name``, ``name>0`` or ``name>=0``, then ``()`` (a scalar),
# ``(1)`` or ``(0|1)`` (allowed numbers of dimensions); or ``name:kind``.
_ENTRY = re.compile(r"(?P<name>\w+)(?::(?P<kind>\w+)|(?P<op>>=?0)?(?:\((?P<ndim>[\d|]*)\))?)")
_SIGN = {None: None, ">0": "pos", ">=0": "nonneg"}


def _entry_check(entry: str, kinds: Mapping[str, Callable]) -> tuple[str, Callable]:
    m = _ENTRY.fullmatch(entry)
    if m is None:
        raise ValueError(f"bad check spec entry {entry!r}")
    name, kind = m["name"], m["kind"]
    if kind is not None:
        return name, kinds[kind]
    sign = _SIGN[m["op"]]
    ndim = None if m["ndim"] is None else tuple(int(d) for d in (m["ndim"] or "0").split("|"))
    return name, functools.partial(as_float64, sign=sign, ndim=ndim)


def checked(spec: str, *, where: str, kinds: Mapping[str, Callable] | None = None):
    """Decorator: the function's checks, stated once in ``spec`` and run before its body.

    The wrapper first refuses JAX's 32-bit mode (:func:`check_x64`, naming
    ``f"{where}.{name}"``), then checks the arguments named in ``spec`` in its order and passes
    each on as its check returns it; arguments not named pass as given. So every check runs in
    Python on the values the caller gave, before the body traces anything.

    ``spec`` is a whitespace-separated list, one entry per argument:

    * ``x`` finite; ``x>0`` finite and > 0; ``x>=0`` finite and >= 0 (all elements). These
      return the value as a float64 array (:func:`as_float64`).
    * a suffix ``()`` requires a scalar, ``(1)`` a 1-D array, ``(0|1)`` either (shapes are
      checked on tracers too).
    * ``x:kind`` calls ``kinds[kind](name, value)`` and passes on what it returns.

    Example: ``@checked("h0>0 y0>=0 eta_h>0() eta_y>0()", where="unijax.theory")``.
    """
    checks = [_entry_check(e, kinds or {}) for e in spec.split()]

    def decorate(fn):
        sig = inspect.signature(fn)
        missing = [name for name, _ in checks if name not in sig.parameters]
        if missing:
            raise TypeError(f"{fn.__name__} has no argument(s) {missing} named in its checks")
        label = f"{where}.{fn.__name__}"

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            check_x64(label)
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError:
                return fn(*args, **kwargs)  # raises Python's own message for a wrong call
            bound.apply_defaults()
            values = bound.arguments
            for name, check in checks:
                values[name] = check(name, values[name])
            return fn(*bound.args, **bound.kwargs)

        return wrapper

    return decorate


def memory_bytes(device) -> tuple[int | None, str]:
    """Memory one ``device`` can hold, in bytes, and what it is (``None`` when unknown).

    Accelerators report their limit (``memory_stats()["bytes_limit"]``); a CPU device shares
    the host's physical memory.
    """
    if getattr(device, "platform", "cpu") != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001  (non-local or backends without statistics)
            stats = {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]), f"{device.platform.upper()} memory per device"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory"
    except (ValueError, OSError, AttributeError):
        return None, "host memory"


class SizeError(ValueError):
    """A run refused up front because it would need more memory than there is (the message
    says how much); the ``unijax`` command shows it as one line, before anything is stored."""


def check_memory(need: int, available: int | None, where: str, what: str, advice: str) -> None:
    """Refuse up front (:class:`SizeError`) a run that would need more than ``available``
    bytes."""
    if available is not None and need > available:
        raise SizeError(
            f"{what} would need at least {need / 2**30:.3g} GiB of {where}, more than the "
            f"{available / 2**30:.3g} GiB there is; {advice}."
        )
