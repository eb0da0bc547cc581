"""The two-point rows: Table 1 networks trained on two points, fitted, referenced, their rates.

Shared by every experiment that trains Table 1 rows on the two points (E1, E2, E3, E8's
dynamics part) and by the structure experiments' own default rates (E4-E8 when no E1/E3 result
is at hand); no experiment module imports another.

* :class:`RowsConfig`: which rows, at which sizes, how trained and fitted (E1's ``Config``).
* :func:`row_configs`, :func:`train_rows`, :func:`fit_rows`: the rows' TrainConfigs, their
  training (one cached chunk a row) and the ODE and loss fits of every trial.
* :func:`reference_needed`, :func:`reference_fits`: the authors' fitting method
  (:mod:`unijax.authors`), run only on the trials whose verdict or status can depend on it.
* :func:`run_rows` -> :class:`RowsResult`: all of the above.
* :func:`fit_status`, :func:`as_authors`, :func:`counts`, :func:`default_rates`: reading a
  :class:`RowsResult`.
* :func:`own_default_rates`: the ``default`` row's usable rates fitted here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from unijax import configs, nets
from unijax.experiments import _common as cm
from unijax.experiments import _twopoint as tp

__all__ = [
    "AUTHORS_DROPOUT_LAYER",
    "RowsConfig",
    "RowsResult",
    "departures",
    "row_configs",
    "train_rows",
    "fit_rows",
    "reference_needed",
    "reference_fits",
    "run_rows",
    "fit_status",
    "as_authors",
    "counts",
    "default_rates",
    "fit_min_r2",
    "own_default_rates",
]

#: The hidden layer of the dropout network that the authors' code observed (of 10).
AUTHORS_DROPOUT_LAYER = 2


@dataclasses.dataclass(frozen=True)
class RowsConfig:
    """Two-point rows to train and fit (E1's ``Config``; E2, E3 and E8 build one).

    Attributes:
        rows: Table 1 rows (``unijax.configs`` names).
        size: network and run sizes, the ``size`` block (:class:`unijax.experiments.
            _twopoint.Sizes`: ``size.width``, ``size.epochs``, ...; paper: 6000 epochs).
        seeds: trials per row; seed: base random seed.
        dx2, dy2: squared input and target distances of the two points.
        fit_initial: also fit the ODE's starting state (False: start it at the measured
            epoch-0 state, the paper's method and docs/theory.md section 11).
        dropout_layer: observed hidden layer of the ``dropout`` row (None: halfway, the text;
            2: the layer the authors' code observed).
        conv_layout: the ``convolution`` row's layout, ``"unijax"`` (the text's L + 1 maps:
            L - 1 convolutions) or ``"authors"`` (the authors' code: L + 1 convolutions, 11 at
            the paper's L = 10; observed at hidden layer L // 2 of L + 2), see ``unijax.nets``.
        optimizer, lr: every row's optimizer (``"sgd"``, the paper's, or ``"adam"``: E8) and
            learning rate (None: the table's, rescaled for ``size.width`` and
            ``size.time_scale``).
        reference: also fit with the authors' method (:mod:`unijax.authors`, SciPy; about a
            second per trial on one core) the trials whose verdict or rate status can depend
            on it (:func:`reference_needed`): every fitted trial of a row below the pass
            threshold, and every fit below the R^2 criterion.
    """

    rows: tuple[str, ...] = tp.TABLE1
    size: tp.Sizes = tp.Sizes()
    seeds: int = 10
    seed: int = 0
    dx2: float = 1.0
    dy2: float = 0.5
    optimizer: str = "sgd"
    lr: float | None = None
    fit_initial: bool = False
    dropout_layer: int | None = None
    conv_layout: str = "unijax"
    reference: bool = True

    def __post_init__(self):
        if self.conv_layout not in nets.CONV_LAYOUTS:
            raise ValueError(f"conv_layout={self.conv_layout!r} is invalid; valid choices: "
                             f"{', '.join(nets.CONV_LAYOUTS)}")
        cm.check_choices("rows", self.rows, tp.TABLE1)
        if self.dropout_layer is not None:
            cm.check_int("dropout_layer", self.dropout_layer, 0)
        for f in ("fit_initial", "reference"):
            cm.check_bool(f, getattr(self, f))
        tp.check_run(self)
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer={self.optimizer!r} is invalid; valid choices: sgd, adam")
        if self.lr is not None:
            cm.check_float("lr", self.lr)


@dataclasses.dataclass(frozen=True)
class RowsResult:
    """Two-point rows result (R rows, S seeds, T epochs, P fitted epochs); time in epochs.

    Attributes:
        rows: ``(R,)`` row names; lr, width, depth: ``(R,)``; dx2, dy2: scalars.
        loss: ``(R, S, T)`` training loss; hyw: ``(R, S, T, 3)`` measured (h, y, w).
        diverged: ``(R, S)``.
        epochs_fit: ``(P,)`` epochs used by the fits.
        eta_h, eta_y: ``(R, S)`` fitted rates (1/epoch, NaN if not fitted).
        fit_ok: ``(R, S)`` a fitted curve exists (the best point the optimizer reached,
            finished or not): its curve and R^2 are shown and counted in the R^2
            statistics, good or poor;
        converged: ``(R, S)`` fit_ok and both rates individually identified (relative
            standard error < 0.1); reported as a count.
        fit_status: ``(R, S)`` ``unijax.fit.FitStatus`` code (-1: not fitted); only
            ``OK`` fits (finished, identified, R^2 >= ``unijax.fit.MIN_R2``) give rates, and
            the ``POOR_FIT`` ones the authors' method fits no better (:func:`as_authors`).
        r2: ``(R, S, 3)`` R^2 of h, y, w; z_fit: ``(R, S, P, 3)`` the fitted ODE trajectories.
        eta_mean, r2_loss: ``(R, S)``; loss_fit: ``(R, S, P)``; loss_converged: ``(R, S)``.
        fit_initial: ``()`` bool, whether the ODE's starting state was fitted too.
        layer: ``(R,)`` the observed hidden layer of each row; departures: ``(k,)`` texts
            naming where the run departs from the paper's text.
        eta_authors: ``(R, S, 2)`` the rates the authors' fitting method reaches on the same
            trajectories (NaN: not run, or the trial not fitted); r2_authors: ``(R, S, 3)``
            their R^2 of h, y, w, scored on ``epochs_fit`` like ``r2``.
    """

    rows: np.ndarray
    lr: np.ndarray
    width: np.ndarray
    depth: np.ndarray
    dx2: np.ndarray
    dy2: np.ndarray
    loss: np.ndarray
    hyw: np.ndarray
    diverged: np.ndarray
    epochs_fit: np.ndarray
    eta_h: np.ndarray
    eta_y: np.ndarray
    fit_ok: np.ndarray
    converged: np.ndarray
    r2: np.ndarray
    z_fit: np.ndarray
    eta_mean: np.ndarray
    r2_loss: np.ndarray
    loss_fit: np.ndarray
    loss_converged: np.ndarray
    fit_initial: np.ndarray
    fit_status: np.ndarray
    layer: np.ndarray
    departures: np.ndarray
    eta_authors: np.ndarray
    r2_authors: np.ndarray


def departures(config: RowsConfig, cfgs=None) -> list[str]:
    """Where ``config`` departs from the paper's text (Table 1 and appendix B)."""
    cfgs = row_configs(config) if cfgs is None else cfgs
    out = size_departures(cfgs)
    for c in cfgs:
        if c.name == "dropout" and c.layer != c.depth // 2:
            out.append(f"dropout row observed at hidden layer {c.layer} of {c.depth} (the "
                       f"authors' code; the text: halfway, layer {c.depth // 2})")
        if c.arch == "conv" and c.conv_layout == "authors":
            out.append(f"convolution row with the authors' layout: {c.depth + 1} convolutions "
                       f"({c.depth + 2} hidden activations, observed at layer {c.layer}; the "
                       f"text: {c.depth + 1} maps in all)")
    return out


def size_departures(cfgs) -> list[str]:
    """The widths and depths of ``cfgs`` that differ from Table 1's, grouped
    (``"width 64 (Table 1: 500): default, tanh"``); the lr is rescaled with the width."""
    groups: dict[str, list[str]] = {}
    for c in cfgs:
        ref = configs.get(c.name)
        for what, got, want in (("width", c.width, ref.width), ("depth", c.depth, ref.depth)):
            if got != want:
                groups.setdefault(f"{what} {got} (Table 1: {want})", []).append(c.name)
    return [f"{k}: {', '.join(v)}" + (" (lr rescaled for the width)" if k.startswith("width")
                                      else "") for k, v in groups.items()]


def row_configs(config: RowsConfig):
    """The TrainConfig of every row at the config's sizes."""
    out = []
    for name in config.rows:
        extra = {}
        depth = config.size.depth(name)
        if name == "dropout" and config.dropout_layer is not None:
            if config.dropout_layer >= depth:
                raise ValueError(f"dropout_layer={config.dropout_layer} is invalid: the dropout "
                                 f"row has {depth} hidden layers (valid: 0..{depth - 1})")
            extra["layer"] = config.dropout_layer
        if name == "convolution":
            extra["conv_layout"] = config.conv_layout
        out.append(config.size.row_config(name, depth=depth, dx2=config.dx2, dy2=config.dy2,
                                          optimizer=config.optimizer, **extra))
    if config.lr is not None:
        out = [c.replace(lr=config.lr) for c in out]
    return out


def train_rows(cfgs, *, seeds: int, key, progress, cache, prefix: str = "train"):
    """Train every row (one cached chunk each); returns stacked ``loss (R, S, T)``,
    ``hyw (R, S, T, 3)`` and ``diverged (R, S)``."""
    import jax

    from unijax import train

    loss, hyw, div = [], [], []
    for i, cfg in enumerate(progress(cfgs, desc=f"{prefix}: rows")):

        def compute(cfg=cfg, i=i):
            r = train.train(cfg, seeds=seeds, key=jax.random.fold_in(key, i))
            return {
                "loss": np.asarray(r.loss)[0],
                "hyw": np.asarray(r.hyw())[0],
                "diverged": np.asarray(r.diverged)[0],
            }

        got = cache(f"{prefix}-{cfg.name}", compute)
        loss.append(got["loss"])
        hyw.append(got["hyw"])
        div.append(got["diverged"])
    return np.stack(loss), np.stack(hyw), np.stack(div)


def fit_rows(loss, hyw, diverged, *, dx2, dy2, progress, cache, prefix: str = "fit",
             fit_initial: bool = False):
    """Fit rates and eta_mean to every non-diverged trial of ``(R, S, ...)`` arrays
    (``fit_initial``: fit the ODE's starting state too); returns
    :func:`unijax.experiments._twopoint.fit_trajectories`' and ``fit_loss``' arrays shaped
    ``(R, S, ...)`` (``epochs``: ``(P,)``)."""
    R, S, T = loss.shape

    def compute():
        Z = hyw.reshape(R * S, T, 3).astype(np.float64)
        Z = np.where(diverged.reshape(-1)[:, None, None], np.nan, Z)
        f = tp.fit_trajectories(Z, dx2=dx2, dy2=dy2, progress=progress, desc=f"{prefix}: ODE",
                                fit_initial=fit_initial)
        m0 = tp.mean_output_error0(loss.reshape(R * S, T)[:, 0], Z[:, 0], dy2)
        lf = tp.fit_loss(loss.reshape(R * S, T), f["z_fit"], epochs=f["epochs"], dy2=dy2,
                         m0=np.nan_to_num(m0), use=f["fit_ok"])
        return {**f, **lf}

    out = cache(prefix, compute)
    if "status" not in out:  # stored by a version without the per-trial status: refit
        out = cache(f"{prefix}-status", compute)
    shaped = {}
    for k, v in out.items():
        shaped[k] = v if k == "epochs" else v.reshape((R, S) + v.shape[1:])
    return shaped


def _row_medians(r2: np.ndarray, use: np.ndarray) -> np.ndarray:
    """``(R, 3)`` seed-median R^2 of h, y, w over the ``use`` trials (NaN: none)."""
    R = r2.shape[0]
    out = np.full((R, 3), np.nan)
    for i in range(R):
        for k in range(3):
            v = np.asarray(r2[i, :, k], float)[np.asarray(use[i])]
            v = v[np.isfinite(v)]
            if v.size:
                out[i, k] = np.median(v)
    return out


def reference_needed(fitted: np.ndarray, fit: dict, *, r2_pass: float | None) -> np.ndarray:
    """The trials whose verdict or rate status can depend on the authors' method, ``(R, S)``.

    A trial is fitted by the authors' method when it was fitted here (``fitted``) and either
    its own fit is below the R^2 criterion (``POOR_FIT``: :func:`unijax.experiments.
    _twopoint.as_authors` may then mark it usable) or its row misses the pass threshold
    ``r2_pass`` (seed-median R^2 of h, y or w over the fits with a curve, ``fit_ok``: the
    row's verdict then compares with the authors' R^2 over those trials). A row whose every
    median is at least ``r2_pass`` passes without a reference and is not refitted; with
    ``r2_pass`` None (no row verdict) only the ``POOR_FIT`` trials are.

    Args:
        fitted: ``(R, S)`` the trials unijax fitted (not diverged).
        fit: :func:`fit_rows`' output (``status``, ``r2``, ``fit_ok``, each ``(R, S, ...)``).
        r2_pass: the row threshold, or None.
    """
    from unijax import fit as fit_mod

    fitted = np.asarray(fitted, bool)
    need = np.asarray(fit["status"]) == int(fit_mod.FitStatus.POOR_FIT)
    if r2_pass is not None:
        med = _row_medians(np.asarray(fit["r2"]), np.asarray(fit["fit_ok"]) & fitted)
        with np.errstate(invalid="ignore"):
            misses = np.any(med < r2_pass, axis=1)  # NaN (no fit): the row fails anyway
        need = need | misses[:, None]
    return fitted & need


def reference_fits(hyw, todo, *, epochs, dx2, dy2, progress, cache,
                   prefix: str = "reference") -> dict[str, np.ndarray]:
    """The authors' fitting method on the ``todo`` trials (:mod:`unijax.authors`).

    Args:
        hyw: measured ``(h, y, w)``, shape ``(R, S, T, 3)``, every epoch.
        todo: ``(R, S)`` the trials to fit (e.g. :func:`reference_needed`; the others are left
            NaN: not run).
        epochs: ``(P,)`` the epochs unijax's R^2 is scored on (the same for both methods).

    Returns:
        ``{"eta": (R, S, 2), "r2": (R, S, 3)}`` (one cached chunk: resumable).
    """
    from unijax import authors

    R, S = todo.shape

    def compute():
        eta = np.full((R, S, 2), np.nan)
        r2 = np.full((R, S, 3), np.nan)
        # A trial that blew up after the last sampled epoch cannot be fitted over every epoch.
        trials = [(i, j) for i in range(R) for j in range(S)
                  if todo[i, j] and np.all(np.isfinite(hyw[i, j]))]
        if trials:
            e, r = authors.fit_many([hyw[i, j] for i, j in trials], dx2=dx2, dy2=dy2,
                                    epochs=epochs, progress=progress,
                                    desc=f"{prefix}: authors' fits")
            for k, (i, j) in enumerate(trials):
                eta[i, j], r2[i, j] = e[k], r[k]
        return {"eta": eta, "r2": r2}

    return cache(prefix, compute)


def run_rows(config: RowsConfig, *, key, progress=cm.no_progress, cache=None,
             r2_pass: float | None = None) -> RowsResult:
    """Train every row, fit the ODE and the loss curve, and (``config.reference``) fit the
    trials :func:`reference_needed` names with the authors' method, against the row threshold
    ``r2_pass`` (pure in ``config`` and ``key``)."""
    cache = cache or cm.memory_cache()
    cfgs = row_configs(config)
    loss, hyw, div = train_rows(cfgs, seeds=config.seeds, key=key, progress=progress,
                                cache=cache)
    f = fit_rows(loss, hyw, div, dx2=config.dx2, dy2=config.dy2, progress=progress,
                 cache=cache, fit_initial=config.fit_initial)
    from unijax import fit  # loaded by fit_rows already

    ref = {"eta": np.asarray(np.nan), "r2": np.asarray(np.nan)}
    if config.reference:
        # The chunk's name says which trials it holds.
        ref = reference_fits(hyw, reference_needed(f["fitted"] & ~div, f, r2_pass=r2_pass),
                             epochs=f["epochs"], dx2=config.dx2, dy2=config.dy2,
                             progress=progress, cache=cache, prefix="reference-needed")
    return RowsResult(
        rows=np.asarray(config.rows, dtype=str),
        lr=np.asarray([c.lr for c in cfgs]),
        width=np.asarray([c.width for c in cfgs]),
        depth=np.asarray([c.depth for c in cfgs]),
        dx2=np.asarray(config.dx2),
        dy2=np.asarray(config.dy2),
        loss=loss,
        hyw=hyw,
        diverged=div,
        epochs_fit=f["epochs"],
        eta_h=f["eta_h"],
        eta_y=f["eta_y"],
        fit_ok=f["fit_ok"] & ~div,
        converged=f["fit_ok"] & f["identified"] & ~div,
        r2=f["r2"],
        z_fit=f["z_fit"],
        eta_mean=f["eta_mean"],
        r2_loss=f["r2_loss"],
        loss_fit=f["loss_fit"],
        loss_converged=f["loss_converged"],
        fit_initial=np.asarray(config.fit_initial),
        fit_status=np.where(div, fit.FitStatus.NOT_FITTED, f["status"]).astype(np.int32),
        layer=np.asarray([c.layer for c in cfgs]),
        departures=np.asarray(departures(config, cfgs), dtype=str),
        eta_authors=ref["eta"],
        r2_authors=ref["r2"],
    )


def fit_status(result) -> np.ndarray:
    """``fit_status`` broadcast to ``(R, S)`` (``unijax.fit.FitStatus`` codes)."""
    return np.broadcast_to(np.asarray(result.fit_status), np.asarray(result.diverged).shape)


def as_authors(result) -> np.ndarray:
    """``(R, S)`` bool: the ``POOR_FIT`` trials that the authors' method fits no better, whose
    rates are used (:func:`unijax.experiments._twopoint.as_authors`; none without a
    reference)."""
    return tp.as_authors(fit_status(result), result.r2, result.r2_authors)


def counts(result) -> dict[str, int]:
    """Trials, diverged, failed fits, fits used, rates not identified, rates usable."""
    div = np.asarray(result.diverged)
    ok = np.asarray(result.fit_ok)
    conv = np.asarray(result.converged)
    return {
        "trials": int(div.size),
        "diverged": int(div.sum()),
        "fit_failed": int((~div & ~ok).sum()),
        "used": int(ok.sum()),
        "rate_fits_not_identified": int((ok & ~conv).sum()),
        "rate_fits_used": int(tp.usable(fit_status(result), as_authors(result)).sum()),
    }


def default_rates(result) -> dict | None:
    """Mean rates of the ``default`` row over the fits that pass the quality criterion (for
    E4-E6, E8; :func:`unijax.experiments._twopoint.usable_rates`), with how many were used and
    excluded and why, or None when the row is absent or no fit passes."""
    rows = list(np.asarray(result.rows))
    if "default" not in rows:
        return None
    i = rows.index("default")
    rates = tp.usable_rates(result.eta_h[i], result.eta_y[i], fit_status(result)[i],
                            as_authors(result)[i])
    if rates["n"] == 0:
        return None
    return {**rates, "width": int(result.width[i]), "depth": int(result.depth[i])}


#: R^2 threshold of REPRODUCED for a two-point row (median over seeds, each of h, y, w).
R2_PASS = 0.95
HYW = ("h", "y", "w")


def median(values) -> float | None:
    """The median of the finite entries of ``values`` (None when there are none)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def r2_cell(x) -> str:
    """An R^2 (or None) as a report-table cell."""
    return "n/a" if x is None else cm.fmt(x, 3)


def fit_min_r2() -> float:
    """``unijax.fit.MIN_R2`` (the fitter, hence Diffrax, loaded only when asked)."""
    from unijax import fit

    return fit.MIN_R2


def own_default_rates(size: tp.Sizes, *, seeds: int, key, progress, cache,
                      prefix: str = "rates") -> dict:
    """Fit the ``default`` row's rates at ``size`` over ``seeds`` trials (for E4-E8 when no
    E1/E3 result is at hand).

    Returns ``{"eta_h", "eta_y", "n", "n_excluded", "width", "depth", "source"}``: means over
    the fits that pass the quality criterion only (``eta_*`` NaN if none does); ``source``
    says how many were used and why the others were excluded.
    """
    cfg = RowsConfig(rows=("default",), seeds=seeds, size=size)
    cfgs = row_configs(cfg)
    loss, hyw, div = train_rows(cfgs, seeds=seeds, key=key, progress=progress, cache=cache,
                                prefix=f"{prefix}-train")
    f = fit_rows(loss, hyw, div, dx2=cfg.dx2, dy2=cfg.dy2, progress=progress, cache=cache,
                 prefix=f"{prefix}-fit")
    from unijax import fit  # loaded by fit_rows already

    rates = tp.usable_rates(f["eta_h"][0], f["eta_y"][0],
                            np.where(div[0], fit.FitStatus.NOT_FITTED, f["status"][0]))
    return {
        "eta_h": rates["eta_h"],
        "eta_y": rates["eta_y"],
        "n": rates["n"],
        "n_excluded": rates["n_excluded"],
        "width": int(cfgs[0].width),
        "depth": int(cfgs[0].depth),
        "source": f"fitted here (default row, width {cfgs[0].width}, depth {cfgs[0].depth}, "
        f"{tp.exclusion_text(rates)})",
    }
