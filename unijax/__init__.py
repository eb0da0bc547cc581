"""unijax: the effective theory of representation-learning dynamics in JAX.

Public modules (import what you use; nothing here changes JAX's global configuration):

* :mod:`unijax.theory`  the (h, y, w) ODE, invariant, fixed points, final distance, closed
  forms, pairwise predictions (float64: enable JAX's x64 mode first).
* :mod:`unijax.fit`     effective learning rates fitted by gradient through the ODE solver.
* :mod:`unijax.nets`, :mod:`unijax.data`, :mod:`unijax.configs`, :mod:`unijax.train`
  the paper's networks, data sets and the vmapped training engine.
* :mod:`unijax.observe` (h, y, w) from any network's recordings; :mod:`unijax.results` save,
  load, export (xarray, pandas); :mod:`unijax.plots` figures of results.
* :mod:`unijax.experiments`, :mod:`unijax.cli`  every experiment of the paper.
"""

__version__ = "0.1.0"

_SUBMODULES = (
    "theory", "fit", "nets", "data", "configs", "train", "distributed", "sweep",
    "experiments", "plots", "report", "cli", "observe", "results",
)
__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name):
    # Lazy: `import unijax` stays cheap and `unijax.theory` works without a separate import.
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"unijax.{name}")
    raise AttributeError(f"module 'unijax' has no attribute {name!r}")
