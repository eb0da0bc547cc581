"""The ``unijax`` command, invoked as users do (subprocess) and in-process (``cli.main``).

Bad input must give a one-line error naming the thing and the valid choices, exit status 2,
and write nothing; a run must be resumable after an interruption, losing nothing finished.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unijax import cli

ROOT = Path(__file__).resolve().parents[1]


def unijax(*args, timeout=120, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "unijax", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=kw.get("cwd", ROOT))


class _Proc:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def main(capsys, *args):
    """``cli.main(args)`` in-process (shares JAX's compiled programs), like a subprocess."""
    try:
        code = cli.main(list(args))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return _Proc(code, out.out, out.err)


def one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("unijax: error:")
    return lines[0]


def test_console_entry_point_list_and_bad_name(tmp_path):
    """The real command (``python -m unijax``): list, and an unknown experiment."""
    proc = unijax("list")
    assert proc.returncode == 0
    for i in range(1, 9):
        assert f"E{i} " in proc.stdout
    assert "quick" in proc.stdout and "paper" in proc.stdout
    line = one_line_error(unijax("run", "E9", "--out", str(tmp_path / "out")))
    assert "E9" in line and "valid choices" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, expect",
    [
        (["run", "E9"], ["E9", "valid choices", "E1", "all"]),
        (["run", "E1", "E9"], ["E9", "valid choices"]),
        (["run", "E3", "--set", "bogus=1"], ["bogus", "valid keys", "seeds"]),
        (["run", "E3", "--set", "seeds=two"], ["seeds", "int"]),
        (["run", "E3", "--set", "seeds=0"], ["seeds=0", ">= 1"]),
        (["run", "E3", "--set", "rows=nonsense"], ["nonsense", "valid choices", "default"]),
        (["run", "E3", "--set", "novalue"], ["novalue", "key=value"]),
        (["run", "E3", "--seeds", "-1"], ["--seeds", "N >= 1"]),
        (["run", "E3", "--preset", "huge"], ["huge", "quick", "paper"]),
        (["run", "E6", "--mnist", "/no/such/mnist"], ["/no/such/mnist", "does not exist",
                                                      "8x8 digits"]),
        (["run", "E6", "--set", "mnist=/no/such/file.npz"], ["/no/such/file.npz",
                                                             "does not exist"]),
        (["report", "/no/such/dir"], ["/no/such/dir", "does not exist"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, expect):
    out = tmp_path / "out"
    if args[0] == "run":
        args = [*args, "--out", str(out)]
    line = one_line_error(main(capsys, *args))
    for word in expect:
        assert word in line, (word, line)
    assert not out.exists()


def test_unwritable_output_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("cannot make a directory unwritable for this user")
        line = one_line_error(main(capsys, "run", "E4", "--preset", "tiny", "--out",
                                   str(locked / "out")))
        assert "not writable" in line and str(locked) in line
        assert not (locked / "out").exists()
    finally:
        locked.chmod(0o700)


def test_output_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    line = one_line_error(main(capsys, "run", "E4", "--out", str(f)))
    assert "not a directory" in line


def test_resume_with_other_config_is_refused_naming_keys(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "E7").mkdir(parents=True)
    (out / "E7" / "config.json").write_text(json.dumps(
        {"experiment": "E7", "config": {"seeds": 99, "width": 16}, "config_hash": "0" * 64}))
    line = one_line_error(main(capsys, "run", "E7", "--preset", "tiny", "--out", str(out)))
    assert "seeds" in line and "--fresh" in line
    assert sorted(p.name for p in (out / "E7").iterdir()) == ["config.json"]


def test_interrupted_run_resumes_without_losing_finished_work(tmp_path):
    """Kill a run after its first finished chunk, run again: the chunk is reused, the
    experiment finishes, a second run skips it, and deleting its result recomputes it from
    the chunks."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unijax", "run", "E2", "--preset", "tiny", "--out", str(out),
         "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    chunks = out / "E2" / "chunks"
    deadline = time.time() + 90
    while time.time() < deadline and not list(chunks.glob("train-*.npz")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # a hard crash, not a polite interrupt
    proc.wait()
    done_before = sorted(p.name for p in chunks.glob("*.npz"))
    assert done_before, "no chunk was finished before the kill"
    assert not (out / "E2" / "results.json").exists()

    assert cli.main(["run", "E2", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "E2" / "results.json").read_text())
    assert summary["chunks_reused"] >= len(done_before)
    assert (out / "report.md").exists()
    for name in summary["figures"]:
        assert (out / "E2" / name).exists()

    # Finished: a second run skips it.
    assert cli.main(["run", "E2", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "E2" / "results.json").read_text())["finished_at"] == \
        summary["finished_at"]

    # A deleted result is recomputed, from the stored chunks.
    (out / "E2" / "result.npz").unlink()
    assert cli.main(["run", "E2", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    again = json.loads((out / "E2" / "results.json").read_text())
    assert again["chunks_computed"] == 0 and again["chunks_reused"] > 0
    assert again["agreement"]["headline"] == summary["agreement"]["headline"]

    # The report has a paragraph with the numbers of this run, and lists the others as not run.
    report = (out / "report.md").read_text()
    assert "## E2" in report and summary["agreement"]["headline"] in report
    assert "not run in this directory" in report

    # `unijax report DIR` rebuilds it.
    (out / "report.md").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert (out / "report.md").exists()


def test_set_and_seeds_reach_the_config(tmp_path, capsys):
    out = tmp_path / "out"
    # (--seeds 2 and depth=6 are the tiny preset's own sizes: the compiled programs are shared
    # with the other tests; seed=3 changes only the random draws.)
    code = cli.main(["run", "E7", "--preset", "tiny", "--seeds", "2", "--set", "depth=6",
                     "--set", "seed=3", "--out", str(out), "--no-progress"])
    assert code == 0
    cfg = json.loads((out / "E7" / "config.json").read_text())["config"]
    assert cfg["seeds"] == 2 and cfg["depth"] == 6 and cfg["seed"] == 3
    summary = json.loads((out / "E7" / "results.json").read_text())
    assert summary["config"] == cfg and len(summary["config_hash"]) == 64
    printed = capsys.readouterr().out
    assert "summary" in printed and "E7" in printed
