"""What every result type can do with itself, in one place (the file format is
:mod:`unijax.results._files`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from unijax.results import _files


def json_number(x: Any) -> float | None:
    """A scalar as a JSON-ready float, ``None`` for NaN or infinity (for ``summary_dict``)."""
    x = float(x)
    return x if np.isfinite(x) else None


class Keepable:
    """Mixin of the result types (``RateFit``, ``MeanFit``, ``TrainResult``, ``Trajectory``).

    Each type says what it is in its own words: ``summary()`` (text), ``summary_dict()`` (the
    same numbers, JSON-ready) and, where it has labelled dimensions, ``labelled_arrays(grid=,
    ts=)`` (``{name: (dims, values)}, coords, attrs``, what ``to_xarray`` and ``to_dataframe``
    label). The file format is shared: :meth:`save`.
    """

    def save(self, path) -> Any:
        """Save to ``path`` (``.npz``); ``unijax.results.load(path)`` gives it back exactly."""
        return _files.save(path, self)
