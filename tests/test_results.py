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
    assert header["type"] == "unijax.train.TrainResult" and header["version"] == 1
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
    assert "PASSED: all good" in res.summary() and res.summary_dict()["config_hash"] == h
    with pytest.raises(FileNotFoundError, match=r"finished there: \['E9'\]"):
        results.load_experiment(tmp_path, "E1")


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
