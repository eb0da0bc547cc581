"""What machine a benchmark ran on (Linux /proc, with portable fallbacks), and the scaffolding
the small benchmark scripts share (integer options, the drawn ODE problem, timed calls).
No JAX import: a script passes in what it needs (``jax``, ``jax.block_until_ready``).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name, e.g. ``"AMD EPYC"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The short hash of the checked-out commit of this repository (``+`` when the work tree
    differs from it), or ``"unknown"``."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "unijax", "benchmarks"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def utc_now() -> str:
    """The date and time in UTC, to the minute, e.g. ``"2026-12-06 08:30 UTC"``."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def load_average() -> list[str] | None:
    """The 1, 5 and 15 minute load averages as printed by the kernel, or None."""
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return None


def memory_gb() -> float | None:
    """Total memory in GiB, or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def header(jax_module, *extra: str) -> str:
    """One line naming the machine, its load and the software, e.g. ``"machine: AMD EPYC, 2
    cores, load [...]; python 3.11.7, jax 0.10.2 (cpu), diffrax 0.7.2, float64"``.

    ``jax_module`` is passed in so that this module never imports JAX itself; ``extra`` are
    further items (library versions, dtype).
    """
    import os

    items = [f"python {platform.python_version()}",
             f"jax {jax_module.__version__} ({jax_module.default_backend()})", *extra]
    return (f"machine: {cpu_model()}, {os.cpu_count()} cores, load {load_average()}; "
            + ", ".join(items))


def int_options(doc: str, argv: Sequence[str] | None = None, **defaults: int) -> argparse.Namespace:
    """Parse integer options ``--name N`` (``n_trials=8`` is ``--n-trials``, default 8); the
    script's description is the first line of its docstring ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    for name, default in defaults.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return ap.parse_args(argv)


def draw_problem(rng, n: int, n_epochs: int):
    """Rates and initial states of ``n`` effective-ODE trajectories over ``n_epochs`` epochs,
    drawn from the NumPy generator ``rng``: ``eta`` ``(n, 2)`` (``eta_h, eta_y``, scaled so
    that the dynamics take about 30 rate-units over the run) and ``z0`` ``(n, 3)`` with
    ``h0 > 0``, ``y0 > 0``, ``w0 < 0``."""
    import numpy as np

    eta = rng.uniform(0.5, 2.0, (n, 2)) * np.array([2.0, 1.5]) * (30.0 / n_epochs)
    z0 = np.stack([rng.uniform(0.01, 0.3, n), rng.uniform(0.001, 0.05, n),
                   -rng.uniform(0.001, 0.05, n)], 1)
    return eta, z0


def compile_and_time(fn, args: tuple, reps: int, block: Callable[[Any], Any]):
    """Compile the jitted ``fn`` for ``args``, call it once, then time ``reps`` more calls.

    Returns ``(first output, compile seconds, [seconds per timed call])``; every call is waited
    for with ``block`` (``jax.block_until_ready``), so the times are of the computation.
    """
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = block(compiled(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        block(compiled(*args))
        times.append(time.perf_counter() - t0)
    return out, compile_s, times
