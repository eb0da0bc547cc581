"""Multi-device and multi-host execution: ``jax.distributed`` start-up, a 1-D batch mesh, padding.

unijax scales out on JAX's own runtime. One Python process runs per host (or per GPU), all
started with the same ``coordinator`` ("HOST:PORT" of process 0), ``num_processes`` and their own
``process_id``; :func:`initialize` connects them, after which :func:`jax.devices` lists the
devices of *all* processes. Batches (trials of a fit, rows of a pairwise matrix) are laid along
axis 0 over a 1-D :class:`jax.sharding.Mesh` of those devices (:func:`batch_mesh`); a batch whose
size does not divide the device count is padded with copies of its last element
(:func:`pad_batch`, :func:`shard_batch`) and the padding is stripped when the results come back
to the host (:func:`gather_batch`). Every process holds the same (host) inputs and gets the same
(host) outputs; only process 0 writes files (:func:`is_writer`).

>>> import numpy as np
>>> from unijax import distributed
>>> padded, n_valid = distributed.pad_batch({"a": np.arange(3.0)}, 2)
>>> padded["a"].tolist(), n_valid
([0.0, 1.0, 2.0, 2.0], 3)

Single-process use needs no set-up: every helper works on the local devices. To try several
devices on one CPU, start Python with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import math
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "Agreement",
    "BATCH_AXIS",
    "DEFAULT_TIMEOUT_S",
    "CoordinatorUnreachableError",
    "ShardedBatch",
    "ShardedFit",
    "barrier",
    "batch_mesh",
    "check_process_args",
    "gather_batch",
    "initialize",
    "is_writer",
    "map_batch",
    "pad_batch",
    "parse_coordinator",
    "put",
    "shard_batch",
    "sharded_exponential_weighting_from_data",
    "sharded_fit_rates",
    "to_host",
]

#: Name of the single axis of :func:`batch_mesh`.
BATCH_AXIS = "batch"
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
        ValueError: ``num_processes`` not an integer >= 1; ``process_id`` not an integer in
            ``[0, num_processes)``; ``coordinator`` missing for ``num_processes > 1`` or not
            of the form HOST:PORT.
    """
    for name, v in (("num_processes", num_processes), ("process_id", process_id)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {name}={v!r}.")
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes} is out of range: must be >= 1.")
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
# Mesh, padding, sharding
# ---------------------------------------------------------------------------------------------


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis :data:`BATCH_AXIS` over ``devices`` (default: all global devices)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must be a non-empty sequence of jax devices.")
    return Mesh(np.asarray(devices, dtype=object), (BATCH_AXIS,))


def _batch_size(tree: Any) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError("the batch pytree has no array leaves.")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes:
        raise ValueError("every leaf of the batch must have a leading (batch) axis; got a scalar.")
    if len(sizes) != 1:
        raise ValueError(f"all leaves of the batch must share axis 0; got sizes {sorted(sizes)}.")
    return sizes.pop()


def pad_batch(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pad axis 0 of every leaf to a multiple of ``multiple`` with copies of its last element.

    Copies of a real element (rather than zeros) keep padded entries well-posed for solvers;
    strip them afterwards with ``out[:n_valid]``.

    Args:
        tree: pytree of host arrays, all of shape ``(n, ...)`` with ``n >= 1``.
        multiple: the padded size is ``ceil(n / multiple) * multiple``; integer >= 1.

    Returns:
        ``(padded, n_valid)`` with ``padded`` leaves of shape ``(n_padded_total, ...)`` (NumPy)
        and ``n_valid = n``.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple={multiple!r} is out of range: must be an integer >= 1.")
    n = _batch_size(tree)
    if n < 1:
        raise ValueError("the batch is empty (axis 0 has size 0); need at least one element.")
    total = -(-n // int(multiple)) * int(multiple)

    def pad(leaf):
        arr = np.asarray(leaf)
        if total == n:
            return arr
        extra = np.repeat(arr[-1:], total - n, axis=0)
        return np.concatenate([arr, extra], axis=0)

    return jax.tree_util.tree_map(pad, tree), n


class ShardedBatch(NamedTuple):
    """A batch laid along axis 0 over a mesh, padded to a multiple of the device count.

    Attributes:
        arrays: the pytree of global ``jax.Array`` s, leaves ``(n_valid + n_padded, ...)``,
            sharded ``P(BATCH_AXIS)``.
        n_valid: number of real elements (the first ``n_valid``).
        n_padded: number of padding elements appended (copies of the last real one).
        mask: ``(n_valid + n_padded,)`` bool host array, True for real elements.
    """

    arrays: Any
    n_valid: int
    n_padded: int
    mask: np.ndarray


def shard_batch(tree: Any, mesh: Mesh | None = None) -> ShardedBatch:
    """Pad ``tree`` along axis 0 and lay it over ``mesh`` (default :func:`batch_mesh`).

    Every process must pass the same host values (each keeps only its devices' slices), so
    this works unchanged across hosts after :func:`initialize`.

    Args:
        tree: pytree of host arrays, leaves of shape ``(n, ...)``.
        mesh: a mesh whose first axis is :data:`BATCH_AXIS`.

    Returns:
        A :class:`ShardedBatch`; pass ``.arrays`` to a jitted function that treats axis 0 as
        a batch (its outputs keep the sharding), then :func:`gather_batch` with ``.n_valid``.
    """
    mesh = batch_mesh() if mesh is None else mesh
    n_dev = mesh.shape[BATCH_AXIS]
    padded, n_valid = pad_batch(tree, n_dev)
    total = _batch_size(padded)

    def lay(arr):
        return put(arr, NamedSharding(mesh, P(BATCH_AXIS, *([None] * (arr.ndim - 1)))))

    arrays = jax.tree_util.tree_map(lay, padded)
    return ShardedBatch(arrays, n_valid, total - n_valid, np.arange(total) < n_valid)


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


def gather_batch(tree: Any, n_valid: int) -> Any:
    """Bring a batch-sharded pytree to the host of every process and drop the padding.

    Args:
        tree: pytree of arrays with a leading batch axis (possibly spread over processes).
        n_valid: number of real elements to keep (``ShardedBatch.n_valid``).

    Returns:
        The same pytree with NumPy leaves ``(n_valid, ...)``, identical on every process.
    """
    return jax.tree_util.tree_map(lambda x: to_host(x)[:n_valid], tree)


def map_batch(fn: Callable[[Any], Any], tree: Any, *, mesh: Mesh | None = None) -> tuple[Any, int]:
    """``fn`` (jitted) applied to a batch laid over ``mesh``; returns ``(out, n_padded)``.

    ``fn`` must treat axis 0 of its input and output leaves as an independent batch (a
    ``vmap`` over elements): then the result equals ``fn(tree)`` element for element, whatever
    the number of devices. ``out`` holds host arrays without the padding.
    """
    batch = shard_batch(tree, mesh)
    out = jax.jit(fn)(batch.arrays)
    return gather_batch(out, batch.n_valid), batch.n_padded


# ---------------------------------------------------------------------------------------------
# Sharded fits and theory
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _keyword_defaults(fn: Callable) -> dict[str, Any]:
    """``fn``'s keyword-only parameters and their defaults (``inspect.signature`` is slow
    next to the other argument checks, and the answer never changes). Do not mutate."""
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _prepare_fit(ts, Z, dx2, dy2, init, kw):
    """:func:`unijax.fit.fit_rates`' own argument checks and compiled options, for the
    options ``kw`` (any keyword of ``fit_rates``); returns ``(ts, batch, opts,
    return_trajectory, single, retries)``."""
    from . import fit

    valid = {k: v for k, v in _keyword_defaults(fit.fit_rates).items()
             if k not in ("dx2", "dy2", "init")}
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ValueError(f"unknown fit option(s) {unknown}; valid: {sorted(valid)}.")
    o = {**valid, **kw}
    return_trajectory = bool(o.pop("return_trajectory"))
    ts_arr, Z_arr, dx2_b, dy2_b, init_b, opts, single, retries = fit._prepare_fit(
        ts, Z, dx2, dy2, init, caller="unijax.distributed.sharded_fit_rates", **o
    )
    batch = {"Z": Z_arr, "dx2": dx2_b, "dy2": dy2_b, "init": init_b}
    return ts_arr, batch, opts, return_trajectory, single, retries


#: Trials per chunk of a device's slice on CPU: the chunk size of :func:`unijax.fit.fit_rates`
#: on CPU (``fit._chunking``), so both run the same ``vmap`` width.
_CPU_CHUNK = 8


class _FitLayout(NamedTuple):
    """How ``n`` trials are laid over the devices: each device holds ``per_device`` of them
    (real ones first, in order, the padding last on the last devices) and fits the first
    ``n_chunks[i]`` of its ``per_device // chunk`` chunks, the ones holding a real trial."""

    chunk: int
    per_device: int
    n_chunks: np.ndarray  # (n_devices,) int32
    n_computed: int  # trials fitted, padding included


def _fit_layout(n: int, n_devices: int, platform: str) -> _FitLayout:
    """CPU: chunks of ``min(8, ceil(n / n_devices))`` trials, run one after another on each
    device; elsewhere one chunk (one ``vmap``) per device. With several chunks per device, a
    device runs only the chunks that hold a real trial, so fewer than ``chunk`` padding trials
    are fitted in all; with one chunk per device, fewer than ``n_devices``."""
    c = -(-n // n_devices)
    chunk = min(_CPU_CHUNK, c) if platform == "cpu" else c
    per = -(-c // chunk) * chunk
    if per == chunk:  # one vmap per device: all of it runs (padding < n_devices)
        return _FitLayout(chunk, per, np.ones(n_devices, np.int32), per * n_devices)
    real = np.clip(n - per * np.arange(n_devices), 0, per)
    n_chunks = (-(-real // chunk)).astype(np.int32)
    return _FitLayout(chunk, per, n_chunks, int(n_chunks.sum()) * chunk)


#: Layout of :func:`_pack` ed outputs, ``(n_epochs, opts, return_trajectory) -> ((key, trailing
#: shape or None, dtype), ...)``, recorded when a device program is traced (as ``jax.jit``
#: records its output tree): computing it apart would trace the fit once more, since a trace
#: inside ``shard_map`` is not shared with one outside.
_PACKED_LAYOUTS: dict[tuple, tuple] = {}


def _pack(out: dict, key: tuple) -> jax.Array:
    """The per-trial outputs as one ``(n, n_cols)`` float64 array (leaves by sorted key,
    flattened; bool and integer leaves are exact in float64), so that one transfer (one
    all-gather across processes) brings everything back; :func:`_unpack` undoes it with the
    layout recorded under ``key``."""
    _PACKED_LAYOUTS[key] = tuple(
        (k, None, None) if out[k] is None else (k, tuple(out[k].shape[1:]), np.dtype(out[k].dtype))
        for k in sorted(out)
    )
    return jnp.concatenate(
        [
            out[k].reshape(out[k].shape[0], -1).astype(jnp.float64)
            for k in sorted(out)
            if out[k] is not None
        ],
        axis=1,
    )


def _unpack(packed: np.ndarray, layout: tuple) -> dict:
    """Inverse of :func:`_pack` on the host: ``(n, n_cols)`` -> dict of ``(n, ...)`` arrays."""
    out, col = {}, 0
    for key, shape, dtype in layout:
        if shape is None:
            out[key] = None
            continue
        size = math.prod(shape)
        block = packed[:, col : col + size].reshape((packed.shape[0], *shape))
        out[key] = np.ascontiguousarray(block.astype(dtype, copy=False))
        col += size
    return out


@functools.partial(jax.jit, static_argnames=("opts", "return_trajectory", "chunk"))
def _fit_device(ts, b, n_chunks, *, opts, return_trajectory: bool, chunk: int):
    """One device's trials ``b`` (leaves ``(per_device, ...)``) -> packed ``(per_device,
    n_cols)`` (:func:`_pack`).

    Runs ``fit._fit_batch`` (one ``vmap``) on chunks of ``chunk`` trials, the first
    ``n_chunks`` (traced) one after another in a loop; the rest hold only padding and stay
    zero. Each chunk's loops (solver steps, optimizer iterations) stop at its own slowest
    trial rather than the slowest of the whole slice.
    """
    from . import fit

    def run(c):
        rt = return_trajectory
        out = fit._fit_batch(
            ts, c["Z"], c["dx2"], c["dy2"], c["init"], opts=opts, return_trajectory=rt
        )
        return _pack(out, (ts.shape[0], opts, rt))

    per = b["Z"].shape[0]
    if chunk >= per:
        return run(b)
    k = per // chunk
    chunks = jax.tree_util.tree_map(lambda a: a.reshape((k, chunk, *a.shape[1:])), b)

    def body(j, acc):
        part = jax.tree_util.tree_map(
            lambda a: jax.lax.dynamic_index_in_dim(a, j, keepdims=False), chunks
        )
        return jax.lax.dynamic_update_index_in_dim(acc, run(part), j, 0)

    n_cols = jax.eval_shape(run, jax.tree_util.tree_map(lambda a: a[0], chunks)).shape[1]
    acc = jax.lax.fori_loop(0, n_chunks, body, jnp.zeros((k, chunk, n_cols), jnp.float64))
    return acc.reshape(per, n_cols)


def _per_device(
    call: Callable[[int, jax.Device, Any], jax.Array], padded: Any, mesh: Mesh
) -> np.ndarray | jax.Array:
    """Run ``call(i, device, slice)`` on every device of ``mesh`` this process owns, at once.

    ``padded``: host pytree whose axis 0 divides the device count; device ``i`` of the mesh
    gets the ``i``-th equal slice (committed to it). ``call`` returns one array with the same
    leading axis. Each device runs its own program start to finish, with no collectives
    (unlike one partitioned program, where every ``while_loop`` over a batch synchronizes all
    devices at each iteration). Returns the outputs of all devices of all processes as one
    array laid along the mesh (a host array in a single process).
    """
    devices = list(mesh.devices.flat)
    total = _batch_size(padded)
    per = total // len(devices)
    me = jax.process_index()
    mine = [(i, d) for i, d in enumerate(devices) if d.process_index == me]

    def run(item):
        i, d = item
        local = jax.tree_util.tree_map(
            lambda a: jax.device_put(a[i * per : (i + 1) * per], d), padded
        )
        return call(i, d, local)

    # One thread per device: each compiles (once per device) and dispatches concurrently.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(mine))) as ex:
        outs = list(ex.map(run, mine))
    if len(mine) == len(devices):
        return np.concatenate([np.asarray(x) for x in outs], axis=0)
    spec = P(BATCH_AXIS, *([None] * (outs[0].ndim - 1)))
    shape = (total, *outs[0].shape[1:])
    return jax.make_array_from_single_device_arrays(shape, NamedSharding(mesh, spec), outs)


_FIT_MODES = ("shard_map", "per_device", "spmd")


@functools.lru_cache(maxsize=16)
def _shard_mapped_fit(mesh: Mesh, opts, return_trajectory: bool, chunk: int):
    """``jit(shard_map(_fit_device))``: each device fits its own slice, no collectives
    (cached)."""

    def call(ts_, b, n_chunks):
        return _fit_device(
            ts_, b, n_chunks[0], opts=opts, return_trajectory=return_trajectory, chunk=chunk
        )

    return jax.jit(
        jax.shard_map(
            call,
            mesh=mesh,
            in_specs=(P(), P(BATCH_AXIS), P(BATCH_AXIS)),
            out_specs=P(BATCH_AXIS),
            # The fit's loop carries start as constants (not marked device-varying); nothing
            # here communicates across devices, so the varying-axis check is not needed.
            check_vma=False,
        )
    )


class ShardedFit(NamedTuple):
    """Result of :func:`sharded_fit_rates`.

    Attributes:
        fit: the :class:`unijax.fit.RateFit` (NumPy leaves; ``n_trials`` = the real trials).
        n_padded: padding trials (copies of the last one) fitted and dropped.
        n_devices: devices the trials were laid over.
    """

    fit: Any
    n_padded: int
    n_devices: int


def sharded_fit_rates(
    ts,
    Z,
    *,
    dx2,
    dy2,
    init=None,
    mesh: Mesh | None = None,
    mode: str = "shard_map",
    **kw,
):
    """:func:`unijax.fit.fit_rates` with the trials laid over the devices of ``mesh``.

    The trials are laid in order along the mesh (``NamedSharding``), ``ceil(n / n_devices)``
    or a few more per device, the last devices' slices filled up with copies of the last trial;
    each device fits its own slice with the compiled core of ``fit_rates``, all devices at
    once and independently, and the results are gathered back (across processes too, after
    :func:`initialize`: every process passes the same host arrays and receives the whole
    result). On CPU devices a device runs its slice as chunks of 8 trials (fewer when the
    slice is smaller) one after another, as ``fit_rates`` does: each chunk's loops stop at
    its own slowest trial (64 trials of 6000 epochs on 2 CPU cores: 1.5-1.6x faster than
    one ``vmap`` per device); chunks holding only padding are skipped, so fewer than 8
    padding trials are fitted (fewer than the device count when each device's slice is one
    chunk). On GPU/TPU each device fits its slice in one ``vmap``. The padding is fitted,
    then dropped; ``n_padded`` says how many were fitted.
    Trials whose optimizer could not finish because an ODE solve ran out of steps are fitted
    again with the larger budgets of ``retry_max_steps``, as :func:`unijax.fit.fit_rates`
    does, laid over the devices the same way (``n_padded`` counts the first pass). The result
    has the same fields (``status``, ``converged``, ``identified``, ``good_fit``, ...).

    ``mode`` chooses how the devices run the core:

    * ``"shard_map"`` (default): one program, compiled once for the mesh, in which each
      device runs the core on its slice with no communication. Numbers as ``fit_rates``
      up to how XLA vectorizes and fuses another program (seen on CPU: equal iteration
      counts and flags, rates within 1e-12 relative).
    * ``"per_device"``: the same per-device program, dispatched to each device (one thread
      per device), compiled once per device; for cores ``shard_map`` cannot trace. Numbers
      as ``"shard_map"`` (seen on CPU, 19 trials: bitwise those of ``fit_rates``).
    * ``"spmd"``: ``jit`` of the core on the sharded batch (padded to a multiple of the
      device count, one ``vmap``), partitioned by XLA (compiled once). The fit is
      ``while_loop`` s over a batch, so the partitioned loops run the devices in lock-step
      (an all-reduce at every solver step); numbers equal to rounding (~1e-13 relative; an
      iteration count can differ by one).

    Args:
        ts: epochs ``(n_epochs,)``; Z: ``(n_trials, n_epochs, 3)`` or ``(n_epochs, 3)``;
            dx2, dy2, init: as in :func:`unijax.fit.fit_rates`.
        mesh: default :func:`batch_mesh` (all global devices).
        mode: ``"shard_map"`` (default), ``"per_device"`` or ``"spmd"``, see above.
        **kw: the other options of :func:`unijax.fit.fit_rates` (``rtol``, ``max_iters``,
            ``return_trajectory``, ...).

    Returns:
        :class:`ShardedFit`: ``fit``, a :class:`unijax.fit.RateFit` of host (NumPy) arrays
        shaped as ``fit_rates`` returns them; ``n_padded``, the padding trials computed and
        dropped; ``n_devices``.

    Raises:
        ValueError: as :func:`unijax.fit.fit_rates`, and for unknown options.
        RuntimeError: JAX's 64-bit mode is off.
    """
    from . import fit

    if mode not in _FIT_MODES:
        raise ValueError(f"mode={mode!r} is not one of {list(_FIT_MODES)}.")
    ts_arr, batch, opts, return_trajectory, single, retries = _prepare_fit(
        ts, Z, dx2, dy2, init, kw
    )
    mesh = batch_mesh() if mesh is None else mesh
    n_dev = mesh.shape[BATCH_AXIS]
    out, n_padded = _sharded_fit(ts_arr, batch, opts, return_trajectory, mesh, mode)

    def refit(rows, opts_retry):
        # The same machinery on the trials concerned (every process has the whole result,
        # so every process picks the same rows).
        sub = jax.tree_util.tree_map(lambda a: a[rows], batch)
        return _sharded_fit(ts_arr, sub, opts_retry, return_trajectory, mesh, mode)[0]

    out = fit._with_retries(out, opts, retries, refit)
    out = fit._squeeze(out, single)
    return ShardedFit(fit.RateFit(**out), n_padded, n_dev)


def _sharded_fit(ts_arr, batch, opts, return_trajectory, mesh, mode) -> tuple[dict, int]:
    """The core of :func:`sharded_fit_rates` for checked host arrays: ``(per-trial outputs
    of fit._fit_batch as host arrays, padding trials fitted)``."""
    from . import fit

    n_dev = mesh.shape[BATCH_AXIS]
    n = _batch_size(batch)

    def replicated(arr):
        return put(arr, NamedSharding(mesh, P()))

    if mode == "spmd":
        padded, _ = pad_batch(batch, n_dev)
        b = shard_batch(padded, mesh).arrays
        out = fit._fit_batch(
            replicated(ts_arr),
            b["Z"],
            b["dx2"],
            b["dy2"],
            b["init"],
            opts=opts,
            return_trajectory=return_trajectory,
        )
        out = gather_batch(out, n)
        n_padded = _batch_size(padded) - n
    else:
        lay = _fit_layout(n, n_dev, mesh.devices.flat[0].platform)
        padded, _ = pad_batch(batch, n_dev * lay.per_device)
        if mode == "shard_map":
            program = _shard_mapped_fit(mesh, opts, return_trajectory, lay.chunk)
            n_chunks = put(lay.n_chunks, NamedSharding(mesh, P(BATCH_AXIS)))
            packed = program(replicated(ts_arr), shard_batch(padded, mesh).arrays, n_chunks)
        else:
            program = functools.partial(
                _fit_device, opts=opts, return_trajectory=return_trajectory, chunk=lay.chunk
            )
            packed = _per_device(
                lambda i, d, b: program(
                    jax.device_put(ts_arr, d), b, jax.device_put(lay.n_chunks[i], d)
                ),
                padded,
                mesh,
            )
        layout = _PACKED_LAYOUTS[(ts_arr.shape[0], opts, return_trajectory)]
        out = _unpack(to_host(packed)[:n], layout)
        n_padded = lay.n_computed - n
    return out, n_padded


def sharded_exponential_weighting_from_data(
    X,
    Y,
    *,
    rows=None,
    cols=None,
    block_size: int = 1024,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """:func:`unijax.theory.exponential_weighting_from_data` with the data set split over devices.

    ``(E A E)[rows, cols] = sum_k E[rows, k] (sum_l A[k, l] E[l, cols])`` with
    ``A[i, j] = |x_i - x_j| |y_i - y_j|`` and ``E = exp(-A)`` (docs/theory.md section 10, Eq. 50).
    Each device owns ``n / n_devices`` points ``k`` of the outer sum and runs over them in
    blocks of ``block_size``; the partial ``(r, n)`` products are summed across devices
    (``psum``). Peak memory per device: about ``(block_size + 2 r) n + n c`` floats
    (``r, c`` = number of rows/cols), independent of the device count; the work per device
    falls as ``1 / n_devices``.

    Args:
        X: inputs ``(n, dx)``; Y: targets ``(n, dy)`` (host arrays, the same on all processes).
        rows, cols: indices of the wanted entries (default: all points).
        block_size: points per block of the inner loop on each device.
        mesh: default :func:`batch_mesh`.

    Returns:
        ``(len(rows), len(cols))`` host array, equal to the single-device result up to the
        order of floating-point summation.
    """
    from . import theory

    X = np.asarray(X)
    Y = np.asarray(Y)
    n = X.shape[0]
    theory._check_matrix("X", X)
    theory._check_matrix("Y", Y, n=n)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    cols = np.arange(n) if cols is None else np.asarray(cols)
    for name, idx in (("rows", rows), ("cols", cols)):
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
            raise ValueError(f"{name} must be a 1-D array of indices in [0, {n}); got {idx}.")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise ValueError(f"block_size={block_size!r} must be an integer >= 1.")
    if block_size < 1:
        raise ValueError(f"block_size={block_size!r} is out of range: must be >= 1.")
    mesh = batch_mesh() if mesh is None else mesh
    n_dev = mesh.shape[BATCH_AXIS]
    per_dev = -(-n // n_dev)
    block = int(min(block_size, per_dev))
    per_dev = -(-per_dev // block) * block  # each device: whole blocks
    total = per_dev * n_dev
    k_idx = np.minimum(np.arange(total), n - 1).astype(np.int32)
    k_valid = np.arange(total) < n

    def sq_dist(a, b):
        d = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
        return jnp.maximum(d, 0.0)

    def a_block(xa, ya, xb, yb):
        return jnp.sqrt(sq_dist(xa, xb) * sq_dist(ya, yb))

    def local(Xr, Yr, Xall, Yall, kk, kv):
        # kk, kv: this device's (per_dev,) point indices and validity.
        kk = kk.reshape(-1, block)
        kv = kv.reshape(-1, block)

        def step(Pacc, blk):
            kb, vb = blk
            xk, yk = Xall[kb], Yall[kb]
            e_rk = jnp.where(vb[None, :], jnp.exp(-a_block(Xr, Yr, xk, yk)), 0.0)  # (r, b)
            return Pacc + e_rk @ a_block(xk, yk, Xall, Yall), None  # (r, n)

        P0 = jax.lax.pcast(
            jnp.zeros((Xr.shape[0], Xall.shape[0]), Xall.dtype), (BATCH_AXIS,), to="varying"
        )
        Pacc, _ = jax.lax.scan(step, P0, (kk, kv))
        return jax.lax.psum(Pacc, BATCH_AXIS)

    rep = P()
    f = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(rep, rep, rep, rep, P(BATCH_AXIS), P(BATCH_AXIS)),
            out_specs=rep,
        )
    )

    def lay(arr, spec):
        return put(arr, NamedSharding(mesh, spec))

    Pm = f(
        lay(X[rows], rep),
        lay(Y[rows], rep),
        lay(X, rep),
        lay(Y, rep),
        lay(k_idx, P(BATCH_AXIS)),
        lay(k_valid, P(BATCH_AXIS)),
    )
    # (r, n) @ E[:, cols] (n, c): replicated, computed on every device; small next to the sum.
    E_cols = jax.jit(
        lambda Xa, Ya, Xc, Yc: jnp.exp(-a_block(Xa, Ya, Xc, Yc)),
    )(lay(X, rep), lay(Y, rep), lay(X[cols], rep), lay(Y[cols], rep))
    out = jax.jit(jnp.matmul)(Pm, E_cols)
    return np.asarray(out.addressable_data(0))  # replicated: every device holds all of it
