"""Host-side assembly of a training run's records into the fields of ``TrainResult``.

The run's outputs arrive as flat trial batches (``B = n_gains * n_seeds`` trials, gains-major,
padding already dropped, see ``unijax.train._program.Raw``). Here they are joined over chunks,
cut to ``n_epochs``, checked for divergence (a record that is NaN/inf or above the threshold;
every record *after* the first bad one becomes NaN, the bad one is kept) and reshaped to
``(n_gains, n_seeds, ...)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unijax.train._program import Raw
from unijax.train._request import Request


class _Divergence(NamedTuple):
    epoch: np.ndarray  # (B,) int: first bad record (n_epochs: only the final state), -1: none
    diverged: np.ndarray  # (B,) bool
    after: np.ndarray  # (B, n_epochs) bool: records strictly after the divergence epoch


def _divergence(loss: np.ndarray, final_loss: np.ndarray, threshold: float) -> _Divergence:
    """Divergence of ``loss: (B, E)`` and ``final_loss: (B,)`` against ``threshold``."""
    n_epochs = loss.shape[1]
    bad = ~np.isfinite(loss) | (loss > threshold)
    final_bad = ~np.isfinite(final_loss) | (final_loss > threshold)
    epoch = np.where(bad.any(axis=1), bad.argmax(axis=1), np.where(final_bad, n_epochs, -1))
    diverged = epoch >= 0
    after = np.arange(n_epochs)[None, :] > np.where(diverged, epoch, n_epochs)[:, None]
    return _Divergence(epoch, diverged, after)


def _nan_where(a, mask) -> np.ndarray:
    """A float copy of ``a`` with NaN where ``mask`` (broadcast to ``a``'s shape) holds."""
    a = np.array(a, dtype=np.result_type(np.asarray(a).dtype, np.float32), copy=True)
    a[np.broadcast_to(mask, a.shape)] = np.nan
    return a


def _joined(chunks: list, n_epochs: int) -> np.ndarray:
    """Per-chunk ``(B, C, ...)`` records joined along epochs and cut to ``n_epochs``."""
    return np.concatenate([np.asarray(v) for v in chunks], axis=1)[:, :n_epochs]


def assemble(req: Request, raw: Raw) -> dict[str, Any]:
    """The fields of :class:`unijax.train.TrainResult` for the request ``req`` and what its
    run fetched, ``raw``."""
    n_g, n_s, n_epochs = len(req.gains), len(req.seeds), req.n_epochs

    def grid(a):
        a = np.asarray(a)
        return a.reshape((n_g, n_s) + a.shape[1:])

    loss = _joined(raw.losses, n_epochs)
    final_loss = np.asarray(raw.final_obs.loss)
    div = _divergence(loss, final_loss, req.threshold)
    fields = dict(
        gains=req.gains,
        seeds=req.seeds,
        loss=grid(_nan_where(loss, div.after)),
        final_loss=grid(_nan_where(final_loss, div.diverged)),
        diverged=grid(div.diverged),
        diverged_epoch=grid(div.epoch),
        record_epochs=req.record_epochs,
        record_points=np.asarray(req.spec.record_points, np.int64),
        initial_params=_grid_tree(raw.initial_params, grid),
        final_params=_grid_tree(raw.final_params, grid),
    )
    fields.update(_pair_fields(req, raw, div, grid))
    fields.update(_rep_fields(req, raw, div, grid))
    fields = {k: _as_jax(v) for k, v in fields.items()}
    fields.update(_static_fields(req, raw))
    return fields


def _as_jax(value):
    return None if value is None else jax.tree.map(jnp.asarray, value)


def _grid_tree(tree, grid):
    return None if tree is None else jax.tree.map(grid, tree)


def _pair_fields(req: Request, raw: Raw, div: _Divergence, grid) -> dict:
    """``h, y, w`` ``(n_g, n_s[, L], E)`` and ``final_h, final_y, final_w`` of the pair."""
    names = ("h", "y", "w", "final_h", "final_y", "final_w")
    if req.spec.pair is None:
        return dict.fromkeys(names)
    hyw = _nan_where(_joined(raw.hyws, req.n_epochs), div.after[:, :, None, None])
    hyw = np.moveaxis(hyw, 1, 2)  # (B, L, E, 3)
    fhyw = _nan_where(np.asarray(raw.final_obs.hyw), div.diverged[:, None, None])
    if not req.layer_axis:
        hyw, fhyw = hyw[:, 0], fhyw[:, 0]
    values = [grid(hyw[..., k]) for k in range(3)] + [grid(fhyw[..., k]) for k in range(3)]
    return dict(zip(names, values, strict=True))


def _rep_fields(req: Request, raw: Raw, div: _Divergence, grid) -> dict:
    """Representations of the recorded points at the record epochs, the start and the end,
    and the outputs there; a tuple over layers when ``req.layer_axis``."""
    names = ("reps", "initial_reps", "final_reps", "initial_outputs", "final_outputs")
    if not req.spec.record_points:
        return dict.fromkeys(names)
    rec_after = req.record_epochs[None, :] > np.where(div.diverged, div.epoch,
                                                       req.n_epochs)[:, None]
    per_layer = []
    for li in range(len(req.spec.layers)):
        if raw.reps:
            r = np.concatenate([np.asarray(rc[li]) for rc in raw.reps], axis=1)
        else:
            r = np.zeros((len(rec_after), 0) + np.asarray(raw.obs0.reps[li]).shape[1:])
        per_layer.append(grid(_nan_where(r, rec_after[:, :, None, None])))
    initial = [grid(np.asarray(r)) for r in raw.obs0.reps]
    final = [grid(_nan_where(r, div.diverged[:, None, None])) for r in raw.final_obs.reps]
    pick = tuple if req.layer_axis else (lambda layers: layers[0])
    return dict(
        reps=pick(per_layer),
        initial_reps=pick(initial),
        final_reps=pick(final),
        initial_outputs=grid(raw.obs0.out),
        final_outputs=grid(_nan_where(raw.final_obs.out, div.diverged[:, None, None])),
    )


def _static_fields(req: Request, raw: Raw) -> dict:
    """The static fields: what was run, the pair's distances, the layout and the timings."""
    if req.spec.pair is not None:
        i, j = req.spec.pair
        x, y = req.dataset.x, req.dataset.y
        dx2 = float(np.sum((np.asarray(x[j], np.float64) - x[i]) ** 2))
        dy2 = float(np.sum((np.asarray(y[j], np.float64) - y[i]) ** 2))
    else:
        dx2 = dy2 = float("nan")
    optimizer = req.spec.optimizer
    return dict(
        dx2=dx2,
        dy2=dy2,
        config=req.config,
        name=req.name,
        layers=tuple(req.spec.layers),
        layer_axis=req.layer_axis,
        pair=req.spec.pair,
        optimizer=optimizer if isinstance(optimizer, str) else "optax",
        lr=req.lr,
        batch_size=req.spec.batch_size,
        divergence_threshold=req.threshold,
        data_name=req.dataset.name,
        n_devices=len(req.devices),
        n_padded=raw.n_padded,
        compile_s=raw.compile_s,
        init_s=raw.init_s,
        run_s=raw.run_s,
    )
