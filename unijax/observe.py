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

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from unijax._record import LayerInfo, Recorder, describe_layers, pair_observables
from unijax.fit import fit_rates
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
        Z = self.hyw if self.hyw.ndim == 2 else self.hyw.reshape(-1, *self.hyw.shape[-2:])
        return fit_rates(self.ts, Z, dx2=self.dx2, dy2=self.dy2, **options)

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
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}")
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name} must be an array of numbers, got {type(value).__name__}: {e}"
        ) from e
    if np.iscomplexobj(raw):  # float64 would silently drop the imaginary part
        raise ValueError(f"{name} is complex (dtype {raw.dtype}, shape {raw.shape}); real "
                         "numbers are required (as train requires)")
    try:
        arr = raw.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name} must be an array of numbers, got {type(value).__name__} of dtype "
            f"{raw.dtype}: {' '.join(str(e).split())[:100]}"
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
        ValueError: shapes that do not agree (naming the argument and the expected shape), an
            empty axis (0 epochs, 0 features), complex values, a bad ``pair``, both or neither
            of ``inputs`` and ``dx2``, ``dx2 <= 0``, epochs not strictly increasing.
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
    if 0 in F.shape:
        axes = ("n_points", "n_out") if F.shape[-3] else ("n_epochs",)
        raise ValueError(
            f"outputs has shape {F.shape}, with an empty axis ({', '.join(axes)} or a batch "
            "axis of length 0): a trajectory needs at least 1 record (n_epochs >= 1) of at "
            "least 2 points"
        )
    if H.shape[: len(lead) + 1] != lead + (n_points,) or H.ndim < len(lead) + 2:
        raise ValueError(
            f"hidden must have shape {lead + (n_points,)} + (features...) to match outputs "
            f"{F.shape}, got {H.shape}"
        )
    if H.size == 0:
        raise ValueError(f"hidden has shape {H.shape}: no features (a feature axis of length "
                         "0); the hidden representations need at least 1 feature")
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
