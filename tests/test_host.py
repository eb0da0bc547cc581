"""One CPU device per core for the ``unijax`` command (``unijax._host``), each case in a fresh
process: JAX fixes its device count when it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from unijax import _host
_host.usable_cores = lambda: int(sys.argv[1])
if sys.argv[2] == "started":
    import jax
    jax.devices()  # JAX started before the call: its count stays
got = _host.use_one_device_per_core()
import jax
print(json.dumps({"set": got, "devices": len(jax.devices()),
                  "again": _host.use_one_device_per_core()}))
"""


def run(cores: int, *, started: bool = False, **env_extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env_extra)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cores),
                           "started" if started else "fresh"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cores,expect", [(2, 2), (3, 3), (20, 8)])
def test_one_device_per_core_up_to_eight(cores, expect):
    assert run(cores) == {"set": expect, "devices": expect, "again": None}


@pytest.mark.parametrize("env,devices", [
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, 3),
    ({"JAX_NUM_CPU_DEVICES": "1"}, 1),
])
def test_the_users_choice_is_kept(env, devices):
    assert run(4, **env) == {"set": None, "devices": devices, "again": None}


def test_one_core_and_a_started_jax_are_left_alone():
    assert run(1) == {"set": None, "devices": 1, "again": None}
    assert run(4, started=True) == {"set": None, "devices": 1, "again": None}


def test_the_command_sets_it_before_jax_starts():
    script = ("from unijax import _host, cli\n"
              "_host.usable_cores = lambda: 2\n"
              "assert cli.main(['list']) == 0\n"
              "import jax\n"
              "print('DEVICES', len(jax.devices()))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DEVICES 2" in proc.stdout
