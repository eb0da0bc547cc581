"""Independent pieces of work side by side, one per local device
(``unijax.experiments._parallel``), in a subprocess with two host devices."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from _procs import REPO, env

SCRIPT = """
import json, threading, numpy as np, jax
from unijax import configs, data
from unijax.experiments import _parallel, e3_final_distance as e3
assert len(jax.devices()) == 2
cfg = configs.get("default", width=8, depth=3, epochs=30)
ds = data.two_points(1.0, 0.5)
seen = []

def run(task, devices):
    seen.append((None if devices is None else [d.id for d in devices],
                 threading.current_thread().name))
    return e3.train_until(cfg, seeds=1, key=jax.random.key(task), data=ds, stop_loss=1e-4,
                          segment=10, devices=devices)

got = _parallel.each_on_a_device([0, 1, 2, 3], run)
# each alone on the first device, one after another
alone = [e3.train_until(cfg, seeds=1, key=jax.random.key(t), data=ds, stop_loss=1e-4,
                        segment=10, devices=jax.devices()[:1]) for t in range(4)]
same = all(np.array_equal(g[k], a[k], equal_nan=True) for g, a in zip(got, alone) for k in g)
differ = not np.array_equal(got[0]["loss"], got[1]["loss"])  # the keys differ: so do they

def fails(task, devices):
    if task == 2:
        raise ValueError("piece 2 failed")
    return task

try:
    _parallel.each_on_a_device([0, 1, 2, 3], fails)
    error = None
except ValueError as e:
    error = str(e)
print(json.dumps({"devices": sorted({tuple(d) for d, _ in seen}), "same": same,
                  "differ": differ, "threads": len({t for _, t in seen}), "error": error}))
"""


def test_pieces_run_one_per_device_and_equal_each_alone():
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], env=env(2), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == [[0], [1]]  # each piece on one device; both devices used
    assert out["threads"] == 2
    assert out["same"] and out["differ"]
    assert out["error"] == "piece 2 failed"
