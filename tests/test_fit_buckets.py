"""One compiled rate fit for every trajectory length of a bucket, and for later processes.

``fit_rates`` pads the epochs to a length bucket with weights 0 on the padding
(``unijax.fit._args``): the padded fit must be the unpadded one to round-off, every length of a
bucket must run one program, and a later process must load the exported program instead of
tracing it, get the compilation from JAX's cache, and never trust a file it cannot check
(``unijax.fit._run``, ``unijax.fit._export``).
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _compiles import count_traces, fit_programs

from unijax import fit, theory
from unijax.fit import _args as _fit_args
from unijax.fit import _export

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
    assert fit_programs(traces) == 1, traces
    with count_traces() as traces:
        fit.fit_rates(*_trajectories(3000), **kw)  # bucket 3456: one more program
        fit.fit_rates(*_trajectories(2950), **kw)
    assert fit_programs(traces) == 1, traces


def _opts(ts, Z, fit_initial=False, max_iters=64):
    return _fit_args.prepare_fit(
        ts, Z, 1.0, 0.5, None, where=None, caller="test", rtol=1e-7, atol=1e-9, max_steps=512,
        max_iters=max_iters, opt_rtol=1e-6, opt_atol=1e-4, max_rel_stderr=fit.MAX_REL_STDERR,
        min_r2=fit.MIN_R2, retry_max_steps=(), scales=(0.3, 1.0, 3.0), fit_initial=fit_initial,
    )[5]


@pytest.mark.parametrize("fit_initial", [False, True])
@pytest.mark.parametrize("return_trajectory", [False, True])
def test_the_exported_output_tables_are_the_traced_programs(return_trajectory, fit_initial):
    # A loaded program is checked against _export.stage_spec; it must describe the real
    # programs (else every load would be refused and every process would trace again).
    import jax

    from unijax.fit._program import fit_assess, fit_optimize

    ts, Z = _trajectories(100)
    grid = _fit_args.make_grid(ts, 128)
    Zp = np.concatenate([Z, np.repeat(Z[:, -1:], 28, axis=1)], axis=1)
    opts = _opts(ts, Z, fit_initial=fit_initial)
    data = (grid, Zp, np.ones(2), np.full(2, 0.5))
    lm = jax.eval_shape(lambda *a: fit_optimize(*a, opts=opts), *data, np.ones((2, 2)))
    got = tuple((tuple(v.shape), str(v.dtype)) for v in lm)
    assert got == tuple((shape, dtype) for _, shape, dtype in
                        _export.stage_spec("optimize", 2, 128, opts, return_trajectory))
    out = jax.eval_shape(lambda *a: fit_assess(*a, opts=opts,
                                               return_trajectory=return_trajectory), lm, *data)
    got = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in out.items() if v is not None)
    assert got == _export.stage_spec("assess", 2, 128, opts, return_trajectory)
    assert (out["z_fit"] is None) == (not return_trajectory)


_CHILD = """
import json, os, sys
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, sys.argv[2])
from _compiles import count_traces
from unijax import fit
from unijax.fit import _export
d = np.load(sys.argv[1])
with count_traces() as traces:
    res = fit.fit_rates(d["ts"], d["Z"], dx2=1.0, dy2=0.5, max_iters=62)
print(json.dumps({"traces": traces["_fit_optimize"], "assess": traces["_fit_assess"],
                  "all": dict(traces), "eta_h": res.eta_h.tolist(),
                  "eta_y": res.eta_y.tolist(), "sse": res.sse.tolist(),
                  "stderr": res.stderr_eta_y.tolist(), "status": res.status.tolist(),
                  "distrusted": len(_export._DISTRUSTED)}))
"""


def _child(cache, traj, **extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(cache), **extra)
    if "UNIJAX_NO_COMPILATION_CACHE" not in extra:
        env.pop("UNIJAX_NO_COMPILATION_CACHE", None)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD), str(traj),
                        str(Path(__file__).parent)],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """One cache directory after one process fitted a 200-epoch pair of trajectories (which
    exported the fit), and that process's output."""
    tmp = tmp_path_factory.mktemp("exports")
    tmp.chmod(0o700)
    ts, Z = _trajectories(200)
    np.savez(tmp / "traj.npz", ts=ts, Z=Z)
    out, _ = _child(tmp / "cache", tmp / "traj.npz")
    return tmp, out


def _fields(out):
    return {k: out[k] for k in ("eta_h", "eta_y", "sse", "stderr", "status")}


def test_a_later_process_loads_the_exported_fit_and_computes_the_same(filled, tmp_path):
    tmp, cold = filled
    cache = tmp / "cache"  # not a copy: JAX's cache keys its entries by the directory too
    files = sorted((cache / "unijax_exports").iterdir())
    assert sum(f.name.startswith("fit-assess-") for f in files) == 1, files
    assert [f.suffix for f in files] == [".jaxexport"] * 2, files  # one file per stage
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    entries = set(os.listdir(cache))
    warm, _ = _child(cache, tmp / "traj.npz")
    # Both stages loaded, not traced:
    assert (cold["traces"], cold["assess"], warm["traces"], warm["assess"]) == (1, 1, 0, 0), (
        cold, warm)
    assert set(os.listdir(cache)) == entries  # its compilation came from JAX's cache
    assert not (cache / "unijax_programs").exists()
    # The traced program (the opt-out keeps no exports; JAX's own setting is left as it is):
    # the same numbers, bitwise.
    traced, _ = _child(tmp_path / "jax", tmp / "traj.npz", UNIJAX_NO_COMPILATION_CACHE="1")
    assert traced["traces"] == traced["assess"] == 1
    assert not (tmp_path / "jax" / "unijax_exports").exists()
    assert _fields(cold) == _fields(warm) == _fields(traced)


class _Payload:
    """Unpickling this runs ``code``: what an attacker would leave in the cache."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def _other_function_export():
    import jax
    from jax import export

    spec = jax.ShapeDtypeStruct((4,), np.float64)
    return export.export(jax.jit(lambda x: (x * 3.0,)), platforms=["cpu"])(spec).serialize()


def _wrong_bucket_export():
    # The real fit, traced for a 128-epoch bucket with the key's chunk of 8 trials.
    ts, Z = _trajectories(100)
    grid = _fit_args.make_grid(ts, 128)
    Zp = np.repeat(np.concatenate([Z[:1], np.repeat(Z[:1, -1:], 28, axis=1)], axis=1), 8, 0)
    args = (grid, Zp, np.ones(8), np.full(8, 0.5), np.ones((8, 2)))
    opts = _opts(ts, Z, max_iters=62)
    return _export._export("optimize", args, opts, False, "cpu").serialize()


@pytest.mark.parametrize("kind", ["pickle", "garbage", "other function", "wrong bucket"])
def test_a_crafted_file_under_the_key_is_rebuilt_and_never_runs(filled, tmp_path, kind):
    # Each case leaves the file rebuilt, as the next case (and the test above) needs it.
    tmp, cold = filled
    cache = tmp / "cache"
    # The first stage's file (the second stage's is fit-assess-<key>.jaxexport).
    (path,) = [p for p in (cache / "unijax_exports").iterdir()
               if not p.name.startswith("fit-assess-")]
    key = path.name.removeprefix("fit-").removesuffix(".jaxexport")
    original = _export._read(path, key)
    marker = tmp_path / "ran"
    if kind == "pickle":  # no header: refused before anything parses it
        path.write_bytes(pickle.dumps(_Payload(f"open({str(marker)!r}, 'w').write('x')")))
    else:  # with the right header, so that the check of the contents is what refuses it
        payload = {"garbage": os.urandom(4096) + pickle.dumps(_Payload("1")),
                   "other function": _other_function_export(),
                   "wrong bucket": _wrong_bucket_export()}[kind]
        _export._write(path, key, payload)
    out, err = _child(cache, tmp / "traj.npz")
    assert not marker.exists()
    # The crafted stage rebuilt by tracing and marked; the other stage's file still loads.
    assert (out["traces"], out["assess"], out["distrusted"]) == (1, 0, 1), out
    assert "tracing the fit again" in err
    if kind in ("other function", "wrong bucket"):  # refused by the check of its types
        assert "not the expected fit program" in err, err
    if kind == "pickle":
        assert "does not start with the header" in err, err
    assert _fields(out) == _fields(cold)  # and the right answer
    new = _export._read(path, key)  # the file was replaced by the real program
    assert new.in_avals == original.in_avals and new.out_avals == original.out_avals
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_loaded_program_that_fails_when_run_is_rebuilt_once():
    # Any exception from a loaded program, not only JAX's runtime errors.
    import jax.numpy as jnp

    calls = []

    def bad(*xs):
        raise TypeError("Argument types differ")

    def rebuild(err):
        calls.append(type(err).__name__)
        return lambda *xs: (jnp.sum(xs[0]),)

    prog = _export._Program(bad, ["eta_h"], False, rebuild=rebuild)
    for _ in range(2):
        out = prog(np.ones(3))
        assert float(out["eta_h"]) == 3.0 and out["z_fit"] is None
    assert calls == ["TypeError"]  # rebuilt once, the rebuilt program kept
