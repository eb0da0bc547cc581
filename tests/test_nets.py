"""unijax.nets: forward passes against NumPy, Xavier statistics, variant shapes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unijax import nets


def jinit(net, x, key, gain=None):
    """nets.init under one jit (eager op-by-op dispatch would compile every small op)."""
    return jax.jit(lambda k: nets.init(net, x, key=k, gain=gain))(key)


def japply(net, params, x, **kw):
    return jax.jit(lambda p, x: net.apply({"params": p}, x, **kw))(params, x)

NP_PHI = {
    "leaky_relu": lambda a: np.where(a > 0, a, 0.01 * a),
    "relu": lambda a: np.maximum(a, 0),
    "elu": lambda a: np.where(a > 0, a, np.expm1(np.minimum(a, 0))),
    "tanh": np.tanh,
    "swish": lambda a: a / (1 + np.exp(-a)),
    "none": lambda a: a,
}


def np_mlp(params, x, depth, phi, skip=False):
    """Reference forward pass in float64 NumPy: returns (out, hiddens)."""
    a = np.asarray(x, np.float64)
    hs = []
    for k in range(depth):
        p = params[f"dense_{k}"]
        a = phi(a @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64))
        if skip and k >= 2:
            a = a + hs[k - 2]
        hs.append(a)
    p = params[f"dense_{depth}"]
    return a @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64), hs


def test_mlp_forward_matches_numpy_for_every_nonlinearity():
    names = sorted(nets.NONLINEARITIES)
    mods = {n: nets.make("mlp", width=16, depth=3, out_dim=2, nonlinearity=n) for n in names}
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float32)

    @jax.jit  # one compile for all six networks
    def run(key):
        out = {}
        for n, net in mods.items():
            params = nets.init(net, x, key=key, gain=1.3)
            out[n] = (params, net.apply({"params": params}, x))
        return out

    for n, (params, (out, hiddens)) in run(jax.random.key(0)).items():
        ref_out, ref_h = np_mlp(params, x, 3, NP_PHI[n])
        assert out.shape == (5, 2) and out.dtype == jnp.float32
        assert len(hiddens) == 3 and all(h.shape == (5, 16) for h in hiddens)
        # float32 forward vs float64 reference: a few ulps of accumulated rounding.
        np.testing.assert_allclose(out, ref_out, rtol=2e-5, atol=2e-6, err_msg=n)
        for h, r in zip(hiddens, ref_h, strict=True):
            np.testing.assert_allclose(h, r, rtol=2e-5, atol=2e-6, err_msg=n)


def test_skip_connections_add_activation_two_layers_earlier():
    net = nets.make("skip", width=16, depth=5, out_dim=1)
    x = jax.random.normal(jax.random.key(2), (4, 2), jnp.float32)
    params = jinit(net, x, jax.random.key(3), gain=0.8)
    out, hiddens = japply(net, params, x)
    ref_out, ref_h = np_mlp(params, x, 5, NP_PHI["leaky_relu"], skip=True)
    np.testing.assert_allclose(out, ref_out, rtol=2e-5, atol=2e-6)
    for h, r in zip(hiddens, ref_h, strict=True):
        np.testing.assert_allclose(h, r, rtol=2e-5, atol=2e-6)
    # The first two hidden layers have no skip.
    no_skip = np_mlp(params, x, 5, NP_PHI["leaky_relu"], skip=False)[1]
    np.testing.assert_allclose(hiddens[1], no_skip[1], rtol=2e-5, atol=2e-6)


def test_conv_shapes_and_kernels():
    width, depth = 64, 5
    net = nets.make("conv", width=width, depth=depth, out_dim=3)
    x = jnp.ones((2, 1), jnp.float32)
    params = jinit(net, x, jax.random.key(0))
    out, hiddens = japply(net, params, x)
    sizes = nets.hidden_sizes("conv", width, depth)
    # Affine in to width, then valid convs (kernel 11): 1->20, 20->20, 20->20, 20->1 channels.
    assert sizes == (64, 54 * 20, 44 * 20, 34 * 20, 24 * 1)
    assert tuple(h.shape for h in hiddens) == tuple((2, s) for s in sizes)
    assert out.shape == (2, 3)
    assert params["conv_1"]["kernel"].shape == (11, 1, 20)
    assert params["conv_2"]["kernel"].shape == (11, 20, 20)
    assert params["conv_4"]["kernel"].shape == (11, 20, 1)
    assert params["dense_out"]["kernel"].shape == (24, 3)


def test_conv_first_hidden_is_valid_cross_correlation():
    net = nets.make("conv", width=32, depth=3, out_dim=1, nonlinearity="none")
    x = jnp.array([[0.3], [-1.2]], jnp.float32)
    params = jinit(net, x, jax.random.key(5))
    _, hiddens = japply(net, params, x)
    h0 = np.asarray(hiddens[0], np.float64)
    k = np.asarray(params["conv_1"]["kernel"], np.float64)[:, 0, :]  # (11, 20)
    ref = np.stack([h0[:, i : i + 11] @ k for i in range(32 - 10)], axis=1)  # (n, 22, 20)
    np.testing.assert_allclose(hiddens[1], ref.reshape(2, -1), rtol=2e-5, atol=2e-6)


def test_xavier_normal_std_matches_formula():
    net = nets.make("mlp", width=400, depth=2, out_dim=1)
    x = jnp.ones((1, 3), jnp.float32)
    gain = 1.3
    params = jinit(net, x, jax.random.key(0), gain=gain)
    k = np.asarray(params["dense_1"]["kernel"])  # 400 x 400
    expected = gain * np.sqrt(2.0 / (400 + 400))
    # 160000 draws: relative standard error of the std is 1/sqrt(2 n) = 0.18%; allow 1%.
    assert abs(k.std() / expected - 1) < 0.01
    assert abs(k.mean()) < 4 * expected / np.sqrt(k.size)
    k0 = np.asarray(params["dense_0"]["kernel"])  # 3 x 400
    assert abs(k0.std() / (gain * np.sqrt(2.0 / 403)) - 1) < 0.05
    assert all(np.all(np.asarray(params[f"dense_{i}"]["bias"]) == 0) for i in range(3))
    conv = nets.make("conv", width=64, depth=3, out_dim=1)
    cp = jinit(conv, x, jax.random.key(1), gain=gain)
    ck = np.asarray(cp["conv_1"]["kernel"])  # (11, 1, 20): fans 11 and 220 as in PyTorch
    assert ck.shape == (11, 1, 20)
    np.testing.assert_allclose(ck.std(), gain * np.sqrt(2.0 / (11 + 220)), rtol=0.15)


def test_init_gain_is_traceable_and_matches_module_init_structure():
    net = nets.make("mlp", width=16, depth=2, out_dim=1, gain=0.7)
    x = jnp.ones((2, 1), jnp.float32)
    a = jax.eval_shape(net.init, jax.random.key(4), x)["params"]
    b = jinit(net, x, jax.random.key(4), gain=0.7)
    # Same tree, shapes and dtypes as Flax's own init (the draws differ: one RNG call).
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda u, v: (u.shape, u.dtype) == (v.shape, v.dtype) or pytest.fail(), a, b)
    grid = jax.jit(jax.vmap(lambda g: nets.init(net, x, key=jax.random.key(4), gain=g)))(
        jnp.array([0.7, 1.4], jnp.float32)
    )
    np.testing.assert_allclose(grid["dense_1"]["kernel"][0], b["dense_1"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(
        grid["dense_1"]["kernel"][1], 2 * grid["dense_1"]["kernel"][0], rtol=1e-6
    )


def test_dropout_only_in_training():
    net = nets.make("dropout", width=64, depth=2, out_dim=1)
    assert net.dropout == 0.1
    plain = nets.make("mlp", width=64, depth=2, out_dim=1)
    x = jnp.ones((3, 4), jnp.float32)
    params = jinit(net, x, jax.random.key(0))
    out_eval, h_eval = japply(net, params, x)
    out_plain, _ = japply(plain, params, x)
    np.testing.assert_array_equal(out_eval, out_plain)
    out_a, h_a = jax.jit(
        lambda p, k: net.apply({"params": p}, x, train=True, rngs={"dropout": k})
    )(params, jax.random.key(1))
    assert not np.allclose(out_a, out_eval)
    # Dropout acts on the *inputs* of the affine maps; the recorded activations are the maps'
    # outputs, so they change but are not zeroed.
    assert not np.allclose(h_a[0], h_eval[0])


def test_float32_by_default_and_dtype_configurable():
    x = np.ones((2, 1))  # float64 input must not leak into the network
    net = nets.make("mlp", width=8, depth=2)
    params = jinit(net, jnp.asarray(x, jnp.float32), jax.random.key(0))
    out, hs = japply(net, params, x)
    assert out.dtype == jnp.float32 and hs[0].dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    net16 = nets.make("mlp", width=8, depth=2, dtype="bfloat16")
    p16 = jinit(net16, jnp.ones((2, 1)), jax.random.key(0))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(p16))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(arch="resnet", width=8, depth=2), ["arch", "mlp", "conv"]),
        (dict(arch="mlp", width=8, depth=2, nonlinearity="sigmoid"), ["nonlinearity", "tanh"]),
        (dict(arch="mlp", width=0, depth=2), ["width"]),
        (dict(arch="mlp", width=8, depth=0), ["depth"]),
        (dict(arch="mlp", width=8, depth=2, gain=0.0), ["gain"]),
        (dict(arch="mlp", width=8, depth=2, dropout=1.0), ["dropout", "[0, 1)"]),
        (dict(arch="conv", width=30, depth=4), ["width", "30"]),
        (dict(arch="conv", width=500, depth=2), ["depth", "3"]),
        (dict(arch="conv", width=500, depth=2, conv_layout="paper"), ["conv_layout", "authors"]),
        (dict(arch="conv", width=100, depth=10, conv_layout="authors"), ["width", "110"]),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, words):
    with pytest.raises(ValueError) as err:
        nets.make(kwargs.pop("arch"), **kwargs)
    for word in words:
        assert word in str(err.value)


# PyTorch's derivative of each nonlinearity at exactly 0 (torch 2.13, float32 and float64:
# autograd of F.leaky_relu, torch.relu, F.elu, torch.tanh, F.silu, identity).
TORCH_DERIVATIVE_AT_0 = {
    "leaky_relu": 0.01, "relu": 0.0, "elu": 1.0, "tanh": 1.0, "swish": 0.5, "none": 1.0,
}


def test_derivatives_at_zero_are_pytorchs():
    assert set(TORCH_DERIVATIVE_AT_0) == set(nets.NONLINEARITIES)
    for name, phi in nets.NONLINEARITIES.items():
        for dtype in (jnp.float32, jnp.float64):
            z = jnp.zeros((), dtype) if dtype == jnp.float32 else np.float64(0.0)
            d = float(jax.grad(phi)(z))
            np.testing.assert_allclose(d, TORCH_DERIVATIVE_AT_0[name], rtol=1e-7, err_msg=name)
    # Away from 0, leaky ReLU is unchanged.
    x = jnp.array([-2.0, -1e-30, 1e-30, 3.0])
    np.testing.assert_array_equal(nets.leaky_relu(x), np.where(x > 0, x, 0.01 * x))


def test_leaky_relu_kink_in_a_zero_bias_network_gradient():
    # Input 0 with zero biases puts every pre-activation exactly on the kink, as the two-point
    # input x2 = 0 does: the first layer's bias gradient is then d * W1^T * phi'(0), which
    # must carry PyTorch's 0.01, not jax.nn.leaky_relu's 1.
    net = nets.make("mlp", width=4, depth=1, out_dim=1)
    x = jnp.zeros((1, 1), jnp.float32)
    params = jinit(net, x, jax.random.key(0))

    def loss(p):
        return 0.5 * jnp.mean((net.apply({"params": p}, x)[0] - 1.0) ** 2)

    g = jax.jit(jax.grad(loss))(params)
    w1 = np.asarray(params["dense_1"]["kernel"])[:, 0]
    np.testing.assert_allclose(g["dense_0"]["bias"], -0.01 * w1, rtol=1e-6)


def test_authors_conv_layout_has_depth_plus_one_convolutions():
    width, depth = 64, 3
    net = nets.make("conv", width=width, depth=depth, conv_layout="authors")
    x = jnp.ones((2, 1), jnp.float32)
    params = jinit(net, x, jax.random.key(0))
    out, hiddens = japply(net, params, x)
    sizes = nets.hidden_sizes("conv", width, depth, "authors")
    # Affine in, then 1->20, 20->20, 20->20, 20->1 (depth + 1 = 4 convolutions), affine out.
    assert sizes == (64, 54 * 20, 44 * 20, 34 * 20, 24)
    assert nets.n_hidden("conv", depth, "authors") == len(sizes) == depth + 2
    assert tuple(h.shape for h in hiddens) == tuple((2, s) for s in sizes)
    assert params["conv_1"]["kernel"].shape == (11, 1, 20)
    assert params["conv_3"]["kernel"].shape == (11, 20, 20)
    assert params["conv_4"]["kernel"].shape == (11, 20, 1)
    assert params["dense_out"]["kernel"].shape == (24, 1)
    assert nets.layer_names(net) == ("dense_in", "conv_1", "conv_2", "conv_3", "conv_4",
                                     "dense_out")
    # At the paper's depth 10: eleven convolutions, read-out from 500 - 110 positions.
    big = nets.make("conv", width=500, depth=10, conv_layout="authors")
    assert len(nets.layer_names(big)) == 13
    assert nets.hidden_sizes("conv", 500, 10, "authors")[-1] == 390
    # The default layout is unchanged: depth - 1 convolutions.
    assert nets.n_hidden("conv", depth) == depth


def test_params_from_torch_transposes_linear_and_conv_weights():
    rng = np.random.default_rng(0)
    net = nets.make("conv", width=40, depth=1, conv_layout="authors", out_dim=2)
    # A state dict shaped like the authors' CNN (nn.ModuleList: "0.weight", "0.bias", ...).
    shapes = [((40, 1), "linear"), ((20, 1, 11), "conv"), ((1, 20, 11), "conv"),
              ((2, 20), "linear")]
    sd = {}
    for i, (shape, _) in enumerate(shapes):
        sd[f"{i}.weight"] = rng.normal(size=shape).astype(np.float32)
        sd[f"{i}.bias"] = rng.normal(size=shape[0]).astype(np.float32)
    params = nets.params_from_torch(sd, net)
    np.testing.assert_array_equal(params["dense_in"]["kernel"], sd["0.weight"].T)
    np.testing.assert_array_equal(params["conv_1"]["kernel"][:, 0, 5], sd["1.weight"][5, 0])
    np.testing.assert_array_equal(params["conv_2"]["kernel"][3, 7, 0], sd["2.weight"][0, 7, 3])
    np.testing.assert_array_equal(params["dense_out"]["bias"], sd["3.bias"])
    expected = jax.eval_shape(lambda: nets.init(net, jnp.ones((2, 1)), key=jax.random.key(0)))
    nets.check_params(expected, params)  # structure and shapes agree
    # The conv forward on converted weights is PyTorch's Conv1d (a cross-correlation):
    # output position i of channel c = bias_c + sum_j w[c, 0, j] * in[i + j].
    _, hiddens = japply(net, jax.tree.map(jnp.asarray, params), jnp.array([[0.7]]))
    a0 = np.asarray(hiddens[0][0], np.float64)
    w = sd["1.weight"].astype(np.float64)
    pre = np.stack([w[:, 0] @ a0[i : i + 11] for i in range(30)]) + sd["1.bias"]
    np.testing.assert_allclose(hiddens[1][0].reshape(30, 20), np.where(pre > 0, pre, 0.01 * pre),
                               rtol=2e-5, atol=2e-6)
    # Dropout layers have no parameters: their indices are skipped ("1", "3", ...).
    mlp = nets.make("mlp", width=3, depth=1)
    sd2 = {"1.weight": np.ones((3, 1)), "1.bias": np.zeros(3), "3.weight": np.ones((1, 3)),
           "3.bias": np.zeros(1)}
    assert set(nets.params_from_torch(sd2, mlp)) == {"dense_0", "dense_1"}
    with pytest.raises(ValueError, match="2 layers"):
        nets.params_from_torch({k: v for k, v in sd2.items()}, nets.make("mlp", width=3,
                                                                         depth=2))
    with pytest.raises(ValueError, match="running_mean"):
        nets.params_from_torch({"0.running_mean": np.ones(3)}, mlp)


def test_check_params_names_the_mismatching_leaf():
    net = nets.make("mlp", width=5, depth=2)
    x = jnp.ones((2, 1))
    expected = jax.eval_shape(lambda: nets.init(net, x, key=jax.random.key(0)))
    good = jax.tree.map(lambda e: np.zeros(e.shape, np.float32), expected)
    bad = jax.tree.map(lambda a: a, good)
    bad["dense_1"]["kernel"] = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"\['dense_1'\]\['kernel'\] has shape \(4, 5\)"):
        nets.check_params(expected, bad)
    missing = {k: v for k, v in good.items() if k != "dense_2"}
    with pytest.raises(ValueError, match="dense_2"):
        nets.check_params(expected, missing)
    # Leading (n_gains, n_seeds) axes, each possibly 1.
    lead = jax.tree.map(lambda a: np.broadcast_to(a, (1, 3) + a.shape), good)
    nets.check_params(expected, lead, lead=(2, 3))
    with pytest.raises(ValueError, match=r"broadcastable to \(2, 4\)"):
        nets.check_params(expected, lead, lead=(2, 4))
    with pytest.raises(TypeError, match="floating"):
        nets.check_params(expected, jax.tree.map(lambda a: a.astype(np.int32), good))
    # A {"params": ...} wrapper is accepted.
    nets.check_params(expected, {"params": good})


@pytest.mark.parametrize("n_points", [2, 4000])  # windows built (im2col) / lax convolution
def test_conv1d_equals_flax_conv_values_and_gradients(monkeypatch, n_points):
    # Conv1D has nn.Conv's parameters (same names, shapes, initializer draws) and computes the
    # same valid cross-correlation, its gradients included, to float32 rounding.
    import flax.linen as nn

    if n_points > 2:
        monkeypatch.setattr(nets, "IM2COL_MAX", 0)  # the lax.conv_general_dilated path
    x = jax.random.normal(jax.random.key(0), (n_points, 40, 3))
    ours = nets.Conv1D(5, 11, precision=jax.lax.Precision.HIGHEST)
    flax = nn.Conv(5, (11,), padding="VALID", precision=jax.lax.Precision.HIGHEST)
    p = ours.init(jax.random.key(1), x)
    q = flax.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, p, q)
    p = jax.tree.map(lambda a: a + 0.1, p)  # a nonzero bias
    f = jax.jit(lambda p, x: ours.apply(p, x))
    g = jax.jit(lambda p, x: flax.apply(p, x))
    np.testing.assert_allclose(f(p, x), g(p, x), rtol=1e-5, atol=1e-5)
    assert f(p, x).shape == (n_points, 30, 5)

    def loss(apply, p, x):
        return jnp.sum(jnp.tanh(apply(p, x)) ** 2)

    gp, gx = jax.jit(jax.grad(lambda p, x: loss(ours.apply, p, x), argnums=(0, 1)))(p, x)
    hp, hx = jax.jit(jax.grad(lambda p, x: loss(flax.apply, p, x), argnums=(0, 1)))(p, x)
    np.testing.assert_allclose(gx, hx, rtol=1e-4, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), gp, hp)


# The weights' normal vector computed piece by piece (unijax._normal) must be
# jax.random.normal's, bit for bit: else every seed would draw other weights than before.
def _bits(a):
    a = np.asarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


@pytest.mark.parametrize("sizes", [[300_000], [5, 262_144, 1], [250_000] * 3 + [501, 10]])
def test_normal_pieces_are_jax_random_normal_bit_for_bit(sizes):
    from unijax import _normal

    for seed in (0, 11):
        key = jax.random.key(seed)
        want = np.asarray(jax.random.normal(key, (sum(sizes),), jnp.float32))
        assert _normal._splittable(key, sum(sizes), jnp.float32)  # the path under test
        for fn in (lambda k: _normal.normal_pieces(k, sizes),
                   jax.jit(lambda k: _normal.normal_pieces(k, sizes))):
            got = np.concatenate([np.asarray(p) for p in fn(key)])
            np.testing.assert_array_equal(_bits(got), _bits(want))
    # under vmap (a batch of seeds), as the training programs draw them
    keys = jax.vmap(jax.random.key)(jnp.arange(3))
    got = jax.jit(jax.vmap(lambda k: jnp.concatenate(_normal.normal_pieces(k, sizes))))(keys)
    want = jax.vmap(lambda k: jax.random.normal(k, (sum(sizes),), jnp.float32))(keys)
    np.testing.assert_array_equal(_bits(got), _bits(want))


def test_normal_pieces_float64_and_the_fallbacks():
    from unijax import _normal

    with jax.enable_x64(True):
        key = jax.random.key(3)
        got = np.concatenate(jax.jit(lambda k: _normal.normal_pieces(
            k, [200_000, 100_001], jnp.float64))(key))
        want = jax.random.normal(key, (300_001,), jnp.float64)
        np.testing.assert_array_equal(_bits(got), _bits(want))
    # Short vectors, old-style uint32 keys and another generator: one draw, cut.
    for key, n in ((jax.random.key(1), 1000), (jax.random.PRNGKey(1), 300_000),
                   (jax.random.key(1, impl="rbg"), 300_000)):
        assert not _normal._splittable(key, n, jnp.float32)
        got = np.concatenate(_normal.normal_pieces(key, [n // 2, n - n // 2]))
        np.testing.assert_array_equal(_bits(got),
                                      _bits(jax.random.normal(key, (n,), jnp.float32)))


@pytest.mark.parametrize("x64", [False, True])
def test_init_draws_the_kernels_from_one_normal_vector_bit_for_bit(x64):
    # nets.init's contract: kernel k is gain * std_k * z[offset_k : offset_k + size_k] of one
    # jax.random.normal vector z, as float32 products (not re-associated by XLA), also with a
    # traced gain under vmap, with and without JAX's 64-bit mode (which changes what XLA fuses).
    with jax.enable_x64(x64):
        _check_init_bits()


def _check_init_bits():
    net = nets.make("mlp", width=400, depth=3, out_dim=1)
    x = jnp.ones((2, 1), jnp.float32)
    key = jax.random.key(7)
    gains = jnp.array([0.5, 1.3], jnp.float32)
    # One gain fixed at trace time, one traced, two under vmap: XLA fuses each differently.
    runs = {
        (1.3,): jax.tree.map(lambda a: a[None],
                             jax.jit(lambda: nets.init(net, x, key=key, gain=1.3))()),
        (0.5,): jax.tree.map(lambda a: a[None], jax.jit(
            lambda g: nets.init(net, x, key=key, gain=g))(gains[0])),
        (0.5, 1.3): jax.jit(jax.vmap(lambda g: nets.init(net, x, key=key, gain=g)))(gains),
    }
    for gs, grid in runs.items():
        kernels = [grid[f"dense_{i}"]["kernel"] for i in range(4)]
        sizes = [int(np.prod(k.shape[1:])) for k in kernels]
        assert sum(sizes) >= (1 << 18)  # long enough to be drawn in pieces
        z = np.asarray(jax.random.normal(key, (sum(sizes),), jnp.float32))
        offset = 0
        for k, size in zip(kernels, sizes, strict=True):
            fan_in, fan_out = k.shape[1:]
            std = np.float32(np.sqrt(2.0 / (fan_in + fan_out)))
            for i, g in enumerate(gs):
                want = z[offset:offset + size].reshape(fan_in, fan_out) * (np.float32(g) * std)
                np.testing.assert_array_equal(_bits(k[i]), _bits(want.astype(np.float32)),
                                              err_msg=f"gains {gs}")
            offset += size
