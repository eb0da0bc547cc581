"""Frozen training configurations, and every row of the paper's Tables 1 and 2 by name.

>>> from unijax import configs
>>> cfg = configs.get("default", width=32, depth=4, epochs=200)   # tests use small sizes
>>> cfg.gain, cfg.lr, cfg.layer
(1.0, 0.005, 2)

Names follow docs/experiments.md (case, spaces, hyphens and underscores are forgiven):
Table 1 (E1/E2, two points): ``default``, ``convolution``, ``skip connections``, ``shallow``,
``narrow``, ``dropout``, ``linear``, ``relu``, ``elu``, ``tanh``, ``swish``, ``low initial
weights``, ``intermediate initial weights``, ``high initial weights``, ``very high initial
weights``; Table 2 (E4): ``XOR low weights``, ``XOR intermediate weights``, ``XOR high weights``,
``XOR 2 layers``; E5: ``Blobs very low weights``, ``Blobs low weights``, ``Blobs high weights``;
E6: ``MNIST``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from . import nets
from ._checks import check_choice, check_float, check_int, out_of_range
from .data import DATASETS

__all__ = ["TrainConfig", "get", "names", "OPTIMIZERS", "DTYPES", "LOSSES"]

#: Optimizers understood by :mod:`unijax.train`.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
#: Training losses understood by :mod:`unijax.train`: ``"half_mse"``
#: ``0.5 * mean((f - y)^2)`` (the paper's text, appendix B) and ``"mse"``
#: ``mean((f - y)^2)`` (PyTorch's ``nn.MSELoss()``, what the authors' XOR notebook ran); means
#: over points and output dimensions.
LOSSES: tuple[str, ...] = ("half_mse", "mse")
#: Floating dtypes accepted for networks and data.
DTYPES: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run of the paper: network, data and optimizer (frozen, hashable).

    Attributes:
        name: the row's name (snake case), e.g. ``"default"``.
        arch: architecture, one of ``unijax.nets.ARCHITECTURES``.
        nonlinearity: one of ``unijax.nets.NONLINEARITIES``.
        gain: Xavier gain of the initial weights, > 0.
        lr: learning rate, > 0 (per step; a full-batch step is one epoch).
        epochs: number of training epochs, > 0.
        width: units per hidden layer, > 0.
        depth: number of hidden layers ``L`` (the network has ``L + 1`` affine maps), > 0.
        layer: recorded hidden layer, ``0 <= layer < depth``; ``None`` means ``depth // 2``
            (docs/experiments.md: index L/2 of the L activations counted from 0). Always an int
            after construction.
        optimizer: ``"sgd"`` (plain gradient descent) or ``"adam"``.
        batch_size: mini-batch size (batches reshuffled every epoch), or ``None`` for full
            batch.
        dataset: one of ``unijax.data.DATASETS``.
        dx2, dy2: squared input/output distances of the two-point data (ignored otherwise).
        dtype: floating dtype of the network and data, ``"float32"`` by default.
        dropout: dropout rate (input of every affine map, training only), in ``[0, 1)``; the
            ``"dropout"`` architecture needs it > 0.
        divergence_threshold: a trial whose loss exceeds this (or is NaN/inf) is marked
            diverged, > 0.
        precision: matmul precision (``"highest"``: exact float32 everywhere).
        loss: the training loss, one of :data:`LOSSES`: ``"half_mse"`` (default,
            ``0.5 * mean((f(x) - y)^2)``) or ``"mse"`` (``mean((f(x) - y)^2)``, PyTorch's
            ``nn.MSELoss()``; the same gradient as ``"half_mse"`` at twice the learning rate).
            The recorded loss is this loss.
        conv_layout: layout of the ``"conv"`` architecture, one of
            ``unijax.nets.CONV_LAYOUTS``: ``"unijax"`` (default: ``depth - 1`` convolutions,
            ``depth`` hidden layers) or ``"authors"`` (``depth + 1`` convolutions, ``depth + 2``
            hidden layers, as the paper's code; ``layer`` may then be up to ``depth + 1``).
            Ignored by the other architectures.

    Raises:
        ValueError: any value outside its range, naming the field, value and valid range.
    """

    name: str = "default"
    arch: str = "mlp"
    nonlinearity: str = "leaky_relu"
    gain: float = 1.0
    lr: float = 0.005
    epochs: int = 6000
    width: int = 500
    depth: int = 20
    layer: int | None = None
    optimizer: str = "sgd"
    batch_size: int | None = None
    dataset: str = "two_points"
    dx2: float = 1.0
    dy2: float = 0.5
    dtype: str = "float32"
    dropout: float = 0.0
    divergence_threshold: float = 1e6
    precision: str = "highest"
    loss: str = "half_mse"
    conv_layout: str = "unijax"

    def __post_init__(self):
        # The one boundary where a training config enters: every field is checked here, in
        # unijax's one message format (unijax._checks), and nowhere downstream of it again.
        for f in ("width", "depth", "epochs"):
            object.__setattr__(self, f, check_int(f, getattr(self, f), 1))
        for f in ("gain", "lr", "dx2", "divergence_threshold"):
            object.__setattr__(self, f, check_float(f, getattr(self, f)))
        object.__setattr__(self, "dy2", check_float("dy2", self.dy2, lo_open=False))
        check_choice("arch", self.arch, list(nets.ARCHITECTURES))
        check_choice("nonlinearity", self.nonlinearity, list(nets.NONLINEARITIES))
        check_choice("optimizer", self.optimizer, list(OPTIMIZERS))
        check_choice("dataset", self.dataset, list(DATASETS))
        check_choice("dtype", self.dtype, list(DTYPES))
        check_choice("precision", self.precision, ["default", "high", "highest"])
        check_choice("loss", self.loss, list(LOSSES))
        check_choice("conv_layout", self.conv_layout, list(nets.CONV_LAYOUTS))
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, 1))
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise out_of_range("dropout", self.dropout, "a number in [0, 1)")
        if self.arch == "dropout" and self.dropout == 0:
            raise out_of_range("dropout", self.dropout, "in (0, 1) for arch='dropout'")
        if self.arch == "conv":
            # Raises on a network too narrow or shallow for its convolutions.
            nets.hidden_sizes("conv", self.width, self.depth, self.conv_layout)
        n_hidden = nets.n_hidden(self.arch, self.depth, self.conv_layout)
        if self.layer is None:
            object.__setattr__(self, "layer", self.depth // 2)
        if (
            isinstance(self.layer, bool)
            or not isinstance(self.layer, (int, np.integer))
            or not 0 <= self.layer < n_hidden
        ):
            raise out_of_range("layer", self.layer, f"an integer in [0, {n_hidden - 1}] "
                               f"({n_hidden} hidden layers at depth={self.depth})")
        object.__setattr__(self, "layer", int(self.layer))

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with ``overrides``; ``layer`` follows a new ``depth`` unless given."""
        return _replace(self, overrides)


def _replace(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {valid}")
    if "layer" not in overrides and "depth" in overrides:
        # The recorded layer is "halfway" by definition; keep it so for a new depth.
        overrides = {**overrides, "layer": None}
    return dataclasses.replace(cfg, **overrides)


def _two_point(name, nonlinearity, gain, lr, epochs, width, depth, **kw) -> TrainConfig:
    return TrainConfig(name=name, nonlinearity=nonlinearity, gain=gain, lr=lr, epochs=epochs,
                       width=width, depth=depth, **kw)


# Numbers are the paper's Tables 1 and 2 and docs/experiments.md E5/E6 (the `paper` preset).
_TABLE: dict[str, TrainConfig] = {
    c.name: c
    for c in [
        # Table 1 (E1, E2): two points, full-batch gradient descent.
        _two_point("default", "leaky_relu", 1.0, 0.005, 6000, 500, 20),
        _two_point("convolution", "leaky_relu", 0.95, 0.002, 6000, 500, 10, arch="conv"),
        _two_point("skip_connections", "leaky_relu", 0.1, 0.01, 6000, 500, 20, arch="skip"),
        _two_point("shallow", "leaky_relu", 0.35, 0.01, 6000, 500, 2),
        _two_point("narrow", "leaky_relu", 1.05, 0.005, 6000, 50, 20),
        _two_point("dropout", "leaky_relu", 1.0, 0.005, 6000, 500, 10, arch="dropout",
                   dropout=nets.DEFAULT_DROPOUT),
        _two_point("linear", "none", 0.85, 0.00125, 6000, 500, 20),
        _two_point("relu", "relu", 1.0, 0.005, 6000, 500, 20),
        _two_point("elu", "elu", 0.95, 0.00045, 6000, 500, 20),
        _two_point("tanh", "tanh", 0.85, 0.00125, 6000, 500, 20),
        _two_point("swish", "swish", 1.7, 0.0025, 6000, 500, 20),
        _two_point("low_initial_weights", "leaky_relu", 0.9, 0.015, 6000, 500, 20),
        _two_point("intermediate_initial_weights", "leaky_relu", 1.1, 0.0025, 6000, 500, 20),
        _two_point("high_initial_weights", "leaky_relu", 1.3, 0.00075, 6000, 500, 20),
        _two_point("very_high_initial_weights", "leaky_relu", 1.4, 0.00025, 6000, 500, 20),
        # Table 2 (E4): XOR, full-batch gradient descent.
        _two_point("xor_low_weights", "leaky_relu", 0.7, 0.015, 1000, 500, 20, dataset="xor"),
        _two_point("xor_intermediate_weights", "leaky_relu", 1.25, 0.002, 1000, 500, 20,
                   dataset="xor"),
        _two_point("xor_high_weights", "leaky_relu", 2.0, 3e-9, 1000, 500, 20, dataset="xor"),
        _two_point("xor_2_layers", "leaky_relu", 0.0015, 0.03, 40000, 500, 1, dataset="xor"),
        # E5: context-dependent blobs, tanh, mini-batches of 64.
        _two_point("blobs_very_low_weights", "tanh", 0.275, 0.05, 2000, 100, 4,
                   dataset="blobs", batch_size=64),
        _two_point("blobs_low_weights", "tanh", 0.5, 0.015, 1500, 100, 4, dataset="blobs",
                   batch_size=64),
        _two_point("blobs_high_weights", "tanh", 2.0, 0.0015, 750, 100, 4, dataset="blobs",
                   batch_size=64),
        # E6: MNIST (bundled 8x8 digits when no MNIST files are given), mini-batches of 64.
        _two_point("mnist", "leaky_relu", 0.5, 0.002, 500, 100, 4, dataset="mnist",
                   batch_size=64),
    ]
}


def _normalize(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", str(name).strip().lower()).strip("_")


def names() -> list[str]:
    """The names accepted by :func:`get` (snake case, in the paper's order)."""
    return list(_TABLE)


def get(name: str, **overrides: Any) -> TrainConfig:
    """The config of a Table 1 / Table 2 / E5 / E6 row by name, with ``overrides`` applied.

    Args:
        name: the row's name as in docs/experiments.md; case, spaces, hyphens and underscores are
            forgiven (``"XOR low weights"``, ``"xor_low_weights"``, ``"Blobs-High-Weights"``).
        **overrides: any :class:`TrainConfig` field, e.g. ``width=32, epochs=100``. ``layer``
            follows an overridden ``depth`` (``depth // 2``) unless given too.

    Raises:
        ValueError: unknown name (lists the valid names), unknown override field (lists the
            fields), or an invalid value (names the field and its valid range).
    """
    key = _normalize(name)
    if key not in _TABLE:
        raise ValueError(f"unknown config name={name!r}; valid names: {names()}")
    return _replace(_TABLE[key], overrides)
