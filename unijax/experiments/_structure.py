"""Shared pieces of the structure experiments (E4, E5, E6, E8): the ``rates`` block and the
rates, training that records every point's representations, the theory's predicted distances,
distances, MDS."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from unijax.experiments import _rows
from unijax.experiments import _twopoint as tp
from unijax.experiments._common import check_choice, check_int

__all__ = ["RateSettings", "QUICK_RATES", "PAPER_CPU_RATES", "TINY_RATES", "sq_dists",
           "get_rates", "train_structure", "predict", "classical_mds", "smacof_mds", "offdiag"]


@dataclasses.dataclass(frozen=True)
class RateSettings(tp.RunSizes):
    """How a structure experiment gets the default architecture's ``(eta_h, eta_y)``: the
    ``rates`` block of E4, E5, E6 and E8 (``--set rates.epochs=400``): the sizes of the
    ``default`` row's runs (:class:`unijax.experiments._twopoint.RunSizes`, the size block's
    base: ``rates.width``, ``rates.max_depth``, ``rates.epochs``, ``rates.time_scale``), where
    the rates come from and how many trials give them.

    Attributes:
        source: ``"auto"`` takes them from a finished E3 or E1 in the same output directory
            (``upstream["rates"]``, supplied by the CLI) and otherwise fits them on the
            ``default`` two-point row at this block's sizes; ``"fit"`` always fits them here.
        seeds: trials fitted; the rates are the mean over those that pass the fit criterion.

    Raises:
        ValueError: a value out of range, naming the dotted key (``rates.epochs``).
    """

    KEY: ClassVar[str] = "rates"

    source: str = "auto"
    seeds: int = 10

    def __post_init__(self):
        check_choice("rates.source", self.source, ("auto", "fit"))
        super().__post_init__()
        check_int("rates.seeds", self.seeds, 1)


#: The ``rates`` block of the ``quick`` presets: width 64, four seeds.
QUICK_RATES = RateSettings(width=64, epochs=6000, time_scale=1.0, seeds=4)
#: The ``rates`` block of the ``paper-cpu`` presets, used only when no E1/E3 result is at hand:
#: the paper's sizes, two seeds.
PAPER_CPU_RATES = RateSettings(seeds=2)
#: The ``rates`` block of the ``tiny`` presets, used when no E1/E3 result is at hand: the
#: fit's minimum of epochs, four seeds, at width 64 and 10 hidden layers. At the tiny networks'
#: own sizes (width 16, 4 hidden layers) no default-row fit passes the quality criterion (0 of
#: 4: poor fits, rates not identified, at 300 or 600 epochs), so an experiment run alone would
#: predict nothing; at width 64 and depth 10, 4 of 4 pass (seconds of training).
TINY_RATES = RateSettings(width=64, max_depth=10, epochs=tp.FIT_POINTS, time_scale=2.0, seeds=4)


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
    got = cache("rates", lambda: {
        k: np.asarray(v) for k, v in _rows.own_default_rates(
            settings.sizes(), seeds=settings.seeds, key=key, progress=progress, cache=cache,
        ).items()
    })
    return {k: (str(v) if np.asarray(v).dtype.kind in "US" else float(v) if k.startswith("eta")
                else int(v)) for k, v in got.items()}


def train_structure(cfgs, dataset, *, seeds, key, progress, cache, prefix="train"):
    """Train each config on ``dataset`` recording all points' initial/final representations."""
    import jax

    from unijax import train

    out = []
    for i, cfg in enumerate(progress(cfgs, desc=f"{prefix}: rows")):

        def compute(cfg=cfg, i=i):
            r = train.train(cfg, seeds=seeds, key=jax.random.fold_in(key, i), data=dataset,
                            record_points=dataset.n_points, pair=False)
            return {
                "H0": np.asarray(r.initial_reps)[0],
                "H": np.asarray(r.final_reps)[0],
                "F0": np.asarray(r.initial_outputs)[0],
                "F": np.asarray(r.final_outputs)[0],
                "final_loss": np.asarray(r.final_loss)[0],
                "diverged": np.asarray(r.diverged)[0],
            }

        out.append(cache(f"{prefix}-{cfg.name}", compute))
    return out


def predict(dataset, H0, F0, rates) -> np.ndarray:
    """Predicted final squared distances per seed: ``(S, n, n)``."""
    from unijax import theory

    X = np.asarray(dataset.x, np.float64)
    Y = np.asarray(dataset.y, np.float64)
    out = []
    for s in range(H0.shape[0]):
        if not (np.all(np.isfinite(H0[s])) and np.isfinite(rates["eta_h"])):
            out.append(np.full((X.shape[0],) * 2, np.nan))
            continue
        out.append(np.asarray(theory.pairwise_final_distance(
            X, Y, np.asarray(H0[s], np.float64), np.asarray(F0[s], np.float64),
            eta_h=rates["eta_h"], eta_y=rates["eta_y"])))
    return np.stack(out)


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
