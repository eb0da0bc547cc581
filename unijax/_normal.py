"""``jax.random.normal(key, (n,), dtype)`` cut into consecutive pieces, bit for bit, each
piece computed on its own.

Drawing the weights of the paper's default network (4.76 M standard normals, cut into its
kernels) is one elementwise loop that XLA's CPU backend runs on one core: about 44 ms on the
2-core Xeon, a fixed cost of every ``unijax.train`` call (about as much as ten epochs of
training that network). Its runtime does run independent loops side by side on its thread
pool, so :func:`normal_pieces` computes each piece (each kernel) as a loop of its own: the same
numbers, every seed's weights as before, on all cores.

It can, because JAX's threefry with ``jax_threefry_partitionable`` (the default since JAX 0.5)
makes the random bits of element ``i`` a function of the key and ``i`` alone: the bits of a
slice are the hash of its own counters (``threefry2x32_p``, public in ``jax.extend.random``),
and the bits become normals as ``jax.random.normal`` makes them (uniform on ``(-1, 1)`` from
the mantissa, then ``sqrt(2) erfinv``). Where that does not hold (another key type, the
partitionable flag off, another float width, a short vector) it calls ``jax.random.normal``
itself. tests/test_nets.py checks the two bit for bit, so a JAX that changes its recipe fails
there rather than drawing other weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["normal_pieces"]

#: Below this many numbers one loop is quick enough (and compiles to less).
MIN_SPLIT = 1 << 18


def _splittable(key, n: int, dtype) -> bool:
    return (
        n >= MIN_SPLIT
        and n < 2**32  # the high counter word stays 0
        and bool(jax.config.jax_threefry_partitionable)
        and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        and str(jax.random.key_impl(key)) == "threefry2x32"
        and np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))
    )


def _slice(k1, k2, start: int, size: int, dtype):
    """Normals ``start .. start + size - 1`` of the vector of the key words ``k1, k2``."""
    from jax.extend.random import threefry2x32_p

    lo = lax.iota(np.uint32, size) + np.uint32(start)
    bits1, bits2 = threefry2x32_p.bind(k1, k2, jnp.zeros_like(lo), lo)
    nbits, nmant = np.finfo(dtype).bits, np.finfo(dtype).nmant
    if nbits == 64:
        uint = np.uint64
        bits = (lax.convert_element_type(bits1, uint) << uint(32)) | lax.convert_element_type(
            bits2, uint)
    else:
        uint = np.uint32
        bits = bits1 ^ bits2
    one = np.array(1.0, dtype)
    mantissa = lax.shift_right_logical(bits, jnp.asarray(nbits - nmant, uint))
    floats = lax.bitcast_convert_type(mantissa | jnp.asarray(one.view(uint), uint), dtype) - one
    lo_val = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    u = lax.max(lo_val, floats * (one - lo_val) + lo_val)
    return lax.mul(np.array(np.sqrt(2), dtype), lax.erf_inv(u))


def normal_pieces(key, sizes, dtype=jnp.float32) -> list:
    """``jax.random.normal(key, (sum(sizes),), dtype)`` cut into consecutive pieces of
    ``sizes`` (Python ints), each computed on its own where the module's docstring says it can
    be: the same numbers either way. ``key``: a typed ``jax.random`` key, traced or not."""
    sizes = [int(n) for n in sizes]
    n = sum(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int) if sizes else []
    if not _splittable(key, n, dtype):
        z = jax.random.normal(key, (n,), dtype)
        return [z[a: a + m] for a, m in zip(starts, sizes, strict=True)]
    k1, k2 = jax.random.key_data(key)
    # The barrier keeps each piece as computed: fused into a product, XLA would fold
    # ``sqrt(2) * erfinv(u) * scale`` into ``erfinv(u) * (sqrt(2) scale)``, which rounds
    # otherwise than the product with ``jax.random.normal``'s number (half of the weights by
    # one ulp).
    return list(lax.optimization_barrier(
        tuple(_slice(k1, k2, int(a), m, dtype) for a, m in zip(starts, sizes, strict=True))))
