"""The one walker of dotted config keys (``rates.epochs``): a config type, instance or dict.

``unijax run --set`` types its keys by the config classes, the CLI reads a config's values by
key, and the store compares stored config dicts key by key: all three walk the nesting here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["dotted_keys"]


def dotted_keys(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted key: leaf}`` of a nested config, blocks walked in field order.

    Args:
        config: a config dataclass *type* (leaves are the fields' types, string annotations
            resolved), a config *instance* (leaves are the values) or a config *dict* as
            stored in ``config.json`` (nested dicts are blocks).
        prefix: prepended to every key (``"rates."`` inside the ``rates`` block).

    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class Rates:
    ...     epochs: int = 400
    >>> @dataclasses.dataclass
    ... class Config:
    ...     seeds: int = 4
    ...     rates: Rates = dataclasses.field(default_factory=Rates)
    >>> dotted_keys(Config()), dotted_keys({"seeds": 4, "rates": {"epochs": 400}})
    ({'seeds': 4, 'rates.epochs': 400}, {'seeds': 4, 'rates.epochs': 400})
    """
    if isinstance(config, Mapping):
        items = list(config.items())
        is_block = lambda v: isinstance(v, Mapping)  # noqa: E731
    elif isinstance(config, type):
        hints = typing.get_type_hints(config)
        items = [(f.name, hints[f.name]) for f in dataclasses.fields(config)]
        is_block = dataclasses.is_dataclass
    else:
        items = [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)]
        is_block = lambda v: dataclasses.is_dataclass(v) and not isinstance(v, type)  # noqa: E731
    out: dict[str, Any] = {}
    for key, value in items:
        if is_block(value):
            out.update(dotted_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
