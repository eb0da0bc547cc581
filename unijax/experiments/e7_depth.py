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
    sse: np.ndarray = dataclasses.field(default_factory=lambda: np.asarray([]))


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
        eta_y=sh(f["eta_y"]), r2=sh(f["r2"]), fit_ok=sh(f["fit_ok"]) & ~div[:, None],
        converged=sh(f["usable"]) & ~div[:, None], h0=h0, depth_gain=np.asarray(a),
        h0_theory=h0_th, dx2=np.asarray(config.dx2),
    )


def per_layer(result) -> dict[str, np.ndarray]:
    ok = np.asarray(result.fit_ok)
    use = np.asarray(result.converged)  # rates only from fits that pass the quality criterion
    err = np.where(ok, 1.0 - np.mean(result.r2, axis=-1), np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers give NaN, as intended
        return {
            "fit_error": np.nanmean(err, axis=0),
            "fit_error_std": np.nanstd(err, axis=0),
            "eta_h": np.nanmean(np.where(use, result.eta_h, np.nan), axis=0),
            "eta_y": np.nanmean(np.where(use, result.eta_y, np.nan), axis=0),
            "h0": np.nanmean(result.h0, axis=0),
            "sse": (np.nanmean(np.asarray(result.sse), axis=0) if np.size(result.sse)
                    else np.full(len(result.layers), np.nan)),
        }


def agreement(result) -> dict:
    t = per_layer(result)
    L = len(result.layers)
    later = np.arange(L) >= L // 2
    rho_err = cm.spearman(result.layers, t["fit_error"])
    rho_h = cm.spearman(result.layers[later], t["eta_h"][later])
    rho_y = cm.spearman(result.layers[later], t["eta_y"][later])
    ok = np.isfinite(t["h0"]) & (t["h0"] > 0) & np.isfinite(result.h0_theory)
    lg_r2 = float("nan")
    if ok.sum() >= 2:
        lm, lt = np.log(t["h0"][ok]), np.log(result.h0_theory[ok])
        lg_r2 = float(1 - np.sum((lm - lt) ** 2) / np.sum((lm - lm.mean()) ** 2))
    checks = [rho_err < 0, rho_h > 0, rho_y < 0]
    passed = None if any(np.isnan(v) for v in (rho_err, rho_h, rho_y)) else bool(all(checks))
    # Layers without a completed fit leave the correlations on a subset (or undefined): fail.
    unfitted = [int(k) for k in np.flatnonzero(~np.isfinite(t["fit_error"]))]
    if unfitted or passed is None:
        passed = False
    first, last = t["fit_error"][0], t["fit_error"][-1]
    sse_l = t["sse"]
    sse_min = int(np.nanargmin(sse_l)) if np.isfinite(sse_l).any() else None
    headline = (f"Spearman rho(layer, fit error) = {cm.fmt(rho_err)}; later layers: rho(eta_h) = "
                f"{cm.fmt(rho_h)}, rho(eta_y) = {cm.fmt(rho_y)}")
    measured = (
        f"Fit error (1 - mean R^2) falls from {cm.fmt(first)} at hidden layer 0 to "
        f"{cm.fmt(last)} at layer {L - 1} (rho {cm.fmt(rho_err)}). In layers "
        f"{L // 2}..{L - 1}, eta_h goes "
        f"{cm.fmt(t['eta_h'][L // 2])} -> {cm.fmt(t['eta_h'][-1])} and eta_y "
        f"{cm.fmt(t['eta_y'][L // 2])} -> {cm.fmt(t['eta_y'][-1])} 1/epoch. Initial distance: "
        f"per-layer gain a = {cm.fmt(result.depth_gain)}, R^2 of log h0(l) vs a^(2l) dx2 = "
        f"{cm.fmt(lg_r2)}. The authors' absolute SSE of the fit (mean over trials) is "
        + (f"{cm.fmt(sse_l[0])} at layer 0, {cm.fmt(sse_l[-1])} at layer {L - 1}, lowest "
           f"({cm.fmt(sse_l[sse_min])}) at layer {sse_min}." if sse_min is not None else "n/a.")
    )
    if unfitted:
        headline += f"; FAIL: no completed fit at hidden layer(s) {unfitted}"
    ok_fit = np.asarray(result.fit_ok)
    div = np.asarray(result.diverged)
    return cm.make_agreement(
        headline=headline,
        measured=measured,
        criterion="fit error (unijax's scale-free 1 - mean R^2) decreasing with depth "
        "(rho < 0), and in the later half eta_h increasing (rho > 0) and eta_y decreasing "
        "(rho < 0); a layer without a completed fit fails",
        passed=passed,
        figures={"per_layer": {k: v.tolist() for k, v in t.items()},
                 "spearman_fit_error": rho_err, "spearman_eta_h_later": rho_h,
                 "spearman_eta_y_later": rho_y, "depth_gain": float(result.depth_gain),
                 "h0_log_r2": lg_r2, "sse_per_layer": sse_l.tolist(),
                 "sse_lowest_layer": sse_min,
                 "fit_error_first_last": [cm.spread(1 - np.mean(result.r2[:, 0], -1)),
                                          cm.spread(1 - np.mean(result.r2[:, -1], -1))]},
        counts={"trials": int(div.size), "diverged": int(div.sum()),
                "fit_failed": int((~div[:, None] & ~ok_fit).sum()),
                "used": int(ok_fit.sum()), "layer_fits": int(ok_fit.size),
                "rate_fits_used": int(np.asarray(result.converged).sum())},
    )


def plot(result, outdir) -> list[Path]:
    t = per_layer(result)
    layers = np.asarray(result.layers)
    fig, axes = plots.new_figure(1, 3, size=(3.5, 3.0))
    ax = axes[0, 0]
    ax.errorbar(layers, t["fit_error"], yerr=t["fit_error_std"], fmt="o-", color="C3",
                label="1 − mean R² (unijax)")
    ax.set_yscale("log")
    plots.label(ax, "hidden layer (0 = first)", "fit error 1 − mean R² (dimensionless)",
                "theory fit vs depth")
    if np.isfinite(t["sse"]).any():
        tw = ax.twinx()
        tw.plot(layers, t["sse"], "s--", color="C4", label="SSE (the authors' measure)")
        tw.set_yscale("log")
        tw.set_ylabel("absolute SSE of h, y, w over all epochs (a.u.²)", color="C4")
        tw.legend(fontsize=7, loc="upper right")
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[0, 1]
    ax.plot(layers, t["eta_h"], "o-", color="C0", label="η_h")
    ax.plot(layers, t["eta_y"], "s-", color="C1", label="η_y")
    ax.set_yscale("log")
    ax.axvline(len(layers) // 2 - 0.5, color="gray", ls=":", lw=0.8, label="later half →")
    plots.label(ax, "hidden layer (0 = first)", "effective learning rate (1/epoch)",
                "fitted rates per layer")
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
