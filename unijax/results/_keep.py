"""What every result type can do with itself, in one place (the work is in unijax.results)."""

from __future__ import annotations

from typing import Any


class Keepable:
    """Mixin of the result types (``RateFit``, ``MeanFit``, ``TrainResult``, ``Trajectory``):
    ``summary()`` (text, each type's own) has a JSON-ready twin and a file format."""

    def summary_dict(self) -> dict:
        """The numbers of :meth:`summary` as a JSON-ready dict."""
        from unijax.results import _files as results

        return results.summary_dict(self)

    def save(self, path) -> Any:
        """Save to ``path`` (``.npz``); ``unijax.results.load(path)`` gives it back exactly."""
        from unijax.results import _files as results

        return results.save(path, self)
