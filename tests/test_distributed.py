"""unijax.distributed: start-up checks, padding, sharded == unsharded, two processes == one.

Multi-device runs happen in subprocesses started with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (the device count is fixed when JAX
starts); multi-process runs start two CPU processes that meet on a free localhost port.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _procs import REPO, env, free_port, run_together

from unijax import distributed


def _run(script: str, *args, n_devices: int = 1, timeout: float = 300.0):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        env=env(n_devices),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------
# Bad input is rejected before any work
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "coordinator, n, pid, match",
    [
        ("127.0.0.1:1234", 0, 0, r"num_processes=0 .*>= 1"),
        ("127.0.0.1:1234", 2, 2, r"process_id=2 .*\[0, 1\]"),
        ("127.0.0.1:1234", 2, -1, r"process_id=-1 .*\[0, 1\]"),
        ("127.0.0.1:1234", 2.0, 0, r"num_processes must be an integer"),
        (None, 2, 0, r"coordinator is required"),
        ("localhost", 2, 0, r"coordinator='localhost' .*HOST:PORT"),
        ("localhost:0", 2, 0, r"HOST:PORT with PORT in \[1, 65535\]"),
        ("localhost:70000", 2, 0, r"HOST:PORT"),
        (":1234", 2, 0, r"HOST:PORT"),
        ("a b:1234", 2, 0, r"HOST:PORT"),
    ],
)
def test_bad_process_arguments_are_rejected_naming_the_argument(coordinator, n, pid, match):
    with pytest.raises(ValueError, match=match):
        distributed.initialize(coordinator, n, pid, timeout_s=1)


def test_coordinator_forms_are_parsed():
    assert distributed.parse_coordinator("10.0.0.1:1234") == ("10.0.0.1", 1234)
    assert distributed.parse_coordinator("node-001.cluster:29500") == ("node-001.cluster", 29500)
    assert distributed.parse_coordinator("[::1]:80") == ("::1", 80)


def test_single_process_needs_no_runtime():
    assert distributed.initialize(None, 1, 0) is None
    assert distributed.is_writer()
    distributed.barrier("no-op in one process")


def test_unreachable_coordinator_fails_within_the_timeout():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(distributed.CoordinatorUnreachableError, match=f"127.0.0.1:{port}"):
        distributed.initialize(f"127.0.0.1:{port}", 2, 1, timeout_s=1.5, verbose=False)
    assert time.monotonic() - t0 < 1.5 + 1.0


def test_cli_rejects_mismatched_process_arguments_before_any_work(tmp_path, capsys):
    from unijax import cli

    out = tmp_path / "sw"
    argv = ["sweep", "--out", str(out), "--coordinator", "127.0.0.1:1", "--num-processes", "2",
            "--process-id", "2", "--set", "width=8", "--set", "depth=2", "--set", "epochs=5"]
    t0 = time.monotonic()
    assert cli.main(argv) == 2
    assert time.monotonic() - t0 < 5.0
    err = capsys.readouterr().err
    assert "process_id=2" in err and "[0, 1]" in err
    assert not out.exists()  # nothing written


# ---------------------------------------------------------------------------------------------
# Several devices == one device
# ---------------------------------------------------------------------------------------------


_SHARDED_SCRIPT = """
    import sys, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from unijax import _batch, theory
    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    # a batch of 5 does not divide 2 devices: one padding element
    x = rng.normal(size=(5, 3))
    out = _batch.map_batch(lambda t: {"s": jnp.sin(t["x"]) @ jnp.ones(3)}, {"x": x})
    np.testing.assert_array_equal(out["s"], np.asarray(jnp.sin(x) @ jnp.ones(3)))
    b = _batch.shard({"x": x}, _batch.batch_mesh())
    assert (b.n_valid, b.n_padded) == (5, 1)
    assert len(b.arrays["x"].sharding.device_set) == 2
    # whole-data-set theory, the data split over the devices (37 points, blocks of 4)
    X, Y = rng.normal(size=(37, 4)), rng.normal(size=(37, 2))
    ref = np.asarray(theory.exponential_weighting_from_data(X, Y, rows=[0, 5, 36], cols=[1, 2],
                                                            block_size=4))
    got = theory.exponential_weighting_from_data(X, Y, rows=[0, 5, 36], cols=[1, 2],
                                                 block_size=4,
                                                 mesh=Mesh(np.array(jax.devices()), ("d",)))
    np.testing.assert_allclose(got, ref, rtol=1e-12)  # summation order differs
    # each device runs its slice in chunks (19 trials: 2 chunks of 8 on the first device,
    # one on the second); the loop's order must not mix trials up
    z = rng.normal(size=(19, 3))
    mapped = _batch.map_over_devices(lambda k, b: jnp.sin(b["z"]) * k, 2.0, {"z": z},
                                     _batch.batch_mesh())
    np.testing.assert_array_equal(mapped, np.asarray(jnp.sin(z) * 2.0))
    print("OK")
"""


def test_sharded_equals_unsharded_on_two_host_devices():
    r = _run(_SHARDED_SCRIPT, n_devices=2)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def _mode(arrays, mode):
    return {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(mode + ".")}


_CHUNKED_FIT_SCRIPT = """
    import sys, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh
    from unijax import fit, theory
    assert len(jax.devices()) == 2, jax.devices()
    n = 19  # 3 chunks of 8 from threads, the last padded
    ts = np.arange(40.0)
    rng = np.random.default_rng(2)
    z0 = np.stack([rng.uniform(0.05, 0.5, n), rng.uniform(0.0, 0.05, n),
                   -rng.uniform(0.01, 0.1, n)], 1)
    eta = rng.uniform(0.5, 2.0, (n, 2)) * np.array([2e-2, 1e-2])
    Z = np.stack([np.asarray(theory.solve(z, ts, eta_h=e[0], eta_y=e[1], dx2=1.0, dy2=0.5))
                  for z, e in zip(z0, eta)])
    Z = Z + 1e-6 * rng.normal(size=Z.shape)
    where = np.ones(n, bool)
    where[int(sys.argv[2])] = False  # one trial left out (its data need not be valid)
    Z[int(sys.argv[2])] = np.nan
    res = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, return_trajectory=True, where=where)
    ref = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, return_trajectory=True, where=where,
                        mesh=Mesh(np.array(jax.devices()[:1]), ("d",)))
    from unijax.fit import _run
    out = {"programs": len(_run._PROGRAMS)}
    for k in ("eta_h", "eta_y", "stderr_eta_h", "sse", "status", "converged", "identified",
              "good_fit", "step_budget_hit", "max_steps", "n_iters", "n_ode_steps", "z_fit"):
        out["got." + k] = np.asarray(getattr(res, k))
        out["ref." + k] = np.asarray(getattr(ref, k))
    np.savez(sys.argv[1], **out)
    print("OK")
"""


def test_fit_on_two_host_devices_runs_as_on_one(tmp_path):
    # The CPU devices of one process share its cores: the fit runs the one-device chunks on
    # the first device (one compiled program, reused), so the numbers are the same bits.
    r = _run(_CHUNKED_FIT_SCRIPT, tmp_path / "c.npz", "17", n_devices=2, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    a = dict(np.load(tmp_path / "c.npz"))
    assert int(a["programs"]) == 1
    got, ref = _mode(a, "got"), _mode(a, "ref")
    assert got["eta_h"].shape == (19,) and got["z_fit"].shape == (19, 40, 3)
    assert got["status"][17] == ref["status"][17] == -1  # NOT_FITTED, not fitted anywhere
    assert ref["converged"][np.arange(19) != 17].all()
    for k in got:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# Two processes on localhost == one process
# ---------------------------------------------------------------------------------------------

_MULTI_SCRIPT = """
    import sys, jax, numpy as np
    coordinator, n, pid, out, do_fit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        sys.argv[4], sys.argv[5] == "1"
    from unijax import _batch, configs, distributed, fit, sweep, theory
    distributed.initialize(None if n == 1 else coordinator, n, pid, timeout_s=60)
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    assert jax.process_count() == n and len(jax.devices()) == n, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))
    mapped = _batch.map_batch(lambda t: jnp.cos(t) * 2.0, x)
    n_padded = _batch.shard(x, _batch.batch_mesh()).n_padded
    X, Y = rng.normal(size=(23, 4)), rng.normal(size=(23, 2))
    ew = theory.exponential_weighting_from_data(X, Y, rows=[0, 7], cols=[3], block_size=4,
                                                mesh=_batch.batch_mesh())
    cfg = sweep.SweepConfig(train=configs.get("default", width=8, depth=2, epochs=30),
                            archs=("mlp",), gains=(0.5, 1.0), seeds=(0, 1, 2), layers=(0, 1),
                            seeds_per_chunk=2, fit=False)
    res = sweep.run_sweep(cfg, out + "/sweep", progress=False)
    arrays = {"mapped": mapped, "ew": ew, **res.arrays()}
    if do_fit:  # 3 ODE trajectories with noise: 2 per process (one padding trial)
        ts = np.arange(40.0)
        z0 = np.stack([rng.uniform(0.05, 0.5, 3), rng.uniform(0.0, 0.05, 3),
                       -rng.uniform(0.01, 0.1, 3)], 1)
        Z = np.stack([np.asarray(theory.solve(z, ts, eta_h=2e-2, eta_y=1e-2, dx2=1.0,
                                              dy2=0.5)) for z in z0])
        Z = Z + 1e-6 * rng.normal(size=Z.shape)
        f = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, return_trajectory=False)
        arrays.update({f"fit.{k}": np.asarray(getattr(f, k))
                       for k in ("eta_h", "eta_y", "converged", "n_iters")})
    if distributed.is_writer():
        np.savez(out + "/arrays.npz", **arrays)
    print("OK", pid, n_padded, res.n_computed)
"""


def _multi(tmp_path: Path, n: int, do_fit: bool, timeout: float):
    out = tmp_path / f"n{n}"
    out.mkdir()
    coordinator = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-c", textwrap.dedent(_MULTI_SCRIPT), coordinator, str(n)]
    results = run_together(
        [cmd + [str(i), str(out), "1" if do_fit else "0"] for i in range(n)],
        [env(1)] * n,
        timeout,
    )
    for rc, stdout, stderr in results:
        assert rc == 0 and "OK" in stdout, stderr[-3000:]
    ok_lines = [next(ln for ln in r[1].splitlines() if ln.startswith("OK")) for r in results]
    return dict(np.load(out / "arrays.npz")), ok_lines


def _two_vs_one(tmp_path, do_fit, timeout):
    one, _ = _multi(tmp_path, 1, do_fit, timeout)
    two, outs = _multi(tmp_path, 2, do_fit, timeout)
    # 2 gains x 2 seed blocks = 4 chunks: process 0 computed chunks 0 and 2, process 1 1 and 3
    assert [int(o.split()[3]) for o in outs] == [2, 2], outs
    assert [int(o.split()[2]) for o in outs] == [1, 1]  # 5 elements over 2 devices: 1 padded
    assert set(one) == set(two)
    for k in one:
        if k == "ew" or "." in k:
            continue
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)  # same programs: bitwise
    np.testing.assert_allclose(one["ew"], two["ew"], rtol=1e-12)  # psum order differs
    if do_fit:
        a, b = _mode(one, "fit"), _mode(two, "fit")
        np.testing.assert_array_equal(a["converged"], b["converged"])
        np.testing.assert_array_equal(a["n_iters"], b["n_iters"])
        assert a["converged"].all()
        for k in ("eta_h", "eta_y"):  # 3 trials on one device vs 2 per device
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, err_msg=k)


def test_two_processes_give_the_single_process_results(tmp_path):
    _two_vs_one(tmp_path, do_fit=False, timeout=240)


@pytest.mark.slow
def test_two_processes_fit_gives_the_single_process_fit(tmp_path):
    # ~1-2 min: each process compiles the fit.
    _two_vs_one(tmp_path, do_fit=True, timeout=600)
