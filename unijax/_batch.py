"""Many independent trials: padding, chunks, the device mesh, the in-place block loop, gathering.

Every "batch of independent trials" job in unijax (training a gains x seeds grid, fitting a
batch of trajectories, the rows of a pairwise matrix, a sweep's chunks) goes through this
module, with one convention each:

* **Padding** repeats the *last* real element (:func:`pad`, :func:`pad_index`): a copy of a real
  element keeps padded entries well-posed for solvers; results are cut back to the first
  ``n`` (:func:`gather`).
* **One mesh axis**, :data:`BATCH_AXIS`, over the devices of every process (:func:`batch_mesh`).
* **Buckets** (:func:`trial_bucket`): a batch of ``n >= 2`` trials is padded to a multiple of
  :data:`BUCKET`, then of the device count, so that one compiled program serves every batch
  size of a bucket (3, 5 and 7 seeds share one training program); a lone trial is its own
  bucket; padding trials that a loop would compute are skipped (:func:`map_in_place` with
  ``n_valid``).
* **Chunks**: on CPU a batch of two or more runs as chunks of :data:`CPU_CHUNK` trials, the
  last padded (:func:`cpu_chunking`, :func:`map_chunks`); on a mesh of several devices each
  device runs its slice as such chunks one after another (:func:`device_layout`,
  :func:`map_over_devices`).
* **The in-place block loop** (:func:`loop_blocks`): one ``fori_loop`` that writes each block's
  output where it belongs in preallocated arrays, so that the peak memory is the output plus one
  block (:func:`map_in_place`, :func:`blocked_rows` and the per-device chunk loop use it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _progress
from ._host import usable_cores
from .distributed import put, to_host

#: Name of the single axis of :func:`batch_mesh`.
BATCH_AXIS = "batch"

#: Trials per chunk on CPU. XLA on CPU runs a vmapped fit on little more than one core (its
#: loops step all trials together through small operations) and every batch waits for its
#: slowest trial: 64 trials of 6000 epochs on 2 cores, one batch 0.32 s, 4 chunks of 16 on 4
#: threads 0.19 s, 8 chunks of 8 0.14 s (best of 5, same numbers). Fixed-size chunks also mean
#: one compiled program for any batch size.
CPU_CHUNK = 8

#: Trial counts are rounded up to a multiple of this before compiling (see
#: :func:`trial_bucket`): 2-8 trials share one program, 9-16 the next, ... (one trial alone
#: is not padded). Fewer than
#: ``BUCKET`` padding trials are ever added, and on CPU the per-trial loop skips them; in a
#: ``vmap`` (GPU/TPU) they are computed and dropped. Equal to :data:`CPU_CHUNK`, so a bucket
#: is a whole number of CPU chunks.
BUCKET = CPU_CHUNK


# ---------------------------------------------------------------------------------------------
# Mesh, padding, gathering
# ---------------------------------------------------------------------------------------------


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis :data:`BATCH_AXIS` over ``devices`` (default: all global devices)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must be a non-empty sequence of jax devices.")
    return Mesh(np.asarray(devices, dtype=object), (BATCH_AXIS,))


def batch_size(tree: Any) -> int:
    """The common size of axis 0 of every leaf of ``tree``."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError("the batch pytree has no array leaves.")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes:
        raise ValueError("every leaf of the batch must have a leading (batch) axis; got a scalar.")
    if len(sizes) != 1:
        raise ValueError(f"all leaves of the batch must share axis 0; got sizes {sorted(sizes)}.")
    return sizes.pop()


def pad_index(rows, total: int) -> np.ndarray:
    """``rows`` (1-D, non-empty) followed by copies of its last entry, ``total`` in all."""
    rows = np.asarray(rows)
    if rows.size == 0 or total < rows.size:
        raise ValueError(f"cannot pad {rows.size} rows to {total}: need 1 <= rows <= total.")
    return np.concatenate([rows, np.repeat(rows[-1:], total - rows.size)])


def pad(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pad axis 0 of every leaf to a multiple of ``multiple`` with copies of its last element.

    Args:
        tree: pytree of host arrays, all of shape ``(n, ...)`` with ``n >= 1``.
        multiple: the padded size is ``ceil(n / multiple) * multiple``; integer >= 1.

    Returns:
        ``(padded, n)`` with NumPy leaves ``(ceil(n / multiple) * multiple, ...)``.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple={multiple!r} is out of range: must be an integer >= 1.")
    n = batch_size(tree)
    if n < 1:
        raise ValueError("the batch is empty (axis 0 has size 0); need at least one element.")
    idx = pad_index(np.arange(n), -(-n // int(multiple)) * int(multiple))
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], tree), n


class TrialBucket(NamedTuple):
    """``n`` trials padded to a bucket and laid over ``n_devices`` devices (see
    :func:`trial_bucket`).

    Attributes:
        n: real trials (the first ``n`` of the padded batch).
        total: trials in the padded batch, a multiple of :data:`BUCKET` (1 for a lone
            trial) rounded up to a multiple of the device count.
        per_device: ``total / n_devices``, each device's consecutive slice.
        n_valid: ``(n_devices,)`` int32, the real trials in each device's slice: ``n`` shared
            as evenly as the devices allow (they differ by at most one), so a few trials run
            side by side rather than all on the first device. They come first in the slice,
            in order (device 0 the first ones), the padding after them.
    """

    n: int
    total: int
    per_device: int
    n_valid: np.ndarray

    @property
    def n_padded(self) -> int:
        """Padding trials appended (copies of the last real one)."""
        return self.total - self.n

    @property
    def rows(self) -> np.ndarray:
        """``(n,)`` position of each real trial in the padded batch (for :func:`gather`)."""
        starts = self.per_device * np.arange(self.n_valid.size)
        return np.concatenate([s + np.arange(k) for s, k in zip(starts, self.n_valid, strict=True)])

    @property
    def index(self) -> np.ndarray:
        """``(total,)`` trial held by each position of the padded batch: the real trials at
        :attr:`rows`, copies of the last real trial everywhere else."""
        index = np.full(self.total, self.n - 1)
        index[self.rows] = np.arange(self.n)
        return index


def trial_bucket(n: int, n_devices: int) -> TrialBucket:
    """The padded layout of ``n`` independent trials over ``n_devices`` devices.

    **The bucket rule**: ``total = ceil(ceil(n / BUCKET) * BUCKET / n_devices) * n_devices``,
    i.e. ``n`` rounded up to a multiple of :data:`BUCKET` (8), then to a multiple of the
    device count. A compiled program depends on ``total`` only, so every ``n`` of a bucket
    (2-8, 9-16, ...) reuses it. A lone trial (``n = 1``) is a bucket of its own, ``total =
    n_devices``: the padding costs no drawing and, on CPU, no training, but its parameters
    are allocated all the same (7 zero copies of the paper's default network at one seed:
    about 30 ms of a 0.26 s call on the 2-core Xeon), and one trial is the common case of a
    single run. The real trials are shared evenly over the devices (2 trials
    on 2 devices: one each); padding repeats the last real trial (:attr:`TrialBucket.index`)
    and its results are dropped (``gather(..., bucket.rows)``).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} is out of range: need at least one trial.")
    if isinstance(n_devices, bool) or not isinstance(n_devices, (int, np.integer)) or (
        n_devices < 1
    ):
        raise ValueError(f"n_devices={n_devices!r} is out of range: must be an integer >= 1.")
    base = 1 if int(n) == 1 else -(-int(n) // BUCKET) * BUCKET
    per = -(-base // int(n_devices))
    n_valid = (int(n) // n_devices + (np.arange(n_devices) < int(n) % n_devices)).astype(np.int32)
    return TrialBucket(int(n), per * int(n_devices), per, n_valid)


class ShardedBatch(NamedTuple):
    """A batch laid along axis 0 over a mesh, padded to a multiple of the device count.

    Attributes:
        arrays: the pytree of global ``jax.Array`` s, leaves ``(n_valid + n_padded, ...)``,
            sharded ``P(BATCH_AXIS)``.
        n_valid: number of real elements (the first ``n_valid``).
        n_padded: number of padding elements appended (copies of the last real one).
    """

    arrays: Any
    n_valid: int
    n_padded: int


def shard(tree: Any, mesh: Mesh) -> ShardedBatch:
    """Pad ``tree`` along axis 0 to a multiple of the device count and lay it over ``mesh``.

    Every process passes the same host values (each keeps its own devices' slices).
    """
    padded, n = pad(tree, mesh.shape[BATCH_AXIS])
    arrays = jax.tree_util.tree_map(
        lambda a: put(a, NamedSharding(mesh, P(BATCH_AXIS))), padded
    )
    return ShardedBatch(arrays, n, batch_size(padded) - n)


def gather(tree: Any, keep: int | np.ndarray) -> Any:
    """A batch-sharded pytree as NumPy leaves on every process, the padding dropped: the first
    ``keep`` elements (an int), or those at the positions ``keep`` (an int array, in its
    order)."""
    take = slice(None, keep) if isinstance(keep, (int, np.integer)) else np.asarray(keep)
    return jax.tree_util.tree_map(lambda x: to_host(x)[take], tree)


def map_batch(fn: Callable[[Any], Any], tree: Any, *, mesh: Mesh | None = None) -> Any:
    """``jit(fn)`` of a batch laid over ``mesh`` (default :func:`batch_mesh`): host outputs
    without the padding. ``fn`` treats axis 0 as independent elements (a ``vmap``)."""
    batch = shard(tree, batch_mesh() if mesh is None else mesh)
    return gather(jax.jit(fn)(batch.arrays), batch.n_valid)


# ---------------------------------------------------------------------------------------------
# Chunks
# ---------------------------------------------------------------------------------------------


def cpu_chunking(n: int, platform: str) -> tuple[int, int]:
    """``(chunk size, threads)`` for ``n`` trials.

    On CPU every batch of two or more trials runs as chunks of :data:`CPU_CHUNK` (the last
    padded), so one compiled program serves every batch size, the experiments' 2 seeds and
    a user's 100 alike; one trial runs alone (the latency of a single fit). Two threads per
    core dispatch the chunks when there are several. Elsewhere: one whole batch.
    """
    if platform != "cpu" or n < 2:
        return n, 1
    if n <= CPU_CHUNK:
        return CPU_CHUNK, 1
    return CPU_CHUNK, 2 * usable_cores()


def map_chunks(
    fn: Callable[[Any], Any],
    tree: Any,
    *,
    size: int,
    threads: int,
    device: jax.Device | None = None,
    label: str = "batch",
) -> Any:
    """``fn`` (jitted, a ``vmap`` over axis 0) on chunks of ``size`` of ``tree``, dispatched from
    ``threads`` threads, concatenated on the host and cut to the batch size.

    The last chunk is padded with copies of the last element, so one compiled program serves
    every chunk. Leaves of the output that are None stay None.
    """
    n = batch_size(tree)
    k = -(-n // size)
    idx = pad_index(np.arange(n), k * size).reshape(k, size)

    def run(rows):
        part = jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a)[rows], device), tree)
        return jax.block_until_ready(fn(part))

    if k == 1:
        outs = [run(idx[0])]
    else:
        with ThreadPoolExecutor(min(threads, k)) as pool, _progress.bar(k, label, "chunk") as bar:
            futures = [pool.submit(run, rows) for rows in idx]
            for done in as_completed(futures):
                done.result()
                bar.update()
            outs = [f.result() for f in futures]
    return jax.tree_util.tree_map(
        lambda *xs: np.concatenate([np.asarray(x) for x in xs])[:n], *outs
    )


class DeviceLayout(NamedTuple):
    """How ``n`` trials are laid over the devices: each device holds ``per_device`` of them
    (real ones first, in order, the padding last on the last devices) and runs the first
    ``n_chunks[i]`` of its ``per_device // chunk`` chunks, the ones holding a real trial."""

    chunk: int
    per_device: int
    n_chunks: np.ndarray  # (n_devices,) int32
    n_computed: int  # trials computed, padding included


def device_layout(n: int, n_devices: int, platform: str) -> DeviceLayout:
    """CPU: chunks of ``min(CPU_CHUNK, ceil(n / n_devices))`` trials, one after another on each
    device; elsewhere one chunk (one ``vmap``) per device. With several chunks per device, a
    device runs only the chunks that hold a real trial, so fewer than ``chunk`` padding trials
    are computed in all; with one chunk per device, fewer than ``n_devices``."""
    c = -(-n // n_devices)
    chunk = min(CPU_CHUNK, c) if platform == "cpu" else c
    per = -(-c // chunk) * chunk
    if per == chunk:  # one vmap per device: all of it runs (padding < n_devices)
        return DeviceLayout(chunk, per, np.ones(n_devices, np.int32), per * n_devices)
    real = np.clip(n - per * np.arange(n_devices), 0, per)
    n_chunks = (-(-real // chunk)).astype(np.int32)
    return DeviceLayout(chunk, per, n_chunks, int(n_chunks.sum()) * chunk)


def map_over_devices(fn: Callable[[Any, Any], Any], shared: Any, tree: Any, mesh: Mesh) -> Any:
    """``fn(shared, chunk)`` (a ``vmap`` over the chunk's axis 0) on the batch ``tree`` laid
    over ``mesh``: each device runs its slice as the chunks of :func:`device_layout`, one
    after another, in one program compiled once for the mesh (``shard_map``, no collectives:
    each device runs its own loops to the end). ``shared`` is replicated. Returns host
    outputs cut to the batch size, identical on every process.
    """
    n = batch_size(tree)
    n_dev = mesh.shape[BATCH_AXIS]
    lay = device_layout(n, n_dev, mesh.devices.flat[0].platform)
    padded, _ = pad(tree, n_dev * lay.per_device)

    def local(shared_, b, n_chunks):
        if lay.per_device == lay.chunk:
            return fn(shared_, b)

        def chunk(start, _, inputs):
            return None, fn(shared_, inputs)

        return loop_blocks(chunk, lay.per_device, lay.chunk, inputs=b, count=n_chunks[0])[1]

    program = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P(BATCH_AXIS), P(BATCH_AXIS)),
            out_specs=P(BATCH_AXIS),
            # The loops of ``fn`` carry their starts as constants (not marked device-varying);
            # nothing here communicates across devices, so the varying-axis check is not needed.
            check_vma=False,
        )
    )
    lay_out = lambda a, spec: put(a, NamedSharding(mesh, spec))  # noqa: E731
    out = program(
        jax.tree_util.tree_map(lambda a: lay_out(a, P()), shared),
        jax.tree_util.tree_map(lambda a: lay_out(a, P(BATCH_AXIS)), padded),
        lay_out(lay.n_chunks, P(BATCH_AXIS)),
    )
    return gather(out, n)


# ---------------------------------------------------------------------------------------------
# The in-place block loop
# ---------------------------------------------------------------------------------------------


def loop_blocks(
    f: Callable[[jax.Array, Any, Any], tuple[Any, Any]],
    n: int,
    block: int,
    *,
    carry: Any = None,
    inputs: Any = None,
    count: int | jax.Array | None = None,
    clamp: bool = False,
) -> tuple[Any, Any]:
    """Blocks of ``block`` rows of ``n``, one after another in a ``fori_loop``, written in place.

    ``f(start, carry_block, input_block) -> (new_carry_block, out_block)``: ``carry`` leaves
    ``(n, ...)`` are updated where they were read (None: nothing carried); ``inputs`` leaves
    ``(n, ...)`` are only read; the outputs are written into preallocated ``(n, ...)`` arrays
    (zeros where no block ran). Runs the first ``count`` blocks (default all, ``ceil(n /
    block)``; a traced count is allowed). ``clamp``: the last block starts at ``n - block``
    and recomputes a few rows of the one before instead of running past ``n``; otherwise
    ``block`` must divide ``n``.

    Returns ``(carry, outputs)``. Peak memory: the carry and outputs once, plus one block.
    """
    n_blocks = -(-n // block)
    if not clamp and n_blocks * block != n:
        raise ValueError(f"block={block} does not divide n={n} (use clamp=True).")

    def start_of(i):
        return jnp.minimum(i * block, n - block) if clamp else i * block

    def take(tree, start):
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, block), tree)

    def write(tree, part, start):
        return jax.tree.map(
            lambda a, u: jax.lax.dynamic_update_slice_in_dim(a, u, start, 0), tree, part
        )

    def first(tree):
        return jax.tree.map(lambda a: a[:block], tree)

    out_shape = jax.eval_shape(lambda c, x: f(jnp.int32(0), c, x)[1], first(carry), first(inputs))
    outs = jax.tree.map(lambda s: jnp.zeros((n,) + s.shape[1:], s.dtype), out_shape)

    def body(i, state):
        c, o = state
        start = start_of(i)
        new, y = f(start, take(c, start), take(inputs, start))
        return (c if carry is None else write(c, new, start)), write(o, y, start)

    return jax.lax.fori_loop(0, n_blocks if count is None else count, body, (carry, outs))


def map_in_place(
    f: Callable, xs: Any, block: int, n_valid: int | jax.Array | None = None
) -> tuple[Any, Any]:
    """``jax.vmap(f)(xs)`` computed ``block`` trials at a time, updating ``xs`` in place.

    ``f(x) -> (new_x, y)`` with ``new_x`` shaped like ``x``. Unlike ``lax.map``, whose stacked
    outputs are a second buffer next to its inputs, the loop carries ``xs`` itself and writes
    each block back where it was read, so the parameters of all trials exist once (plus one
    block's working copy). The block is the largest divisor of the batch not above ``block``.

    ``n_valid`` (may be traced): only the blocks holding one of the first ``n_valid`` trials
    run; the trials of the others (padding) keep their ``xs`` and get zero outputs. Each
    trial that runs is computed exactly as without padding (one trial or one block at a time).
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    block = max(d for d in range(1, min(block, n) + 1) if n % d == 0)
    count = None if n_valid is None else (n_valid + block - 1) // block

    def run_block(start, xb, _):
        if block == 1:
            new, y = f(jax.tree.map(lambda a: a[0], xb))
            return jax.tree.map(lambda a: a[None], (new, y))
        return jax.vmap(f)(xb)

    return loop_blocks(run_block, n, block, carry=xs, count=count)


def blocked_rows(fn: Callable[[jax.Array], Any], n: int, block: int):
    """``fn(row_indices) -> (block, ...)`` over row blocks, written into one ``(n, ...)`` array
    inside one ``jit`` (:func:`loop_blocks` with ``clamp``)."""
    if block >= n:
        return fn(jnp.arange(n))

    @jax.jit
    def run():
        rows = lambda start, c, x: (None, fn(start + jnp.arange(block, dtype=jnp.int32)))  # noqa: E731
        return loop_blocks(rows, n, block, clamp=True)[1]

    return run()
