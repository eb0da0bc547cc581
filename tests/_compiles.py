"""Count how often JAX traces each jitted function (a retrace is a recompilation)."""

from __future__ import annotations

import collections
import contextlib

import jax

_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@contextlib.contextmanager
def count_traces():
    """Yield a ``Counter`` of traces per function name, filled while the block runs.

    Tracing happens before the persistent compilation cache is consulted, so the count is the
    same with and without that cache.
    """
    counts: collections.Counter = collections.Counter()

    def listener(event, duration, **kw):
        if event == _TRACE_EVENT:
            counts[kw.get("fun_name")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def fit_programs(counts) -> int:
    """How many rate-fit programs were traced, from a :func:`count_traces` counter: the fit is
    two programs traced together (``_fit_optimize``, ``_fit_assess``; unijax.fit._program), so
    each must count the same."""
    optimize, assess = counts["_fit_optimize"], counts["_fit_assess"]
    assert optimize == assess, dict(counts)
    return optimize
