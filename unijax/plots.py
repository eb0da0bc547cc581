"""Figures of results, and the matplotlib helpers of the experiments' figures.

For users: :func:`fit_vs_data` (a rate fit against its data), :func:`sweep` (a quantity over
gains and seeds, with its spread) and :func:`theory_vs_network` (theory against network, e.g.
final distances) each return a ``matplotlib.figure.Figure`` (``fig.savefig(...)``, or
``plt.show()``), drawn on the ``ax`` you pass or on a new figure.

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

from unijax.results._store import atomic_savefig

__all__ = [
    "THEORY_STYLE",
    "new_figure",
    "save",
    "overlay",
    "matrix",
    "scatter_vs_theory",
    "label",
    "HWY_LABELS",
    "fit_vs_data",
    "sweep",
    "theory_vs_network",
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


# --------------------------------------------------------------------------------------------
# Figures of results: each returns a matplotlib Figure (drawn on ``ax`` when one is given)
# --------------------------------------------------------------------------------------------


def _figure(ax, ncols: int = 1, size=(3.6, 3.0)):
    if ax is None:
        fig, axes = new_figure(1, ncols, size=size)
        return fig, list(axes[0])
    axes = list(np.atleast_1d(ax))
    if len(axes) != ncols:
        raise ValueError(f"ax must be {ncols} matplotlib Axes, got {len(axes)}")
    return axes[0].figure, axes


def fit_vs_data(
    rates: Any,
    ts: Any,
    Z: Any,
    *,
    loss: Any | None = None,
    mean_fit: Any | None = None,
    trials: Sequence[int] | None = None,
    ax: Any | None = None,
):
    """A rate fit against its data: ``h``, ``y``, ``w`` (and the loss) over epochs.

    The data are drawn in colour (one colour per trial), the fitted ODE solution as black
    dashed lines on top. Only usable fits (``rates.usable``: ``status == FitStatus.OK``) are
    drawn; the title says how many of the selected trials are drawn, how many were excluded
    and why (their :class:`unijax.fit.FitStatus`), e.g. ``"2/3 fits usable (excluded: 1
    poor_fit)"``.

    Args:
        rates: a :class:`unijax.fit.RateFit` fitted with ``return_trajectory=True``.
        ts: ``(n_epochs,)`` epochs of the data.
        Z: the fitted data ``(n_epochs, 3)`` or ``(n_trials, n_epochs, 3)``.
        loss: optional measured loss ``([n_trials,] n_epochs)``: adds a fourth panel.
        mean_fit: optional :class:`unijax.fit.MeanFit` of that loss (its ``loss_fit`` is drawn).
        trials: which trials to consider (default all, at most 8); the unusable among them
            are counted in the title, not drawn.
        ax: optional 3 (or 4 with ``loss``) Axes to draw on.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    z_fit = getattr(rates, "z_fit", None)
    if z_fit is None:
        raise ValueError("rates has no fitted trajectory: fit with return_trajectory=True")
    t = np.asarray(ts, dtype=float)
    data = np.asarray(Z, dtype=float).reshape((-1,) + np.shape(Z)[-2:])
    model = np.asarray(z_fit, dtype=float).reshape(data.shape)
    status = np.broadcast_to(np.atleast_1d(np.asarray(rates.status)), data.shape[:1])
    n = data.shape[0]
    asked = list(range(min(n, 8))) if trials is None else [int(i) for i in trials]
    if any(not 0 <= i < n for i in asked):
        raise ValueError(f"trials must be indices in [0, {n - 1}], got {trials!r}")
    # Only fits unijax trusts are drawn; the others are counted, by reason, in the title.
    sel = [i for i in asked if status[i] == 0]
    panels = 3 + (loss is not None)
    fig, axes = _figure(ax, panels)
    for k, var in enumerate("hyw"):
        for c, i in enumerate(sel):
            overlay(axes[k], t, data[i, :, k], model[i, :, k], color=f"C{c % 10}",
                    name=f"trial {i}" if len(sel) > 1 else "network",
                    theory_name="fitted ODE" if c == 0 else "_nolegend_")
        label(axes[k], "epoch", HWY_LABELS[var])
    if loss is not None:
        lv = np.asarray(loss, dtype=float).reshape(n, -1)
        lf = None if mean_fit is None else np.asarray(mean_fit.loss_fit, float).reshape(n, -1)
        for c, i in enumerate(sel):
            overlay(axes[3], t, lv[i], None if lf is None else lf[i], color=f"C{c % 10}",
                    name="network" if c == 0 else "_nolegend_",
                    theory_name="fitted (eta_mean)" if c == 0 else "_nolegend_", logy=True)
        label(axes[3], "epoch", HWY_LABELS["loss"])
    eta_h = np.atleast_1d(np.asarray(rates.eta_h))
    eta_y = np.atleast_1d(np.asarray(rates.eta_y))
    axes[0].set_title(_usable_title(status[asked], eta_h[sel], eta_y[sel]), fontsize=9)
    if sel:
        axes[0].legend(fontsize=7)
    if ax is None:
        fig.tight_layout()
    return fig


def _usable_title(status: np.ndarray, eta_h: np.ndarray, eta_y: np.ndarray) -> str:
    """``"k/n fits usable (excluded: 2 poor_fit, 1 not_identified)"``; for one usable trial of
    one, its rates."""
    from unijax.fit import FitStatus

    n, k = int(status.size), int(np.sum(status == 0))
    if n == 1 and k == 1:
        return f"eta_h = {eta_h[0]:.3g}, eta_y = {eta_y[0]:.3g} 1/epoch (fit usable)"
    reasons = {}
    for s in status[status != 0]:
        name = FitStatus(int(s)).name.lower()
        reasons[name] = reasons.get(name, 0) + 1
    why = ", ".join(f"{c} {r}" for r, c in reasons.items())
    return f"{k}/{n} fits usable" + (f" (excluded: {why})" if why else "") + (
        "; none drawn" if k == 0 else "")


def sweep(
    gains: Any,
    values: Any,
    *,
    quantity: str = "eta_h (1/epoch)",
    logx: bool = True,
    logy: bool = False,
    name: str = "network",
    color: str = "C0",
    ax: Any | None = None,
):
    """A quantity over a sweep of gains x seeds: every seed as a dot, the median over seeds as
    a line, and the spread (25th-75th percentile band and min-max whiskers).

    NaN entries (diverged runs, failed fits) are left out and counted in the title.

    Args:
        gains: ``(n_gains,)`` the swept values (e.g. ``TrainResult.gains``).
        values: ``(n_gains, n_seeds)`` one value per gain and seed (e.g. fitted ``eta_h``
            reshaped to the grid, or ``TrainResult.final_h``).
        quantity: y-axis label with its unit.
        logx, logy: logarithmic axes.
        ax: optional Axes to draw on.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    g = np.asarray(gains, dtype=float).ravel()
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != g.size:
        raise ValueError(f"values must have shape (n_gains={g.size}, n_seeds), got {v.shape}")
    fig, (a,) = _figure(ax)
    ok = np.isfinite(v)
    for s in range(v.shape[1]):
        a.scatter(g[ok[:, s]], v[ok[:, s], s], s=8, color=color, alpha=0.35, lw=0,
                  label=f"{name}: seeds" if s == 0 else None)
    with np.errstate(all="ignore"):
        has = ok.any(axis=1)
        vv = np.where(ok, v, np.nan)[has]
        med = np.nanmedian(vv, axis=1)
        lo, hi = np.nanpercentile(vv, 25, axis=1), np.nanpercentile(vv, 75, axis=1)
        mn, mx = np.nanmin(vv, axis=1), np.nanmax(vv, axis=1)
    a.fill_between(g[has], lo, hi, color=color, alpha=0.25, lw=0, label="25-75% of seeds")
    a.vlines(g[has], mn, mx, color=color, lw=0.8, alpha=0.6)
    a.plot(g[has], med, "-o", color=color, ms=3, lw=1.5, label=f"{name}: median")
    if logx:
        a.set_xscale("log")
    if logy:
        a.set_yscale("log")
    n_bad = int((~ok).sum())
    label(a, "gain", quantity, f"{v.shape[1]} seeds per gain" + (
        f"; {n_bad} of {v.size} runs without a value" if n_bad else ""))
    a.legend(fontsize=7)
    if ax is None:
        fig.tight_layout()
    return fig


def theory_vs_network(
    predicted: Any,
    measured: Any,
    *,
    gains: Any | None = None,
    quantity: str = "final h",
    unit: str = "a.u.",
    ax: Any | None = None,
):
    """Theory against network, e.g. final representational distances: one dot per run, the
    identity line (black dashed) for a perfect theory.

    Args:
        predicted: the theory's values, e.g. ``unijax.theory.final_distance`` of each run,
            shape ``(n_gains, n_seeds)`` or any shape matching ``measured``.
        measured: the network's values, e.g. ``TrainResult.final_h``, same shape.
        gains: optional ``(n_gains,)``: dots are coloured by gain (rows of the arrays).
        quantity, unit: axis labels.
        ax: optional Axes to draw on.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.shape != m.shape:
        raise ValueError(f"predicted {p.shape} and measured {m.shape} must have the same shape")
    fig, (a,) = _figure(ax)
    if gains is None:
        scatter_vs_theory(a, p, m, quantity=quantity, unit=unit)
    else:
        g = np.asarray(gains, dtype=float).ravel()
        if p.ndim < 1 or p.shape[0] != g.size:
            raise ValueError(f"gains has {g.size} entries, the arrays' first axis {p.shape[:1]}")
        for i, gain in enumerate(g):
            a.scatter(p[i].ravel(), m[i].ravel(), s=10, alpha=0.7, color=f"C{i % 10}",
                      label=f"gain {gain:g}")
        ok = np.isfinite(p) & np.isfinite(m)
        if ok.any():
            lo, hi = float(min(p[ok].min(), m[ok].min())), float(max(p[ok].max(), m[ok].max()))
            a.plot([lo, hi], [lo, hi], label="identity (perfect theory)", **THEORY_STYLE)
        a.set_xlabel(f"theory: {quantity} ({unit})")
        a.set_ylabel(f"network: {quantity} ({unit})")
    a.legend(fontsize=7)
    if ax is None:
        fig.tight_layout()
    return fig
