"""Scaling of unijax with devices: training and rate-fitting throughput, compile time, memory.

    python benchmarks/bench_scale.py                 # everything (a few minutes on 2 CPU cores)
    python benchmarks/bench_scale.py --only devices  # or: compile, memory
    python benchmarks/bench_scale.py --json out.json

What it measures (each configuration in its own subprocess, so that the device count can be
set before JAX starts; on CPU ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` splits the
host into N devices, on GPU all visible GPUs are used in turn 1, 2, 4, ... up to all):

* ``devices``: throughput of :func:`unijax.fit.fit_rates` (``mesh=`` the devices) on 64
  trials (trajectories of the ODE with noise), for 300-epoch and for paper-length 6000-epoch
  trajectories (docs/experiments.md E1), in three subprocesses: (a) 2 host devices and 1
  device of the same process, calls interleaved; (b) 1 device, the process pinned to one core
  (``os.sched_setaffinity``): per-core scaling; (c) 1 device with both cores (chunks of 8
  trials from threads). The processes compile, then take turns (3 calls of each function at a
  time, one process computing at a time), so that a busy spell of a shared
  machine hits all alike; medians (primary) and best of 90 (300 epochs) / 45 (6000) calls.
  Also :func:`unijax.train.train` on 64 trials (8 gains x 8 seeds, width 32, depth 4, 300
  epochs) with 1 and 2 devices (CPU) or 1..all GPUs. Target: >= 1.7x for 2 host devices on a
  2-core CPU for the fit.
* ``compile``: first-call (trace, lower, compile) and run seconds of the fit, compile and run
  seconds of training, for batches of 8, 16, 32 and 64 trials (one device): they should not
  grow with the batch.
* ``memory``: peak resident memory of the blocked whole-data-set theory
  (:func:`unijax.theory.exponential_weighting_from_data` with 100 rows and columns, and
  :func:`unijax.theory.pairwise_a_low`) at large N, synthetic data with 64 input and 10
  output dimensions, float64, blocks of 1024: ``ru_maxrss`` after minus before the call.

Timings: ``block_until_ready``, median and best of N, compilation separated from running
(docs/benchmarks.md, "How we time").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from _machine import cpu_model, load_average, memory_gb  # noqa: E402

REPO = HERE.parents[1]

N_FIT_TRIALS = 64
# Short trajectories, and the paper's Table-1 length (docs/experiments.md E1).
FIT_EPOCHS = (300, 6000)
TRAIN = dict(width=32, depth=4, epochs=300)
# Many repeats, calls interleaved (within a process, and across processes by turns): medians
# are the primary figure; on a shared machine the best of them is the time with the cores free.
N_REPEATS_FIT = {300: 90, 6000: 45}
N_REPEATS_TRAIN = 10
# Calls of each function per turn of a worker process (see _rounds).
ROUND_CALLS = 3


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------


def machine() -> dict:
    import jax

    return {
        "load_average_1_5_15min": load_average(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


# ---------------------------------------------------------------------------------------------
# Workers (run in subprocesses)
# ---------------------------------------------------------------------------------------------


def _fit_data(n_trials: int, n_epochs: int):
    """``ts (n_epochs,)``, ``Z (n_trials, n_epochs, 3)``: ODE trajectories with noise 1e-5.

    The rates (1/epoch) are scaled by ``300 / n_epochs`` so that the transition spans the
    window whatever its length."""
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
    eta = rng.uniform(0.5, 2.0, (n_trials, 2)) * np.array([8e-3, 5e-3]) * (300.0 / n_epochs)
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
    """``n`` wall seconds of each callable, calls alternating (fair under load)."""
    times: dict = {k: [] for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def worker_devices(n_dev: int, n_epochs: int, pinned: bool, with_train: bool) -> None:
    """Fit (and train) on ``n_dev`` devices. With ``n_dev > 1`` also on one device of the same
    process, calls interleaved, so that a busy machine slows both alike; with ``n_dev == 1``
    ``pinned``: this process runs on one core.

    Compiles, replies with a JSON line, then for each line ``fit K`` / ``train K`` on stdin
    replies with the seconds of K interleaved calls of each fit / training function."""
    if pinned:  # before JAX starts its threads: they inherit the affinity
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from jax.sharding import Mesh

    from unijax import configs, fit, train

    devices = jax.devices()[:n_dev]
    ts, Z = _fit_data(N_FIT_TRIALS, n_epochs)
    cfg = configs.get("default", **TRAIN)
    gains = [0.6 + 0.1 * i for i in range(8)]

    def fitter(devs):
        mesh = Mesh(np.asarray(devs), ("d",))

        def fit_once():
            return fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, mesh=mesh, return_trajectory=False)

        return fit_once

    def trainer(devs):
        def train_once():
            r = train.train(cfg, seeds=8, gains=gains, devices=devs)
            jax.block_until_ready(r.loss)
            return r

        return train_once

    fits = {"fit": fitter(devices)}
    trains = {"train": trainer(devices)} if with_train else {}
    if n_dev > 1:
        fits["fit_1"] = fitter(devices[:1])
        if with_train:
            trains.update(train_1=trainer(devices[:1]))
    out: dict = {
        "n_devices": n_dev,
        "n_epochs": n_epochs,
        "pinned": pinned,
        "cores_available": len(os.sched_getaffinity(0)),
        "fit_trials": N_FIT_TRIALS,
        "train_trials": 64,
    }
    for k, fn in fits.items():  # first calls: compilation
        t0 = time.perf_counter()
        res = fn()
        out[f"{k}_first_call_s"] = time.perf_counter() - t0
        out[f"{k}_n_failed"] = int(res.n_failed)
    for k, fn in trains.items():
        out[f"{k}_compile_s"] = fn().compile_s
    if n_dev == 1:
        out["busy_threads_1dev"] = _busy_threads(fits["fit"], 3)
    # Ready; then timed rounds on request, so that the driver can alternate the processes
    # (only one computes at a time) and a busy spell of the machine hits all of them alike.
    _reply(out)
    while line := sys.stdin.readline().split():
        group = fits if line[0] == "fit" else trains
        _reply(_interleaved(group, int(line[1])))


def _reply(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def worker_compile() -> dict:
    import jax
    import numpy as np
    from jax.sharding import Mesh

    jax.config.update("jax_enable_x64", True)
    from unijax import configs, fit, train

    mesh = Mesh(np.asarray(jax.devices()[:1]), ("d",))
    rows = []
    ts, Z_all = _fit_data(64, 100)
    cfg = configs.get("default", **TRAIN)
    for n in (8, 16, 32, 64):
        Z = Z_all[:n]
        t0 = time.perf_counter()
        fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, mesh=mesh, return_trajectory=False)
        first = time.perf_counter() - t0
        run = _best(lambda z=Z: fit.fit_rates(ts, z, dx2=1.0, dy2=0.5, mesh=mesh,
                                              return_trajectory=False), 2)
        tr = train.train(cfg, seeds=n, devices=1)
        rows.append(
            {
                "batch": n,
                "fit_first_call_s": first,
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


class _Worker:
    """A ``devices`` worker subprocess, asked for timed rounds (see :func:`worker_devices`)."""

    def __init__(self, args: list[str], n_host_devices: int | None):
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        if n_host_devices is not None:
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "")
                + f" --xla_force_host_platform_device_count={n_host_devices}"
            ).strip()
            env["JAX_PLATFORMS"] = "cpu"
        self.args = args
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--worker", *args],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        self.info = self._read()
        self.times: dict[str, list[float]] = {}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.err.seek(0)
            raise RuntimeError(f"worker {self.args} failed:\n{self.err.read()[-4000:]}")
        return json.loads(line)

    def run(self, what: str, k: int) -> None:
        self.proc.stdin.write(f"{what} {k}\n")
        self.proc.stdin.flush()
        for name, v in self._read().items():
            self.times.setdefault(name, []).extend(v)

    def close(self) -> dict:
        """End the process; the ready reply plus ``NAME_times_s``, ``NAME_median_s`` and
        ``NAME_s`` (best) of every timed function."""
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.err.close()
        out = dict(self.info)
        for k, v in self.times.items():
            out[f"{k}_times_s"] = v
            out[f"{k}_median_s"] = statistics.median(v)
            out[f"{k}_s"] = min(v)
        return out


def _rounds(workers: list[_Worker], what: str, n_calls: int, per_round: int) -> list:
    """``n_calls`` timed calls of each function of each worker, ``per_round`` at a time, the
    workers taking turns; returns the 1-minute load averages seen between rounds."""
    loads = []
    for _ in range(-(-n_calls // per_round)):
        for w in workers:
            w.run(what, per_round)
            loads.append(float((load_average() or ["nan"])[0]))
    return loads


def _ratio(num: dict, k_num: str, den: dict, k_den: str) -> tuple[float, float]:
    """(median, best) speed-up of ``den[k_den]`` over ``num[k_num]`` times (time ratio)."""
    return (
        num[f"{k_num}_median_s"] / den[f"{k_den}_median_s"],
        num[f"{k_num}_s"] / den[f"{k_den}_s"],
    )


def _devices(gpu: bool) -> dict:
    """Run the ``devices`` workers (each its own subprocess, taking turns) and print tables."""
    out: dict = {}
    if gpu:
        import jax

        n_all = len(jax.devices())
        counts = sorted({1, *(2**k for k in range(1, 8) if 2**k <= n_all), n_all})
    for n_epochs in FIT_EPOCHS:
        n_calls = N_REPEATS_FIT[n_epochs]
        train = n_epochs == FIT_EPOCHS[0]
        flag = str(int(train))
        if gpu:
            workers = [_Worker(["devices", str(n), str(n_epochs), "0", flag], None) for n in counts]
        else:
            # (c) 1 device, both cores; (a) 2 host devices and 1
            # device of the same process; (b) 1 device, the process pinned to one core.
            workers = [
                _Worker(["devices", "1", str(n_epochs), "0", flag], 1),
                _Worker(["devices", "2", str(n_epochs), "0", flag], 2),
                _Worker(["devices", "1", str(n_epochs), "1", "0"], 1),
            ]
        loads = _rounds(workers, "fit", n_calls, ROUND_CALLS)
        if train:
            loads += _rounds(workers[:2] if not gpu else workers, "train", N_REPEATS_TRAIN, 2)
        rows = [w.close() for w in workers]
        head = (
            f"\nfit: {N_FIT_TRIALS} trials x {n_epochs} epochs, fit_rates over the devices; "
            f"seconds per call, median and best of {n_calls} calls, "
            f"{ROUND_CALLS} at a time, the processes taking turns; 1-min load average "
            f"{min(loads):.2f}-{max(loads):.2f} (this benchmark's own process included)"
        )
        if gpu:
            out[str(n_epochs)] = rows
            print(head.replace("(shard_map", f"on 1..{n_all} GPUs (shard_map"))
            print(
                f"{'GPUs':>5} {'median s':>9} {'best s':>8} {'trials/s':>9} {'speed-up':>9} "
                f"{'train s':>8} {'speed-up':>9}"
            )
            for r in rows:
                med, _ = _ratio(rows[0], "fit", r, "fit")
                tr = (
                    f"{r['train_s']:>8.3f} {rows[0]['train_s'] / r['train_s']:>8.2f}x"
                    if train
                    else ""
                )
                print(
                    f"{r['n_devices']:>5} {r['fit_median_s']:>9.4f} {r['fit_s']:>8.4f} "
                    f"{N_FIT_TRIALS / r['fit_median_s']:>9.0f} {med:>8.2f}x {tr}"
                )
            continue
        one, two, core = rows
        out[str(n_epochs)] = {"one_device": one, "two_devices": two, "one_core": core}
        print(head)
        print(
            f"{'configuration':<52} {'median s':>9} {'best s':>8} {'trials/s':>9} "
            f"{'1st call s':>11}"
        )
        table = [
            ("(a) 2 host devices", two, "fit"),
            ("(a) 1 device, same process (interleaved with 2)", two, "fit_1"),
            ("(b) 1 device, process pinned to 1 core", core, "fit"),
            ("(c) 1 device, both cores", one, "fit"),
        ]
        for name, r, k in table:
            if f"{k}_s" in r:
                print(
                    f"{name:<52} {r[f'{k}_median_s']:>9.4f} {r[f'{k}_s']:>8.4f} "
                    f"{N_FIT_TRIALS / r[f'{k}_median_s']:>9.0f} {r[f'{k}_first_call_s']:>11.1f}"
                )
        print(f"speed-up of 2 host devices (target >= 1.7x)          {'median':>9} {'best':>8}")
        for name, r, k in (
            ("vs 1 device, same process (a)", two, "fit_1"),
            ("vs 1 device pinned to 1 core (b): per-core scaling", core, "fit"),
            ("vs 1 device, both cores (c)", one, "fit"),
        ):
            med, best = _ratio(r, k, two, "fit")
            verdict = "met" if med >= 1.7 else "NOT met"
            print(f"  {name:<51} {med:>8.3f}x {best:>7.3f}x  {verdict} (median)")
        print(
            f"XLA threads busy (>10% of the busiest) during the 1-device fit, both cores: "
            f"{one['busy_threads_1dev']}; pinned to 1 core: {core['busy_threads_1dev']}"
        )
        if train:
            print(
                f"\ntrain: 64 trials (width {TRAIN['width']}, depth {TRAIN['depth']}, "
                f"{TRAIN['epochs']} epochs); best of {N_REPEATS_TRAIN}"
            )
            print(f"{'devices':>8} {'train s':>8} {'trials/s':>9} {'speed-up':>9}")
            for r in (one, two):
                print(
                    f"{r['n_devices']:>8} {r['train_s']:>8.3f} {64 / r['train_s']:>9.1f} "
                    f"{one['train_s'] / r['train_s']:>8.2f}x"
                )
            print(
                f"same process, calls interleaved, 2 devices vs 1: train "
                f"{two['train_1_s'] / two['train_s']:.2f}x"
            )
    return out


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
        if kind == "devices":  # replies on stdout as it goes
            n_dev, n_epochs, pinned, with_train = map(int, args.worker[1:5])
            worker_devices(n_dev, n_epochs, bool(pinned), bool(with_train))
            return 0
        if kind == "compile":
            out = worker_compile()
        else:
            out = worker_memory(args.worker[1], int(args.worker[2]))
        print(json.dumps(out))
        return 0

    import jax

    parts = args.only or ["devices", "compile", "memory"]
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb'] or 0:.0f} GB; "
        f"python {info['python']}, "
        f"jax {info['jax']} ({info['backend']}: {len(info['devices'])} device(s)); "
        f"load average {' '.join(info['load_average_1_5_15min'] or ['?'])} (1/5/15 min)"
    )
    results: dict = {"machine": info}
    gpu = jax.default_backend() == "gpu"

    if "devices" in parts:
        results["devices"] = _devices(gpu)

    if "compile" in parts:
        res = _sub(["compile"], 1 if not gpu else None)
        results["compile"] = res["rows"]
        print("\ncompile time vs batch (one device; fit: 100 epochs)")
        print(
            f"{'batch':>6} {'fit 1st call s':>15} {'fit run s':>10} "
            f"{'train compile s':>16} {'train run s':>12}"
        )
        for r in res["rows"]:
            print(
                f"{r['batch']:>6} {r['fit_first_call_s']:>15.2f} "
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
