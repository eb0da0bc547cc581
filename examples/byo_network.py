"""Bring your own network: train a Flax module of your own with unijax's engine, record the
two-point observables (h, y, w) at a named hidden layer, and fit the effective theory to them.

    python examples/byo_network.py                 # ~20 s on a 2-core laptop CPU
    python examples/byo_network.py --epochs 3000 --seeds 8 --width 256

Any ``flax.linen.Module`` works as long as the hidden layer you want to watch is reachable by
name: here the output of the submodule ``name="hidden"`` (found with Flax's
``capture_intermediates``), an ``nn.Dense``, so its *pre*-activation
(``unijax.observe.describe_layers(MyNet(), x)`` lists every name and which side it
records). A module returning ``{"out": ..., "my_layer": ...}`` or values stored with
``self.sow("intermediates", "my_layer", h)`` works the same way.
"""

import argparse

import jax

# unijax.fit works in float64 (the theory's contract). The networks stay float32 regardless:
# the training engine casts everything to its own dtype.
jax.config.update("jax_enable_x64", True)

import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402

from unijax import data, fit, train  # noqa: E402


class MyNet(nn.Module):
    """A residual-free 4-layer tanh network; the recorded layer is the one named ``hidden``."""

    width: int = 128

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.xavier_normal()
        a = nn.tanh(nn.Dense(self.width, kernel_init=init)(x))
        a = nn.tanh(nn.Dense(self.width, kernel_init=init)(a))
        a = nn.tanh(nn.Dense(self.width, kernel_init=init, name="hidden")(a))
        a = nn.tanh(nn.Dense(self.width, kernel_init=init)(a))
        return nn.Dense(1, kernel_init=init)(a)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--gain", type=float, default=0.5, help="scales every initial kernel")
    parser.add_argument("--no-fit", action="store_true", help="train and record only")
    args = parser.parse_args(argv)

    ds = data.two_points(dx2=1.0, dy2=0.5)  # x1 = -1, x2 = 0; y1 = 0.6, y2 = 0.6 + sqrt(0.5)
    res = train.train_model(
        MyNet(width=args.width), ds, layers="hidden", lr=args.lr, epochs=args.epochs,
        seeds=args.seeds, gains=[args.gain],
    )
    print(res.summary())

    ok = ~np.asarray(res.diverged[0])
    Z = np.asarray(res.hyw()[0], np.float64)[ok]  # (n_trials, n_epochs, 3): h, y, w
    print(f"h(t) of seed 0 at epochs 0, {args.epochs // 2}, {args.epochs - 1}: "
          f"{Z[0, 0, 0]:.4g}, {Z[0, args.epochs // 2, 0]:.4g}, {Z[0, -1, 0]:.4g}")
    if args.no_fit:
        return res, None
    rates = fit.fit_rates(np.asarray(res.ts, np.float64), Z, dx2=res.dx2, dy2=res.dy2)
    print(rates.summary())
    for i in range(rates.n_trials):
        print(f"  trial {i}: eta_h = {float(rates.eta_h[i]):.4g}, "
              f"eta_y = {float(rates.eta_y[i]):.4g} 1/epoch, "
              f"R^2 (h, y, w) = {np.round(np.asarray(rates.r2[i]), 4).tolist()}")
    return res, rates


if __name__ == "__main__":
    main()
