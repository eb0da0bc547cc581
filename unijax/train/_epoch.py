"""One trial: its observables, one epoch, and a chunk of epochs as one ``lax.scan`` that records.

Everything here is written for a single trial (one seed, one gain); ``unijax.train._program``
adds the trial axis and the devices. Time is in epochs and records are taken *before* the
update of their epoch (entry ``t`` describes the network after ``t`` updates).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from unijax import _record
from unijax.train._nets import Net
from unijax.train._step import loss as named_loss


class Spec(NamedTuple):
    """Everything static about a run (hashable: it keys the cache of compiled programs).

    Learning rate, gains, seeds and epochs are runtime arguments, so sweeping them reuses the
    compiled programs.
    """

    net_key: Any  # hashable description of the network: a NetSpec (or the user's module)
    layers: tuple
    optimizer: Any  # "sgd", "adam" or an optax.GradientTransformation (train_model)
    batch_size: int | None
    n_points: int
    pair: tuple[int, int] | None
    record_points: tuple[int, ...]
    dtype: str
    loss: str = "half_mse"  # a name of configs.LOSSES (used when loss_fn is None)
    params_mode: str | None = None  # given initial params: None (drawn), "shared" or "trial"
    # (pred (out_dim,), target (out_dim,)) -> () per-point loss of train_model; None: ``loss``
    loss_fn: Callable | None = None


class Carry(NamedTuple):
    """One trial's state between epochs."""

    params: Any
    opt_state: Any
    buf: tuple  # per recorded layer: (K_chunk + 1, P, F_l) representation slots (last = trash)
    key: jax.Array  # the trial's data key (mini-batch shuffles, dropout); never updated


class Obs(NamedTuple):
    """What one deterministic forward pass over the whole data set measures."""

    loss: jax.Array  # ()
    hyw: jax.Array  # (L, 3) or (0,) without a pair
    reps: tuple  # per layer (P, F_l)
    out: jax.Array  # (P, out_dim)


def optimizer(name, lr: jax.Array) -> optax.GradientTransformation:
    """Optax's SGD or Adam (``lr`` may be traced), or the user's own transformation."""
    # Same defaults as torch.optim.SGD / Adam (betas 0.9, 0.999; eps 1e-8).
    if isinstance(name, optax.GradientTransformation):
        return name  # the user's own (train_model), its learning rate built in
    return optax.sgd(lr) if name == "sgd" else optax.adam(lr)


def _mean_loss(spec: Spec, out, y, weights=None):
    """The training loss of ``spec``: a named loss, or the mean of the user's per-point loss
    (over the points of weight 1 when ``weights: (n,)`` is given)."""
    if spec.loss_fn is None:
        return named_loss(spec.loss, out, y, weights)
    per_point = jax.vmap(spec.loss_fn)(out, y)
    if weights is None:
        return jnp.mean(per_point)
    return jnp.sum(weights * per_point) / jnp.sum(weights)


def observe_pass(spec: Spec, out, reps, y) -> Obs:
    """Observables of one deterministic forward pass over the whole data set."""
    loss = _mean_loss(spec, out, y)
    if spec.pair is not None:
        hyw = jnp.stack([_record.pair_observables(r, out, y, pair=spec.pair) for r in reps])
    else:
        hyw = jnp.zeros((0,), out.dtype)
    idx = jnp.asarray(spec.record_points, jnp.int32)
    reps_sel = tuple(r[idx] for r in reps) if spec.record_points else ()
    out_sel = out[idx] if spec.record_points else jnp.zeros((0,), out.dtype)
    return Obs(loss, hyw, reps_sel, out_sel)


def measure_fn(spec: Spec, net: Net) -> Callable:
    """``measure(params, x, y) -> Obs``: a deterministic forward pass (no dropout)."""

    def measure(params, x, y) -> Obs:
        out, reps = net.apply(params, x, False, None)
        return observe_pass(spec, out, reps, y)

    return measure


def epoch_fn(spec: Spec, net: Net) -> Callable:
    """``epoch(carry, t, lr, x, y) -> (carry, obs)`` for one trial; obs measured before update.

    Full batch and a deterministic network: the gradient's forward pass *is* the measurement
    (the hand-fused step for dense SGD, else ``jax.value_and_grad``). Otherwise a separate
    measuring pass, then a scan over the epoch's (shuffled) mini-batches.
    """
    if spec.batch_size is None and not net.stochastic:
        if (isinstance(spec.optimizer, str) and spec.optimizer == "sgd"
                and net.dense_sgd is not None and spec.loss_fn is None):
            return _dense_epoch(spec, net)
        return _autodiff_epoch(spec, net)
    return _minibatch_epoch(spec, net)


def _dense_epoch(spec: Spec, net: Net) -> Callable:
    def epoch(carry: Carry, t, lr, x, y):
        params, out, reps = net.dense_sgd(carry.params, x, y, lr, loss=spec.loss)
        return carry._replace(params=params), observe_pass(spec, out, reps, y)

    return epoch


def _autodiff_epoch(spec: Spec, net: Net) -> Callable:
    def full_loss(params, x, y):
        out, reps = net.apply(params, x, False, None)
        return _mean_loss(spec, out, y), (out, reps)

    def epoch(carry: Carry, t, lr, x, y):
        tx = optimizer(spec.optimizer, lr)
        (_, (out, reps)), grads = jax.value_and_grad(full_loss, has_aux=True)(
            carry.params, x, y
        )
        obs = observe_pass(spec, out, reps, y)
        updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
        params = optax.apply_updates(carry.params, updates)
        return carry._replace(params=params, opt_state=opt_state), obs

    return epoch


def _minibatch_epoch(spec: Spec, net: Net) -> Callable:
    measure = measure_fn(spec, net)
    n = spec.n_points
    bs = n if spec.batch_size is None else min(spec.batch_size, n)
    n_batches = -(-n // bs)

    def batch_loss(params, xb, yb, mb, key):
        out, _ = net.apply(params, xb, True, key)
        # Mean over the real points of the batch only (padding has mb = 0), as a DataLoader
        # with drop_last=False would give for the last, smaller batch.
        return _mean_loss(spec, out, yb, mb)

    def epoch(carry: Carry, t, lr, x, y):
        tx = optimizer(spec.optimizer, lr)
        obs = measure(carry.params, x, y)
        # Epoch keys come from the trial key and the epoch index, so they do not depend on
        # how the run is cut into chunks.
        k_shuffle, k_drop = jax.random.split(jax.random.fold_in(carry.key, t))
        if spec.batch_size is None:
            order = jnp.arange(n)
        else:
            order = jax.random.permutation(k_shuffle, n)
        pad = n_batches * bs - n
        order = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)]).reshape(n_batches, bs)
        mask = (jnp.arange(n_batches * bs) < n).astype(x.dtype).reshape(n_batches, bs)

        def step(c, inp):
            params, opt_state = c
            b, idx, mb = inp
            grads = jax.grad(batch_loss)(params, x[idx], y[idx], mb, jax.random.fold_in(k_drop, b))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(
            step, (carry.params, carry.opt_state), (jnp.arange(n_batches), order, mask)
        )
        return carry._replace(params=params, opt_state=opt_state), obs

    return epoch


def start_fn(spec: Spec, net: Net, n_slots: int) -> Callable:
    """``start(seed, gain, key, x, y, given) -> (Carry, Obs at init)`` for one trial.

    One key per seed, shared by every gain (common random numbers: the init draws of a seed
    are the same at every gain, only scaled); ``fold_in`` makes seed ``s`` reproducible
    whatever else is in the grid. ``given``: the trial's initial parameters, or None to draw
    them. ``n_slots``: representation records per chunk (plus one trash slot).
    """
    measure = measure_fn(spec, net)

    def start(seed, gain, key, x, y, given):
        k_init, k_data = jax.random.split(jax.random.fold_in(key, seed))
        params = net.init(k_init, gain, x) if given is None else given
        obs = measure(params, x, y)
        buf = tuple(jnp.zeros((n_slots + 1,) + r.shape, r.dtype) for r in obs.reps)
        opt_state = optimizer(spec.optimizer, 1.0).init(params)
        return Carry(params, opt_state, buf, k_data), obs

    return start


def chunk_fn(spec: Spec, net: Net, masked: bool) -> Callable:
    """``chunk(carry, lr, x, y, ts, slots, active) -> (carry, ((loss, hyw), Obs))``: one trial
    through the epochs ``ts`` (``(C,)``) in one ``lax.scan``.

    Per epoch it records the loss ``()`` and ``hyw`` (``(L, 3)``), stacked to ``(C, ...)``;
    the representations of epoch ``ts[i]`` go to ``carry.buf[l][slots[i]]`` (the last slot is
    the trash of unrecorded epochs). ``masked``: epochs with ``active[i]`` false (padding past
    the end of the run, last chunk only) leave the carry alone and record NaN. The returned
    ``Obs`` measures the state after the chunk (the last chunk's is the final state).
    """
    epoch = epoch_fn(spec, net)
    measure = measure_fn(spec, net)
    dtype = jnp.dtype(spec.dtype)

    def chunk(carry: Carry, lr, x, y, ts, slots, active):
        def run(c, t, slot):
            c, obs = epoch(c, t, lr, x, y)
            # Every epoch writes its representations to a slot; epochs that are not recorded
            # write to the last ("trash") slot. No per-epoch params are kept.
            buf = tuple(b.at[slot].set(r) for b, r in zip(c.buf, obs.reps, strict=True))
            return c._replace(buf=buf), (obs.loss, obs.hyw)

        def skip(c, t, slot):
            nan = jnp.array(jnp.nan, dtype)
            hyw = jnp.full((len(spec.layers), 3) if spec.pair else (0,), jnp.nan, dtype)
            return c, (nan, hyw)

        def step(c, inp):
            t, slot, on = inp
            return jax.lax.cond(on, run, skip, c, t, slot) if masked else run(c, t, slot)

        carry, recs = jax.lax.scan(step, carry, (ts, slots, active))
        # One forward pass per chunk measures the state after it: saves compiling a separate
        # measuring program.
        return carry, (recs, measure(carry.params, x, y))

    return chunk
