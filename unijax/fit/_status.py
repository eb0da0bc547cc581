"""How one trial's rate fit ended: :class:`FitStatus`, each code with its message, and counts.

Below the rest of the fit: the fit's statistics assign the codes,
its runner marks left-out trials, and the results and experiments read them back.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import ArrayLike

from unijax._codes import Coded

__all__ = ["FitStatus", "status_counts"]


class FitStatus(Coded):
    """Outcome of one trial's rate fit (``RateFit.status``), like Diffrax's ``RESULTS``: an
    integer code in the arrays, and a message for each (``FitStatus.POOR_FIT.message``).

    The first that applies, in this order:

    * ``STEP_BUDGET`` (4): the optimizer did not finish, limited by the ODE step budget
      (``step_budget_hit``), even at the largest of ``retry_max_steps`` (rates NaN; R^2 and
      the curve are those of the best point reached, NaN if no solve succeeded).
    * ``ODE_FAILED`` (5): no ODE solve succeeded at any start (``h`` reached 0 or the numbers
      overflowed): nothing was fitted (rates, R^2, curve all NaN).
    * ``OPTIMIZER_FAILED`` (3): Levenberg-Marquardt ran out of iterations (rates NaN; R^2 and
      the curve of the best point reached). A stall (SciPy's ftol stop) counts as finished.
    * ``NOT_IDENTIFIED`` (2): the optimizer finished, but the data do not determine both rates
      (``J^T J`` singular, or a relative standard error ``>= max_rel_stderr``).
    * ``POOR_FIT`` (1): finished and identified, but R^2 of h, y or w is below ``min_r2``.
    * ``OK`` (0): all three hold: the rates may be used.
    * ``NOT_FITTED`` (-1): the trial was left out by ``fit_rates(where=...)`` (all fields
      NaN, False or 0).
    """

    NOT_FITTED = (-1, "left out by fit_rates(where=...): nothing was fitted")
    OK = (0, "converged, identified and a good fit: the rates may be used")
    POOR_FIT = (1, "converged and identified, but R^2 of h, y or w is below min_r2")
    NOT_IDENTIFIED = (2, "converged, but the data do not determine both rates "
                         "(J^T J singular or a relative standard error >= max_rel_stderr)")
    OPTIMIZER_FAILED = (3, "Levenberg-Marquardt ran out of iterations")
    STEP_BUDGET = (4, "the optimizer did not finish: an ODE solve ran out of its step budget, "
                      "even at the largest retry_max_steps")
    ODE_FAILED = (5, "no ODE solve succeeded at any start (h reached 0 or overflow)")


def status_counts(status: ArrayLike) -> dict[str, int]:
    """``{FitStatus name: number of trials}`` for the statuses that occur, in code order.

    Args:
        status: :class:`FitStatus` codes, any shape (int).
    """
    codes = np.asarray(status).ravel()
    return {s.name: int(np.sum(codes == s)) for s in FitStatus if np.any(codes == s)}
