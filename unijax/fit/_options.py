"""The fit's settings as objects: the ODE solver's (:class:`SolverOptions`) and the optimizer's
(:class:`OptimizerOptions`), which :func:`unijax.fit.fit_rates` and
:func:`unijax.fit.fit_eta_mean` accept beside their flat keywords.

A flat keyword is a shortcut for one field: ``fit_rates(..., rtol=1e-8)`` is
``fit_rates(..., solver=SolverOptions(rtol=1e-8))``. Giving a field both ways is refused, so
that no setting is silently overruled. Values are checked where the fit checks its keywords
(one boundary), not here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_REL_STDERR", "MIN_R2", "RETRY_MAX_STEPS", "OptimizerOptions", "SolverOptions",
           "merge"]

#: Default quality criterion of a fit: R^2 of each of h, y, w at or above this
#: (``fit_rates(min_r2=...)``). The paper's fits reach R^2 > 0.99 on its well-fitted rows; below
#: 0.9 the ODE misses a visible part of the trajectory and its rates describe something else.
MIN_R2 = 0.9

#: Default identification criterion: both relative standard errors ``stderr / eta`` below this
#: (``fit_rates(max_rel_stderr=...)``).
MAX_REL_STDERR = 0.1

#: Default retry budgets: a trial whose optimizer did not finish after some ODE solve ran out of
#: steps is fitted again with each of these ``max_steps`` in turn (``fit_rates(retry_max_steps=
#: ...)``): stiff trajectories (very large initial weights) need thousands of explicit steps.
RETRY_MAX_STEPS = (4096, 32768)


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """The ODE solve inside a rate fit (the defaults are :func:`unijax.fit.fit_rates`').

    Attributes:
        rtol, atol: the adaptive solver's step-size tolerances.
        max_steps: step budget of one solve.
        retry_max_steps: increasing budgets a trial that ran out of steps is fitted again with
            (``()``: no retry).
    """

    rtol: float = 1e-7
    atol: float = 1e-9
    max_steps: int = 512
    retry_max_steps: tuple[int, ...] = RETRY_MAX_STEPS


@dataclasses.dataclass(frozen=True)
class OptimizerOptions:
    """Levenberg-Marquardt and the fit's quality criteria (the defaults are
    :func:`unijax.fit.fit_rates`'; :func:`unijax.fit.fit_eta_mean` uses ``max_iters``,
    ``opt_rtol``, ``opt_atol`` and ``max_rel_stderr``, with its own defaults when none is
    given).

    Attributes:
        max_iters: iteration budget.
        opt_rtol: a step that lowers the SSE by less than this fraction makes no progress.
        opt_atol: convergence: the Gauss-Newton step is below this in ``log eta``.
        max_rel_stderr: a trial is identified only when both relative standard errors are
            below this.
        min_r2: a trial is a good fit only when R^2 of each of h, y, w reaches this.
        scales: factors applied to each data-based starting estimate before scoring.
    """

    max_iters: int = 64
    opt_rtol: float = 1e-6
    opt_atol: float = 1e-4
    max_rel_stderr: float = MAX_REL_STDERR
    min_r2: float = MIN_R2
    scales: tuple[float, ...] = (0.3, 1.0, 3.0)


def merge(name: str, options: Any, cls: type, flat: Mapping[str, Any],
          defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The settings ``{field: value}`` of the flat keywords ``flat``, or of ``options`` (a
    ``cls``) where it is given.

    Args:
        name: the keyword of ``options`` (``"solver"``), for messages.
        options: a ``cls`` or None (the flat keywords alone).
        cls: :class:`SolverOptions` or :class:`OptimizerOptions`.
        flat: the calling function's flat keywords of the fields it uses.
        defaults: the calling function's defaults of those keywords.

    Raises:
        ValueError: ``options`` is not a ``cls``, or a field is given both ways.
    """
    if options is None:
        return dict(flat)
    if not isinstance(options, cls):
        raise ValueError(f"{name}={options!r} is out of range: must be a "
                         f"unijax.fit.{cls.__name__} or None.")
    both = [k for k, v in flat.items() if not _same(v, defaults[k])]
    if both:
        raise ValueError(f"{', '.join(both)} given twice, as a keyword and in {name}=: give each "
                         f"setting once.")
    return {k: getattr(options, k) for k in flat}


def _same(value: Any, default: Any) -> bool:
    """Whether a keyword still holds its default (an array that cannot say so counts as set)."""
    if value is default:
        return True
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False
