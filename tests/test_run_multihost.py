"""``unijax run`` on several processes (jax.distributed on localhost) equals one process.

Each process is a CPU ``python -m unijax run ...`` subprocess; the processes meet on a free
localhost port. Two processes of one CPU device each are compared with one process of two
(host) devices: the same mesh, so the same per-device programs, and the results must agree
bitwise. (Against one device they agree to rounding: other per-device batch sizes compile
to other programs, see test_distributed.py.) Process 0 alone writes ``--out``.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _procs import env, free_port, run_together

from unijax import cli


def _run(out: Path, n: int, *extra: str, timeout: float = 300.0) -> list[tuple[int, str, str]]:
    """``unijax run`` with ``n`` processes of one device each, or (``n == 1``) one plain process
    with two host devices; a list of (rc, stdout, stderr)."""
    base = [sys.executable, "-m", "unijax", "run", *extra, "--out", str(out), "--no-progress"]
    if n == 1:
        cmds = [base]
    else:
        coord = f"127.0.0.1:{free_port()}"
        cmds = [
            base + ["--coordinator", coord, "--num-processes", str(n), "--process-id", str(i)]
            for i in range(n)
        ]
    return run_together(cmds, [env(2 if n == 1 else 1)] * len(cmds), timeout)


def _arrays(out: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(out / name / "result.npz") as z:
        return {k: z[k] for k in z.files}


def _assert_same_results(one: dict, two: dict, name: str) -> None:
    assert set(one) == set(two), name
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=f"{name} {k}")


def test_two_processes_run_an_experiment_as_one_process_and_resume_from_its_chunks(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    (rc, _, err), = _run(one, 1, "E2", "--preset", "tiny")
    assert rc == 0, err[-3000:]
    res = _run(two, 2, "E2", "--preset", "tiny")
    for rc, _, err in res:
        assert rc == 0, err[-3000:]
    # Process 0 prints the summary, with the verdict.
    assert re.search(r"E2  (REPRODUCED|AS AUTHORS|NOT REPRODUCED|NOT TESTED) ", res[0][1])
    assert "summary" not in res[1][1]  # the other process prints no summary
    _assert_same_results(_arrays(one, "E2"), _arrays(two, "E2"), "E2")

    # Resume with the result removed: both processes take the stored chunks (process 0
    # decides) instead of recomputing.
    first = _arrays(two, "E2")
    (two / "E2" / "results.json").unlink()
    res = _run(two, 2, "E2", "--preset", "tiny")
    assert all(rc == 0 for rc, _, _ in res), res[0][2][-3000:]
    import json

    summary = json.loads((two / "E2" / "results.json").read_text())
    assert summary["chunks_computed"] == 0 and summary["chunks_reused"] > 0, summary
    assert summary["environment"]["processes"] == 2
    for k, v in _arrays(two, "E2").items():
        np.testing.assert_array_equal(v, first[k], err_msg=k)


def test_two_processes_refuse_a_resume_against_another_config(tmp_path):
    import dataclasses

    from unijax import experiments
    from unijax.results._store import ResultStore, claim_dir

    out = tmp_path / "run"
    tiny = experiments.get("E2").presets["tiny"]
    claim_dir(out, "run")  # as `unijax run` does before its experiments
    store = ResultStore(out)
    store.begin("E2", dataclasses.replace(tiny, seed=tiny.seed + 1))
    store.record_config("E2")  # as a run that stored work would have
    res = _run(out, 2, "E2", "--preset", "tiny")
    for rc, _, err in res:  # both processes stop, naming the differing key
        assert rc == 2, err[-2000:]
        assert "seed" in err and "--fresh" in err, err[-2000:]
    assert not (out / "E2" / "chunks").exists()


@pytest.mark.slow
def test_two_processes_run_every_experiment_as_one_process(tmp_path):
    # ~2-3 min on 2 cores: every experiment's tiny preset, twice, then a resume.
    one, two = tmp_path / "one", tmp_path / "two"
    (rc, _, err), = _run(one, 1, "all", "--preset", "tiny", timeout=900)
    assert rc in (0, 1), err[-3000:]
    for rc, _, err in _run(two, 2, "all", "--preset", "tiny", timeout=900):
        assert rc in (0, 1), err[-3000:]
    for name in ("E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8"):
        _assert_same_results(_arrays(one, name), _arrays(two, name), name)
    res = _run(two, 2, "all", "--preset", "tiny", timeout=900)  # finished: skipped by both
    assert all(rc in (0, 1) for rc, _, _ in res)
    assert res[0][1].count("done earlier") == 8, res[0][1]


def test_run_rejects_bad_process_arguments_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    t0 = time.monotonic()
    rc = cli.main(["run", "E2", "--preset", "tiny", "--out", str(out), "--coordinator",
                   "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"])
    assert rc == 2 and time.monotonic() - t0 < 5.0
    err = capsys.readouterr().err
    assert "process_id=2" in err and "[0, 1]" in err
    assert not out.exists()


def test_run_gives_up_on_an_unreachable_coordinator_within_its_timeout(tmp_path, capsys):
    out = tmp_path / "run"
    t0 = time.monotonic()
    rc = cli.main(["run", "E2", "--preset", "tiny", "--out", str(out), "--coordinator",
                   f"127.0.0.1:{free_port()}", "--num-processes", "2", "--process-id", "1",
                   "--dist-timeout", "1.5"])
    assert rc == 2 and time.monotonic() - t0 < 1.5 + 3.0
    assert "127.0.0.1" in capsys.readouterr().err
    assert not out.exists()


def test_agreement_in_one_process_is_a_plain_call():
    from unijax import distributed

    sync = distributed.Agreement("test")
    assert sync.n == 1 and sync.writer
    assert sync.agree("k", lambda: {"a": 1}) == {"a": 1}
    with pytest.raises(ZeroDivisionError):
        sync.agree("k", lambda: 1 / 0)
