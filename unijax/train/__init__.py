"""The training engine: a grid of init seeds x gains trained in one compiled call.

The face of the train package: it only re-exports (the documentation of each name is where it
is defined, :mod:`unijax.train._train`).
"""

from unijax.train._train import (
    TrainResult,
    hidden_observables,
    init_params,
    load_data,
    make_network,
    train,
    train_model,
)

__all__ = [
    "TrainResult",
    "train",
    "train_model",
    "init_params",
    "hidden_observables",
    "make_network",
    "load_data",
]
