"""The verdicts and the report built from them, on synthetic results (no training: seconds).

Each test states a rule of the verdict vocabulary (``experiments._common.Verdict``) or of the
report and feeds it the numbers that would break it.
"""

import json

import numpy as np
import pytest

from unijax import report
from unijax.experiments import _common as cm
from unijax.experiments import _twopoint as tp
from unijax.experiments import e1_dynamics as e1
from unijax.experiments import e2_weight_scale as e2
from unijax.experiments import e7_depth as e7
from unijax.results._store import to_jsonable

V = cm.Verdict


def e1_result(r2: dict[str, tuple], r2_authors: dict[str, tuple | None], seeds: int = 3):
    """An E1 result whose every seed of row ``k`` has R^2 ``r2[k]`` (h, y, w), and the
    authors' method ``r2_authors[k]`` (None: not run on that row)."""
    rows = list(r2)
    R, S, T, P = len(rows), seeds, 20, 10
    shape = (R, S)
    r2a = np.stack([np.broadcast_to(np.asarray(r2[k], float), (S, 3)) for k in rows])
    ref = np.stack([np.broadcast_to(np.full(3, np.nan) if r2_authors[k] is None
                                    else np.asarray(r2_authors[k], float), (S, 3))
                    for k in rows])
    ok = np.all(r2a >= 0.9, axis=-1)
    return e1.Result(
        rows=np.asarray(rows), lr=np.full(R, 0.01), width=np.full(R, 16),
        depth=np.full(R, 4), dx2=np.asarray(1.0), dy2=np.asarray(0.5),
        loss=np.ones((R, S, T)), hyw=np.ones((R, S, T, 3)), diverged=np.zeros(shape, bool),
        epochs_fit=np.arange(P), eta_h=np.full(shape, 0.01), eta_y=np.full(shape, 0.1),
        fit_ok=np.ones(shape, bool), converged=np.ones(shape, bool), r2=r2a,
        z_fit=np.ones((R, S, P, 3)), eta_mean=np.full(shape, 0.1),
        r2_loss=np.full(shape, 0.99), loss_fit=np.ones((R, S, P)),
        loss_converged=np.ones(shape, bool),
        fit_initial=np.asarray(False), fit_status=np.where(ok, 0, 1).astype(np.int32),
        layer=np.full(R, 1), departures=np.asarray([], dtype=str), r2_authors=ref,
        eta_authors=np.full((R, S, 2), np.nan),
    )


def test_e1_verdicts_per_row_and_as_authors_counted_apart():
    r = e1_result(
        {"default": (0.99, 0.99, 0.96),  # meets the criterion
         "tanh": (0.99, 0.99, 0.60),  # misses; the authors' method misses equally
         "relu": (0.99, 0.99, 0.60),  # misses; the authors' method does much better
         "low_initial_weights": (0.98, 0.99, -1.8),  # negative R^2, authors' too
         "very_high_initial_weights": (-16.0, 0.9, 0.1)},  # shown, not judged
        {"default": None, "tanh": (0.99, 0.99, 0.61), "relu": (0.99, 0.99, 0.97),
         "low_initial_weights": (0.98, 0.99, -1.8),
         "very_high_initial_weights": (-29.0, -0.2, -0.6)})
    agr = e1.agreement(r)
    json.dumps(to_jsonable(agr))
    assert agr["rows"] == {"default": "REPRODUCED", "tanh": "AS AUTHORS",
                           "relu": "NOT REPRODUCED", "low_initial_weights": "AS AUTHORS",
                           "very_high_initial_weights": "NOT TESTED"}
    assert agr["verdict"] == "NOT REPRODUCED" and agr["passed"] is False
    # The headline names what failed and what fell back to AS AUTHORS, with the counts.
    h = agr["headline"]
    assert "1 REPRODUCED" in h and "2 AS AUTHORS (tanh, low_initial_weights)" in h
    assert "1 NOT REPRODUCED (relu)" in h
    # The table: one line per row, unijax's and the authors' R^2 side by side, the verdict.
    t = agr["table"]
    assert t["columns"][:3] == ["row", "h unijax", "h authors"]
    line = dict(zip(t["columns"], t["rows"][0], strict=True))
    # The authors' method is run only where needed: a REPRODUCED row says why it was not.
    assert line["w authors"] == "not run (reproduced)" and line["verdict"] == "REPRODUCED"
    assert [x[-1] for x in t["rows"]] == list(agr["rows"].values())


def test_e1_a_negative_r2_is_never_reproduced_and_no_reference_is_not_as_authors():
    # Without the authors' method a row below the threshold cannot be AS AUTHORS.
    agr = e1.agreement(e1_result({"default": (0.99, 0.99, -0.5)}, {"default": None}))
    assert agr["rows"] == {"default": "NOT REPRODUCED"}
    # A negative R^2 is below any threshold: at best AS AUTHORS, never REPRODUCED.
    for w in (-0.01, -3.0):
        agr = e1.agreement(e1_result({"default": (0.99, 0.99, w)},
                                     {"default": (0.99, 0.99, w)}))
        assert agr["rows"] == {"default": "AS AUTHORS"} and agr["passed"] is False
    only_good = e1.agreement(e1_result({"default": (0.99, 0.97, 0.951)}, {"default": None}))
    assert only_good["verdict"] == "REPRODUCED" and only_good["passed"] is True


def test_combine_verdicts_and_counts():
    assert cm.combine_verdicts([V.REPRODUCED, V.AS_AUTHORS]) is V.AS_AUTHORS
    assert cm.combine_verdicts([V.AS_AUTHORS, V.NOT_REPRODUCED]) is V.NOT_REPRODUCED
    assert cm.combine_verdicts([V.NOT_TESTED]) is V.NOT_TESTED
    assert cm.combine_verdicts([V.NOT_TESTED, V.REPRODUCED]) is V.REPRODUCED
    rows = {"a": "REPRODUCED", "b": "AS AUTHORS", "c": "AS AUTHORS", "d": "NOT TESTED"}
    assert cm.verdict_counts(rows) == {"REPRODUCED": 1, "AS AUTHORS": 2, "NOT TESTED": 1}
    assert cm.verdict_rows_text(rows) == (
        "rows: 1 REPRODUCED, 2 AS AUTHORS (b, c), 1 NOT TESTED (d)")


def test_e2_plateau_is_measured_from_the_distance_loss_peak():
    t = np.arange(3000.0)
    tau = 100.0
    # Exponential decay after a transient rise (0.055 -> 0.09 by epoch 145), as at gain 1.4.
    rise = 0.055 + (0.09 - 0.055) * np.minimum(t / 145.0, 1.0)
    transient = np.where(t <= 145, rise, 0.09 * np.exp(-(t - 145) / tau))
    # Measured from t = 0 the rise reads as a plateau; from the peak, an exponential decay.
    assert tp.plateau_index(transient) > 1.5
    assert e2.plateau_from_peak(transient) == pytest.approx(1.0, abs=0.02)
    # A real plateau (500 epochs, then a sigmoidal drop) stays long measured from its peak.
    plateau = 0.06 / (1 + np.exp((t - 500) / 20.0))
    assert e2.plateau_from_peak(plateau) > 5
    # Never below a quarter of the peak: undefined.
    assert np.isnan(e2.plateau_from_peak(np.linspace(1.0, 0.5, 100)))


def _per_gain(plateaus, r2_min):
    return {g: {"plateau_network": cm.spread([p] if p is not None else []),
                "r2_min_median": r} for g, p, r in zip(("0.9", "1.1", "1.3", "1.4"),
                                                        plateaus, r2_min, strict=True)}


def test_e2_transition_and_breakdown_are_judged_apart():
    tr = ["0.9", "1.1", "1.3"]
    # Plateau falls over 0.9-1.3; the fit is worst at 1.4: both claims hold.
    ok = e2.judge(_per_gain([24, 5.8, 2.4, 1.0], [0.9, 0.95, 0.5, -19]), tr, "1.4")
    assert ok["transition"]["verdict"] is V.REPRODUCED
    assert ok["breakdown"]["verdict"] is V.REPRODUCED
    # A "plateau" at 1.4 no longer counts against (or for) the transition...
    assert e2.judge(_per_gain([24, 5.8, 2.4, 30], [0.9, 0.95, 0.5, -19]), tr,
                    "1.4")["transition"]["verdict"] is V.REPRODUCED
    # ... and a breakdown row that fits as well as the others is NOT REPRODUCED.
    same = e2.judge(_per_gain([24, 5.8, 2.4, 1.0], [0.97, 0.98, 0.97, 0.99]), tr, "1.4")
    assert same["breakdown"]["verdict"] is V.NOT_REPRODUCED
    flat = e2.judge(_per_gain([3, 5.8, 2.4, 1.0], [0.9, 0.95, 0.5, -19]), tr, "1.4")
    assert flat["transition"]["verdict"] is V.NOT_REPRODUCED
    # A gain without a usable trial: never a verdict on the gains that happened to work.
    gap = e2.judge(_per_gain([24, None, 2.4, 1.0], [0.9, 0.95, 0.5, -19]), tr, "1.4")
    assert gap["transition"]["verdict"] is V.NOT_REPRODUCED and "1.1" in gap["transition"]["why"]
    one = e2.judge(_per_gain([24, 5.8, 2.4, 1.0], [0.9, 0.95, 0.5, -19]), ["0.9"], "1.4")
    assert one["transition"]["verdict"] is V.NOT_TESTED


def e7_result(r2_layer: np.ndarray, status_layer: np.ndarray, S: int = 2):
    """An E7 result with ``L = len(r2_layer)`` layers, every trial of layer ``l`` with the
    mean R^2 ``r2_layer[l]`` and rates rising (eta_h) and falling (eta_y) with depth."""
    L = len(r2_layer)
    layers = np.arange(L)
    eta_h = np.broadcast_to(0.001 * (1 + layers), (S, L)).copy()
    eta_y = np.broadcast_to(0.1 / (1 + layers), (S, L)).copy()
    eta_h[1] *= 1.1
    r2 = np.broadcast_to(np.asarray(r2_layer, float)[None, :, None], (S, L, 3)).copy()
    return e7.Result(
        layers=layers, maps=layers + 1, hyw=np.ones((S, L, 10, 3)),
        diverged=np.zeros(S, bool), eta_h=eta_h, eta_y=eta_y, r2=r2,
        fit_ok=np.ones((S, L), bool),
        converged=np.broadcast_to(np.asarray(status_layer) == 0, (S, L)).copy(),
        h0=np.broadcast_to(0.7 ** (2.0 * (layers + 1)), (S, L)).copy(),
        depth_gain=np.asarray(0.7), h0_theory=0.7 ** (2.0 * (layers + 1)),
        dx2=np.asarray(1.0), sse=np.ones((S, L)),
        stderr_eta_h=np.full((S, L), 1e-5), stderr_eta_y=np.full((S, L), 1e-3),
    )


def test_e7_rates_for_every_layer_with_a_good_fit_identified_or_not():
    L = 8
    r2 = np.linspace(0.91, 0.999, L)
    status = np.zeros(L, int)
    status[5:] = 2  # NOT_IDENTIFIED: still good fits (the layers 16-19)
    r = e7_result(r2, status)
    t = e7.per_layer(r)
    assert np.all(np.isfinite(t["eta_h"])) and np.all(t["good_fits"] == 2)
    # Mean over the two trials, and a standard error that is at least the spread's.
    np.testing.assert_allclose(t["eta_h"][-1], 0.001 * L * 1.05)
    assert t["eta_h_se"][-1] >= np.std(r.eta_h[:, -1], ddof=1) / np.sqrt(2) - 1e-15
    agr = e7.agreement(r)
    assert agr["verdict"] == "REPRODUCED", agr["headline"]
    assert len(agr["table"]["rows"]) == L and "n/a" not in agr["table"]["rows"][-1][3]
    # A layer whose fit is poor (R^2 < MIN_R2) gives no rate; the trend is judged over the
    # later layers with a good fit and names those without...
    r2[-1] = 0.5
    gap = e7.agreement(e7_result(r2, status))
    assert gap["verdict"] == "REPRODUCED" and "no good fit at layer(s) [7]" in gap["headline"]
    assert gap["table"]["rows"][-1][3] == "n/a"
    # ... but never on fewer than half of them (never a trend on the few that happened to fit).
    r2[-2] = 0.5
    r2[-3] = 0.5
    bad = e7.agreement(e7_result(r2, status))
    assert bad["verdict"] == "NOT REPRODUCED"
    assert "a good fit at only 1 of the 4 later layers" in bad["headline"]


def test_e7_says_where_the_fit_error_is_lowest():
    u = np.array([1.0, 0.5, 0.2, 0.1, 0.3, 0.8])
    assert "U-shaped" in e7.shape_text(u, "x") and "at layer 3" in e7.shape_text(u, "x")
    assert "lowest at the last layer" in e7.shape_text(np.array([3.0, 2, 1, 0]), "x")


def test_report_shows_the_verdict_the_row_counts_and_the_table():
    agr = e1.agreement(e1_result({"default": (0.99, 0.99, 0.96), "tanh": (0.99, 0.99, 0.6)},
                                 {"default": None, "tanh": (0.99, 0.99, 0.6)}))
    assert report.verdict_of(agr) == "AS AUTHORS"
    assert report.row_counts_text(agr) == "1 REPRODUCED, 1 AS AUTHORS"
    # Results stored before verdicts existed: from "passed".
    assert report.verdict_of({"passed": True}) == "REPRODUCED"
    assert report.verdict_of({"passed": None}) == "NOT TESTED"
    assert report.row_counts_text({"passed": False}) == "-"
    text = report._paragraph("E1", {"title": "t", "claim": "c", "agreement": agr})
    assert "*Verdict:* **AS AUTHORS**" in text
    assert "| row | h unijax | h authors |" in text and "| tanh | 0.99 | 0.99 |" in text
    assert "*Departures (from the paper's text or the authors' code):* none." in text
    line = report.summary_line("E1", agr)
    assert line.startswith("| E1 | AS AUTHORS | 1 REPRODUCED, 1 AS AUTHORS | rows: 1 REPRODUCED, ")
    md = report.markdown_table({"columns": ["a", "b"], "rows": [["x|y", "1"]]})
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


def test_counts_are_worded_with_their_units():
    text = report._counts_text({"trials": 4, "diverged": 0, "layer_fits": 80,
                                "layer_fits_failed": 7, "used": 4})
    assert text == "trials: 4 in all, 4 used; layer fits: 80; layer fits failed: 7"
