"""The batching core (unijax._batch): padding, layouts, the in-place block loop.

These are units no public function exposes on its own (every batched entry point calls them);
the public behaviour (fit, train, sweep on one or several devices) is tested with those."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unijax import _batch


def test_pad_repeats_the_last_element_to_a_multiple():
    tree = {"a": np.arange(5.0), "b": np.arange(10).reshape(5, 2)}
    padded, n = _batch.pad(tree, 4)
    assert n == 5
    np.testing.assert_array_equal(padded["a"], [0, 1, 2, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(padded["b"][5:], [[8, 9]] * 3)
    same, n = _batch.pad(tree, 5)
    assert n == 5 and same["a"].shape == (5,)
    np.testing.assert_array_equal(_batch.pad_index([3, 1], 4), [3, 1, 1, 1])
    with pytest.raises(ValueError, match="multiple=0"):
        _batch.pad(tree, 0)
    with pytest.raises(ValueError, match="share axis 0"):
        _batch.pad({"a": np.zeros(3), "b": np.zeros(4)}, 2)


def test_map_batch_on_one_device_equals_the_function():
    x = np.arange(3.0)
    out = _batch.map_batch(lambda t: {"x": t["x"] * 2}, {"x": x})
    np.testing.assert_array_equal(out["x"], [0.0, 2.0, 4.0])


@pytest.mark.parametrize("n_devices", [1, 2, 3, 4])
def test_cpu_layout_runs_whole_chunks_and_fewer_than_8_padding_trials(n_devices):
    for n in range(1, 100):
        lay = _batch.device_layout(n, n_devices, "cpu")
        c = -(-n // n_devices)
        assert lay.chunk == min(8, c) and lay.per_device % lay.chunk == 0
        assert lay.per_device - c < lay.chunk  # as few chunks per device as possible
        assert n <= n_devices * lay.per_device and lay.n_chunks.shape == (n_devices,)
        if lay.per_device == lay.chunk:  # one vmap per device, all of it runs
            assert lay.n_computed == n_devices * lay.per_device and lay.n_computed - n < n_devices
        else:  # devices run the chunks holding a real trial: the first ceil(n / chunk)
            assert lay.n_chunks.sum() == -(-n // lay.chunk)
            assert 0 <= lay.n_computed - n < lay.chunk
    for n in (3, 19, 100):  # elsewhere: one vmap of ceil(n / n_devices) per device
        lay = _batch.device_layout(n, n_devices, "gpu")
        assert lay.chunk == lay.per_device == -(-n // n_devices)


def test_cpu_chunking_runs_every_batch_of_two_or_more_as_chunks_of_8():
    assert _batch.cpu_chunking(1, "cpu") == (1, 1)  # a single fit stays one trial wide
    assert _batch.cpu_chunking(2, "cpu") == (8, 1)
    assert _batch.cpu_chunking(8, "cpu") == (8, 1)
    size, threads = _batch.cpu_chunking(9, "cpu")
    assert size == 8 and threads >= 2
    assert _batch.cpu_chunking(100, "gpu") == (100, 1)


@pytest.mark.parametrize("block", [1, 2, 3, 6])
def test_map_in_place_equals_vmap(block):
    xs = {"p": jnp.arange(12.0).reshape(6, 2)}

    def f(x):
        return {"p": x["p"] * 2.0}, jnp.sum(x["p"])

    new, ys = jax.jit(lambda t: _batch.map_in_place(f, t, block))(xs)
    ref_new, ref_ys = jax.vmap(f)(xs)
    np.testing.assert_array_equal(new["p"], ref_new["p"])
    np.testing.assert_array_equal(ys, ref_ys)


@pytest.mark.parametrize("block", [1, 3, 4, 7, 10])
def test_blocked_rows_writes_every_row_once_in_place(block):
    def rows(idx):
        return jnp.stack([idx.astype(jnp.float32), 2.0 * idx], axis=1)

    got = _batch.blocked_rows(rows, 7, block)
    np.testing.assert_array_equal(got, rows(jnp.arange(7)))


def test_loop_blocks_runs_only_the_first_count_blocks():
    out = jax.jit(lambda c: _batch.loop_blocks(
        lambda start, _, x: (None, x + 1.0), 6, 2, inputs=jnp.ones(6), count=c)[1])(2)
    np.testing.assert_array_equal(out, [2, 2, 2, 2, 0, 0])
    with pytest.raises(ValueError, match="does not divide"):
        _batch.loop_blocks(lambda s, c, x: (None, x), 5, 2, inputs=jnp.ones(5))


def test_trial_bucket_pads_to_a_multiple_of_8_then_of_the_devices():
    for n_devices in (1, 2, 3, 4):
        for n in range(1, 60):
            b = _batch.trial_bucket(n, n_devices)
            base = 1 if n == 1 else -(-n // 8) * 8  # a lone trial is not padded to 8
            assert b.total == -(-base // n_devices) * n_devices
            assert b.total % n_devices == 0 and b.per_device * n_devices == b.total
            assert b.n_padded == b.total - n and b.n_padded < 8 + n_devices
            # the real trials shared evenly (the first devices take the remainder), in order,
            # each device's first; every other position a copy of the last real trial
            assert b.n_valid.sum() == n and b.n_valid.max() - b.n_valid.min() <= 1
            assert np.all(np.diff(b.n_valid) <= 0) and b.n_valid.max() <= b.per_device
            slices = b.index.reshape(n_devices, b.per_device)
            expect = np.full_like(slices, n - 1)
            first = 0
            for d, k in enumerate(b.n_valid):
                expect[d, :k] = np.arange(first, first + k)
                first += k
            np.testing.assert_array_equal(slices, expect)
            np.testing.assert_array_equal(b.index[b.rows], np.arange(n))
    # two trials on two devices run side by side, one each (not both on the first)
    two = _batch.trial_bucket(2, 2)
    np.testing.assert_array_equal(two.n_valid, [1, 1])
    np.testing.assert_array_equal(two.rows, [0, 4])
    np.testing.assert_array_equal(_batch.trial_bucket(9, 2).n_valid, [5, 4])
    np.testing.assert_array_equal(_batch.trial_bucket(3, 1).rows, [0, 1, 2])
    # every size of a bucket gives the same padded size (one compiled program)
    assert {_batch.trial_bucket(n, 1).total for n in range(2, 9)} == {8}
    assert (_batch.trial_bucket(1, 1).total, _batch.trial_bucket(1, 2).total) == (1, 2)
    assert {_batch.trial_bucket(n, 2).total for n in range(9, 17)} == {16}
    with pytest.raises(ValueError, match="n=0"):
        _batch.trial_bucket(0, 1)


@pytest.mark.parametrize("block", [1, 2, 4])
def test_map_in_place_skips_the_blocks_past_n_valid(block):
    xs = {"p": jnp.arange(16.0).reshape(8, 2)}

    def f(x):
        return {"p": x["p"] * 2.0}, jnp.sum(x["p"]) + 1.0

    new, ys = jax.jit(lambda t, n: _batch.map_in_place(f, t, block, n_valid=n))(xs, 3)
    ran = -(-3 // block) * block  # whole blocks run: the trials up to the end of the block
    ref_new, ref_ys = jax.vmap(f)(xs)
    np.testing.assert_array_equal(new["p"][:ran], ref_new["p"][:ran])
    np.testing.assert_array_equal(new["p"][ran:], xs["p"][ran:])  # untouched
    np.testing.assert_array_equal(ys[:ran], ref_ys[:ran])
    np.testing.assert_array_equal(ys[ran:], 0.0)
