"""E1's fits against the authors' fitting method, on identical network trajectories.

    python benchmarks/bench_e1_fit.py                                  # quick sizes, ~5 min
    python benchmarks/bench_e1_fit.py --rows default,dropout --seeds 2 --width 500

Trains the Table 1 rows with ``unijax.train`` exactly as ``unijax run E1`` does at the chosen
preset's sizes (``--preset``, default ``quick``; ``--width`` overrides every row's width), then
fits the same trajectories three ways and prints R^2 of h, y, w per trial and the per-row mean:

(a) the authors' method (``unijax.authors.fit_one``: SSE of h, y, w over every epoch, the ODE from
    the measured first epoch with SciPy's Radau, 200-point scale grid, then BFGS);
(b) ``unijax.fit.fit_rates`` as E1 runs it (the same objective on ``FIT_POINTS`` sampled epochs,
    Levenberg-Marquardt), its status;
(c) ``fit_rates(fit_initial=True)`` (the ODE's starting state fitted too).

R^2 of (a) and (b) are both evaluated over every epoch with one tight Radau solve (rtol 1e-8)
from the measured first epoch, so that the two methods compare on equal terms; (c)'s is its
own (on the sampled epochs, from its fitted start). ``--json`` writes every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from bench_fit import DX2, DY2, scipy_fit  # noqa: E402

from unijax import authors, fit, train  # noqa: E402
from unijax.experiments import _rows  # noqa: E402
from unijax.experiments import _twopoint as tp  # noqa: E402
from unijax.experiments import e1_dynamics as e1  # noqa: E402


def r2_all_epochs(Z, eta_h, eta_y):
    """R^2 of h, y, w over every epoch of ``Z (T, 3)`` for the ODE from ``Z[0]`` (one tight
    Radau solve, ``unijax.authors.r2_of_rates``; NaN if the rates are not finite)."""
    return authors.r2_of_rates(Z, eta_h, eta_y, dx2=DX2, dy2=DY2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick", choices=sorted(e1.presets))
    ap.add_argument("--rows", default=",".join(tp.TABLE1))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--width", type=int, default=None, help="every row's width (and lr rescaled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if DX2 != 1.0 or DY2 != 0.5:
        raise ValueError("bench_fit's SciPy method is written for E1's dx2 = 1, dy2 = 0.5")

    cfg = dataclasses.replace(e1.presets[args.preset], rows=tuple(args.rows.split(",")),
                              seeds=args.seeds, seed=args.seed)
    if args.width is not None:
        cfg = dataclasses.replace(cfg, size=dataclasses.replace(
            cfg.size, width=args.width, narrow_width=None, conv_width=args.width))
    key = jax.random.PRNGKey(cfg.seed)
    print(f"== E1 preset {args.preset!r}, {args.seeds} seeds, jax {jax.__version__} "
          f"({jax.default_backend()})")
    out = {"args": vars(args), "rows": {}}
    names = ("scipy", "unijax", "unijax_fit_initial")
    for i, c in enumerate(_rows.row_configs(cfg)):
        t = time.perf_counter()
        r = train.train(c, seeds=cfg.seeds, key=jax.random.fold_in(key, i))
        Z = np.asarray(r.hyw())[0].astype(np.float64)
        div = np.asarray(r.diverged)[0]
        t_train = time.perf_counter() - t
        ep = tp.sample_epochs(Z.shape[1])
        ok = ~div
        u = fit.fit_rates(ep.astype(float), Z[ok][:, ep], dx2=DX2, dy2=DY2)
        ui = fit.fit_rates(ep.astype(float), Z[ok][:, ep], dx2=DX2, dy2=DY2, fit_initial=True)
        rows = {n: [] for n in names}
        status = [fit.FitStatus(int(s)).name for s in np.asarray(u.status)]
        for j, Zi in enumerate(Z[ok]):
            x, _, _ = scipy_fit(np.arange(float(Zi.shape[0])), Zi)
            rows["scipy"].append(r2_all_epochs(Zi, *x))
            rows["unijax"].append(r2_all_epochs(Zi, float(u.eta_h[j]), float(u.eta_y[j])))
            rows["unijax_fit_initial"].append(np.asarray(ui.r2)[j])
        mean = {n: np.nanmean(np.array(v), axis=0) if v else np.full(3, np.nan)
                for n, v in rows.items()}
        print(f"{c.name:30s} width {c.width:3d} depth {c.depth:2d} lr {c.lr:.3g} "
              f"(trained {t_train:.0f} s, {int(div.sum())} diverged)")
        for n in names:
            per = " ".join(f"{w:6.2f}" for w in np.array(rows[n])[:, 2]) if rows[n] else ""
            print(f"    {n:20s} mean R^2 h/y/w {mean[n][0]:6.3f} {mean[n][1]:6.3f} "
                  f"{mean[n][2]:6.3f}   w per seed: {per}")
        print(f"    unijax status: {', '.join(status)}", flush=True)
        out["rows"][c.name] = {
            "width": c.width, "depth": c.depth, "lr": c.lr, "diverged": int(div.sum()),
            "status": status,
            **{n: {"r2": np.array(v).tolist(), "mean": mean[n].tolist()} for n, v in rows.items()},
        }
    med = {n: np.nanmedian([out["rows"][r][n]["mean"][2] for r in out["rows"]]) for n in names}
    print("== median over rows of the seed-mean w R^2: "
          + ", ".join(f"{n} {v:.3f}" for n, v in med.items()))
    out["median_w_r2"] = {n: float(v) for n, v in med.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
