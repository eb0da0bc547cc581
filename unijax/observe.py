"""The two-point observables ``(h, y, w)`` from any network's representations and outputs.

The theory (docs/theory.md section 2) watches a pair of points ``(x1, y1), (x2, y2)`` through
three scalars: the squared distance of their hidden representations, the squared distance of
the network's outputs, and the alignment of the output difference with the target difference,

    h = ||h(x2) - h(x1)||^2,   y = ||f(x2) - f(x1)||^2,   w = y - (y2 - y1) . (f(x2) - f(x1)),

plus the data constants ``dx2 = ||x2 - x1||^2`` and ``dy2 = ||y2 - y1||^2``.

* :func:`pair_observables` is the formula, written once: unijax's training engine records
  with it, and :func:`trajectory` applies it to arrays recorded from any framework (PyTorch,
  Flax, NumPy) to give a :class:`Trajectory` ready for :func:`unijax.fit.fit_rates`.
* :class:`Recorder` reads named hidden layers of a Flax module and says which side of the
  activation each one is (a ``Dense`` layer's output is its *pre*-activation);
  :func:`describe_layers` lists every name a module offers.

Example:
    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> import numpy as np
    >>> from unijax import observe
    >>> hidden = np.random.default_rng(0).normal(size=(50, 2, 8))   # (n_epochs, 2, d_h)
    >>> outputs = np.random.default_rng(1).normal(size=(50, 2, 1))  # (n_epochs, 2, d_out)
    >>> traj = observe.trajectory(hidden, outputs, targets=[[0.0], [1.0]], inputs=[[-1.0], [0.0]])
    >>> traj.hyw.shape, float(traj.dx2), float(traj.dy2)
    ((50, 3), 1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from unijax.results import _files as results
from unijax.results._keep import Keepable, json_number

__all__ = [
    "pair_observables",
    "trajectory",
    "Trajectory",
    "Recorder",
    "LayerInfo",
    "describe_layers",
]


# --------------------------------------------------------------------------------------------
# The formula
# --------------------------------------------------------------------------------------------


def pair_observables(
    hidden: Float[ArrayLike, "*batch n_points n_hidden"],
    outputs: Float[ArrayLike, "*batch n_points n_out"],
    targets: Float[ArrayLike, "n_points n_out"],
    *,
    pair: tuple[int, int] = (0, 1),
) -> Float[Array, "*batch 3"]:
    """``(h, y, w)`` of the points ``pair`` (docs/theory.md section 2), for any leading axes.

    Args:
        hidden: hidden representations of the points, ``(..., n_points, n_hidden)``.
        outputs: network outputs of the same points, ``(..., n_points, n_out)``.
        targets: targets ``(n_points, n_out)`` (broadcast against the leading axes).
        pair: the two point indices ``(i, j)``; differences are ``point j - point i``.

    Returns:
        ``(..., 3)``: ``[h, y, w]`` in the inputs' dtype (one state: ``(3,)``; one value per
        epoch for ``(n_epochs, n_points, ...)`` inputs: ``(n_epochs, 3)``).
    """
    i, j = pair
    hidden, outputs, targets = jnp.asarray(hidden), jnp.asarray(outputs), jnp.asarray(targets)
    dh = hidden[..., j, :] - hidden[..., i, :]
    df = outputs[..., j, :] - outputs[..., i, :]
    dy = targets[..., j, :] - targets[..., i, :]
    # Sums of products rather than dots: exact float32 on every backend (no TF32).
    yv = jnp.sum(df * df, axis=-1)
    return jnp.stack([jnp.sum(dh * dh, axis=-1), yv, yv - jnp.sum(dy * df, axis=-1)], axis=-1)


# --------------------------------------------------------------------------------------------
# Any framework's recordings -> a trajectory for the fitter
# --------------------------------------------------------------------------------------------


class Trajectory(Keepable, eqx.Module):
    """A recorded two-point trajectory, ready for :func:`unijax.fit.fit_rates` (a frozen pytree).

    Attributes:
        ts: ``(n_epochs,)`` times of the records in epochs.
        hyw: ``(*batch, n_epochs, 3)``: ``h, y, w`` at each record (``*batch`` e.g. seeds).
        dx2: squared input distance ``||x2 - x1||^2`` of the pair (a.u.).
        dy2: squared target distance ``||y2 - y1||^2`` of the pair (a.u.).
    """

    ts: Float[Array, " n_epochs"]
    hyw: Float[Array, "*batch n_epochs 3"]
    dx2: Float[Array, ""]
    dy2: Float[Array, ""]

    @property
    def h(self) -> Float[Array, "*batch n_epochs"]:
        return self.hyw[..., 0]

    @property
    def y(self) -> Float[Array, "*batch n_epochs"]:
        return self.hyw[..., 1]

    @property
    def w(self) -> Float[Array, "*batch n_epochs"]:
        return self.hyw[..., 2]

    def fit(self, **options: Any):
        """``unijax.fit.fit_rates(ts, hyw, dx2=dx2, dy2=dy2, **options)`` for every trajectory
        of the batch (``*batch`` flattened to one trial axis). Needs JAX's x64 mode."""
        from unijax import fit

        Z = self.hyw if self.hyw.ndim == 2 else self.hyw.reshape(-1, *self.hyw.shape[-2:])
        return fit.fit_rates(self.ts, Z, dx2=self.dx2, dy2=self.dy2, **options)

    def summary(self) -> str:
        """One line: batch shape, records, data constants."""
        return (f"Trajectory: batch {tuple(self.hyw.shape[:-2])}, {self.ts.shape[0]} records "
                f"(epochs {float(self.ts[0]):g} to {float(self.ts[-1]):g}), "
                f"dx2 = {float(self.dx2):.4g}, dy2 = {float(self.dy2):.4g}")


    def to_xarray(self):
        """``xarray.Dataset``: ``hyw ([trial,] epoch, variable)``."""
        return results.to_xarray(self)

    def to_dataframe(self):
        """Tidy ``pandas.DataFrame``: a row per ``([trial,] epoch)``, columns ``h, y, w``."""
        return results.to_dataframe(self)

    def summary_dict(self) -> dict:
        """The numbers of :meth:`summary` as a JSON-ready dict (NaN written as ``None``)."""
        return {"type": "Trajectory", "batch_shape": list(self.hyw.shape[:-2]),
                "n_epochs": int(self.ts.shape[0]), "dx2": json_number(self.dx2),
                "dy2": json_number(self.dy2)}

    def labelled_arrays(self, *, grid=None, ts=None) -> tuple[dict, dict, dict]:
        """``({name: (dims, values)}, coords, attrs)``, NumPy only: what
        :func:`unijax.results.to_xarray` labels (``grid`` and ``ts`` are a fit's and unused
        here)."""
        batch = [f"batch_{k}" for k in range(self.hyw.ndim - 2)]
        if len(batch) == 1:
            batch = ["trial"]
        coords = {"epoch": np.asarray(self.ts), "variable": ["h", "y", "w"]}
        return ({"hyw": (batch + ["epoch", "variable"], np.asarray(self.hyw))}, coords,
                {"dx2": float(self.dx2), "dy2": float(self.dy2), "time_unit": "epoch"})


def _to_numpy(name: str, value: Any) -> np.ndarray:
    # Tensors of other frameworks (PyTorch: detach from the graph, move to the CPU) as NumPy.
    for method in ("detach", "cpu"):
        if hasattr(value, method) and callable(getattr(value, method)):
            value = getattr(value, method)()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name} must be an array of numbers, got {type(value).__name__}: {e}"
        ) from e
    return arr


def trajectory(
    hidden: Float[ArrayLike, "*batch n_epochs n_points ..."],
    outputs: Float[ArrayLike, "*batch n_epochs n_points n_out"],
    targets: Float[ArrayLike, "n_points n_out"],
    *,
    inputs: Float[ArrayLike, "n_points ..."] | None = None,
    dx2: float | None = None,
    epochs: Float[ArrayLike, " n_epochs"] | None = None,
    pair: tuple[int, int] = (0, 1),
) -> Trajectory:
    """``(h, y, w)`` per record of a pair of points, from recorded representations and outputs.

    Works with arrays from any framework (NumPy, JAX, PyTorch tensors; they are detached and
    copied to the host). Values are computed in float64 when JAX's x64 mode is on (as the
    fitter needs), else float32.

    Args:
        hidden: the hidden layer's representations, ``(n_epochs, n_points, ...)`` (trailing
            feature axes, e.g. channels x pixels, are flattened), with optional leading batch
            axes such as seeds: ``(*batch, n_epochs, n_points, ...)``. Record them *before*
            each epoch's update so that entry 0 is the initialization.
        outputs: the network outputs of the same points, ``(*batch, n_epochs, n_points,
            n_out)`` (``(..., n_points)`` for a scalar output is read as ``n_out = 1`` when
            ``targets`` is 1-D).
        targets: the targets ``(n_points, n_out)`` (or ``(n_points,)``).
        inputs: the inputs ``(n_points, ...)``, to compute ``dx2``; or give ``dx2``.
        dx2: the squared input distance ``||x_j - x_i||^2`` (> 0), if ``inputs`` is not given.
        epochs: ``(n_epochs,)`` times of the records in epochs, strictly increasing; default
            ``0, 1, ..., n_epochs - 1``.
        pair: the two point indices ``(i, j)`` among ``n_points``.

    Returns:
        :class:`Trajectory` with ``hyw: (*batch, n_epochs, 3)``; ``traj.fit()`` fits it.

    Raises:
        ValueError: shapes that do not agree (naming the argument and the expected shape), a
            bad ``pair``, both or neither of ``inputs`` and ``dx2``, ``dx2 <= 0``, epochs not
            strictly increasing.
        TypeError: an argument that is not an array of numbers.
    """
    H = _to_numpy("hidden", hidden)
    F = _to_numpy("outputs", outputs)
    Y = _to_numpy("targets", targets)
    if Y.ndim == 1:
        Y = Y[:, None]
        if F.shape[-1] != 1:  # (..., n_points) scalar outputs; n_points >= 2, so unambiguous
            F = F[..., None]
    if Y.ndim != 2:
        raise ValueError(f"targets must have shape (n_points, n_out), got {Y.shape}")
    n_points, n_out = Y.shape
    if F.ndim < 3 or F.shape[-2:] != (n_points, n_out):
        raise ValueError(
            f"outputs must have shape (*batch, n_epochs, {n_points}, {n_out}) to match targets "
            f"{Y.shape}, got {F.shape}"
        )
    lead = F.shape[:-2]
    if H.shape[: len(lead) + 1] != lead + (n_points,) or H.ndim < len(lead) + 2:
        raise ValueError(
            f"hidden must have shape {lead + (n_points,)} + (features...) to match outputs "
            f"{F.shape}, got {H.shape}"
        )
    H = H.reshape(lead + (n_points, -1))
    try:
        i, j = (int(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"pair must be two point indices (i, j), got {pair=}") from None
    if not (0 <= i < n_points and 0 <= j < n_points and i != j):
        raise ValueError(f"pair must be two distinct indices in [0, {n_points - 1}], got {pair=}")
    if (inputs is None) == (dx2 is None):
        raise ValueError("give exactly one of inputs (to compute dx2) and dx2")
    if inputs is not None:
        X = _to_numpy("inputs", inputs)
        if X.ndim < 1 or X.shape[0] != n_points:
            raise ValueError(f"inputs must have shape ({n_points}, ...), got {X.shape}")
        X = X.reshape(n_points, -1)
        dx2 = float(np.sum((X[j] - X[i]) ** 2))
    dx2 = float(dx2)
    if not (np.isfinite(dx2) and dx2 > 0):
        raise ValueError(f"dx2 must be finite and > 0 (two distinct inputs), got {dx2=}")
    n_epochs = F.shape[-3]
    if epochs is None:
        ts = np.arange(n_epochs, dtype=np.float64)
    else:
        ts = _to_numpy("epochs", epochs)
        if ts.shape != (n_epochs,) or not np.all(np.diff(ts) > 0):
            raise ValueError(
                f"epochs must be {n_epochs} strictly increasing times (one per record), "
                f"got shape {ts.shape}"
            )
    dtype = jnp.result_type(float)  # float64 under x64, else float32
    hyw = pair_observables(
        jnp.asarray(H, dtype), jnp.asarray(F, dtype), jnp.asarray(Y, dtype), pair=(i, j)
    )
    dy2 = float(np.sum((Y[j] - Y[i]) ** 2))
    return Trajectory(
        ts=jnp.asarray(ts, dtype), hyw=hyw, dx2=jnp.asarray(dx2, dtype),
        dy2=jnp.asarray(dy2, dtype),
    )


# --------------------------------------------------------------------------------------------
# Named layers of a Flax module
# --------------------------------------------------------------------------------------------

#: Flax modules whose output is an affine map of their input: recording one gives the
#: representation *before* whatever nonlinearity the model applies next.
_AFFINE = frozenset({
    "Dense", "DenseGeneral", "Einsum", "Conv", "ConvTranspose", "ConvLocal", "Embed",
})


class LayerInfo(NamedTuple):
    """One recordable hidden layer of a model (see :func:`describe_layers`).

    Attributes:
        name: what to pass as ``layers=`` (``"block/dense"`` for nested submodules; an int
            for an ``(out, hiddens)`` tuple).
        source: ``"submodule"`` (a submodule's output), ``"sown"`` (a value stored with
            ``self.sow("intermediates", name, value)``), ``"output dict"`` or ``"output tuple"``
            (returned by the model).
        module: the submodule's class name (``"Dense"``), or ``None``.
        side: ``"pre-activation"`` for affine submodules (``Dense``, ``Conv``, ...: their output
            comes before the nonlinearity the model applies to it), ``"module output"`` for
            other submodules, ``"as stored"`` for values the model sows or returns itself
            (post-activation if that is what your code stores).
        shape: the shape of one point's representation (flattened when recorded).
    """

    name: str | int
    source: str
    module: str | None
    side: str
    shape: tuple[int, ...]


def _flat_intermediates(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a/b": value}`` for every captured submodule output or sown value."""
    out: dict[str, Any] = {}
    if not isinstance(tree, dict):
        return out
    for k, v in tree.items():
        if k == "__call__":
            out[prefix.rstrip("/")] = v[0] if isinstance(v, (tuple, list)) else v
        elif isinstance(v, dict):
            out.update(_flat_intermediates(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v[0] if isinstance(v, (tuple, list)) else v
    return out


def _abstract(x) -> jax.ShapeDtypeStruct:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        x = jnp.asarray(x)
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)


def _split_output(res):
    if isinstance(res, dict):
        if "out" not in res:
            raise ValueError(f"a model returning a dict must put its output under 'out', got "
                             f"keys {sorted(res)}")
        return res["out"], res
    if isinstance(res, tuple):
        return res[0], res
    return res, None


def describe_layers(model: nn.Module, x: ArrayLike, *, params: Any = None) -> list[LayerInfo]:
    """Every hidden layer of ``model`` that :class:`Recorder` (and ``train_model``) can record.

    Runs the model abstractly (``jax.eval_shape``: no computation) on inputs shaped like ``x``
    with every submodule's output captured.

    Args:
        model: a ``flax.linen.Module`` called as ``model.apply({"params": p}, x)``.
        x: inputs ``(n, in_dim)`` (only the shape and dtype are used).
        params: its parameters (default: the shapes of ``model.init``).

    Returns:
        :class:`LayerInfo` per name, in call order (submodules and sown values), then the keys
        of a returned dict or the indices of a returned ``(out, hiddens)`` tuple.
    """
    xs = _abstract(x)
    if params is None:
        params = jax.eval_shape(lambda xx: model.init(jax.random.key(0), xx), xs)["params"]
    types: dict[str, str] = {}

    def capture(mdl, method_name):
        if method_name == "__call__" and mdl.scope is not None and mdl.scope.path:
            types.setdefault("/".join(mdl.scope.path), type(mdl).__name__)
            return True
        return False

    def run(p, xx):
        return model.apply({"params": p}, xx, capture_intermediates=capture,
                           mutable=["intermediates"])

    res, state = jax.eval_shape(run, params, xs)
    infos = []
    for name, value in _flat_intermediates(state.get("intermediates", {})).items():
        shape = tuple(np.shape(value))[1:]
        if name in types:
            kind = types[name]
            side = "pre-activation" if kind in _AFFINE else "module output"
            infos.append(LayerInfo(name, "submodule", kind, side, shape))
        else:
            infos.append(LayerInfo(name, "sown", None, "as stored", shape))
    _, extra = _split_output(res)
    if isinstance(extra, dict):
        infos += [LayerInfo(k, "output dict", None, "as stored", tuple(np.shape(v))[1:])
                  for k, v in extra.items() if k != "out"]
    elif isinstance(extra, tuple) and len(extra) > 1:
        infos += [LayerInfo(k, "output tuple", None, "as stored", tuple(np.shape(v))[1:])
                  for k, v in enumerate(extra[1])]
    return infos


def _format_layers(infos: Sequence[LayerInfo]) -> str:
    return "; ".join(
        f"{i.name!r} ({i.module + ' output, ' if i.module else i.source + ', '}{i.side}, "
        f"shape {i.shape})" for i in infos
    ) or "none (the model has no submodules, sown values or returned hidden layers)"


class Recorder:
    """Reads named hidden layers of a Flax module in the same forward pass as its output.

    A name is looked up, in order, among the keys of a dict the model returns (output under
    ``"out"``), values stored with ``self.sow("intermediates", name, value)``, and the outputs
    of submodules (``"block/dense"`` for nested ones); an int indexes the hidden layers of a
    model returning ``(out, hiddens)``. **Naming an affine submodule (``nn.Dense``,
    ``nn.Conv``, ...) records its output, the pre-activation**; to record after the
    nonlinearity, sow the activated value (``self.sow("intermediates", "h_post", a)``) or
    return it. :meth:`sides` says which side each recorded name is.

    Args:
        model: a ``flax.linen.Module`` called as ``model.apply({"params": p}, x)``.
        layers: one name/int or a sequence of them.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp
        >>> from unijax import observe
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         a = nn.tanh(nn.Dense(8, name="hidden")(x))
        ...         self.sow("intermediates", "hidden_post", a)
        ...         return nn.Dense(1)(a)
        >>> x = jnp.ones((2, 3))
        >>> rec = observe.Recorder(Net(), ["hidden", "hidden_post"])
        >>> rec.sides(x)
        {'hidden': 'pre-activation', 'hidden_post': 'as stored'}
        >>> params = Net().init(jax.random.key(0), x)["params"]
        >>> out, (pre, post) = rec.apply(params, x)
        >>> bool(jnp.allclose(jnp.tanh(pre), post))
        True
    """

    def __init__(self, model: nn.Module, layers: str | int | Sequence[str | int]):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a flax.linen.Module, got {type(model).__name__}")
        if isinstance(layers, (str, int)) and not isinstance(layers, bool):
            layers = (layers,)
        layers = tuple(layers)
        if not layers or any(isinstance(n, bool) or not isinstance(n, (str, int))
                             for n in layers):
            raise ValueError(f"layers must be a name/int or a non-empty sequence of them, got "
                             f"{layers!r}")
        self.model = model
        self.layers = layers
        self._wanted = frozenset(str(n).split("/")[-1] for n in layers if isinstance(n, str))

    def _capture(self, mdl, method_name) -> bool:
        return method_name == "__call__" and mdl.name in self._wanted

    def check(self, x: ArrayLike, *, params: Any = None) -> list[LayerInfo]:
        """The :class:`LayerInfo` of each recorded layer, in order.

        Raises:
            ValueError: a name the model does not offer, listing every valid name with its
                source and side.
        """
        infos = describe_layers(self.model, x, params=params)
        by_name = {i.name: i for i in infos}
        n_tuple = sum(i.source == "output tuple" for i in infos)
        for n in self.layers:
            # An int indexes the returned hiddens; JAX would clamp or wrap it silently.
            if isinstance(n, (int, np.integer)) and not 0 <= n < n_tuple:
                raise ValueError(
                    f"layer={n} is out of range: the model returns {n_tuple} hidden layers"
                    + (f", indices [0, {n_tuple - 1}]" if n_tuple else
                       " (an int layer needs a model returning (out, hiddens))")
                )
        missing = [n for n in self.layers if n not in by_name]
        if missing:
            raise ValueError(
                f"layers={list(self.layers)!r}: {missing!r} not found in "
                f"{type(self.model).__name__}; valid names: {_format_layers(infos)}"
            )
        return [by_name[n] for n in self.layers]

    def sides(self, x: ArrayLike, *, params: Any = None) -> dict[str | int, str]:
        """``{name: side}``: ``"pre-activation"``, ``"module output"`` or ``"as stored"``."""
        return {i.name: i.side for i in self.check(x, params=params)}

    def apply(self, params: Any, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """``(out, reps)``: the model's output ``(n, n_out)`` and, per recorded layer, its
        representations flattened to ``(n, F)``.

        Raises:
            ValueError: a name the model does not offer (listing the valid ones).
        """
        res, state = self.model.apply(
            {"params": params}, x, capture_intermediates=self._capture, mutable=["intermediates"]
        )
        out, extra = _split_output(res)
        inter = _flat_intermediates(state.get("intermediates", {}))
        reps = []
        for layer in self.layers:
            value = None
            if isinstance(layer, int):
                if isinstance(extra, tuple) and len(extra) > 1 and -len(extra[1]) <= layer < len(
                    extra[1]
                ):
                    value = extra[1][layer]
            elif isinstance(extra, dict) and layer in extra:
                value = extra[layer]
            else:
                value = inter.get(layer)
            if value is None:
                self.check(_abstract(x), params=jax.tree.map(_abstract, params))
                raise ValueError(f"layer {layer!r} was not recorded by {type(self.model).__name__}")
            reps.append(value.reshape(value.shape[0], -1))
        return out, tuple(reps)
