"""The training engine: a grid of init seeds x gains trained in one compiled call.

Written for one trial (one seed, one gain); ``vmap`` adds the trial axis, ``lax.scan`` loops
over epochs, and the flattened ``gains * seeds`` batch of trials is laid out over all devices
with a ``jax.sharding.Mesh`` (``shard_map`` over a 1-D ``"batch"`` axis; the batch is padded
to a multiple of the device count and the padding stripped again). After
:func:`unijax.distributed.initialize` the mesh spans the devices of every process, each process
makes the same call, and every process gets the whole result. Long runs are cut
into chunks of epochs, one compiled ``scan`` per chunk with the parameters carried (and their
buffers donated) from one chunk to the next, so memory holds the parameters once and only the
recorded observables grow with the number of epochs (64 seeds of the default network, 1.2 GB
of weights, peak at 1.7 GB of process memory on CPU).

Within a device the trials run as one ``vmap`` on GPU/TPU; on CPU (``vmap_size="auto"``) they
run one after another inside the same compiled loop, updated in place, because XLA:CPU's
batched small matrix products are slower per trial than unbatched ones: the work per trial is
memory bound, so the per-trial cost stays flat in the number of trials. Full-batch gradient
descent on the dense networks (``mlp``, ``skip``) uses a hand-fused step that reads every
weight twice and writes it once per epoch (see ``_dense_sgd_step``); everything else (Adam,
mini-batches, dropout, convolutions, your own network) uses ``jax.grad`` and Optax.

Time is measured in epochs. **Records are taken before the update of their epoch**: entry
``t`` of every per-epoch record describes the network after ``t`` epochs of training, so entry
``0`` is the initialization, and ``final_*`` is the state after the last epoch (``epochs``
updates). For two-point data, with ``(x1, y1), (x2, y2)`` the pair, ``h_l(x)`` the recorded
hidden layer and ``f`` the network (docs/theory.md section 2):

    h = ||h_l(x2) - h_l(x1)||^2,   y = ||f(x2) - f(x1)||^2,   w = y - (y2 - y1) . (f(x2) - f(x1))

and the training loss of ``config.loss`` over all points and output dimensions:
``0.5 * mean((f(x) - y)^2)`` (``"half_mse"``, the default) or ``mean((f(x) - y)^2)``
(``"mse"``, PyTorch's ``nn.MSELoss()``). With full-batch
gradient descent and no dropout these come from the same forward pass as the gradient of that
epoch (no extra forward); with mini-batches or dropout a separate deterministic forward pass
(dropout off) over the whole data set measures them.

Training can start from given parameters instead of Xavier draws (``params=`` of :func:`train`
and :func:`train_model`: a checkpoint, or a PyTorch network's weights through
:func:`unijax.nets.params_from_torch`); with the same weights, loss and optimizer the
trajectories match PyTorch's to float32 rounding (``tests/test_parity.py``).

Example:
    >>> from unijax import configs, train
    >>> cfg = configs.get("default", width=32, depth=4, epochs=300)
    >>> res = train.train(cfg, seeds=4, gains=[0.5, 1.0])
    >>> res.h.shape, res.diverged.shape          # (n_gains, n_seeds, n_epochs), (n_gains, n_seeds)
    ((2, 4, 300), (2, 4))
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _batch, _cache, _progress, distributed, nets, observe
from . import data as data_lib
from ._checks import (
    check_bool,
    check_finite,
    check_int,
    check_memory,
    check_seeds,
    memory_bytes,
)
from ._keep import Keepable
from .configs import TrainConfig

__all__ = [
    "TrainResult",
    "train",
    "train_model",
    "init_params",
    "hidden_observables",
    "make_network",
    "load_data",
]

# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


class TrainResult(Keepable, eqx.Module):
    """Recorded observables of a grid of ``n_gains x n_seeds`` training runs (a frozen pytree).

    Time is in epochs; entry ``t`` of a per-epoch record is taken *before* the update of epoch
    ``t`` (entry 0 = initialization); ``final_*`` is after the last update. ``L`` below is the
    number of recorded layers; arrays have the layer axis only when ``layer_axis`` is true
    (``layers`` was given as a sequence or ``"all"``).

    Attributes:
        gains: ``(n_gains,)`` Xavier gains.
        seeds: ``(n_seeds,)`` integer seeds.
        loss: ``(n_gains, n_seeds, n_epochs)``, the training loss over the whole data set
            (``config.loss``: 0.5 * MSE by default, or MSE; for :func:`train_model` with a
            per-point ``loss`` function, the mean of that function over the points).
        h, y, w: ``(n_gains, n_seeds, n_epochs)`` or ``(n_gains, n_seeds, L, n_epochs)``: the
            two-point observables of the recorded pair (``None`` without a pair). ``y`` and
            ``w`` do not depend on the layer and are repeated along the layer axis.
        final_loss: ``(n_gains, n_seeds)``; ``final_h``, ``final_y``, ``final_w``:
            ``(n_gains, n_seeds)`` or ``(n_gains, n_seeds, L)``.
        diverged: ``(n_gains, n_seeds)`` bool: loss NaN/inf or above ``divergence_threshold``.
        diverged_epoch: ``(n_gains, n_seeds)`` int, the first epoch whose record (or
            ``n_epochs`` for the final state) is bad, ``-1`` if none. Records after it are NaN.
        record_epochs: ``(K,)`` epochs at which hidden representations were recorded.
        record_points: ``(P,)`` indices of the data points whose representations are recorded.
        reps: representations at ``record_epochs``: ``(n_gains, n_seeds, K, P, F)`` for one
            layer; for several layers a tuple of such arrays, one per layer (``F`` may differ
            between layers of the conv network). ``None`` without ``record_points``.
        initial_reps, final_reps: as ``reps`` without the ``K`` axis.
        initial_outputs, final_outputs: ``(n_gains, n_seeds, P, out_dim)`` network outputs of
            the recorded points (``None`` without ``record_points``).
        initial_params, final_params: parameters with leading ``(n_gains, n_seeds)`` axes when
            ``return_params=True``, else ``None``.
        dx2, dy2: squared input and target distances of the recorded pair (``nan`` if none).
        config: the :class:`~unijax.configs.TrainConfig` (``None`` for :func:`train_model`).
        name, layers, pair, optimizer, lr, batch_size, data_name: what was run.
        n_devices: devices the trial batch was sharded over; n_padded: padding trials that were
            added so the batch divides the device count (computed, then discarded).
        compile_s, init_s, run_s: wall seconds spent compiling, initializing (drawing the
            weights and measuring them) and training (every epoch, the final measurement and
            fetching the records), each without the others.
    """

    gains: jax.Array
    seeds: jax.Array
    loss: jax.Array
    h: jax.Array | None
    y: jax.Array | None
    w: jax.Array | None
    final_loss: jax.Array
    final_h: jax.Array | None
    final_y: jax.Array | None
    final_w: jax.Array | None
    diverged: jax.Array
    diverged_epoch: jax.Array
    record_epochs: jax.Array
    record_points: jax.Array
    reps: Any
    initial_reps: Any
    final_reps: Any
    initial_outputs: jax.Array | None
    final_outputs: jax.Array | None
    initial_params: Any
    final_params: Any
    dx2: float = eqx.field(static=True)
    dy2: float = eqx.field(static=True)
    config: TrainConfig | None = eqx.field(static=True)
    name: str = eqx.field(static=True)
    layers: tuple = eqx.field(static=True)
    layer_axis: bool = eqx.field(static=True)
    pair: tuple[int, int] | None = eqx.field(static=True)
    optimizer: str = eqx.field(static=True)
    lr: float = eqx.field(static=True)
    batch_size: int | None = eqx.field(static=True)
    divergence_threshold: float = eqx.field(static=True)
    data_name: str = eqx.field(static=True)
    n_devices: int = eqx.field(static=True)
    n_padded: int = eqx.field(static=True)
    compile_s: float = eqx.field(static=True)
    init_s: float = eqx.field(static=True)
    run_s: float = eqx.field(static=True)

    @property
    def n_epochs(self) -> int:
        return int(self.loss.shape[-1])

    @property
    def ts(self) -> jax.Array:
        """``(n_epochs,)`` float times in epochs of the per-epoch records: ``0 .. n_epochs-1``."""
        return jnp.arange(self.n_epochs, dtype=self.loss.dtype)

    @property
    def n_diverged(self) -> int:
        """Number of diverged trials."""
        return int(np.sum(np.asarray(self.diverged)))

    def hyw(self) -> jax.Array:
        """``(n_gains, n_seeds, [L,] n_epochs, 3)``: ``(h, y, w)`` stacked for the fitter."""
        if self.h is None:
            raise ValueError("no two-point observables were recorded (pair=None)")
        return jnp.stack([self.h, self.y, self.w], axis=-1)

    def summary(self) -> str:
        """A few human-readable lines: grid, divergence per gain, final loss, timings."""
        g, s = self.diverged.shape
        div = np.asarray(self.diverged)
        lines = [
            f"TrainResult {self.name!r}: {g} gains x {s} seeds, {self.n_epochs} epochs, "
            f"{self.optimizer}" + (f" lr={self.lr:g}" if math.isfinite(self.lr) else "")
            + (f" batch={self.batch_size}" if self.batch_size else " full batch")
            + f", layers {list(self.layers)}, data {self.data_name}",
            f"devices: {self.n_devices} ({self.n_padded} padding trials computed and dropped); "
            f"compile {self.compile_s:.2f} s, init {self.init_s:.2f} s, run {self.run_s:.2f} s",
            f"diverged: {int(div.sum())}/{div.size} trials (threshold "
            f"{self.divergence_threshold:g})",
        ]
        epochs = np.asarray(self.diverged_epoch)
        for i, gain in enumerate(np.asarray(self.gains)):
            if div[i].any():
                lines.append(
                    f"  gain {gain:g}: {int(div[i].sum())}/{s} diverged, first at epoch "
                    f"{int(epochs[i][div[i]].min())}"
                )
        ok = ~div
        if ok.any():
            fl = np.asarray(self.final_loss)[ok]
            lines.append(
                f"final loss over {int(ok.sum())} non-diverged trials: median {np.median(fl):.3g}"
                f" (min {fl.min():.3g}, max {fl.max():.3g})"
            )
        return "\n".join(lines)


    def to_xarray(self):
        """``xarray.Dataset`` with dims ``gain, seed, [layer,] epoch, variable`` (see
        :func:`unijax.results.to_xarray`; needs ``unijax[labels]``)."""
        from unijax import results

        return results.to_xarray(self)

    def to_dataframe(self):
        """Tidy ``pandas.DataFrame``: a row per ``(gain, seed, [layer,] epoch)``, columns
        ``loss, h, y, w`` (see :func:`unijax.results.to_dataframe`)."""
        from unijax import results

        return results.to_dataframe(self)


# --------------------------------------------------------------------------------------------
# Networks as pure functions of one trial
# --------------------------------------------------------------------------------------------


class _Net(NamedTuple):
    """A network as two pure functions of one trial.

    ``init(key, gain, x) -> params``; ``apply(params, x, train, key) -> (out, reps)`` with
    ``out: (n, out_dim)`` and ``reps`` a tuple of ``(n, F_l)`` arrays, one per recorded layer.
    """

    init: Callable
    apply: Callable
    stochastic: bool  # training forward differs from measuring forward (dropout)
    # ``(params, x, y, lr) -> (new_params, out, reps)``: one fused full-batch SGD step (see
    # _dense_sgd_step), for the dense built-in networks; None otherwise.
    dense_sgd: Callable | None = None


def make_network(config: TrainConfig, out_dim: int = 1) -> nn.Module:
    """The Flax module of ``config`` (architecture, sizes, nonlinearity, dropout, dtype)."""
    return nets.make(
        config.arch,
        width=config.width,
        depth=config.depth,
        out_dim=out_dim,
        nonlinearity=config.nonlinearity,
        dropout=config.dropout,
        gain=config.gain,
        dtype=config.dtype,
        precision=config.precision,
        conv_layout=config.conv_layout,
    )


def _builtin_net(module: nn.Module, layers: tuple[int, ...]) -> _Net:
    def init(key, gain, x):
        return nets.init(module, x, key=key, gain=gain)

    def apply(params, x, train, key):
        rngs = {"dropout": key} if (train and module.dropout) else None
        out, hiddens = module.apply({"params": params}, x, train=train, rngs=rngs)
        return out, tuple(hiddens[layer] for layer in layers)

    dense_sgd = None
    if isinstance(module, nets.MLP) and not module.dropout:
        dense_sgd = functools.partial(
            _dense_sgd_step,
            depth=module.depth,
            phi=nets.NONLINEARITIES[module.nonlinearity],
            skip=module.skip,
            layers=layers,
            precision=nets._PRECISIONS[module.precision],
        )
    return _Net(init, apply, bool(module.dropout), dense_sgd)


def _outer_sum(a: jax.Array, d: jax.Array, precision=None) -> jax.Array:
    """``a.T @ d`` (``(P, n) x (P, m) -> (n, m)``), the weight gradient of a dense layer."""
    if a.shape[0] <= 4:
        # A sum of P outer products is elementwise, so XLA fuses it into the weight update:
        # the gradient matrix is never written to memory.
        return sum(a[p][:, None] * d[p][None, :] for p in range(a.shape[0]))
    return jnp.dot(a.T, d, precision=precision)


def _dense_sgd_step(params, x, y, lr, *, depth, phi, skip, layers, precision, loss="half_mse"):
    """One full-batch gradient-descent step of the dense network ``nets.MLP``, by hand.

    Same mathematics as ``jax.grad`` of the loss (``"half_mse"``: ``0.5 * mean((f(x) - y)^2)``,
    ``"mse"``: ``mean((f(x) - y)^2)``) followed by
    ``W <- W - lr * dL/dW`` (tests check the two agree), arranged so that every weight matrix
    is read twice and written once per step, the least a layer-by-layer backward pass can do:
    the forward pass reads ``W``; the backward pass writes ``W_new = W - lr * A^T D`` in place
    (``A`` the layer's inputs, ``D = dL/dz`` its output gradients, ``(P, n)`` and ``(P, m)``
    for ``P`` points; for ``P <= 4`` the outer products fuse into the update) and then obtains
    the gradient for the layer below from the *updated* matrix,

        D W^T = D W_new^T + lr (D D^T) A,

    which is exact algebra: ``W_new`` is read while it is still in cache and the old ``W`` is
    dead once updated, so XLA need not copy it (with autodiff it keeps a copy of every ``W``
    alive for the backward pass: ~8 instead of ~4 passes over the parameters per step).

    Returns:
        ``(new_params, out, reps)``: the forward pass's output ``(P, out_dim)`` and the hidden
        activations of ``layers`` (before the update), for the epoch's records.
    """
    names = [f"dense_{k}" for k in range(depth + 1)]
    ws = [params[n]["kernel"] for n in names]
    bs = [params[n]["bias"] for n in names]
    dtype = ws[0].dtype
    lr = jnp.asarray(lr, dtype)
    x = jnp.asarray(x, dtype)
    inputs, zs, hs = [], [], []
    a = x
    for k in range(depth + 1):
        inputs.append(a)
        z = jnp.dot(a, ws[k], precision=precision) + bs[k]
        zs.append(z)
        if k < depth:
            a = phi(z)
            if skip and k >= 2:
                a = a + hs[k - 2]
            hs.append(a)
        else:
            a = z
    out = a
    d = (out - y) * jnp.asarray(_LOSS_SCALE[loss] / out.size, dtype)  # dL/dout
    grad_h: list = [None] * depth  # total dL/dh_k, completed before it is used
    new = {}
    for k in range(depth, -1, -1):
        a_in = inputs[k]
        w_new = ws[k] - lr * _outer_sum(a_in, d, precision)
        new[names[k]] = {"kernel": w_new, "bias": bs[k] - lr * jnp.sum(d, axis=0)}
        if k == 0:
            break
        gram = jnp.dot(d, d.T, precision=precision)
        g = jnp.dot(d, w_new.T, precision=precision) + lr * jnp.dot(
            gram, a_in, precision=precision
        )  # = d @ W_old.T
        if skip and k + 1 <= depth - 1 and k + 1 >= 2:
            g = g + grad_h[k + 1]  # h_{k+1} = phi(z_{k+1}) + h_{k-1}
        grad_h[k - 1] = g
        # The nonlinearity's own derivative (autodiff of phi), so the kinks are PyTorch's
        # (nets.leaky_relu: negative slope at exactly 0) here as in the autodiff paths.
        _, vjp = jax.vjp(phi, zs[k - 1])
        d = vjp(g)[0]
    return new, out, tuple(hs[layer] for layer in layers)


def _custom_net(model: nn.Module, layers: tuple) -> _Net:
    """A user's Flax module whose recorded layers are read by :class:`unijax.observe.Recorder`
    (dict keys, sown values, submodule outputs, or ``(out, hiddens)`` indices)."""
    recorder = observe.Recorder(model, layers)

    def init(key, gain, x):
        params = model.init(key, x)["params"]
        return nets.scale_kernels(params, gain)

    def apply(params, x, train, key):
        del train, key
        return recorder.apply(params, x)

    return _Net(init, apply, False)


# --------------------------------------------------------------------------------------------
# One trial: observables, one epoch, a chunk of epochs
# --------------------------------------------------------------------------------------------


class _Spec(NamedTuple):
    """Everything static about a run (hashable: it keys the cache of compiled programs).

    Learning rate, gains, seeds and epochs are runtime arguments, so sweeping them reuses the
    compiled programs.
    """

    net_key: Any  # hashable description of the network (or the module itself)
    layers: tuple
    optimizer: str
    batch_size: int | None
    n_points: int
    pair: tuple[int, int] | None
    record_points: tuple[int, ...]
    dtype: str
    loss: str = "half_mse"  # a name of configs.LOSSES (used when loss_fn is None)
    params_mode: str | None = None  # given initial params: None (drawn), "shared" or "trial"
    # (pred (out_dim,), target (out_dim,)) -> () per-point loss of train_model; None: ``loss``
    loss_fn: Callable | None = None


class _Carry(NamedTuple):
    params: Any
    opt_state: Any
    buf: tuple  # per recorded layer: (K_chunk + 1, P, F_l) representation slots (last = trash)
    key: jax.Array  # the trial's data key (mini-batch shuffles, dropout); never updated


class _Obs(NamedTuple):
    loss: jax.Array  # ()
    hyw: jax.Array  # (L, 3) or (0,) without a pair
    reps: tuple  # per layer (P, F_l)
    out: jax.Array  # (P, out_dim)


def _optimizer(name, lr: jax.Array) -> optax.GradientTransformation:
    # Same defaults as torch.optim.SGD / Adam (betas 0.9, 0.999; eps 1e-8). lr may be traced.
    if isinstance(name, optax.GradientTransformation):
        return name  # the user's own (train_model), its learning rate built in
    return optax.sgd(lr) if name == "sgd" else optax.adam(lr)


#: ``loss = _LOSS_SCALE[name] * 0.5 * mean((f - y)^2)`` for each of ``configs.LOSSES``.
_LOSS_SCALE = {"half_mse": 1.0, "mse": 2.0}


def _loss(name: str, out: jax.Array, y: jax.Array, weights: jax.Array | None = None):
    """The training loss ``name`` (``configs.LOSSES``): a mean over points and outputs.

    ``weights: (n,)`` (0 or 1) restricts the mean to the points with weight 1 (a padded
    mini-batch), as a PyTorch ``DataLoader`` with ``drop_last=False`` gives for the last batch.
    """
    if name not in _LOSS_SCALE:
        raise ValueError(f"unknown loss={name!r}; valid: {list(_LOSS_SCALE)}")
    c = jnp.asarray(0.5 * _LOSS_SCALE[name], out.dtype)
    if weights is None:
        return c * jnp.mean((out - y) ** 2)
    sq = jnp.mean((out - y) ** 2, axis=-1)
    return c * jnp.sum(weights * sq) / jnp.sum(weights)


def _point_losses(spec: _Spec, out, y):
    """``(n,)`` per-point losses of a user's ``loss_fn`` (only called when it is set)."""
    return jax.vmap(spec.loss_fn)(out, y)


def _observe(spec: _Spec, out, reps, y) -> _Obs:
    """Observables of one deterministic forward pass over the whole data set."""
    if spec.loss_fn is None:
        loss = _loss(spec.loss, out, y)
    else:
        loss = jnp.mean(_point_losses(spec, out, y))
    if spec.pair is not None:
        hyw = jnp.stack([observe.pair_observables(r, out, y, pair=spec.pair) for r in reps])
    else:
        hyw = jnp.zeros((0,), out.dtype)
    idx = jnp.asarray(spec.record_points, jnp.int32)
    reps_sel = tuple(r[idx] for r in reps) if spec.record_points else ()
    out_sel = out[idx] if spec.record_points else jnp.zeros((0,), out.dtype)
    return _Obs(loss, hyw, reps_sel, out_sel)


def _fused(spec: _Spec, net: _Net) -> bool:
    # Full batch and a deterministic network: the gradient's forward pass *is* the measurement.
    return spec.batch_size is None and not net.stochastic


def _epoch_fn(spec: _Spec, net: _Net):
    """``epoch(carry, t, lr, x, y) -> (carry, obs)`` for one trial; obs measured before update."""

    def full_loss(params, x, y):
        out, reps = net.apply(params, x, False, None)
        if spec.loss_fn is not None:
            return jnp.mean(_point_losses(spec, out, y)), (out, reps)
        return _loss(spec.loss, out, y), (out, reps)

    def batch_loss(params, xb, yb, mb, key):
        out, _ = net.apply(params, xb, True, key)
        # Mean over the real points of the batch only (padding has mb = 0), as a DataLoader
        # with drop_last=False would give for the last, smaller batch.
        if spec.loss_fn is None:
            return _loss(spec.loss, out, yb, mb)
        return jnp.sum(mb * _point_losses(spec, out, yb)) / jnp.sum(mb)

    n = spec.n_points
    bs = n if spec.batch_size is None else min(spec.batch_size, n)
    n_batches = -(-n // bs)

    def epoch(carry: _Carry, t, lr, x, y):
        tx = _optimizer(spec.optimizer, lr)
        if (_fused(spec, net) and isinstance(spec.optimizer, str) and spec.optimizer == "sgd"
                and net.dense_sgd is not None and spec.loss_fn is None):
            params, out, reps = net.dense_sgd(carry.params, x, y, lr, loss=spec.loss)
            return carry._replace(params=params), _observe(spec, out, reps, y)
        if _fused(spec, net):
            (_, (out, reps)), grads = jax.value_and_grad(full_loss, has_aux=True)(
                carry.params, x, y
            )
            obs = _observe(spec, out, reps, y)
            updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
            params = optax.apply_updates(carry.params, updates)
            return carry._replace(params=params, opt_state=opt_state), obs

        out, reps = net.apply(carry.params, x, False, None)
        obs = _observe(spec, out, reps, y)
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


def _measure_fn(spec: _Spec, net: _Net):
    def measure(params, x, y) -> _Obs:
        out, reps = net.apply(params, x, False, None)
        return _observe(spec, out, reps, y)

    return measure


# --------------------------------------------------------------------------------------------
# The batched, sharded, compiled programs
# --------------------------------------------------------------------------------------------


class _Programs(NamedTuple):
    # (seeds (B,), gains (B,), key, x, y[, given params]) -> (carry (B, ...), obs at init)
    start: Callable
    # (carry, lr, x, y, ts, slots, active) -> (carry, ((loss, hyw) per epoch, obs at the end))
    chunk: Callable


def _build_programs(
    spec: _Spec, net: _Net, mesh: Mesh, n_slots: int, masked: bool, vmap_size: int | None
) -> _Programs:
    epoch = _epoch_fn(spec, net)
    measure = _measure_fn(spec, net)
    dtype = jnp.dtype(spec.dtype)
    batch, rep = P(_batch.BATCH_AXIS), P()

    def shard(f, in_specs, out_specs):
        # No collectives: every trial is independent, so skip the varying-axis type checks.
        return jax.shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )

    def start_one(seed, gain, key, x, y, given):
        # One key per seed, shared by every gain (common random numbers: the init draws of a
        # seed are the same at every gain, only scaled); fold_in makes seed s reproducible
        # whatever else is in the grid.
        k_init, k_data = jax.random.split(jax.random.fold_in(key, seed))
        params = net.init(k_init, gain, x) if given is None else given
        obs = measure(params, x, y)
        buf = tuple(jnp.zeros((n_slots + 1,) + r.shape, r.dtype) for r in obs.reps)
        opt_state = _optimizer(spec.optimizer, 1.0).init(params)
        return _Carry(params, opt_state, buf, k_data), obs

    def chunk_one(carry: _Carry, lr, x, y, ts, slots, active):
        def body(c, inp):
            t, slot, on = inp

            def run(c):
                c, obs = epoch(c, t, lr, x, y)
                # Every epoch writes its representations to a slot; epochs that are not
                # recorded write to the last ("trash") slot. No per-epoch params are kept.
                buf = tuple(b.at[slot].set(r) for b, r in zip(c.buf, obs.reps, strict=True))
                return c._replace(buf=buf), (obs.loss, obs.hyw)

            if not masked:
                return run(c)

            def skip(c):
                # Padding epochs past the end of the run (last chunk only): no update, NaN
                # records (sliced off on the host).
                nan = jnp.array(jnp.nan, dtype)
                hyw = jnp.full((len(spec.layers), 3) if spec.pair else (0,), jnp.nan, dtype)
                return c, (nan, hyw)

            return jax.lax.cond(on, run, skip, c)

        carry, recs = jax.lax.scan(body, carry, (ts, slots, active))
        # The state after the chunk, measured (one forward pass per chunk; the last chunk's
        # is the final state): saves compiling a separate measuring program.
        return carry, (recs, measure(carry.params, x, y))

    def over_trials(one, xs):
        # The trial axis: one vmap, or vmapped blocks looped by lax.map (see `vmap_size`).
        if vmap_size is None:
            return jax.vmap(one)(xs)
        if vmap_size == 1:
            return jax.lax.map(one, xs)
        return jax.lax.map(one, xs, batch_size=vmap_size)

    def v_chunk(carry, lr, x, y, ts, slots, active):
        one = functools.partial(chunk_one, lr=lr, x=x, y=y, ts=ts, slots=slots, active=active)
        if vmap_size is None:
            return jax.vmap(one)(carry)
        return _batch.map_in_place(one, carry, vmap_size)

    if spec.params_mode is None:
        def v_start(seeds, gains, key, x, y):
            return over_trials(lambda sg: start_one(sg[0], sg[1], key, x, y, None), (seeds, gains))
        start_specs = (batch, batch, rep, rep, rep)
    elif spec.params_mode == "shared":
        def v_start(seeds, gains, key, x, y, given):
            return over_trials(lambda sg: start_one(sg[0], sg[1], key, x, y, given),
                               (seeds, gains))
        start_specs = (batch, batch, rep, rep, rep, rep)
    else:
        def v_start(seeds, gains, key, x, y, given):
            return over_trials(lambda a: start_one(a[0], a[1], key, x, y, a[2]),
                               (seeds, gains, given))
        start_specs = (batch, batch, rep, rep, rep, batch)

    return _Programs(
        start=jax.jit(shard(v_start, start_specs, (batch, batch))),
        chunk=jax.jit(
            shard(v_chunk, (batch, rep, rep, rep, rep, rep, rep), (batch, batch)),
            donate_argnums=(0,),
        ),
    )


@functools.lru_cache(maxsize=32)
def _cached_programs(spec: _Spec, net_factory: Callable, mesh: Mesh, n_slots: int, masked: bool,
                     vmap_size: int | None):
    return _build_programs(spec, net_factory(), mesh, n_slots, masked, vmap_size)


# --------------------------------------------------------------------------------------------
# Argument handling
# --------------------------------------------------------------------------------------------


def _seeds(seeds) -> np.ndarray:
    # Distinct ints in [0, 2**31 - 1]: larger ones alias as uint32 keys and int32 reports.
    return check_seeds(seeds)


def _gains(gains, default: float) -> np.ndarray:
    if gains is None:
        return np.array([default], np.float64)
    try:
        arr = np.atleast_1d(np.asarray(gains, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"gains must be a non-empty sequence of finite numbers > 0, got "
                         f"{gains!r}") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or (arr <= 0).any():
        raise ValueError(f"gains must be a non-empty sequence of finite numbers > 0, got {gains!r}")
    return arr


def _record_epochs(record_every, record_epochs, n_epochs: int) -> np.ndarray:
    out: set[int] = set()
    if record_every is not None:
        if isinstance(record_every, bool) or not isinstance(record_every, (int, np.integer)) or (
            record_every <= 0
        ):
            raise ValueError(f"record_every must be an int > 0 or None, got {record_every=}")
        out.update(range(0, n_epochs, int(record_every)))
    if record_epochs is not None:
        arr = np.atleast_1d(np.asarray(record_epochs))
        if arr.dtype.kind not in "iu" or (arr < 0).any() or (arr >= n_epochs).any():
            raise ValueError(
                f"record_epochs must be ints in [0, {n_epochs - 1}] (records are taken before "
                f"each epoch's update; the final state is always kept), got {record_epochs!r}"
            )
        out.update(int(e) for e in arr)
    return np.array(sorted(out), np.int64)


def _points(record_points, n_points: int) -> tuple[int, ...]:
    if record_points is None:
        return ()
    if isinstance(record_points, (int, np.integer)) and not isinstance(record_points, bool):
        if not 0 < record_points <= n_points:
            raise ValueError(
                f"record_points (a count) must be in [1, {n_points}], got {record_points=}"
            )
        return tuple(range(int(record_points)))
    arr = np.atleast_1d(np.asarray(record_points))
    if arr.size == 0 or arr.dtype.kind not in "iu" or (arr < 0).any() or (arr >= n_points).any():
        raise ValueError(
            f"record_points must be indices in [0, {n_points - 1}], got {record_points!r}"
        )
    return tuple(int(i) for i in arr)


def _pair(pair, n_points: int) -> tuple[int, int] | None:
    if pair is None:
        return (0, 1) if n_points == 2 else None
    if pair is False:
        return None
    try:
        i, j = pair
    except (TypeError, ValueError):
        raise ValueError(f"pair must be two point indices (i, j), got {pair=}") from None
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
           for v in (i, j)):
        raise ValueError(f"pair must be two integer point indices (i, j), got {pair=}")
    if not (0 <= i < n_points and 0 <= j < n_points and i != j):
        raise ValueError(f"pair must be two distinct indices in [0, {n_points - 1}], got {pair=}")
    return (int(i), int(j))


def _devices(devices) -> list:
    if devices is None:
        # All processes' devices after jax.distributed.initialize (then every process must
        # make the same call); the local ones otherwise.
        return list(jax.devices())
    if isinstance(devices, (int, np.integer)):
        local = jax.local_devices()
        if not 1 <= devices <= len(local):
            raise ValueError(f"devices must be in [1, {len(local)}] (local devices), got {devices}")
        return list(local[: int(devices)])
    devs = list(devices)
    if not devs:
        raise ValueError("devices must be None, a count, or a non-empty sequence of devices")
    return devs


def _fetch(tree):
    """``device_get``, gathering arrays spread over several processes to every process."""
    return jax.tree.map(distributed.to_host, tree)


def _vmap_size(vmap_size, devices: list) -> int | None:
    if vmap_size == "auto":
        return 1 if devices[0].platform == "cpu" else None
    if vmap_size == "all":
        return None
    if isinstance(vmap_size, bool) or not isinstance(vmap_size, (int, np.integer)) or (
        vmap_size < 1
    ):
        raise ValueError(f"vmap_size must be 'auto', 'all' or an int >= 1, got {vmap_size=}")
    return int(vmap_size)


def _layers(layers, depth: int, default: int) -> tuple[tuple[int, ...], bool]:
    # ``depth`` here is the number of hidden activations (``nets.n_hidden``).
    if layers is None:
        return (default,), False
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be an int, a sequence of ints or 'all', got {layers!r}")
        return tuple(range(depth)), True
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        seq, axis = (int(layers),), False
    else:
        seq, axis = tuple(layers), True
        if not seq:
            raise ValueError("layers must not be empty")
    for layer in seq:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not (
            0 <= layer < depth
        ):
            raise ValueError(
                f"layers must be hidden-layer indices in [0, {depth - 1}] (depth={depth}), "
                f"got layers={layers!r}"
            )
    return tuple(int(v) for v in seq), axis


def _given_params(
    params: Any, net: _Net, x: jax.Array, dtype: str, n_gains: int, n_seeds: int
) -> tuple[str | None, Any]:
    """Check and lay out initial parameters given to :func:`train` / :func:`train_model`.

    Returns ``(mode, tree)``: ``(None, None)`` without params; ``("shared", one trial's
    tree)`` when every leaf has the network's own shape (every trial starts there); else
    ``("trial", tree)`` with each leaf broadcast to ``(n_gains, n_seeds) + shape`` and flattened
    gains-major to ``(n_gains * n_seeds,) + shape``, the engine's trial order. Leaves are NumPy
    arrays in ``dtype``.
    """
    if params is None:
        return None, None
    dt = np.dtype(jnp.dtype(dtype))
    expected = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.asarray(1.0, dt), x))
    lead = (n_gains, n_seeds)
    tree = nets.check_params(expected, params, lead=lead)
    shared = all(
        np.shape(g) == tuple(e.shape)
        for g, e in zip(jax.tree.leaves(tree), jax.tree.leaves(expected), strict=True)
    )
    if shared:
        return "shared", jax.tree.map(lambda a: np.asarray(a, dt), tree)

    def per_trial(a, e):
        a = np.asarray(a, dt)
        if a.shape == tuple(e.shape):
            a = a[None, None]
        a = np.broadcast_to(a, lead + tuple(e.shape))
        return np.ascontiguousarray(a).reshape((n_gains * n_seeds,) + tuple(e.shape))

    return "trial", jax.tree.map(per_trial, tree, expected)


def load_data(config: TrainConfig) -> data_lib.Dataset:
    """The data set named by ``config.dataset`` in ``config.dtype`` (``"mnist"`` falls back to
    the bundled 8x8 digits when no MNIST path is configured, see ``unijax.data``)."""
    dt = np.dtype(jnp.dtype(config.dtype))
    if config.dataset == "two_points":
        return data_lib.two_points(config.dx2, config.dy2, dtype=dt)
    return data_lib.load(config.dataset, dtype=dt)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def _run(
    *,
    spec: _Spec,
    net_factory: Callable[[], _Net],
    cacheable: bool,
    dataset: data_lib.Dataset,
    seeds: np.ndarray,
    gains: np.ndarray,
    key: jax.Array | None,
    record_epochs: np.ndarray,
    lr: float,
    n_epochs: int,
    chunk_epochs: int,
    devices: list,
    vmap_size: int | None,
    threshold: float,
    layer_axis: bool,
    return_params: bool,
    config: TrainConfig | None,
    name: str,
    given_params: Any = None,
) -> TrainResult:
    return_params = check_bool("return_params", return_params)
    dtype = jnp.dtype(spec.dtype)
    x = jnp.asarray(np.asarray(dataset.x), dtype)
    y = jnp.asarray(np.asarray(dataset.y), dtype)
    if key is None:
        key = jax.random.key(0)
    elif not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        try:
            key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
        except (TypeError, ValueError):
            raise ValueError(
                f"key must be one jax.random.key(...) (or its uint32 key data), got {key!r}"
            ) from None
    if key.shape != ():
        raise ValueError(f"key must be a single key, got a key array of shape {key.shape}")

    # Flatten the grid gains-major (trial b = g * n_seeds + s) and pad it to the device count
    # with copies of the last trial (computed, then dropped).
    n_g, n_s = len(gains), len(seeds)
    n_trials = n_g * n_s
    n_dev = len(devices)
    n_pad = (-n_trials) % n_dev
    _check_sizes(spec, net_factory(), x, y, n_trials=n_trials + n_pad, n_dev=n_dev,
                 n_epochs=n_epochs, n_records=int(record_epochs.size), vmap_size=vmap_size,
                 devices=devices)
    trial_idx = _batch.pad_index(np.arange(n_trials), n_trials + n_pad)
    trial_seed = np.tile(seeds, n_g)[trial_idx]
    trial_gain = np.repeat(gains, n_s)[trial_idx]

    mesh = _batch.batch_mesh(devices)
    batched = NamedSharding(mesh, P(_batch.BATCH_AXIS))
    replicated = NamedSharding(mesh, P())
    put = distributed.put
    seed_arr = put(np.asarray(trial_seed, np.uint32), batched)
    g_arr = put(np.asarray(trial_gain, dtype), batched)
    key = put(key, replicated)
    lr_arr = put(np.asarray(lr, dtype), replicated)
    x, y = put(x, replicated), put(y, replicated)

    # Chunks of equal length; the last one may carry a few masked padding epochs.
    n_chunks = max(1, math.ceil(n_epochs / chunk_epochs))
    c_len = math.ceil(n_epochs / n_chunks)
    masked = n_chunks * c_len != n_epochs
    chunk_of = record_epochs // c_len
    n_slots = int(np.bincount(chunk_of, minlength=n_chunks).max()) if record_epochs.size else 0

    if cacheable:
        progs = _cached_programs(spec, net_factory, mesh, n_slots, masked, vmap_size)
    else:
        progs = _build_programs(spec, net_factory(), mesh, n_slots, masked, vmap_size)

    compile_s = 0.0

    def call(fn, *args):
        nonlocal compile_s
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s += time.perf_counter() - t0
        return compiled(*args)

    t_start = time.perf_counter()
    extra = ()
    if spec.params_mode == "shared":
        extra = (jax.tree.map(lambda a: put(a, replicated), given_params),)
    elif spec.params_mode == "trial":
        # Padding trials start from the last trial's parameters, like their seed and gain.
        padded = jax.tree.map(lambda a: np.asarray(a)[trial_idx], given_params)
        extra = (jax.tree.map(lambda a: put(a, batched), padded),)
    carry, obs0 = call(progs.start, seed_arr, g_arr, key, x, y, *extra)
    initial_params = _fetch(carry.params) if return_params else None
    obs0 = _fetch(obs0)
    init_s = time.perf_counter() - t_start - compile_s

    t_run = time.perf_counter()
    compile_before = compile_s
    losses, hyws, reps_chunks = [], [], []
    chunk_compiled = None
    pbar = _progress.bar(n_chunks, f"train {name}", "chunk")
    for c in range(n_chunks):
        ts = np.arange(c * c_len, (c + 1) * c_len)
        slots = np.full(c_len, n_slots, np.int32)
        in_chunk = record_epochs[chunk_of == c]
        slots[in_chunk - c * c_len] = np.arange(in_chunk.size)
        args = (
            carry,
            lr_arr,
            x,
            y,
            put(jnp.asarray(ts, jnp.int32), replicated),
            put(jnp.asarray(slots), replicated),
            put(jnp.asarray(ts < n_epochs), replicated),
        )
        if chunk_compiled is None:
            t0 = time.perf_counter()
            chunk_compiled = progs.chunk.lower(*args).compile()
            compile_s += time.perf_counter() - t0
        carry, ((loss_c, hyw_c), final_obs) = chunk_compiled(*args)
        # Keep device handles; fetch after the last chunk so the host never stalls the device.
        # The representation slots are sliced out (a new buffer) before the carry is donated.
        losses.append(loss_c)
        hyws.append(hyw_c)
        if spec.record_points:
            reps_chunks.append(tuple(b[:, : in_chunk.size] for b in carry.buf))
        if not pbar.disable:
            jax.block_until_ready(loss_c)  # a bar that moves when the work is done, not queued
        pbar.update()
    pbar.close()
    final_obs, losses, hyws, reps_chunks = _fetch((final_obs, losses, hyws, reps_chunks))
    final_params = _fetch(carry.params) if return_params else None
    run_s = time.perf_counter() - t_run - (compile_s - compile_before)
    del carry

    # ---- host-side assembly: strip padding, divergence, reshape to (n_gains, n_seeds, ...) --
    loss = np.concatenate([np.asarray(v) for v in losses], axis=1)[:n_trials, :n_epochs]  # (B,E)
    final_loss = np.asarray(final_obs.loss)[:n_trials]
    bad = ~np.isfinite(loss) | (loss > threshold)
    final_bad = ~np.isfinite(final_loss) | (final_loss > threshold)
    any_bad = bad.any(axis=1)
    div_epoch = np.where(any_bad, bad.argmax(axis=1), np.where(final_bad, n_epochs, -1))
    diverged = div_epoch >= 0
    # Records strictly after the divergence epoch are NaN; the bad record itself is kept.
    after = np.arange(n_epochs)[None, :] > np.where(diverged, div_epoch, n_epochs)[:, None]

    def grid(a):
        a = np.asarray(a)[:n_trials]
        return a.reshape((n_g, n_s) + a.shape[1:])

    def nan_where(a, m):
        a = np.array(a, dtype=np.result_type(a.dtype, np.float32), copy=True)
        a[np.broadcast_to(m, a.shape)] = np.nan
        return a

    loss = nan_where(loss, after)
    final_loss = nan_where(final_loss, diverged)

    h = yv = wv = fh = fy = fw = None
    if spec.pair is not None:
        hyw = np.concatenate([np.asarray(v) for v in hyws], axis=1)[:n_trials, :n_epochs]
        hyw = nan_where(hyw, after[:, :, None, None])
        hyw = np.moveaxis(hyw, 1, 2)  # (B, L, E, 3)
        fhyw = nan_where(np.asarray(final_obs.hyw)[:n_trials], diverged[:, None, None])
        if not layer_axis:
            hyw, fhyw = hyw[:, 0], fhyw[:, 0]
        h, yv, wv = (grid(hyw[..., k]) for k in range(3))
        fh, fy, fw = (grid(fhyw[..., k]) for k in range(3))

    reps = initial_reps = final_reps = init_out = final_out = None
    if spec.record_points:
        n_layers = len(spec.layers)
        rec_after = record_epochs[None, :] > np.where(diverged, div_epoch, n_epochs)[:, None]
        per_layer = []
        for li in range(n_layers):
            if reps_chunks:
                r = np.concatenate([np.asarray(rc[li]) for rc in reps_chunks], axis=1)[:n_trials]
            else:
                r = np.zeros((n_trials, 0) + np.asarray(obs0.reps[li]).shape[1:])
            per_layer.append(grid(nan_where(r, rec_after[:, :, None, None])))
        init_layers = [grid(np.asarray(r)) for r in obs0.reps]
        final_layers = [
            grid(nan_where(np.asarray(r)[:n_trials], diverged[:, None, None]))
            for r in final_obs.reps
        ]
        if layer_axis:
            reps, initial_reps, final_reps = tuple(per_layer), tuple(init_layers), tuple(
                final_layers
            )
        else:
            reps, initial_reps, final_reps = per_layer[0], init_layers[0], final_layers[0]
        init_out = grid(obs0.out)
        final_out = grid(nan_where(np.asarray(final_obs.out)[:n_trials], diverged[:, None, None]))

    def grid_params(p):
        return None if p is None else jax.tree.map(lambda a: jnp.asarray(grid(a)), p)

    if spec.pair is not None:
        i, j = spec.pair
        dx2 = float(np.sum((np.asarray(dataset.x[j], np.float64) - dataset.x[i]) ** 2))
        dy2 = float(np.sum((np.asarray(dataset.y[j], np.float64) - dataset.y[i]) ** 2))
    else:
        dx2 = dy2 = float("nan")

    opt = lambda a: None if a is None else jax.tree.map(jnp.asarray, a)  # noqa: E731
    return TrainResult(
        gains=jnp.asarray(gains),
        seeds=jnp.asarray(seeds),
        loss=jnp.asarray(grid(loss)),
        h=opt(h),
        y=opt(yv),
        w=opt(wv),
        final_loss=jnp.asarray(grid(final_loss)),
        final_h=opt(fh),
        final_y=opt(fy),
        final_w=opt(fw),
        diverged=jnp.asarray(grid(diverged)),
        diverged_epoch=jnp.asarray(grid(div_epoch)),
        record_epochs=jnp.asarray(record_epochs),
        record_points=jnp.asarray(np.asarray(spec.record_points, np.int64)),
        reps=opt(reps),
        initial_reps=opt(initial_reps),
        final_reps=opt(final_reps),
        initial_outputs=opt(init_out),
        final_outputs=opt(final_out),
        initial_params=grid_params(initial_params),
        final_params=grid_params(final_params),
        dx2=dx2,
        dy2=dy2,
        config=config,
        name=name,
        layers=tuple(spec.layers),
        layer_axis=layer_axis,
        pair=spec.pair,
        optimizer=spec.optimizer if isinstance(spec.optimizer, str) else "optax",
        lr=lr,
        batch_size=spec.batch_size,
        divergence_threshold=threshold,
        data_name=dataset.name,
        n_devices=n_dev,
        n_padded=n_pad,
        compile_s=compile_s,
        init_s=init_s,
        run_s=run_s,
    )


def _check_sizes(spec: _Spec, net: _Net, x, y, *, n_trials: int, n_dev: int, n_epochs: int,
                 n_records: int, vmap_size: int | None, devices: list) -> None:
    """Refuse, before compiling, a network whose output shape differs from the targets' (the
    loss would broadcast them) and a run whose parameters, optimizer state and records cannot
    fit in memory. Shapes come from ``eval_shape`` (nothing is allocated); the estimate is a
    lower bound (activations and compiler temporaries come on top)."""
    xs = jax.ShapeDtypeStruct(x.shape, x.dtype)
    params = jax.eval_shape(net.init, jax.random.key(0), jnp.ones((), x.dtype), xs)
    out, reps = jax.eval_shape(lambda p, xx: net.apply(p, xx, False, None), params, xs)
    if tuple(out.shape) != tuple(y.shape):
        raise ValueError(
            f"the model's output has shape {tuple(out.shape)} for x of shape {tuple(x.shape)}, "
            f"but the targets y have shape {tuple(y.shape)}: the loss would broadcast one "
            f"against the other. The model must return one row of {y.shape[1]} outputs per "
            "point."
        )
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    p_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(params))
    item = x.dtype.itemsize
    # Per trial: the loss and (h, y, w) per layer every epoch, the recorded representations.
    rec = n_epochs * (1 + (3 * len(spec.layers) if spec.pair is not None else 0)) * item
    rep_row = len(spec.record_points) * sum(int(np.prod(r.shape[1:])) for r in reps) * item
    per_dev = -(-n_trials // n_dev)
    live = per_dev if vmap_size is None else min(vmap_size, per_dev)
    n_opt = 2 if spec.optimizer == "adam" else 0
    device_need = (per_dev * (p_bytes * (1 + n_opt) + rec + rep_row * n_records)
                   + live * 2 * p_bytes + x.nbytes + y.nbytes)  # + gradients, new parameters
    host_need = n_trials * (rec + rep_row * n_records)
    what = f"training {n_trials:,} trials of {n_params:,} parameters for {n_epochs:,} epochs"
    if rep_row:
        what += f" ({n_records:,} records of {len(spec.record_points)} points' representations)"
    advice = ("reduce the seeds or gains, the network's width or depth, the epochs, or what "
              "is recorded (record_points, record_every/record_epochs, layers)")
    local = [d for d in devices if d.process_index == jax.process_index()] or devices
    avail, where = memory_bytes(local[0])
    if where == "host memory":  # CPU devices share the host's memory
        check_memory(device_need * min(n_dev, len(local)) + host_need, avail, where, what,
                     advice)
    else:
        check_memory(device_need, avail, where, what, advice)
        check_memory(host_need, memory_bytes(None)[0], "host memory", what, advice)


def _net_key(config: TrainConfig, out_dim: int) -> tuple:
    # Only what shapes the network's program: runs that differ in gain, lr, epochs, data
    # values or name share compiled programs.
    return (config.arch, config.nonlinearity, config.width, config.depth, config.dropout,
            config.dtype, config.precision, out_dim, config.conv_layout)


@functools.lru_cache(maxsize=64)
def _builtin_factory(net_key: tuple, layers: tuple[int, ...]):
    # Cached so that equal arguments give the same factory object (part of the programs'
    # cache key).
    arch, nonlinearity, width, depth, dropout, dtype, precision, out_dim, conv_layout = net_key

    def factory():
        module = nets.make(arch, width=width, depth=depth, out_dim=out_dim,
                           nonlinearity=nonlinearity, dropout=dropout, dtype=dtype,
                           precision=precision, conv_layout=conv_layout)
        return _builtin_net(module, layers)

    return factory


def _check_data(dataset) -> data_lib.Dataset:
    if not isinstance(dataset, data_lib.Dataset):
        try:
            xd, yd = dataset
        except (TypeError, ValueError):
            raise ValueError(
                "data must be a unijax.data.Dataset or an (x, y) pair of 2-D arrays"
            ) from None
        dataset = data_lib.Dataset(np.asarray(xd), np.asarray(yd), None, "data")
    if dataset.n_points < 1:
        raise ValueError("data must have at least one point")
    check_finite("data.x", dataset.x)
    check_finite("data.y", dataset.y)
    return dataset


def train(
    config: TrainConfig,
    *,
    seeds: int | Sequence[int],
    gains: Sequence[float] | None = None,
    layers: int | Sequence[int] | str | None = None,
    key: jax.Array | None = None,
    data: data_lib.Dataset | tuple | None = None,
    pair: tuple[int, int] | None = None,
    record_every: int | None = None,
    record_epochs: Sequence[int] | None = None,
    record_points: Sequence[int] | int | None = None,
    chunk_epochs: int = 1000,
    devices: Sequence[Any] | int | None = None,
    vmap_size: int | str = "auto",
    return_params: bool = False,
    params: Any = None,
) -> TrainResult:
    """Train the grid ``gains x seeds`` of the network ``config`` describes, in one compiled call.

    Every trial starts from Xavier-normal weights (gain from ``gains``) drawn with the key
    ``fold_in(key, seed)`` (the same draws at every gain of a seed), or from ``params``, trains
    for ``config.epochs`` epochs with ``config.optimizer`` (full-batch gradient descent, or
    mini-batches reshuffled each epoch from the trial's key) on ``config.loss``, and records,
    before
    each epoch's update: the loss, the two-point observables ``(h, y, w)`` of ``pair`` at the
    recorded hidden layer(s), and at ``record_epochs`` the hidden representations of
    ``record_points`` (see :class:`TrainResult`; time in epochs, entry 0 = initialization).

    Args:
        config: a :class:`~unijax.configs.TrainConfig` (e.g. ``configs.get("default")``).
        seeds: a count ``n`` (seeds ``0 .. n-1``) or a sequence of distinct ints in
            ``[0, 2**31 - 1]`` (a larger seed would alias a smaller one in the uint32 key).
        gains: Xavier gains (> 0); default ``(config.gain,)``.
        layers: recorded hidden layer(s): ``None`` -> ``config.layer`` (no layer axis), an int
            (no layer axis), a sequence of ints or ``"all"`` (layer axis).
        key: base ``jax.random`` key (default ``jax.random.key(0)``).
        data: a :class:`~unijax.data.Dataset` or ``(x, y)``; default the config's data set.
        pair: the two points ``(i, j)`` whose ``(h, y, w)`` are recorded every epoch; default
            ``(0, 1)`` for two-point data, none otherwise (``False``: none).
        record_every: record representations every this many epochs (from epoch 0).
        record_epochs: explicit epochs (in ``[0, epochs - 1]``) to record representations at.
        record_points: indices (or a count of leading points) whose hidden representations and
            outputs are recorded at the initialization, at the record epochs and at the end.
        chunk_epochs: epochs per compiled ``scan`` chunk (memory stays constant in the number
            of epochs; the last chunk may include a few masked no-op epochs).
        devices: devices to shard the trial batch over (default ``jax.devices()``: the local
            ones, or after :func:`unijax.distributed.initialize` those of all processes, which
            must then all make this call with the same arguments and all receive the whole
            result; a count takes the first ``n`` local devices). Non-divisible batches are
            padded and the padding dropped.
        vmap_size: how many of a device's trials run as one vmapped batch; the blocks then
            loop (``lax.map``) inside the same compiled call. ``"all"``: one vmap over all of
            them; an int ``k``: blocks of ``k``; ``"auto"`` (default): ``"all"`` on GPU/TPU,
            ``1`` on CPU, where XLA's batched matrix-vector products are slower per trial than
            unbatched ones (the per-trial work is memory bound, so nothing is lost). Results
            agree to float32 rounding whatever the choice.
        return_params: also return initial and final parameters (``(n_gains, n_seeds, ...)``).
        params: initial parameters instead of the Xavier draws: the network's ``"params"``
            collection (nested dicts ``{layer: {"kernel", "bias"}}`` of arrays, as
            :func:`init_params` or ``nets.init`` give for one trial; Flax kernels are
            ``(in, out)``, see :func:`unijax.nets.params_from_torch` for PyTorch weights). Each
            leaf either has the network's own shape (every trial of the grid starts there) or
            leading ``(n_gains, n_seeds)`` axes, either of them possibly 1 (broadcast), with
            ``n_gains = len(gains)`` (1 by default) and ``n_seeds`` the number of seeds.
            ``gains`` then only label the rows (they do not rescale given parameters); seeds
            still key mini-batch shuffles and dropout. Cast to ``config.dtype``.

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: bad seeds, gains, layers, record epochs/points, pair, devices or data
            (naming the argument and its valid range); ``config`` invalid; a run whose
            parameters and records would not fit in memory (refused before compiling, with
            the memory it would need); ``params`` whose structure or a leaf's shape differs
            from the network's (naming the leaf, e.g. ``params['dense_3']['kernel']``).
    """
    _cache.enable_compilation_cache()  # later processes skip compiling
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a unijax.configs.TrainConfig, got {type(config)}")
    if isinstance(chunk_epochs, bool) or not isinstance(chunk_epochs, int) or chunk_epochs <= 0:
        raise ValueError(f"chunk_epochs must be an int > 0, got {chunk_epochs=}")
    dataset = _check_data(load_data(config) if data is None else data)
    seeds_arr = _seeds(seeds)
    gains_arr = _gains(gains, config.gain)
    n_hidden = nets.n_hidden(config.arch, config.depth, config.conv_layout)
    layer_tuple, layer_axis = _layers(layers, n_hidden, config.layer)
    net_key = _net_key(config, dataset.out_dim)
    factory = _builtin_factory(net_key, layer_tuple)
    x_example = jnp.asarray(np.asarray(dataset.x), jnp.dtype(config.dtype))
    params_mode, given = _given_params(params, factory(), x_example, config.dtype,
                                       len(gains_arr), len(seeds_arr))
    spec = _Spec(
        net_key=net_key,
        layers=layer_tuple,
        optimizer=config.optimizer,
        batch_size=config.batch_size,
        n_points=dataset.n_points,
        pair=_pair(pair, dataset.n_points),
        record_points=_points(record_points, dataset.n_points),
        dtype=config.dtype,
        loss=config.loss,
        params_mode=params_mode,
    )
    devs = _devices(devices)
    return _run(
        spec=spec,
        net_factory=factory,
        cacheable=True,
        dataset=dataset,
        seeds=seeds_arr,
        gains=gains_arr,
        key=key,
        record_epochs=_record_epochs(record_every, record_epochs, config.epochs),
        lr=config.lr,
        n_epochs=config.epochs,
        chunk_epochs=chunk_epochs,
        devices=devs,
        vmap_size=_vmap_size(vmap_size, devs),
        threshold=config.divergence_threshold,
        layer_axis=layer_axis,
        return_params=return_params,
        config=config,
        name=config.name,
        given_params=given,
    )


def train_model(
    model: nn.Module,
    data: data_lib.Dataset | tuple,
    *,
    layers: str | int | Sequence[str | int],
    lr: float | None = None,
    epochs: int,
    seeds: int | Sequence[int] = 1,
    gains: Sequence[float] | None = None,
    optimizer: str | optax.GradientTransformation = "sgd",
    batch_size: int | None = None,
    key: jax.Array | None = None,
    pair: tuple[int, int] | None = None,
    record_every: int | None = None,
    record_epochs: Sequence[int] | None = None,
    record_points: Sequence[int] | int | None = None,
    chunk_epochs: int = 1000,
    devices: Sequence[Any] | int | None = None,
    vmap_size: int | str = "auto",
    divergence_threshold: float = 1e6,
    dtype: str = "float32",
    return_params: bool = False,
    name: str | None = None,
    loss: str | Callable[[jax.Array, jax.Array], jax.Array] = "half_mse",
    params: Any = None,
) -> TrainResult:
    """Train *your own* Flax module with the same engine and recording as :func:`train`.

    The module is initialized with ``model.init(key, x)`` (its own initializers); each gain in
    ``gains`` multiplies every parameter named ``kernel`` (default ``(1.0,)``: unchanged). The
    recorded hidden layer(s) are found by name (see below) and the result can go straight to
    ``unijax.fit.fit_rates(result.ts, result.hyw().reshape(-1, n_epochs, 3), dx2=result.dx2,
    dy2=result.dy2)``.

    Args:
        model: a ``flax.linen.Module`` called as ``model.apply({"params": p}, x)``. It may
            return an array (hidden layers are then the outputs of submodules whose ``name`` is
            in ``layers``, ``"block/dense"`` for nested ones, or values stored with
            ``self.sow("intermediates", name, value)``), a dict with the output under ``"out"``
            and hidden layers under their keys, or a tuple ``(out, hiddens)`` indexed by int
            ``layers``. No dropout rng is passed (the training and measuring passes are the
            same).
        data: a :class:`~unijax.data.Dataset` or ``(x, y)`` with ``x: (n, in_dim)``,
            ``y: (n, out_dim)``.
        layers: a name/int or a sequence of them (the latter adds a layer axis). A wrong
            name raises an error listing the valid ones; naming an ``nn.Dense`` records its
            output, the *pre*-activation (see :class:`unijax.observe.Recorder`).
        lr: the learning rate of ``optimizer="sgd"``/``"adam"``; must be ``None`` when
            ``optimizer`` is an Optax transformation (its rate is built in).
        optimizer: ``"sgd"``, ``"adam"`` or any ``optax.GradientTransformation`` (e.g.
            ``optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.05, momentum=0.9))``);
            it is applied once per (mini-)batch.
        loss: a name of ``configs.LOSSES`` (``"half_mse"``, the default:
            ``0.5 * mean((pred - target)^2)``, the theory's loss, docs/theory.md section 1;
            ``"mse"``: PyTorch's ``nn.MSELoss()``), or a per-point loss
            ``loss(pred, target) -> ()`` with ``pred, target: (out_dim,)``; training
            minimizes, and ``TrainResult.loss`` records, its mean over the points (over the
            real points of a mini-batch).
        epochs, batch_size, divergence_threshold, dtype: as in
            :class:`~unijax.configs.TrainConfig`.
        params: initial parameters instead of ``model.init`` (structure and shapes of
            ``model.init(key, x)["params"]``, optionally with leading ``(n_gains, n_seeds)``
            axes), as in :func:`train`.
        Others: as in :func:`train`.

    Returns:
        :class:`TrainResult` (``config`` is ``None``; ``optimizer`` is ``"optax"`` and ``lr``
        NaN for an Optax transformation).

    Raises:
        ValueError: a layer name the model does not offer (listing the valid names), ``lr``
            missing or given with an Optax transformation, a ``loss`` that does not map two
            ``(out_dim,)`` arrays to a scalar, a model whose output shape differs from the
            targets' ``(n, out_dim)`` (found with ``eval_shape`` before anything runs), and
            the checks of :func:`train`.
        TypeError: ``optimizer`` neither a name nor an ``optax.GradientTransformation``.
    """
    _cache.enable_compilation_cache()  # later processes skip compiling
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen.Module, got {type(model)}")
    custom_tx = isinstance(optimizer, optax.GradientTransformation)
    if custom_tx:
        if lr is not None:
            raise ValueError(
                f"lr must be None when optimizer is an optax.GradientTransformation (its "
                f"learning rate is set when it is built, e.g. optax.sgd(0.05)), got {lr=}"
            )
    elif not isinstance(optimizer, str):
        raise TypeError(
            f"optimizer must be 'sgd', 'adam' or an optax.GradientTransformation, got "
            f"{type(optimizer).__name__}"
        )
    elif lr is None:
        raise ValueError(f"lr is required with optimizer={optimizer!r} (a float > 0)")
    # Validate the optimizer settings through the config's own checks (one source of truth).
    check = TrainConfig(name="custom", lr=1.0 if custom_tx else lr, epochs=epochs,
                        optimizer="sgd" if custom_tx else optimizer,
                        batch_size=batch_size, divergence_threshold=divergence_threshold,
                        dtype=dtype, width=1, depth=1,
                        loss=loss if isinstance(loss, str) else "half_mse")
    loss_fn = None if isinstance(loss, str) else loss
    if isinstance(chunk_epochs, bool) or not isinstance(chunk_epochs, int) or chunk_epochs <= 0:
        raise ValueError(f"chunk_epochs must be an int > 0, got {chunk_epochs=}")
    dataset = _check_data(data)
    if isinstance(layers, (str, int)) and not isinstance(layers, bool):
        layer_tuple, layer_axis = (layers,), False
    else:
        layer_tuple, layer_axis = tuple(layers), True
        if not layer_tuple:
            raise ValueError("layers must not be empty")
    x_check = jax.ShapeDtypeStruct(np.shape(dataset.x), jnp.dtype(check.dtype))
    observe.Recorder(model, layer_tuple).check(x_check)  # lists the valid names if one is wrong
    if loss_fn is not None:
        _check_loss(loss_fn, dataset.out_dim, check.dtype)
    try:
        hash(model)
        cacheable = True
    except TypeError:
        cacheable = False
    factory = _custom_factory(model, layer_tuple) if cacheable else (
        lambda: _custom_net(model, layer_tuple)
    )
    seeds_arr, gains_arr = _seeds(seeds), _gains(gains, 1.0)
    x_example = jnp.asarray(np.asarray(dataset.x), jnp.dtype(check.dtype))
    params_mode, given = _given_params(params, factory(), x_example, check.dtype,
                                       len(gains_arr), len(seeds_arr))
    spec = _Spec(
        net_key=model if cacheable else id(model),
        layers=layer_tuple,
        optimizer=optimizer if custom_tx else check.optimizer,
        batch_size=check.batch_size,
        n_points=dataset.n_points,
        pair=_pair(pair, dataset.n_points),
        record_points=_points(record_points, dataset.n_points),
        dtype=check.dtype,
        loss=check.loss,
        params_mode=params_mode,
        loss_fn=loss_fn,
    )
    devs = _devices(devices)
    return _run(
        spec=spec,
        net_factory=factory,
        cacheable=cacheable,
        dataset=dataset,
        seeds=seeds_arr,
        gains=gains_arr,
        key=key,
        record_epochs=_record_epochs(record_every, record_epochs, check.epochs),
        lr=float("nan") if custom_tx else check.lr,
        n_epochs=check.epochs,
        chunk_epochs=chunk_epochs,
        devices=devs,
        vmap_size=_vmap_size(vmap_size, devs),
        threshold=check.divergence_threshold,
        layer_axis=layer_axis,
        return_params=return_params,
        config=None,
        name=name or type(model).__name__,
        given_params=given,
    )


def _check_loss(loss, out_dim: int, dtype: str) -> None:
    if not callable(loss):
        raise ValueError(f"loss must be a callable loss(pred, target) -> scalar, got {loss!r}")
    point = jax.ShapeDtypeStruct((out_dim,), jnp.dtype(dtype))
    try:
        value = jax.eval_shape(loss, point, point)
    except Exception as e:
        raise ValueError(
            f"loss must map two ({out_dim},) arrays (one point's prediction and target) to a "
            f"scalar; calling it failed: {type(e).__name__}: {e}"
        ) from e
    if getattr(value, "shape", None) != ():
        raise ValueError(
            f"loss must map two ({out_dim},) arrays to a scalar (shape ()), got "
            f"{getattr(value, 'shape', value)}"
        )


@functools.lru_cache(maxsize=32)
def _custom_factory(model: nn.Module, layers: tuple):
    return lambda: _custom_net(model, layers)


# --------------------------------------------------------------------------------------------
# Helpers for users and tests
# --------------------------------------------------------------------------------------------


def init_params(
    config: TrainConfig,
    *,
    seeds: int | Sequence[int],
    gains: Sequence[float] | None = None,
    key: jax.Array | None = None,
    data: data_lib.Dataset | tuple | None = None,
) -> Any:
    """The initial parameters :func:`train` uses, with leading ``(n_gains, n_seeds)`` axes."""
    dataset = _check_data(load_data(config) if data is None else data)
    seeds_arr, gains_arr = _seeds(seeds), _gains(gains, config.gain)
    if key is None:
        key = jax.random.key(0)
    module = make_network(config, out_dim=dataset.out_dim)
    x = jnp.asarray(np.asarray(dataset.x), jnp.dtype(config.dtype))

    def one(seed, gain):
        k_init, _ = jax.random.split(jax.random.fold_in(key, seed))
        return nets.init(module, x, key=k_init, gain=gain)

    per_seed = jax.vmap(one, in_axes=(0, None))
    grid = jax.jit(jax.vmap(per_seed, in_axes=(None, 0)))
    return grid(jnp.asarray(seeds_arr, jnp.uint32), jnp.asarray(gains_arr, jnp.dtype(config.dtype)))


def hidden_observables(
    model: nn.Module,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    layer: int,
    pair: tuple[int, int] = (0, 1),
) -> jax.Array:
    """``(h, y, w)`` of ``pair`` recomputed from parameters (deterministic forward, no dropout).

    Args:
        model: a unijax network (returning ``(out, hiddens)``), e.g. :func:`make_network`.
        params: its ``"params"`` collection (one trial).
        x, y: inputs ``(n, in_dim)`` and targets ``(n, out_dim)``.
        layer: hidden layer index.
        pair: the two points ``(i, j)``.

    Returns:
        ``(3,)`` array ``[h, y, w]`` (docs/theory.md section 2) in the network's dtype.

    Raises:
        ValueError: ``x``/``y`` not 2-D with one row per point, ``pair`` not two distinct
            indices in ``[0, n)``, ``layer`` not an index of the model's hidden layers.
    """
    dtype = jnp.dtype(getattr(model, "dtype", jnp.float32))
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be 2-D with one row per point; got x {x.shape}, "
                         f"y {y.shape}.")
    if pair is None or pair is False:
        raise ValueError(f"pair must be two distinct point indices (i, j), got {pair=}")
    i, j = _pair(pair, x.shape[0])
    out, hiddens = model.apply({"params": params}, x, train=False)
    check_int("layer", layer, lo=0, hi=len(hiddens) - 1)
    return observe.pair_observables(hiddens[layer], out, y, pair=pair)

