"""Keep results: save and load them exactly, label them (xarray, pandas), summarize them.

Every result of unijax is a frozen pytree (an ``eqx.Module``): :class:`unijax.fit.RateFit`,
:class:`unijax.fit.MeanFit`, :class:`unijax.train.TrainResult`,
:class:`unijax.observe.Trajectory`; :func:`load_experiment` gives an experiment's stored
output as an :class:`ExperimentResult`. They share one contract:

* ``summary() -> str``: a few lines for a human (a log, a notebook);
* ``summary_dict() -> dict``: the same numbers as a JSON-ready dict (for a program).

**File format** (:func:`save`, :func:`load`). One ``.npz`` (NumPy's zip of ``.npy`` files,
readable without unijax: ``numpy.load(path)``; no pickle) holding every array of the result
under ``a0, a1, ...`` and a JSON header under ``__unijax__``::

    {"format": "unijax-result", "version": 2, "store_version": 2,
     "type": "unijax.train.TrainResult",
     "fields": {"gains": {"array": "a0", "jax": true}, "h": {"array": "a2", "jax": true},
                "final_params": null, "name": "default", "pair": {"tuple": [0, 1]},
                "config": {"dataclass": "unijax.configs.TrainConfig", "fields": {...}}, ...}}

Each field is encoded by its kind: arrays (by name in the archive, and whether it was a JAX
or a NumPy array), ``null``, JSON numbers/strings/booleans (``NaN``/``Infinity`` as JSON's
common extension), ``{"tuple": [...]}``, ``{"list": [...]}``, ``{"dict": [[key, value], ...]}``
(order kept; nested parameter trees) and unijax dataclasses by their import path. Loading
rebuilds the same type with equal arrays of the same dtypes (with JAX's x64 mode as when the
result was made: JAX keeps 64-bit arrays only in x64 mode).

**A file is data, never code.** :func:`load` reads it with ``allow_pickle=False`` and checks
the header against the type's schema before building anything: the header's keys and their
types, every field of the type present and no other, each value of its field's declared type
(arrays where arrays are declared, with the declared dtype kind and the shapes the type's
annotations tie together, e.g. a Trajectory's ``ts (n_epochs,)`` and ``hyw (..., n_epochs,
3)``), and every array the header refers to present. A file that fails is refused with
:class:`DamagedStoreError` naming the file and the bad field; a file of another format
version (:data:`FORMAT_VERSION`, the store's :data:`STORE_VERSION`) is refused
with :class:`OlderStoreError`, saying how to get a current one.

**Errors** of the stored output (``unijax run``, :func:`unijax.sweep.run_sweep`,
:func:`load_experiment`), all ``ValueError``: :class:`ConfigMismatchError` (a directory holds
results of another config; ``.keys`` names the differing dotted keys),
:class:`ForeignDataError` (unijax did not write ``.path`` and leaves it alone) and
:class:`DamagedStoreError` (a stored file cannot be used; ``.path`` names it).

**Labelled arrays** (:func:`to_xarray`, :func:`to_dataframe`) need the optional extra
``pip install "unijax[labels]"`` (xarray, pandas); nothing else imports them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np

from unijax.results._store import (
    STORE_VERSION,
    DamagedStoreError,
    OlderStoreError,
    ResultStore,
    atomic_save_npz,
    load_npz,
)

#: Name of the format in the header of a saved result.
FORMAT = "unijax-result"
#: Version of the format (bumped when a saved file would be read differently); files of
#: another version are refused. Version 2: the header records the store version and is
#: checked against the type's schema.
FORMAT_VERSION = 2
_HEADER = "__unijax__"


# --------------------------------------------------------------------------------------------
# Save and load
# --------------------------------------------------------------------------------------------


def _qualname(cls: type) -> str:
    # A type is stored under its public path (unijax.fit.RateFit, not the private module that
    # defines it), so that a file stays readable when a package's insides move.
    parts = cls.__module__.split(".")
    while len(parts) > 2 and parts[-1].startswith("_"):
        parent = importlib.import_module(".".join(parts[:-1]))
        if getattr(parent, cls.__qualname__, None) is not cls:
            break
        parts.pop()
    return f"{'.'.join(parts)}.{cls.__qualname__}"


class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def __call__(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)) and type(value) in (int, float):
            return value
        if isinstance(value, (jax.Array, np.ndarray, np.generic)):
            if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
                raise TypeError(f"{where}: PRNG key arrays cannot be saved (save the key data)")
            arr = np.asarray(value)
            if arr.dtype == object:
                raise TypeError(f"{where}: object arrays cannot be saved")
            key = f"a{len(self.arrays)}"
            self.arrays[key] = arr
            kind = "jax" if isinstance(value, jax.Array) else (
                "scalar" if isinstance(value, np.generic) else "numpy")
            return {"array": key, "kind": kind}
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {"tuple": [self(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return {"list": [self(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            for k in value:
                if not isinstance(k, str):
                    raise TypeError(f"{where}: dict keys must be strings, got {k!r}")
            return {"dict": [[k, self(v, f"{where}[{k!r}]")] for k, v in value.items()]}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            cls = type(value)
            if not cls.__module__.startswith("unijax."):
                raise TypeError(f"{where}: only unijax's own dataclasses can be saved, got "
                                f"{_qualname(cls)}")
            return {
                "dataclass": _qualname(cls),
                "fields": {f.name: self(getattr(value, f.name), f"{where}.{f.name}")
                           for f in dataclasses.fields(value) if f.init},
            }
        raise TypeError(f"{where}: cannot save a value of type {type(value).__name__}")


_MODULE = re.compile(r"unijax(\.[a-z_][a-z0-9_]*)+")
_NODE_KEYS = ({"array", "kind"}, {"tuple"}, {"list"}, {"dict"}, {"dataclass", "fields"})
_HEADER_KEYS = {"format": str, "version": int, "store_version": int, "type": str,
                "fields": dict}


class _Bad(ValueError):
    """A header that does not fit the schema; ``where`` names the field."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")


def _import_class(path: Any, where: str) -> type:
    """The unijax dataclass ``path`` names (only ``unijax.<module>.<Class>``)."""
    if not isinstance(path, str):
        raise _Bad(where, f"a type name must be a string, got {type(path).__name__}")
    module, _, name = path.rpartition(".")
    if not _MODULE.fullmatch(module) or not name.isidentifier():
        raise _Bad(where, f"{path!r} is not a unijax type")
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise _Bad(where, f"{path!r} is not a unijax result type")
    return cls


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _check_type(value: Any, ann: Any, where: str) -> None:
    """Raise :class:`_Bad` unless ``value`` is of the declared type ``ann`` (jaxtyping arrays:
    dtype kind and shape, dims tied within the enclosing :func:`jaxtyping.jaxtyped` call)."""
    if ann is Any:
        return
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            try:
                _check_type(value, a, where)
                return
            except _Bad as e:
                errors.append(str(e).split(": ", 1)[1])
        raise _Bad(where, " or ".join(dict.fromkeys(errors)))
    if ann is type(None):
        if value is not None:
            raise _Bad(where, f"must be null, got {type(value).__name__}")
        return
    if isinstance(ann, type) and issubclass(ann, jaxtyping.AbstractArray):
        if not _is_array(value):
            raise _Bad(where, f"must be an array, got {type(value).__name__} {value!r:.40}")
        check = ann if isinstance(value, jax.Array) else ann.dtype[np.ndarray, ann.dim_str]
        arr = value if isinstance(value, jax.Array) else np.asarray(value)
        if not isinstance(arr, check):
            raise _Bad(where, f"array of dtype {arr.dtype} and shape {arr.shape} does not fit "
                       f"{ann.dtype.__name__}[{ann.dim_str!r}] (or the shapes of the other "
                       "fields)")
        return
    if ann is jax.Array:
        if not _is_array(value):
            raise _Bad(where, f"must be an array, got {type(value).__name__} {value!r:.40}")
        return
    if ann in (int, float, bool, str):
        boolean = isinstance(value, (bool, np.bool_))
        ok = (boolean if ann is bool
              else isinstance(value, str) if ann is str
              else isinstance(value, (int, np.integer)) and not boolean if ann is int
              else isinstance(value, (int, float, np.integer, np.floating)) and not boolean)
        if not ok:
            raise _Bad(where, f"must be {ann.__name__}, got {type(value).__name__} "
                       f"{value!r:.40}")
        return
    if ann is tuple or origin is tuple:
        if not isinstance(value, tuple):
            raise _Bad(where, f"must be a tuple, got {type(value).__name__}")
        if args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _Bad(where, f"must have {len(args)} entries, got {len(value)}")
            for i, (v, a) in enumerate(zip(value, args, strict=True)):
                _check_type(v, a, f"{where}[{i}]")
        elif args:
            for i, v in enumerate(value):
                _check_type(v, args[0], f"{where}[{i}]")
        return
    if isinstance(ann, type) and dataclasses.is_dataclass(ann):
        if not isinstance(value, ann):
            raise _Bad(where, f"must be a {ann.__name__}, got {type(value).__name__}")
        return
    if isinstance(ann, type) and not isinstance(value, ann):
        raise _Bad(where, f"must be {ann.__name__}, got {type(value).__name__}")


def _decode(node: Any, arrays: Mapping[str, np.ndarray], where: str, used: set) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if not isinstance(node, dict) or set(node) not in _NODE_KEYS:
        shown = sorted(node) if isinstance(node, dict) else type(node).__name__
        raise _Bad(where, f"unreadable entry ({shown}); expected a value, an array, a tuple, "
                   "a list, a dict or a unijax dataclass")
    if "array" in node:
        name, kind = node["array"], node["kind"]
        if not isinstance(name, str) or name not in arrays:
            raise _Bad(where, f"refers to array {name!r}, which the file does not hold")
        if kind not in ("jax", "numpy", "scalar"):
            raise _Bad(where, f"array kind {kind!r} is not jax, numpy or scalar")
        arr = arrays[name]
        if arr.dtype.kind not in "biufc" or arr.dtype.kind == "c" and kind == "jax":
            raise _Bad(where, f"array {name!r} has dtype {arr.dtype}, not a number type")
        used.add(name)
        if kind == "jax":
            return jnp.asarray(arr)
        if kind == "scalar":
            if arr.ndim != 0:
                raise _Bad(where, f"scalar array {name!r} has shape {arr.shape}")
            return arr[()]
        return arr
    if "tuple" in node or "list" in node:
        items = node.get("tuple", node.get("list"))
        if not isinstance(items, list):
            raise _Bad(where, "a tuple or list must hold a JSON list")
        out = [_decode(v, arrays, f"{where}[{i}]", used) for i, v in enumerate(items)]
        return tuple(out) if "tuple" in node else out
    if "dict" in node:
        pairs = node["dict"]
        if not isinstance(pairs, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
            raise _Bad(where, "a dict must hold a list of [string key, value] pairs")
        return {k: _decode(v, arrays, f"{where}[{k!r}]", used) for k, v in pairs}
    cls = _import_class(node["dataclass"], where)
    return _build(cls, node["fields"], arrays, where, used)


def _build(cls: type, fields: Any, arrays: Mapping[str, np.ndarray], where: str,
           used: set) -> Any:
    """``cls(**fields)`` decoded and checked against ``cls``'s fields and annotations."""
    if not isinstance(fields, dict):
        raise _Bad(f"{where}.fields", f"must be an object, got {type(fields).__name__}")
    declared = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - set(declared))
    if unknown:
        raise _Bad(where, f"{', '.join(map(repr, unknown))} is not a field of "
                   f"{cls.__qualname__} (its fields: {', '.join(declared)})")
    missing = [k for k, f in declared.items() if k not in fields and f.default is
               dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _Bad(where, f"field(s) {', '.join(missing)} of {cls.__qualname__} missing")
    values = {k: _decode(v, arrays, f"{where}.{k}", used) for k, v in fields.items()}
    hints = typing.get_type_hints(cls)

    @jaxtyping.jaxtyped(typechecker=None)  # dims named alike must agree across fields
    def check_all():
        for k, v in values.items():
            _check_type(v, hints.get(k, Any), f"{where}.{k}")

    check_all()
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise _Bad(where, f"the fields do not make a {cls.__qualname__}: "
                   f"{' '.join(str(e).split())[:200]}") from None


def save(path: str | os.PathLike, result: eqx.Module) -> Path:
    """Save a unijax result (any unijax ``eqx.Module`` or dataclass) to ``path`` (``.npz``).

    The file is written atomically (a crash leaves the old file or the new one). See the
    module docstring for the format.

    Args:
        path: the file to write; ``.npz`` is appended when it has another suffix.
        result: e.g. a :class:`~unijax.fit.RateFit` or :class:`~unijax.train.TrainResult`.

    Returns:
        The path written.

    Raises:
        TypeError: ``result`` is not a unijax result, or holds a value the format cannot store
            (naming the field).
    """
    if not (dataclasses.is_dataclass(result) and not isinstance(result, type)
            and type(result).__module__.startswith("unijax.")):
        raise TypeError(f"result must be a unijax result (e.g. unijax.fit.RateFit), got "
                        f"{type(result).__name__}")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    enc = _Encoder()
    header = {"format": FORMAT, "version": FORMAT_VERSION, "store_version": STORE_VERSION,
              "type": _qualname(type(result)),
              "fields": enc(result, type(result).__name__)["fields"]}
    arrays = dict(enc.arrays)
    arrays[_HEADER] = np.asarray(json.dumps(header))
    return atomic_save_npz(path, arrays)


def load(path: str | os.PathLike) -> Any:
    """Load a result written by :func:`save`: the same type, with equal fields.

    The file is never unpickled, and its header is checked against the type's schema before
    anything is built (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OlderStoreError: written in another format version (says how to get a current file).
        DamagedStoreError (a ValueError): not a unijax result file, or its header does not fit
            the schema; the message names the file and the bad field.
    """
    path = Path(path)
    arrays = load_npz(path)
    if _HEADER not in arrays:
        raise DamagedStoreError(f"{path} is not a saved unijax result (no {_HEADER!r} entry)",
                                path)
    raw = arrays.pop(_HEADER)
    try:
        if raw.ndim != 0 or raw.dtype.kind != "U":
            raise ValueError(f"an array of dtype {raw.dtype} and shape {raw.shape}")
        header = json.loads(str(raw))
    except (ValueError, RecursionError) as e:
        raise DamagedStoreError(f"{path}: its header {_HEADER!r} is not a JSON text "
                                f"({' '.join(str(e).split())[:120]})", path) from None
    try:
        if not isinstance(header, dict):
            raise _Bad("header", f"must be a JSON object, got {type(header).__name__}")
        if header.get("format") != FORMAT:
            raise _Bad("header.format", f"{header.get('format')!r} is not {FORMAT!r}")
        if header.get("version") != FORMAT_VERSION or header.get(
                "store_version") != STORE_VERSION:
            raise OlderStoreError(
                f"{path} was written in result format {header.get('version')!r} (store "
                f"format {header.get('store_version', 1)!r}); this unijax reads format "
                f"{FORMAT_VERSION} (store format {STORE_VERSION}) only: compute the result "
                "again with this unijax and save it", path)
        extra = sorted(set(header) - set(_HEADER_KEYS))
        if extra:
            raise _Bad("header", f"unknown key(s) {', '.join(map(repr, extra))}")
        for k, tp in _HEADER_KEYS.items():
            if not isinstance(header.get(k), tp):
                raise _Bad(f"header.{k}", f"must be a {tp.__name__}, got "
                           f"{type(header.get(k)).__name__}")
        cls = _import_class(header["type"], "header.type")
        used: set[str] = set()
        result = _build(cls, header["fields"], arrays, cls.__name__, used)
        unused = sorted(set(arrays) - used)
        if unused:
            raise _Bad("header", f"array(s) {', '.join(unused)} in the file are not referred "
                       "to by any field")
        return result
    except _Bad as e:
        raise DamagedStoreError(f"{path} does not hold a valid unijax result: {e}",
                                path) from None


# --------------------------------------------------------------------------------------------
# Summaries as dicts
# --------------------------------------------------------------------------------------------


def summary_dict(result: Any) -> dict[str, Any]:
    """The numbers of ``result.summary()`` as a JSON-ready dict (NaN written as ``None``): the
    result's own ``summary_dict()``."""
    if not callable(getattr(result, "summary_dict", None)):
        raise TypeError(f"no summary for {type(result).__name__}")
    return result.summary_dict()


# --------------------------------------------------------------------------------------------
# Labelled arrays
# --------------------------------------------------------------------------------------------


def _require(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(
            f"this needs the optional dependency {name!r}: pip install \"unijax[labels]\" "
            f"(installs xarray and pandas)"
        ) from None


def _arrays(result: Any, *, grid: Any = None, ts: Any = None) -> tuple[dict, dict, dict]:
    """``(variables {name: (dims, values)}, coords, attrs)`` of a result, NumPy only: the
    result's own ``labelled_arrays``."""
    if not callable(getattr(result, "labelled_arrays", None)):
        raise TypeError(f"to_xarray/to_dataframe take a TrainResult, RateFit or Trajectory, got "
                        f"{type(result).__name__}")
    return result.labelled_arrays(grid=grid, ts=ts)


def to_xarray(result: Any, *, grid: Any = None, ts: Any = None):
    """An ``xarray.Dataset`` of ``result`` with labelled dimensions.

    * :class:`~unijax.train.TrainResult`: ``loss (gain, seed, epoch)``,
      ``hyw (gain, seed, [layer,] epoch, variable)`` with ``variable = h, y, w``,
      ``final_loss``, ``final_hyw``, ``diverged``, ``diverged_epoch``.
    * :class:`~unijax.fit.RateFit`: ``eta_h``, ``eta_y``, standard errors, flags ``(trial)``
      (or ``(gain, seed[, layer])`` with ``grid=`` the TrainResult the trajectories came
      from, flattened in its order), ``r2 (..., variable)``, ``z_fit (..., epoch, variable)``.
    * :class:`~unijax.observe.Trajectory`: ``hyw ([trial,] epoch, variable)``.

    Args:
        result: the result.
        grid: for a RateFit: the TrainResult whose ``hyw()`` was fitted.
        ts: for a RateFit: the epochs of ``z_fit`` (default ``0 .. n_epochs - 1``).

    Raises:
        ImportError: xarray is not installed (``pip install "unijax[labels]"``).
    """
    xr = _require("xarray")
    out, coords, attrs = _arrays(result, grid=grid, ts=ts)
    return xr.Dataset({k: (d, v) for k, (d, v) in out.items()}, coords=coords, attrs=attrs)


def to_dataframe(result: Any, *, grid: Any = None, ts: Any = None):
    """A tidy ``pandas.DataFrame``: one row per observation, one column per quantity.

    * :class:`~unijax.train.TrainResult`: a row per ``(gain, seed, [layer,] epoch)`` with
      columns ``loss, h, y, w`` (``loss`` repeated over layers).
    * :class:`~unijax.fit.RateFit`: a row per trial (``gain, seed[, layer]`` with ``grid=``)
      with ``eta_h, eta_y``, their standard errors, ``sse``, ``r2_h, r2_y, r2_w`` and flags.
    * :class:`~unijax.observe.Trajectory`: a row per ``([trial,] epoch)`` with ``h, y, w``.

    Raises:
        ImportError: pandas is not installed (``pip install "unijax[labels]"``).
    """
    pd = _require("pandas")
    out, coords, _ = _arrays(result, grid=grid, ts=ts)
    if "hyw" in out:  # trajectories: a row per epoch, columns h, y, w (and the loss)
        dims = out["hyw"][0][:-1]
        hyw = out["hyw"][1]
        cols = {name: hyw[..., i] for i, name in enumerate("hyw")}
        if "loss" in out:  # the loss has no layer axis: repeated over layers
            loss_dims, loss = out["loss"]
            loss = np.expand_dims(loss, [a for a, d in enumerate(dims) if d not in loss_dims])
            cols = {"loss": np.broadcast_to(loss, hyw.shape[:-1]), **cols}
    elif "loss" in out:
        dims, loss = out["loss"]
        cols = {"loss": loss}
    else:  # a fit: a row per trial, its per-trial quantities and R^2 by variable
        cols = {k: v for k, (d, v) in out.items() if "variable" not in d}
        for i, name in enumerate("hyw"):
            cols[f"r2_{name}"] = out["r2"][1][..., i]
        dims = out["eta_h"][0]
    shape = np.shape(next(iter(cols.values())))
    index = {}
    for axis, d in enumerate(dims):
        values = np.asarray(coords[d]) if d in coords else np.arange(shape[axis])
        index[d] = np.broadcast_to(
            values.reshape([-1 if a == axis else 1 for a in range(len(dims))]), shape
        ).ravel()
    frame = {**index, **{k: np.asarray(v).ravel() for k, v in cols.items()}}
    return pd.DataFrame(frame)


# --------------------------------------------------------------------------------------------
# An experiment's stored output
# --------------------------------------------------------------------------------------------


class ExperimentResult(eqx.Module):
    """The stored output of one experiment (``unijax run``): its arrays and its verdict.

    Attributes:
        name: the experiment, e.g. ``"E3"``.
        arrays: ``{name: ndarray}`` of ``OUT/<name>/result.npz`` (shapes as the experiment's
            page in docs/experiments.md describes).
        info: the contents of ``OUT/<name>/results.json``: title, claim, preset, the
            ``agreement`` verdict with its figures, timings, environment, config.
        figures: paths of the figures written next to them (PNG and PDF).
    """

    name: str = eqx.field(static=True)
    arrays: dict[str, np.ndarray]
    info: dict = eqx.field(static=True)
    figures: tuple[Path, ...] = eqx.field(static=True)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    @property
    def passed(self) -> bool | None:
        """``agreement.passed``: True only for REPRODUCED, False for NOT REPRODUCED and AS
        AUTHORS, ``None`` for NOT TESTED or no verdict (:attr:`verdict` says which)."""
        return self.info.get("agreement", {}).get("passed")

    @property
    def verdict(self) -> str:
        """The experiment's verdict as stored: ``"REPRODUCED"``, ``"AS AUTHORS"``, ``"NOT
        REPRODUCED"`` or ``"NOT TESTED"``. An agreement stored before verdicts existed gives
        its verdict from ``passed`` (None: NOT TESTED)."""
        ag = self.info.get("agreement", {})
        if ag.get("verdict") is not None:
            return str(ag["verdict"])
        return {True: "REPRODUCED", False: "NOT REPRODUCED", None: "NOT TESTED"}[ag.get("passed")]

    def summary(self) -> str:
        """A few lines: the experiment, its preset, the verdict and its headline, the rows per
        verdict (when the agreement has per-row verdicts), the criterion and the arrays."""
        ag = self.info.get("agreement", {})
        lines = [f"{self.name} ({self.info.get('preset', '?')} preset): "
                 f"{self.info.get('title', '')}",
                 f"  {self.verdict}: {ag.get('headline', '')}"]
        rows = ag.get("rows") or {}
        if isinstance(rows, dict) and rows:
            # In the order the verdicts are listed, as the report's summary table counts them.
            order = ("REPRODUCED", "AS AUTHORS", "NOT REPRODUCED", "NOT TESTED")
            counts = [(v, sum(1 for r in rows.values() if r == v)) for v in order]
            lines.append("  rows: " + ", ".join(f"{n} {v}" for v, n in counts if n))
        if ag.get("criterion"):
            lines.append(f"  criterion: {ag['criterion']}")
        lines.append(f"  arrays: {', '.join(f'{k} {v.shape}' for k, v in self.arrays.items())}")
        return "\n".join(lines)

    def summary_dict(self) -> dict[str, Any]:
        """``results.json`` as a dict (JSON-ready)."""
        return dict(self.info)


def load_experiment(outdir: str | os.PathLike, name: str) -> ExperimentResult:
    """Load the stored output of experiment ``name`` from the output directory ``outdir``.

    Reads ``outdir/<name>/result.npz`` and ``outdir/<name>/results.json``, which ``unijax run``
    writes when the experiment finishes, and checks they belong together (same config hash).

    Args:
        outdir: the directory given to ``unijax run --out``.
        name: the experiment, e.g. ``"E3"``.

    Raises:
        FileNotFoundError: the experiment has not finished there (naming what is there).
        ValueError: ``name`` is not a plain name.
        OlderStoreError: it was stored in an older store format (says how to recompute it).
        DamagedStoreError (a ValueError): a stored file is damaged, crafted or inconsistent
            (the two files from different configs included); the message names the file and
            the field.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"name={name!r} is not an experiment's name (e.g. 'E3'): letters, "
                         "digits, '_', '.', '-'")
    store = ResultStore(outdir)
    d = store.exp_dir(name)
    if not (d / "results.json").exists():
        out = Path(outdir)
        finished = sorted(p.parent.name for p in out.glob("*/results.json")) if out.is_dir() else []
        raise FileNotFoundError(f"{d / 'results.json'} does not exist: experiment {name!r} has "
                                f"not finished in {outdir}; finished there: {finished}")
    arrays, info = store.load_result(name)
    figures = tuple(sorted(p for p in d.iterdir() if p.suffix in (".png", ".pdf")))
    return ExperimentResult(name=name, arrays=arrays, info=info, figures=figures)
