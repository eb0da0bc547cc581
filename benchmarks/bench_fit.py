"""Fitting the effective rates: the original SciPy method against ``unijax.fit.fit_rates``.

    python benchmarks/bench_fit.py                    # ~1-2 min on 2 CPU cores
    python benchmarks/bench_fit.py --scipy-trials 5 --reps 7 --json out.json

On one set of synthetic trajectories (``--n-trials`` 64 trials of ``--n-epochs`` 6000 epochs,
default-network-like rates and initial states drawn at random, ``--noise`` 1% multiplicative
noise), it times and scores:

(a) the original method re-implemented with SciPy (docs/theory.md section 11): SSE of h, y, w with
    ``solve_ivp`` (Radau; SciPy's default tolerances unless ``--scipy-rtol/--scipy-atol``)
    from the measured first point; the best of 200 log-spaced scales (1e-6 .. 1e2) of
    ``(eta_h, eta_y) = s (ratio, 1)``, ``ratio = h[-1]^2 / (dx2 dy2)``; then BFGS with
    finite-difference gradients (``unijax.authors.fit_one``, whose ``LeanRadau`` is SciPy's
    Radau calling LAPACK directly: the same numbers, faster than stock Radau, so the baseline
    is a little faster than what the paper's code ran; stock Radau is timed on the same
    trials, taking turns, and its rates checked equal). One trial at a time, on the first
    ``--scipy-trials`` trials (each takes seconds);
(b) ``fit_rates`` on all trials in one compiled call (compilation timed apart; median of
    ``--reps`` runs), with the default options (the same objective as (a)) and with
    ``fit_initial=True``.

Wall and CPU time per fit are both printed: ``fit_rates`` uses both cores of the machine
(chunks of trials from threads), the SciPy method one.

Accuracy: relative error of eta_h, eta_y against the planted rates, and the SSE of section 11
of each method's rates, all evaluated with the same tight solve (``theory.solve``, rtol 1e-10)
so that the numbers compare. Also: one forward solve and one gradient of the SSE (jitted,
after compilation). Target: >= 300x less wall time per fit than (a) at equal or better
accuracy. The machine (CPU, cores, load), JAX version and backend are printed; the machine
may be shared, so the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the suite's trace counter

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import scipy  # noqa: E402
from _compiles import count_traces, fit_programs  # noqa: E402
from _machine import cpu_model  # noqa: E402

from unijax import authors, fit, theory  # noqa: E402
from unijax.fit import _args as _fit_args  # noqa: E402
from unijax.fit import _model as _fit_model  # noqa: E402

DX2, DY2 = 1.0, 0.5  # the paper's two-point data (docs/experiments.md E1)


# ---------------------------------------------------------------------------------------------
# Machine and timing helpers
# ---------------------------------------------------------------------------------------------


def machine() -> dict:
    return dict(
        cpu=cpu_model(),
        cores=os.cpu_count(),
        jax=jax.__version__,
        backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        dtype="float64",
        python=platform.python_version(),
        scipy=scipy.__version__,
        loadavg_start=list(os.getloadavg()),
    )


def timed(fn, *args, reps: int, cpu: list | None = None):
    """(first call seconds, list of later call seconds, last output), blocking on results;
    process CPU seconds of the later calls are appended to ``cpu`` if given."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    runs = []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return first, runs, out


# ---------------------------------------------------------------------------------------------
# Synthetic trajectories
# ---------------------------------------------------------------------------------------------


def make_data(n_trials: int, n_epochs: int, noise: float, seed: int):
    """Planted rates and initial states like a default network's (plateau, then the jump,
    completed within the recording), trajectories by ``theory.solve`` at its tight default
    tolerances, then multiplicative noise. Draws whose solve fails or that pass close to the
    saddle at h = 0 are drawn again."""
    rng = np.random.default_rng(seed)
    ts = np.arange(float(n_epochs))
    scale = 6000.0 / n_epochs  # same continuous-time horizon for other lengths
    solve = jax.jit(
        lambda z0, eh, ey: theory.integrate(z0, ts, eta_h=eh, eta_y=ey, dx2=DX2, dy2=DY2)
    )
    rows = []
    while len(rows) < n_trials:
        eh, ey = scale * 10 ** rng.uniform(np.log10(1.5e-3), np.log10(6e-3), 2)
        h0 = 10 ** rng.uniform(-2.5, -0.5)
        y0 = h0 * rng.uniform(0.02, 0.5)
        w0 = y0 - rng.uniform(-0.3, 1.0) * np.sqrt(y0 * DY2)
        sol = solve(jnp.array([h0, y0, w0]), eh, ey)
        ys = np.asarray(sol.ys)
        if not bool(sol.ok) or ys[:, 0].min() < 0.2 * h0:
            continue
        rows.append((eh, ey, ys))
    eta_h = np.array([r[0] for r in rows])
    eta_y = np.array([r[1] for r in rows])
    clean = np.stack([r[2] for r in rows])
    Z = clean * (1.0 + noise * rng.standard_normal(clean.shape))
    Z[:, 0, 0] = np.abs(Z[:, 0, 0])
    return ts, Z, eta_h, eta_y


def sse_reference(ts, Z, eta_h, eta_y):
    """Section 11's SSE of given rates, from the measured first point, with one tight solve."""
    f = jax.jit(
        jax.vmap(
            lambda z, a, b: jnp.sum(
                (
                    theory.solve(
                        z[0], ts, eta_h=a, eta_y=b, dx2=DX2, dy2=DY2, rtol=1e-10, atol=1e-12
                    )
                    - z
                )
                ** 2
            )
        )
    )
    return np.asarray(f(jnp.asarray(Z), jnp.asarray(eta_h), jnp.asarray(eta_y)))


# ---------------------------------------------------------------------------------------------
# (a) The original method with SciPy
# ---------------------------------------------------------------------------------------------


def scipy_fit(ts, Zi, rtol=1e-3, atol=1e-6, stock_radau=False):
    """The authors' method (``unijax.authors.fit_one``: a grid of 200 scales of (ratio, 1), the
    best kept, then BFGS with finite differences) on epochs ``ts = 0 .. n - 1``; with SciPy's
    own Radau when ``stock_radau``."""
    if not np.array_equal(ts, np.arange(len(ts))):
        raise ValueError("the authors' method fits every epoch 0 .. n_epochs - 1")
    f = authors.fit_one(Zi, dx2=DX2, dy2=DY2, rtol=rtol, atol=atol, stock_radau=stock_radau)
    return np.array([f.eta_h, f.eta_y]), f.n_solves, f


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def rel_err(est, truth):
    return np.abs(np.asarray(est) / truth - 1.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-trials", type=int, default=64)
    ap.add_argument("--n-epochs", type=int, default=6000)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--scipy-trials", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scipy-rtol", type=float, default=1e-3, help="solve_ivp's default")
    ap.add_argument("--scipy-atol", type=float, default=1e-6, help="solve_ivp's default")
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--md", type=Path, default=None,
                    help="write the results as a markdown fragment here (the docs include "
                         "docs/benchmarks/fit.md)")
    args = ap.parse_args(argv)

    info = machine()
    print("== machine")
    for k, v in info.items():
        print(f"  {k}: {v}")

    ts, Z, eta_h, eta_y = make_data(args.n_trials, args.n_epochs, args.noise, args.seed)
    print(
        f"== data: {args.n_trials} trials x {args.n_epochs} epochs, {args.noise:.0%} "
        f"multiplicative noise; eta_h in [{eta_h.min():.2g}, {eta_h.max():.2g}], "
        f"eta_y in [{eta_y.min():.2g}, {eta_y.max():.2g}] 1/epoch; dx2={DX2}, dy2={DY2}"
    )
    sse_true = sse_reference(ts, Z, eta_h, eta_y)
    out: dict = dict(machine=info, args=vars(args))

    # (a) SciPy ------------------------------------------------------------------------------
    k = min(args.scipy_trials, args.n_trials)
    sp_rates, sp_times, sp_cpu, sp_solves, stock_times = [], [], [], [], []
    for i in range(k):
        # Stock Radau (the paper's code) and LeanRadau take turns on each trial; the same
        # numbers either way, checked here.
        t = time.perf_counter()
        x_stock, _, _ = scipy_fit(ts, Z[i], args.scipy_rtol, args.scipy_atol, stock_radau=True)
        stock_times.append(time.perf_counter() - t)
        t, c = time.perf_counter(), time.process_time()
        x, n_solves, _ = scipy_fit(ts, Z[i], args.scipy_rtol, args.scipy_atol)
        sp_times.append(time.perf_counter() - t)
        sp_cpu.append(time.process_time() - c)
        if not np.array_equal(x, x_stock):
            raise AssertionError(f"trial {i}: LeanRadau {x} != stock Radau {x_stock}")
        sp_rates.append(x)
        sp_solves.append(n_solves)
        print(f"  scipy trial {i}: {sp_times[-1]:.2f} s ({stock_times[-1]:.2f} s with stock "
              f"Radau), {n_solves} Radau solves", flush=True)
    sp_rates = np.array(sp_rates)
    sp_sse = sse_reference(ts, Z[:k], sp_rates[:, 0], sp_rates[:, 1])
    sp_err = np.stack([rel_err(sp_rates[:, 0], eta_h[:k]), rel_err(sp_rates[:, 1], eta_y[:k])])
    sp_per_fit = float(np.median(sp_times))
    sp_cpu_per_fit = float(np.median(sp_cpu))

    # (b) fit_rates ------------------------------------------------------------------------
    rows = {}
    for name, kw in [("fit_rates", {}), ("fit_rates(fit_initial)", dict(fit_initial=True))]:

        def run(Z, kw=kw):
            return fit.fit_rates(ts, Z, dx2=DX2, dy2=DY2, return_trajectory=False, **kw)

        cpu = []
        with count_traces() as traced:
            first, runs, res = timed(run, Z, reps=args.reps, cpu=cpu)
        # The fit is two programs (optimizer, assessment) since 61026bd; counting "_fit_batch",
        # which the CPU path no longer traces, checked nothing.
        assert fit_programs(traced) <= 1, f"recompiled between repetitions: {dict(traced)}"
        conv = np.asarray(res.converged)
        err = np.stack([rel_err(res.eta_h, eta_h), rel_err(res.eta_y, eta_y)])
        sse = sse_reference(ts, Z, np.asarray(res.eta_h), np.asarray(res.eta_y))
        med = float(np.median(runs))
        rows[name] = dict(
            compile_s=first - med,
            run_median_s=med,
            run_min_s=float(min(runs)),
            per_fit_s=med / args.n_trials,
            cpu_per_fit_s=float(np.median(cpu)) / args.n_trials,
            converged=int(conv.sum()),
            iters_max=int(np.max(res.n_iters)),
            iters_median=float(np.median(res.n_iters)),
            err_median=np.median(err[:, conv], axis=1).tolist(),
            err_max=np.max(err[:, conv], axis=1).tolist(),
            err_first_k=err[:, :k].max(axis=1).tolist(),
            sse_over_true_median=float(np.median(sse / sse_true)),
            sse_over_true_first_k=(sse[:k] / sse_true[:k]).tolist(),
            stderr_z_rms=float(
                np.sqrt(
                    np.mean(
                        (
                            (np.stack([res.eta_h, res.eta_y]) - np.stack([eta_h, eta_y]))
                            / np.stack([res.stderr_eta_h, res.stderr_eta_y])
                        )[:, conv]
                        ** 2
                    )
                )
            ),
        )

    # One forward solve and one gradient (one trajectory, jitted, after compilation) --------
    z0 = jnp.asarray(Z[0, 0])
    lr = jnp.log(jnp.array([eta_h[0], eta_y[0]]))
    tsj, Zj = jnp.asarray(ts), jnp.asarray(Z[0])
    opts = _fit_args.SolveOpts(1e-7, 1e-9, 512)
    trial = _fit_model.Trial(tsj, Zj, DX2, DY2)

    def sse_theory(lr, **kw):
        ys = theory.solve(
            z0, tsj, eta_h=jnp.exp(lr[0]), eta_y=jnp.exp(lr[1]), dx2=DX2, dy2=DY2, **kw
        )
        return jnp.sum((ys - Zj) ** 2)

    def sse_fit(lr):
        return jnp.sum((_fit_model.model(lr, trial, opts)[0] - Zj) ** 2)

    singles = {
        "forward solve, theory.solve (Tsit5, rtol 1e-8, dense output at 6000 epochs)": jax.jit(
            sse_theory
        ),
        "forward solve, fit's solve (Tsit5, rtol 1e-7, steps + quintic Hermite)": jax.jit(sse_fit),
        "gradient of SSE, forward mode through the fit's solve (jacfwd, 2 tangents)": jax.jit(
            jax.jacfwd(sse_fit)
        ),
        "gradient of SSE, reverse mode through theory.solve (jax.grad, checkpointed)": jax.jit(
            jax.grad(sse_theory)
        ),
        "gradient of SSE, forward mode through theory.solve (ForwardMode, jacfwd)": jax.jit(
            jax.jacfwd(lambda lr: sse_theory(lr, adjoint=diffrax.ForwardMode()))
        ),
    }
    single_times = {}
    for name, f in singles.items():
        first, runs, _ = timed(f, lr, reps=max(args.reps, 10))
        single_times[name] = dict(compile_s=first - float(np.median(runs)), run_s=float(min(runs)))

    info["loadavg_end"] = list(os.getloadavg())

    # Report --------------------------------------------------------------------------------
    print(
        f"\n== (a) original method, SciPy (Radau rtol {args.scipy_rtol:g}, atol "
        f"{args.scipy_atol:g}; grid of 200 + BFGS with finite differences), one trial at a time"
    )
    print(
        f"  trials fitted: {k}; per fit: wall median {sp_per_fit:.2f} s, CPU {sp_cpu_per_fit:.2f} s"
    )
    print(f"  Radau solves per fit: {sp_solves}")
    print(f"  stock Radau (the paper's code), same rates: wall median "
          f"{float(np.median(stock_times)):.2f} s per fit, "
          f"{float(np.median(stock_times)) / sp_per_fit:.2f}x LeanRadau's")
    print(
        f"  rel. error eta_h: {np.array2string(sp_err[0], precision=4)}, "
        f"eta_y: {np.array2string(sp_err[1], precision=4)}"
    )
    print(f"  SSE / SSE(planted rates): {np.array2string(sp_sse / sse_true[:k], precision=5)}")
    for name, r in rows.items():
        print(f"\n== (b) {name}: {args.n_trials} trials in one call")
        print(
            f"  compile {r['compile_s']:.1f} s (apart); run median {r['run_median_s']:.3f} s "
            f"(min {r['run_min_s']:.3f}) -> {1e3 * r['per_fit_s']:.2f} ms per fit "
            f"(CPU {1e3 * r['cpu_per_fit_s']:.2f} ms)"
        )
        print(
            f"  converged {r['converged']}/{args.n_trials}; LM iterations median "
            f"{r['iters_median']:.0f}, max {r['iters_max']}"
        )
        print(
            f"  rel. error (converged) median eta_h {r['err_median'][0]:.2e}, eta_y "
            f"{r['err_median'][1]:.2e}; max {r['err_max'][0]:.2e}, {r['err_max'][1]:.2e}"
        )
        print(
            f"  on SciPy's {k} trials: max rel. error {r['err_first_k'][0]:.2e}, "
            f"{r['err_first_k'][1]:.2e}; SSE / SSE(planted) "
            f"{np.array2string(np.array(r['sse_over_true_first_k']), precision=5)}"
        )
        print(
            f"  SSE / SSE(planted) median over all trials {r['sse_over_true_median']:.5f}; "
            f"stderr z-score rms {r['stderr_z_rms']:.2f}"
        )
        print(
            f"  speed-up per fit vs SciPy: {sp_per_fit / r['per_fit_s']:.0f}x wall time, "
            f"{sp_cpu_per_fit / r['cpu_per_fit_s']:.0f}x CPU time"
        )
    print("\n== one trajectory, jitted, after compilation (min of repetitions)")
    for name, r in single_times.items():
        print(f"  {name}: {1e3 * r['run_s']:.2f} ms (compile {r['compile_s']:.1f} s)")
    print(f"\n  load average start {info['loadavg_start']}, end {info['loadavg_end']}")

    out.update(
        scipy=dict(
            trials=k,
            per_fit_s=sp_per_fit,
            cpu_per_fit_s=sp_cpu_per_fit,
            times_s=sp_times,
            solves=sp_solves,
            err=sp_err.tolist(),
            sse_over_true=(sp_sse / sse_true[:k]).tolist(),
            stock_radau_per_fit_s=float(np.median(stock_times)),
            stock_radau_times_s=stock_times,
        ),
        jax=rows,
        single=single_times,
        speedup={name: sp_per_fit / r["per_fit_s"] for name, r in rows.items()},
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown(out, argv))
    return out


def markdown(out: dict, argv) -> str:
    """The results as a markdown fragment (no title: the docs include it under theirs)."""
    from _machine import git_commit, utc_now

    a, m, sp = out["args"], out["machine"], out["scipy"]
    cmd = "python benchmarks/bench_fit.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"Generated by `{cmd.strip()}` on {utc_now()} at code {git_commit()}: {m['cpu']}, "
        f"{m['cores']} cores, load average {m['loadavg_start'][0]:.1f} at the start and "
        f"{m['loadavg_end'][0]:.1f} at the end (1 min), JAX {m['jax']} ({m['backend']}), "
        f"SciPy {m['scipy']}, float64. {a['n_trials']} trials × {a['n_epochs']} epochs, "
        f"{a['noise']:.0%} noise; medians of {a['reps']} runs (SciPy: {sp['trials']} trials).",
        "",
        "| method | wall per fit | CPU per fit | speed-up (wall) | compile | rel. error "
        "eta_h / eta_y (median; max) | converged |",
        "|---|---|---|---|---|---|---|",
        f"| SciPy, the paper's method (LeanRadau) | {sp['per_fit_s']:.2f} s | "
        f"{sp['cpu_per_fit_s']:.2f} s | 1× | — | {np.median(sp['err'][0]):.2%} / "
        f"{np.median(sp['err'][1]):.2%} "
        f"(max {np.max(sp['err'][0]):.2%} / {np.max(sp['err'][1]):.2%}) | — |",
    ]
    if "stock_radau_per_fit_s" in sp:
        lines.append(
            f"| SciPy, stock Radau (the paper's code; the same rates) | "
            f"{sp['stock_radau_per_fit_s']:.2f} s | — | "
            f"{sp['per_fit_s'] / sp['stock_radau_per_fit_s']:.2f}× | — | the same | — |")
    for name, r in out["jax"].items():
        lines.append(
            f"| `{name}` | {1e3 * r['per_fit_s']:.2f} ms | {1e3 * r['cpu_per_fit_s']:.2f} ms | "
            f"**{out['speedup'][name]:.0f}×** | {r['compile_s']:.1f} s | "
            f"{r['err_median'][0]:.2%} / {r['err_median'][1]:.2%} (max {r['err_max'][0]:.2%} "
            f"/ {r['err_max'][1]:.2%}) | {r['converged']}/{a['n_trials']} |")
    lines += ["", "One trajectory, jitted, after compilation (min of repetitions):", ""]
    lines += [f"- {name}: {1e3 * r['run_s']:.2f} ms (compile {r['compile_s']:.1f} s)"
              for name, r in out["single"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
