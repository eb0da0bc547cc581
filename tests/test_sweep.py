"""unijax.sweep: chunking covers the grid, killed runs resume to the uninterrupted result,
resuming against another config is refused naming the keys. Tiny sizes throughout."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from _compiles import count_traces, fit_programs

from unijax import configs, results, sweep, train

REPO = Path(__file__).resolve().parents[1]
BASE = configs.get("default", width=8, depth=2, epochs=40)
# Large enough for the rate fits to converge (width 8, 40 epochs barely move: unidentified)
FIT_BASE = configs.get("default", width=32, depth=4, epochs=300, lr=0.02)


def _cfg(**kw) -> sweep.SweepConfig:
    d = dict(
        train=BASE,
        archs=("mlp",),
        gains=(0.5, 1.0),
        seeds=tuple(range(5)),
        layers=(0, 1),
        seeds_per_chunk=2,
        fit=False,
    )
    d.update(kw)
    return sweep.SweepConfig(**d)


def _assert_same(a: sweep.SweepResult, b: sweep.SweepResult):
    assert a.arrays().keys() == b.arrays().keys()
    for k, v in a.arrays().items():
        np.testing.assert_array_equal(v, b.arrays()[k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# Config and plan
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(archs=("mlp", "resnet")), r"unknown arch 'resnet'"),
        (dict(archs=()), r"archs must be a non-empty sequence"),
        (dict(gains=(1.0, -1.0)), r"gains must be finite and > 0"),
        (dict(seeds=(0, 0)), r"seeds must not repeat"),
        (dict(seeds=(-1,)), r"seeds must hold integers >= 0"),
        (dict(layers=(2,)), r"layers must lie in \[0, 1\]"),
        (dict(seeds_per_chunk=0), r"seeds_per_chunk=0 is out of range: must be an integer "
                                  r">= 1"),
        (dict(key=10**20), r"key=100000000000000000000 is out of range: must be an integer "
                           r">= 0 and <= 9223372036854775807"),
        (dict(archs=("conv",)), r"arch 'conv' does not fit the base config"),
    ],
)
def test_bad_config_is_rejected_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_chunks_cover_the_grid_once_with_equal_shapes():
    cfg = _cfg(
        archs=("mlp", "skip"),
        gains=(0.5, 1.0, 2.0),
        seeds=tuple(range(7)),
        seeds_per_chunk=3,
        gains_per_chunk=2,
    )
    plan = sweep.chunk_plan(cfg)
    assert len(plan) == 2 * 2 * 3
    assert len({c.id for c in plan}) == len(plan)
    seen = set()
    for c in plan:
        assert len(c.gains) == 2 and len(c.seeds) == 3  # padded: one compile per architecture
        for g in c.gains[: c.n_gains]:
            for s in c.seeds[: c.n_seeds]:
                seen.add((c.arch, g, s))
    assert len(seen) == 2 * 3 * 7


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def test_chunked_sweep_equals_one_training_call(tmp_path):
    cfg = _cfg()
    with count_traces() as traces:
        res = sweep.run_sweep(cfg, tmp_path / "sw", progress=False)
    assert res.n_chunks == 2 * 3 and res.n_computed == 6
    # six chunks of the same shape: the training programs are traced (compiled) once
    assert traces["v_start"] <= 1 and traces["v_chunk"] <= 1, traces
    direct = train.train(
        BASE,
        seeds=list(cfg.seeds),
        gains=list(cfg.gains),
        layers=[0, 1],
        key=jax.random.key(cfg.key),
    )
    for k in ("loss", "h", "y", "w", "diverged"):
        np.testing.assert_array_equal(getattr(res, k)[0], np.asarray(getattr(direct, k)), k)
    assert res.h.shape == (1, 2, 5, 2, 40) and res.eta_h is None
    # a finished sweep is loaded, not recomputed; load_sweep gives the same arrays
    again = sweep.run_sweep(cfg, tmp_path / "sw", progress=False)
    assert again.n_computed == 0
    _assert_same(res, again)
    _assert_same(res, sweep.load_sweep(tmp_path / "sw"))


def test_resume_against_a_different_config_is_refused_naming_the_keys(tmp_path):
    out = tmp_path / "sw"
    sweep.run_sweep(_cfg(seeds=(0, 1)), out, progress=False)
    other = _cfg(seeds=(0, 1, 2), train=BASE.replace(width=9))
    with pytest.raises(results.ConfigMismatchError, match=r"seeds .*train\.width") as e:
        sweep.run_sweep(other, out, progress=False)
    assert e.value.keys == ["seeds", "train.width"]
    assert "stored 8, now 9" in str(e.value)
    res = sweep.run_sweep(other, out, progress=False, fresh=True)  # explicit discard works
    assert res.h.shape[2] == 3


_KILL_SCRIPT = """
    import json, sys, time, jax
    jax.config.update("jax_enable_x64", True)
    from unijax import configs, sweep, train
    orig = train.train
    def slow(*args, **kwargs):  # stretch each chunk's training so that the kill lands mid-run
        out = orig(*args, **kwargs)
        time.sleep(0.4)
        return out
    train.train = slow
    cfg = sweep.SweepConfig.from_dict(json.loads(sys.argv[2]))
    sweep.run_sweep(cfg, sys.argv[1], progress=True)
"""


def _kill_midway(out: Path, cfg: sweep.SweepConfig, n_done: int, timeout: float) -> int:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_ENABLE_X64="1",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_KILL_SCRIPT),
            str(out),
            json.dumps(dataclasses.asdict(cfg)),
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and p.poll() is None:
            if len(list((out / "chunks").glob("*.npz"))) >= n_done:
                break
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read()[-3000:]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    return len(list((out / "chunks").glob("*.npz")))


def _kill_and_resume(tmp_path, cfg: sweep.SweepConfig, timeout: float):
    n_chunks = len(sweep.chunk_plan(cfg))
    out = tmp_path / "killed"
    done = _kill_midway(out, cfg, 2, timeout)
    assert 2 <= done < n_chunks
    resumed = sweep.run_sweep(cfg, out, progress=False)
    assert resumed.n_computed == n_chunks - done  # only the unfinished chunks were recomputed
    uninterrupted = sweep.run_sweep(cfg, tmp_path / "clean", progress=False)
    assert uninterrupted.n_computed == n_chunks
    _assert_same(resumed, uninterrupted)
    _assert_same(resumed, sweep.load_sweep(out))
    return resumed


def test_sweep_killed_midway_resumes_to_the_uninterrupted_result(tmp_path):
    _kill_and_resume(tmp_path, _cfg(), timeout=120)


@pytest.mark.slow
def test_sweep_with_fits_killed_midway_resumes_to_the_uninterrupted_result(tmp_path):
    # ~1-2 min: the subprocess and this process each compile the fit once.
    res = _kill_and_resume(tmp_path, _cfg(train=FIT_BASE, layers=(1, 2), fit=True), timeout=400)
    assert res.converged.shape == (1, 2, 5, 2)
    assert res.converged.mean() > 0.7  # seen: 11 of 12 on a smaller grid


def test_sweep_with_fits_compiles_the_fit_once(tmp_path):
    # two chunks of 2 seeds x 2 layers, one diverged-free fit batch each: one fit program
    cfg = _cfg(gains=(1.0,), seeds=(0, 1, 2, 3), fit=True)
    with count_traces() as traces:
        res = sweep.run_sweep(cfg, tmp_path / "sw", progress=False)
    assert res.n_chunks == 2 and res.eta_h.shape == (1, 1, 4, 2)
    assert fit_programs(traces) <= 1 and traces["v_chunk"] <= 1, traces


@pytest.mark.slow
def test_sweep_fits_equal_direct_fits(tmp_path):
    from unijax import fit

    cfg = _cfg(train=FIT_BASE, seeds=(0, 1, 2), layers=(1, 2), fit=True)
    res = sweep.run_sweep(cfg, tmp_path / "sw", progress=False)
    Z = np.stack([res.h, res.y, res.w], -1)[0].astype(np.float64)  # (G, S, L, E, 3)
    tr = train.train(FIT_BASE, seeds=[0], gains=[0.5], layers=[1, 2], key=jax.random.key(0))
    direct = fit.fit_rates(
        np.arange(300.0), Z.reshape(-1, 300, 3), dx2=tr.dx2, dy2=tr.dy2, return_trajectory=False
    )
    np.testing.assert_array_equal(res.converged[0].reshape(-1), np.asarray(direct.converged))
    ok = np.asarray(direct.converged)
    assert ok.mean() > 0.7
    np.testing.assert_allclose(
        res.eta_h[0].reshape(-1)[ok], np.asarray(direct.eta_h)[ok], rtol=1e-9
    )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _cli(*argv) -> int:
    from unijax import cli

    return cli.main(["sweep", *map(str, argv)])


def test_cli_runs_and_refuses_a_changed_config(tmp_path, capsys):
    out = tmp_path / "sw"
    common = [
        "--set",
        "width=8",
        "--set",
        "depth=2",
        "--set",
        "epochs=40",
        "--gains",
        "0.5,1",
        "--seeds",
        "3",
        "--layers",
        "0,1",
        "--no-fit",
        "--quiet",
        "--out",
        out,
    ]
    assert _cli(*common) == 0
    assert "sweep done: 6 trials" in capsys.readouterr().out
    res = sweep.load_sweep(out)
    assert res.config.seeds == (0, 1, 2) and res.config.gains == (0.5, 1.0)
    assert _cli(*common, "--set", "lr=0.01") == 2
    err = capsys.readouterr().err
    assert "differing keys: train.lr (stored 0.005, now 0.01)" in err


def test_cli_full_disk_is_one_line_and_the_resume_is_identical(tmp_path, capsys, monkeypatch):
    """ENOSPC at the second chunk's write: one line naming the file, exit 1, the first chunk
    kept; after the fix the same command finishes with the uninterrupted sweep's arrays."""
    import errno
    import stat

    from unijax.results import _store

    common = ["--set", "width=8", "--set", "depth=2", "--set", "epochs=40", "--gains", "0.5,1",
              "--seeds", "2", "--no-fit", "--quiet"]
    assert _cli(*common, "--out", tmp_path / "clean") == 0
    real, count = os.fsync, [0]

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode) and "/chunks/" in os.readlink(
                f"/proc/self/fd/{fd}"):
            count[0] += 1
            if count[0] == 2:  # the second chunk's temporary file
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to tell a chunk's write from the others")

    out = tmp_path / "sw"
    with monkeypatch.context() as m:
        m.setattr(_store.os, "fsync", fsync)
        assert _cli(*common, "--out", out) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device (ENOSPC)" in lines[0] and str(out / "chunks") in lines[0]
    assert len(list((out / "chunks").glob("*.npz"))) == 1 and not list(out.rglob(".tmp-*"))
    assert _cli(*common, "--out", out) == 0
    _assert_same(sweep.load_sweep(out), sweep.load_sweep(tmp_path / "clean"))
    # The same sweep as an older store format wrote it: refused by name, both ways.
    capsys.readouterr()
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("store_version")
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(_store.OlderStoreError, match="store format 1.*--fresh"):
        sweep.load_sweep(out)
    assert _cli(*common, "--out", out) == 2
    err = capsys.readouterr().err
    assert "older unijax (store format 1; this unijax reads format 2)" in err and "--fresh" in err


# ---------------------------------------------------------------------------------------------
# Safe with your files, and healing
# ---------------------------------------------------------------------------------------------


def test_fresh_keeps_files_unijax_did_not_write_and_a_foreign_folder_is_refused(tmp_path):

    out = tmp_path / "sw"
    cfg = _cfg(seeds=(0, 1))
    first = sweep.run_sweep(cfg, out, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / "chunks" / "README").write_text("mine too")
    again = sweep.run_sweep(cfg, out, progress=False, fresh=True)
    assert again.n_computed == again.n_chunks  # everything of unijax's was discarded
    _assert_same(first, again)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "chunks" / "README").read_text() == "mine too"

    project = tmp_path / "project"
    project.mkdir()
    (project / "results.json").write_text('{"mine": 1}')
    for fresh in (False, True):
        with pytest.raises(results.ForeignDataError, match="unijax did not write it"):
            sweep.run_sweep(cfg, project, progress=False, fresh=fresh)
    assert [p.name for p in project.iterdir()] == ["results.json"]
    assert (project / "results.json").read_text() == '{"mine": 1}'


def test_damaged_chunks_and_result_are_recomputed_the_rest_kept(tmp_path, capsys):
    out = tmp_path / "sw"
    cfg = _cfg(seeds=(0, 1, 2, 3))  # 2 gains x 2 seed blocks: 4 chunks
    first = sweep.run_sweep(cfg, out, progress=False)
    chunks = sorted((out / "chunks").glob("*.npz"))
    chunks[0].write_bytes(b"")  # zero bytes
    with np.load(chunks[1]) as z:
        arrays = dict(z)
    arrays.pop("loss")  # right hash, an array missing
    np.savez(chunks[1], **arrays)
    (out / "result.npz").write_bytes((out / "result.npz").read_bytes()[:500])  # truncated
    capsys.readouterr()
    healed = sweep.run_sweep(cfg, out, progress=False)
    err = capsys.readouterr().err
    assert healed.n_computed == 2
    assert f"{chunks[0].name} is unreadable" in err and "lacks array(s) loss" in err
    assert "result.npz is unreadable" in err
    _assert_same(first, healed)
    _assert_same(first, sweep.load_sweep(out))
    (out / "results.json").write_text("[]")  # load_sweep says it cannot use it
    with pytest.raises(FileNotFoundError, match="damaged"):
        sweep.load_sweep(out)


def test_cli_set_is_typed_by_the_train_config_and_refuses_unknown_keys(tmp_path, capsys):
    out = tmp_path / "sw"
    assert _cli("--set", "width=eight", "--out", out) == 2
    assert "--set width='eight' (sweep base config): not a valid int" in capsys.readouterr().err
    assert _cli("--set", "bogus=1", "--out", out) == 2
    err = capsys.readouterr().err
    assert "unknown --set key 'bogus'" in err and "valid keys:" in err and "width" in err
    assert not out.exists()
