"""The fused full-batch SGD step of ``unijax.train`` against ``jax.grad`` + Optax SGD.

    python benchmarks/bench_sgd_step.py             # ~1 min on 2 CPU cores
    python benchmarks/bench_sgd_step.py --width 500 --depth 20 --trials 4 --epochs 50

The paper's default network (``configs.get("default")``: an MLP, leaky ReLU, float32, precision
"highest"; ``--width`` x ``--depth``, default 500 x 20 as in the paper) on its two-point data
set, ``--trials`` trials ``vmap``-ed, ``--epochs`` epochs in one ``lax.scan``, two ways:

* fused: ``unijax.train._step.dense_sgd_step`` (every weight matrix read twice and written once
  per step; what ``train`` runs for full-batch SGD on the built-in dense networks);
* autodiff: ``jax.value_and_grad`` of the same half-MSE loss through ``nets.MLP.apply``, then
  ``optax.sgd`` (what ``train`` runs for every other network and optimizer).

Both return the forward pass's output and the recorded hidden layer, as training needs for its
records. Printed: milliseconds per epoch (median and best of ``--reps`` calls, compilation
timed apart, after ``block_until_ready``) and the largest parameter difference after the run
(the two agree to float32 rounding).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import compile_and_time, header, int_options, load_average  # noqa: E402


def main(argv=None) -> int:
    args = int_options(__doc__, argv, width=500, depth=20, trials=4, epochs=50, reps=5)

    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from unijax import configs, nets, train
    from unijax.train import _step as _train_step

    print(header(jax))
    cfg = configs.get("default", width=args.width, depth=args.depth)
    module = train.make_network(cfg)
    data = train.load_data(cfg)
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    lr = jnp.float32(cfg.lr)
    layer = cfg.layer if cfg.layer < args.depth else args.depth - 1
    keys = jax.random.split(jax.random.key(0), args.trials)
    params = jax.vmap(lambda k: nets.init(module, x, key=k, gain=1.0))(keys)

    fused = functools.partial(
        _train_step.dense_sgd_step, depth=module.depth,
        phi=nets.NONLINEARITIES[module.nonlinearity], skip=module.skip, layers=(layer,),
        precision=nets.PRECISIONS[module.precision])
    tx = optax.sgd(lr)

    def autodiff(p, x, y, lr):
        def loss(p):
            out, hiddens = module.apply({"params": p}, x, train=False)
            return 0.5 * jnp.mean((out - y) ** 2), (out, (hiddens[layer],))

        (_, (out, reps)), g = jax.value_and_grad(loss, has_aux=True)(p)
        updates, _ = tx.update(g, tx.init(p), p)
        return optax.apply_updates(p, updates), out, reps

    def program(step):
        def one(p):
            def epoch(p, _):
                p, out, reps = step(p, x, y, lr)
                return p, (out, reps[0])

            return jax.lax.scan(epoch, p, None, length=args.epochs)

        return jax.jit(jax.vmap(one))

    rows, finals = {}, {}
    for name, step in (("fused", fused), ("jax.grad + optax", autodiff)):
        fn = program(step)
        out, compile_s, times = compile_and_time(fn, (params,), args.reps,
                                                 jax.block_until_ready)
        finals[name] = out[0]
        rows[name] = (np.median(times), min(times), compile_s)

    print(f"\nwidth {args.width}, depth {args.depth}, {args.trials} trials x {args.epochs} "
          f"epochs (float32, vmap + scan); ms per epoch, median and best of {args.reps}")
    print(f"{'':>18} {'median ms':>10} {'best ms':>9} {'compile s':>10}")
    for name, (med, best, comp) in rows.items():
        print(f"{name:>18} {1e3 * med / args.epochs:>10.3f} {1e3 * best / args.epochs:>9.3f} "
              f"{comp:>10.1f}")
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(finals["fused"]), jax.tree.leaves(finals["jax.grad + optax"]), strict=True))
    print(f"max |parameter difference| after {args.epochs} epochs: {diff:.2e}")
    print(f"speed: autodiff / fused = {rows['jax.grad + optax'][0] / rows['fused'][0]:.2f}x "
          f"(median)")
    print(f"load after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
