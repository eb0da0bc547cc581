"""Helpers shared by the experiment modules: config validation, results <-> arrays,
statistics over seeds, progress and caching protocols (``--set`` is parsed by
:mod:`unijax.cli`).

An experiment module defines

* ``NAME`` (``"E3"``), ``TITLE``, ``CLAIM`` (what the paper predicts, one or two sentences);
* ``Config``: a frozen dataclass; every field has a type among ``int``, ``float``, ``bool``,
  ``str``, ``str | None``, ``tuple[str, ...]``, ``tuple[float, ...]``, ``tuple[int, ...]``, or
  is a nested frozen dataclass of such fields (a block, e.g. ``rates``, set as
  ``--set rates.epochs=400``), and ``__post_init__`` raises ``ValueError`` naming the field
  (dotted inside a block), its value and the valid range;
* ``presets``: ``{"quick": Config(...), "paper": Config(...), "tiny": Config(...)}``;
* ``run(config, *, key, progress=no_progress, cache=memory_cache(), upstream=None) -> Result``:
  a pure function of the config and the key (``cache`` only memoizes named pieces of work);
* ``Result``: a frozen dataclass whose fields are NumPy arrays (stored as ``result.npz``);
* ``plot(result, outdir) -> list[Path]`` and ``agreement(result) -> dict`` (see
  :func:`make_agreement`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from unijax._checks import (  # noqa: F401 (the experiments' Config checks, one module)
    check_bool,
    check_choice,
    check_choices,
    check_float,
    check_floats,
    check_int,
)
from unijax.results._store import memory_cache

__all__ = [
    "BadInput",
    "Cache",
    "Progress",
    "no_progress",
    "memory_cache",
    "result_to_arrays",
    "result_from_arrays",
    "spread",
    "pearson",
    "spearman",
    "slope_through_origin",
    "linear_slope",
    "make_agreement",
    "Verdict",
    "combine_verdicts",
    "verdict_counts",
    "verdict_rows_text",
    "check_int",
    "check_bool",
    "check_float",
    "check_choice",
    "check_choices",
    "check_floats",
]

Cache = Callable[[str, Callable[[], Mapping[str, Any]]], dict[str, np.ndarray]]
Progress = Callable[..., Iterable]


def no_progress(iterable: Iterable, **_: Any) -> Iterable:
    """The default ``progress``: returns ``iterable`` unchanged (tqdm's signature)."""
    return iterable


class BadInput(ValueError):
    """Invalid user input (experiment name, ``--set`` key or value, paths): exit status 2."""


# ---------------------------------------------------------------------------------------------
# Results <-> arrays
# ---------------------------------------------------------------------------------------------


def result_to_arrays(result: Any) -> dict[str, np.ndarray]:
    """The fields of a Result dataclass as NumPy arrays (for ``result.npz``)."""
    return {f.name: np.asarray(getattr(result, f.name)) for f in dataclasses.fields(result)}


def result_from_arrays(cls: type, arrays: Mapping[str, np.ndarray]) -> Any:
    """Rebuild a Result dataclass from :func:`result_to_arrays`' output (every field)."""
    fields = dataclasses.fields(cls)
    missing = [f.name for f in fields if f.name not in arrays]
    if missing:
        raise ValueError(f"stored result lacks fields {missing} of {cls.__qualname__}")
    return cls(**{f.name: np.asarray(arrays[f.name]) for f in fields})


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def spread(values: Any) -> dict[str, Any]:
    """Mean, standard deviation (ddof=1 when n > 1), min, max and count of the finite values.

    Non-finite entries (excluded trials are stored as NaN) are left out and not counted.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation of the finite pairs of ``a`` and ``b`` (NaN if < 3 pairs or flat)."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (1-based)."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(1, v.size + 1)
    for u in np.unique(v):
        tie = v == u
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of the finite pairs (NaN if < 3 pairs)."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return pearson(_ranks(a[ok]), _ranks(b[ok]))


def linear_slope(x: Any, y: Any) -> float:
    """Least-squares slope of ``y`` against ``x`` (with intercept), finite pairs only."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2 or np.var(x) == 0:
        return float("nan")
    return float(np.cov(x, y, bias=True)[0, 1] / np.var(x))


def slope_through_origin(x: Any, y: Any) -> float:
    """Least-squares slope of ``y = s x`` (no intercept), finite pairs only."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any() or np.sum(x[ok] ** 2) == 0:
        return float("nan")
    return float(np.sum(x[ok] * y[ok]) / np.sum(x[ok] ** 2))


def fmt(x: Any, digits: int = 3) -> str:
    """A number for the report (``n/a`` for None/NaN)."""
    if x is None:
        return "n/a"
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


def fmt_spread(s: Mapping[str, Any], digits: int = 3) -> str:
    """``mean ± std (n=..)`` from :func:`spread`."""
    if not s or s.get("n", 0) == 0:
        return "n/a (no valid trials)"
    return f"{fmt(s['mean'], digits)} ± {fmt(s['std'], 2)} (n={s['n']})"


class Verdict(str, enum.Enum):
    """What a row or an experiment showed, in the words a referee would sign.

    * ``REPRODUCED``: the paper's criterion is met.
    * ``AS_AUTHORS``: the theory misses here, and the authors' own pipeline misses equally
      (shown as its own verdict and count, never folded into REPRODUCED).
    * ``NOT_REPRODUCED``: the criterion is not met.
    * ``NOT_TESTED``: not judged (settings unpublished, data absent, no usable trials); the
      agreement's text says which.
    """

    REPRODUCED = "REPRODUCED"
    AS_AUTHORS = "AS AUTHORS"
    NOT_REPRODUCED = "NOT REPRODUCED"
    NOT_TESTED = "NOT TESTED"

    @classmethod
    def of(cls, passed: bool | None) -> Verdict:
        """REPRODUCED / NOT_REPRODUCED for a decided check, NOT_TESTED for ``None``."""
        if passed is None:
            return cls.NOT_TESTED
        return cls.REPRODUCED if passed else cls.NOT_REPRODUCED


def combine_verdicts(rows: Iterable[Verdict]) -> Verdict:
    """The experiment's verdict from its rows' (NOT_TESTED rows are left out).

    NOT_REPRODUCED if any judged row is; else AS_AUTHORS if any is; else REPRODUCED; NOT_TESTED
    when no row was judged.
    """
    judged = [Verdict(v) for v in rows if Verdict(v) is not Verdict.NOT_TESTED]
    if not judged:
        return Verdict.NOT_TESTED
    for v in (Verdict.NOT_REPRODUCED, Verdict.AS_AUTHORS):
        if v in judged:
            return v
    return Verdict.REPRODUCED


def verdict_counts(rows: Mapping[str, Any]) -> dict[str, int]:
    """``{verdict text: number of rows}`` of a stored agreement's ``rows``, in the order of
    :class:`Verdict` (verdicts that no row has are left out)."""
    vs = [Verdict(v) for v in rows.values()]
    return {v.value: vs.count(v) for v in Verdict if v in vs}


def verdict_rows_text(rows: Mapping[str, Any], unit: str = "rows") -> str:
    """``"3 REPRODUCED, 11 AS AUTHORS (convolution, ...), 1 NOT TESTED (...)"``: the count of
    each verdict, naming the rows of every verdict but REPRODUCED."""
    parts = []
    for v, n in verdict_counts(rows).items():
        names = [k for k, x in rows.items() if Verdict(x).value == v]
        parts.append(f"{n} {v}" + ("" if v == Verdict.REPRODUCED.value
                                   else f" ({', '.join(names)})"))
    return f"{unit}: " + ", ".join(parts) if parts else f"no {unit} judged"


def make_agreement(
    *,
    headline: str,
    measured: str,
    criterion: str,
    figures: Mapping[str, Any],
    counts: Mapping[str, Any],
    notes: Sequence[str] = (),
    passed: bool | None = None,
    verdict: Verdict | None = None,
    rows: Mapping[str, Verdict] | None = None,
    table: Mapping[str, Sequence[Any]] | None = None,
    departures: Sequence[str] = (),
) -> dict[str, Any]:
    """The dict every ``agreement(result)`` returns (stored in ``results.json``).

    Args:
        headline: the one number (with its spread) that the report leads with.
        measured: one or two sentences of what was measured, numbers included.
        criterion: the rule, in words, with its threshold.
        figures: every agreement figure (numbers, spreads from :func:`spread`, per-item dicts).
        counts: ``{"trials": ..., "diverged": ..., "not_converged": ..., "used": ...}``.
        notes: caveats (quick-preset sizes, rates source, ...).
        passed: the old two-way verdict; used only when ``verdict`` is not given
            (``Verdict.of(passed)``).
        verdict: the experiment's :class:`Verdict`; defaults to :func:`combine_verdicts` of
            ``rows`` when those are given, else ``Verdict.of(passed)``.
        rows: per-row verdicts (row name -> :class:`Verdict`), shown and counted in the report.
        table: the measurements as a table, ``{"columns": [...], "rows": [[...], ...]}`` (cells
            already formatted as text), shown under "Measured" in the report.
        departures: every setting, filter or epoch cap of this run that the paper's text or
            the authors' code did not use, one text each (the report lists them under
            "Departures").

    The stored dict keeps ``passed`` (True only for REPRODUCED, False for NOT_REPRODUCED and
    AS_AUTHORS, None for NOT_TESTED) for callers that want a boolean.
    """
    rows = {str(k): Verdict(v) for k, v in (rows or {}).items()}
    if table is not None:
        columns = [str(c) for c in table["columns"]]
        body = [[str(c) for c in r] for r in table["rows"]]
        bad = [i for i, r in enumerate(body) if len(r) != len(columns)]
        if bad:
            raise ValueError(f"table rows {bad} have not {len(columns)} cells (the columns)")
        table = {"columns": columns, "rows": body}
    if verdict is None:
        verdict = combine_verdicts(rows.values()) if rows else Verdict.of(passed)
    verdict = Verdict(verdict)
    return {
        "headline": headline,
        "measured": measured,
        "criterion": criterion,
        "verdict": verdict.value,
        "rows": {k: v.value for k, v in rows.items()},
        "passed": None if verdict is Verdict.NOT_TESTED else verdict is Verdict.REPRODUCED,
        "figures": dict(figures),
        "counts": dict(counts),
        "notes": list(notes),
        "departures": [str(d) for d in departures],
        **({"table": table} if table is not None else {}),
    }
