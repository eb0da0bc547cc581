"""Shared matplotlib helpers for the experiments' figures (PNG + PDF, written atomically).

Importing this module leaves matplotlib's backend alone, so ``plt.show()`` keeps working in a
notebook or a script; the ``unijax`` command chooses the non-interactive Agg backend for itself
when it runs. Every helper draws on the figure or axes it is given.

Conventions: the network is drawn with markers or thin solid lines in colour, the theory with
black dashed lines on top ("network vs theory overlaid"); every axis names its quantity and
unit (time in epochs; distances are squared Euclidean distances in the units of the data, so
"a.u." where the data are dimensionless).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from unijax._store import atomic_savefig

__all__ = [
    "THEORY_STYLE",
    "new_figure",
    "save",
    "overlay",
    "matrix",
    "scatter_vs_theory",
    "label",
    "HWY_LABELS",
]

#: Line style of theory curves.
THEORY_STYLE = dict(color="k", ls="--", lw=1.2)
#: Axis labels of the three ODE variables.
HWY_LABELS = {
    "h": "h = ||Δh||² (squared hidden distance, a.u.)",
    "y": "y = ||Δŷ||² (squared output distance, a.u.)",
    "w": "w = y − Δy·Δŷ (alignment, a.u.)",
    "loss": "training loss (½ MSE, a.u.)",
}


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (3.6, 3.0), **kw):
    """``(fig, axes)`` with ``axes`` always a 2-D array of shape ``(nrows, ncols)``."""
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kw
    )
    return fig, axes


def save(fig, outdir: str | os.PathLike, stem: str) -> list[Path]:
    """Save ``fig`` as ``outdir/stem.png`` and ``.pdf`` (atomically) and close it."""
    try:
        fig.tight_layout()
    except Exception:  # tight_layout can fail on exotic layouts; the figure is still fine
        pass
    try:
        return atomic_savefig(fig, Path(outdir) / stem)
    finally:
        plt.close(fig)


def label(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)


def overlay(
    ax,
    t: Any,
    measured: Any,
    theory: Any | None,
    *,
    color: str = "C0",
    name: str = "network",
    theory_name: str = "theory",
    every: int | None = None,
    logy: bool = False,
) -> None:
    """Network trajectory (coloured) with the theory's curve (black dashed) on top.

    Args:
        t: times (epochs), shape ``(n,)``.
        measured: network values, shape ``(n,)`` or ``(n_seeds, n)`` (one thin line per seed).
        theory: theory values with the same shape as ``measured``, or None.
        every: plot every ``every``-th point (default: about 300 points per line).
    """
    t = np.asarray(t)
    m = np.atleast_2d(np.asarray(measured, dtype=float))
    th = None if theory is None else np.atleast_2d(np.asarray(theory, dtype=float))
    step = every or max(1, t.size // 300)
    for i in range(m.shape[0]):
        ax.plot(t[::step], m[i, ::step], color=color, lw=1.8, alpha=0.7,
                label=name if i == 0 else None)
    if th is not None:
        for i in range(th.shape[0]):
            ax.plot(t[::step], th[i, ::step], label=theory_name if i == 0 else None,
                    **THEORY_STYLE)
    if logy:
        ax.set_yscale("log")


def matrix(
    ax,
    M: Any,
    *,
    title: str,
    cbar_label: str = "squared distance (a.u.)",
    ticks: Sequence[str] | None = None,
    cmap: str = "viridis",
) -> None:
    """Show a (pairwise distance) matrix with a labelled colour bar."""
    M = np.asarray(M, dtype=float)
    im = ax.imshow(M, cmap=cmap, interpolation="nearest")
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label(cbar_label, fontsize=8)
    ax.set_title(title, fontsize=9)
    if ticks is not None:
        ax.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=7)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlabel("point")
        ax.set_ylabel("point")
    else:
        ax.set_xlabel("point index")
        ax.set_ylabel("point index")


def scatter_vs_theory(
    ax,
    predicted: Any,
    measured: Any,
    *,
    quantity: str = "final h",
    unit: str = "a.u.",
    color: str = "C0",
    name: str | None = None,
) -> None:
    """Measured against predicted values with the identity line (black dashed)."""
    p = np.asarray(predicted, dtype=float).ravel()
    m = np.asarray(measured, dtype=float).ravel()
    ok = np.isfinite(p) & np.isfinite(m)
    ax.scatter(p[ok], m[ok], s=10, color=color, alpha=0.7, label=name)
    if ok.any():
        lo = float(min(p[ok].min(), m[ok].min()))
        hi = float(max(p[ok].max(), m[ok].max()))
        ax.plot([lo, hi], [lo, hi], label="identity (perfect theory)", **THEORY_STYLE)
    ax.set_xlabel(f"theory: {quantity} ({unit})")
    ax.set_ylabel(f"network: {quantity} ({unit})")
