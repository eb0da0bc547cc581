"""Shared machinery of the two-point experiments (E1, E2, E3, E7, E8) and of every ODE fit.

* :class:`Sizes`: the ``size`` block of E1, E2, E3 and E7 (``--set size.width=64``): network
  and run sizes, validated once; its base :class:`RunSizes` is also the ``rates`` block's.
* :func:`row_config`: a Table 1/2 row at reduced sizes, the learning rate rescaled so that the
  continuous-time dynamics stay comparable (see the docstring).
* :func:`fit_trajectories`: ``unijax.fit.fit_rates`` on many trials, always in the same
  compiled shape (``FIT_POINTS`` sampled epochs; ``fit_rates`` runs every batch as the same
  chunks of trials), so that a whole ``unijax run all`` compiles the fitter once; trials that
  diverged (NaN records) or have an invalid start (``h0 <= 0``) are never fitted and are
  reported as excluded.
* :func:`usable_rates`: mean rates over the fits that pass the quality criterion only
  (``unijax.fit.FitStatus.OK``), with how many were used and, per reason, how many excluded:
  the only way rates fitted here are passed on (E1/E3 to E4-E8, an experiment's own fits).
* :func:`fit_loss`: ``unijax.fit.fit_eta_mean`` on the loss curves, given the fitted ODE
  trajectories (docs/theory.md section 3).
* :func:`plateau_index`: the plateau measure of E2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from unijax import configs
from unijax.configs import TrainConfig
from unijax.experiments._common import check_float, check_int

__all__ = [
    "FIT_POINTS",
    "RunSizes",
    "Sizes",
    "check_sizes",
    "TABLE1",
    "row_config",
    "sample_epochs",
    "fit_trajectories",
    "usable_rates",
    "REF_SLACK",
    "no_worse_than_authors",
    "as_authors",
    "usable",
    "exclusion_text",
    "fit_loss",
    "distance_loss",
    "plateau_index",
    "mean_output_error0",
]

#: Epochs sampled per fitted trajectory (one compiled fitter for every fit of a run).
FIT_POINTS = 300

#: "No worse than the authors' method": the unexplained variance summed over h, y, w,
#: ``sum (1 - R^2)``, at most this factor times that of the authors' fit (the two optimizers
#: weight the epochs differently, which moves it by a few per cent either way on the same
#: trajectory).
REF_SLACK = 1.1

#: Table 1 row names (configs.names() order), E1/E2/E3.
TABLE1: tuple[str, ...] = (
    "default",
    "convolution",
    "skip_connections",
    "shallow",
    "narrow",
    "dropout",
    "linear",
    "relu",
    "elu",
    "tanh",
    "swish",
    "low_initial_weights",
    "intermediate_initial_weights",
    "high_initial_weights",
    "very_high_initial_weights",
)


def row_config(
    name: str,
    *,
    width: int | None = None,
    narrow_width: int | None = None,
    conv_width: int | None = None,
    epochs: int | None = None,
    time_scale: float = 1.0,
    **overrides: Any,
) -> TrainConfig:
    """A paper row (``configs.get(name)``) at other sizes, with a consistent learning rate.

    The learning rate is multiplied by ``(paper width / width) * time_scale``: in the standard
    (Xavier) parameterization the neural tangent kernel, hence every effective rate, grows in
    proportion to the width, so dividing the width by ``k`` and multiplying the learning rate by
    ``k`` keeps the dynamics per epoch; ``time_scale`` then compresses the run into fewer epochs
    (lr x s, epochs / s, the same continuous-time horizon, as the authors' own settings do).

    Args:
        name: a row name of :mod:`unijax.configs`.
        width: units of every hidden layer (None: the paper's); ``narrow_width`` replaces it for
            the ``narrow`` row and ``conv_width`` for ``convolution``.
        epochs: None: the paper's epochs divided by ``time_scale``.
        time_scale: lr multiplier beyond the width rescaling (>= some 1s typically).
        **overrides: any other :class:`~unijax.configs.TrainConfig` field (e.g. ``optimizer``).
    """
    base = configs.get(name)
    if name == "narrow" and narrow_width is not None:
        w = narrow_width
    elif name == "convolution" and conv_width is not None:
        w = conv_width
    else:
        w = width if width is not None else base.width
    lr = base.lr * (base.width / w) * time_scale
    if epochs is None:
        epochs = max(1, int(round(base.epochs / time_scale)))
    return configs.get(name, width=int(w), lr=float(lr), epochs=int(epochs), **overrides)


@dataclasses.dataclass(frozen=True)
class RunSizes:
    """Network and run sizes of one kind of two-point row: the sizes every size block has
    (:class:`Sizes`, the ``size`` block; ``_structure.RateSettings``, the ``rates`` block).
    None means the paper's value (Table 1); the learning rate follows the width
    (:func:`row_config`).

    Attributes:
        width: units per hidden layer (None: the row's own, 500 but for ``narrow``).
        max_depth: cap on the hidden layers (None: the paper's depths, up to 20).
        epochs: training epochs (>= :data:`FIT_POINTS`, the epochs a fit samples).
        time_scale: learning-rate multiplier beyond the width rescaling (> 0; 1: the table's).

    Raises:
        ValueError: a value out of range, naming the dotted key (``size.width``,
            ``rates.width``: :attr:`KEY`).
    """

    #: The block's dotted key in a config, named by its validation messages.
    KEY: ClassVar[str] = "size"

    width: int | None = None
    max_depth: int | None = None
    epochs: int = 6000
    time_scale: float = 1.0

    def __post_init__(self):
        for f in ("width", "max_depth"):
            if getattr(self, f) is not None:
                check_int(f"{self.KEY}.{f}", getattr(self, f), 1)
        # Every two-point experiment fits its runs, which needs FIT_POINTS sampled epochs.
        check_int(f"{self.KEY}.epochs", self.epochs, FIT_POINTS)
        check_float(f"{self.KEY}.time_scale", self.time_scale)

    def sizes(self) -> Sizes:
        """These sizes as a :class:`Sizes` block (its other rows' sizes unset)."""
        return Sizes(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RunSizes)})

    def depth(self, name: str) -> int:
        """Hidden layers of row ``name`` at these sizes: the paper's, at most ``max_depth``."""
        depth = configs.get(name).depth
        return depth if self.max_depth is None else min(depth, self.max_depth)

    def row_config(self, name: str, **overrides: Any) -> TrainConfig:
        """:func:`row_config` of row ``name`` at these sizes, ``depth`` from :meth:`depth`
        unless given in ``overrides`` (any other :class:`~unijax.configs.TrainConfig` field)."""
        overrides.setdefault("depth", self.depth(name))
        return row_config(name, width=self.width, epochs=self.epochs,
                          time_scale=self.time_scale, **overrides)


@dataclasses.dataclass(frozen=True)
class Sizes(RunSizes):
    """Network and run sizes of the two-point rows: the ``size`` block of E1, E2, E3 and E7
    (``--set size.width=64``): :class:`RunSizes` (``width``, ``max_depth``, ``epochs``,
    ``time_scale``, for every row) and the sizes of two rows of their own. None means the
    paper's value (Table 1).

    Attributes:
        narrow_width: units per hidden layer of the ``narrow`` row (None: ``width`` if set,
            else the paper's 50).
        conv_width: hidden width of the ``convolution`` row (None: ``width`` if set, else the
            paper's 500).
        conv_depth: hidden layers of the ``convolution`` row (None: the paper's 10).

    Raises:
        ValueError: a value out of range, naming the dotted key (``size.width``).
    """

    narrow_width: int | None = None
    conv_width: int | None = None
    conv_depth: int | None = None

    def __post_init__(self):
        super().__post_init__()
        for f in ("narrow_width", "conv_width", "conv_depth"):
            if getattr(self, f) is not None:
                check_int(f"{self.KEY}.{f}", getattr(self, f), 1)

    def depth(self, name: str) -> int:
        """Hidden layers of row ``name`` at these sizes: the paper's, ``conv_depth`` for the
        ``convolution`` row, at most ``max_depth``."""
        depth = configs.get(name).depth
        if name == "convolution" and self.conv_depth is not None:
            depth = self.conv_depth
        if self.max_depth is not None:
            depth = min(depth, self.max_depth)
        return depth

    def row_config(self, name: str, **overrides: Any) -> TrainConfig:
        overrides.setdefault("depth", self.depth(name))
        return row_config(name, width=self.width, narrow_width=self.narrow_width,
                          conv_width=self.conv_width, epochs=self.epochs,
                          time_scale=self.time_scale, **overrides)


def check_sizes(value: Any) -> None:
    """Raise ValueError naming ``size`` unless ``value`` is a :class:`Sizes` block (a config
    built in Python with, say, a dict there would otherwise fail later, far from the cause)."""
    if not isinstance(value, Sizes):
        raise ValueError(f"size={value!r} is invalid: must be a unijax.experiments._twopoint."
                         "Sizes block, e.g. Sizes(width=64)")


def check_run(config: Any) -> None:
    """The checks of the fields every two-point config has (``size``, ``seeds``, ``seed``,
    ``dx2``, ``dy2``), in one place for E1's rows (and E3, E7, E8 through them) and E2."""
    check_sizes(config.size)
    check_int("seeds", config.seeds, 1)
    check_int("seed", config.seed, 0)
    check_float("dx2", config.dx2)
    check_float("dy2", config.dy2)


def sample_epochs(n_epochs: int, n_points: int = FIT_POINTS) -> np.ndarray:
    """``n_points`` distinct integer epochs from ``0`` to ``n_epochs - 1``, denser early.

    Half are evenly spaced, half log-spaced, so that the fast early phase (the jump after a
    plateau) is resolved; needs ``n_epochs >= n_points``.
    """
    if n_epochs < n_points:
        raise ValueError(
            f"runs to be fitted need >= {n_points} epochs (FIT_POINTS), got {n_epochs}"
        )
    lin = np.round(np.linspace(0, n_epochs - 1, n_points)).astype(int)
    log = np.round(np.geomspace(1, n_epochs - 1, n_points)).astype(int)
    pool = np.unique(np.concatenate([[0], lin, log]))
    # Keep n_points of them, evenly by rank (always including 0 and the last epoch).
    pick = np.unique(np.round(np.linspace(0, pool.size - 1, n_points)).astype(int))
    out = pool[pick]
    if out.size < n_points:  # fill from the unused linear grid
        extra = np.setdiff1d(np.arange(n_epochs), out)[: n_points - out.size]
        out = np.sort(np.concatenate([out, extra]))
    return out.astype(int)


def _valid_trial(z: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(z)) and z[0, 0] > 0 and z[0, 1] >= 0)


def fit_trajectories(
    Z: np.ndarray,
    *,
    dx2: Any,
    dy2: Any,
    epochs: np.ndarray | None = None,
    progress=None,
    desc: str = "fit",
    fit_initial: bool = False,
) -> dict[str, np.ndarray]:
    """Fit ``(eta_h, eta_y)`` to every trajectory of ``Z`` (docs/theory.md section 11).

    Args:
        Z: measured ``(h, y, w)``, shape ``(n_trials, n_epochs, 3)`` (any float dtype; fitted
            in float64). NaN rows (diverged trials) are allowed: those trials are not fitted.
        dx2, dy2: squared input/output distances, scalars or ``(n_trials,)``.
        epochs: epochs to fit on (default :func:`sample_epochs` of ``n_epochs``).
        fit_initial: also fit the ODE's starting state instead of starting it at the measured
            first record (the paper's method), see :func:`unijax.fit.fit_rates`.

    Returns:
        ``eta_h, eta_y, stderr_eta_h, stderr_eta_y: (n,)`` (1/epoch, NaN where not fitted or
        the optimizer did not finish), ``r2: (n, 3)`` for h, y, w (reported for poor fits
        too), ``status: (n,)`` (``unijax.fit.FitStatus`` code, ``NOT_FITTED`` for trials
        not fitted), ``usable: (n,)`` (``status == OK``: the only rates to pass on),
        ``converged: (n,)`` (``RateFit.converged``: the optimizer finished),
        ``identified: (n,)``, ``good_fit: (n,)`` (R^2 >= ``unijax.fit.MIN_R2``),
        ``fit_ok: (n,)`` (a fitted curve exists, with finite R^2: the best point the
        optimizer reached, whether or not it finished there, as the authors' BFGS returns
        whatever it reaches; shown and counted in R^2 statistics, good or poor, never used
        for rates unless ``usable``),
        ``fitted: (n,)`` (the trial was valid and went to the fitter),
        ``z_fit: (n, FIT_POINTS, 3)`` the fitted trajectories, ``epochs: (FIT_POINTS,)``.
    """
    from unijax import fit

    Z = np.asarray(Z, dtype=np.float64)
    n, T = Z.shape[:2]
    dx2 = np.broadcast_to(np.asarray(dx2, np.float64), (n,)).copy()
    dy2 = np.broadcast_to(np.asarray(dy2, np.float64), (n,)).copy()
    ep = sample_epochs(T) if epochs is None else np.asarray(epochs, int)
    Zs = Z[:, ep]
    valid = np.array([_valid_trial(Zs[i]) for i in range(n)])
    m = ep.size
    out = {
        "eta_h": np.full(n, np.nan),
        "eta_y": np.full(n, np.nan),
        "stderr_eta_h": np.full(n, np.nan),
        "stderr_eta_y": np.full(n, np.nan),
        "r2": np.full((n, 3), np.nan),
        "status": np.full(n, fit.FitStatus.NOT_FITTED, np.int32),
        "usable": np.zeros(n, bool),
        "converged": np.zeros(n, bool),
        "fit_ok": np.zeros(n, bool),
        "identified": np.zeros(n, bool),
        "good_fit": np.zeros(n, bool),
        "fitted": valid.copy(),
        "z_fit": np.full((n, m, 3), np.nan),
        "epochs": ep.astype(np.int64),
    }
    if not valid.any():
        return out
    # One call over all trials, invalid ones masked out (fit_rates runs every batch in the
    # same compiled chunks, so a whole run compiles the fitter once).
    for _ in [None] if progress is None else progress([None], desc=desc):
        res = fit.fit_rates(ep.astype(np.float64), Zs, dx2=dx2, dy2=dy2,
                            fit_initial=fit_initial, where=valid)
    for key in ("eta_h", "eta_y", "stderr_eta_h", "stderr_eta_y", "r2", "status", "converged",
                "identified", "good_fit", "z_fit"):
        out[key] = np.asarray(getattr(res, key)).astype(out[key].dtype)
    out["usable"] = np.asarray(res.usable)
    r2_ok = np.all(np.isfinite(out["r2"]), axis=-1)
    out["fit_ok"] = np.asarray(res.ode_ok) & r2_ok
    return out


def _reason(code: int) -> str:
    from unijax import fit

    return fit.FitStatus(code).name.lower()


def no_worse_than_authors(r2: Any, r2_authors: Any, min_r2: float) -> np.ndarray:
    """Whether a fit passes ``min_r2`` for each of h, y, w, or else fits no worse overall than
    the authors' method: ``sum_v (1 - R^2_v) <= REF_SLACK sum_v (1 - R^2_authors,v)``.

    Overall, not variable by variable: both methods minimize one SSE of h, y and w together,
    and on the same trajectory they trade a little of one variable for another (seen: h 0.944
    and y 0.995 against the authors' 0.950 and 0.990), which is no worse a fit.

    Args:
        r2, r2_authors: ``(..., 3)`` R^2 of h, y, w of unijax's and of the authors' fit of the
            same trajectories, scored on the same epochs (NaN: not available).

    Returns:
        ``(...)`` bool (False where any of unijax's R^2 is NaN, or where one is below
        ``min_r2`` and the reference is not finite).
    """
    r2 = np.asarray(r2, float)
    ref = np.broadcast_to(np.asarray(r2_authors, float), r2.shape)
    with np.errstate(invalid="ignore"):
        finite = np.all(np.isfinite(r2), axis=-1)
        above = np.all(r2 >= min_r2, axis=-1)
        as_good = np.all(np.isfinite(ref), axis=-1) & (
            np.sum(1.0 - r2, axis=-1) <= REF_SLACK * np.sum(1.0 - ref, axis=-1))
    return finite & (above | as_good)


def as_authors(status: Any, r2: Any, r2_authors: Any) -> np.ndarray:
    """Whether each trial is a ``POOR_FIT`` that the authors' own method fits no better
    (:func:`no_worse_than_authors`): the theory fits that trajectory as well as the paper's
    pipeline could, so its rates are used (:func:`usable`).

    Args:
        status: ``(...)`` ``unijax.fit.FitStatus`` codes from :func:`fit_trajectories`.
        r2, r2_authors: ``(..., 3)``, as :func:`no_worse_than_authors` (``r2_authors`` may be
            a NaN scalar: no reference was run, and no trial is marked).

    Returns:
        ``(...)`` bool, the shape of ``status``.
    """
    status = np.asarray(status)
    ref = np.asarray(r2_authors, float)
    if ref.ndim == 0:
        return np.zeros(status.shape, bool)
    from unijax import fit

    poor = status == int(fit.FitStatus.POOR_FIT)
    return poor & no_worse_than_authors(r2, ref, fit.MIN_R2)


def usable(status: Any, as_authors: Any = False) -> np.ndarray:
    """Whether each fit's rates may be used: ``status`` ``OK`` (0), or the fit is no worse
    than the authors' method (``as_authors``, :func:`as_authors`, broadcast to ``status``)."""
    # 0: unijax.fit.FitStatus.OK (unijax.fit, hence Diffrax, loaded only when fitting).
    return (np.asarray(status) == 0) | np.asarray(as_authors, bool)


def usable_rates(eta_h: Any, eta_y: Any, status: Any, as_authors: Any = False
                 ) -> dict[str, Any]:
    """Mean rates over the fits that pass the quality criterion, with the accounting.

    Only trials with ``status == unijax.fit.FitStatus.OK`` (the optimizer finished, both
    rates identified, R^2 of each of h, y, w >= ``unijax.fit.MIN_R2``) or ``as_authors``
    (finished and identified, and no worse than the authors' method on that trajectory,
    :func:`as_authors`) are averaged; every other trial is counted under its reason and
    never averaged in.

    Args:
        eta_h, eta_y: fitted rates (1/epoch), any shape; status: the same shape,
            ``unijax.fit.FitStatus`` codes from :func:`fit_trajectories`.
        as_authors: bool, broadcast to ``status`` (:func:`as_authors`; False: no reference).

    Returns:
        ``{"eta_h", "eta_y"}`` (means, NaN when no fit is usable), ``"n"`` (fits used),
        ``"n_as_authors"`` (of those, fits below ``MIN_R2`` used because the authors' method
        does no better), ``"n_excluded"``, ``"excluded"`` (``{reason: count}``, reasons
        ``poor_fit``, ``not_identified``, ``optimizer_failed``, ``step_budget``,
        ``ode_failed``, ``not_fitted``).
    """
    st = np.asarray(status).ravel()
    marked = np.broadcast_to(np.asarray(as_authors, bool), np.shape(status)).ravel()
    use = usable(st, marked)
    h, y = np.asarray(eta_h, float).ravel(), np.asarray(eta_y, float).ravel()
    excluded: dict[str, int] = {}
    for code in sorted(set(st[~use].tolist())):
        excluded[_reason(int(code))] = int(np.sum((st == code) & ~use))
    return {
        "eta_h": float(np.mean(h[use])) if use.any() else float("nan"),
        "eta_y": float(np.mean(y[use])) if use.any() else float("nan"),
        "n": int(use.sum()),
        "n_as_authors": int(np.sum(marked & (st != 0))),
        "n_excluded": int((~use).sum()),
        "excluded": excluded,
    }


def exclusion_text(rates: Mapping[str, Any]) -> str:
    """``"3 of 4 fits used (excluded: 1 poor_fit)"`` from :func:`usable_rates`' dict."""
    n, ex = int(rates["n"]), int(rates["n_excluded"])
    reasons = rates.get("excluded") or {}
    why = ", ".join(f"{v} {k}" for k, v in reasons.items())
    k = int(rates.get("n_as_authors", 0))
    used = f"{n} of {n + ex} fits used" + (
        f" ({k} below the R^2 criterion but no worse than the authors' method)" if k else "")
    return used + (f" (excluded: {why})" if ex else "")


def mean_output_error0(loss0: Any, z0: Any, dy2: Any) -> np.ndarray:
    """``m0 = ||ybar - gbar(0)||^2`` from the initial loss and ``(h0, y0, w0)``.

    docs/theory.md section 3: ``L = 1/2 m0 + 1/4 (w + 1/2 (dy2 - y))`` at ``t = 0``; clipped at 0.
    """
    z0 = np.asarray(z0, np.float64)
    ld = 0.25 * (z0[..., 2] + 0.5 * (np.asarray(dy2) - z0[..., 1]))
    return np.maximum(2.0 * (np.asarray(loss0, np.float64) - ld), 0.0)


def distance_loss(Z: Any, dy2: Any) -> np.ndarray:
    """The distance part of the loss, ``1/4 (w + 1/2 (dy2 - y)) = 1/8 ||dy - dyhat||^2``."""
    Z = np.asarray(Z, np.float64)
    with np.errstate(invalid="ignore"):  # NaN records of diverged trials stay NaN
        return 0.25 * (Z[..., 2] + 0.5 * (np.asarray(dy2)[..., None] - Z[..., 1]))


def fit_loss(
    loss: np.ndarray,
    z_fit: np.ndarray,
    *,
    epochs: np.ndarray,
    dy2: Any,
    m0: Any,
    use: np.ndarray,
) -> dict[str, np.ndarray]:
    """Fit ``eta_mean`` to loss curves given the fitted ``(h, y, w)`` (docs/theory.md section 3).

    Args:
        loss: measured loss, ``(n, n_epochs)``.
        z_fit: fitted ODE trajectories at ``epochs``, ``(n, FIT_POINTS, 3)``.
        epochs: the sampled epochs, ``(FIT_POINTS,)``.
        dy2, m0: per trial (``(n,)`` or scalars).
        use: ``(n,)`` bool, trials to fit (those whose rate fit converged).

    Returns:
        ``eta_mean (n,)``, ``r2_loss (n,)``, ``loss_converged (n,)``, ``loss_fit (n, P)``; NaN /
        False where not fitted.
    """
    from unijax import fit

    loss = np.asarray(loss, np.float64)[:, epochs]
    n = loss.shape[0]
    fitted = (np.asarray(use) & np.all(np.isfinite(loss), axis=1)
              & np.all(np.isfinite(z_fit), axis=(1, 2)))
    res = fit.fit_eta_mean(epochs.astype(np.float64), loss, z_fit,
                           dy2=np.broadcast_to(np.asarray(dy2, np.float64), (n,)),
                           m0=np.broadcast_to(np.asarray(m0, np.float64), (n,)), where=fitted)
    return {"eta_mean": np.asarray(res.eta_mean), "r2_loss": np.asarray(res.r2),
            "loss_converged": np.asarray(res.converged), "loss_fit": np.asarray(res.loss_fit)}


def plateau_index(curve: np.ndarray) -> float:
    """Plateau measure of a decaying curve: ``t_half / (t_quarter - t_half)``.

    ``t_half`` (``t_quarter``) is the first epoch at which the curve falls below 1/2 (1/4) of
    its initial value. A pure exponential decay gives exactly 1; a plateau followed by a drop
    gives a large number (the plateau lasts many decay times). NaN if the curve never falls
    below a quarter of its start.
    """
    c = np.asarray(curve, dtype=float)
    if c.size < 2 or not np.isfinite(c[0]) or c[0] <= 0:
        return float("nan")
    below_half = np.flatnonzero(c <= 0.5 * c[0])
    below_q = np.flatnonzero(c <= 0.25 * c[0])
    if below_half.size == 0 or below_q.size == 0:
        return float("nan")
    th, tq = below_half[0], below_q[0]
    # Linear interpolation between epochs for sub-epoch resolution.
    def cross(level, k):
        if k == 0:
            return 0.0
        a, b = c[k - 1], c[k]
        return (k - 1) + (a - level) / (a - b) if a != b else float(k)

    th_f, tq_f = cross(0.5 * c[0], th), cross(0.25 * c[0], tq)
    if tq_f <= th_f:
        return float("nan")
    return float(th_f / (tq_f - th_f))


def per_row_spread(values: np.ndarray, use: np.ndarray) -> Mapping[str, Any]:
    """:func:`unijax.experiments._common.spread` of ``values[use]``."""
    from unijax.experiments._common import spread

    v = np.asarray(values, float)
    return spread(np.where(np.asarray(use), v, np.nan))


def finite_or_nan(x: Any) -> float:
    x = float(x)
    return x if math.isfinite(x) else float("nan")


def names_array(names: Sequence[str]) -> np.ndarray:
    return np.asarray(list(names), dtype=str)
