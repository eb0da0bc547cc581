"""One JAX CPU device per core, for the ``unijax`` command's own process.

JAX gives a CPU one device, which spreads every operation of one trial over all cores. The
paper's networks are small enough that this gains little: on a 2-core Xeon the default network
(width 500, 20 layers) trains at 3.0 ms per seed-epoch on the one device, 1.06 ms with one
device per core, each running its own trials one after another (docs/benchmarks.md). unijax's
trial batches are already laid over every device of a mesh, so the command asks JAX for one
device per usable core before JAX starts its backends.

The device count is process-wide, so the library never sets it: only :func:`unijax.cli.main`
calls :func:`use_one_device_per_core`. A user who chose (``XLA_FLAGS`` naming
``--xla_force_host_platform_device_count``, or ``JAX_NUM_CPU_DEVICES``) keeps the choice;
``JAX_NUM_CPU_DEVICES=1`` restores the single device.
"""

from __future__ import annotations

import os

__all__ = ["MAX_DEVICES", "usable_cores", "use_one_device_per_core"]

#: At most this many CPU devices. A batch of up to 8 trials (one bucket, ``unijax._batch``)
#: then pads to no more than 8 on 1, 2, 4 or 8 devices; more devices would hold only padding
#: for the paper's seed counts. Measured on 2 cores only.
MAX_DEVICES = 8

_FLAG = "xla_force_host_platform_device_count"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def use_one_device_per_core() -> int | None:
    """Give JAX's CPU platform ``min(usable_cores(), MAX_DEVICES)`` devices.

    Returns the device count set, or None when JAX is left as it is: the user chose a count
    (``XLA_FLAGS``, ``JAX_NUM_CPU_DEVICES``), one core, or JAX already started its backends
    in this process (the count can no longer change; a caller that used JAX before calling
    ``unijax.cli.main`` keeps its devices). On a GPU or TPU machine the count applies to the
    unused CPU platform only.
    """
    import jax

    if _FLAG in os.environ.get("XLA_FLAGS", "") or jax.config.jax_num_cpu_devices != -1:
        return None
    n = min(usable_cores(), MAX_DEVICES)
    if n < 2:
        return None
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX refuses once its backends exist (documented in its message)
        return None
    return n
