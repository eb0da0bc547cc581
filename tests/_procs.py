"""Subprocess helpers shared by the multi-device and multi-process tests.

The device count of a JAX process is fixed when JAX starts, so runs with several (host)
devices or several processes happen in fresh Python subprocesses on CPU.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env(n_devices: int = 1) -> dict:
    """Environment of a CPU subprocess with ``n_devices`` host devices and 64-bit JAX."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["JAX_PLATFORMS"] = "cpu"
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    e["JAX_ENABLE_X64"] = "1"
    e.pop("JAX_COORDINATOR_ADDRESS", None)
    return e


def free_port() -> int:
    """A localhost TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(
    cmds: Sequence[Sequence[str]], envs: Sequence[dict], timeout: float
) -> list[tuple[int, str, str]]:
    """Start every command at once (e.g. the processes of one jax.distributed run), wait for
    all; ``(returncode, stdout, stderr)`` of each. Leftover processes are killed."""
    procs = [
        subprocess.Popen(list(c), env=e, cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for c, e in zip(cmds, envs, strict=True)
    ]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            results.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results
