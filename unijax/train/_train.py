"""The training engine: a grid of init seeds x gains trained in one compiled call.

Written for one trial (one seed, one gain); ``vmap`` adds the trial axis, ``lax.scan`` loops
over epochs, and the flattened ``gains * seeds`` batch of trials is laid out over all devices
with a ``jax.sharding.Mesh`` (``shard_map`` over a 1-D ``"batch"`` axis). **One compiled
program serves every grid size of a bucket**: the trial batch is padded to a multiple of 8
trials, then of the device count (``unijax._batch.trial_bucket``; a lone trial is not padded
to 8), so training 3, 5 or 7 seeds compiles once; padding trials repeat the last real trial's
seed and gain, are neither drawn nor trained by the per-trial loop on CPU (so 2 seeds draw 2
networks, not 8; computed in the
``vmap`` elsewhere), and are dropped from every result, which holds exactly the trials asked
for. After
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
weight twice and writes it once per epoch (``unijax.train._step``); everything else (Adam,
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

This module is the public surface; the engine lives in private modules of one idea each:
``_request`` (checking the arguments into one frozen request; :func:`train` and
:func:`train_model` differ only there), ``_nets`` (networks as pure functions of one
trial), ``_step`` (losses, the fused SGD step), ``_epoch`` (one trial's epoch and
its recording ``lax.scan``), ``_program`` (the batched, sharded, compiled programs and
their chunk loop) and ``_result`` (divergence and the ``(n_gains, n_seeds, ...)`` arrays).

Example:
    >>> from unijax import configs, train
    >>> cfg = configs.get("default", width=32, depth=4, epochs=300)
    >>> res = train.train(cfg, seeds=4, gains=[0.5, 1.0])
    >>> res.h.shape, res.diverged.shape          # (n_gains, n_seeds, n_epochs), (n_gains, n_seeds)
    ((2, 4, 300), (2, 4))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unijax import _cache, _record, nets
from unijax import data as data_lib
from unijax._checks import check_int, check_seeds
from unijax.configs import TrainConfig
from unijax.results import _files as results
from unijax.results._keep import Keepable, json_number
from unijax.train import (
    _program as _train_program,
)
from unijax.train import (
    _request as _train_request,
)
from unijax.train import (
    _result as _train_result,
)
from unijax.train._request import Options

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
        n_devices: devices the trial batch was sharded over; n_padded: padding trials that
            were added to fill the batch's bucket (a multiple of 8 trials, or 1 for a lone
            trial, then of the device count, so that one compiled program serves every grid
            size of the bucket) and dropped again: copies of the last trial, neither drawn
            nor trained by the per-trial loop on CPU, computed in the ``vmap`` on GPU/TPU.
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
            f"devices: {self.n_devices} ({self.n_padded} padding trials, dropped); "
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
        return results.to_xarray(self)

    def to_dataframe(self):
        """Tidy ``pandas.DataFrame``: a row per ``(gain, seed, [layer,] epoch)``, columns
        ``loss, h, y, w`` (see :func:`unijax.results.to_dataframe`)."""
        return results.to_dataframe(self)

    def summary_dict(self) -> dict:
        """The numbers of :meth:`summary` as a JSON-ready dict (NaN written as ``None``)."""
        div = np.asarray(self.diverged)
        ok = ~div
        fl = np.asarray(self.final_loss)[ok]
        return {
            "type": "TrainResult", "name": self.name, "n_gains": int(div.shape[0]),
            "n_seeds": int(div.shape[1]), "n_epochs": self.n_epochs,
            "gains": [float(g) for g in np.asarray(self.gains)],
            "seeds": [int(s) for s in np.asarray(self.seeds)],
            "optimizer": self.optimizer, "lr": json_number(self.lr),
            "batch_size": self.batch_size, "layers": list(self.layers),
            "data": self.data_name, "n_diverged": int(div.sum()),
            "n_diverged_per_gain": [int(v) for v in div.sum(axis=1)],
            "final_loss_median": json_number(np.median(fl)) if fl.size else None,
            "final_loss_min": json_number(fl.min()) if fl.size else None,
            "final_loss_max": json_number(fl.max()) if fl.size else None,
            "compile_s": self.compile_s, "init_s": self.init_s, "run_s": self.run_s,
        }

    def labelled_arrays(self, *, grid=None, ts=None) -> tuple[dict, dict, dict]:
        """``({name: (dims, values)}, coords, attrs)``, NumPy only: what
        :func:`unijax.results.to_xarray` labels (``grid`` and ``ts`` are a fit's and unused
        here: the grid is this result's own)."""
        dims = ["gain", "seed"]
        coords = {"gain": np.asarray(self.gains), "seed": np.asarray(self.seeds),
                  "epoch": np.asarray(self.ts), "variable": ["h", "y", "w"]}
        lay = ["layer"] if self.layer_axis else []
        if self.layer_axis:
            coords["layer"] = list(self.layers)
        out = {
            "loss": (dims + ["epoch"], np.asarray(self.loss)),
            "final_loss": (dims, np.asarray(self.final_loss)),
            "diverged": (dims, np.asarray(self.diverged)),
            "diverged_epoch": (dims, np.asarray(self.diverged_epoch)),
        }
        if self.h is not None:
            out["hyw"] = (dims + lay + ["epoch", "variable"], np.asarray(self.hyw()))
            out["final_hyw"] = (dims + lay + ["variable"], np.stack(
                [np.asarray(self.final_h), np.asarray(self.final_y),
                 np.asarray(self.final_w)], axis=-1))
        attrs = {"name": self.name, "optimizer": self.optimizer, "lr": self.lr,
                 "dx2": self.dx2, "dy2": self.dy2, "data": self.data_name,
                 "time_unit": "epoch"}
        return out, coords, attrs


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


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
            result; a count takes the first ``n`` local devices; in one process, a lone trial
            runs on the first device alone). The ``n_gains * n_seeds``
            trials are padded to a multiple of 8 (a lone trial: 1), then of the device count
            (one compiled program per bucket), and the padding dropped
            (``TrainResult.n_padded``).
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
    options = Options(seeds=seeds, gains=gains, key=key, pair=pair, record_every=record_every,
                      record_epochs=record_epochs, record_points=record_points,
                      chunk_epochs=chunk_epochs, devices=devices, vmap_size=vmap_size,
                      return_params=return_params, params=params)
    return _run(_train_request.from_config(config, data, layers, options))


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
            output, the *pre*-activation (see :class:`unijax._record.Recorder`).
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
    options = Options(seeds=seeds, gains=gains, key=key, pair=pair, record_every=record_every,
                      record_epochs=record_epochs, record_points=record_points,
                      chunk_epochs=chunk_epochs, devices=devices, vmap_size=vmap_size,
                      return_params=return_params, params=params)
    return _run(_train_request.from_model(
        model, data, layers=layers, lr=lr, epochs=epochs, optimizer=optimizer,
        batch_size=batch_size, divergence_threshold=divergence_threshold, dtype=dtype,
        name=name, loss=loss, options=options))


def _run(request: _train_request.Request) -> TrainResult:
    """The one path of :func:`train` and :func:`train_model`: run the checked request, then
    assemble its records."""
    return TrainResult(**_train_result.assemble(request, _train_program.execute(request)))


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
    dataset = _train_request.check_data(load_data(config) if data is None else data)
    seeds_arr = check_seeds(seeds)
    gains_arr = _train_request.check_gains(gains, config.gain)
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
    _train_request.check_pair(pair, x.shape[0])
    out, hiddens = model.apply({"params": params}, x, train=False)
    check_int("layer", layer, lo=0, hi=len(hiddens) - 1)
    return _record.pair_observables(hiddens[layer], out, y, pair=pair)


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


def load_data(config: TrainConfig) -> data_lib.Dataset:
    """The data set named by ``config.dataset`` in ``config.dtype`` (``"mnist"`` falls back to
    the bundled 8x8 digits when no MNIST path is configured, see ``unijax.data``)."""
    return _train_request.config_data(config)
