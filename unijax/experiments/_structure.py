"""Shared pieces of the structure experiments (E4, E5, E6, E8): distances, rates, MDS."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from unijax.experiments import _twopoint as tp
from unijax.experiments._common import check_choice, check_float, check_int

__all__ = ["RateSettings", "QUICK_RATES", "PAPER_CPU_RATES", "TINY_RATES", "sq_dists",
           "get_rates", "classical_mds", "smacof_mds", "offdiag"]


@dataclasses.dataclass(frozen=True)
class RateSettings:
    """How a structure experiment gets the default architecture's ``(eta_h, eta_y)``: the
    ``rates`` block of E4, E5, E6 and E8 (``--set rates.epochs=400``).

    Attributes:
        source: ``"auto"`` takes them from a finished E3 or E1 in the same output directory
            (``upstream["rates"]``, supplied by the CLI) and otherwise fits them on the
            ``default`` two-point row at the sizes below; ``"fit"`` always fits them here.
        width: hidden units of that fit's networks (None: the paper's 500).
        max_depth: cap on their hidden layers (None: the paper's 20).
        epochs: epochs of the two-point runs (>= 300, the epochs a fit samples).
        time_scale: learning-rate multiplier beyond the width rescaling (epochs divided by it).
        seeds: trials fitted; the rates are the mean over those that pass the fit criterion.

    Raises:
        ValueError: a value out of range, naming the dotted key (``rates.epochs``).
    """

    source: str = "auto"
    width: int | None = None
    max_depth: int | None = None
    epochs: int = 6000
    time_scale: float = 1.0
    seeds: int = 10

    def __post_init__(self):
        check_choice("rates.source", self.source, ("auto", "fit"))
        for f in ("width", "max_depth"):
            if getattr(self, f) is not None:
                check_int(f"rates.{f}", getattr(self, f), 1)
        check_int("rates.epochs", self.epochs, tp.FIT_POINTS)
        check_float("rates.time_scale", self.time_scale)
        check_int("rates.seeds", self.seeds, 1)


#: The ``rates`` block of the ``quick`` presets: width 64, four seeds.
QUICK_RATES = RateSettings(width=64, epochs=6000, time_scale=1.0, seeds=4)
#: The ``rates`` block of the ``paper-cpu`` presets, used only when no E1/E3 result is at hand:
#: the paper's sizes, two seeds.
PAPER_CPU_RATES = RateSettings(seeds=2)
#: The ``rates`` block of the ``tiny`` presets: width 16, at most 4 hidden layers, the fit's
#: minimum of epochs, two seeds.
TINY_RATES = RateSettings(width=16, max_depth=4, epochs=tp.FIT_POINTS, time_scale=2.0, seeds=2)


def sq_dists(H: Any) -> np.ndarray:
    """Squared Euclidean distances between the rows: ``(..., n, F) -> (..., n, n)``."""
    H = np.asarray(H, np.float64)
    sq = np.sum(H * H, axis=-1)
    D = sq[..., :, None] + sq[..., None, :] - 2.0 * H @ np.swapaxes(H, -1, -2)
    D = np.maximum(D, 0.0)
    n = H.shape[-2]
    D[..., np.arange(n), np.arange(n)] = 0.0
    return D


def get_rates(settings: RateSettings, *, upstream, key, progress, cache) -> dict:
    """``{"eta_h", "eta_y", "n", "width", "depth", "source"}`` (see :class:`RateSettings`)."""
    if settings.source == "auto" and upstream and upstream.get("rates"):
        r = dict(upstream["rates"])
        r.setdefault("source", "upstream")
        r["source"] = f"default architecture, from {r['source']}"
        return r
    from unijax.experiments import e1_dynamics as e1

    got = cache("rates", lambda: {
        k: np.asarray(v) for k, v in e1.own_default_rates(
            width=settings.width, max_depth=settings.max_depth, epochs=settings.epochs,
            time_scale=settings.time_scale, seeds=settings.seeds, key=key, progress=progress,
            cache=cache,
        ).items()
    })
    return {k: (str(v) if np.asarray(v).dtype.kind in "US" else float(v) if k.startswith("eta")
                else int(v)) for k, v in got.items()}


def classical_mds(D2: Any, dim: int = 3) -> np.ndarray:
    """Classical (Torgerson) MDS of a squared-distance matrix ``(n, n) -> (n, dim)``.

    For Euclidean distances this is PCA of the points: the embedding preserves the distances
    as well as any ``dim``-dimensional linear projection can.
    """
    D2 = np.asarray(D2, np.float64)
    n = D2.shape[0]
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ D2 @ J
    vals, vecs = np.linalg.eigh(B)
    idx = np.argsort(vals)[::-1][:dim]
    return vecs[:, idx] * np.sqrt(np.maximum(vals[idx], 0.0))


def smacof_mds(D2: Any, dim: int = 3) -> np.ndarray:
    """Metric MDS by SMACOF (scikit-learn's, the authors' method) of a squared-distance matrix
    ``(n, n) -> (n, dim)``, started from :func:`classical_mds` (deterministic; the authors
    started from random points)."""
    from sklearn.manifold import smacof

    D2 = np.asarray(D2, np.float64)
    start = classical_mds(D2, dim)
    X, _ = smacof(np.sqrt(np.maximum(D2, 0.0)), metric=True, n_components=dim, init=start,
                  n_init=1, max_iter=300, normalized_stress=False)
    return X


def offdiag(M: Any) -> np.ndarray:
    """Upper-triangle (k=1) entries of the last two axes, flattened: ``(..., n*(n-1)/2)``."""
    M = np.asarray(M)
    n = M.shape[-1]
    iu = np.triu_indices(n, 1)
    return M[..., iu[0], iu[1]]
