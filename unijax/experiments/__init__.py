"""Every experiment of the paper (docs/experiments.md E1-E8), by name.

>>> from unijax import experiments
>>> experiments.names()
['E1', 'E2', 'E3', 'E4', 'E5', 'E6', 'E7', 'E8']
>>> e3 = experiments.get("E3")              # the module
>>> cfg = e3.presets["tiny"]                # or "quick", "paper"
>>> # result = e3.run(cfg, key=jax.random.key(cfg.seed)); e3.agreement(result)

Each module follows the protocol of :mod:`unijax.experiments._common`: ``Config`` (frozen
dataclass), ``presets`` (``quick``, ``paper``, ``tiny``), ``run(config, *, key, progress, cache,
upstream) -> Result``, ``plot(result, outdir)``, ``agreement(result) -> dict``, and the texts
``TITLE`` and ``CLAIM``. The theory parts compute in float64: enable JAX's x64 mode first (the
``unijax`` command does).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from unijax.experiments._common import BadInput

__all__ = ["REGISTRY", "PRESETS", "names", "get", "resolve"]

#: Experiment name -> module (imported on first use).
REGISTRY: dict[str, str] = {
    "E1": "unijax.experiments.e1_dynamics",
    "E2": "unijax.experiments.e2_weight_scale",
    "E3": "unijax.experiments.e3_final_distance",
    "E4": "unijax.experiments.e4_xor",
    "E5": "unijax.experiments.e5_blobs",
    "E6": "unijax.experiments.e6_mnist",
    "E7": "unijax.experiments.e7_depth",
    "E8": "unijax.experiments.e8_adam",
}

#: Preset names every experiment defines (``tiny`` is for tests: seconds per experiment).
PRESETS: tuple[str, ...] = ("quick", "paper", "paper-cpu", "tiny")


def names() -> list[str]:
    """The experiment names, in the paper's order."""
    return list(REGISTRY)


def get(name: str) -> ModuleType:
    """The module of experiment ``name`` (case-insensitive, e.g. ``"e3"``).

    Raises:
        BadInput: unknown name (the message lists the valid names).
    """
    key = str(name).strip().upper()
    if key not in REGISTRY:
        raise BadInput(
            f"unknown experiment {name!r}; valid choices: {', '.join(REGISTRY)}, all"
        )
    return importlib.import_module(REGISTRY[key])


def resolve(selection: list[str] | str) -> list[str]:
    """Names of a CLI selection: ``"all"`` or experiment names (deduplicated, paper order)."""
    items = [selection] if isinstance(selection, str) else list(selection)
    if any(str(s).strip().lower() == "all" for s in items):
        return names()
    wanted = set()
    for s in items:
        get(s)  # validates
        wanted.add(str(s).strip().upper())
    return [n for n in REGISTRY if n in wanted]
