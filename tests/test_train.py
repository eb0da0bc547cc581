"""unijax.train: SGD vs NumPy, vmapped = looped, sharded = unsharded, recorded = recomputed,
chunking, divergence, Adam and mini-batches, dropout, conv, bring-your-own network, errors.

Sizes are tiny (width 16, a few epochs) and results are shared through module fixtures, since
compiling is most of the cost here.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unijax import configs, data, train

ROOT = Path(__file__).resolve().parents[1]
CFG = configs.get("default", width=16, depth=3, epochs=30)
SEEDS, GAINS, LAYERS = [0, 1, 2], [0.5, 1.0], (1, 2)


@pytest.fixture(scope="module")
def grid():
    return train.train(CFG, seeds=SEEDS, gains=GAINS, layers=LAYERS, return_params=True,
                       record_points=[0, 1], record_every=10)


# ---------------------------------------------------------------- NumPy reference (float64)


def np_forward(params, x, depth):
    a, zs, acts = np.asarray(x, np.float64), [], [np.asarray(x, np.float64)]
    for k in range(depth + 1):
        p = params[f"dense_{k}"]
        z = a @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)
        zs.append(z)
        a = np.where(z > 0, z, 0.01 * z) if k < depth else z
        acts.append(a)
    return acts[-1], acts[1:-1], zs, acts


def np_sgd_step(params, x, y, lr, depth):
    """One full-batch gradient-descent step on 0.5 * mean((f(x) - y)^2), by hand."""
    out, _, zs, acts = np_forward(params, x, depth)
    delta = (out - y) / out.size  # d loss / d out
    new = {}
    for k in range(depth, -1, -1):
        p = params[f"dense_{k}"]
        w = np.asarray(p["kernel"], np.float64)
        new[f"dense_{k}"] = {
            "kernel": w - lr * acts[k].T @ delta,
            "bias": np.asarray(p["bias"], np.float64) - lr * delta.sum(axis=0),
        }
        if k:
            # PyTorch's leaky ReLU derivative: 0.01 at exactly 0 (the input x2 = 0 is there).
            delta = (delta @ w.T) * np.where(zs[k - 1] > 0, 1.0, 0.01)
    return new


def np_hyw(params, x, y, depth, layer):
    out, hs, _, _ = np_forward(params, x, depth)
    dh, df = hs[layer][1] - hs[layer][0], out[1] - out[0]
    return np.array([dh @ dh, df @ df, df @ df - (y[1] - y[0]) @ df])


def test_sgd_steps_match_numpy():
    # Same program as the looped runs below (batch of one trial, layers LAYERS).
    res = train.train(CFG, seeds=[7], gains=[1.2], layers=LAYERS, return_params=True)
    ds = data.two_points(CFG.dx2, CFG.dy2, dtype=np.float64)
    p = jax.tree.map(lambda a: np.asarray(a[0, 0], np.float64), res.initial_params)
    for epoch in range(CFG.epochs):
        out, _, _, _ = np_forward(p, ds.x, CFG.depth)
        # Records are taken before the epoch's update; float32 engine vs float64 reference.
        np.testing.assert_allclose(res.loss[0, 0, epoch], 0.5 * np.mean((out - ds.y) ** 2),
                                   rtol=2e-5)
        for li, layer in enumerate(LAYERS):
            np.testing.assert_allclose(
                [res.h[0, 0, li, epoch], res.y[0, 0, li, epoch], res.w[0, 0, li, epoch]],
                np_hyw(p, ds.x, ds.y, CFG.depth, layer), rtol=1e-4, atol=1e-7,
            )
        p = np_sgd_step(p, ds.x, ds.y, CFG.lr, CFG.depth)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a[0, 0], b, rtol=2e-5, atol=1e-7),
        res.final_params, p,
    )
    out, _, _, _ = np_forward(p, ds.x, CFG.depth)
    np.testing.assert_allclose(res.final_loss[0, 0], 0.5 * np.mean((out - ds.y) ** 2), rtol=2e-5)


def test_result_shapes_and_dtypes(grid):
    g, s, e, n_l = len(GAINS), len(SEEDS), CFG.epochs, len(LAYERS)
    assert grid.loss.shape == (g, s, e) and grid.loss.dtype == jnp.float32
    for a in (grid.h, grid.y, grid.w):
        assert a.shape == (g, s, n_l, e) and a.dtype == jnp.float32
    assert grid.final_h.shape == (g, s, n_l) and grid.final_loss.shape == (g, s)
    assert grid.diverged.shape == (g, s) and grid.diverged_epoch.shape == (g, s)
    assert grid.hyw().shape == (g, s, n_l, e, 3)
    np.testing.assert_array_equal(grid.record_epochs, [0, 10, 20])
    assert isinstance(grid.reps, tuple) and grid.reps[0].shape == (g, s, 3, 2, 16)
    assert grid.final_reps[1].shape == (g, s, 2, 16)
    assert grid.final_outputs.shape == (g, s, 2, 1)
    assert grid.n_diverged == 0 and not np.asarray(grid.diverged).any()
    assert np.all(np.asarray(grid.diverged_epoch) == -1)
    np.testing.assert_allclose([grid.dx2, grid.dy2], [CFG.dx2, CFG.dy2], rtol=1e-6)
    # y and w do not depend on the layer.
    np.testing.assert_array_equal(grid.y[:, :, 0], grid.y[:, :, 1])
    assert "3 seeds" in grid.summary() and "diverged: 0/6" in grid.summary()


def test_recorded_equal_recomputed_from_parameters(grid):
    net = train.make_network(CFG)
    ds = data.two_points(CFG.dx2, CFG.dy2)

    def observe(params, layer):
        return train.hidden_observables(net, params, ds.x, ds.y, layer=layer)

    for li, layer in enumerate(LAYERS):
        f = jax.jit(jax.vmap(jax.vmap(lambda p, layer=layer: observe(p, layer))))
        init = np.asarray(f(grid.initial_params))
        final = np.asarray(f(grid.final_params))
        np.testing.assert_allclose(np.asarray(grid.hyw()[:, :, li, 0]), init, rtol=1e-5,
                                   atol=1e-8)
        np.testing.assert_allclose(
            np.stack([grid.final_h[:, :, li], grid.final_y[:, :, li], grid.final_w[:, :, li]],
                     -1), final, rtol=1e-5, atol=1e-8)
    # Recorded representations at epoch 0 are the initial ones; reps[..., k, :, :] at
    # record_epochs[k].
    np.testing.assert_array_equal(grid.reps[0][:, :, 0], grid.initial_reps[0])
    dh = grid.initial_reps[1][:, :, 1] - grid.initial_reps[1][:, :, 0]
    np.testing.assert_allclose(jnp.sum(dh**2, -1), grid.h[:, :, 1, 0], rtol=1e-5)


def assert_records_close(a, b, rtol):
    """Per-epoch records agree; w = y - dy . df cancels, so it is compared on the scale of y."""
    for field in ("loss", "h", "y", "final_loss"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol, err_msg=field)
    scale = float(np.nanmax(np.abs(np.asarray(b.y))))
    np.testing.assert_allclose(a.w, b.w, rtol=rtol, atol=rtol * scale, err_msg="w")


def test_vmapped_grid_equals_loop_over_seeds_and_gains(grid):
    for gi, gain in enumerate(GAINS):
        for si, seed in enumerate(SEEDS):
            one = train.train(CFG, seeds=[seed], gains=[gain], layers=LAYERS)
            for field in ("loss", "h", "y", "w", "final_loss"):
                np.testing.assert_allclose(getattr(one, field)[0, 0],
                                           getattr(grid, field)[gi, si], rtol=2e-6,
                                           atol=2e-6 * float(np.max(np.abs(grid.y))),
                                           err_msg=field)


def test_one_vmap_over_all_trials_equals_blocks(grid):
    # vmap_size: how many trials of a device are batched together (the fixture used the CPU
    # default, 1); results agree to float32 rounding (batch shapes may round differently).
    res = train.train(CFG, seeds=SEEDS, gains=GAINS, layers=LAYERS, record_points=[0, 1],
                      record_every=10, vmap_size="all")
    assert_records_close(res, grid, rtol=1e-5)


def test_fused_sgd_step_equals_autodiff():
    # The engine's hand-fused SGD step (dense networks) against jax.grad of the Flax module:
    # skip connections, tanh, and 6 points (the weight gradient is then a matrix product
    # instead of fused outer products; the two-point plain case is checked against NumPy).
    cfg = CFG.replace(arch="skip", nonlinearity="tanh", depth=5, epochs=12, lr=0.05)
    rng = np.random.default_rng(0)
    ds = data.Dataset(rng.normal(size=(6, 3)).astype(np.float32),
                      rng.normal(size=(6, 2)).astype(np.float32))
    res = train.train(cfg, seeds=[3], gains=[0.9], return_params=True, data=ds, pair=(0, 1))
    net = train.make_network(cfg, out_dim=ds.out_dim)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)

    def loss(p):
        return 0.5 * jnp.mean((net.apply({"params": p}, x)[0] - y) ** 2)

    @jax.jit
    def step(p):
        obs = train.hidden_observables(net, p, x, y, layer=cfg.layer)
        g = jax.grad(loss)(p)
        return jax.tree.map(lambda a, b: a - cfg.lr * b, p, g), obs, loss(p)

    p = jax.tree.map(lambda a: a[0, 0], res.initial_params)
    for epoch in range(cfg.epochs):
        p, obs, lval = step(p)
        np.testing.assert_allclose(res.loss[0, 0, epoch], lval, rtol=1e-5)
        np.testing.assert_allclose(res.h[0, 0, epoch], obs[0], rtol=1e-5)
        # y = |f(x2) - f(x1)|^2 and w = y - dy . (f(x2) - f(x1)) are differences of O(1)
        # outputs: compare them at float32 rounding of the outputs, not relative to y itself.
        np.testing.assert_allclose(np.sqrt(res.y[0, 0, epoch]), np.sqrt(obs[1]), atol=2e-6)
        np.testing.assert_allclose(res.w[0, 0, epoch], obs[2], rtol=1e-5, atol=2e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0, 0], b, rtol=1e-5, atol=1e-7),
                 res.final_params, p)


def test_init_params_are_the_ones_train_uses(grid):
    p = train.init_params(CFG, seeds=SEEDS, gains=GAINS)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), p, grid.initial_params)


def test_same_seed_same_init_at_every_gain(grid):
    k = grid.initial_params["dense_1"]["kernel"]
    np.testing.assert_allclose(k[1], k[0] * (GAINS[1] / GAINS[0]), rtol=1e-6)
    assert not np.allclose(k[0, 0], k[0, 1])


def test_a_grid_compiles_its_programs_once():
    # three chunks of epochs, then another grid of the same shape (other seeds and gains):
    # the start and chunk programs are traced once in all
    from _compiles import count_traces

    with count_traces() as traces:
        a = train.train(CFG, seeds=[0, 1, 2], gains=[0.5, 1.0], chunk_epochs=10)
        b = train.train(CFG, seeds=[3, 4, 5], gains=[0.7, 1.1], chunk_epochs=10)
    assert traces["v_start"] <= 1 and traces["v_chunk"] <= 1, traces
    assert not np.array_equal(a.loss, b.loss)


def test_chunking_does_not_change_the_results(grid):
    # 30 epochs in chunks of 8: four chunks of 8, the last with two masked no-op epochs.
    res = train.train(CFG, seeds=SEEDS, gains=GAINS, layers=LAYERS, chunk_epochs=8,
                      record_points=[0, 1], record_every=10)
    for field in ("loss", "h", "y", "w", "final_loss", "final_h"):
        np.testing.assert_allclose(getattr(res, field), getattr(grid, field), rtol=1e-6,
                                   err_msg=field)
    np.testing.assert_allclose(res.reps[0], grid.reps[0], rtol=1e-6)


SHARD_SCRIPT = """
import json, numpy as np, jax
from unijax import configs, train
cfg = configs.get("default", width=8, depth=3, epochs=6)
kw = dict(seeds=3, gains=[0.5, 1.0, 2.0], record_points=[0, 1], record_every=2)
one = train.train(cfg, devices=1, **kw)
two = train.train(cfg, **kw)
diff = {f: float(np.nanmax(np.abs(np.asarray(getattr(one, f)) - np.asarray(getattr(two, f)))))
        for f in ("loss", "h", "y", "w", "final_loss", "reps", "final_reps")}
scale = {f: float(np.nanmax(np.abs(np.asarray(getattr(one, f))))) for f in diff}
print(json.dumps(dict(n_devices=two.n_devices, n_padded=two.n_padded, diff=diff, scale=scale,
                      devices=len(jax.devices()))))
"""


def test_sharded_over_two_host_devices_equals_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2 and out["n_devices"] == 2
    # 9 trials: bucket of 16 (a multiple of 8 and of 2 devices), 7 padding trials, stripped;
    # the devices hold 5 and 4 real trials, each followed by its padding.
    assert out["n_padded"] == 7
    for field, d in out["diff"].items():
        # Same per-trial program; only the per-device batch differs (a few ulps at most).
        assert d <= 1e-5 * max(out["scale"][field], 1e-6), (field, d)


def test_divergence_is_detected_masked_and_isolated():
    cfg = CFG.replace(lr=2.0)
    res = train.train(cfg, seeds=2, gains=[0.3, 3.0])
    div = np.asarray(res.diverged)
    np.testing.assert_array_equal(div, [[False, False], [True, True]])
    assert res.n_diverged == 2
    ep = np.asarray(res.diverged_epoch)
    assert np.all(ep[0] == -1) and np.all(ep[1] >= 1)
    loss = np.asarray(res.loss)
    for s in range(2):
        e = ep[1, s]
        bad = loss[1, s, e]
        assert not np.isfinite(bad) or bad > cfg.divergence_threshold
        assert np.all(np.isnan(loss[1, s, e + 1 :]))
        assert np.all(np.isfinite(loss[1, s, :e]))
        assert np.all(np.isnan(np.asarray(res.h)[1, s, e + 1 :]))
    assert np.all(np.isnan(np.asarray(res.final_loss)[1]))
    # The small-gain trials are untouched by their diverging neighbours (same batch shape, so
    # the same compiled program, with well-behaved neighbours instead).
    calm = train.train(cfg, seeds=2, gains=[0.3, 0.3])
    np.testing.assert_array_equal(res.loss[0], calm.loss[0])
    assert calm.n_diverged == 0
    assert "gain 3: 2/2 diverged" in res.summary()


def test_adam_with_mini_batches_on_blobs():
    ds = data.blobs(n_grid=6)  # 72 points
    cfg = configs.get("blobs low weights", width=16, depth=2, epochs=6, batch_size=16,
                      optimizer="adam", lr=0.01)
    # pair=... records (h, y, w) of any two points of a larger data set.
    kw = dict(seeds=2, data=ds, record_points=[0, 5, 40], record_every=3, pair=(0, 40))
    res = train.train(cfg, **kw)
    assert res.loss.shape == (1, 2, 6) and res.h.shape == (1, 2, 6)
    assert res.reps.shape == (1, 2, 2, 3, 16)
    assert np.all(np.asarray(res.final_loss) < np.asarray(res.loss[..., 0]))
    dh = res.initial_reps[:, :, 2] - res.initial_reps[:, :, 0]
    np.testing.assert_allclose(jnp.sum(dh**2, -1), res.h[..., 0], rtol=1e-5)
    again = train.train(cfg, **kw)
    np.testing.assert_array_equal(res.loss, again.loss)  # shuffles come from the key
    other = train.train(cfg, key=jax.random.key(1), **kw)
    assert not np.allclose(res.loss[..., 1:], other.loss[..., 1:])


def test_dropout_trains_and_measures_without_dropout():
    cfg = configs.get("dropout", width=16, depth=2, epochs=20, lr=0.05)
    res = train.train(cfg, seeds=2, return_params=True)
    assert np.all(np.isfinite(np.asarray(res.loss)))
    net = train.make_network(cfg)
    ds = data.two_points()
    rec = jax.vmap(lambda p: train.hidden_observables(net, p, ds.x, ds.y, layer=cfg.layer))(
        jax.tree.map(lambda a: a[0], res.final_params)
    )
    np.testing.assert_allclose(np.stack([res.final_h[0], res.final_y[0], res.final_w[0]], -1),
                               rec, rtol=1e-5)
    assert float(np.mean(res.final_loss)) < float(np.mean(res.loss[..., 0]))


def test_conv_network_all_layers():
    cfg = configs.get("convolution", width=40, depth=3, epochs=4)
    res = train.train(cfg, seeds=1, layers="all", record_points=2)
    assert res.h.shape == (1, 1, 3, 4)
    assert [r.shape for r in res.final_reps] == [(1, 1, 2, 40), (1, 1, 2, 600), (1, 1, 2, 20)]
    assert np.all(np.asarray(res.h) > 0)


class Custom(nn.Module):
    """A user's network: the recorded layer is the submodule named "hidden"."""

    @nn.compact
    def __call__(self, x):
        a = nn.tanh(nn.Dense(16, name="inp")(x))
        a = nn.tanh(nn.Dense(16, name="hidden")(a))
        return nn.Dense(1, name="out")(a)


class CustomDict(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(16)(x))
        return {"out": nn.Dense(1)(h), "h": h}


def test_bring_your_own_network():
    ds = data.two_points()
    res = train.train_model(Custom(), ds, layers="hidden", lr=0.05, epochs=10, seeds=2,
                            gains=[1.0, 2.0], return_params=True)
    assert res.h.shape == (2, 2, 10) and res.config is None and res.name == "Custom"
    # Recorded h at epoch 0 = distance of the "hidden" submodule's outputs, recomputed.
    p = jax.tree.map(lambda a: a[1, 0], res.initial_params)
    _, state = Custom().apply({"params": p}, jnp.asarray(ds.x), capture_intermediates=True)
    hid = state["intermediates"]["hidden"]["__call__"][0]
    np.testing.assert_allclose(res.h[1, 0, 0], jnp.sum((hid[1] - hid[0]) ** 2), rtol=1e-5)
    # The gains scale every kernel of the user's own initialization.
    k = res.initial_params["hidden"]["kernel"]
    np.testing.assert_allclose(k[1], 2 * k[0], rtol=1e-6)
    res2 = train.train_model(CustomDict(), ds, layers=["h"], lr=0.05, epochs=10)
    assert res2.h.shape == (1, 1, 1, 10)
    with pytest.raises(ValueError, match=r"valid names: .*'hidden' \(Dense output, pre-activation"):
        train.train_model(Custom(), ds, layers="nope", lr=0.05, epochs=2)


def _load_example():
    path = ROOT / "examples" / "byo_network.py"
    spec = importlib.util.spec_from_file_location("byo_network", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_trains_at_small_size():
    # In-process and without the fit (whose compile dominates); the full run is a slow test.
    res, _ = _load_example().main(["--epochs", "40", "--seeds", "2", "--width", "16", "--no-fit"])
    assert res.h.shape == (1, 2, 40) and res.n_diverged == 0


@pytest.mark.slow
def test_example_script_runs_with_fit():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "byo_network.py")],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RateFit" in proc.stdout


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(seeds=0), ["seeds", "> 0"]),
        (dict(seeds=[-1]), ["seeds", ">= 0"]),
        (dict(seeds=1, gains=[1.0, -2.0]), ["gains", "> 0"]),
        (dict(seeds=1, layers=[0, 3]), ["layers", "[0, 2]"]),
        (dict(seeds=1, layers=7), ["layers", "[0, 2]"]),
        (dict(seeds=1, record_epochs=[30]), ["record_epochs", "[0, 29]"]),
        (dict(seeds=1, record_every=0), ["record_every"]),
        (dict(seeds=1, record_points=[2]), ["record_points", "[0, 1]"]),
        (dict(seeds=1, pair=(0, 0)), ["pair", "distinct"]),
        (dict(seeds=1, chunk_epochs=0), ["chunk_epochs"]),
        (dict(seeds=1, devices=5), ["devices"]),
        (dict(seeds=1, data=(np.zeros((3, 1)), np.zeros((2, 1)))), ["counts disagree"]),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, words):
    with pytest.raises(ValueError) as err:
        train.train(CFG, **kwargs)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def _kink_params(width=4):
    """A zero-bias one-hidden-layer network: on input 0 every pre-activation is exactly 0."""
    rng = np.random.default_rng(3)
    return {"dense_0": {"kernel": rng.normal(size=(1, width)).astype(np.float32),
                        "bias": np.zeros(width, np.float32)},
            "dense_1": {"kernel": rng.normal(size=(width, 1)).astype(np.float32),
                        "bias": np.zeros(1, np.float32)}}


@pytest.mark.parametrize("path", ["fused", "autodiff"])
def test_leaky_relu_derivative_at_zero_is_the_negative_slope_when_training(path):
    # x = 0, y = 1, zero biases: out = 0 and dL/dout = -1, so one SGD step moves the first
    # layer's bias by lr * W1 * phi'(0) with phi'(0) = 0.01 (PyTorch); with jax.nn.leaky_relu's
    # derivative 1 it would move 100x further. "fused": the engine's hand-fused dense step;
    # "autodiff": the same module through jax.grad (train_model's path).
    p0, lr = _kink_params(), 0.1
    ds = data.Dataset(np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32))
    cfg = CFG.replace(width=4, depth=1, epochs=1, lr=lr)
    if path == "fused":
        res = train.train(cfg, seeds=1, data=ds, params=p0, return_params=True)
    else:
        res = train.train_model(train.make_network(cfg), ds, layers=0, lr=lr, epochs=1,
                                params=p0, return_params=True)
    b0 = np.asarray(res.final_params["dense_0"]["bias"])[0, 0]
    np.testing.assert_allclose(b0, lr * 0.01 * p0["dense_1"]["kernel"][:, 0], rtol=1e-6)


@pytest.mark.parametrize("variant", ["fused", "autodiff", "minibatch"])
def test_mse_loss_is_twice_half_mse_and_steps_like_twice_the_lr(variant):
    # nn.MSELoss() = 2 x (0.5 * MSE): its recorded loss is twice, and training with lr moves
    # the weights exactly as 0.5 * MSE with 2 lr.
    cfg = CFG.replace(epochs=5, lr=0.01)
    kw = {}
    if variant == "autodiff":
        cfg = cfg.replace(optimizer="sgd", arch="conv", width=40, depth=3)
    if variant == "minibatch":
        rng = np.random.default_rng(1)
        kw["data"] = data.Dataset(rng.normal(size=(5, 2)).astype(np.float32),
                                  rng.normal(size=(5, 1)).astype(np.float32))
        cfg = cfg.replace(batch_size=2)
    mse = train.train(cfg.replace(loss="mse"), seeds=[4], **kw)
    half = train.train(cfg.replace(lr=2 * cfg.lr), seeds=[4], **kw)
    np.testing.assert_allclose(mse.loss, 2 * np.asarray(half.loss), rtol=2e-5)
    assert mse.config.loss == "mse" and half.config.loss == "half_mse"


def test_training_from_given_params():
    p = train.init_params(CFG, seeds=[0, 1], gains=[0.7])  # (1, 2, ...) leading axes
    one = jax.tree.map(lambda a: np.asarray(a[0, 1]), p)
    # One trial's parameters, shared by every trial of the grid: equal to a drawn run of it.
    ref = train.train(CFG, seeds=[1], gains=[0.7])
    res = train.train(CFG, seeds=[0, 5], gains=[1.0, 2.0], params=one, return_params=True)
    assert res.h.shape == (2, 2, CFG.epochs)
    for g in range(2):
        for s in range(2):
            np.testing.assert_allclose(res.loss[g, s], ref.loss[0, 0], rtol=1e-6)
    np.testing.assert_array_equal(res.initial_params["dense_1"]["kernel"][1, 0],
                                  one["dense_1"]["kernel"])
    # Leading (n_gains, n_seeds) axes: trial (g, s) starts from params[g, s].
    grid = train.train(CFG, seeds=[0, 1], gains=[0.7], params=p)
    drawn = train.train(CFG, seeds=[0, 1], gains=[0.7])
    np.testing.assert_allclose(grid.loss, drawn.loss, rtol=1e-6)
    # A {"params": ...} wrapper and a custom module (train_model) work too.
    net = train.make_network(CFG)
    res2 = train.train_model(net, data.two_points(), layers=1, lr=CFG.lr, epochs=CFG.epochs,
                             params={"params": one})
    np.testing.assert_allclose(res2.loss[0, 0], ref.loss[0, 0], rtol=1e-5)


def test_given_params_of_the_wrong_shape_name_the_leaf():
    one = jax.tree.map(lambda a: np.asarray(a[0, 0]), train.init_params(CFG, seeds=1))
    bad = {**one, "dense_2": {**one["dense_2"], "kernel": np.zeros((16, 15), np.float32)}}
    with pytest.raises(ValueError, match=r"\['dense_2'\]\['kernel'\] has shape \(16, 15\)"):
        train.train(CFG, seeds=1, params=bad)
    with pytest.raises(ValueError, match="missing"):
        train.train(CFG, seeds=1, params={k: v for k, v in one.items() if k != "dense_0"})
    lead = jax.tree.map(lambda a: np.stack([a] * 3)[None], one)  # (1, 3, ...)
    with pytest.raises(ValueError, match=r"broadcastable to \(1, 2\)"):
        train.train(CFG, seeds=2, params=lead)


def test_authors_conv_layout_trains_and_records_every_layer():
    cfg = configs.get("convolution", width=48, depth=2, epochs=3, conv_layout="authors")
    assert cfg.layer == 1
    res = train.train(cfg, seeds=1, layers="all", record_points=2)
    # depth + 2 = 4 hidden activations: affine in, convolutions 1->20, 20->20, 20->1.
    assert res.h.shape == (1, 1, 4, 3)
    assert [r.shape[-1] for r in res.final_reps] == [48, 38 * 20, 28 * 20, 18]
    assert configs.get("convolution", conv_layout="authors", layer=11).layer == 11
    with pytest.raises(ValueError, match=r"\[0, 11\]"):
        configs.get("convolution", conv_layout="authors", layer=12)


@pytest.mark.slow
def test_paper_sized_default_network_6000_epochs():
    cfg = configs.get("default")
    res = train.train(cfg, seeds=2)  # ~1 minute on a 2-core CPU
    assert res.h.shape == (1, 2, 6000)
    assert res.n_diverged == 0
    # The default network fits the two points: the loss falls by orders of magnitude.
    assert np.all(np.asarray(res.final_loss) < 1e-3 * np.asarray(res.loss[..., 0]))
    assert np.all(np.asarray(res.h) > 0)


@pytest.mark.parametrize("row", ["tanh", "swish"])
def test_start_program_options_change_no_number(row, monkeypatch):
    # The start program is compiled with XLA's older loop emitters on CPU (faster to compile);
    # its weights and measurements must equal XLA's defaults bit for bit (tanh and swish: the
    # transcendental functions are where two emitters could round differently).
    from unijax.train import _program

    assert _program.start_compiler_options("cpu") == {"xla_cpu_use_fusion_emitters": False}
    assert _program.start_compiler_options("gpu") is None
    cfg = configs.get(row, epochs=3, width=16, depth=4)
    key = jax.random.key(7)
    # Real gains besides the row's: the scale enters the fusions too.
    got = train.train(cfg, seeds=3, gains=[0.5, cfg.gain], key=key, return_params=True)
    monkeypatch.setattr(_program, "start_compiler_options", lambda platform: None)
    want = train.train(cfg, seeds=3, gains=[0.5, cfg.gain], key=key, return_params=True)
    assert got.compile_s > 0 and want.compile_s > 0  # each compiled its own start program
    for a, b in zip(jax.tree.leaves((got.initial_params, got.h, got.loss)),
                    jax.tree.leaves((want.initial_params, want.h, want.loss)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
