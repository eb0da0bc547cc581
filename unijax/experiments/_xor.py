"""XOR rows: run, measures, verdicts and figures, shared by E4 and E8's Adam part.

What E4 claims and runs is told in :mod:`unijax.experiments.e4_xor`, which adds its name and
presets to these parts; E8 (:mod:`unijax.experiments.e8_adam`) runs them with Adam.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from unijax import configs, nets, plots
from unijax.experiments import _common as cm
from unijax.experiments import _structure as st
from unijax.experiments import _twopoint as tp

XOR_ROWS = ("xor_low_weights", "xor_intermediate_weights", "xor_high_weights", "xor_2_layers")
SAME = ((0, 3), (1, 2))
DIFF = ((0, 1), (0, 2), (1, 3), (2, 3))
PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))  # upper-triangle order
#: Pass thresholds: low-weight merge ratio below, high-weight ratio above, r above.
MERGED_RATIO = 0.25
KEPT_RATIO = 0.5
R_PASS = 0.8
#: Training losses: the paper's 0.5 * MSE, or PyTorch's ``nn.MSELoss()`` (the authors' code).
LOSSES = configs.LOSSES
#: A same-output pair counts as merged when its distance is below this x the mean
#: different-output distance.
MERGE_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class XorConfig:
    """XOR settings: E4's (:class:`unijax.experiments.e4_xor.Config`) and E8's XOR part.

    Attributes:
        rows: Table 2 XOR rows.
        width: hidden units (None: the paper's 500); max_depth caps the hidden layers.
        time_scale: lr multiplier beyond the width rescaling (epochs divided by it).
        low_gain, low_epochs: override the gain/epochs of ``xor_low_weights`` (None: table's
            0.7 / 1000; the authors' public code used 0.85 / 3000).
        two_layer_epochs: epochs of ``xor_2_layers`` (None: table's 40000 / time_scale; the
            authors' settings file: 2000).
        nonlinearity: every row's nonlinearity (None: the table's leaky ReLU; the authors'
            notebook hard-codes ``"relu"``).
        loss: ``"half_mse"`` (0.5 * mean squared error, the paper's text) or ``"mse"``
            (PyTorch's ``nn.MSELoss()``, the authors' notebook).
        seeds: trials per row; seed: base random seed.
        loss_threshold: a trial with a final loss above this did not converge (excluded).
        rates: how the default architecture's rates are obtained (``rates.source``:
            ``auto``, an E3/E1 result in the same output directory, else fitted here at the
            block's sizes; or ``fit``), see ``_structure.RateSettings``.
    """

    rows: tuple[str, ...] = XOR_ROWS
    width: int | None = None
    max_depth: int | None = None
    time_scale: float = 1.0
    low_gain: float | None = None
    low_epochs: int | None = None
    two_layer_epochs: int | None = None
    nonlinearity: str | None = None
    loss: str = "half_mse"
    seeds: int = 10
    seed: int = 0
    loss_threshold: float = 1e-3
    rates: st.RateSettings = st.RateSettings()

    def __post_init__(self):
        cm.check_choices("rows", self.rows, XOR_ROWS)
        for f in ("width", "max_depth", "low_epochs", "two_layer_epochs"):
            if getattr(self, f) is not None:
                cm.check_int(f, getattr(self, f), 1)
        cm.check_float("time_scale", self.time_scale)
        if self.nonlinearity is not None:
            cm.check_choice("nonlinearity", self.nonlinearity, tuple(nets.NONLINEARITIES))
        cm.check_choice("loss", self.loss, LOSSES)
        if self.low_gain is not None:
            cm.check_float("low_gain", self.low_gain)
        cm.check_int("seeds", self.seeds, 1)
        cm.check_int("seed", self.seed, 0)
        cm.check_float("loss_threshold", self.loss_threshold)


@dataclasses.dataclass(frozen=True)
class Result:
    """E4 result (R rows, S seeds, 4 points).

    Attributes:
        rows, gain, lr, epochs, depth: ``(R,)``.
        D0, D_final: ``(R, S, 4, 4)`` measured initial / final squared hidden distances.
        D_pred: ``(R, S, 4, 4)`` predicted final squared distances (theory).
        final_loss, diverged, converged: ``(R, S)``.
        eta_h, eta_y: the rates used (1/epoch); rates_source: text.
        nonlinearity: ``(R,)``; loss: ``()`` the training loss (``LOSSES``); departures:
            ``(k,)`` texts naming where the run departs from the paper's Table 2 and text.
        loss_threshold: ``()`` the final-loss threshold of a usable trial.
    """

    rows: np.ndarray
    gain: np.ndarray
    lr: np.ndarray
    epochs: np.ndarray
    depth: np.ndarray
    D0: np.ndarray
    D_final: np.ndarray
    D_pred: np.ndarray
    final_loss: np.ndarray
    diverged: np.ndarray
    converged: np.ndarray
    eta_h: np.ndarray
    eta_y: np.ndarray
    rates_source: np.ndarray
    nonlinearity: np.ndarray
    loss: np.ndarray
    departures: np.ndarray
    loss_threshold: np.ndarray


def departures(config: XorConfig) -> list[str]:
    """Where ``config`` departs from the paper's Table 2 and text (empty: none)."""
    out = []
    if config.nonlinearity is not None and config.nonlinearity != "leaky_relu":
        out.append(f"nonlinearity {config.nonlinearity} (the authors' notebook; the table says "
                   "leaky ReLU)")
    if config.loss == "mse":
        out.append("loss PyTorch nn.MSELoss() without the 0.5 (the authors' notebook; the text "
                   "says 0.5 * MSE): twice the effective learning rate")
    if "xor_low_weights" in config.rows:
        if config.low_gain is not None and config.low_gain != 0.7:
            out.append(f"low-weight gain {config.low_gain:g} (the table: 0.7; the authors' "
                       "'rich' setting: 0.85)")
        if config.low_epochs is not None and config.low_epochs != 1000:
            out.append(f"low-weight epochs {config.low_epochs} (the table: 1000; the authors' "
                       "'rich' setting: 3000)")
    if "xor_2_layers" in config.rows and config.two_layer_epochs is not None \
            and config.two_layer_epochs != 40000:
        out.append(f"2-layer epochs {config.two_layer_epochs} (the table: 40000; the authors' "
                   "settings file: 2000)")
    return out


def row_configs(config: XorConfig, *, optimizer: str = "sgd", lr: float | None = None):
    """Each row's TrainConfig; ``lr`` (e.g. for Adam) replaces every row's learning rate."""
    out = []
    for name in config.rows:
        base = tp.row_config(name)
        over = {"optimizer": optimizer, "loss": config.loss}
        if config.nonlinearity is not None:
            over["nonlinearity"] = config.nonlinearity
        epochs = None
        if name == "xor_low_weights":
            if config.low_gain is not None:
                over["gain"] = config.low_gain
            epochs = config.low_epochs
        if name == "xor_2_layers":
            epochs = config.two_layer_epochs
        if config.max_depth is not None and base.depth > config.max_depth:
            over["depth"] = config.max_depth
        cfg = tp.row_config(name, width=config.width, time_scale=config.time_scale,
                            epochs=epochs, **over)
        out.append(cfg if lr is None else cfg.replace(lr=lr))
    return out


def run(config: XorConfig, *, key, progress=cm.no_progress, cache=None, upstream=None,
        optimizer: str = "sgd", lr: float | None = None) -> Result:
    """Train the XOR rows, predict the distance matrices, compare.

    ``optimizer`` and ``lr`` (replacing every row's learning rate) are for E8 (Adam).
    """
    import jax

    from unijax import data

    cache = cache or cm.memory_cache()
    k_rates, k_train = jax.random.split(key)
    rates = st.get_rates(config.rates, upstream=upstream, key=k_rates,
                         progress=progress, cache=cache)
    ds = data.xor()
    cfgs = row_configs(config, optimizer=optimizer, lr=lr)
    runs = st.train_structure(cfgs, ds, seeds=config.seeds, key=k_train, progress=progress,
                           cache=cache)
    D0 = np.stack([st.sq_dists(r["H0"]) for r in runs])
    Df = np.stack([st.sq_dists(r["H"]) for r in runs])
    Dp = np.stack([st.predict(ds, r["H0"], r["F0"], rates) for r in runs])
    fl = np.stack([r["final_loss"] for r in runs])
    dv = np.stack([r["diverged"] for r in runs])
    conv = ~dv & np.isfinite(fl) & (fl <= config.loss_threshold)
    return Result(
        rows=np.asarray(config.rows, dtype=str),
        gain=np.asarray([c.gain for c in cfgs]), lr=np.asarray([c.lr for c in cfgs]),
        epochs=np.asarray([c.epochs for c in cfgs]), depth=np.asarray([c.depth for c in cfgs]),
        D0=D0, D_final=Df, D_pred=Dp, final_loss=fl, diverged=dv, converged=conv,
        eta_h=np.asarray(rates["eta_h"]), eta_y=np.asarray(rates["eta_y"]),
        rates_source=np.asarray(rates.get("source", "")),
        nonlinearity=np.asarray([c.nonlinearity for c in cfgs], dtype=str),
        loss=np.asarray(config.loss),
        departures=np.asarray(departures(config), dtype=str),
        loss_threshold=np.asarray(config.loss_threshold),
    )


def same_diff_ratio(D) -> np.ndarray:
    """Mean same-output over mean different-output squared distance, per leading index."""
    D = np.asarray(D)
    same = np.mean([D[..., i, j] for i, j in SAME], axis=0)
    diff = np.mean([D[..., i, j] for i, j in DIFF], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return same / diff


def merged_pairs(D) -> np.ndarray:
    """Number of same-output pairs with distance < MERGE_FRACTION x mean different distance."""
    D = np.asarray(D)
    diff = np.mean([D[..., i, j] for i, j in DIFF], axis=0)
    return np.sum([D[..., i, j] < MERGE_FRACTION * diff for i, j in SAME], axis=0)


def per_row(result) -> dict[str, dict]:
    out = {}
    for r, row in enumerate(np.asarray(result.rows)):
        use = np.asarray(result.converged[r])
        div = np.asarray(result.diverged[r])
        rs = [cm.pearson(st.offdiag(result.D_pred[r, s]), st.offdiag(result.D_final[r, s]))
              if use[s] else np.nan for s in range(use.size)]
        ratio_m = np.where(use, same_diff_ratio(result.D_final[r]), np.nan)
        ratio_p = np.where(use, same_diff_ratio(result.D_pred[r]), np.nan)
        ratio_0 = np.where(use, same_diff_ratio(result.D0[r]), np.nan)
        merged = np.where(use, merged_pairs(result.D_final[r]), -1)
        fl = np.asarray(result.final_loss[r], float)
        out[str(row)] = {
            "gain": float(result.gain[r]),
            "pearson_r": cm.spread(rs),
            "ratio_measured": cm.spread(ratio_m),
            "ratio_predicted": cm.spread(ratio_p),
            "ratio_initial": cm.spread(ratio_0),
            "merged_pairs_per_seed": [int(m) for m in merged[use]],
            "both_merged_fraction": float(np.mean(merged[use] == 2)) if use.any() else None,
            "used": int(use.sum()),
            "trials": int(use.size),
            "diverged": int(div.sum()),
            "not_converged": int((~div & ~use).sum()),
            "median_final_loss": (float(np.median(fl[~div])) if (~div).any() and
                                  np.isfinite(fl[~div]).any() else None),
        }
    return out


def unusable(entry: dict, threshold: float | None = None) -> str:
    """Why a row of :func:`per_row` has no usable trial (for the verdict)."""
    why = f"no usable trial: {entry['diverged']} of {entry['trials']} diverged, " \
          f"{entry['not_converged']} ended above the loss threshold"
    if threshold is not None:
        why += f" {threshold:g}"
    if entry.get("median_final_loss") is not None:
        why += f" (median final loss {cm.fmt(entry['median_final_loss'])})"
    return why


def _verdict(table, threshold: float | None = None) -> tuple[dict[str, cm.Verdict], list[str]]:
    """The verdict of each judged row (low weights: the equal-output pairs merge; high
    weights: the initial structure is kept) and the reasons, in words."""
    rows, why = {}, []
    low = table.get("xor_low_weights")
    if low is not None and not low["used"]:
        rows["low weights: pairs merge"] = cm.Verdict.NOT_REPRODUCED
        why.append(f"low weights: {unusable(low, threshold)}")
    elif low is not None:
        ok = (low["ratio_measured"]["mean"] < MERGED_RATIO
              and low["pearson_r"]["mean"] is not None and low["pearson_r"]["mean"] >= R_PASS)
        rows["low weights: pairs merge"] = cm.Verdict.of(bool(ok))
        why.append(f"low weights: same/different ratio {cm.fmt(low['ratio_measured']['mean'])} "
                   f"(< {MERGED_RATIO}?), r {cm.fmt(low['pearson_r']['mean'])} (>= {R_PASS}?)")
    high = table.get("xor_high_weights")
    if high is not None and not high["used"]:
        rows["high weights: structure kept"] = cm.Verdict.NOT_REPRODUCED
        why.append(f"high weights: {unusable(high, threshold)}")
    elif high is not None:
        rows["high weights: structure kept"] = cm.Verdict.of(
            bool(high["ratio_measured"]["mean"] > KEPT_RATIO))
        why.append(f"high weights: ratio {cm.fmt(high['ratio_measured']['mean'])} "
                   f"(> {KEPT_RATIO}?)")
    return rows, why


def _threshold(result) -> float:
    return float(result.loss_threshold)


def agreement(result) -> dict:
    table = per_row(result)
    rows, why = _verdict(table, _threshold(result))
    verdict = cm.combine_verdicts(rows.values())
    lines = []
    for k, v in table.items():
        if not v["used"]:
            lines.append(f"{k} (gain {v['gain']:g}): {unusable(v, _threshold(result))}")
            continue
        lines.append(
            f"{k} (gain {v['gain']:g}): r {cm.fmt_spread(v['pearson_r'])}, same/different ratio "
            f"measured {cm.fmt(v['ratio_measured']['mean'])} ± "
            f"{cm.fmt(v['ratio_measured']['std'], 2)}"
            f" vs predicted {cm.fmt(v['ratio_predicted']['mean'])} (initial "
            f"{cm.fmt(v['ratio_initial']['mean'])}), merged same-output pairs per seed "
            f"{v['merged_pairs_per_seed']} ({v['used']} of {v['trials']} trials used)")
    two = table.get("xor_2_layers")
    counter = None
    if two and two["used"]:
        counter = float(np.mean(np.asarray(two["merged_pairs_per_seed"]) == 1))
        lines.append(f"2-layer counter-example (exactly one pair merges) in {counter:.0%} of "
                     "seeds, where the theory predicts both merge")
    low = table.get("xor_low_weights")
    if low and low["used"]:
        headline = (f"low weights: same/different ratio {cm.fmt(low['ratio_measured']['mean'])}, "
                    f"r = {cm.fmt(low['pearson_r']['mean'])}, both equal-output pairs merged in "
                    f"{sum(m == 2 for m in low['merged_pairs_per_seed'])}/{low['used']} seeds")
    elif low:
        headline = f"low weights: {unusable(low, _threshold(result))}"
    else:
        headline = "low weights: not run"
    high = table.get("xor_high_weights")
    if high and high["used"]:
        headline += (f"; high weights: ratio {cm.fmt(high['ratio_measured']['mean'])}, no pair "
                     f"merged in {sum(m == 0 for m in high['merged_pairs_per_seed'])}/"
                     f"{high['used']} seeds")
    elif high:
        headline += "; high weights: no usable trial"
    div = np.asarray(result.diverged)
    conv = np.asarray(result.converged)
    deps = [str(d) for d in np.atleast_1d(result.departures)]
    notes = [f"Rates (eta_h, eta_y) = ({cm.fmt(result.eta_h)}, {cm.fmt(result.eta_y)}) 1/epoch: "
             f"{result.rates_source}."]
    return cm.make_agreement(
        headline=headline,
        measured="; ".join(lines) + ".",
        criterion=f"low weights: measured ratio < {MERGED_RATIO} and r >= {R_PASS}; high "
        f"weights: ratio > {KEPT_RATIO}; a judged row without a usable trial is NOT "
        "REPRODUCED (" + "; ".join(why) + ")",
        verdict=verdict,
        rows=rows,
        departures=deps,
        figures={"per_row": table, "two_layer_counterexample_fraction": counter,
                 "rates": {"eta_h": float(result.eta_h), "eta_y": float(result.eta_y),
                           "source": str(result.rates_source)},
                 "loss": str(result.loss),
                 "nonlinearity": [str(x) for x in np.atleast_1d(result.nonlinearity)],
                 "departures": deps},
        counts={"trials": int(div.size), "diverged": int(div.sum()),
                "not_converged": int((~div & ~conv).sum()), "used": int(conv.sum())},
        notes=notes,
    )


def plot(result, outdir, *, stem: str = "xor_distance_matrices") -> list[Path]:
    table = per_row(result)
    R = len(result.rows)
    labels = ["(0,0)→0", "(0,1)→1", "(1,0)→1", "(1,1)→0"]
    fig, axes = plots.new_figure(R, 3, size=(3.2, 2.9))
    for r, row in enumerate(np.asarray(result.rows)):
        use = np.asarray(result.converged[r])
        sel = use if use.any() else ~np.asarray(result.diverged[r])
        if not sel.any():
            for c in range(3):
                axes[r, c].axis("off")
            continue
        meas = np.mean(result.D_final[r][sel], axis=0)
        pred = np.mean(result.D_pred[r][sel], axis=0)
        init = np.mean(result.D0[r][sel], axis=0)
        plots.matrix(axes[r, 0], init, title=f"{row}: initial (network)", ticks=labels)
        plots.matrix(axes[r, 1], meas, title=f"final (network), ratio "
                     f"{cm.fmt(table[str(row)]['ratio_measured']['mean'], 2)}", ticks=labels)
        plots.matrix(axes[r, 2], pred, title=f"final (theory), r = "
                     f"{cm.fmt(table[str(row)]['pearson_r']['mean'], 2)}", ticks=labels)
    paths = plots.save(fig, outdir, stem)

    fig, axes = plots.new_figure(1, 1, size=(4.2, 3.4))
    ax = axes[0, 0]
    for r, row in enumerate(np.asarray(result.rows)):
        use = np.asarray(result.converged[r])
        p = np.concatenate([st.offdiag(result.D_pred[r, s]) for s in np.flatnonzero(use)]) \
            if use.any() else np.array([])
        m = np.concatenate([st.offdiag(result.D_final[r, s]) for s in np.flatnonzero(use)]) \
            if use.any() else np.array([])
        ax.scatter(p, m, s=12, label=str(row), color=f"C{r}")
    allv = [v for v in (result.D_pred, result.D_final)]
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in allv])
    if vals.size:
        lo, hi = max(vals[vals > 0].min(), 1e-8) if (vals > 0).any() else 1e-8, vals.max()
        ax.plot([lo, hi], [lo, hi], label="identity", **plots.THEORY_STYLE)
        ax.set_xscale("log")
        ax.set_yscale("log")
    plots.label(ax, "theory: final squared hidden distance (a.u.)",
                "network: final squared hidden distance (a.u.)", "XOR pairs, all seeds")
    ax.legend(fontsize=6)
    paths += plots.save(fig, outdir, stem + "_scatter")
    return paths
