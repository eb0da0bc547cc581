"""Atomic, resumable result storage (unijax.results._store).

The store is the unit here: a private module, tested through its own public names (what
`unijax run`, `unijax.sweep` and `unijax.results` build on) and the file layout its docstring
documents (``OUT/<EXP>/chunks/<id>.npz``), never through its private helpers.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from unijax.results import _store
from unijax.results._store import ConfigMismatchError, ResultStore


@dataclasses.dataclass(frozen=True)
class Cfg:
    width: int = 8
    lr: float = 0.01
    archs: tuple[str, ...] = ("default", "relu")


def test_hash_is_stable_and_sensitive_to_every_field():
    h = _store.config_hash(Cfg())
    assert h == _store.config_hash(Cfg()) and len(h) == 64
    assert h != _store.config_hash(Cfg(width=9))
    assert h != _store.config_hash(Cfg(lr=0.010000000000000002))  # exact float comparison
    assert h != _store.config_hash(Cfg(archs=("relu", "default")))


def test_atomic_npz_roundtrip_with_hash(tmp_path):
    arrays = {"x": np.arange(3.0), "s": "E3"}
    p = _store.atomic_save_npz(tmp_path / "a.npz", arrays, config_hash="abc")
    got = _store.load_npz(p)
    np.testing.assert_array_equal(got["x"], np.arange(3.0))
    assert str(got["s"]) == "E3" and str(got[_store.HASH_KEY]) == "abc"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_crash_between_temp_write_and_rename_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    _store.atomic_save_json(target, {"v": 1})

    def crash(src, dst):
        raise KeyboardInterrupt("simulated crash before rename")

    monkeypatch.setattr(_store.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        _store.atomic_save_json(target, {"v": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}  # old content intact, never torn
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # temp removed


def _dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _tag(pid: int) -> str:
    import hashlib
    import socket

    return f"p{pid}h{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]}"


def test_hard_crash_leftover_temp_is_ignored_and_only_provably_stale_ones_cleaned(tmp_path):
    store = ResultStore(tmp_path)
    h = store.begin("E1", Cfg())
    store.save_chunk("E1", "other", {"a": np.ones(1)}, h)
    # A process killed after writing the temp file but before the rename leaves this behind
    # (its name records the pid and the host): a dead process's file is stale.
    chunks = store.exp_dir("E1") / "chunks"
    dead = chunks / f".tmp-train.npz.{_tag(_dead_pid())}.xyz"
    dead.write_bytes(b"half a file")
    # Another live process of this host is writing this one right now: never touched.
    live = chunks / f".tmp-c1.npz.{_tag(os.getppid())}.abc"
    live.write_bytes(b"in flight")
    # No owner recorded (another host, or an older unijax): stale only once old.
    fresh_untagged = chunks / ".tmp-c2.npz.qqq"
    fresh_untagged.write_bytes(b"?")
    old_untagged = chunks / ".tmp-c3.npz.rrr"
    old_untagged.write_bytes(b"?")
    past = os.stat(old_untagged).st_mtime - _store.STALE_TMP_S - 60
    os.utime(old_untagged, (past, past))
    assert not store.chunk_done("E1", "train", h)
    assert not store.is_finished("E1", h)
    store.begin("E1", Cfg())  # resume: provably stale temp files are removed
    assert sorted(p.name for p in chunks.iterdir()) == sorted(
        [live.name, fresh_untagged.name, "other.npz"])


def test_chunks_resume_and_hash_check(tmp_path):
    store = ResultStore(tmp_path)
    h = store.begin("E3", Cfg())
    calls = []
    cache = store.chunk_cache("E3", h)
    out = cache("grid-0", lambda: calls.append(1) or {"a": np.ones(2)})
    out2 = store.chunk_cache("E3", h)("grid-0", lambda: calls.append(1) or {"a": np.zeros(2)})
    assert calls == [1] and np.all(out2["a"] == out["a"])
    # A chunk stored under another hash is not reused.
    assert store.load_chunk("E3", "grid-0", "other") is None


def test_result_is_finished_only_with_both_files_and_same_hash(tmp_path):
    store = ResultStore(tmp_path)
    h = store.begin("E4", Cfg())
    assert not store.is_finished("E4", h)
    store.save_result("E4", {"d": np.eye(2)}, {"agreement": {"r": 0.9}}, config_hash=h)
    assert store.is_finished("E4", h)
    arrays, summary = store.load_result("E4")
    assert summary["agreement"]["r"] == 0.9 and arrays["d"].shape == (2, 2)
    (store.exp_dir("E4") / "result.npz").unlink()  # a deleted result means: not finished
    assert not store.is_finished("E4", h)


def test_resume_with_different_config_is_refused_naming_keys(tmp_path):
    store = ResultStore(tmp_path)
    h = store.begin("E3", Cfg())
    store.save_chunk("E3", "c0", {"a": np.ones(1)}, h)
    with pytest.raises(ConfigMismatchError) as err:
        ResultStore(tmp_path).begin("E3", Cfg(width=16, lr=0.02))
    assert err.value.keys == ["lr", "width"]
    assert "width" in str(err.value) and "lr" in str(err.value)
    # --fresh discards the old results and starts again.
    h = store.begin("E3", Cfg(width=16), fresh=True)
    assert store.stored_config("E3")["config_hash"] == h


def test_config_differences_name_keys_only_one_side_has_as_absent():
    # A config whose keys moved into a block, against the nested one.
    old = {"width": 16, "max_depth": None, "seeds": 2}
    new = {"size": {"width": 16, "max_depth": None}, "seeds": 2}
    keys, text = _store.config_differences(old, new)
    assert keys == ["size.width", "width"]  # None on one side, absent on the other: the same
    assert text == "size.width (stored absent, now 16), width (stored 16, now absent)"
    assert _store.config_differences({"a": None}, {"a": 1})[1] == "a (stored null, now 1)"
    assert _store.config_differences(new, new) == ([], "(code version)")


def test_nan_is_stored_as_null():
    assert _store.to_jsonable({"r": float("nan"), "a": np.array([1.0, np.inf])}) == {
        "r": None,
        "a": [1.0, None],
    }


def test_chunk_cache_of_a_non_writing_process_follows_the_writers_decision(tmp_path):
    store = ResultStore(tmp_path)
    h = store.begin("E3", Cfg())
    asked = []

    def says(answer):  # stands in for process 0's answer, sent to the other processes
        return lambda key, fn: asked.append(key) or answer

    # Process 0 says "not stored": all compute; a non-writer stores nothing.
    cache = store.chunk_cache("E3", h, agree=says(False), writer=False)
    assert cache("grid-0", lambda: {"a": np.ones(2)})["a"].tolist() == [1.0, 1.0]
    assert asked == ["E3/chunk/grid-0"] and cache.misses == 1
    assert not store.chunk_done("E3", "grid-0", h)
    # Process 0 says "stored" but this process cannot see the file: a clear error.
    cache = store.chunk_cache("E3", h, agree=says(True), writer=False)
    with pytest.raises(RuntimeError, match="shared by all processes"):
        cache("grid-0", lambda: pytest.fail("must not compute"))
    # Once it is there, it is read, not recomputed.
    store.save_chunk("E3", "grid-0", {"a": np.zeros(2)}, h)
    assert cache("grid-0", lambda: pytest.fail("must not compute"))["a"].tolist() == [0.0, 0.0]
    assert cache.hits == 1


# ---------------------------------------------------------------------------------------------
# Never touch what unijax did not write
# ---------------------------------------------------------------------------------------------


def _tree(root):
    """{relative path: bytes} of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _finished(store, name="E4", cfg=Cfg()):
    h = store.begin(name, cfg)
    store.save_chunk(name, "c0", {"a": np.arange(3.0), "b": np.ones(2)}, h)
    store.save_figures(name, lambda d: (d / "fig.png").write_bytes(b"png"))
    store.save_result(name, {"d": np.eye(2), "e": np.arange(4)},
                      {"agreement": {"passed": True}, "figures": ["fig.png"]}, config_hash=h)
    return h


def test_directories_unijax_creates_are_marked(tmp_path):
    store = ResultStore(tmp_path)
    _finished(store)
    marker = _store.read_marker(tmp_path / "E4")
    assert marker["kind"] == "experiment" and marker["name"] == "E4"
    assert marker["files"] == ["fig.png"]
    assert marker["created_by"]["unijax"] and len(marker["created_by"]["source_sha256"]) == 64


def test_fresh_removes_only_unijax_files(tmp_path):
    store = ResultStore(tmp_path)
    _finished(store)
    d = tmp_path / "E4"
    (d / "notes.txt").write_text("mine")
    (d / "chunks" / "README").write_text("mine too")
    (d / "sub").mkdir()
    (d / "sub" / "result.npz").write_bytes(b"not unijax's")
    store.begin("E4", Cfg(width=99), fresh=True)
    left = _tree(d)
    assert left.pop("notes.txt") == b"mine" and left.pop("chunks/README") == b"mine too"
    assert left.pop("sub/result.npz") == b"not unijax's"
    assert sorted(left) == [".unijax.json"]  # the new start only: config.json comes with work


@pytest.mark.parametrize("fresh", [False, True])
def test_a_foreign_directory_is_refused_and_left_untouched(tmp_path, fresh):
    d = tmp_path / "E4"
    d.mkdir()
    (d / "results.json").write_text('{"mine": 1}')
    (d / "thesis.tex").write_text("years of work")
    before = _tree(tmp_path)
    with pytest.raises(_store.ForeignDataError, match="thesis.tex") as e:
        ResultStore(tmp_path).begin("E4", Cfg(), fresh=fresh)
    assert e.value.path == d and str(d) in str(e.value)
    assert _tree(tmp_path) == before
    with pytest.raises(_store.ForeignDataError):
        ResultStore(tmp_path).save_chunk("E4", "c0", {"a": np.ones(1)}, "0" * 64)
    assert _tree(tmp_path) == before


def test_an_empty_directory_is_adopted(tmp_path):
    (tmp_path / "E4").mkdir()
    ResultStore(tmp_path).begin("E4", Cfg())
    assert _store.read_marker(tmp_path / "E4")["kind"] == "experiment"


def test_a_marker_of_another_kind_or_not_unijax_is_refused(tmp_path):
    _store.claim_dir(tmp_path / "sw", "sweep")
    with pytest.raises(_store.ForeignDataError, match="sweep directory, not a experiment"):
        ResultStore(tmp_path).begin("sw", Cfg())
    d = tmp_path / "fake"
    d.mkdir()
    (d / _store.MARKER).write_bytes(b"\xff\xfe")
    with pytest.raises(_store.ForeignDataError, match="not a marker unijax wrote"):
        ResultStore(tmp_path).begin("fake", Cfg())


def _unmarked(tmp_path, name="E4", cfg=Cfg()):
    """A directory as the unijax before markers wrote it: same layout, no marker."""
    store = ResultStore(tmp_path)
    h = _finished(store, name, cfg)
    (tmp_path / name / _store.MARKER).unlink()
    return h


def test_a_directory_of_a_unijax_before_markers_is_refused_untouched(tmp_path):
    _unmarked(tmp_path)
    before = _tree(tmp_path)
    for fresh in (False, True):
        with pytest.raises(_store.ForeignDataError, match="older than these markers"):
            ResultStore(tmp_path).begin("E4", Cfg(), fresh=fresh)
    with pytest.raises(_store.ForeignDataError, match="older than these markers"):
        _store.claim_dir(tmp_path, "run")
    assert _tree(tmp_path) == before


def test_a_run_directory_with_foreign_contents_is_refused(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "report.md").write_text("# My report\n")
    with pytest.raises(_store.ForeignDataError, match="not empty") as e:
        _store.claim_dir(project, "run")
    assert "older" not in str(e.value)


def _downgrade(d):
    """Rewrite experiment directory ``d`` as store format 1 wrote it (no store_version)."""
    for f in ("config.json", "results.json"):
        if (d / f).exists():
            obj = json.loads((d / f).read_text())
            obj.pop("store_version")
            (d / f).write_text(json.dumps(obj))
    for npz in [d / "result.npz", *(d / "chunks").glob("*.npz")]:
        arrays = _store.load_npz(npz)
        arrays.pop(_store.VERSION_KEY)
        with open(npz, "wb") as f:
            np.savez(f, **arrays)


def test_every_stored_file_records_the_store_version(tmp_path):
    store = ResultStore(tmp_path)
    _finished(store)
    d = tmp_path / "E4"
    for f in ("config.json", "results.json", ".unijax.json"):
        assert json.loads((d / f).read_text())["store_version"] == _store.STORE_VERSION
    for npz in (d / "result.npz", d / "chunks" / "c0.npz"):
        assert int(_store.load_npz(npz)[_store.VERSION_KEY]) == _store.STORE_VERSION


def test_an_older_store_format_is_refused_by_name_and_fresh_recomputes(tmp_path):
    store = ResultStore(tmp_path)
    _finished(store)
    d = tmp_path / "E4"
    _downgrade(d)
    with pytest.raises(ConfigMismatchError, match=r"older unijax \(store format 1; this "
                       r"unijax reads format 2\).*--fresh") as e:
        ResultStore(tmp_path).begin("E4", Cfg())
    assert e.value.keys == ["store_version"]
    with pytest.raises(_store.OlderStoreError, match=r"store format 1.*unijax run E4 --fresh"):
        ResultStore(tmp_path).load_result("E4")
    logged = []
    old_chunk = ResultStore(tmp_path, log=logged.append).load_chunk(
        "E4", "c0", _store.config_hash(Cfg()))
    assert old_chunk is None and "older unijax" in logged[0]  # never read: recomputed
    store = ResultStore(tmp_path)
    h = store.begin("E4", Cfg(), fresh=True)
    assert not store.is_finished("E4", h) and not (d / "chunks" / "c0.npz").exists()
    _finished(store)
    assert store.load_result("E4")[1]["store_version"] == _store.STORE_VERSION


def test_figures_never_overwrite_a_foreign_file(tmp_path):
    store = ResultStore(tmp_path)
    store.begin("E4", Cfg())
    (tmp_path / "E4" / "fig.png").write_bytes(b"my figure")
    with pytest.raises(_store.ForeignDataError, match="fig.png"):
        store.save_figures("E4", lambda d: (d / "fig.png").write_bytes(b"png"))
    assert (tmp_path / "E4" / "fig.png").read_bytes() == b"my figure"
    assert not [p for p in (tmp_path / "E4").iterdir() if p.name.startswith(".tmp-")]


# ---------------------------------------------------------------------------------------------
# Stores that heal
# ---------------------------------------------------------------------------------------------


def _rewrite_npz(path, drop=(), keep_members=True):
    arrays = _store.load_npz(path)
    for k in drop:
        arrays.pop(k)
    if not keep_members:
        arrays.pop(_store.MEMBERS_KEY)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _corrupt_member(path, member="d"):
    """Flip bytes inside one member's compressed data (the zip stays readable)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.getinfo(f"{member}.npy")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 5, start + min(info.compress_size, 40)):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


_RESULT_DAMAGE = {
    "results.json not UTF-8": ("results.json", lambda p: p.write_bytes(b"\xff\xfe{]")),
    "results.json not an object": ("results.json", lambda p: p.write_text("[1, 2]")),
    "results.json bad field": ("results.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "agreement": {"passed": [1]}}))),
    "results.json unknown verdict": ("results.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "agreement": {"verdict": "PASS"}}))),
    "results.json bad row verdict": ("results.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "agreement": {"rows": {"default": "maybe"}}}))),
    "result.npz zero bytes": ("result.npz", lambda p: p.write_bytes(b"")),
    "result.npz truncated": ("result.npz", lambda p: p.write_bytes(p.read_bytes()[:200])),
    "result.npz corrupt member": ("result.npz", _corrupt_member),
    "result.npz missing member": ("result.npz", lambda p: _rewrite_npz(p, drop=["d"])),
    "figure missing": ("fig.png", lambda p: p.unlink()),
}


@pytest.mark.parametrize("kind", list(_RESULT_DAMAGE))
def test_a_damaged_result_is_named_and_not_finished(tmp_path, kind):
    fname, damage = _RESULT_DAMAGE[kind]
    logged = []
    store = ResultStore(tmp_path, log=logged.append)
    h = _finished(store)
    damage(tmp_path / "E4" / fname)
    assert not store.is_finished("E4", h)
    assert store.finished_result("E4", h) is None
    assert len(logged) == 1 and fname in logged[0] and "recomputing" in logged[0]
    with pytest.raises(_store.DamagedStoreError, match=fname.replace(".", r"\.")):
        store.load_result("E4")  # what `unijax report` names
    assert store.begin("E4", Cfg()) == h  # the directory is not blocked
    assert store.load_chunk("E4", "c0", h) is not None  # the good chunk is kept


_CHUNK_DAMAGE = {
    "zero bytes": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "not a zip": lambda p: p.write_bytes(b"\x93NUMPY garbage"),
    "missing member": lambda p: _rewrite_npz(p, drop=["b"]),
    "corrupt member": lambda p: _corrupt_member(p, "a"),
}


@pytest.mark.parametrize("kind", list(_CHUNK_DAMAGE))
def test_a_damaged_chunk_is_recomputed_and_the_others_kept(tmp_path, kind):
    logged = []
    store = ResultStore(tmp_path, log=logged.append)
    h = store.begin("E4", Cfg())
    cache = store.chunk_cache("E4", h)
    for c in ("c0", "c1"):
        cache(c, lambda: {"a": np.arange(50.0), "b": np.ones(2)})
    _CHUNK_DAMAGE[kind](tmp_path / "E4" / "chunks" / "c0.npz")
    again = store.chunk_cache("E4", h)
    got = again("c0", lambda: {"a": np.arange(50.0), "b": np.ones(2)})
    again("c1", lambda: pytest.fail("the good chunk must be reused"))
    assert again.misses == 1 and again.hits == 1 and got["b"].tolist() == [1.0, 1.0]
    assert len(logged) == 1 and "c0.npz" in logged[0] and "recomputing" in logged[0]
    assert store.chunk_done("E4", "c0", h)  # stored again, whole


def test_a_chunk_without_its_member_list_is_damaged_and_recomputed(tmp_path):
    logged = []
    store = ResultStore(tmp_path, log=logged.append)
    h = store.begin("E4", Cfg())
    store.save_chunk("E4", "c0", {"a": np.ones(2), "b": np.ones(2)}, h)
    _rewrite_npz(tmp_path / "E4" / "chunks" / "c0.npz", drop=["b"], keep_members=False)
    assert store.load_chunk("E4", "c0", h) is None
    assert "does not list its arrays" in logged[0]


def test_a_stored_chunk_asked_for_an_array_it_lacks_raises_a_named_error(tmp_path):
    store = ResultStore(tmp_path)
    h = store.begin("E4", Cfg())
    store.save_chunk("E4", "c0", {"a": np.ones(2)}, h)
    got = store.chunk_cache("E4", h)("c0", lambda: pytest.fail("must be read"))
    with pytest.raises(_store.DamagedChunkError, match="chunk 'c0' of E4 has no array 'b'") as e:
        got["b"]
    assert (e.value.chunk, e.value.key) == ("c0", "b")


def test_a_damaged_config_json_is_rewritten(tmp_path):
    logged = []
    store = ResultStore(tmp_path)
    h = store.begin("E4", Cfg())
    store.save_chunk("E4", "c0", {"a": np.ones(1)}, h)
    (tmp_path / "E4" / "config.json").write_bytes(b"\x00\xff")
    store = ResultStore(tmp_path, log=logged.append)
    assert store.begin("E4", Cfg()) == h
    store.save_chunk("E4", "c1", {"a": np.ones(1)}, h)
    assert store.stored_config("E4")["config_hash"] == h
    assert "config.json" in logged[0]


def test_upstream_inputs_are_part_of_the_stored_hash(tmp_path):
    logged = []
    store = ResultStore(tmp_path, log=logged.append)
    plain = store.begin("E4", Cfg())
    assert plain == _store.config_hash(Cfg())  # no upstream: the config hash, as before
    h1 = store.begin("E4", Cfg(), upstream={"eta_h": 1.0, "source": "E1 (a)"})
    store.save_result("E4", {"d": np.ones(1)}, {}, config_hash=h1)
    assert h1 != plain and store.is_finished("E4", h1)
    h2 = store.begin("E4", Cfg(), upstream={"eta_h": 2.0, "source": "E1 (b)"})
    assert h2 not in (h1, plain) and not store.is_finished("E4", h2)
    store.save_chunk("E4", "c0", {"a": np.ones(1)}, h2)
    assert "upstream" in logged[-1] and "E1 (b)" in logged[-1]
    assert store.stored_config("E4")["upstream"]["eta_h"] == 2.0


def test_chunks_and_results_record_the_code_version(tmp_path):
    from unijax._version import code_version

    store = ResultStore(tmp_path)
    h = _finished(store)
    cv = code_version()
    raw = _store.load_npz(tmp_path / "E4" / "chunks" / "c0.npz")
    assert json.loads(str(raw[_store.CODE_KEY])) == cv.as_dict()
    assert json.loads((tmp_path / "E4" / "results.json").read_text())["code_version"] == \
        cv.as_dict()
    arrays, _ = store.load_result("E4")
    assert set(arrays) == {"d", "e"} and store.finished_result("E4", h) is not None


def test_the_config_is_recorded_with_the_first_stored_work_not_at_begin(tmp_path):
    """A run refused before it stores anything (too large for memory, say) must leave no
    config behind that would refuse the next, sensible run in the same directory."""
    store = ResultStore(tmp_path)
    h = store.begin("E4", Cfg(width=10**6))
    assert not (tmp_path / "E4" / "config.json").exists()
    assert store.stored_config("E4")["config_hash"] == h  # this store knows what it began
    assert ResultStore(tmp_path).begin("E4", Cfg()) == _store.config_hash(Cfg())  # no refusal
    store = ResultStore(tmp_path)
    h = store.begin("E4", Cfg())
    store.save_chunk("E4", "c0", {"a": np.ones(1)}, h)
    assert json.loads((tmp_path / "E4" / "config.json").read_text())["config_hash"] == h
    store = ResultStore(tmp_path)
    store.begin("E4", Cfg(), upstream={"eta_h": 1.0})
    store.record_config("E4")  # written on demand, too
    assert json.loads((tmp_path / "E4" / "config.json").read_text())["upstream"] == {
        "eta_h": 1.0}


def test_the_store_checks_the_verdict_words_of_the_experiments():
    """The store sits below the experiments, so it checks stored verdicts against its own list
    of words; it must be the Verdict enum's."""
    from unijax.experiments._common import Verdict

    assert _store.VERDICT_WORDS == tuple(v.value for v in Verdict)
