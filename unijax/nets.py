"""The networks of the paper (its appendix B conventions), as Flax linen modules.

Every architecture maps a batch of inputs ``x: (n_points, in_dim)`` to
``(out, hiddens)`` with ``out: (n_points, out_dim)`` and ``hiddens`` a tuple of the ``depth``
hidden activations (after the nonlinearity, before any dropout), each flattened to
``(n_points, n_features)``. "Hidden layers" ``L = depth`` counts these activations; the
network has ``L + 1`` affine maps. The layer the paper observes is ``hiddens[L // 2]``.

Architectures (:data:`ARCHITECTURES`):

- ``"mlp"``: fully connected, every hidden layer ``width`` units.
- ``"skip"``: as ``"mlp"``, and each hidden activation ``k >= 2`` (counted from 0) adds the
  activation from two layers earlier, ``h_k = phi(W_k h_{k-1} + b_k) + h_{k-2}``.
- ``"dropout"``: as ``"mlp"`` with dropout (rate ``dropout``, default 0.1) on the input of every
  affine map while training; off when measuring (``train=False``).
- ``"conv"``: an affine input layer to ``width`` units (``hiddens[0]: (n, width)``), then
  valid (unpadded) 1-D convolutions with kernel 11, a first ``1 -> 20`` channels, then
  ``20 -> 20`` channels, and a last ``20 -> 1`` channel convolution, then an affine read-out
  (every convolution followed by the nonlinearity). Each convolution shortens the signal by 10,
  so the activation of convolution ``k`` (``hiddens[k]``) has ``(width - 10 k) * channels_k``
  features (position-major, channel-minor), ``channels_k = 20`` except ``1`` for the last.
  Two layouts (``conv_layout``, :data:`CONV_LAYOUTS`):

  * ``"unijax"`` (default): ``L - 1`` convolutions (``L - 3`` of them ``20 -> 20``), so that
    there are ``L`` hidden activations and ``L + 1`` maps, the convention of the MLP. Needs
    ``L >= 3`` and ``width > 10 (L - 1)``.
  * ``"authors"``: the network of the paper's code (``CNN`` in the authors' ``models.py``):
    ``L + 1`` convolutions (``1 -> 20``, ``L - 1`` of ``20 -> 20``, ``20 -> 1``; for ``L = 10``
    eleven convolutions), so there are ``L + 2`` hidden activations (``hiddens[0]`` the affine
    input layer, ``hiddens[k]`` convolution ``k``, ``1 <= k <= L + 1``) and ``L + 3`` maps.
    The read-out takes the ``width - 10 (L + 1)`` positions of the last convolution. (The
    authors' code sizes it ``width - 11 L``, which is the same number only at ``L = 10``, the
    one depth it ran.) Their observed layer ``hidden_layer = 5`` at ``L = 10`` is
    ``hiddens[5] = hiddens[L // 2]``. Needs ``L >= 1`` and ``width > 10 (L + 1)``. The
    authors flatten a convolution's activation channel-major; the flattening order changes no
    distance.

Derivatives follow PyTorch's at the kinks: leaky ReLU has derivative ``negative_slope``
(0.01) at exactly 0, as ``torch.nn.functional.leaky_relu`` (``jax.nn.leaky_relu`` has 1), and
relu 0. This matters: with zero biases the two-point input ``x = 0`` and the XOR input
``(0, 0)`` put every pre-activation exactly at 0 (the other nonlinearities agree with PyTorch
at 0 already: elu 1, tanh 1, swish 1/2, linear 1).

Initialization (all architectures): Xavier/Glorot normal kernels,
``std = gain * sqrt(2 / (fan_in + fan_out))`` (for a convolution ``fan = kernel * channels``, as
in PyTorch's ``xavier_normal_``), zero biases. :func:`init` takes the gain as a (traceable)
argument so that one can ``vmap`` over keys *and* gains.

References:
    van Rossem & Saxe, "When Representations Align: Universality in Representation Learning
    Dynamics", ICML 2024, appendix B.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unijax._checks import check_choice, check_int, out_of_range
from unijax._normal import normal_pieces

__all__ = [
    "ARCHITECTURES",
    "NONLINEARITIES",
    "CONV_CHANNELS",
    "CONV_KERNEL",
    "CONV_LAYOUTS",
    "PRECISIONS",
    "MLP",
    "ConvNet",
    "Conv1D",
    "make",
    "init",
    "hidden_sizes",
    "n_hidden",
    "xavier_normal",
    "leaky_relu",
    "layer_names",
    "check_params",
    "params_from_torch",
]

def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    """Leaky ReLU with PyTorch's derivative at 0: ``negative_slope``, not 1.

    ``x if x > 0 else negative_slope * x``, elementwise. ``jax.nn.leaky_relu`` selects the
    identity branch at ``x = 0`` (``x >= 0``), so its derivative there is 1;
    ``torch.nn.functional.leaky_relu`` uses the negative slope. Same values, different
    gradients on the kink, which a zero-bias network hits exactly (module docstring).
    """
    return jnp.where(x > 0, x, negative_slope * x)


#: Nonlinearities by name. ``leaky_relu`` has negative slope 0.01 (PyTorch's default) and
#: PyTorch's derivative at 0 (see :func:`leaky_relu`).
NONLINEARITIES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "leaky_relu": functools.partial(leaky_relu, negative_slope=0.01),
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "tanh": jnp.tanh,
    "swish": jax.nn.swish,
    "none": lambda a: a,
}

#: Architecture names accepted by :func:`make`.
ARCHITECTURES: tuple[str, ...] = ("mlp", "conv", "skip", "dropout")

#: Channels and kernel size of the convolution variant (appendix B).
CONV_CHANNELS = 20
CONV_KERNEL = 11
#: Layouts of the convolution variant (module docstring): ``"unijax"`` (``L - 1``
#: convolutions, ``L`` hidden activations) or ``"authors"`` (``L + 1`` convolutions, ``L + 2``
#: hidden activations, as the paper's code).
CONV_LAYOUTS: tuple[str, ...] = ("unijax", "authors")

#: Default dropout rate of the ``"dropout"`` architecture (appendix B).
DEFAULT_DROPOUT = 0.1

#: The ``precision`` names the networks accept, and the ``jax.lax.Precision`` of their matmuls.
PRECISIONS = {
    None: None,
    "default": jax.lax.Precision.DEFAULT,
    "high": jax.lax.Precision.HIGH,
    "highest": jax.lax.Precision.HIGHEST,
}


def xavier_normal(gain: float = 1.0) -> Callable:
    """Xavier/Glorot normal initializer, ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    For a kernel of shape ``(..., fan_in_channels, fan_out_channels)`` the receptive field (the
    leading dimensions) multiplies both fans, as in PyTorch's ``xavier_normal_``. Not truncated.
    """
    return jax.nn.initializers.variance_scaling(gain**2, "fan_avg", "normal")


def _check_common(width: int, depth: int, out_dim: int, nonlinearity: str, dropout: float):
    # The networks are an entry of their own (nets.make, nets.MLP): the same checks and
    # wording as a training config's (unijax._checks).
    check_int("width", width, 1)
    check_int("depth", depth, 1)
    check_int("out_dim", out_dim, 1)
    check_choice("nonlinearity", nonlinearity, sorted(NONLINEARITIES))
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise out_of_range("dropout", dropout, "a number in [0, 1)")


class MLP(nn.Module):
    """Fully connected network, optionally with skip connections and dropout.

    Attributes:
        width: units of every hidden layer.
        depth: number of hidden layers ``L`` (the network has ``L + 1`` affine maps).
        out_dim: output dimension.
        nonlinearity: a key of :data:`NONLINEARITIES`.
        skip: add ``h_{k-2}`` to hidden activation ``k`` for ``k >= 2``.
        dropout: dropout rate on the input of every affine map when ``train=True``.
        gain: Xavier gain used by ``Module.init`` (see also :func:`init`).
        dtype: parameter and computation dtype (float32 default).
        precision: matmul precision (``"highest"`` default: exact float32 on every backend,
            where e.g. TF32 on a GPU would blur the tiny distances the theory is about).
    """

    width: int
    depth: int
    out_dim: int
    nonlinearity: str = "leaky_relu"
    skip: bool = False
    dropout: float = 0.0
    gain: float = 1.0
    dtype: Any = jnp.float32
    precision: str | None = "highest"

    def _dense(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(
            features,
            kernel_init=xavier_normal(self.gain),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.dtype,
            precision=PRECISIONS[self.precision],
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, tuple]:
        """Forward pass.

        Args:
            x: inputs, ``(n_points, in_dim)``.
            train: apply dropout (needs a ``"dropout"`` rng when ``dropout > 0``).

        Returns:
            ``(out, hiddens)``: ``out: (n_points, out_dim)``; ``hiddens``: tuple of ``depth``
            arrays ``(n_points, width)``, the activations after the nonlinearity (and skip).
        """
        _check_common(self.width, self.depth, self.out_dim, self.nonlinearity, self.dropout)
        phi = NONLINEARITIES[self.nonlinearity]
        drop = nn.Dropout(self.dropout, deterministic=not train) if self.dropout else None
        a = jnp.asarray(x, self.dtype)
        hiddens: list[jax.Array] = []
        for k in range(self.depth):
            if drop is not None:
                a = drop(a)
            a = phi(self._dense(self.width, f"dense_{k}")(a))
            if self.skip and k >= 2:
                a = a + hiddens[k - 2]
            hiddens.append(a)
        if drop is not None:
            a = drop(a)
        out = self._dense(self.out_dim, f"dense_{self.depth}")(a)
        return out, tuple(hiddens)


#: Largest input windows (``n * length_out * kernel * channels_in`` numbers) a convolution builds
#: to run as one matrix product (:class:`Conv1D`); larger inputs use ``lax.conv_general_dilated``.
IM2COL_MAX = 1 << 22


class Conv1D(nn.Module):
    """A valid (unpadded) 1-D convolution, ``(n, length, in) -> (n, length - kernel + 1,
    features)``, with ``nn.Conv``'s parameters (``kernel: (kernel, in, features)``,
    ``bias: (features,)``, the same names, shapes and initializer calls).

    Small inputs (at most :data:`IM2COL_MAX` window entries, e.g. the two-point data) run as one
    matrix product of the input's windows ("im2col"), whose gradients are matrix products too:
    XLA:CPU runs the gradients of ``lax.conv_general_dilated`` (the kernel gradient, a
    convolution with a window as long as the signal; the input gradient, with the flipped
    kernel) as naive loops. The authors' 11-convolution network, width 500, two points: CPU
    time per ``jax.grad`` epoch 59 -> 7.7 ms. Same sums in another order (float32 rounding).
    Larger inputs use ``lax.conv_general_dilated`` (the windows would take ``kernel`` times the
    activations' memory).
    """

    features: int
    kernel: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c_in = self.kernel, x.shape[-1]
        w = self.param("kernel", self.kernel_init, (k, c_in, self.features), self.param_dtype)
        b = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, w, b = (jnp.asarray(v, self.dtype) for v in (x, w, b))
        n_out = x.shape[-2] - k + 1
        if x.shape[0] * n_out * k * c_in <= IM2COL_MAX:
            # windows[i, t, j * c_in + c] = x[i, t + j, c], matching w.reshape(k * c_in, -1)
            windows = jnp.concatenate([x[:, j : j + n_out, :] for j in range(k)], axis=-1)
            y = jnp.dot(windows, w.reshape(k * c_in, self.features), precision=self.precision)
        else:
            y = jax.lax.conv_general_dilated(
                x, w, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"),
                precision=self.precision,
            )
        return y + b


class ConvNet(nn.Module):
    """The convolution variant: affine in, valid 1-D convolutions, affine out.

    ``depth - 1`` convolutions (``layout="unijax"``) or ``depth + 1`` (``layout="authors"``);
    see the module docstring for the hidden shapes. Attributes as in :class:`MLP`, plus
    ``channels`` (20), ``kernel`` (11) and ``layout`` (one of :data:`CONV_LAYOUTS`).
    """

    width: int
    depth: int
    out_dim: int
    nonlinearity: str = "leaky_relu"
    dropout: float = 0.0
    gain: float = 1.0
    dtype: Any = jnp.float32
    precision: str | None = "highest"
    channels: int = CONV_CHANNELS
    kernel: int = CONV_KERNEL
    layout: str = "unijax"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, tuple]:
        """Forward pass; ``x: (n_points, in_dim)`` -> ``(out, hiddens)`` (flattened hiddens)."""
        _check_common(self.width, self.depth, self.out_dim, self.nonlinearity, self.dropout)
        _check_conv(self.width, self.depth, self.kernel, self.layout)
        n_conv = _n_conv(self.depth, self.layout)
        phi = NONLINEARITIES[self.nonlinearity]
        prec = PRECISIONS[self.precision]
        drop = nn.Dropout(self.dropout, deterministic=not train) if self.dropout else None
        maybe_drop = (lambda a: drop(a)) if drop is not None else (lambda a: a)
        common = dict(
            kernel_init=xavier_normal(self.gain),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.dtype,
            precision=prec,
        )
        a = jnp.asarray(x, self.dtype)
        n = a.shape[0]
        a = phi(nn.Dense(self.width, name="dense_in", **common)(maybe_drop(a)))
        hiddens = [a]
        a = a[:, :, None]  # (n, length, channels=1)
        for k in range(1, n_conv + 1):
            features = 1 if k == n_conv else self.channels
            conv = Conv1D(features, self.kernel, name=f"conv_{k}", **common)
            a = phi(conv(maybe_drop(a)))
            hiddens.append(a.reshape(n, -1))
        out = nn.Dense(self.out_dim, name="dense_out", **common)(maybe_drop(hiddens[-1]))
        return out, tuple(hiddens)


def _n_conv(depth: int, layout: str) -> int:
    """Number of convolutions of the conv variant of ``depth`` hidden layers."""
    return depth + 1 if layout == "authors" else depth - 1


def _check_layout(conv_layout: str) -> None:
    check_choice("conv_layout", conv_layout, list(CONV_LAYOUTS))


def _check_conv(width: int, depth: int, kernel: int = CONV_KERNEL, layout: str = "unijax"):
    _check_layout(layout)
    min_depth = 1 if layout == "authors" else 3
    if depth < min_depth:
        raise out_of_range("depth", depth, f"an integer >= {min_depth} for the conv "
                           f"architecture (conv_layout={layout!r})")
    n_conv = _n_conv(depth, layout)
    if width <= (kernel - 1) * n_conv:
        raise out_of_range("width", width, f"an integer > {(kernel - 1) * n_conv} for the conv "
                           f"architecture (conv_layout={layout!r}) at depth={depth}: each of "
                           f"its {n_conv} valid convolutions shortens the signal by {kernel - 1}")


def hidden_sizes(
    arch: str, width: int, depth: int, conv_layout: str = "unijax"
) -> tuple[int, ...]:
    """Number of features of each (flattened) hidden activation.

    Length ``depth``, except ``depth + 2`` for ``arch="conv"`` with ``conv_layout="authors"``
    (see :func:`n_hidden`).
    """
    check_choice("arch", arch, list(ARCHITECTURES))
    _check_layout(conv_layout)
    if arch != "conv":
        return (width,) * depth
    _check_conv(width, depth, CONV_KERNEL, conv_layout)
    n_conv = _n_conv(depth, conv_layout)
    sizes = [width]
    for k in range(1, n_conv + 1):
        channels = 1 if k == n_conv else CONV_CHANNELS
        sizes.append((width - (CONV_KERNEL - 1) * k) * channels)
    return tuple(sizes)


def n_hidden(arch: str, depth: int, conv_layout: str = "unijax") -> int:
    """Number of hidden activations ``hiddens`` a network returns (valid ``layer`` indices).

    ``depth`` for every architecture except the authors' conv layout, which has ``depth + 2``
    (the affine input layer and ``depth + 1`` convolutions).
    """
    check_choice("arch", arch, list(ARCHITECTURES))
    _check_layout(conv_layout)
    return depth + 2 if (arch == "conv" and conv_layout == "authors") else depth


def make(
    arch: str,
    *,
    width: int,
    depth: int,
    out_dim: int = 1,
    nonlinearity: str = "leaky_relu",
    dropout: float | None = None,
    gain: float = 1.0,
    dtype: Any = jnp.float32,
    precision: str | None = "highest",
    conv_layout: str = "unijax",
) -> nn.Module:
    """The network of architecture ``arch`` (one of :data:`ARCHITECTURES`).

    Args:
        arch: ``"mlp"``, ``"conv"``, ``"skip"`` or ``"dropout"``.
        width, depth, out_dim, nonlinearity: see :class:`MLP`.
        dropout: dropout rate; ``None`` means 0.1 for ``"dropout"`` and 0 otherwise.
        gain: Xavier gain used by ``module.init`` (:func:`init` overrides it).
        dtype: parameter/computation dtype, a NumPy/JAX dtype or its name.
        precision: ``None``, ``"default"``, ``"high"`` or ``"highest"``.
        conv_layout: ``"unijax"`` or ``"authors"`` (:data:`CONV_LAYOUTS`, module docstring);
            only used by ``"conv"``.

    Raises:
        ValueError: unknown ``arch``/``nonlinearity``/``precision``/``conv_layout``,
            non-positive sizes,
            ``dropout`` outside ``[0, 1)``, a conv network too narrow or shallow.
    """
    check_choice("arch", arch, list(ARCHITECTURES))
    check_choice("precision", precision, list(PRECISIONS))
    if dropout is None:
        dropout = DEFAULT_DROPOUT if arch == "dropout" else 0.0
    if not gain > 0:  # a traced or array gain is welcome here: only its sign is checked
        raise out_of_range("gain", gain, "a number > 0")
    dtype = jnp.dtype(dtype)
    _check_common(width, depth, out_dim, nonlinearity, dropout)
    kw = dict(
        width=width,
        depth=depth,
        out_dim=out_dim,
        nonlinearity=nonlinearity,
        dropout=float(dropout),
        gain=float(gain),
        dtype=dtype,
        precision=precision,
    )
    _check_layout(conv_layout)
    if arch == "conv":
        _check_conv(width, depth, CONV_KERNEL, conv_layout)
        return ConvNet(layout=conv_layout, **kw)
    return MLP(skip=(arch == "skip"), **kw)


def init(
    net: nn.Module, x: jax.Array, *, key: jax.Array, gain: float | jax.Array | None = None
) -> dict:
    """Xavier-normal parameters of ``net`` for inputs shaped like ``x``, with gain ``gain``.

    Every kernel is ``gain * sqrt(2 / (fan_in + fan_out)) * N(0, 1)`` (fans as in
    :func:`xavier_normal`), every bias zero, the same distribution as ``net.init`` gives, but
    drawn from *one* normal vector for the whole network (cut into the kernels in parameter
    order) instead of one random call per layer: under ``vmap`` this compiles several times
    faster. ``gain`` may be a traced array: ``jax.vmap(lambda k, g: init(net, x, key=k,
    gain=g))`` initializes a grid of seeds x gains, with the same draws at every gain of a key.

    Args:
        net: a module returning ``(out, hiddens)`` (e.g. from :func:`make`), or any Flax module
            whose weight matrices are the leaves named ``kernel`` (shape ``(..., in, out)``).
        x: example inputs, ``(n_points, in_dim)``; only the shape and dtype matter.
        key: a ``jax.random`` key.
        gain: the Xavier gain; ``None`` uses ``net.gain`` (or 1 if the module has none).

    Returns:
        The ``"params"`` collection (a dict pytree).
    """
    if gain is None:
        gain = getattr(net, "gain", 1.0)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), x))["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    kernels = [(i, leaf) for i, (path, leaf) in enumerate(leaves) if _leaf_name(path) == "kernel"]
    dtype = kernels[0][1].dtype if kernels else jnp.float32
    # One normal vector for the whole network, cut into the kernels; each kernel's piece is
    # computed as a loop of its own, which XLA's CPU runtime runs side by side (_normal).
    pieces = normal_pieces(key, [int(np.prod(leaf.shape)) for _, leaf in kernels], dtype)
    out = [jnp.zeros(leaf.shape, leaf.dtype) for _, leaf in leaves]
    for (i, leaf), z in zip(kernels, pieces, strict=True):
        *field, fan_in, fan_out = leaf.shape
        receptive = int(np.prod(field)) if field else 1
        std = np.sqrt(2.0 / (receptive * (fan_in + fan_out)))
        scale = jnp.asarray(gain, leaf.dtype) * jnp.asarray(std, leaf.dtype)
        out[i] = (z.reshape(leaf.shape) * scale).astype(leaf.dtype)
    return jax.tree_util.tree_unflatten(treedef, out)


def _leaf_name(path) -> str | None:
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None))


def scale_kernels(params: Any, gain: float | jax.Array) -> Any:
    """Multiply every leaf named ``kernel`` by ``gain`` (keeping its dtype)."""

    def scale(path, leaf):
        if _leaf_name(path) == "kernel":
            return leaf * jnp.asarray(gain, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(scale, params)


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))


# --------------------------------------------------------------------------------------------
# Given parameters: structure checks and PyTorch state dicts
# --------------------------------------------------------------------------------------------


def layer_names(net: nn.Module) -> tuple[str, ...]:
    """Names of the parameterized layers of a unijax network, input to output.

    ``("dense_0", ..., "dense_L")`` for :class:`MLP`; ``("dense_in", "conv_1", ...,
    "conv_K", "dense_out")`` for :class:`ConvNet` (``K`` convolutions, see the module
    docstring). This is the order of the ``nn.Linear`` / ``nn.Conv1d`` modules of the
    corresponding PyTorch network (:func:`params_from_torch`).
    """
    if isinstance(net, MLP):
        return tuple(f"dense_{k}" for k in range(net.depth + 1))
    if isinstance(net, ConvNet):
        n_conv = _n_conv(net.depth, net.layout)
        return ("dense_in", *(f"conv_{k}" for k in range(1, n_conv + 1)), "dense_out")
    raise TypeError(f"net must be a unijax.nets MLP or ConvNet, got {type(net).__name__}")


def _as_plain_dict(tree: Any) -> Any:
    if hasattr(tree, "unfreeze"):
        tree = tree.unfreeze()
    if isinstance(tree, dict):
        return {k: _as_plain_dict(v) for k, v in tree.items()}
    return tree


def check_params(
    expected: Any, params: Any, *, lead: tuple[int, ...] = (), name: str = "params"
) -> Any:
    """Check a parameter pytree against the structure and shapes a network expects.

    Args:
        expected: the network's parameters for one trial, or their shapes (e.g.
            ``jax.eval_shape(lambda: nets.init(net, x, key=jax.random.key(0)))``).
        params: the given parameters (nested dicts of arrays; a ``{"params": ...}`` wrapper
            or a Flax ``FrozenDict`` is accepted). Each leaf has the expected shape ``S``, or
            ``lead' + S`` where ``lead'`` has ``len(lead)`` axes each equal to the
            corresponding ``lead`` size or 1 (broadcast).
        lead: allowed leading batch axes, e.g. ``(n_gains, n_seeds)``; ``()``: none.
        name: how to call ``params`` in error messages.

    Returns:
        ``params`` as plain nested dicts with the expected tree structure (leaves unchanged).

    Raises:
        ValueError: a missing or unexpected layer/leaf, or a leaf of the wrong shape, naming
            the leaf (e.g. ``params['dense_3']['kernel']``), its shape and the expected one.
        TypeError: a leaf that is not a floating-point array.
    """
    params = _as_plain_dict(params)
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    exp_leaves, treedef = jax.tree_util.tree_flatten_with_path(_as_plain_dict(expected))
    got = dict(
        (jax.tree_util.keystr(p), leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    )
    want = [jax.tree_util.keystr(p) for p, _ in exp_leaves]
    missing = [k for k in want if k not in got]
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(
            f"{name} does not match the network's parameter structure: missing {missing}, "
            f"unexpected {extra}; expected leaves: {want}"
        )
    out = []
    for key, (_, leaf) in zip(want, exp_leaves, strict=True):
        value = got[key]
        shape = tuple(np.shape(value))
        dtype = np.result_type(getattr(value, "dtype", np.asarray(value).dtype))
        if not np.issubdtype(dtype, np.floating) and dtype != jnp.bfloat16:
            raise TypeError(f"{name}{key} must be a floating-point array, got dtype {dtype}")
        want_shape = tuple(leaf.shape)
        n = len(lead)
        ok = shape == want_shape or (
            len(shape) == n + len(want_shape)
            and shape[n:] == want_shape
            and all(s in (1, m) for s, m in zip(shape[:n], lead, strict=True))
        )
        if not ok:
            extra_msg = f" (or with leading axes broadcastable to {lead})" if n else ""
            raise ValueError(
                f"{name}{key} has shape {shape}, the network expects {want_shape}{extra_msg}"
            )
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


def params_from_torch(state_dict: dict[str, Any], net: nn.Module) -> dict:
    """Flax parameters of ``net`` from a PyTorch-style state dict of NumPy arrays.

    No PyTorch needed: pass ``{k: v.detach().cpu().numpy() for k, v in
    model.state_dict().items()}``. The state dict's layers are taken in their order (the order
    of ``model.state_dict()``, the modules' registration order), grouped by the key prefix
    before the last ``.`` (``"3.weight"``, ``"3.bias"`` -> layer ``"3"``); layers without
    parameters (dropout) do not appear and are skipped. They are matched one to one with
    :func:`layer_names` of ``net``, converting

    - ``nn.Linear``: ``weight (out, in)`` -> ``kernel (in, out)`` (transposed),
    - ``nn.Conv1d``: ``weight (out, in, kernel)`` -> ``kernel (kernel, in, out)``,
    - ``bias (out,)`` -> ``bias (out,)``.

    The authors' ``MLP``, ``ResNet`` and ``Dropout`` networks map onto :class:`MLP` (with
    ``skip`` / ``dropout``), their ``CNN`` onto :class:`ConvNet` with ``layout="authors"``.
    Both compute cross-correlations, so conv kernels are not flipped. Shapes are checked against
    the network when it is trained (``unijax.train.train(..., params=...)``) or with
    :func:`check_params`.

    Args:
        state_dict: mapping ``"<layer>.weight"`` / ``"<layer>.bias"`` -> array.
        net: the unijax network (:class:`MLP` or :class:`ConvNet`, e.g. from :func:`make`).

    Returns:
        The ``"params"`` collection: ``{layer_name: {"kernel": ..., "bias": ...}}`` (NumPy).

    Raises:
        ValueError: a key that is not ``<layer>.weight`` / ``<layer>.bias``, a layer without
            both, a number of layers different from ``net``'s, or a weight of a rank other
            than 2 (linear) or 3 (1-D convolution).
    """
    names = layer_names(net)
    layers: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = str(key).rpartition(".")
        if leaf not in ("weight", "bias") or not prefix:
            raise ValueError(
                f"state_dict key {key!r} is not '<layer>.weight' or '<layer>.bias'"
            )
        layers.setdefault(prefix, {})[leaf] = np.asarray(value)
    if len(layers) != len(names):
        raise ValueError(
            f"state_dict has {len(layers)} layers {list(layers)}, the network has "
            f"{len(names)}: {list(names)}"
        )
    out = {}
    for (prefix, tensors), name in zip(layers.items(), names, strict=True):
        if set(tensors) != {"weight", "bias"}:
            raise ValueError(f"state_dict layer {prefix!r} needs a weight and a bias, got "
                             f"{sorted(tensors)}")
        w = tensors["weight"]
        if w.ndim == 2:
            kernel = w.T
        elif w.ndim == 3:
            kernel = np.transpose(w, (2, 1, 0))
        else:
            raise ValueError(
                f"state_dict {prefix + '.weight'!r} has shape {w.shape}: expected a linear "
                f"(out, in) or 1-D convolution (out, in, kernel) weight"
            )
        out[name] = {"kernel": np.ascontiguousarray(kernel), "bias": tensors["bias"]}
    return out
