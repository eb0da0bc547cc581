"""Independent pieces of work side by side, one per local device.

An experiment that trains one small batch at a time (E3's grid: one trial per grid point, each
on its own two points) leaves all but one device idle: ``unijax.train`` lays a batch over the
devices, and a batch of one trial fills one. :func:`each_on_a_device` runs such pieces from
threads, each on a device of its own, when this is the only process and it has several local
devices (the ``unijax`` command gives a CPU one per core, ``unijax._host``). Each piece runs
the program it would run alone on a one-device mesh, whichever device it gets, so its numbers
do not depend on the others or on the order they finish in.

Several processes (``jax.distributed``) must make the same calls in the same order; there,
and with one device, the pieces run one after another over all devices (``devices=None``).
"""

from __future__ import annotations

import concurrent.futures
import queue
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from unijax.experiments._common import no_progress

__all__ = ["each_on_a_device"]

T = TypeVar("T")


def each_on_a_device(
    tasks: Sequence[T],
    run: Callable[[T, Any], Any],
    *,
    progress: Callable = no_progress,
    desc: str = "",
) -> list[Any]:
    """``[run(task, devices) for task in tasks]``, side by side where the devices allow.

    ``devices`` is a one-device list (pieces side by side, from threads) or None (one after
    another, on every device). ``run`` must be safe to call from several threads (training and
    fitting are; a ``ChunkCache`` stores from threads). The results come in the order of
    ``tasks``; the first exception is raised once the pieces already running have ended (the
    ones not started are dropped), so the finished pieces' stored chunks are kept.
    """
    import jax

    local = jax.local_devices()
    if jax.process_count() > 1 or len(local) < 2 or len(tasks) < 2:
        return [run(t, None) for t in progress(tasks, desc=desc)]
    free: queue.SimpleQueue = queue.SimpleQueue()
    for d in local:
        free.put(d)

    def job(task):
        device = free.get()
        try:
            return run(task, [device])
        finally:
            free.put(device)

    pool = concurrent.futures.ThreadPoolExecutor(len(local), thread_name_prefix="unijax-device")
    try:
        futures = [pool.submit(job, t) for t in tasks]
        return [f.result() for f in progress(futures, desc=desc)]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
