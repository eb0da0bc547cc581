"""Shared pieces of the structure experiments (E4, E5, E6, E8): distances, rates, MDS."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["RateSettings", "sq_dists", "get_rates", "classical_mds", "offdiag"]


@dataclasses.dataclass(frozen=True)
class RateSettings:
    """How a structure experiment gets the default architecture's ``(eta_h, eta_y)``.

    ``rates_from="auto"`` takes them from a finished E3 or E1 in the same output directory
    (``upstream["rates"]``, supplied by the CLI) and otherwise fits them itself on the
    ``default`` two-point row at the sizes below; ``"fit"`` always fits them itself.
    """

    rates_from: str = "auto"
    width: int | None = None
    max_depth: int | None = None
    epochs: int = 6000
    time_scale: float = 1.0
    seeds: int = 4


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
    if settings.rates_from == "auto" and upstream and upstream.get("rates"):
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


def offdiag(M: Any) -> np.ndarray:
    """Upper-triangle (k=1) entries of the last two axes, flattened: ``(..., n*(n-1)/2)``."""
    M = np.asarray(M)
    n = M.shape[-1]
    iu = np.triu_indices(n, 1)
    return M[..., iu[0], iu[1]]


def rate_settings_check(rs: RateSettings) -> None:
    from unijax.experiments._common import check_choice, check_float, check_int

    check_choice("rates_from", rs.rates_from, ("auto", "fit"))
    check_int("epochs", rs.epochs, 1)
    check_float("time_scale", rs.time_scale)
    check_int("seeds", rs.seeds, 1)
