"""One compiled rate fit for every trajectory length of a bucket, and for later processes.

``fit_rates`` pads the epochs to a length bucket with weights 0 on the padding
(``unijax.fit._args``): the padded fit must be the unpadded one to round-off, every length of a
bucket must run one program, and a later process must get the compilation from JAX's cache and
read nothing else from disk (``unijax.fit._run``).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _compiles import count_traces

from unijax import fit, theory
from unijax.fit import _args as _fit_args

REPO = Path(__file__).resolve().parents[1]


def _trajectories(n, seed=0):
    """Two noisy trajectories of ``n`` epochs over 0..3000 (1% multiplicative noise)."""
    ts = np.arange(float(n)) * (3000.0 / n)
    runs = [((0.05, 1e-3, 0.0), 2e-3, 4e-3), ((0.5, 0.1, -0.1), 8e-3, 5e-3)]
    Z = np.stack([np.asarray(theory.solve(np.array(z0), ts, eta_h=eh, eta_y=ey, dx2=1.0,
                                          dy2=0.5)) for z0, eh, ey in runs])
    rng = np.random.default_rng(seed)
    return ts, Z * (1 + 0.01 * rng.normal(size=Z.shape))


def test_bucket_rule():
    sizes = (3, 128, 129, 300, 457, 512, 513, 2945, 3000, 3456, 3457, 6000, 6912, 6913)
    assert [_fit_args.bucket_size(n) for n in sizes] == [
        128, 128, 192, 320, 512, 512, 640, 3456, 3456, 3456, 4096, 6912, 6912, 8192]
    # Four sizes per doubling (2^(k/4), rounded up to a multiple of 64): less than a quarter
    # of padding above 1024 epochs.
    n = np.arange(1025, 40000)
    assert (np.array([_fit_args.bucket_size(i) for i in n]) / n).max() < 1.25
    g = _fit_args.make_grid(np.arange(5.0), 128)
    assert g.ts.shape == (128,) and (g.ts[4:] == 4.0).all() and g.weight.sum() == 5
    assert g.score_idx.shape == (128,) and g.score_w.sum() == 5 and (g.score_idx[5:] == 4).all()


@pytest.mark.parametrize(("n", "fit_initial"), [(37, False), (300, False), (37, True)])
def test_padded_fit_equals_unpadded(n, fit_initial):
    # The program run on the epochs as they are (grid of exactly n) against the same program
    # padded to the bucket, as fit_rates runs it: the same fit to round-off.
    from unijax.fit._program import fit_batch

    ts, Z = _trajectories(n)
    opts = _fit_args.prepare_fit(
        ts, Z, 1.0, 0.5, None, where=None, caller="test", rtol=1e-7, atol=1e-9, max_steps=512,
        max_iters=64, opt_rtol=1e-6, opt_atol=1e-4, max_rel_stderr=fit.MAX_REL_STDERR,
        min_r2=fit.MIN_R2, retry_max_steps=(), scales=(0.3, 1.0, 3.0), fit_initial=fit_initial,
    )[5]
    args = (np.ones(2), np.full(2, 0.5), np.ones((2, 2)))
    plain = fit_batch(_fit_args.make_grid(ts, n), Z, *args, opts=opts, return_trajectory=True)
    res = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, fit_initial=fit_initial, retry_max_steps=())
    assert _fit_args.bucket_size(n) > n  # the public fit was padded
    assert res.z_fit.shape == Z.shape
    for k in ("status", "n_iters", "n_ode_steps", "converged", "identified", "good_fit"):
        np.testing.assert_array_equal(getattr(res, k), plain[k], err_msg=k)
    assert res.usable.all()
    for k, rtol in (("eta_h", 1e-13), ("eta_y", 1e-13), ("sse", 1e-13), ("r2", 1e-13),
                    ("init_eta_h", 1e-12), ("stderr_eta_h", 1e-9), ("stderr_eta_y", 1e-9),
                    ("z_fit", 1e-9)):
        np.testing.assert_allclose(getattr(res, k), plain[k], rtol=rtol, atol=0, err_msg=k)


def test_lengths_in_one_bucket_compile_the_fit_once(monkeypatch):
    # No stored programs (so that the count is of this process's compilations) and options no
    # other test uses (so that no program of this process serves them already).
    monkeypatch.setenv("UNIJAX_NO_COMPILATION_CACHE", "1")
    kw = dict(dx2=1.0, dy2=0.5, max_iters=61, return_trajectory=False, retry_max_steps=())
    with count_traces() as traces:
        for n in (300, 301, 320):  # bucket 320
            res = fit.fit_rates(*_trajectories(n), **kw)
            assert res.usable.all()
    assert traces["_fit_batch"] == 1, traces
    with count_traces() as traces:
        fit.fit_rates(*_trajectories(3000), **kw)  # bucket 3456: one more program
        fit.fit_rates(*_trajectories(2950), **kw)
    assert traces["_fit_batch"] == 1, traces


_CHILD = """
import json, sys
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, sys.argv[2])
from _compiles import count_traces
from unijax import fit
d = np.load(sys.argv[1])
with count_traces() as traces:
    res = fit.fit_rates(d["ts"], d["Z"], dx2=1.0, dy2=0.5, max_iters=62)
print(json.dumps({"traces": traces["_fit_batch"], "eta_h": res.eta_h.tolist(),
                  "stderr": res.stderr_eta_y.tolist(), "status": res.status.tolist()}))
"""


def _fit_in_fresh_processes(tmp_path, n: int, before=None) -> list[dict]:
    """Run the fit of one 200-epoch trajectory in ``n`` fresh processes, one after another,
    on one cache directory (``before(i)`` runs before process ``i``); their outputs."""
    ts, Z = _trajectories(200)
    np.savez(tmp_path / "traj.npz", ts=ts, Z=Z)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("UNIJAX_NO_COMPILATION_CACHE", None)
    outs = []
    for i in range(n):
        if before is not None:
            before(i)
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD),
                            str(tmp_path / "traj.npz"), str(Path(__file__).parent)],
                           env=env, capture_output=True, text=True, timeout=300, check=False)
        assert p.returncode == 0, (i, p.stderr[-3000:])
        outs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return outs


def test_a_later_process_reuses_the_compilation_and_loads_nothing_else(tmp_path):
    # Two fresh processes on one (empty) cache directory: both trace the fit (nothing traced
    # is read from disk), the second's compilation is answered by JAX's cache (no new entry),
    # and both compute the same numbers.
    entries = []
    outs = _fit_in_fresh_processes(
        tmp_path, 2, before=lambda i: entries.append(i and set(os.listdir(tmp_path / "cache"))))
    assert [o["traces"] for o in outs] == [1, 1], outs
    assert entries[1] and set(os.listdir(tmp_path / "cache")) == entries[1]
    assert not (tmp_path / "cache" / "unijax_programs").exists()
    for k in ("eta_h", "stderr", "status"):
        assert outs[0][k] == outs[1][k], k  # the same executable: bitwise equal
