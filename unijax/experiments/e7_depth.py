"""E7. Depth: the effective rates and the fit quality at every hidden layer (paper Fig. 10, §5).

The default architecture is trained on the two points and ``(h, y, w)`` recorded at *every*
hidden layer (``y`` and ``w`` do not depend on the layer); ``(eta_h, eta_y)`` are fitted per
layer. Predictions (docs/theory.md section 9): the fit error falls with depth (later layers start
closer, so the linearization is better there); in later layers ``eta_h`` rises and ``eta_y``
falls with depth; the initial distance falls geometrically, ``h0(l) ~ a^(2 l) dx2`` with ``l``
the number of maps from the input, ``a`` fitted by ``theory.fit_depth_gain``.

Fit error = ``1 - mean(R^2_h, R^2_y, R^2_w)`` per layer and trial: unijax's own, scale-free
criterion. Beside it, the authors' measure: the absolute sum of squared errors of the fitted
ODE, ``SSE = sum_t (h - h_ode)^2 + (y - y_ode)^2 + (w - w_ode)^2`` over every epoch (the ODE
interpolated between its sampled epochs), mean over trials; their figure plots ``0.02 * SSE``,
which is not monotone in depth (it is lowest near layer 11 of 20), because the early layers'
``h`` is large and the late layers' small.

The ``paper`` preset runs what the authors' depth notebook ran: its settings lr 0.01 for 3000
epochs (no halving; Table 1's default row halves the lr and doubles the epochs).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from unijax import plots
from unijax.experiments import _common as cm
from unijax.experiments import _rows
from unijax.experiments import _twopoint as tp

NAME = "E7"
TITLE = "Depth: effective rates and fit quality per hidden layer (Fig. 10)"
CLAIM = (
    "The theory describes later layers better (the fit error falls with depth, because the "
    "initial distance shrinks like a^(2l)); in the later layers eta_h rises and eta_y falls "
    "with depth."
)
USES_RATES = False
#: What result.npz holds: every field of the result.
result_arrays = cm.result_to_arrays


#: Fields of the ``size`` block that E7 does not use (it trains the ``default`` row at its own
#: ``depth``): set, they are refused rather than ignored.
UNUSED_SIZES = ("narrow_width", "conv_width", "conv_depth", "max_depth")


@dataclasses.dataclass(frozen=True)
class Config:
    """E7 settings: the ``default`` row at ``size.width`` x ``depth`` (None: the paper's
    500 x 20), ``size.epochs`` epochs with lr multiplier ``size.time_scale``, ``seeds`` trials,
    data (dx2, dy2).

    ``size`` is the two-point experiments' block (:class:`unijax.experiments._twopoint.Sizes`);
    E7 trains only the ``default`` row at its own ``depth``, so the block's ``narrow_width``,
    ``conv_width``, ``conv_depth`` and ``max_depth`` must stay unset (refused otherwise).
    """

    size: tp.Sizes = tp.Sizes()
    depth: int | None = None
    seeds: int = 10
    seed: int = 0
    dx2: float = 1.0
    dy2: float = 0.5

    def __post_init__(self):
        tp.check_sizes(self.size)
        for f in UNUSED_SIZES:
            if getattr(self.size, f) is not None:
                raise ValueError(
                    f"size.{f}={getattr(self.size, f)!r} is invalid for E7: it trains only the "
                    "default row" + (" at its own depth (set depth instead)"
                                     if f in ("conv_depth", "max_depth") else "")
                    + "; leave it unset (none)")
        if self.depth is not None:
            cm.check_int("depth", self.depth, 3)
        cm.check_int("seeds", self.seeds, 1)
        cm.check_int("seed", self.seed, 0)
        cm.check_float("dx2", self.dx2)
        cm.check_float("dy2", self.dy2)


presets = {
    # The authors' depth notebook: settings lr 0.01 (2x Table 1's) for 3000 epochs.
    "paper": Config(size=tp.Sizes(epochs=3000, time_scale=2.0)),
    "quick": Config(size=tp.Sizes(width=64, epochs=6000, time_scale=1.0), seeds=4),
    "tiny": Config(size=tp.Sizes(width=16, epochs=tp.FIT_POINTS, time_scale=1.0), depth=6,
                   seeds=2),
}

#: The paper's sizes on a 2-core CPU (``paper-cpu``): two seeds.
presets["paper-cpu"] = dataclasses.replace(presets["paper"], seeds=2)


@dataclasses.dataclass(frozen=True)
class Result:
    """E7 result (S seeds, L layers, T epochs).

    Attributes:
        layers: ``(L,)`` hidden-layer indices (0-based); maps: ``(L,)`` = layers + 1.
        hyw: ``(S, L, T, 3)``; diverged ``(S,)``.
        eta_h, eta_y: ``(S, L)`` (1/epoch); r2: ``(S, L, 3)``; fit_ok, converged: ``(S, L)``
            (fit_ok: a fitted curve, its error counted; converged: the fit passes the quality
            criterion, ``unijax.fit.FitStatus.OK``: only those rates are averaged).
        h0: ``(S, L)`` initial squared distance per layer; depth_gain: fitted ``a``;
            h0_theory: ``(L,)`` = ``a^(2 maps) dx2``.
        stderr_eta_h, stderr_eta_y: ``(S, L)`` the fits' standard errors of the rates
            (1/epoch; NaN where not fitted).
        sse: ``(S, L)`` absolute sum of squared errors of the fitted ODE over every epoch
            (h, y and w together; NaN where not fitted), the authors' measure.
    """

    layers: np.ndarray
    maps: np.ndarray
    hyw: np.ndarray
    diverged: np.ndarray
    eta_h: np.ndarray
    eta_y: np.ndarray
    r2: np.ndarray
    fit_ok: np.ndarray
    converged: np.ndarray
    h0: np.ndarray
    depth_gain: np.ndarray
    h0_theory: np.ndarray
    dx2: np.ndarray
    sse: np.ndarray
    stderr_eta_h: np.ndarray
    stderr_eta_y: np.ndarray


def sse(hyw: np.ndarray, z_fit: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """Sum over every epoch of the squared errors of ``h, y, w`` (the authors' measure).

    Args:
        hyw: measured ``(..., T, 3)``; z_fit: fitted ODE at ``epochs``, ``(..., P, 3)``.
        epochs: ``(P,)`` sampled epochs, from 0 to ``T - 1``.

    Returns:
        ``(...)``; NaN where the fit is missing.
    """
    hyw = np.asarray(hyw, np.float64)
    z = np.asarray(z_fit, np.float64)
    T = hyw.shape[-2]
    t = np.arange(T)
    lead = hyw.shape[:-2]
    flat_m, flat_z = hyw.reshape(-1, T, 3), z.reshape(-1, z.shape[-2], 3)
    out = np.full(flat_m.shape[0], np.nan)
    for i in range(out.size):
        if np.all(np.isfinite(flat_z[i])) and np.all(np.isfinite(flat_m[i])):
            full = np.stack([np.interp(t, epochs, flat_z[i, :, k]) for k in range(3)], -1)
            out[i] = float(np.sum((flat_m[i] - full) ** 2))
    return out.reshape(lead)


def run(config: Config, *, key, progress=cm.no_progress, cache=None, upstream=None) -> Result:
    """Train the default network, fit the ODE at every hidden layer, fit the depth gain."""
    from unijax import theory, train

    cache = cache or cm.memory_cache()
    over = {"depth": config.depth} if config.depth is not None else {}
    cfg = config.size.row_config("default", dx2=config.dx2, dy2=config.dy2, **over)

    def compute():
        r = train.train(cfg, seeds=config.seeds, key=key, layers="all")
        return {"hyw": np.asarray(r.hyw())[0], "diverged": np.asarray(r.diverged)[0]}

    for _ in progress([0], desc="E7: train"):
        got = cache("train", compute)
    hyw, div = got["hyw"], got["diverged"]  # (S, L, T, 3)
    S, L, T, _ = hyw.shape
    Z = np.where(div[:, None, None, None], np.nan, hyw.astype(np.float64)).reshape(S * L, T, 3)
    f = cache("fit", lambda: tp.fit_trajectories(Z, dx2=config.dx2, dy2=config.dy2,
                                                 progress=progress, desc="E7: ODE per layer"))
    sh = lambda a: a.reshape((S, L) + a.shape[1:])  # noqa: E731
    h0 = np.where(div[:, None], np.nan, hyw[:, :, 0, 0].astype(np.float64))
    maps = np.arange(L) + 1
    h0m = np.nanmean(np.where(h0 > 0, h0, np.nan), axis=0)
    ok = np.isfinite(h0m) & (h0m > 0)
    a = float(theory.fit_depth_gain(maps[ok], h0m[ok], dx2=config.dx2)) if ok.sum() >= 2 \
        else float("nan")
    h0_th = np.asarray(a ** (2.0 * maps) * config.dx2) if np.isfinite(a) else np.full(L, np.nan)
    sse_ = np.where(sh(f["fit_ok"]) & ~div[:, None],
                    sse(hyw, sh(f["z_fit"]), np.asarray(f["epochs"])), np.nan)
    return Result(
        sse=sse_,
        layers=np.arange(L), maps=maps, hyw=hyw, diverged=div, eta_h=sh(f["eta_h"]),
        eta_y=sh(f["eta_y"]), stderr_eta_h=sh(f["stderr_eta_h"]),
        stderr_eta_y=sh(f["stderr_eta_y"]), r2=sh(f["r2"]),
        fit_ok=sh(f["fit_ok"]) & ~div[:, None],
        converged=sh(f["usable"]) & ~div[:, None], h0=h0, depth_gain=np.asarray(a),
        h0_theory=h0_th, dx2=np.asarray(config.dx2),
    )


def good_fits(result) -> np.ndarray:
    """``(S, L)`` the layer fits whose rates are reported: the optimizer finished (finite
    rates) and R^2 of each of h, y, w >= ``unijax.fit.MIN_R2``, identified or not (the authors
    kept every layer's fit; a rate that is not individually identified is still the best
    fit, and its standard error says how well the data determine it)."""
    r2 = np.asarray(result.r2, float)
    with np.errstate(invalid="ignore"):
        good = np.all(r2 >= _rows.fit_min_r2(), axis=-1)
    return (np.asarray(result.fit_ok) & good & np.isfinite(result.eta_h)
            & np.isfinite(result.eta_y))


def _mean_and_se(eta: np.ndarray, se: np.ndarray, use: np.ndarray) -> tuple[float, float]:
    """Mean of ``eta[use]`` and its standard error: the larger of the fits' own standard
    errors propagated to the mean, ``sqrt(sum se_i^2) / n``, and the spread over trials,
    ``sd / sqrt(n)`` (n >= 2). NaN, NaN where no fit is used."""
    e, s = np.asarray(eta, float)[use], np.asarray(se, float)[use]
    if e.size == 0:
        return float("nan"), float("nan")
    prop = float(np.sqrt(np.nansum(s ** 2)) / e.size) if np.isfinite(s).any() else 0.0
    over = float(np.std(e, ddof=1) / np.sqrt(e.size)) if e.size > 1 else 0.0
    return float(e.mean()), max(prop, over)


def per_layer(result) -> dict[str, np.ndarray]:
    """Per hidden layer ``(L,)``: fit error (1 - mean R^2 over the completed fits, mean and
    sd over trials), the rates over the good fits (:func:`good_fits`) with their standard
    errors (:func:`_mean_and_se`; 1/epoch), the number of good fits, h0 and the SSE."""
    ok = np.asarray(result.fit_ok)
    good = good_fits(result)
    err = np.where(ok, 1.0 - np.mean(result.r2, axis=-1), np.nan)
    S, L = ok.shape
    se_h = np.broadcast_to(np.asarray(result.stderr_eta_h, float), (S, L))
    se_y = np.broadcast_to(np.asarray(result.stderr_eta_y, float), (S, L))
    rates = {k: np.full(L, np.nan) for k in ("eta_h", "eta_h_se", "eta_y", "eta_y_se")}
    for layer in range(L):
        u = good[:, layer]
        rates["eta_h"][layer], rates["eta_h_se"][layer] = _mean_and_se(
            result.eta_h[:, layer], se_h[:, layer], u)
        rates["eta_y"][layer], rates["eta_y_se"][layer] = _mean_and_se(
            result.eta_y[:, layer], se_y[:, layer], u)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers give NaN, as intended
        return {
            "fit_error": np.nanmean(err, axis=0),
            "fit_error_std": np.nanstd(err, axis=0),
            **rates,
            "good_fits": good.sum(axis=0).astype(float),
            "h0": np.nanmean(result.h0, axis=0),
            "sse": np.nanmean(np.asarray(result.sse), axis=0),
        }


def shape_text(values: np.ndarray, what: str) -> str:
    """Where a per-layer curve is lowest, and whether it falls to there and rises after
    (U-shaped), in words."""
    v = np.asarray(values, float)
    if not np.isfinite(v).any():
        return f"{what}: n/a"
    k = int(np.nanargmin(v))
    last = len(v) - 1
    if k == last:
        return f"{what} is lowest at the last layer ({k}, {cm.fmt(v[k])})"
    if k == 0:
        return f"{what} is lowest at layer 0 ({cm.fmt(v[0])}) and higher at every later layer"
    return (f"{what} is U-shaped: it falls from {cm.fmt(v[0])} at layer 0 to its lowest, "
            f"{cm.fmt(v[k])} at layer {k}, and rises again to {cm.fmt(v[-1])} at layer {last}")


def judge(t: dict, later: np.ndarray) -> dict:
    """The three claims of Fig. 10, each with its :class:`~unijax.experiments._common.Verdict`
    (``{claim: {"verdict", "why", "rho"}}``)."""
    layers = np.arange(len(t["fit_error"]))
    out = {}
    unfitted = [int(k) for k in np.flatnonzero(~np.isfinite(t["fit_error"]))]
    rho = cm.spearman(layers, t["fit_error"])
    if unfitted:
        v, why = cm.Verdict.NOT_REPRODUCED, f"no completed fit at layer(s) {unfitted}"
    elif np.isnan(rho):
        v, why = cm.Verdict.NOT_TESTED, "fewer than three layers"
    else:
        v, why = cm.Verdict.of(bool(rho < 0)), f"Spearman rho(layer, fit error) {cm.fmt(rho)}"
    out["fit error falls with depth"] = {"verdict": v, "why": why, "rho": rho}
    lo, hi = int(layers[later][0]), int(layers[later][-1])
    n_later = int(later.sum())
    for name, sign in (("eta_h", 1), ("eta_y", -1)):
        vals = t[name][later]
        have = np.isfinite(vals)
        missing = [int(k) for k in layers[later][~have]]
        rho = cm.spearman(layers[later], vals)
        gap = f"; no good fit at layer(s) {missing}" if missing else ""
        if 2 * have.sum() < n_later or have.sum() < 3:
            # Too few layers for a trend: never a verdict on the few that happened to fit.
            v, why = cm.Verdict.NOT_REPRODUCED, (
                f"a good fit at only {int(have.sum())} of the {n_later} later layers{gap}")
        else:
            v = cm.Verdict.of(bool(sign * rho > 0))
            why = (f"Spearman rho(layer, {name}) {cm.fmt(rho)} over the {int(have.sum())} of "
                   f"layers {lo}-{hi} with a good fit{gap}")
        word = "rises" if sign > 0 else "falls"
        out[f"{name} {word} in layers {lo}-{hi}"] = {"verdict": v, "why": why, "rho": rho}
    return out


def agreement(result) -> dict:
    t = per_layer(result)
    L = len(result.layers)
    later = np.arange(L) >= L // 2
    ok = np.isfinite(t["h0"]) & (t["h0"] > 0) & np.isfinite(result.h0_theory)
    lg_r2 = float("nan")
    if ok.sum() >= 2:
        lm, lt = np.log(t["h0"][ok]), np.log(result.h0_theory[ok])
        lg_r2 = float(1 - np.sum((lm - lt) ** 2) / np.sum((lm - lm.mean()) ** 2))
    claims = judge(t, later)
    rows = {c: d["verdict"] for c, d in claims.items()}
    verdict = cm.combine_verdicts(rows.values())
    sse_l = t["sse"]
    sse_min = int(np.nanargmin(sse_l)) if np.isfinite(sse_l).any() else None
    err_min = int(np.nanargmin(t["fit_error"])) if np.isfinite(t["fit_error"]).any() else None
    S = np.asarray(result.fit_ok).shape[0]
    no_good = [int(k) for k in np.flatnonzero(t["good_fits"] == 0)]
    headline = "; ".join(
        f"{c}: {d['verdict'].value} ({d['why']})" for c, d in claims.items())
    measured = (
        shape_text(t["fit_error"], "The fit error (1 - mean R^2 of h, y, w, mean over trials)")
        + "; " + shape_text(sse_l, "the authors' absolute SSE of the fit (mean over trials)")
        + ". Rates per layer: mean over the good fits (R^2 of each of h, y, w >= "
        f"{_min_r2()}, identified or not) ± standard error (the larger of the fits' own "
        "standard errors propagated to the mean and the spread over trials / sqrt(n)); "
        + (f"no good fit at layer(s) {no_good}. " if no_good else "every layer has one. ")
        + f"Initial distance: per-layer gain a = {cm.fmt(result.depth_gain)}, R^2 of log "
        f"h0(l) vs a^(2l) dx2 = {cm.fmt(lg_r2)}."
    )
    cols = ["layer", "fit error", "SSE", "eta_h (1/epoch)", "eta_y (1/epoch)", "good fits"]
    lines = [[str(k), cm.fmt(t["fit_error"][k]), cm.fmt(sse_l[k]),
              _pm(t["eta_h"][k], t["eta_h_se"][k]), _pm(t["eta_y"][k], t["eta_y_se"][k]),
              f"{int(t['good_fits'][k])} of {S}"] for k in range(L)]
    ok_fit = np.asarray(result.fit_ok)
    div = np.asarray(result.diverged)
    return cm.make_agreement(
        headline=headline,
        measured=measured,
        criterion="fit error (unijax's scale-free 1 - mean R^2) decreasing with depth "
        "(Spearman rho < 0 over every layer; a layer without a completed fit: NOT REPRODUCED); "
        f"over the later half (layers {L // 2}-{L - 1}) eta_h increasing (rho > 0) and eta_y "
        "decreasing (rho < 0), over the later layers with a good fit (R^2 of each of h, y, w "
        f">= {_min_r2()}, identified or not), which must be at least half of them and three",
        verdict=verdict,
        rows=rows,
        table={"columns": cols, "rows": lines},
        figures={"per_layer": {k: v.tolist() for k, v in t.items()},
                 "claims": {c: {**d, "verdict": d["verdict"].value} for c, d in claims.items()},
                 "depth_gain": float(result.depth_gain), "h0_log_r2": lg_r2,
                 "sse_per_layer": sse_l.tolist(), "sse_lowest_layer": sse_min,
                 "fit_error_lowest_layer": err_min,
                 "fit_error_first_last": [cm.spread(1 - np.mean(result.r2[:, 0], -1)),
                                          cm.spread(1 - np.mean(result.r2[:, -1], -1))]},
        counts={"trials": int(div.size), "diverged": int(div.sum()),
                "layer_fits": int(ok_fit.size),
                "layer_fits_failed": int((~div[:, None] & ~ok_fit).sum()),
                "layer_fits_good": int(good_fits(result).sum())},
    )


def _pm(x: float, se: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{cm.fmt(x)} ± {cm.fmt(se, 2)}"


def _min_r2() -> float:
    return _rows.fit_min_r2()


def plot(result, outdir) -> list[Path]:
    t = per_layer(result)
    layers = np.asarray(result.layers)
    fig, axes = plots.new_figure(1, 3, size=(3.5, 3.0))
    ax = axes[0, 0]
    ax.errorbar(layers, t["fit_error"], yerr=t["fit_error_std"], fmt="o-", color="C3",
                label="1 − mean R² (unijax)")
    ax.set_yscale("log")
    plots.label(ax, "hidden layer (0 = first)", "fit error 1 − mean R² (dimensionless)",
                "fit error per layer: mean ± sd over trials")
    if np.isfinite(t["sse"]).any():
        tw = ax.twinx()
        tw.plot(layers, t["sse"], "s--", color="C4", label="SSE (the authors' measure)")
        tw.set_yscale("log")
        tw.set_ylabel("absolute SSE of h, y, w over all epochs (a.u.²)", color="C4")
        tw.legend(fontsize=7, loc="upper right")
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[0, 1]
    ax.errorbar(layers, t["eta_h"], yerr=np.nan_to_num(t["eta_h_se"]), fmt="o-", color="C0",
                label="η_h")
    ax.errorbar(layers, t["eta_y"], yerr=np.nan_to_num(t["eta_y_se"]), fmt="s-", color="C1",
                label="η_y")
    ax.set_yscale("log")
    ax.axvline(len(layers) // 2 - 0.5, color="gray", ls=":", lw=0.8, label="later half →")
    plots.label(ax, "hidden layer (0 = first)", "effective learning rate (1/epoch)",
                "rates per layer: mean of good fits ± SE")
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    for s in range(result.h0.shape[0]):
        ax.plot(layers, result.h0[s], ".", color="C0", alpha=0.6,
                label="network (trials)" if s == 0 else None)
    ax.plot(layers, result.h0_theory, label=f"a^(2l) dx2, a = {cm.fmt(result.depth_gain)}",
            **plots.THEORY_STYLE)
    ax.set_yscale("log")
    plots.label(ax, "hidden layer (0 = first)", "initial h0 (squared distance, a.u.)",
                "initial distance vs depth")
    ax.legend(fontsize=7)
    return plots.save(fig, outdir, "depth")
