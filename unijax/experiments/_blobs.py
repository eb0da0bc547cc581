"""The blob structure's measures, shared by E5 (blobs with SGD) and E8 (blobs with Adam).

A collapse index is the fraction of the squared distances' spread that one factor explains
(:func:`explained_fraction`); :func:`indices` gives it per context (the feature that context
reads) and along the target (the one-line index). :data:`COLLAPSED` and :data:`MARGIN` are the
pass thresholds both experiments judge them by.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BLOB_ROWS", "COLLAPSED", "MARGIN", "explained_fraction", "indices"]

#: The blob rows of Table 2 (gains 0.275, 0.5, 2.0).
BLOB_ROWS = ("blobs_very_low_weights", "blobs_low_weights", "blobs_high_weights")
#: Pass: collapse index of the smallest gain above this, and above the largest gain's by MARGIN.
COLLAPSED = 0.8
MARGIN = 0.15


def explained_fraction(D: np.ndarray, groups: np.ndarray, mask: np.ndarray) -> float:
    """``1 - SS_within / SS_total`` of the points ``mask`` grouped by ``groups`` (see module)."""
    idx = np.flatnonzero(mask)
    if idx.size < 2:
        return float("nan")
    g = np.asarray(groups)[idx]
    Dm = D[np.ix_(idx, idx)]
    total = Dm.sum() / (2 * idx.size)
    if not np.isfinite(total) or total <= 0:
        return float("nan")
    within = 0.0
    for u in np.unique(g):
        sel = g == u
        within += Dm[np.ix_(sel, sel)].sum() / (2 * sel.sum())
    return float(1.0 - within / total)


def indices(D: np.ndarray, factors: np.ndarray, targets: np.ndarray) -> tuple[float, float, float]:
    """``(index context 0, index context 1, one-line index)`` of a squared-distance matrix."""
    ctx = factors[:, 0]
    c0 = explained_fraction(D, factors[:, 1], ctx == 0)
    c1 = explained_fraction(D, factors[:, 2], ctx == 1)
    one = explained_fraction(D, np.round(targets, 9), np.ones(ctx.size, bool))
    return c0, c1, one
