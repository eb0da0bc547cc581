"""Scaling of unijax with devices: training and rate-fitting throughput, compile time, memory.

    python benchmarks/bench_scale.py                 # everything (a few minutes on 2 CPU cores)
    python benchmarks/bench_scale.py --only devices  # or: compile, memory
    python benchmarks/bench_scale.py --json out.json

What it measures (each configuration in its own subprocess, so that the device count can be
set before JAX starts; on CPU ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` splits the
host into N devices, on GPU all visible GPUs are used in turn 1, 2, 4, ... up to all):

* ``devices``: throughput (trials/s, best of 3 after a warm-up call) of
  :func:`unijax.distributed.sharded_fit_rates` (mode ``shard_map``; ``per_device`` and
  ``spmd`` too, in the multi-device process) on 64 trials (trajectories of the ODE with
  noise, 300 epochs) and of :func:`unijax.train.train` on 64 trials (8 gains x 8 seeds, width
  32, depth 4, 300 epochs), with 1 and 2 devices (CPU) or 1..all GPUs. Target: >= 1.7x for 2
  host devices on a 2-core CPU for the fit.
* ``compile``: trace+lower and compile seconds of the fit and of training for batches of 8, 16,
  32 and 64 trials (one device): they should not grow with the batch.
* ``memory``: peak resident memory of the blocked whole-data-set theory
  (:func:`unijax.theory.exponential_weighting_from_data` with 100 rows and columns, and
  :func:`unijax.theory.pairwise_a_low`) at large N, synthetic data with 64 input and 10
  output dimensions, float64, blocks of 1024: ``ru_maxrss`` after minus before the call.

Timings: ``block_until_ready``, best of N, compilation separated from running (STYLE.md 10).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]

N_FIT_TRIALS = 64
N_EPOCHS_FIT = 300
TRAIN = dict(width=32, depth=4, epochs=300)
# Many repeats, calls interleaved: on a shared machine the best of them is the time with the
# cores free (the fit takes ~0.04 s, so this is cheap).
N_REPEATS_FIT = 30
N_REPEATS_TRAIN = 10


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import jax

    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = None
    return {
        "load_average_1_5_15min": load,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


# ---------------------------------------------------------------------------------------------
# Workers (run in subprocesses)
# ---------------------------------------------------------------------------------------------


def _fit_data(n_trials: int, n_epochs: int):
    import jax.numpy as jnp
    import numpy as np

    from unijax import theory

    rng = np.random.default_rng(0)
    ts = np.arange(float(n_epochs))
    z0 = np.stack(
        [
            rng.uniform(0.02, 0.5, n_trials),
            rng.uniform(0.0, 0.05, n_trials),
            -rng.uniform(0.01, 0.1, n_trials),
        ],
        1,
    )
    eta = rng.uniform(0.5, 2.0, (n_trials, 2)) * np.array([8e-3, 5e-3])
    Z = np.stack(
        [
            np.asarray(
                theory.solve(
                    jnp.asarray(z), jnp.asarray(ts), eta_h=e[0], eta_y=e[1], dx2=1.0, dy2=0.5
                )
            )
            for z, e in zip(z0, eta, strict=True)
        ]
    )
    return ts, Z + 1e-5 * rng.normal(size=Z.shape)


def _best(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _thread_ticks() -> dict:
    out = {}
    for t in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{t}/stat").read_text().rsplit(")", 1)[1].split()
            out[t] = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return out


def _busy_threads(fn, n: int) -> int | None:
    """Threads of this process doing >10% of the busiest one's CPU work over ``n`` calls."""
    if not Path("/proc/self/task").exists():
        return None
    before = _thread_ticks()
    for _ in range(n):
        fn()
    after = _thread_ticks()
    ticks = [after[k] - before.get(k, 0) for k in after]
    top = max(ticks)
    return sum(t > 0.1 * top for t in ticks) if top else None


def _interleaved(fns: dict, n: int) -> dict:
    """Best of ``n`` wall seconds of each callable, calls alternating (fair under load)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(n):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def worker_devices(n_dev: int) -> dict:
    """Fit and train on ``n_dev`` devices; with ``n_dev > 1`` also on one device of the same
    process, calls interleaved, so that a busy machine slows both alike."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from unijax import configs, distributed, train

    devices = jax.devices()[:n_dev]
    ts, Z = _fit_data(N_FIT_TRIALS, N_EPOCHS_FIT)
    cfg = configs.get("default", **TRAIN)
    gains = [0.6 + 0.1 * i for i in range(8)]

    def fitter(devs, mode="shard_map"):
        mesh = distributed.batch_mesh(devs)

        def fit_once():
            return distributed.sharded_fit_rates(
                ts, Z, dx2=1.0, dy2=0.5, mesh=mesh, return_trajectory=False, mode=mode
            )

        return fit_once

    def trainer(devs):
        def train_once():
            r = train.train(cfg, seeds=8, gains=gains, devices=devs)
            jax.block_until_ready(r.loss)
            return r

        return train_once

    fits = {"fit": fitter(devices)}
    if n_dev == 1:  # the unsharded entry point, for reference (on CPU it threads chunks itself)
        from unijax import fit

        def plain():
            r = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, return_trajectory=False)
            jax.block_until_ready(r.eta_h)
            return types.SimpleNamespace(fit=r)

        fits["fit_rates"] = plain
    trains = {"train": trainer(devices)}
    if n_dev > 1:
        fits.update(
            fit_per_device=fitter(devices, "per_device"),
            fit_spmd=fitter(devices, "spmd"),
            fit_1=fitter(devices[:1]),
        )
        trains.update(train_1=trainer(devices[:1]))
    out: dict = {"n_devices": n_dev, "fit_trials": N_FIT_TRIALS, "train_trials": 64}
    for k, fn in fits.items():  # first calls: compilation (per device for "fit")
        t0 = time.perf_counter()
        res = fn()
        out[f"{k}_first_call_s"] = time.perf_counter() - t0
        out[f"{k}_n_failed"] = int(res.fit.n_failed)
    for k, fn in trains.items():
        out[f"{k}_compile_s"] = fn().compile_s
    for k, v in {
        **_interleaved(fits, N_REPEATS_FIT),
        **_interleaved(trains, N_REPEATS_TRAIN),
    }.items():
        out[f"{k}_s"] = v
    if n_dev == 1:
        out["busy_threads_1dev"] = _busy_threads(fits["fit"], 3)
    out["fit_trials_per_s"] = N_FIT_TRIALS / out["fit_s"]
    out["train_trials_per_s"] = 64 / out["train_s"]
    return out


def worker_compile() -> dict:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from unijax import configs, distributed, fit, train

    rows = []
    ts, Z_all = _fit_data(64, 100)
    cfg = configs.get("default", **TRAIN)
    for n in (8, 16, 32, 64):
        ts_arr, batch, opts, rt, _ = distributed._prepare_fit(
            ts, Z_all[:n], 1.0, 0.5, None, {"return_trajectory": False}
        )
        args = [
            jnp.asarray(a) for a in (ts_arr, batch["Z"], batch["dx2"], batch["dy2"], batch["init"])
        ]
        t0 = time.perf_counter()
        lowered = fit._fit_batch.lower(*args, opts=opts, return_trajectory=rt)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        run = _best(lambda c=compiled, a=args: jax.block_until_ready(c(*a)), 2)
        tr = train.train(cfg, seeds=n, devices=1)
        rows.append(
            {
                "batch": n,
                "fit_lower_s": t1 - t0,
                "fit_compile_s": t2 - t1,
                "fit_run_s": run,
                "train_compile_s": tr.compile_s,
                "train_run_s": tr.run_s,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows}


def worker_memory(kind: str, n: int) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from unijax import theory

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 64))
    Y = np.eye(10)[rng.integers(0, 10, n)]
    idx = np.arange(100)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the data exist
    t0 = time.perf_counter()
    if kind == "ew":
        out = theory.exponential_weighting_from_data(X, Y, rows=idx, cols=idx, block_size=1024)
    else:
        out = theory.pairwise_a_low(X, Y, block_size=1024)
    out.block_until_ready()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "kind": kind,
        "n": n,
        "seconds": dt,  # first call: includes compiling the block loop for this N
        "peak_rss_increase_mb": (peak - base) / 1024.0,  # compilation's memory included
        "output_mb": out.size * out.dtype.itemsize / 2**20,
    }


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _sub(args: list[str], n_host_devices: int | None, timeout: float = 1800) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if n_host_devices is not None:
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_host_devices}"
        ).strip()
        env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run(
        [sys.executable, str(HERE), "--worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("devices", "compile", "memory"), action="append")
    p.add_argument(
        "--memory-n",
        type=int,
        nargs="*",
        default=[20000, 40000, 60000],
        help="N for exponential_weighting_from_data (100 rows x 100 cols)",
    )
    p.add_argument(
        "--pairwise-n",
        type=int,
        nargs="*",
        default=[5000, 10000, 20000],
        help="N for pairwise_a_low (output N x N float64)",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        kind = args.worker[0]
        if kind == "devices":
            out = worker_devices(int(args.worker[1]))
        elif kind == "compile":
            out = worker_compile()
        else:
            out = worker_memory(args.worker[1], int(args.worker[2]))
        print(json.dumps(out))
        return 0

    import jax

    parts = args.only or ["devices", "compile", "memory"]
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores; python {info['python']}, "
        f"jax {info['jax']} ({info['backend']}: {len(info['devices'])} device(s)); "
        f"load average {' '.join(info['load_average_1_5_15min'] or ['?'])} (1/5/15 min)"
    )
    results: dict = {"machine": info}
    gpu = jax.default_backend() == "gpu"

    if "devices" in parts:
        if gpu:
            n_all = len(jax.devices())
            counts = sorted({1, *(2**k for k in range(1, 8) if 2**k <= n_all), n_all})
            rows = [_sub(["devices", str(n)], None) for n in counts]
        else:
            rows = [_sub(["devices", str(n)], n) for n in (1, 2)]
        results["devices"] = rows
        base = rows[0]
        print(
            f"\nthroughput vs devices ({'GPU' if gpu else 'CPU host devices'}); "
            f"fit: {N_FIT_TRIALS} trials x {N_EPOCHS_FIT} epochs; train: 64 trials "
            f"(width {TRAIN['width']}, depth {TRAIN['depth']}, {TRAIN['epochs']} epochs); "
            f"best of {N_REPEATS_FIT} (fit), {N_REPEATS_TRAIN} (train)"
        )
        print(
            f"{'devices':>8} {'fit s':>8} {'trials/s':>9} {'speed-up':>9} {'1st call s':>11} "
            f"{'spmd s':>8} {'train s':>8} {'trials/s':>9} {'speed-up':>9}"
        )
        for r in rows:
            spmd = f"{r['fit_spmd_s']:>8.3f}" if "fit_spmd_s" in r else f"{'-':>8}"
            print(
                f"{r['n_devices']:>8} {r['fit_s']:>8.3f} {r['fit_trials_per_s']:>9.1f} "
                f"{base['fit_s'] / r['fit_s']:>8.2f}x {r['fit_first_call_s']:>11.1f} {spmd} "
                f"{r['train_s']:>8.3f} {r['train_trials_per_s']:>9.1f} "
                f"{base['train_s'] / r['train_s']:>8.2f}x"
            )
        for r in rows[1:]:
            print(
                f"same process, calls interleaved, {r['n_devices']} devices vs 1: fit "
                f"{r['fit_1_s'] / r['fit_s']:.2f}x (per_device "
                f"{r['fit_1_s'] / r['fit_per_device_s']:.2f}x, spmd "
                f"{r['fit_1_s'] / r['fit_spmd_s']:.2f}x), "
                f"train {r['train_1_s'] / r['train_s']:.2f}x"
            )
        if "fit_rates_s" in base:
            print(
                f"unsharded fit.fit_rates on the same 64 trials: {base['fit_rates_s']:.3f} s "
                f"({N_FIT_TRIALS / base['fit_rates_s']:.0f} trials/s)"
            )
        if "busy_threads_1dev" in base:
            print(
                f"XLA threads busy (>10% of the busiest) during the one-device fit: "
                f"{base['busy_threads_1dev']} (of {os.cpu_count()} cores)"
            )
        if not gpu:
            ratio = base["fit_s"] / rows[1]["fit_s"]
            print(
                f"fit speed-up, 2 host devices vs 1 (separate processes): {ratio:.2f}x "
                f"(target >= 1.7x): {'met' if ratio >= 1.7 else 'NOT met'}"
            )

    if "compile" in parts:
        res = _sub(["compile"], 1 if not gpu else None)
        results["compile"] = res["rows"]
        print("\ncompile time vs batch (one device; fit: 100 epochs)")
        print(
            f"{'batch':>6} {'fit trace+lower s':>18} {'fit compile s':>14} {'fit run s':>10} "
            f"{'train compile s':>16} {'train run s':>12}"
        )
        for r in res["rows"]:
            print(
                f"{r['batch']:>6} {r['fit_lower_s']:>18.2f} {r['fit_compile_s']:>14.2f} "
                f"{r['fit_run_s']:>10.3f} {r['train_compile_s']:>16.2f} "
                f"{r['train_run_s']:>12.3f}"
            )

    if "memory" in parts:
        rows = [_sub(["memory", "ew", str(n)], 1 if not gpu else None) for n in args.memory_n]
        rows += [_sub(["memory", "pw", str(n)], 1 if not gpu else None) for n in args.pairwise_n]
        results["memory"] = rows
        print(
            "\npeak memory of the blocked whole-data-set theory (float64, blocks of 1024, "
            "dx=64, dy=10; first call, so seconds and memory include compiling the loop)"
        )
        print(f"{'function':>34} {'N':>7} {'seconds':>8} {'peak RSS +MB':>13} {'output MB':>10}")
        for r in rows:
            name = "exponential_weighting_from_data" if r["kind"] == "ew" else "pairwise_a_low"
            print(
                f"{name:>34} {r['n']:>7} {r['seconds']:>8.1f} "
                f"{r['peak_rss_increase_mb']:>13.0f} {r['output_mb']:>10.1f}"
            )

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
