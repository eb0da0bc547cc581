"""What machine a benchmark ran on (Linux /proc, with portable fallbacks); no JAX import."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name, e.g. ``"AMD EPYC"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
