"""One training step of one trial: the losses and the hand-fused full-batch SGD step.

The fused step (:func:`dense_sgd_step`) is the dense networks' (``nets.MLP``: ``mlp``,
``skip``) full-batch gradient descent written by hand so that every weight matrix is read
twice and written once per step; every other case goes through ``jax.grad`` and Optax
(``unijax.train._epoch``). ``benchmarks/bench_sgd_step.py`` measures the two against each
other; tests check they agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: ``loss = LOSS_SCALE[name] * 0.5 * mean((f - y)^2)`` for each of ``configs.LOSSES``.
LOSS_SCALE = {"half_mse": 1.0, "mse": 2.0}


def loss(name: str, out: jax.Array, y: jax.Array, weights: jax.Array | None = None):
    """The training loss ``name`` (``configs.LOSSES``): a mean over points and outputs.

    ``out, y: (n, out_dim)``. ``weights: (n,)`` (0 or 1) restricts the mean to the points with
    weight 1 (a padded mini-batch), as a PyTorch ``DataLoader`` with ``drop_last=False`` gives
    for the last batch. Returns a scalar in ``out``'s dtype.
    """
    if name not in LOSS_SCALE:
        raise ValueError(f"unknown loss={name!r}; valid: {list(LOSS_SCALE)}")
    c = jnp.asarray(0.5 * LOSS_SCALE[name], out.dtype)
    if weights is None:
        return c * jnp.mean((out - y) ** 2)
    sq = jnp.mean((out - y) ** 2, axis=-1)
    return c * jnp.sum(weights * sq) / jnp.sum(weights)


def outer_sum(a_t: jax.Array, d_t: jax.Array, precision=None) -> jax.Array:
    """``A^T D`` from the column layouts ``a_t = A^T: (n, P)``, ``d_t = D^T: (m, P)``, the
    weight gradient ``(n, m)`` of a dense layer with inputs ``A: (P, n)`` and output gradients
    ``D: (P, m)``."""
    if a_t.shape[1] <= 4:
        # A sum of P outer products is elementwise, so XLA fuses it into the weight update:
        # the gradient matrix is never written to memory.
        return sum(a_t[:, p][:, None] * d_t[:, p][None, :] for p in range(a_t.shape[1]))
    return jax.lax.dot_general(a_t, d_t, (((1,), (1,)), ((), ())), precision=precision)


def dense_sgd_step(params, x, y, lr, *, depth, phi, skip, layers, precision, loss="half_mse"):
    """One full-batch gradient-descent step of the dense network ``nets.MLP``, by hand.

    Same mathematics as ``jax.grad`` of the loss (``"half_mse"``: ``0.5 * mean((f(x) - y)^2)``,
    ``"mse"``: ``mean((f(x) - y)^2)``) followed by
    ``W <- W - lr * dL/dW`` (tests check the two agree), arranged so that every weight matrix
    is read twice and written once per step, the least a layer-by-layer backward pass can do:
    the forward pass reads ``W``; the backward pass writes ``W_new = W - lr * A^T D`` in place
    (``A`` the layer's inputs, ``D = dL/dz`` its output gradients, ``(P, n)`` and ``(P, m)``
    for ``P`` points; for ``P <= 4`` the outer products fuse into the update) and then obtains
    the gradient for the layer below from the *updated* matrix,

        D W^T = D W_new^T + lr (D D^T) A,

    which is exact algebra: ``W_new`` is read while it is still in cache and the old ``W`` is
    dead once updated, so XLA need not copy it (with autodiff it keeps a copy of every ``W``
    alive for the backward pass: ~8 instead of ~4 passes over the parameters per step).

    The backward pass runs on transposed activations ("columns", ``(n, P)``), so that its
    matrix product is ``W_new @ D^T`` with the ``(in, out)`` kernel as the left operand in its
    stored layout: written as ``D @ W_new^T``, XLA:CPU transposes every ``W_new`` into a scratch
    buffer first (one more read and write of the weights; measured 3.9 -> 3.1 ms of CPU per
    step of the default network, width 500, 20 layers).

    Args:
        params: one trial's ``{"dense_k": {"kernel": (in, out), "bias": (out,)}}``,
            ``k = 0 .. depth``.
        x, y: ``(P, in_dim)`` inputs and ``(P, out_dim)`` targets; lr: the step size.
        depth, phi, skip, precision: the network's hidden layers, nonlinearity, skip
            connections and matmul precision; layers: hidden activations to return.

    Returns:
        ``(new_params, out, reps)``: the forward pass's output ``(P, out_dim)`` and the hidden
        activations of ``layers`` (before the update), for the epoch's records.
    """
    names = [f"dense_{k}" for k in range(depth + 1)]
    ws = [params[n]["kernel"] for n in names]
    bs = [params[n]["bias"] for n in names]
    dtype = ws[0].dtype
    lr = jnp.asarray(lr, dtype)
    inputs, zs, hs = [], [], []
    a = jnp.asarray(x, dtype)
    for k in range(depth + 1):
        inputs.append(a)
        z = jnp.dot(a, ws[k], precision=precision) + bs[k]
        zs.append(z)
        if k < depth:
            a = phi(z)
            if skip and k >= 2:
                a = a + hs[k - 2]
            hs.append(a)
        else:
            a = z
    out = a
    # dL/dout, transposed: (out_dim, P). Every backward quantity below is a column (n, P).
    d_t = ((out - y) * jnp.asarray(LOSS_SCALE[loss] / out.size, dtype)).T
    grad_h: list = [None] * depth  # total dL/dh_k (columns), completed before it is used
    new = {}
    contract_0 = (((0,), (0,)), ((), ()))  # columns . columns -> (P, P)
    contract_1 = (((1,), (0,)), ((), ()))  # (n, m) @ (m, P)
    for k in range(depth, -1, -1):
        a_t = inputs[k].T
        w_new = ws[k] - lr * outer_sum(a_t, d_t, precision)
        new[names[k]] = {"kernel": w_new, "bias": bs[k] - lr * jnp.sum(d_t, axis=1)}
        if k == 0:
            break
        gram = jax.lax.dot_general(d_t, d_t, contract_0, precision=precision)  # D D^T
        g_t = jax.lax.dot_general(w_new, d_t, contract_1, precision=precision) + lr * jnp.dot(
            a_t, gram, precision=precision
        )  # = W_old @ D^T = (D @ W_old^T)^T
        if skip and k + 1 <= depth - 1 and k + 1 >= 2:
            g_t = g_t + grad_h[k + 1]  # h_{k+1} = phi(z_{k+1}) + h_{k-1}
        grad_h[k - 1] = g_t
        # The nonlinearity's own derivative (autodiff of phi), so the kinks are PyTorch's
        # (nets.leaky_relu: negative slope at exactly 0) here as in the autodiff paths.
        _, vjp = jax.vjp(phi, zs[k - 1].T)
        d_t = vjp(g_t)[0]
    return new, out, tuple(hs[layer] for layer in layers)
