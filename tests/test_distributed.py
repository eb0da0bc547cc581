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
# Padding and sharding
# ---------------------------------------------------------------------------------------------


def test_pad_batch_repeats_the_last_element_to_a_multiple():
    tree = {"a": np.arange(5.0), "b": np.arange(10).reshape(5, 2)}
    padded, n = distributed.pad_batch(tree, 4)
    assert n == 5
    np.testing.assert_array_equal(padded["a"], [0, 1, 2, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(padded["b"][5:], [[8, 9]] * 3)
    same, n = distributed.pad_batch(tree, 5)
    assert n == 5 and same["a"].shape == (5,)
    with pytest.raises(ValueError, match="multiple=0"):
        distributed.pad_batch(tree, 0)
    with pytest.raises(ValueError, match="share axis 0"):
        distributed.pad_batch({"a": np.zeros(3), "b": np.zeros(4)}, 2)


def test_shard_batch_on_one_device_reports_no_padding():
    batch = distributed.shard_batch({"x": np.arange(3.0)}, distributed.batch_mesh())
    assert batch.n_valid == 3 and batch.n_padded == len(distributed.batch_mesh().devices) * 0
    out = distributed.gather_batch({"x": batch.arrays["x"] * 2}, batch.n_valid)
    np.testing.assert_array_equal(out["x"], [0.0, 2.0, 4.0])


_SHARDED_SCRIPT = """
    import sys, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from unijax import distributed, theory
    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    # a batch of 5 does not divide 2 devices: one padding element
    x = rng.normal(size=(5, 3))
    out, n_padded = distributed.map_batch(lambda t: {"s": jnp.sin(t["x"]) @ jnp.ones(3)},
                                          {"x": x})
    assert n_padded == 1, n_padded
    np.testing.assert_array_equal(out["s"], np.asarray(jnp.sin(x) @ jnp.ones(3)))
    b = distributed.shard_batch({"x": x})
    assert (b.n_valid, b.n_padded) == (5, 1) and b.mask.tolist() == [True] * 5 + [False]
    assert len(b.arrays["x"].sharding.device_set) == 2
    # whole-data-set theory, the data split over the devices (37 points, blocks of 4)
    X, Y = rng.normal(size=(37, 4)), rng.normal(size=(37, 2))
    ref = np.asarray(theory.exponential_weighting_from_data(X, Y, rows=[0, 5, 36], cols=[1, 2],
                                                            block_size=4))
    got = distributed.sharded_exponential_weighting_from_data(X, Y, rows=[0, 5, 36],
                                                              cols=[1, 2], block_size=4)
    np.testing.assert_allclose(got, ref, rtol=1e-12)  # summation order differs
    print("OK")
"""


def test_sharded_equals_unsharded_on_two_host_devices():
    r = _run(_SHARDED_SCRIPT, n_devices=2)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


_FIT_SCRIPT = """
    import sys, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from unijax import distributed, fit, theory
    n_dev = len(jax.devices())
    ts = np.arange(40.0)
    rng = np.random.default_rng(1)
    # 3 trials: not a multiple of 2 devices
    z0 = np.stack([rng.uniform(0.05, 0.5, 3), rng.uniform(0.0, 0.05, 3),
                   -rng.uniform(0.01, 0.1, 3)], 1)
    Z = np.stack([np.asarray(theory.solve(z, ts, eta_h=2e-2, eta_y=1e-2, dx2=1.0, dy2=0.5))
                  for z in z0])
    Z = Z + 1e-6 * rng.normal(size=Z.shape)
    out = {}
    for mode in ("shard_map", "per_device", "spmd"):
        res = distributed.sharded_fit_rates(ts, Z, dx2=1.0, dy2=0.5, return_trajectory=False,
                                            mode=mode)
        assert (res.n_devices, res.n_padded) == (n_dev, 3 % n_dev), res
        for k in ("eta_h", "eta_y", "stderr_eta_h", "sse", "converged", "n_iters"):
            out[mode + "." + k] = np.asarray(getattr(res.fit, k))
    ref = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, return_trajectory=False)
    for k in ("eta_h", "eta_y", "stderr_eta_h", "sse", "converged", "n_iters"):
        out["ref." + k] = np.asarray(getattr(ref, k))
    np.savez(sys.argv[1], **out)
    print("OK")
"""


def _check_same_fit(a, b):
    np.testing.assert_array_equal(a["converged"], b["converged"])
    assert a["converged"].all()
    # A partitioned program is compiled separately: agreement to rounding, not bitwise.
    for k in ("eta_h", "eta_y", "stderr_eta_h"):
        if k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-9, err_msg=k)
    if "sse" in a:
        np.testing.assert_allclose(a["sse"], b["sse"], rtol=1e-6, atol=1e-20)


def _mode(arrays, mode):
    return {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(mode + ".")}


@pytest.mark.slow
def test_sharded_fit_equals_unsharded_fit(tmp_path):
    # ~3-5 min on 2 cores: five compilations of the fit (reference, shard_map, one per device,
    # partitioned).
    r = _run(_FIT_SCRIPT, tmp_path / "two.npz", n_devices=2, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    a = dict(np.load(tmp_path / "two.npz"))
    ref = _mode(a, "ref")
    # shard_map and per device: each device runs fit_rates' program on its slice (2 trials
    # vs 3): the same numbers up to the vectorization of another batch size (seen: 5e-16)
    for mode in ("shard_map", "per_device"):
        got = _mode(a, mode)
        for k in ("converged", "n_iters"):
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{mode} {k}")
        for k in ("eta_h", "eta_y"):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, err_msg=f"{mode} {k}")
        # sse sums squares of residuals ~1e-6 left by rates that agree to ~1e-16: its relative
        # error is amplified by that cancellation (seen: 1.4e-12), and stderr ~ sqrt(sse)
        for k in ("sse", "stderr_eta_h"):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, err_msg=f"{mode} {k}")
    _check_same_fit(ref, _mode(a, "spmd"))


@pytest.mark.parametrize("n_devices", [1, 2, 3, 4])
def test_cpu_fit_layout_fits_whole_chunks_and_fewer_than_8_padding_trials(n_devices):
    for n in range(1, 100):
        lay = distributed._fit_layout(n, n_devices, "cpu")
        c = -(-n // n_devices)
        assert lay.chunk == min(8, c) and lay.per_device % lay.chunk == 0
        assert lay.per_device - c < lay.chunk  # as few chunks per device as possible
        assert n <= n_devices * lay.per_device and lay.n_chunks.shape == (n_devices,)
        if lay.per_device == lay.chunk:  # one vmap per device, all of it runs
            assert lay.n_computed == n_devices * lay.per_device and lay.n_computed - n < n_devices
        else:  # devices run the chunks holding a real trial: the first ceil(n / chunk)
            assert lay.n_chunks.sum() == -(-n // lay.chunk)
            assert 0 <= lay.n_computed - n < lay.chunk
    for n in (3, 19, 100):  # elsewhere: one vmap of ceil(n / n_devices) per device
        lay = distributed._fit_layout(n, n_devices, "gpu")
        assert lay.chunk == lay.per_device == -(-n // n_devices)


def test_packed_outputs_unpack_exactly():
    import jax

    out = {
        "b": np.array([True, False, True]),
        "a": np.arange(3, dtype=np.int64) * 2**40,
        "c": np.random.default_rng(0).normal(size=(3, 2, 2)),
        "none": None,
    }
    with jax.enable_x64(True):
        packed = distributed._pack(out, ("test-key",))
        assert packed.shape == (3, 1 + 1 + 4) and packed.dtype == np.float64
        got = distributed._unpack(np.asarray(packed), distributed._PACKED_LAYOUTS[("test-key",)])
    assert got.keys() == out.keys() and got["none"] is None
    for k in ("a", "b", "c"):
        assert got[k].dtype == out[k].dtype
        np.testing.assert_array_equal(got[k], out[k])


_CHUNKED_FIT_SCRIPT = """
    import sys, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from unijax import distributed, fit, theory
    assert len(jax.devices()) == 2, jax.devices()
    n = 19  # slices of 16 per device, chunks of 8: 2 chunks + 1 chunk (3 real trials)
    ts = np.arange(40.0)
    rng = np.random.default_rng(2)
    z0 = np.stack([rng.uniform(0.05, 0.5, n), rng.uniform(0.0, 0.05, n),
                   -rng.uniform(0.01, 0.1, n)], 1)
    eta = rng.uniform(0.5, 2.0, (n, 2)) * np.array([2e-2, 1e-2])
    Z = np.stack([np.asarray(theory.solve(z, ts, eta_h=e[0], eta_y=e[1], dx2=1.0, dy2=0.5))
                  for z, e in zip(z0, eta)])
    Z = Z + 1e-6 * rng.normal(size=Z.shape)
    res = distributed.sharded_fit_rates(ts, Z, dx2=1.0, dy2=0.5, return_trajectory=True,
                                        mode=sys.argv[2])
    ref = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, return_trajectory=True)
    out = {"n_padded": res.n_padded, "n_devices": res.n_devices}
    for k in ("eta_h", "eta_y", "stderr_eta_h", "sse", "status", "converged", "identified",
              "good_fit", "step_budget_hit", "max_steps", "n_iters", "n_ode_steps", "z_fit"):
        out["got." + k] = np.asarray(getattr(res.fit, k))
        out["ref." + k] = np.asarray(getattr(ref, k))
    np.savez(sys.argv[1], **out)
    print("OK")
"""


@pytest.mark.parametrize(
    "mode",
    ["shard_map", pytest.param("per_device", marks=pytest.mark.slow)],  # same device program
)
def test_cpu_chunked_sharded_fit_equals_fit_rates(tmp_path, mode):
    # ~30 s on 2 cores: two compilations (fit_rates' chunk program, the sharded one; with
    # per_device one per device).
    r = _run(_CHUNKED_FIT_SCRIPT, tmp_path / "c.npz", mode, n_devices=2, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    a = dict(np.load(tmp_path / "c.npz"))
    # device 0 fits trials 0-15 (2 chunks), device 1 trials 16-18 and 5 copies of trial 18
    # (1 chunk; its second, all padding, is skipped)
    assert (int(a["n_padded"]), int(a["n_devices"])) == (5, 2)
    got, ref = _mode(a, "got"), _mode(a, "ref")
    assert got["eta_h"].shape == (19,) and got["z_fit"].shape == (19, 40, 3)
    assert ref["converged"].all()
    # both run chunks of 8 trials (fit_rates from threads, here in a loop per device)
    for k in ("status", "converged", "identified", "good_fit", "step_budget_hit", "max_steps",
              "n_iters", "n_ode_steps"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    for k in ("eta_h", "eta_y", "z_fit"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, err_msg=k)
    # sse cancels residuals ~1e-6 (see test_sharded_fit_equals_unsharded_fit)
    for k in ("sse", "stderr_eta_h"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, err_msg=k)


# ---------------------------------------------------------------------------------------------
# Two processes on localhost == one process
# ---------------------------------------------------------------------------------------------

_MULTI_SCRIPT = """
    import sys, jax, numpy as np
    coordinator, n, pid, out, do_fit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        sys.argv[4], sys.argv[5] == "1"
    from unijax import configs, distributed, sweep, theory
    distributed.initialize(None if n == 1 else coordinator, n, pid, timeout_s=60)
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    assert jax.process_count() == n and len(jax.devices()) == n, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))
    mapped, n_padded = distributed.map_batch(lambda t: jnp.cos(t) * 2.0, x)
    X, Y = rng.normal(size=(23, 4)), rng.normal(size=(23, 2))
    ew = distributed.sharded_exponential_weighting_from_data(X, Y, rows=[0, 7], cols=[3],
                                                             block_size=4)
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
        for mode in ("shard_map", "per_device"):
            f = distributed.sharded_fit_rates(ts, Z, dx2=1.0, dy2=0.5, mode=mode,
                                              return_trajectory=False)
            assert (f.n_devices, f.n_padded) == (n, 3 % n), f
            arrays.update({f"{mode}.{k}": np.asarray(getattr(f.fit, k))
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
        for mode in ("shard_map", "per_device"):
            a, b = _mode(one, mode), _mode(two, mode)
            np.testing.assert_array_equal(a["converged"], b["converged"])
            np.testing.assert_array_equal(a["n_iters"], b["n_iters"])
            assert a["converged"].all()
            for k in ("eta_h", "eta_y"):  # 3 trials on one device vs 2 per device
                np.testing.assert_allclose(a[k], b[k], rtol=1e-12, err_msg=f"{mode} {k}")


def test_two_processes_give_the_single_process_results(tmp_path):
    _two_vs_one(tmp_path, do_fit=False, timeout=240)


@pytest.mark.slow
def test_two_processes_fit_gives_the_single_process_fit(tmp_path):
    # ~1-2 min: each process compiles the fit.
    _two_vs_one(tmp_path, do_fit=True, timeout=600)


@pytest.mark.parametrize("kw", [{}, {"max_iters": 7, "scales": (1.0,), "return_trajectory": False,
                                  "min_r2": 0.5, "max_rel_stderr": 0.2}])
def test_sharded_fit_builds_the_same_compiled_options_as_fit_rates(monkeypatch, kw):
    # Cheap guard against drift between fit_rates and its mirror here: capture what fit_rates
    # passes to its compiled core (without compiling) and compare.
    from unijax import fit

    captured = {}

    def capture(ts, Z, dx2, dy2, init, *, opts, return_trajectory):
        captured.update(args=(ts, Z, dx2, dy2, init), opts=opts, rt=return_trajectory)
        raise StopIteration

    monkeypatch.setattr(fit, "_fit_batch", capture)
    ts = np.arange(5.0)
    Z = np.tile([[0.1, 0.01, -0.05]], (2, 5, 1))
    with pytest.raises(StopIteration):
        fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, **kw)
    ts_arr, batch, opts, rt, single, retries = distributed._prepare_fit(
        ts, Z, 1.0, 0.5, None, kw
    )
    assert opts == captured["opts"] and rt == captured["rt"] and not single
    assert retries == fit.RETRY_MAX_STEPS
    for got, ref in zip(
        (ts_arr, batch["Z"], batch["dx2"], batch["dy2"], batch["init"]),
        captured["args"],
        strict=True,
    ):
        np.testing.assert_array_equal(got, np.asarray(ref))
    with pytest.raises(ValueError, match="unknown fit option"):
        distributed._prepare_fit(ts, Z, 1.0, 0.5, None, {"bogus": 1})


@pytest.mark.slow
def test_sharded_fit_retries_a_step_limited_trial_as_fit_rates_does():
    # ~1-2.5 min on 2 busy cores: four compilations (two budgets, two entry points).
    # One device (in process), tiny step budgets so that a fast trajectory is "stiff" for the
    # first budget: the sharded fit refits it with the larger budget as fit_rates does, and
    # both report the same statuses and budgets.
    from unijax import fit, theory

    ts = np.arange(40.0)
    z0 = np.array([[2.0, 0.3, 0.1], [0.2, 0.02, -0.05]])
    rates = [(0.05, 0.5), (2e-2, 1e-2)]  # the first settles within a few epochs
    Z = np.stack([np.asarray(theory.solve(z, ts, eta_h=a, eta_y=b, dx2=1.0, dy2=0.5))
                  for z, (a, b) in zip(z0, rates, strict=True)])
    kw = dict(dx2=1.0, dy2=0.5, max_steps=12, retry_max_steps=(256,), return_trajectory=False)
    ref = fit.fit_rates(ts, Z, **kw)
    np.testing.assert_array_equal(ref.max_steps, [256, 12])
    assert ref.usable.all()
    np.testing.assert_allclose(ref.eta_h, [0.05, 2e-2], rtol=1e-3)
    no_retry = fit.fit_rates(ts, Z, **{**kw, "retry_max_steps": ()})
    assert int(no_retry.status[0]) == fit.FitStatus.STEP_BUDGET
    got = distributed.sharded_fit_rates(ts, Z, **kw).fit
    for k in ("status", "converged", "identified", "good_fit", "max_steps", "n_iters"):
        np.testing.assert_array_equal(np.asarray(getattr(got, k)), np.asarray(getattr(ref, k)),
                                      err_msg=k)
    np.testing.assert_allclose(got.eta_h, ref.eta_h, rtol=1e-9)
