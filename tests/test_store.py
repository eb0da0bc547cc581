"""Atomic, resumable result storage (unijax._store)."""

import dataclasses
import json
import os

import numpy as np
import pytest

from unijax import _store
from unijax._store import ConfigMismatchError, ResultStore


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


def test_hard_crash_leftover_temp_is_ignored_and_cleaned(tmp_path):
    store = ResultStore(tmp_path)
    h = store.begin("E1", Cfg())
    # A process killed after writing the temp file but before the rename leaves this behind:
    chunks = store.exp_dir("E1") / "chunks"
    chunks.mkdir(parents=True)
    (chunks / ".tmp-train.npz.xyz").write_bytes(b"half a file")
    assert not store.chunk_done("E1", "train", h)
    assert not store.is_finished("E1", h)
    store.begin("E1", Cfg())  # resume: stray temp files are removed
    assert not list(chunks.iterdir())


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
    store.begin("E3", Cfg())
    with pytest.raises(ConfigMismatchError) as err:
        store.begin("E3", Cfg(width=16, lr=0.02))
    assert err.value.keys == ["lr", "width"]
    assert "width" in str(err.value) and "lr" in str(err.value)
    # --fresh discards the old results and starts again.
    h = store.begin("E3", Cfg(width=16), fresh=True)
    assert store.stored_config("E3")["config_hash"] == h


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
