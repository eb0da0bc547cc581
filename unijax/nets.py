"""The networks of the paper (docs/experiments.md, "Common conventions"), as Flax linen modules.

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
  ``L - 1`` valid (unpadded) 1-D convolutions with kernel 11: ``1 -> 20`` channels, ``20 -> 20``
  channels, ..., and a last ``20 -> 1`` channel convolution, then an affine read-out. Each
  convolution shortens the signal by 10, so ``hiddens[k]`` (``k >= 1``) has
  ``(width - 10 k) * channels_k`` features (position-major, channel-minor), with
  ``channels_k = 20`` for ``1 <= k <= L - 2`` and ``1`` for ``k = L - 1``. Needs ``L >= 3`` and
  ``width > 10 (L - 1)``. (The authors' code has two more convolutions than hidden layers,
  ``L + 2`` activations; we follow the ``L`` / ``L + 1`` convention of docs/experiments.md.)

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

__all__ = [
    "ARCHITECTURES",
    "NONLINEARITIES",
    "CONV_CHANNELS",
    "CONV_KERNEL",
    "MLP",
    "ConvNet",
    "make",
    "init",
    "hidden_sizes",
    "xavier_normal",
]

#: Nonlinearities by name. ``leaky_relu`` has negative slope 0.01 (PyTorch's default).
NONLINEARITIES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.01),
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

#: Default dropout rate of the ``"dropout"`` architecture (appendix B).
DEFAULT_DROPOUT = 0.1

_PRECISIONS = {
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
    if not isinstance(width, int) or width <= 0:
        raise ValueError(f"width must be a positive integer, got {width=}")
    if not isinstance(depth, int) or depth <= 0:
        raise ValueError(
            f"depth (number of hidden layers) must be a positive integer, got {depth=}"
        )
    if not isinstance(out_dim, int) or out_dim <= 0:
        raise ValueError(f"out_dim must be a positive integer, got {out_dim=}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"unknown nonlinearity={nonlinearity!r}; valid names: {sorted(NONLINEARITIES)}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout=}")


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
            precision=_PRECISIONS[self.precision],
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


class ConvNet(nn.Module):
    """The convolution variant: affine in, ``depth - 1`` valid 1-D convolutions, affine out.

    See the module docstring for the hidden shapes. Attributes as in :class:`MLP`, plus
    ``channels`` (20) and ``kernel`` (11).
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

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, tuple]:
        """Forward pass; ``x: (n_points, in_dim)`` -> ``(out, hiddens)`` (flattened hiddens)."""
        _check_common(self.width, self.depth, self.out_dim, self.nonlinearity, self.dropout)
        _check_conv(self.width, self.depth, self.kernel)
        phi = NONLINEARITIES[self.nonlinearity]
        prec = _PRECISIONS[self.precision]
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
        for k in range(1, self.depth):
            features = 1 if k == self.depth - 1 else self.channels
            conv = nn.Conv(features, (self.kernel,), padding="VALID", name=f"conv_{k}", **common)
            a = phi(conv(maybe_drop(a)))
            hiddens.append(a.reshape(n, -1))
        out = nn.Dense(self.out_dim, name="dense_out", **common)(maybe_drop(hiddens[-1]))
        return out, tuple(hiddens)


def _check_conv(width: int, depth: int, kernel: int = CONV_KERNEL) -> None:
    if depth < 3:
        raise ValueError(f"the conv architecture needs depth >= 3 hidden layers, got {depth=}")
    if width <= (kernel - 1) * (depth - 1):
        raise ValueError(
            f"the conv architecture needs width > {(kernel - 1) * (depth - 1)} for depth={depth} "
            f"(each of the {depth - 1} valid convolutions shortens the signal by {kernel - 1}), "
            f"got {width=}"
        )


def hidden_sizes(arch: str, width: int, depth: int) -> tuple[int, ...]:
    """Number of features of each (flattened) hidden activation, length ``depth``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch={arch!r}; valid names: {list(ARCHITECTURES)}")
    if arch != "conv":
        return (width,) * depth
    _check_conv(width, depth)
    sizes = [width]
    for k in range(1, depth):
        channels = 1 if k == depth - 1 else CONV_CHANNELS
        sizes.append((width - (CONV_KERNEL - 1) * k) * channels)
    return tuple(sizes)


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
) -> nn.Module:
    """The network of architecture ``arch`` (one of :data:`ARCHITECTURES`).

    Args:
        arch: ``"mlp"``, ``"conv"``, ``"skip"`` or ``"dropout"``.
        width, depth, out_dim, nonlinearity: see :class:`MLP`.
        dropout: dropout rate; ``None`` means 0.1 for ``"dropout"`` and 0 otherwise.
        gain: Xavier gain used by ``module.init`` (:func:`init` overrides it).
        dtype: parameter/computation dtype, a NumPy/JAX dtype or its name.
        precision: ``None``, ``"default"``, ``"high"`` or ``"highest"``.

    Raises:
        ValueError: unknown ``arch``/``nonlinearity``/``precision``, non-positive sizes,
            ``dropout`` outside ``[0, 1)``, a conv network too narrow or shallow.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch={arch!r}; valid names: {list(ARCHITECTURES)}")
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision={precision!r}; valid: {list(_PRECISIONS)}")
    if dropout is None:
        dropout = DEFAULT_DROPOUT if arch == "dropout" else 0.0
    if not gain > 0:
        raise ValueError(f"gain must be > 0, got {gain=}")
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
    if arch == "conv":
        _check_conv(width, depth)
        return ConvNet(**kw)
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
    total = sum(int(np.prod(leaf.shape)) for _, leaf in kernels)
    z = jax.random.normal(key, (total,), dtype)
    out = [jnp.zeros(leaf.shape, leaf.dtype) for _, leaf in leaves]
    offset = 0
    for i, leaf in kernels:
        size = int(np.prod(leaf.shape))
        *field, fan_in, fan_out = leaf.shape
        receptive = int(np.prod(field)) if field else 1
        std = np.sqrt(2.0 / (receptive * (fan_in + fan_out)))
        scale = jnp.asarray(gain, leaf.dtype) * jnp.asarray(std, leaf.dtype)
        out[i] = (z[offset : offset + size].reshape(leaf.shape) * scale).astype(leaf.dtype)
        offset += size
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
