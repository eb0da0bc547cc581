"""What a training run asks for: one frozen :class:`Request`, built and checked before anything
compiles.

:func:`unijax.train.train` (a built-in network from a ``TrainConfig``) and
:func:`unijax.train.train_model` (a user's Flax module) differ only in how they name the
network and the optimizer; each builds a :class:`Request` here (:func:`from_config`,
:func:`from_model`) from the same :class:`Options`, and both runs then take one path
(``unijax.train._run``). Every check raises ``ValueError`` naming the argument and its valid
range; a run that would not fit in memory is refused with the memory it would need.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unijax import _batch, _record, nets
from unijax import data as data_lib
from unijax._checks import check_bool, check_finite, check_memory, check_seeds, memory_bytes
from unijax.configs import TrainConfig
from unijax.train._epoch import Spec
from unijax.train._nets import Net, NetSpec, builtin_factory, custom_factory, custom_net


class Options(NamedTuple):
    """The keyword arguments :func:`~unijax.train.train` and
    :func:`~unijax.train.train_model` share, as the user gave them (checked when a
    :class:`Request` is built; see :func:`unijax.train.train` for their meaning)."""

    seeds: Any
    gains: Any = None
    key: Any = None
    pair: Any = None
    record_every: Any = None
    record_epochs: Any = None
    record_points: Any = None
    chunk_epochs: Any = 1000
    devices: Any = None
    vmap_size: Any = "auto"
    return_params: Any = False
    params: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """One checked training run: a ``n_gains x n_seeds`` grid of trials of one network.

    Attributes:
        spec: the static description that keys the compiled programs.
        net_factory: ``() -> Net``; cacheable: whether ``(spec, net_factory)`` may key the
            cache of compiled programs (False for an unhashable user module).
        dataset: the training data; seeds ``(n_seeds,)`` int, gains ``(n_gains,)`` float64;
            key: the base key (a single typed key).
        record_epochs: ``(K,)`` sorted epochs at which representations are recorded.
        lr: the learning rate (NaN for the user's own Optax transformation); n_epochs;
            chunk_epochs: epochs per compiled scan.
        devices: the devices of the mesh; vmap_size: None (one vmap) or trials per block.
        threshold: a loss above it (or NaN/inf) is a divergence.
        layer_axis: whether results keep a layer axis; return_params: whether to fetch the
            initial and final parameters.
        config: the ``TrainConfig`` (None for ``train_model``); name: the run's name.
        given_params: initial parameters laid out for ``spec.params_mode`` (None: drawn).
    """

    spec: Spec
    net_factory: Callable[[], Net]
    cacheable: bool
    dataset: data_lib.Dataset
    seeds: np.ndarray
    gains: np.ndarray
    key: jax.Array
    record_epochs: np.ndarray
    lr: float
    n_epochs: int
    chunk_epochs: int
    devices: tuple
    vmap_size: int | None
    threshold: float
    layer_axis: bool
    return_params: bool
    config: TrainConfig | None
    name: str
    given_params: Any = None

    @property
    def n_trials(self) -> int:
        """Real trials, ``n_gains * n_seeds``."""
        return len(self.gains) * len(self.seeds)


class _Network(NamedTuple):
    """How a builder names its network: what the rest of the request needs of it."""

    factory: Callable[[], Net]
    key: Any  # hashable, part of Spec
    cacheable: bool
    layers: tuple
    layer_axis: bool


def from_config(config: TrainConfig, dataset, layers, options: Options) -> Request:
    """The request of :func:`unijax.train.train`: the built-in network ``config`` describes,
    recording ``layers``, trained on ``dataset`` (None: the config's data, :func:`config_data`).
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a unijax.configs.TrainConfig, got {type(config)}")
    check_chunk_epochs(options.chunk_epochs)
    dataset = check_data(config_data(config) if dataset is None else dataset)
    seeds, gains = check_seeds(options.seeds), check_gains(options.gains, config.gain)
    n_hidden = nets.n_hidden(config.arch, config.depth, config.conv_layout)
    layer_tuple, layer_axis = check_layers(layers, n_hidden, config.layer)
    key = NetSpec.of(config, dataset.out_dim)
    network = _Network(builtin_factory(key, layer_tuple), key, True, layer_tuple, layer_axis)
    return _build(network, config, dataset, seeds, gains, options, config=config,
                  name=config.name)


def from_model(model: nn.Module, dataset, *, layers, lr, epochs, optimizer, batch_size,
               divergence_threshold, dtype, name, loss, options: Options) -> Request:
    """The request of :func:`unijax.train.train_model`: a user's Flax module.

    The optimizer settings are checked by a ``TrainConfig`` (one source of truth); an Optax
    transformation stands in for the named optimizer (``lr`` NaN) and a callable ``loss`` for
    the named loss.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen.Module, got {type(model)}")
    custom_tx = check_optimizer(optimizer, lr)
    check = TrainConfig(name="custom", lr=1.0 if custom_tx else lr, epochs=epochs,
                        optimizer="sgd" if custom_tx else optimizer,
                        batch_size=batch_size, divergence_threshold=divergence_threshold,
                        dtype=dtype, width=1, depth=1,
                        loss=loss if isinstance(loss, str) else "half_mse")
    loss_fn = None if isinstance(loss, str) else loss
    check_chunk_epochs(options.chunk_epochs)
    dataset = check_data(dataset)
    if isinstance(layers, (str, int)) and not isinstance(layers, bool):
        layer_tuple, layer_axis = (layers,), False
    else:
        layer_tuple, layer_axis = tuple(layers), True
        if not layer_tuple:
            raise ValueError("layers must not be empty")
    x_check = jax.ShapeDtypeStruct(np.shape(dataset.x), jnp.dtype(check.dtype))
    _record.Recorder(model, layer_tuple).check(x_check)  # lists the valid names if one is wrong
    if loss_fn is not None:
        check_loss(loss_fn, dataset.out_dim, check.dtype)
    try:
        hash(model)
        network = _Network(custom_factory(model, layer_tuple), model, True, layer_tuple,
                           layer_axis)
    except TypeError:  # an unhashable module: built afresh, its programs not cached
        network = _Network(lambda: custom_net(model, layer_tuple), id(model), False,
                           layer_tuple, layer_axis)
    seeds, gains = check_seeds(options.seeds), check_gains(options.gains, 1.0)
    return _build(network, check, dataset, seeds, gains, options, config=None,
                  name=name or type(model).__name__,
                  optimizer=optimizer if custom_tx else None,
                  lr=float("nan") if custom_tx else None, loss_fn=loss_fn)


def _build(network: _Network, cfg: TrainConfig, dataset, seeds, gains, options: Options, *,
           config, name, optimizer=None, lr=None, loss_fn=None) -> Request:
    """The checks and the request both builders share. ``cfg`` supplies the optimizer, rate,
    batch size, loss, dtype, epochs and threshold; ``optimizer``, ``lr`` and ``loss_fn``
    override them (``train_model``'s Optax transformation and per-point loss)."""
    x_example = jnp.asarray(np.asarray(dataset.x), jnp.dtype(cfg.dtype))
    params_mode, given = check_given_params(options.params, network.factory(), x_example,
                                            cfg.dtype, len(gains), len(seeds))
    spec = Spec(
        net_key=network.key,
        layers=network.layers,
        optimizer=cfg.optimizer if optimizer is None else optimizer,
        batch_size=cfg.batch_size,
        n_points=dataset.n_points,
        pair=check_pair(options.pair, dataset.n_points),
        record_points=check_points(options.record_points, dataset.n_points),
        dtype=cfg.dtype,
        loss=cfg.loss,
        params_mode=params_mode,
        loss_fn=loss_fn,
    )
    devices = check_devices(options.devices)
    if len(seeds) * len(gains) == 1 and jax.process_count() == 1:
        # A lone trial runs on one device: a mesh of several would hold a padding trial on
        # each of the others (and on GPU train it). Its numbers are the one-device run's.
        devices = devices[:1]
    record_epochs = check_record_epochs(options.record_every, options.record_epochs, cfg.epochs)
    vmap_size = check_vmap_size(options.vmap_size, devices)
    return_params = check_bool("return_params", options.return_params)
    req = Request(
        spec=spec, net_factory=network.factory, cacheable=network.cacheable, dataset=dataset,
        seeds=seeds, gains=gains, key=check_key(options.key), record_epochs=record_epochs,
        lr=cfg.lr if lr is None else lr, n_epochs=cfg.epochs, chunk_epochs=options.chunk_epochs,
        devices=devices, vmap_size=vmap_size, threshold=cfg.divergence_threshold,
        layer_axis=network.layer_axis, return_params=return_params, config=config, name=name,
        given_params=given,
    )
    check_sizes(req, _batch.trial_bucket(req.n_trials, len(devices)).total)
    return req


# ---------------------------------------------------------------------------------------------
# Checks of single arguments
# ---------------------------------------------------------------------------------------------


def check_chunk_epochs(chunk_epochs) -> None:
    if isinstance(chunk_epochs, bool) or not isinstance(chunk_epochs, int) or chunk_epochs <= 0:
        raise ValueError(f"chunk_epochs must be an int > 0, got {chunk_epochs=}")


def check_optimizer(optimizer, lr) -> bool:
    """Whether ``optimizer`` is the user's own Optax transformation (``lr`` must then be
    None); a name needs ``lr``."""
    if isinstance(optimizer, optax.GradientTransformation):
        if lr is not None:
            raise ValueError(
                f"lr must be None when optimizer is an optax.GradientTransformation (its "
                f"learning rate is set when it is built, e.g. optax.sgd(0.05)), got {lr=}"
            )
        return True
    if not isinstance(optimizer, str):
        raise TypeError(
            f"optimizer must be 'sgd', 'adam' or an optax.GradientTransformation, got "
            f"{type(optimizer).__name__}"
        )
    if lr is None:
        raise ValueError(f"lr is required with optimizer={optimizer!r} (a float > 0)")
    return False


def check_loss(loss, out_dim: int, dtype: str) -> None:
    """A per-point loss must map two ``(out_dim,)`` arrays to a scalar."""
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


def config_data(config: TrainConfig) -> data_lib.Dataset:
    """The data set named by ``config.dataset`` in ``config.dtype``."""
    dt = np.dtype(jnp.dtype(config.dtype))
    if config.dataset == "two_points":
        return data_lib.two_points(config.dx2, config.dy2, dtype=dt)
    return data_lib.load(config.dataset, dtype=dt)


def check_data(dataset) -> data_lib.Dataset:
    """A ``Dataset`` (or an ``(x, y)`` pair made into one) of at least one finite point."""
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


def check_gains(gains, default: float) -> np.ndarray:
    """``(n_gains,)`` float64 gains, all finite and > 0 (None: ``[default]``)."""
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


def check_record_epochs(record_every, record_epochs, n_epochs: int) -> np.ndarray:
    """``(K,)`` sorted int64 epochs: every ``record_every``-th from 0, and ``record_epochs``."""
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


def check_points(record_points, n_points: int) -> tuple[int, ...]:
    """Indices of the recorded points (a count ``k``: the first ``k``; None: none)."""
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


def check_pair(pair, n_points: int) -> tuple[int, int] | None:
    """Two distinct point indices; None: ``(0, 1)`` for two points, else none; False: none."""
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


def check_devices(devices) -> tuple:
    """The devices of the mesh: all (None), the first ``n`` local ones, or those given."""
    if devices is None:
        # All processes' devices after jax.distributed.initialize (then every process must
        # make the same call); the local ones otherwise.
        return tuple(jax.devices())
    if isinstance(devices, (int, np.integer)):
        local = jax.local_devices()
        if not 1 <= devices <= len(local):
            raise ValueError(f"devices must be in [1, {len(local)}] (local devices), got {devices}")
        return tuple(local[: int(devices)])
    devs = tuple(devices)
    if not devs:
        raise ValueError("devices must be None, a count, or a non-empty sequence of devices")
    return devs


def check_vmap_size(vmap_size, devices: Sequence) -> int | None:
    """Trials per vmapped block: None (all) or an int; ``"auto"``: 1 on CPU, all elsewhere."""
    if vmap_size == "auto":
        return 1 if devices[0].platform == "cpu" else None
    if vmap_size == "all":
        return None
    if isinstance(vmap_size, bool) or not isinstance(vmap_size, (int, np.integer)) or (
        vmap_size < 1
    ):
        raise ValueError(f"vmap_size must be 'auto', 'all' or an int >= 1, got {vmap_size=}")
    return int(vmap_size)


def check_layers(layers, depth: int, default: int) -> tuple[tuple[int, ...], bool]:
    """``(layer indices, layer_axis)`` of a built-in network with ``depth`` hidden
    activations (``nets.n_hidden``): None -> ``(default,)``, an int, a sequence or ``"all"``."""
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


def check_key(key) -> jax.Array:
    """One typed ``jax.random`` key (None: ``key(0)``; raw uint32 key data is wrapped)."""
    if key is None:
        return jax.random.key(0)
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        try:
            key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
        except (TypeError, ValueError):
            raise ValueError(
                f"key must be one jax.random.key(...) (or its uint32 key data), got {key!r}"
            ) from None
    if key.shape != ():
        raise ValueError(f"key must be a single key, got a key array of shape {key.shape}")
    return key


def check_given_params(
    params: Any, net: Net, x: jax.Array, dtype: str, n_gains: int, n_seeds: int
) -> tuple[str | None, Any]:
    """Check and lay out initial parameters given to ``train`` / ``train_model``.

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


# ---------------------------------------------------------------------------------------------
# The whole run: shapes and memory
# ---------------------------------------------------------------------------------------------


def _shapes(net_factory: Callable[[], Net], dtype: str, x_shape: tuple) -> tuple:
    """``(params, out, reps)`` shapes of the network on inputs ``x_shape`` (``eval_shape``)."""
    net, x = net_factory(), jax.ShapeDtypeStruct(x_shape, jnp.dtype(dtype))
    params = jax.eval_shape(net.init, jax.random.key(0), jnp.ones((), jnp.dtype(dtype)), x)
    out, reps = jax.eval_shape(lambda p, xx: net.apply(p, xx, False, None), params, x)
    return params, out, reps


_cached_shapes = functools.lru_cache(maxsize=64)(_shapes)


def check_sizes(req: Request, n_trials: int) -> None:
    """Refuse, before compiling, a network whose output shape differs from the targets' (the
    loss would broadcast them) and a run of ``n_trials`` (padding included) whose parameters,
    optimizer state and records cannot fit in memory. Shapes come from ``eval_shape``
    (nothing is allocated); the estimate is a lower bound (activations and compiler
    temporaries come on top)."""
    spec, dtype = req.spec, jnp.dtype(req.spec.dtype)
    x_shape, y_shape = tuple(np.shape(req.dataset.x)), tuple(np.shape(req.dataset.y))
    # Tracing the network for its shapes costs about as much as drawing its weights (the
    # default network: 0.09 s of CPU against 0.14 s), at every call; a cached factory's shapes
    # are traced once per process.
    shapes = _cached_shapes if req.cacheable else _shapes
    params, out, reps = shapes(req.net_factory, req.spec.dtype, x_shape)
    x = jax.ShapeDtypeStruct(x_shape, dtype)
    if tuple(out.shape) != y_shape:
        raise ValueError(
            f"the model's output has shape {tuple(out.shape)} for x of shape {tuple(x.shape)}, "
            f"but the targets y have shape {y_shape}: the loss would broadcast one "
            f"against the other. The model must return one row of {y_shape[1]} outputs per "
            "point."
        )
    leaves = jax.tree.leaves(params)
    n_params = sum(int(np.prod(a.shape)) for a in leaves)
    p_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in leaves)
    item, n_dev, n_records = dtype.itemsize, len(req.devices), int(req.record_epochs.size)
    # Per trial: the loss and (h, y, w) per layer every epoch, the recorded representations.
    rec = req.n_epochs * (1 + (3 * len(spec.layers) if spec.pair is not None else 0)) * item
    rep_row = len(spec.record_points) * sum(int(np.prod(r.shape[1:])) for r in reps) * item
    per_dev = -(-n_trials // n_dev)
    live = per_dev if req.vmap_size is None else min(req.vmap_size, per_dev)
    n_opt = 2 if spec.optimizer == "adam" else 0
    data_bytes = (int(np.prod(x.shape)) + int(np.prod(y_shape))) * item
    device_need = (per_dev * (p_bytes * (1 + n_opt) + rec + rep_row * n_records)
                   + live * 2 * p_bytes + data_bytes)  # + gradients, new parameters
    host_need = n_trials * (rec + rep_row * n_records)
    what = f"training {n_trials:,} trials of {n_params:,} parameters for {req.n_epochs:,} epochs"
    if rep_row:
        what += f" ({n_records:,} records of {len(spec.record_points)} points' representations)"
    advice = ("reduce the seeds or gains, the network's width or depth, the epochs, or what "
              "is recorded (record_points, record_every/record_epochs, layers)")
    local = [d for d in req.devices if d.process_index == jax.process_index()] or req.devices
    avail, where = memory_bytes(local[0])
    if where == "host memory":  # CPU devices share the host's memory
        check_memory(device_need * min(n_dev, len(local)) + host_need, avail, where, what,
                     advice)
    else:
        check_memory(device_need, avail, where, what, advice)
        check_memory(host_need, memory_bytes(None)[0], "host memory", what, advice)
