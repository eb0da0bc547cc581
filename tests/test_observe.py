"""unijax.observe: (h, y, w) from any framework's recordings, and the Flax layer recorder."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unijax import configs, data, observe, train


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.tanh(nn.Dense(8)(x))
        z = nn.Dense(8, name="hidden")(a)
        a = nn.tanh(z)
        self.sow("intermediates", "hidden_post", a)
        return nn.Dense(1, name="out")(a)


def _brute(H, F, Y, i=0, j=1):
    dh, df, dy = H[..., j, :] - H[..., i, :], F[..., j, :] - F[..., i, :], Y[j] - Y[i]
    yv = (df**2).sum(-1)
    return np.stack([(dh**2).sum(-1), yv, yv - (dy * df).sum(-1)], -1)


def test_trajectory_matches_the_formula_with_batch_axes_and_feature_axes():
    rng = np.random.default_rng(0)
    H = rng.normal(size=(3, 40, 4, 2, 5))  # seeds, epochs, points, 2x5 features (flattened)
    F = rng.normal(size=(3, 40, 4, 2))
    Y = rng.normal(size=(4, 2))
    X = rng.normal(size=(4, 6))
    traj = observe.trajectory(H, F, Y, inputs=X, pair=(1, 3))
    assert traj.hyw.shape == (3, 40, 3) and traj.ts.shape == (40,)
    np.testing.assert_allclose(traj.hyw, _brute(H.reshape(3, 40, 4, 10), F, Y, 1, 3),
                               rtol=1e-6)
    np.testing.assert_allclose(traj.dx2, ((X[3] - X[1]) ** 2).sum(), rtol=1e-6)
    np.testing.assert_allclose(traj.dy2, ((Y[3] - Y[1]) ** 2).sum(), rtol=1e-6)
    np.testing.assert_array_equal(traj.h, traj.hyw[..., 0])
    # Scalar outputs with 1-D targets, explicit dx2 and record epochs.
    t2 = observe.trajectory(H[0, :, :2], F[0, :, :2, 0], Y[:2, 0], dx2=2.0,
                            epochs=np.arange(40) * 5)
    np.testing.assert_allclose(t2.hyw, _brute(H[0, :, :2].reshape(40, 2, 10), F[0, :, :2, :1],
                                              Y[:2, :1]), rtol=1e-6)
    assert float(t2.ts[-1]) == 195.0 and float(t2.dx2) == 2.0


def test_trajectory_takes_tensors_of_other_frameworks():
    class Tensor:  # what a PyTorch tensor offers: detach(), cpu(), __array__
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def __array__(self, dtype=None, copy=None):
            return np.asarray(self.a, dtype)

    H = np.random.default_rng(1).normal(size=(10, 2, 3))
    F = np.random.default_rng(2).normal(size=(10, 2, 1))
    a = observe.trajectory(Tensor(H), Tensor(F), Tensor([[0.0], [1.0]]), inputs=Tensor([[0.0],
                                                                                       [1.0]]))
    b = observe.trajectory(H, F, [[0.0], [1.0]], dx2=1.0)
    np.testing.assert_array_equal(a.hyw, b.hyw)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(outputs=np.zeros((10, 3, 1))), "outputs must have shape"),
        (dict(hidden=np.zeros((10, 3, 4))), "hidden must have shape"),
        (dict(pair=(0, 0)), "pair must be two distinct"),
        (dict(dx2=1.0), "exactly one of inputs"),
        (dict(inputs=[[1.0], [1.0]]), "dx2 must be finite and > 0"),
        (dict(epochs=np.zeros(10)), "epochs must be 10 strictly increasing"),
        # Issue 21: complex values are refused (not cut to their real part), empty axes named.
        (dict(hidden=np.ones((10, 2, 4)) * (1 + 1j)), "hidden is complex"),
        (dict(outputs=np.ones((10, 2, 1)) + 0j), "outputs is complex"),
        (dict(targets=np.asarray([[0.0], [1.0]]) + 2j), "targets is complex"),
        (dict(inputs=np.asarray([[0.0], [1.0]]) * 1j), "inputs is complex"),
        (dict(epochs=np.arange(10) + 0j), "epochs is complex"),
        (dict(hidden=np.ones((0, 2, 4)), outputs=np.ones((0, 2, 1))), r"n_epochs >= 1"),
        (dict(hidden=np.ones((3, 0, 10, 2, 4)), outputs=np.ones((3, 0, 10, 2, 1))),
         "empty axis"),
        (dict(hidden=np.ones((10, 2, 0))), "no features"),
    ],
)
def test_trajectory_rejects_bad_input(kw, match):
    args = dict(hidden=np.ones((10, 2, 4)), outputs=np.ones((10, 2, 1)),
                targets=[[0.0], [1.0]], inputs=[[0.0], [1.0]])
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        observe.trajectory(**args)


@pytest.mark.parametrize("bad", ["text", None, [["a", "b"]], object()])
def test_trajectory_refuses_what_is_not_numbers_naming_the_argument(bad):
    with pytest.raises(TypeError, match="hidden must be an array of numbers"):
        observe.trajectory(bad, np.ones((10, 2, 1)), [[0.0], [1.0]], dx2=1.0)


def test_trajectory_equals_hidden_observables_of_a_trained_unijax_net():
    cfg = configs.get("default", width=16, depth=3, epochs=30, lr=0.05)
    res = train.train(cfg, seeds=2, return_params=True)
    ds = train.load_data(cfg)
    model = train.make_network(cfg)
    layer = cfg.layer
    for s in range(2):
        params = jax.tree.map(lambda a, s=s: a[0, s], res.final_params)
        ref = train.hidden_observables(model, params, ds.x, ds.y, layer=layer)
        out, hiddens = model.apply({"params": params}, jnp.asarray(ds.x), train=False)
        traj = observe.trajectory(np.asarray(hiddens[layer])[None], np.asarray(out)[None],
                                  ds.y, inputs=ds.x)
        np.testing.assert_allclose(traj.hyw[0], ref, rtol=1e-6)
        # ... and what the engine recorded after the last update.
        np.testing.assert_allclose(traj.hyw[0], [res.final_h[0, s], res.final_y[0, s],
                                                 res.final_w[0, s]], rtol=1e-5)
    assert traj.dx2 == pytest.approx(res.dx2) and traj.dy2 == pytest.approx(res.dy2)


def test_recorder_says_which_side_and_reads_both():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)), jnp.float32)
    rec = observe.Recorder(Net(), ["hidden", "hidden_post"])
    assert rec.sides(x) == {"hidden": "pre-activation", "hidden_post": "as stored"}
    params = Net().init(jax.random.key(0), x)["params"]
    out, (pre, post) = rec.apply(params, x)
    np.testing.assert_allclose(jnp.tanh(pre), post, rtol=1e-6)
    assert out.shape == (2, 1)
    names = {i.name: i for i in observe.describe_layers(Net(), x)}
    assert set(names) == {"Dense_0", "hidden", "hidden_post", "out"}
    assert names["hidden"].module == "Dense" and names["hidden"].shape == (8,)


def test_recorder_error_lists_the_valid_names():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError) as e:
        observe.Recorder(Net(), "hiden").check(x)
    msg = str(e.value)
    for name in ("'hidden' (Dense output, pre-activation", "'hidden_post' (sown, as stored",
                 "'Dense_0'", "'out'"):
        assert name in msg
    params = Net().init(jax.random.key(0), x)["params"]
    with pytest.raises(ValueError, match="valid names"):
        observe.Recorder(Net(), "hiden").apply(params, x)


def test_train_model_takes_an_optax_optimizer_and_a_loss():
    ds = data.two_points()
    kw = dict(layers="hidden", epochs=15)
    ref = train.train_model(Net(), ds, lr=0.05, **kw)
    tx = train.train_model(Net(), ds, optimizer=optax.sgd(0.05), **kw)
    np.testing.assert_allclose(tx.loss, ref.loss, rtol=1e-6)
    assert tx.optimizer == "optax" and np.isnan(tx.lr)
    mse = train.train_model(Net(), ds, lr=0.05, loss=lambda p, t: 0.5 * jnp.mean((p - t) ** 2),
                            **kw)
    np.testing.assert_allclose(mse.loss, ref.loss, rtol=1e-6)
    # The transformation is the one used: its rate is built in, the NaN lr is never read.
    assert np.isfinite(tx.loss).all()
    l1 = train.train_model(Net(), ds, lr=0.05, loss=lambda p, t: jnp.sum(jnp.abs(p - t)),
                           return_params=True, **kw)
    init = jax.tree.map(lambda a: a[0, 0], l1.initial_params)
    pred = Net().apply({"params": init}, jnp.asarray(ds.x))
    np.testing.assert_allclose(l1.loss[0, 0, 0], jnp.mean(jnp.abs(pred - ds.y)), rtol=1e-6)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(optimizer=optax.sgd(0.1), lr=0.1), ValueError, "lr must be None"),
        (dict(optimizer=optax.sgd), TypeError, "optimizer must be 'sgd', 'adam' or an optax"),
        (dict(), ValueError, "lr is required"),
        (dict(lr=0.1, optimizer="rmsprop"), ValueError, "optimizer"),
        (dict(lr=0.1, loss=lambda p, t: p - t), ValueError, r"to a scalar \(shape \(\)\)"),
        (dict(lr=0.1, loss=lambda p: p), ValueError, "calling it failed"),
        (dict(lr=0.1, layers="hiden"), ValueError, "valid names"),
    ],
)
def test_train_model_rejects_bad_optimizer_and_loss(kw, err, match):
    args = dict(layers="hidden", epochs=2)
    args.update(kw)
    with pytest.raises(err, match=match):
        train.train_model(Net(), data.two_points(), **args)


def test_scalar_outputs_with_1d_targets_and_feature_axes():
    H = np.random.default_rng(3).normal(size=(6, 2, 3, 4))
    F = np.random.default_rng(4).normal(size=(6, 2, 1))
    a = observe.trajectory(H, F, [0.0, 1.0], dx2=1.0)
    b = observe.trajectory(H, F[..., 0], [0.0, 1.0], dx2=1.0)
    np.testing.assert_array_equal(a.hyw, b.hyw)
    np.testing.assert_allclose(a.hyw, _brute(H.reshape(6, 2, 12), F, np.array([[0.0], [1.0]])),
                               rtol=1e-6)


def test_docstring_examples_run():
    import doctest

    assert doctest.testmod(observe, raise_on_error=True).attempted >= 5
