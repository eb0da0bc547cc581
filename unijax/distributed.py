"""Multi-host execution: ``jax.distributed`` start-up, agreement, barriers, moving arrays.

unijax scales out on JAX's own runtime. One Python process runs per host (or per GPU), all
started with the same ``coordinator`` ("HOST:PORT" of process 0), ``num_processes`` and their own
``process_id``; :func:`initialize` connects them, after which :func:`jax.devices` lists the
devices of *all* processes. Every process holds the same (host) inputs: :func:`put` lays a host
value onto a sharding that may span processes, :func:`to_host` brings an array back to every
process; only process 0 writes files (:func:`is_writer`); :class:`Agreement` makes all
processes follow process 0's decisions and :func:`barrier` waits for all of them. How a batch
of trials is laid over the devices is the business of :func:`unijax.fit.fit_rates` and
:func:`unijax.train.train` (``mesh=`` / ``devices=``).

Single-process use needs no set-up: every helper works on the local devices. To try several
devices on one CPU, start Python with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
"""

from __future__ import annotations

import math
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

__all__ = [
    "Agreement",
    "DEFAULT_TIMEOUT_S",
    "CoordinatorUnreachableError",
    "barrier",
    "check_process_args",
    "initialize",
    "is_writer",
    "parse_coordinator",
    "put",
    "to_host",
]

#: Seconds a process waits for the coordinator (and process 0 for the others) by default.
DEFAULT_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------------


class CoordinatorUnreachableError(ConnectionError):
    """The coordinator "HOST:PORT" did not accept a connection within the timeout."""


_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?$")


def parse_coordinator(coordinator: str) -> tuple[str, int]:
    """Split ``"HOST:PORT"`` (``"[IPv6]:PORT"`` also accepted) into ``(host, port)``.

    Raises:
        ValueError: not of the form HOST:PORT with a host name or IP address and a port in
            ``[1, 65535]``.
    """
    form = "HOST:PORT with PORT in [1, 65535], e.g. '10.0.0.1:1234' or 'node001:29500'"
    if not isinstance(coordinator, str) or ":" not in coordinator:
        raise ValueError(f"coordinator={coordinator!r} is not of the form {form}.")
    host, _, port_s = coordinator.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # [::1]:1234
        host_ok = len(host) > 2 and all(c in "0123456789abcdefABCDEF:." for c in host[1:-1])
        host = host[1:-1]
    else:
        host_ok = bool(_HOST_RE.match(host))
    if not host_ok or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"coordinator={coordinator!r} is not of the form {form}.")
    return host, int(port_s)


def check_process_args(coordinator: str | None, num_processes: int, process_id: int) -> None:
    """Validate the three start-up arguments (all processes must pass the same first two).

    Raises:
        ValueError: ``num_processes`` not an integer in ``[1, 2**31 - 1]``; ``process_id`` not
            an integer in
            ``[0, num_processes)``; ``coordinator`` missing for ``num_processes > 1`` or not
            of the form HOST:PORT.
    """
    for name, v in (("num_processes", num_processes), ("process_id", process_id)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {name}={v!r}.")
    if not 1 <= num_processes <= 2**31 - 1:  # jax.distributed takes a C int
        raise ValueError(f"num_processes={num_processes} is out of range: must be an integer "
                         ">= 1 and <= 2**31 - 1.")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id={process_id} is out of range: must lie in [0, {num_processes - 1}] "
            f"for num_processes={num_processes} (process ids are 0, 1, ..., num_processes - 1)."
        )
    if coordinator is None:
        if num_processes > 1:
            raise ValueError(
                f"coordinator is required for num_processes={num_processes} > 1: pass the "
                "HOST:PORT of process 0 (the same on every process)."
            )
        return
    parse_coordinator(coordinator)


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
    """Try TCP connections to ``host:port`` until one succeeds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(left, 5.0)):
                return
        except OSError as e:  # refused (not up yet), unresolvable, unroutable, timed out
            last = e
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
    raise CoordinatorUnreachableError(
        f"coordinator {host}:{port} did not accept a connection within timeout_s={timeout_s:g} "
        f"s (last error: {last}). Start process 0 first (it hosts the coordinator), check the "
        "host name/IP and port, and that no firewall blocks the port; or raise the timeout."
    )


def _check_port_free(port: int) -> None:
    """Process 0 binds the coordinator port on all interfaces: fail early if it is taken."""
    for family, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        with s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, port))
            except OSError as e:
                if getattr(e, "errno", None) in (98, 48, 10048):  # EADDRINUSE (Linux/mac/Win)
                    raise ValueError(
                        f"coordinator port {port} is already in use on this host (process 0 "
                        "must bind it): pick another port."
                    ) from None
                continue
            return


def initialize(
    coordinator: str | None,
    num_processes: int,
    process_id: int,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    local_device_ids: Sequence[int] | None = None,
    verbose: bool = True,
) -> None:
    """Connect this process to the others with :func:`jax.distributed.initialize`.

    Call it first thing, before any JAX computation, with the same ``coordinator`` and
    ``num_processes`` on every process and ``process_id`` = 0, 1, ..., ``num_processes - 1``.
    Process 0 hosts the coordinator service on ``coordinator``'s port (all interfaces).
    ``num_processes == 1`` needs no runtime and returns at once (``coordinator`` may be None).
    Calling it again with the same arguments is a no-op.

    Failure is bounded in time: a process with ``process_id > 0`` first tries plain TCP
    connections to the coordinator for up to ``timeout_s`` seconds and raises
    :class:`CoordinatorUnreachableError` if none succeeds; JAX's own handshake then gets
    ``timeout_s`` more. If not all processes join within ``timeout_s``, JAX (not Python) ends
    the waiting processes with ``DEADLINE_EXCEEDED ... RegisterTask`` on stderr (exit by
    SIGABRT); a message printed just before names what is awaited.

    SLURM/MPI auto-detection is switched off (it would give each process a single GPU);
    pass ``local_device_ids`` to restrict the devices of a process, e.g. one process per GPU.

    Args:
        coordinator: ``"HOST:PORT"`` of process 0, reachable from every process.
        num_processes: number of processes, >= 1.
        process_id: this process's id, in ``[0, num_processes)``.
        timeout_s: seconds to wait for the coordinator / the other processes, > 0.
        local_device_ids: local device ids this process uses (default: all).
        verbose: print one line to stderr about what is awaited.

    Raises:
        ValueError: bad arguments (before any work or network traffic), or process 0's port
            is in use.
        CoordinatorUnreachableError: ``process_id > 0`` and the coordinator did not answer
            within ``timeout_s``.
        RuntimeError: JAX was already initialized differently, or has already run a
            computation (initialize first).
    """
    check_process_args(coordinator, num_processes, process_id)
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s={timeout_s!r} is out of range: must be a number > 0.")
    if num_processes == 1:
        return
    from jax._src import distributed as _jd  # the state is not public; read only

    if jax.distributed.is_initialized():
        state = _jd.global_state
        same = (state.coordinator_address, state.num_processes, state.process_id) == (
            coordinator,
            num_processes,
            process_id,
        )
        if same:
            return
        raise RuntimeError(
            "jax.distributed is already initialized with coordinator="
            f"{state.coordinator_address!r}, num_processes={state.num_processes}, "
            f"process_id={state.process_id}; cannot re-initialize with coordinator="
            f"{coordinator!r}, num_processes={num_processes}, process_id={process_id}."
        )
    host, port = parse_coordinator(coordinator)
    if process_id == 0:
        _check_port_free(port)
        if verbose:
            print(
                f"unijax: process 0/{num_processes} hosts the coordinator on port {port} and "
                f"waits up to {timeout_s:g} s for {num_processes - 1} other process(es)",
                file=sys.stderr,
                flush=True,
            )
    else:
        _wait_for_coordinator(host, port, timeout_s)
        if verbose:
            print(
                f"unijax: process {process_id}/{num_processes} joining coordinator "
                f"{coordinator} (timeout {timeout_s:g} s)",
                file=sys.stderr,
                flush=True,
            )
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=None if local_device_ids is None else list(local_device_ids),
        cluster_detection_method="deactivate",
        initialization_timeout=max(1, math.ceil(timeout_s)),
    )


def is_writer() -> bool:
    """True in the process that writes results (process 0; always True in one process)."""
    return jax.process_index() == 0


def barrier(name: str, *, timeout_s: float = 3600.0) -> None:
    """Wait until every process reaches ``barrier(name)``; a no-op in a single process.

    Uses the coordination service's barrier (no device computation, so a long wait costs
    nothing); raises if the others do not arrive within ``timeout_s`` seconds.
    """
    if jax.process_count() == 1:
        return
    client = _client()
    if client is not None and hasattr(client, "wait_at_barrier"):
        client.wait_at_barrier(name, int(timeout_s * 1000))
    else:  # pragma: no cover - older runtimes
        multihost_utils.sync_global_devices(name)


class Agreement:
    """Decisions of process 0, shared with every process (one instance per run).

    Processes that compute together must take the same branches; any decision that reads
    local state (the output directory: resume this chunk? is this experiment finished?) is
    taken by the writing process (:func:`is_writer`) and sent to the others through the
    ``jax.distributed`` coordination service's key-value store (a few bytes of JSON each),
    under ``namespace``. In a single process :meth:`agree` is a plain call.

    Attributes:
        n: number of processes; writer: whether this process decides (and writes).
    """

    def __init__(self, namespace: str, *, timeout_s: float = 24 * 3600.0):
        self.namespace = namespace
        self.n = jax.process_count()
        self.writer = is_writer()
        self.timeout_ms = int(timeout_s * 1000)
        self._seen: dict[str, int] = {}

    def agree(self, key: str, value: Callable[[], Any]) -> Any:
        """``value()`` evaluated on the writing process (JSON-able), returned on every process;
        an exception there is raised on every process. Keys may repeat (each use is numbered)."""
        if self.n == 1:
            return value()
        import json

        count = self._seen.get(key, 0)
        self._seen[key] = count + 1
        k = f"{self.namespace}/{key}#{count}"
        client = _client()
        if self.writer:
            try:
                v = value()
            except Exception as e:
                client.key_value_set(k, json.dumps({"error": f"{type(e).__name__}: {e}"}))
                raise
            client.key_value_set(k, json.dumps({"value": v}))
            return v
        got = json.loads(client.blocking_key_value_get(k, self.timeout_ms))
        if "error" in got:
            raise RuntimeError(f"process 0 failed at {key!r}: {got['error']}")
        return got["value"]


def _client():
    """The coordination-service client of ``jax.distributed`` (not public API), or None."""
    from jax._src import distributed as _jd

    return _jd.global_state.client


# ---------------------------------------------------------------------------------------------
# Moving arrays between processes
# ---------------------------------------------------------------------------------------------


def put(value, sharding: NamedSharding) -> jax.Array:
    """``jax.device_put`` of a host value (PRNG key arrays included) onto ``sharding``, which
    may span several processes: every process then passes the same value and keeps the
    shards of its own devices."""
    if sharding.is_fully_addressable:
        return jax.device_put(value, sharding)
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(put(np.asarray(jax.random.key_data(value)), sharding))
    arr = np.asarray(value)
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])


def to_host(x) -> np.ndarray:
    """``x`` as a NumPy array on every process (gathered when spread over several)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
