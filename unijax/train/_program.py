"""The batched, sharded, compiled training programs, and running them chunk by chunk.

Two programs per run, both over the whole padded trial batch laid along the mesh axis
``unijax._batch.BATCH_AXIS`` (``shard_map``, no collectives: every trial is independent):

* ``start``: draw (or take) each trial's parameters and measure them (entry 0 of the records);
* ``chunk``: one chunk of epochs (``unijax.train._epoch.chunk_fn``), the carry's buffers
  donated from one chunk to the next, so memory holds the parameters once.

The trial batch is padded to its bucket (``unijax._batch.trial_bucket``: a multiple of 8
trials, a lone trial not padded, then of the device count), so one pair of programs serves
every seed count of a bucket.
Within a device the trials run as one ``vmap`` (``vmap_size=None``) or in blocks of
``vmap_size`` inside one loop that updates them in place and skips the blocks holding only
padding (``unijax._batch.map_in_place``); the start program skips those blocks too, so training
``S`` seeds draws ``S`` networks, and the padding trials' parameters stay zero.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from unijax import _batch, _progress, distributed
from unijax.train._epoch import Obs, Spec, chunk_fn, start_fn
from unijax.train._nets import Net
from unijax.train._request import Request


class Programs(NamedTuple):
    """The jitted programs of one run (see the module docstring)."""

    # (n_valid (n_dev,), seeds (B,), gains (B,), key, x, y[, given params])
    #     -> (carry (B, ...), obs at init)
    start: Callable
    # (carry, n_valid (n_dev,), lr, x, y, ts, slots, active)
    #     -> (carry, (((loss, hyw) per epoch, obs at the end), copy of the record buffers))
    chunk: Callable


def build_programs(
    spec: Spec, net: Net, mesh: Mesh, n_slots: int, masked: bool, vmap_size: int | None
) -> Programs:
    """Batch the one-trial functions over the trial axis and shard them over ``mesh``.

    ``vmap_size``: None for one ``vmap`` per device; an int ``k`` for blocks of ``k`` trials,
    one after another (``lax.map`` at the start, the in-place loop in the chunks).
    """
    start_one = start_fn(spec, net, n_slots)
    chunk_one = chunk_fn(spec, net, masked)
    batch, rep = P(_batch.BATCH_AXIS), P()

    def shard(f, in_specs, out_specs):
        # No collectives: every trial is independent, so skip the varying-axis type checks.
        return jax.shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )

    def over_trials(one, xs, n_valid):
        if vmap_size is None:
            return jax.vmap(one)(xs)  # padding trials computed, then dropped
        # Only the blocks holding a real trial run: S seeds draw S networks, not the bucket's
        # width (drawing the default network, 4.8 M normal numbers, costs as much as tens of
        # epochs of training it). The padding trials' outputs stay zero; the chunk loop skips
        # them as well.
        n = jax.tree.leaves(xs)[0].shape[0]
        # The block of _batch.map_in_place: the largest divisor of n not above vmap_size.
        block = max(d for d in range(1, min(vmap_size, n) + 1) if n % d == 0)

        def run_block(start, _, xb):
            if block == 1:
                return None, jax.tree.map(lambda a: a[None], one(jax.tree.map(lambda a: a[0], xb)))
            return None, jax.vmap(one)(xb)

        count = (n_valid[0] + block - 1) // block
        return _batch.loop_blocks(run_block, n, block, inputs=xs, count=count)[1]

    def v_chunk(carry, n_valid, lr, x, y, ts, slots, active):
        one = functools.partial(chunk_one, lr=lr, x=x, y=y, ts=ts, slots=slots, active=active)
        if vmap_size is None:
            carry, out = jax.vmap(one)(carry)  # padding trials computed, then dropped
        else:
            carry, out = _batch.map_in_place(one, carry, vmap_size, n_valid=n_valid[0])
        # The chunk's representation records, copied out before the carry is donated to the
        # next chunk. Copied here, whole: slicing them outside compiled a small program for
        # every records-per-chunk count (about 50 ms each; 12 s of E8 at the quick preset).
        return carry, (out, carry.buf)

    if spec.params_mode is None:
        def v_start(n_valid, seeds, gains, key, x, y):
            return over_trials(lambda sg: start_one(sg[0], sg[1], key, x, y, None),
                               (seeds, gains), n_valid)
        start_specs = (batch, batch, batch, rep, rep, rep)
    elif spec.params_mode == "shared":
        def v_start(n_valid, seeds, gains, key, x, y, given):
            return over_trials(lambda sg: start_one(sg[0], sg[1], key, x, y, given),
                               (seeds, gains), n_valid)
        start_specs = (batch, batch, batch, rep, rep, rep, rep)
    else:
        def v_start(n_valid, seeds, gains, key, x, y, given):
            return over_trials(lambda a: start_one(a[0], a[1], key, x, y, a[2]),
                               (seeds, gains, given), n_valid)
        start_specs = (batch, batch, batch, rep, rep, rep, batch)

    return Programs(
        start=jax.jit(shard(v_start, start_specs, (batch, batch))),
        chunk=jax.jit(
            shard(v_chunk, (batch, batch) + (rep,) * 6, (batch, batch)),
            donate_argnums=(0,),
        ),
    )


@functools.lru_cache(maxsize=32)
def cached_programs(spec: Spec, net_factory: Callable, mesh: Mesh, n_slots: int, masked: bool,
                    vmap_size: int | None) -> Programs:
    """:func:`build_programs`, one per distinct (hashable) description of a run."""
    return build_programs(spec, net_factory(), mesh, n_slots, masked, vmap_size)


# ---------------------------------------------------------------------------------------------
# Epochs in chunks
# ---------------------------------------------------------------------------------------------


class Schedule(NamedTuple):
    """``n_epochs`` cut into ``n_chunks`` chunks of ``length`` epochs (the last may carry
    ``masked`` padding epochs past the end); ``chunk_of[k]``: the chunk of
    ``record_epochs[k]``; ``n_slots``: the most representation records of one chunk."""

    n_epochs: int
    n_chunks: int
    length: int
    masked: bool
    record_epochs: np.ndarray
    chunk_of: np.ndarray
    n_slots: int

    def inputs(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(ts, slots, active, n_records)`` of chunk ``c``: its epochs ``(length,)``, their
        representation slots (``n_slots``: the trash), whether each is real, and how many
        representation records it takes."""
        ts = np.arange(c * self.length, (c + 1) * self.length)
        slots = np.full(self.length, self.n_slots, np.int32)
        in_chunk = self.record_epochs[self.chunk_of == c]
        slots[in_chunk - c * self.length] = np.arange(in_chunk.size)
        return ts.astype(np.int32), slots, ts < self.n_epochs, int(in_chunk.size)


def schedule(n_epochs: int, chunk_epochs: int, record_epochs: np.ndarray) -> Schedule:
    """Chunks of equal length, as few as ``chunk_epochs`` allows."""
    n_chunks = max(1, math.ceil(n_epochs / chunk_epochs))
    length = math.ceil(n_epochs / n_chunks)
    chunk_of = record_epochs // length
    n_slots = int(np.bincount(chunk_of, minlength=n_chunks).max()) if record_epochs.size else 0
    return Schedule(n_epochs, n_chunks, length, n_chunks * length != n_epochs, record_epochs,
                    chunk_of, n_slots)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


class Raw(NamedTuple):
    """What a run fetched to the host, padding trials dropped (``B`` real trials, gains-major).

    ``obs0``, ``final_obs``: :class:`~unijax.train._epoch.Obs` with leading ``(B,)``;
    ``losses``, ``hyws``: per chunk ``(B, length)`` and ``(B, length, L, 3)`` (or
    ``(B, length, 0)``); ``reps``: per chunk a tuple over layers of ``(B, K_c, P, F_l)``;
    params: ``(B, ...)`` leaves or None; ``n_padded``: padding trials the run carried (see
    ``unijax._batch.trial_bucket``); seconds spent compiling, starting and running.
    """

    obs0: Obs
    final_obs: Obs
    losses: list
    hyws: list
    reps: list
    initial_params: Any
    final_params: Any
    n_padded: int
    compile_s: float
    init_s: float
    run_s: float


def start_compiler_options(platform: str) -> dict[str, object] | None:
    """XLA's options for compiling the start program on ``platform`` (None: XLA's defaults).

    On CPU, XLA's older loop emitters for its elementwise fusions
    (``xla_cpu_use_fusion_emitters=False``): the start program (drawing the weights, one
    measuring pass) runs once per call, so its compilation is most of what it costs, and the
    older emitters compile it faster (on the 2-core Xeon: 1.05 -> 0.84 s at width 64 and 20
    layers; the paper's default network, width 500, first call's compile 1.87 -> 1.15 s, its
    draw as fast) with the same parameters and measurements bit for bit
    (``tests/test_train.py``). The chunk programs keep XLA's defaults: with the older emitters
    their epochs ran twice as long.
    """
    return {"xla_cpu_use_fusion_emitters": False} if platform == "cpu" else None


class _Clock:
    """Compile seconds kept apart from the rest (``lower().compile()`` is timed)."""

    def __init__(self):
        self.compile_s = 0.0

    def compile(self, fn, *args, options: dict[str, object] | None = None):
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile(options)  # None: XLA's defaults
        self.compile_s += time.perf_counter() - t0
        return compiled


def execute(req: Request) -> Raw:
    """Run the checked request ``req`` on its devices.

    The grid is flattened gains-major (trial ``b = g * n_seeds + s``) and padded to its bucket
    with copies of the last trial; the padding is dropped from every output.
    """
    bucket = _batch.trial_bucket(req.n_trials, len(req.devices))
    sched = schedule(req.n_epochs, req.chunk_epochs, req.record_epochs)
    mesh = _batch.batch_mesh(req.devices)
    if req.cacheable:
        progs = cached_programs(req.spec, req.net_factory, mesh, sched.n_slots, sched.masked,
                                req.vmap_size)
    else:
        progs = build_programs(req.spec, req.net_factory(), mesh, sched.n_slots, sched.masked,
                               req.vmap_size)
    put = _placer(mesh)
    idx = bucket.index
    dtype = jnp.dtype(req.spec.dtype)
    x = put(jnp.asarray(np.asarray(req.dataset.x), dtype))
    y = put(jnp.asarray(np.asarray(req.dataset.y), dtype))
    n_valid = put(bucket.n_valid, True)
    start_args = [n_valid,
                  put(np.asarray(np.tile(req.seeds, len(req.gains))[idx], np.uint32), True),
                  put(np.asarray(np.repeat(req.gains, len(req.seeds))[idx], dtype), True),
                  put(req.key), x, y]
    if req.spec.params_mode == "shared":
        start_args.append(jax.tree.map(put, req.given_params))
    elif req.spec.params_mode == "trial":
        # Padding trials start from the last trial's parameters, like their seed and gain.
        start_args.append(jax.tree.map(lambda a: put(np.asarray(a)[idx], True),
                                       req.given_params))
    clock = _Clock()
    t_start = time.perf_counter()
    options = start_compiler_options(req.devices[0].platform)
    carry, obs0 = clock.compile(progs.start, *start_args, options=options)(*start_args)
    initial_params = _batch.gather(carry.params, bucket.rows) if req.return_params else None
    obs0 = _batch.gather(obs0, bucket.rows)
    init_s = time.perf_counter() - t_start - clock.compile_s

    t_run, compile_before = time.perf_counter(), clock.compile_s
    shared = (n_valid, put(np.asarray(req.lr, dtype)), x, y)
    final_obs, losses, hyws, reps, final_params = _run_chunks(
        req, progs.chunk, carry, shared, sched, put, clock, bucket.rows
    )
    run_s = time.perf_counter() - t_run - (clock.compile_s - compile_before)
    return Raw(obs0, final_obs, losses, hyws, reps, initial_params, final_params,
               bucket.n_padded, clock.compile_s, init_s, run_s)


def _placer(mesh: Mesh) -> Callable:
    """``put(a, split=False)``: ``a`` on ``mesh``, split along the batch axis or replicated."""
    batched = NamedSharding(mesh, P(_batch.BATCH_AXIS))
    replicated = NamedSharding(mesh, P())
    return lambda a, split=False: distributed.put(a, batched if split else replicated)


def _run_chunks(req: Request, chunk, carry, shared, sched: Schedule, put, clock: _Clock,
                rows: np.ndarray):
    """Every chunk of epochs in turn, the carry donated from one to the next. Outputs stay on
    the devices until the last chunk is queued, then come to the host cut to the real trials
    (at ``rows``): ``(final_obs, losses, hyws, reps, final_params)`` (see :class:`Raw`)."""
    losses, hyws, reps, n_kept = [], [], [], []
    compiled = None
    with _progress.bar(sched.n_chunks, f"train {req.name}", "chunk") as pbar:
        for c in range(sched.n_chunks):
            ts, slots, active, n_records = sched.inputs(c)
            args = (carry, *shared, put(ts), put(slots), put(active))
            if compiled is None:
                compiled = clock.compile(chunk, *args)
            carry, (((loss_c, hyw_c), final_obs), bufs) = compiled(*args)
            losses.append(loss_c)
            hyws.append(hyw_c)
            if req.spec.record_points:
                reps.append(bufs)
                n_kept.append(n_records)
            if not pbar.disable:
                jax.block_until_ready(loss_c)  # a bar that moves when the work is done
            pbar.update()
    final_obs, losses, hyws, reps = _batch.gather((final_obs, losses, hyws, reps), rows)
    reps = [tuple(b[:, :k] for b in bufs) for bufs, k in zip(reps, n_kept, strict=True)]
    final_params = _batch.gather(carry.params, rows) if req.return_params else None
    return final_obs, losses, hyws, reps, final_params
