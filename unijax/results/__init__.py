"""Keep results: save and load them exactly, label them (xarray, pandas), summarize them.

The face of the storage package: it only re-exports. :mod:`unijax.results._files` holds the
file format of one result and an experiment's stored output, :mod:`unijax.results._store` the
atomic, resumable store of ``unijax run`` and sweeps.
"""

from unijax.results._files import (
    FORMAT,
    FORMAT_VERSION,
    ExperimentResult,
    load,
    load_experiment,
    save,
    summary_dict,
    to_dataframe,
    to_xarray,
)
from unijax.results._store import (
    STORE_VERSION,
    ConfigMismatchError,
    DamagedStoreError,
    ForeignDataError,
    OlderStoreError,
)

__all__ = [
    "save",
    "load",
    "to_xarray",
    "to_dataframe",
    "summary_dict",
    "load_experiment",
    "ExperimentResult",
    "ConfigMismatchError",
    "ForeignDataError",
    "DamagedStoreError",
    "OlderStoreError",
    "FORMAT",
    "FORMAT_VERSION",
    "STORE_VERSION",
]
