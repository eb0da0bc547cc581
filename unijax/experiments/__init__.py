"""Every experiment of the paper (docs/experiments.md E1-E8), by name.

>>> from unijax import experiments
>>> experiments.names()
['E1', 'E2', 'E3', 'E4', 'E5', 'E6', 'E7', 'E8']
>>> e3 = experiments.get("E3")              # the module
>>> cfg = e3.presets["tiny"]                # or "quick", "paper"
>>> # result = e3.run(cfg, key=jax.random.key(cfg.seed)); e3.agreement(result)

Each module is an :class:`Experiment` (checked when :func:`get` loads it): ``Config`` (frozen
dataclass), ``presets`` (``quick``, ``paper``, ``paper-cpu``, ``tiny``), ``run(config, *, key,
progress, cache, upstream) -> Result``, ``plot(result, outdir)``, ``agreement(result) -> dict``,
``result_arrays(result)`` (what ``result.npz`` holds), ``USES_RATES`` and the texts ``NAME``,
``TITLE`` and ``CLAIM``. The experiments stand on shared layers (``_common``, ``_twopoint``,
``_rows``, ``_structure``), not on each other. The theory parts compute in float64: enable
JAX's x64 mode first (the ``unijax`` command does).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from unijax.experiments._common import BadInput

__all__ = ["REGISTRY", "PRESETS", "Experiment", "names", "get", "resolve"]


@runtime_checkable
class Experiment(Protocol):
    """What the CLI, the sweep and the report call an experiment module by (no probing).

    Attributes:
        NAME, TITLE, CLAIM: ``"E4"``, its title, and what the paper predicts.
        USES_RATES: whether ``run`` predicts with the default architecture's rates (its
            ``Config`` then has a ``rates`` block, ``rates.source``; with ``"auto"`` the CLI
            passes a finished E1/E3's rates as ``upstream["rates"]``, else the experiment fits
            its own).
        Config: the frozen config dataclass; presets: ``{preset name: Config}`` for every
            name of :data:`PRESETS`.
    """

    NAME: str
    TITLE: str
    CLAIM: str
    USES_RATES: bool
    Config: type
    presets: Mapping[str, Any]

    def run(self, config: Any, *, key: Any, progress: Any = ..., cache: Any = None,
            upstream: Mapping[str, Any] | None = None) -> Any:
        """The result of ``config`` (pure in ``config`` and ``key``; ``cache`` memoizes)."""

    def agreement(self, result: Any) -> dict:
        """The verdict and its figures (``_common.make_agreement``)."""

    def plot(self, result: Any, outdir: Path) -> list[Path]:
        """The figures, written under ``outdir``."""

    def result_arrays(self, result: Any) -> dict[str, np.ndarray]:
        """``{name: array}`` stored as ``result.npz``."""

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


_MEMBERS = ("NAME", "TITLE", "CLAIM", "USES_RATES", "Config", "presets", "run", "agreement",
            "plot", "result_arrays")


def names() -> list[str]:
    """The experiment names, in the paper's order."""
    return list(REGISTRY)


def get(name: str) -> Experiment:
    """The module of experiment ``name`` (case-insensitive, e.g. ``"e3"``).

    Raises:
        BadInput: unknown name (the message lists the valid names).
        TypeError: the registered module is not an :class:`Experiment` (a bug, named).
    """
    key = str(name).strip().upper()
    if key not in REGISTRY:
        raise BadInput(
            f"unknown experiment {name!r}; valid choices: {', '.join(REGISTRY)}, all"
        )
    mod = importlib.import_module(REGISTRY[key])
    if not isinstance(mod, Experiment):
        missing = [a for a in _MEMBERS if not hasattr(mod, a)]
        raise TypeError(f"{REGISTRY[key]} is not an Experiment: it lacks {', '.join(missing)}")
    return mod


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
