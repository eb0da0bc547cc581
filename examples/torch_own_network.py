"""Fit the theory to a PyTorch network: train it as usual, record the hidden representations
and outputs of two points before every update, and hand them to unijax.

    pip install -e . -r examples/requirements-torch.txt   # PyTorch only for this example
    python examples/torch_own_network.py                  # ~25 s on a 2-core laptop CPU
    python examples/torch_own_network.py --epochs 3000 --seeds 8 --plot fit.png

Nothing here is specific to PyTorch except the training loop: any framework works, as long as
you can read a hidden layer (here with a forward hook) and the outputs of the two points.
"""

import argparse

import jax

# The fitter works in float64 (the theory's contract); switch JAX's x64 mode on first.
jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from unijax import observe  # noqa: E402


def make_net(width: int, depth: int, gain: float) -> torch.nn.Sequential:
    """A tanh MLP ``1 -> width (x depth) -> 1`` with Xavier-normal weights and zero biases."""
    layers, fan_in = [], 1
    for _ in range(depth):
        layers += [torch.nn.Linear(fan_in, width), torch.nn.Tanh()]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, 1))
    net = torch.nn.Sequential(*layers)
    for m in net:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_normal_(m.weight, gain=gain)
            torch.nn.init.zeros_(m.bias)
    return net


def record_run(seed: int, x, y, *, width, depth, layer, gain, lr, epochs):
    """Train one network by full-batch gradient descent on ``0.5 * MSE``; return its hidden
    representations ``(epochs, 2, width)`` and outputs ``(epochs, 2, 1)``, each recorded
    *before* the update of its epoch (entry 0 = the initialization)."""
    torch.manual_seed(seed)
    net = make_net(width, depth, gain)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    # Record after the nonlinearity of hidden layer `layer` (the Tanh module's output).
    seen = {}
    net[2 * layer + 1].register_forward_hook(lambda mod, inp, out: seen.update(h=out))
    hidden, outputs = [], []
    for _ in range(epochs):
        out = net(x)
        hidden.append(seen["h"].detach().clone())
        outputs.append(out.detach().clone())
        loss = 0.5 * torch.mean((out - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.stack(hidden), torch.stack(outputs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--layer", type=int, default=2, help="hidden layer to watch (0-based)")
    parser.add_argument("--gain", type=float, default=0.5, help="Xavier gain of the init")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--plot", default=None, help="save the fit against the data here")
    parser.add_argument("--no-fit", action="store_true", help="train and record only")
    args = parser.parse_args(argv)

    # Two points with ||x2 - x1||^2 = 1 and ||y2 - y1||^2 = 0.5.
    x = torch.tensor([[-1.0], [0.0]])
    y = torch.tensor([[0.6], [0.6 + 0.5**0.5]])

    runs = [record_run(s, x, y, width=args.width, depth=args.depth, layer=args.layer,
                       gain=args.gain, lr=args.lr, epochs=args.epochs)
            for s in range(args.seeds)]
    hidden = torch.stack([h for h, _ in runs])   # (n_seeds, n_epochs, 2, width)
    outputs = torch.stack([o for _, o in runs])  # (n_seeds, n_epochs, 2, 1)

    # (h, y, w) per epoch, with dx2 and dy2: ready for the fitter.
    traj = observe.trajectory(hidden, outputs, targets=y, inputs=x)
    print(traj.summary())
    if args.no_fit:
        return traj, None
    rates = traj.fit()  # unijax.fit.fit_rates(traj.ts, traj.hyw, dx2=..., dy2=...)
    print(rates.summary())
    for i in range(rates.n_trials):
        print(f"  seed {i}: eta_h = {float(rates.eta_h[i]):.4g}, "
              f"eta_y = {float(rates.eta_y[i]):.4g} 1/epoch, "
              f"R^2 (h, y, w) = {np.round(np.asarray(rates.r2[i]), 4).tolist()}")
    if args.plot:
        from unijax import plots

        fig = plots.fit_vs_data(rates, traj.ts, traj.hyw)
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"figure: {args.plot}")
    return traj, rates


if __name__ == "__main__":
    main()
