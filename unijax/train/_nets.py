"""Networks as pure functions of one trial, for the training engine.

A built-in network (``nets.make``) or a user's Flax module becomes a :class:`Net`: ``init``
and ``apply`` of one trial, plus the fused SGD step where one exists. The factories are cached
so that equal descriptions give the same factory object, which keys the compiled programs
(``unijax.train._program.cached_programs``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn

from unijax import _record, nets
from unijax.configs import TrainConfig
from unijax.train._step import dense_sgd_step


class Net(NamedTuple):
    """A network as two pure functions of one trial.

    ``init(key, gain, x) -> params``; ``apply(params, x, train, key) -> (out, reps)`` with
    ``out: (n, out_dim)`` and ``reps`` a tuple of ``(n, F_l)`` arrays, one per recorded layer.
    """

    init: Callable
    apply: Callable
    stochastic: bool  # training forward differs from measuring forward (dropout)
    # ``(params, x, y, lr) -> (new_params, out, reps)``: one fused full-batch SGD step (see
    # _train_step.dense_sgd_step), for the dense built-in networks; None otherwise.
    dense_sgd: Callable | None = None


def builtin_net(module: nn.Module, layers: tuple[int, ...]) -> Net:
    """A unijax network (``nets.make``) recording the hidden activations ``layers``."""

    def init(key, gain, x):
        return nets.init(module, x, key=key, gain=gain)

    def apply(params, x, train, key):
        rngs = {"dropout": key} if (train and module.dropout) else None
        out, hiddens = module.apply({"params": params}, x, train=train, rngs=rngs)
        return out, tuple(hiddens[layer] for layer in layers)

    dense_sgd = None
    if isinstance(module, nets.MLP) and not module.dropout:
        dense_sgd = functools.partial(
            dense_sgd_step,
            depth=module.depth,
            phi=nets.NONLINEARITIES[module.nonlinearity],
            skip=module.skip,
            layers=layers,
            precision=nets.PRECISIONS[module.precision],
        )
    return Net(init, apply, bool(module.dropout), dense_sgd)


def custom_net(model: nn.Module, layers: tuple) -> Net:
    """A user's Flax module whose recorded layers are read by :class:`unijax._record.Recorder`
    (dict keys, sown values, submodule outputs, or ``(out, hiddens)`` indices)."""
    recorder = _record.Recorder(model, layers)

    def init(key, gain, x):
        params = model.init(key, x)["params"]
        return nets.scale_kernels(params, gain)

    def apply(params, x, train, key):
        del train, key
        return recorder.apply(params, x)

    return Net(init, apply, False)


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """What shapes a built-in network's program, hashable (a key of the compiled programs):
    runs that differ in gain, lr, epochs, data values or name share them.

    Attributes:
        arch, nonlinearity, dtype, precision, conv_layout: as :class:`unijax.configs.TrainConfig`
            names them.
        width, depth: units per hidden layer and hidden layers.
        dropout: the dropout rate in ``[0, 1)``.
        out_dim: the network's outputs (the data set's target dimension).
    """

    arch: str
    nonlinearity: str
    width: int
    depth: int
    dropout: float
    dtype: str
    precision: str
    out_dim: int
    conv_layout: str

    @classmethod
    def of(cls, config: TrainConfig, out_dim: int) -> NetSpec:
        """The network ``config`` trains, for data with ``out_dim`` targets."""
        return cls(arch=config.arch, nonlinearity=config.nonlinearity, width=config.width,
                   depth=config.depth, dropout=config.dropout, dtype=config.dtype,
                   precision=config.precision, out_dim=out_dim, conv_layout=config.conv_layout)


@functools.lru_cache(maxsize=64)
def builtin_factory(spec: NetSpec, layers: tuple[int, ...]) -> Callable[[], Net]:
    """``() -> Net`` of the network ``spec`` describes (cached: the same object for equal
    arguments, part of the programs' cache key)."""

    def factory():
        module = nets.make(spec.arch, width=spec.width, depth=spec.depth, out_dim=spec.out_dim,
                           nonlinearity=spec.nonlinearity, dropout=spec.dropout,
                           dtype=spec.dtype, precision=spec.precision,
                           conv_layout=spec.conv_layout)
        return builtin_net(module, layers)

    return factory


@functools.lru_cache(maxsize=32)
def custom_factory(model: nn.Module, layers: tuple) -> Callable[[], Net]:
    """``() -> Net`` of a user's hashable module (cached like :func:`builtin_factory`)."""
    return lambda: custom_net(model, layers)
