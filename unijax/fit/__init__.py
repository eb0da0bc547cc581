"""Effective learning rates fitted to measured trajectories, by gradient through the ODE solver.

The face of the fit package: it only re-exports (the documentation of each name is where it is
defined, :mod:`unijax.fit._fit`).
"""

from unijax.fit._fit import (
    MAX_REL_STDERR,
    MIN_R2,
    RETRY_MAX_STEPS,
    FitStatus,
    MeanFit,
    OptimizerOptions,
    RateFit,
    RateMean,
    SolverOptions,
    fit_eta_mean,
    fit_rates,
    status_counts,
)

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
