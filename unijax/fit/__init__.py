"""Effective learning rates fitted to measured trajectories, by gradient through the ODE solver.

The face of the fit package: it only re-exports (the documentation of each name is where it is
defined: :mod:`unijax.fit._fit` the fits and their results, :mod:`unijax.fit._options` the
option objects, :mod:`unijax.fit._status` the outcome codes).
"""

from unijax.fit._fit import MeanFit, RateFit, RateMean, fit_eta_mean, fit_rates
from unijax.fit._options import (
    MAX_REL_STDERR,
    MIN_R2,
    RETRY_MAX_STEPS,
    OptimizerOptions,
    SolverOptions,
)
from unijax.fit._status import FitStatus, status_counts

__all__ = [
    "FitStatus",
    "MAX_REL_STDERR",
    "MIN_R2",
    "RETRY_MAX_STEPS",
    "status_counts",
    "RateFit",
    "MeanFit",
    "RateMean",
    "fit_rates",
    "fit_eta_mean",
    "SolverOptions",
    "OptimizerOptions",
]
