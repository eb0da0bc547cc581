"""Recording the two-point observables while a network trains: the formula and the recorder.

* :func:`pair_observables` is the formula of ``(h, y, w)`` (docs/theory.md section 2), written
  once: the training engine records with it, and :func:`unijax.observe.trajectory` applies it
  to arrays recorded from any framework.
* :class:`Recorder` reads named hidden layers of a Flax module and says which side of the
  activation each one is; :func:`describe_layers` lists every name a module offers.

Apart from fitting a recorded trajectory (:mod:`unijax.observe`): the training engine records
with this module and needs nothing of the fit. The public names are :mod:`unijax.observe`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

__all__ = ["pair_observables", "Recorder", "LayerInfo", "describe_layers"]


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

    Raises:
        ValueError: an input is complex (its dtype is known when traced, so this holds under
            ``jit`` too).
    """
    i, j = pair
    hidden, outputs, targets = jnp.asarray(hidden), jnp.asarray(outputs), jnp.asarray(targets)
    for name, arr in (("hidden", hidden), ("outputs", outputs), ("targets", targets)):
        if jnp.iscomplexobj(arr):  # |d|^2 as d * d would be complex, not a distance
            raise ValueError(f"{name} is complex (dtype {arr.dtype}); real numbers are "
                             "required")
    dh = hidden[..., j, :] - hidden[..., i, :]
    df = outputs[..., j, :] - outputs[..., i, :]
    dy = targets[..., j, :] - targets[..., i, :]
    # Sums of products rather than dots: exact float32 on every backend (no TF32).
    yv = jnp.sum(df * df, axis=-1)
    return jnp.stack([jnp.sum(dh * dh, axis=-1), yv, yv - jnp.sum(dy * df, axis=-1)], axis=-1)


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
