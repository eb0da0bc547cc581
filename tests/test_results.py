"""unijax.results: exact save/load, labelled arrays, experiment loader, the summary contract."""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unijax import configs, fit, observe, results, train
from unijax.results._store import ResultStore


@pytest.fixture(scope="module")
def grid_result():
    cfg = configs.get("default", width=8, depth=3, epochs=12, lr=0.05)
    return train.train(cfg, seeds=[3, 5], gains=[0.5, 1.0], layers=[0, 2], record_points=2,
                       record_every=4, return_params=True)


@pytest.fixture(scope="module")
def one_layer_result():
    cfg = configs.get("default", width=8, depth=3, epochs=10, lr=0.05)
    return train.train(cfg, seeds=3, gains=[0.5, 1.0])


def _rate_fit(shape=(4,), n_epochs=6, z=True):
    rng = np.random.default_rng(0)
    f64 = lambda *s: jnp.asarray(rng.random(shape + s), jnp.float64)  # noqa: E731
    b = lambda: jnp.asarray(rng.random(shape) > 0.3)  # noqa: E731
    i = lambda: jnp.asarray(rng.integers(0, 50, shape), jnp.int32)  # noqa: E731
    return fit.RateFit(
        eta_h=f64(), eta_y=f64(), stderr_eta_h=f64(), stderr_eta_y=f64(),
        cov_log_rates=f64(2, 2), sse=f64(), r2=f64(3), status=i() % 6, converged=b(),
        identified=b(), good_fit=b(), ode_ok=b(), step_budget_hit=b(), max_steps=i() + 512,
        n_iters=i(), n_ode_steps=i(), init_eta_h=f64(),
        init_eta_y=f64(), z0_fit=f64(3), z_fit=f64(n_epochs, 3) if z else None,
    )


def _assert_identical(a, b):
    assert type(a) is type(b)
    # The treedef holds the static fields (config, names, tuples): equal treedefs, equal statics.
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if not isinstance(va, (jax.Array, np.ndarray)) and va is not None and not isinstance(
                va, (dict, tuple)):
            assert type(va) is type(vb), f.name


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_train_result_round_trips_exactly(grid_result, tmp_path):
    path = grid_result.save(tmp_path / "run")
    assert path.name == "run.npz"
    back = results.load(path)
    _assert_identical(grid_result, back)
    assert back.config == grid_result.config and isinstance(back.reps, tuple)
    assert back.pair == (0, 1) and isinstance(back.pair, tuple)
    assert isinstance(back.final_params, dict)
    # Readable without unijax: plain NumPy, no pickle, a JSON header naming the type.
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["__unijax__"]))
    assert header["type"] == "unijax.train.TrainResult" and header["version"] == 2
    assert header["store_version"] == results.STORE_VERSION
    assert header["fields"]["config"]["dataclass"] == "unijax.configs.TrainConfig"


@pytest.mark.parametrize("shape, z", [((4,), True), ((), True), ((3,), False)])
def test_rate_fit_round_trips_exactly(shape, z, tmp_path):
    rf = _rate_fit(shape, z=z)
    back = results.load(results.save(tmp_path / "fit.npz", rf))
    _assert_identical(rf, back)


def test_trajectory_and_mean_fit_round_trip(tmp_path):
    traj = observe.trajectory(np.random.default_rng(0).normal(size=(2, 7, 2, 3)),
                              np.zeros((2, 7, 2, 1)), [[0.0], [1.0]], dx2=0.5)
    _assert_identical(traj, results.load(traj.save(tmp_path / "t.npz")))
    mf = fit.MeanFit(*(jnp.arange(3.0) for _ in range(6)), converged=jnp.array([1, 0, 1], bool),
                     n_iters=jnp.arange(3), loss_fit=jnp.ones((3, 4)))
    _assert_identical(mf, results.load(mf.save(tmp_path / "m.npz")))


def test_save_and_load_refuse_what_they_cannot_keep(tmp_path):
    with pytest.raises(TypeError, match="unijax result"):
        results.save(tmp_path / "x.npz", {"a": 1})
    np.savez(tmp_path / "plain.npz", a=np.arange(3))
    with pytest.raises(ValueError, match="not a saved unijax result"):
        results.load(tmp_path / "plain.npz")


def test_train_result_labelled_dims(grid_result, one_layer_result):
    ds = grid_result.to_xarray()
    assert ds["hyw"].dims == ("gain", "seed", "layer", "epoch", "variable")
    assert ds["loss"].dims == ("gain", "seed", "epoch")
    assert list(ds["variable"].values) == ["h", "y", "w"]
    assert list(ds["seed"].values) == [3, 5] and list(ds["layer"].values) == [0, 2]
    np.testing.assert_array_equal(ds["hyw"].sel(gain=1.0, seed=5, layer=2, variable="w"),
                                  grid_result.w[1, 1, 1])
    ds1 = one_layer_result.to_xarray()
    assert ds1["hyw"].dims == ("gain", "seed", "epoch", "variable")
    df = one_layer_result.to_dataframe()
    assert list(df.columns) == ["gain", "seed", "epoch", "loss", "h", "y", "w"]
    assert len(df) == 2 * 3 * 10
    row = df[(df.gain == 1.0) & (df.seed == 2) & (df.epoch == 7)].iloc[0]
    assert row.h == pytest.approx(float(one_layer_result.h[1, 2, 7]))
    assert row.loss == pytest.approx(float(one_layer_result.loss[1, 2, 7]))
    df2 = grid_result.to_dataframe()
    assert "layer" in df2.columns and len(df2) == 2 * 2 * 2 * 12


def test_rate_fit_labelled_by_its_grid(one_layer_result):
    rf = _rate_fit((6,), n_epochs=10)
    ds = rf.to_xarray(grid=one_layer_result)
    assert ds["eta_h"].dims == ("gain", "seed")
    assert ds["z_fit"].dims == ("gain", "seed", "epoch", "variable")
    np.testing.assert_array_equal(ds["eta_h"].values, np.asarray(rf.eta_h).reshape(2, 3))
    assert rf.to_xarray()["eta_h"].dims == ("trial",)
    df = rf.to_dataframe(grid=one_layer_result)
    assert {"gain", "seed", "eta_h", "r2_w", "converged"} <= set(df.columns) and len(df) == 6
    with pytest.raises(ValueError, match="grid has 6 trials"):
        _rate_fit((4,)).to_xarray(grid=one_layer_result)


def test_missing_optional_dependency_says_what_to_install(one_layer_result, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r'pip install "unijax\[labels\]"'):
        one_layer_result.to_xarray()


def _saved_trajectory(tmp_path):
    traj = observe.trajectory(np.random.default_rng(0).normal(size=(2, 5, 2, 3)),
                              np.zeros((2, 5, 2, 1)), [[0.0], [1.0]], dx2=0.5)
    path = traj.save(tmp_path / "t.npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return path, arrays, json.loads(str(arrays.pop("__unijax__")))


def _write(path, arrays, header):
    with open(path, "wb") as f:
        np.savez(f, **arrays, **({} if header is None else {
            "__unijax__": np.asarray(header if isinstance(header, str) else json.dumps(header))
        }))


def _field(header, name):
    return header["fields"][name]


# Each crafted file: (how it is made from a saved Trajectory, words the refusal must contain).
_CRAFTED = {
    "no fields": (lambda a, h: (a, {k: v for k, v in h.items() if k != "fields"}),
                  ["header.fields", "must be a dict"]),
    "header not JSON": (lambda a, h: (a, "{not json"), ["header", "not a JSON text"]),
    "header not text": (lambda a, h: ({**a, "__unijax__": np.arange(3)}, None),
                        ["header", "not a JSON text"]),
    "missing array": (lambda a, h: ({k: v for k, v in a.items() if k != "a1"}, h),
                      ["Trajectory.hyw", "'a1'", "does not hold"]),
    "unknown field": (lambda a, h: (a, {**h, "fields": {**h["fields"], "evil": 1}}),
                      ["'evil' is not a field of Trajectory"]),
    "missing field": (lambda a, h: (a, {**h, "fields": {k: v for k, v in h["fields"].items()
                                                        if k != "dx2"}}),
                      ["dx2", "missing"]),
    "string for an array": (lambda a, h: (a, {**h, "fields": {**h["fields"], "hyw": "abc"}}),
                            ["Trajectory.hyw", "must be an array", "abc"]),
    "mismatched shapes": (lambda a, h: ({**a, "a0": np.arange(7.0)}, h),
                          ["Trajectory", "shape (2, 5, 3)"]),
    "integer where float": (lambda a, h: ({**a, "a1": np.ones((2, 5, 3), int)}, h),
                            ["Trajectory.hyw", "int64", "Float"]),
    "foreign type": (lambda a, h: (a, {**h, "type": "os.path.join"}),
                     ["header.type", "not a unijax type"]),
    "unijax non-result": (lambda a, h: (a, {**h, "type": "unijax.cli.nothing"}),
                          ["header.type", "not a unijax result type"]),
    "unknown node": (lambda a, h: (a, {**h, "fields": {**h["fields"], "dx2": {"code": 1}}}),
                     ["Trajectory.dx2", "unreadable entry"]),
    "stray array": (lambda a, h: ({**a, "zz": np.ones(2)}, h), ["zz", "not referred to"]),
    "unknown header key": (lambda a, h: (a, {**h, "run": "me"}), ["header", "'run'"]),
}


@pytest.mark.parametrize("kind", list(_CRAFTED))
def test_a_crafted_result_file_is_refused_naming_the_file_and_the_field(tmp_path, kind):
    path, arrays, header = _saved_trajectory(tmp_path)
    make, words = _CRAFTED[kind]
    _write(path, *make(arrays, header))
    with pytest.raises(results.DamagedStoreError) as e:
        results.load(path)
    msg = str(e.value)
    assert str(path) in msg and e.value.path == path, msg
    for w in words:
        assert w in msg, (w, msg)
    assert "allow_pickle" not in msg


@pytest.mark.parametrize("content", ["text", "pickle", "npy", "empty"])
def test_a_file_that_is_not_plain_arrays_is_refused_without_suggesting_pickle(
        tmp_path, content):
    import pickle

    path = tmp_path / "r.npz"
    if content == "text":
        path.write_text("hello, I am not an archive\n" * 10)
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"a": 1}))
    elif content == "npy":
        np.save(path.with_suffix(".npy"), np.arange(3))
        path.with_suffix(".npy").rename(path)
    else:
        path.write_bytes(b"")
    with pytest.raises(results.DamagedStoreError) as e:
        results.load(path)
    assert str(path) in str(e.value) and "allow_pickle" not in str(e.value)
    assert "not a readable .npz" in str(e.value)


def test_a_result_file_of_an_older_format_is_refused_saying_what_to_do(tmp_path):
    path, arrays, header = _saved_trajectory(tmp_path)
    old = {k: v for k, v in header.items() if k != "store_version"}
    _write(path, arrays, {**old, "version": 1})
    with pytest.raises(results.OlderStoreError, match=r"result format 1 .*compute the result "
                       "again"):
        results.load(path)


def test_load_experiment(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        seeds: int = 2

    store = ResultStore(tmp_path)
    h = store.begin("E9", Cfg())  # marks the directory as unijax's
    info = {"experiment": "E9", "title": "t", "preset": "tiny",
            "agreement": {"headline": "all good", "passed": True, "criterion": "c"}}
    store.save_result("E9", {"x": np.arange(4.0)}, info, config_hash=h)
    (tmp_path / "E9" / "fig.png").write_bytes(b"png")
    res = results.load_experiment(tmp_path, "E9")
    np.testing.assert_array_equal(res["x"], np.arange(4.0))
    assert res.passed is True and res.figures[0].name == "fig.png"
    assert res.verdict == "REPRODUCED"  # stored before verdicts: given from passed
    assert "  REPRODUCED: all good" in res.summary() and res.summary_dict()["config_hash"] == h
    # An agreement with per-row verdicts: the stored verdict and the rows per verdict.
    rows = {"a": "REPRODUCED", "b": "AS AUTHORS", "c": "AS AUTHORS", "d": "NOT TESTED"}
    store.save_result("E9", {"x": np.arange(4.0)}, {**info, "agreement": {
        "headline": "h", "passed": False, "verdict": "AS AUTHORS", "rows": rows}},
        config_hash=h)
    res = results.load_experiment(tmp_path, "E9")
    assert res.verdict == "AS AUTHORS" and res.passed is False
    assert "  AS AUTHORS: h" in res.summary()
    assert "  rows: 1 REPRODUCED, 2 AS AUTHORS, 1 NOT TESTED" in res.summary()
    assert "PASS" not in res.summary()
    with pytest.raises(FileNotFoundError, match=r"finished there: \['E9'\]"):
        results.load_experiment(tmp_path, "E1")
    # A crafted results.json or result.npz: refused naming the file and the field.
    for bad in ({"agreement": "yes"}, {"figures": ["../../etc/passwd"]}, {"wall_s": "abc"},
                {"cpu_s": [1]}):
        summary = json.loads((tmp_path / "E9" / "results.json").read_text())
        (tmp_path / "E9" / "results.json").write_text(json.dumps({**summary, **bad}))
        with pytest.raises(results.DamagedStoreError, match="results.json") as e:
            results.load_experiment(tmp_path, "E9")
        assert next(iter(bad)) in str(e.value)
        (tmp_path / "E9" / "results.json").write_text(json.dumps(summary))
    (tmp_path / "E9" / "result.npz").write_text("plain text")
    with pytest.raises(results.DamagedStoreError, match="result.npz is unreadable") as e:
        results.load_experiment(tmp_path, "E9")
    assert "allow_pickle" not in str(e.value)
    with pytest.raises(ValueError, match="name='../E9'"):
        results.load_experiment(tmp_path, "../E9")


def test_every_result_has_the_same_summary_contract(grid_result):
    traj = observe.trajectory(np.ones((5, 2, 3)), np.zeros((5, 2, 1)), [[0.0], [1.0]], dx2=1.0)
    mf = fit.MeanFit(*(jnp.arange(1.0, 4.0) for _ in range(6)),
                     converged=jnp.array([1, 0, 1], bool), n_iters=jnp.arange(3),
                     loss_fit=jnp.ones((3, 4)))
    for r in (grid_result, _rate_fit(), _rate_fit(()), mf, traj):
        assert isinstance(r.summary(), str) and r.summary()
        d = r.summary_dict()
        json.dumps(d, allow_nan=False)  # JSON-ready: NaN written as None
        assert d == results.summary_dict(r)
