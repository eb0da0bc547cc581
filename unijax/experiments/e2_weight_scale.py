"""E2. Initial weight scale: plateau vs. exponential decay (paper Fig. 3, docs/theory.md section 7).

The four "initial weights" rows of Table 1 (gains 0.9, 1.1, 1.3, 1.4, default architecture)
trained on the two points, fitted as in E1. The plateau measure is computed on the distance
part of the loss, ``L_d = 1/4 (w + 1/2 (dy2 - y)) = 1/8 ||dy - dyhat||^2`` (the part of Eq. 9
that carries the plateau; the mean-output part decays exponentially at every gain):

    plateau index = (t_half - t_peak) / (t_quarter - t_half)

with ``t_peak`` the epoch of ``L_d``'s maximum and ``t_half`` (``t_quarter``) the first epoch
after it at which ``L_d`` is below 1/2 (1/4) of the peak. An exponential decay gives 1; a
plateau followed by a drop gives much more. It is measured on the network and on the fitted
ODE (theory), per trial. From the peak, not from t = 0: at the largest gains ``L_d`` first
rises, and from t = 0 that transient would read as a plateau.

Two claims, two verdicts: the transition from a plateau to exponential decay is judged over
the gains below the breakdown row (0.9, 1.1, 1.3); the breakdown row (gain 1.4) is judged for
the breakdown claim, that the theory's fit degrades there (section 3.2: "the linear
approximation breaks down and the effective theory no longer matches the network").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from unijax import plots
from unijax.experiments import _common as cm
from unijax.experiments import _rows
from unijax.experiments import _twopoint as tp

NAME = "E2"
TITLE = "Initial weight scale: plateau vs. exponential decay (Fig. 3)"
CLAIM = (
    "Small initial weights give a loss plateau followed by a sudden drop; large initial weights "
    "give immediate exponential decay (no plateau); at the largest gain the representations "
    "start far apart and the theory's fit degrades."
)
USES_RATES = False
#: What result.npz holds: every field of the result.
result_arrays = cm.result_to_arrays

GAIN_ROWS = (
    "low_initial_weights",
    "intermediate_initial_weights",
    "high_initial_weights",
    "very_high_initial_weights",
)
#: The transition is REPRODUCED when the plateau index at the smallest transition gain is at
#: least this many times that at the largest.
PLATEAU_RATIO_PASS = 2.0
#: The row the paper calls the breakdown of the theory (Fig. 3's largest gain, 1.4 at paper
#: size): judged for the breakdown claim, not for the transition.
BREAKDOWN_ROW = "very_high_initial_weights"
#: The breakdown is REPRODUCED when the fit there is worse than at every transition gain and
#: its seed-median worst-variable R^2 is below E1's REPRODUCED threshold (the theory no longer
#: matches the network).
BREAKDOWN_R2 = _rows.R2_PASS


@dataclasses.dataclass(frozen=True)
class Config:
    """E2 settings (same meaning as :class:`unijax.experiments._rows.RowsConfig`): ``rows``
    (any Table 1 rows, at least two), the ``size`` block (:class:`unijax.experiments._twopoint.
    Sizes`, ``size.width`` ...), ``seeds`` trials per row, base ``seed``, data ``dx2, dy2``."""

    rows: tuple[str, ...] = GAIN_ROWS
    size: tp.Sizes = tp.Sizes()
    seeds: int = 10
    seed: int = 0
    dx2: float = 1.0
    dy2: float = 0.5

    def __post_init__(self):
        cm.check_choices("rows", self.rows, tp.TABLE1)
        if len(self.rows) < 2:
            raise ValueError(f"rows={self.rows!r} is invalid: give at least two gains")
        tp.check_run(self)


presets = {
    "paper": Config(),
    "quick": Config(size=tp.Sizes(width=64, epochs=6000, time_scale=1.0), seeds=4),
    # Three hidden layers: with PyTorch's leaky-ReLU derivative at 0, one of the two
    # large-gain trials of the 4-layer 16-unit network shows a plateau as long as the
    # small-gain ones.
    "tiny": Config(rows=("low_initial_weights", "very_high_initial_weights"),
                   size=tp.Sizes(width=16, max_depth=3, epochs=tp.FIT_POINTS, time_scale=2.0),
                   seeds=2),
}

#: The paper's sizes on a 2-core CPU (``paper-cpu``): two seeds a gain.
presets["paper-cpu"] = dataclasses.replace(presets["paper"], seeds=2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result(_rows.RowsResult):
    """E2 result (G gain rows, S seeds, T epochs, P fitted epochs): E1's result of the gain
    rows (:class:`unijax.experiments._rows.RowsResult`, its fields under the same names)
    plus the plateau measure.

    Attributes:
        gain: ``(G,)`` the rows' initial gains (Xavier).
        plateau_net, plateau_theory: ``(G, S)`` plateau index of the distance loss of the
            network and of the fitted ODE (dimensionless; NaN where excluded or undefined).
    """

    gain: np.ndarray
    plateau_net: np.ndarray
    plateau_theory: np.ndarray


def _rows_config(config: Config) -> _rows.RowsConfig:
    return _rows.RowsConfig(rows=config.rows, size=config.size, seeds=config.seeds,
                            seed=config.seed, dx2=config.dx2, dy2=config.dy2, reference=False)


def run(config: Config, *, key, progress=cm.no_progress, cache=None, upstream=None) -> Result:
    """Train the gain rows, fit the ODE, measure the plateau of network and theory."""
    cache = cache or cm.memory_cache()
    r = _rows.run_rows(_rows_config(config), key=key, progress=progress, cache=cache)
    G, S, T = r.loss.shape
    ld_net = tp.distance_loss(r.hyw, np.full((G, S), config.dy2))  # (G, S, T)
    ld_th = tp.distance_loss(r.z_fit, np.full((G, S), config.dy2))  # (G, S, P)
    ep = np.asarray(r.epochs_fit)
    pl_net = np.full((G, S), np.nan)
    pl_th = np.full((G, S), np.nan)
    for g in range(G):
        for s in range(S):
            if r.diverged[g, s]:
                continue
            pl_net[g, s] = plateau_from_peak(ld_net[g, s])
            if r.fit_ok[g, s]:
                # The ODE is sampled at P epochs: interpolate to every epoch first.
                pl_th[g, s] = plateau_from_peak(np.interp(np.arange(T), ep, ld_th[g, s]))
    from unijax import configs

    # Every field of the rows' result as run_rows computed it.
    return Result(
        **{f.name: getattr(r, f.name) for f in dataclasses.fields(_rows.RowsResult)},
        gain=np.asarray([configs.get(n).gain for n in config.rows]), plateau_net=pl_net,
        plateau_theory=pl_th,
    )


def plateau_from_peak(curve: np.ndarray) -> float:
    """Plateau index of a curve measured from its peak: ``(t_half - t_peak) / (t_quarter -
    t_half)``.

    ``t_peak`` is the epoch of the curve's maximum (its first occurrence), ``t_half``
    (``t_quarter``) the first epoch after it at which the curve is below 1/2 (1/4) of the peak
    (interpolated between epochs). An exponential decay from the peak gives 1; a plateau then
    a drop much more. Measured from the peak, not from t = 0: at large gains the distance loss
    first rises (0.055 -> 0.09 by epoch ~145 at paper size), and from t = 0 that transient
    would count as a plateau. NaN if the curve never falls below a quarter of its peak.

    Args:
        curve: ``(T,)`` one value per epoch.
    """
    c = np.asarray(curve, dtype=float)
    if c.size < 2 or not np.all(np.isfinite(c)):
        return float("nan")
    peak = int(np.argmax(c))
    return tp.plateau_index(c[peak:])


def judge(per_gain: dict, transition: list[str], breakdown: str | None) -> dict:
    """The two claims, each with its :class:`~unijax.experiments._common.Verdict`.

    Args:
        per_gain: ``{gain: {"plateau_network": spread, "r2_median": {h, y, w: median or
            None}, "r2_min_median": median over seeds of the lowest of h, y, w ...}}``.
        transition: the gains (keys, ascending) the plateau-to-exponential transition is
            judged over; breakdown: the gain the breakdown claim is judged on (None: absent).

    Returns ``{"transition": {...}, "breakdown": {...}}``, each with ``verdict``, ``why`` and
    the numbers it rests on.
    """
    out = {}
    p = [per_gain[k]["plateau_network"]["mean"] for k in transition]
    missing = [k for k, v in zip(transition, p, strict=True) if v is None]
    ratio = rho = None
    if len(transition) < 2:
        v, why = cm.Verdict.NOT_TESTED, (
            f"only {len(transition)} gain below the breakdown gain: no transition to judge")
    elif missing:
        v, why = cm.Verdict.NOT_REPRODUCED, (
            f"no usable trial at gain {', '.join(missing)} (diverged, or the distance loss "
            "never fell below a quarter of its peak)")
    else:
        ratio = p[0] / p[-1] if p[-1] > 0 else float("inf")
        rho = cm.spearman([float(k) for k in transition], p)
        ok = ratio >= PLATEAU_RATIO_PASS and (np.isnan(rho) or rho < 0)
        v = cm.Verdict.of(ok)
        why = (f"plateau index {cm.fmt(p[0])} at gain {transition[0]} vs {cm.fmt(p[-1])} at "
               f"{transition[-1]} (ratio {cm.fmt(ratio)}), Spearman rho {cm.fmt(rho)}")
    out["transition"] = {"verdict": v, "why": why, "gains": transition, "ratio": ratio,
                         "spearman": rho}
    if breakdown is None:
        out["breakdown"] = {"verdict": cm.Verdict.NOT_TESTED, "gains": [],
                            "why": f"the breakdown row ({BREAKDOWN_ROW}) was not run"}
        return out
    worst = per_gain[breakdown]["r2_min_median"]
    others = {k: per_gain[k]["r2_min_median"] for k in transition}
    if worst is None:
        v, why = cm.Verdict.NOT_REPRODUCED, f"no completed fit at gain {breakdown}"
    else:
        lower = all(o is None or worst < o for o in others.values())
        ok = lower and worst < BREAKDOWN_R2
        v = cm.Verdict.of(ok)
        why = (f"worst-variable R^2 (seed-median) {cm.fmt(worst)}, vs "
               + ", ".join(f"{cm.fmt(o)} at gain {k}" for k, o in others.items()))
    out["breakdown"] = {"verdict": v, "why": why, "gains": [breakdown], "r2_min": worst}
    return out


def agreement(result) -> dict:
    gains = np.asarray(result.gain)
    order = np.argsort(gains)
    rows = [str(r) for r in np.asarray(result.rows)]
    per_gain = {}
    for g in order:
        use = np.asarray(result.fit_ok[g])
        ok = ~np.asarray(result.diverged[g])
        r2 = np.where(use[:, None], np.asarray(result.r2[g], float), np.nan)
        per_gain[f"{gains[g]:g}"] = {
            "row": rows[g],
            "plateau_network": cm.spread(np.where(ok, result.plateau_net[g], np.nan)),
            "plateau_theory": cm.spread(np.where(use, result.plateau_theory[g], np.nan)),
            "r2_median": {v: _rows.median(r2[:, k]) for k, v in enumerate(_rows.HYW)},
            # Per trial the worst of h, y, w (the variable the theory misses), then the median.
            "r2_min_median": _rows.median(np.min(r2, axis=-1)),
            "trials": int(ok.sum()),
        }
    keys = list(per_gain)
    breakdown = next((k for k in keys if per_gain[k]["row"] == BREAKDOWN_ROW), None)
    transition = [k for k in keys if k != breakdown]
    claims = judge(per_gain, transition, breakdown)
    verdicts = {f"transition (gain {', '.join(transition)})": claims["transition"]["verdict"],
                f"breakdown (gain {breakdown})" if breakdown else "breakdown":
                claims["breakdown"]["verdict"]}
    verdict = cm.combine_verdicts(verdicts.values())
    both = np.isfinite(result.plateau_net) & np.isfinite(result.plateau_theory)
    r_tn = cm.pearson(np.log(result.plateau_net[both]), np.log(result.plateau_theory[both])) \
        if both.sum() >= 3 else float("nan")
    headline = "; ".join(f"{name} {claims[c]['verdict'].value}: {claims[c]['why']}"
                         for name, c in zip(verdicts, ("transition", "breakdown"), strict=True))
    cols = ["gain", "row", "plateau index (network)", "plateau index (theory)", "R² h", "R² y",
            "R² w", "claim"]
    lines = []
    for k in keys:
        d = per_gain[k]
        lines.append([k, d["row"], cm.fmt_spread(d["plateau_network"]),
                      cm.fmt(d["plateau_theory"]["mean"]),
                      *(_rows.r2_cell(d["r2_median"][v]) for v in _rows.HYW),
                      "breakdown" if k == breakdown else "transition"])
    measured = (
        "Plateau index of the distance loss from its peak, (t_half - t_peak) / (t_quarter - "
        "t_half) (1 = exponential decay; network: mean ± sd over trials, theory: the fitted "
        "ODE, mean), and the seed-median R^2 of the fit, per gain. Network vs theory plateau "
        f"index (log, per trial): r = {cm.fmt(r_tn)}."
    )
    return cm.make_agreement(
        headline=headline,
        measured=measured,
        criterion=f"transition, over the gains below the breakdown row's ({BREAKDOWN_ROW}): "
        "plateau index at the "
        f"smallest gain >= {PLATEAU_RATIO_PASS} x that at the largest, decreasing with gain "
        "(Spearman rho < 0), every gain with a usable trial; breakdown, at the largest gain: "
        "the fit degrades, its seed-median worst-variable R^2 (the lowest of h, y, w per trial) "
        f"below {BREAKDOWN_R2} and below that of every transition gain",
        verdict=verdict,
        rows=verdicts,
        table={"columns": cols, "rows": lines},
        figures={"per_gain": per_gain,
                 "claims": {c: {**d, "verdict": d["verdict"].value} for c, d in claims.items()},
                 "plateau_ratio_low_high": claims["transition"]["ratio"],
                 "spearman_gain_plateau": claims["transition"]["spearman"],
                 "network_vs_theory_log_plateau_r": r_tn},
        counts=_rows.counts(result),
        departures=[str(d) for d in np.atleast_1d(result.departures)],
    )


def plot(result, outdir) -> list[Path]:
    gains = np.asarray(result.gain)
    order = np.argsort(gains)
    G = len(order)
    T = result.loss.shape[-1]
    t = np.arange(T)
    ep = np.asarray(result.epochs_fit)
    fig, axes = plots.new_figure(2, G, size=(3.2, 2.6))
    for col, g in enumerate(order):
        use = np.asarray(result.fit_ok[g])
        seeds = np.flatnonzero(use)[:3] if use.any() else np.flatnonzero(~result.diverged[g])[:1]
        ax = axes[0, col]
        for k, c in enumerate(("C0", "C1", "C2")):
            ax.plot(t, result.hyw[g, seeds, :, k].T, color=c, lw=1.6, alpha=0.6)
            ax.plot(ep, result.z_fit[g, seeds, :, k].T, **plots.THEORY_STYLE)
        plots.label(ax, "epoch", "h (blue), y (orange), w (green) (a.u.)",
                    f"gain {gains[g]:g}: dynamics")
        ax = axes[1, col]
        ax.plot(t, result.loss[g, seeds].T, color="C3", lw=1.6, alpha=0.6)
        ax.plot(ep, result.loss_fit[g, seeds].T, **plots.THEORY_STYLE)
        ax.set_yscale("log")
        pl = np.nanmean(result.plateau_net[g]) if np.isfinite(result.plateau_net[g]).any() \
            else np.nan
        plots.label(ax, "epoch", plots.HWY_LABELS["loss"],
                    f"gain {gains[g]:g}: loss; plateau index from the peak, mean {cm.fmt(pl)}")
    handles = [plots.plt.Line2D([], [], color="C3", label="network"),
               plots.plt.Line2D([], [], label="theory (fitted)", **plots.THEORY_STYLE)]
    axes[1, 0].legend(handles=handles, fontsize=7)
    paths = plots.save(fig, outdir, "weight_scale_dynamics")

    fig, axes = plots.new_figure(1, 2, size=(3.6, 3.0))
    ax = axes[0, 0]
    for s in range(result.plateau_net.shape[1]):
        ax.scatter(gains, result.plateau_net[:, s], color="C0", s=14,
                   label="network (trials)" if s == 0 else None)
        ax.scatter(gains, result.plateau_theory[:, s], color="k", marker="x", s=14,
                   label="theory (fitted ODE)" if s == 0 else None)
    ax.axhline(1.0, color="gray", lw=0.8, ls=":", label="pure exponential decay")
    ax.set_yscale("log")
    plots.label(ax, "initial gain (Xavier)", "plateau index from the peak (dimensionless)")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for k, v in enumerate("hyw"):
        m = [_rows.median(np.where(result.fit_ok[g], result.r2[g, :, k], np.nan))
             for g in range(G)]
        m = np.asarray([np.nan if x is None else x for x in m])
        ax.plot(gains[order], m[order], "o-", color=f"C{k}", label=f"R² {v}")
    plots.label(ax, "initial gain (Xavier)", "seed-median R² of the fit (1 = perfect)")
    ax.legend(fontsize=7)
    paths += plots.save(fig, outdir, "plateau_vs_gain")
    return paths
