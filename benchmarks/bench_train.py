"""Training throughput: unijax against PyTorch's sequential loop and its vmap ensemble, and the
distance to the memory floor.

Trains the default network of Table 1 (width 500, 20 hidden layers, leaky ReLU, two points,
full-batch gradient descent, (h, y, w) and the loss recorded at hidden layer 10 every epoch):

(a) PyTorch, one seed after another, as the paper's code did: the "lean" loop (observables
    from the training forward pass, no DataLoader: the fastest fair sequential loop we could
    write) and, with ``--paper-loop``, the authors' loop (a separate no-grad tracking forward
    pass, then a DataLoader step, like their ``Compiler.training_run``).
(b) PyTorch's own ensemble method: the seeds' networks stacked with
    ``torch.func.stack_module_state`` and trained together, ``torch.func.vmap`` of
    ``torch.func.grad`` of ``functional_call``, the update applied to the stacked tensors.
(c) ``unijax.train.train`` with each of ``--seeds`` seeds in one compiled call.

Both PyTorch methods run at each of ``--torch-threads`` (``torch.set_num_threads``); the
fastest setting of each is the baseline. PyTorch is optional (``pip install torch``, the
``[bench]`` extra); without it (a) and (b) are skipped with a message.

Two figures per method:

* **whole call, one seed**: wall seconds of everything a user waits for to train one seed for
  ``--epochs`` epochs: building the network (PyTorch: ``nn.Linear`` layers, Xavier init;
  unijax: the whole ``train.train`` call, drawing and measuring the weights, training,
  fetching the records; its programs compiled by an earlier call of the same process, the
  one-time compile reported apart);
* **per seed-epoch**: training seconds per seed per epoch at each seed count.

**The memory floor** of one SGD step: every weight is read in the forward pass, read in the
backward pass and written once, ``3 x 4 bytes x n_params`` (biases and activations are
negligible), over the machine's memory bandwidth. The bandwidth is measured here: a NumPy copy
(read + write) of a buffer larger than the last-level cache (``max(256 MiB, 1.25 x LLC)``
from ``/sys/devices/system/cpu/cpu0/cache``), on 1 thread and on all cores, the faster one
counted; on a GPU, a jitted elementwise update on the device. Each method's per seed-epoch
time is printed as a multiple of the floor. (A network smaller than the cache can beat the
floor: its weights need not leave the cache between epochs.)

Repetitions are interleaved (PyTorch and unijax take turns), so that other work on a shared
machine slows them alike; medians are printed with the range, and the load average before and
after.

    python benchmarks/bench_train.py                        # 150 epochs, 3 repeats
    python benchmarks/bench_train.py --epochs 300 --seeds 1,8,16,64 --paper-loop
    python benchmarks/bench_train.py --epochs 20 --repeats 1 --seeds 1,2 --ensemble-seeds 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from unijax import configs, nets, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache of ``/sys/devices/system/cpu/cpu0/cache`` in bytes, or None."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else None


def floor_buffer_bytes() -> int:
    """Bytes of the copied buffer: larger than the last-level cache, at least 256 MiB."""
    llc = last_level_cache_bytes() or 0
    return max(256 << 20, int(1.25 * llc) // 4 * 4)


def numpy_copy_bandwidth(n_bytes: int, threads: int = 1, repeats: int = 5) -> float:
    """Bytes moved (read + write) per second by ``np.copyto`` of ``n_bytes``, best of N."""
    a = np.ones(n_bytes // 4, np.float32)
    b = np.empty_like(a)
    b.fill(0)  # touch the pages before timing
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in np.array_split(np.arange(a.size), threads)]

    def work(lo, hi):
        np.copyto(b[lo:hi], a[lo:hi])

    best = 0.0
    for _ in range(repeats):
        ths = [threading.Thread(target=work, args=bd) for bd in bounds]
        t0 = time.perf_counter()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t0))
    return best


def device_copy_bandwidth(n_bytes: int, repeats: int = 5) -> float:
    """Read + write bandwidth of a jitted elementwise update on JAX's default device."""
    f = jax.jit(lambda a: a * 1.0001, donate_argnums=0)
    a = jnp.ones(n_bytes // 4, jnp.float32)
    a = f(a).block_until_ready()
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = f(a).block_until_ready()
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t0))
    return best


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------


class TorchBench:
    """The two PyTorch methods on the default network's two points (None without torch)."""

    def __init__(self, cfg):
        import torch

        self.torch = torch
        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.x = torch.tensor([[-1.0], [-1.0 + cfg.dx2**0.5]], device=self.device)
        self.y = torch.tensor([[0.6], [0.6 + cfg.dy2**0.5]], device=self.device)
        torch_ = torch

        class Net(torch_.nn.Module):
            def __init__(self, width, depth, layer):
                super().__init__()
                dims = [1] + [width] * depth + [1]
                self.lins = torch_.nn.ModuleList(
                    torch_.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
                )
                self.layer = layer

            def forward(self, inp):
                a, rec = inp, None
                for k, lin in enumerate(self.lins):
                    a = lin(a)
                    if k < len(self.lins) - 1:
                        a = torch_.nn.functional.leaky_relu(a, 0.01)
                        if k == self.layer:
                            rec = a
                return a, rec

        self.Net = Net

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def build(self, seed):
        torch, cfg = self.torch, self.cfg
        torch.manual_seed(seed)
        net = self.Net(cfg.width, cfg.depth, cfg.layer)
        for lin in net.lins:
            torch.nn.init.xavier_normal_(lin.weight, gain=cfg.gain)
            torch.nn.init.zeros_(lin.bias)
        return net.to(self.device)

    def _record(self, rec, e, out, h, loss):
        dh, df, dy = h[1] - h[0], out[1] - out[0], self.y[1] - self.y[0]
        yv = df @ df
        rec[e, 0], rec[e, 1], rec[e, 2], rec[e, 3] = dh @ dh, yv, yv - dy @ df, loss

    def lean_loop(self, net, opt, n):
        torch, x, y = self.torch, self.x, self.y
        rec = torch.zeros(n, 4, device=self.device)
        for e in range(n):
            opt.zero_grad()
            out, h = net(x)
            loss = 0.5 * torch.mean((out - y) ** 2)
            loss.backward()
            with torch.no_grad():
                self._record(rec, e, out, h, loss)
            opt.step()
        return rec

    def paper_loop(self, net, opt, n):
        # As the authors' Compiler.training_run: track (eval, no grad), then a training step
        # through a DataLoader (full batch of the two points, shuffled).
        torch, x, y = self.torch, self.x, self.y
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=2, shuffle=True
        )
        rec = torch.zeros(n, 4, device=self.device)
        for e in range(n):
            net.eval()
            with torch.no_grad():
                out, h = net(x)
                self._record(rec, e, out, h, 0.5 * torch.mean((out - y) ** 2))
            net.train()
            for xb, yb in loader:
                opt.zero_grad()
                outb, _ = net(xb)
                (0.5 * torch.mean((outb - yb) ** 2)).backward()
                opt.step()
        return rec

    def sequential(self, loop, epochs, seed=0):
        """``(whole call s, training s per epoch)`` of one seed: build, warm up 3 epochs on a
        throwaway network (allocator, thread pool), then build and train the timed one."""
        torch = self.torch
        warm = self.build(seed)
        loop(warm, torch.optim.SGD(warm.parameters(), lr=self.cfg.lr), 3)
        self.sync()
        t0 = time.perf_counter()
        net = self.build(seed)
        opt = torch.optim.SGD(net.parameters(), lr=self.cfg.lr)
        t1 = time.perf_counter()
        rec = loop(net, opt, epochs)
        rec.cpu()
        t2 = time.perf_counter()
        return t2 - t0, (t2 - t1) / epochs

    def ensemble(self, n_seeds, epochs):
        """Training seconds per seed-epoch of ``n_seeds`` networks trained together with
        ``torch.func`` (stacked parameters, ``vmap`` of ``grad``), 3 warm-up epochs apart."""
        import copy

        from torch.func import functional_call, grad, stack_module_state, vmap

        torch, x, y, lr = self.torch, self.x, self.y, self.cfg.lr
        models = [self.build(s) for s in range(n_seeds)]
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        del models

        def loss_fn(p, b):
            out, h = functional_call(base, (p, b), (x,))
            return 0.5 * torch.mean((out - y) ** 2), (out, h)

        step = vmap(grad(loss_fn, has_aux=True))
        names = list(params)
        rec = torch.zeros(n_seeds, epochs + 3, 4, device=self.device)
        dy = y[1] - y[0]

        def run(e0, n):
            for e in range(e0, e0 + n):
                grads, (out, h) = step(params, buffers)
                with torch.no_grad():
                    dh, df = h[:, 1] - h[:, 0], out[:, 1] - out[:, 0]
                    yv = (df * df).sum(-1)
                    rec[:, e, 0] = (dh * dh).sum(-1)
                    rec[:, e, 1] = yv
                    rec[:, e, 2] = yv - (df * dy).sum(-1)
                    rec[:, e, 3] = 0.5 * ((out - y) ** 2).mean((1, 2))
                    torch._foreach_add_([params[k] for k in names], [grads[k] for k in names],
                                        alpha=-lr)

        run(0, 3)
        self.sync()
        t0 = time.perf_counter()
        run(3, epochs)
        rec.cpu()
        return (time.perf_counter() - t0) / (n_seeds * epochs)


# ---------------------------------------------------------------------------------------------
# unijax
# ---------------------------------------------------------------------------------------------


def unijax_call(cfg, n_seeds):
    """``(whole call s, training s per seed-epoch, result)`` of one ``train.train`` call."""
    t0 = time.perf_counter()
    res = train.train(cfg, seeds=n_seeds)
    jax.block_until_ready(res.loss)
    whole = time.perf_counter() - t0
    return whole, res.run_s / (n_seeds * cfg.epochs), res


def med(values):
    return statistics.median(values)


def fmt_ms(values):
    v = [1e3 * x for x in values]
    return f"{statistics.median(v):9.2f} [{min(v):.2f}-{max(v):.2f}]"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=150, help="timed epochs per run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (medians)")
    p.add_argument("--seeds", default="1,8,16", help="unijax seed counts, comma separated")
    p.add_argument("--ensemble-seeds", default="8,16",
                   help="seed counts of PyTorch's torch.func ensemble, comma separated")
    p.add_argument("--torch-threads", default="1,all",
                   help="torch.set_num_threads values, comma separated ('all' = cores)")
    p.add_argument("--paper-loop", action="store_true",
                   help="also time the authors' sequential loop (tracking pass + DataLoader)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--buffer-mib", type=int, default=None,
                   help="MiB of the copied buffer (default: max(256, 1.25 x last-level cache))")
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--depth", type=int, default=20)
    args = p.parse_args(argv)
    seed_counts = [int(s) for s in args.seeds.split(",")]
    ens_counts = [int(s) for s in args.ensemble_seeds.split(",") if s]
    cfg = configs.get("default", epochs=args.epochs, width=args.width, depth=args.depth)
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()

    dev = jax.devices()[0]
    print("== unijax training benchmark: default network of Table 1 ==")
    print(f"machine: {cpu_model()}, {cores} CPU cores; "
          f"JAX {jax.__version__} on {dev.platform} ({dev.device_kind}) x{len(jax.devices())}; "
          f"dtype {cfg.dtype}; load average before {load_before[0]:.2f}")
    print(f"network: width {cfg.width}, {cfg.depth} hidden layers, {cfg.nonlinearity}, two "
          f"points, full-batch SGD lr {cfg.lr}, (h, y, w, loss) at layer {cfg.layer} every "
          f"epoch; {args.epochs} epochs x {args.repeats} interleaved repeats")

    # The floor.
    module = nets.make("mlp", width=cfg.width, depth=cfg.depth)
    n_params = nets.count_params(
        jax.eval_shape(lambda: nets.init(module, jnp.ones((2, 1)), key=jax.random.key(0)))
    )
    step_bytes = 3 * 4 * n_params
    buf = floor_buffer_bytes() if args.buffer_mib is None else args.buffer_mib << 20
    llc = last_level_cache_bytes()
    bw = {"1 thread": numpy_copy_bandwidth(buf, 1)}
    if cores > 1:
        bw[f"{cores} threads"] = numpy_copy_bandwidth(buf, cores)
    for k, v in bw.items():
        print(f"bandwidth: NumPy copy of {buf / 2**20:.0f} MiB (last-level cache "
              f"{(llc or 0) / 2**20:.0f} MiB), {k}: {v / 1e9:.1f} GB/s")
    if dev.platform == "cpu":
        bandwidth = max(bw.values())
    else:
        bandwidth = device_copy_bandwidth(buf)
        print(f"bandwidth: elementwise update on {dev.platform}: {bandwidth / 1e9:.1f} GB/s")
    t_floor = step_bytes / bandwidth
    print(f"memory floor: {n_params:,} parameters, 3 x {4 * n_params / 1e6:.1f} MB per SGD "
          f"step / {bandwidth / 1e9:.1f} GB/s = {t_floor * 1e3:.2f} ms per seed-epoch")
    print()

    tb = None
    if not args.no_torch:
        try:
            tb = TorchBench(cfg)
        except ImportError:
            print("PyTorch not installed: skipping the PyTorch baselines (pip install torch)")
    threads = [cores if t == "all" else int(t) for t in args.torch_threads.split(",")]
    threads = sorted(set(threads))

    # Compile every unijax batch shape first (reported apart); the timed calls reuse them.
    compile_s = {}
    for n in seed_counts:
        res = train.train(cfg, seeds=n)
        compile_s[n] = res.compile_s
        del res

    whole, per = {}, {}  # (method, threads or None, seeds) -> [seconds]
    for rep in range(args.repeats):
        if tb is not None:
            for t in threads:
                tb.torch.set_num_threads(t)
                loops = [("sequential lean", tb.lean_loop)]
                if args.paper_loop:
                    loops.append(("sequential paper", tb.paper_loop))
                for name, loop in loops:
                    w, e = tb.sequential(loop, args.epochs, seed=rep)
                    whole.setdefault((f"PyTorch {name}", t, 1), []).append(w)
                    per.setdefault((f"PyTorch {name}", t, 1), []).append(e)
                for n in ens_counts:
                    per.setdefault(("PyTorch torch.func ensemble", t, n), []).append(
                        tb.ensemble(n, args.epochs))
        for n in seed_counts:
            w, e, res = unijax_call(cfg, n)
            whole.setdefault(("unijax train.train", None, n), []).append(w)
            per.setdefault(("unijax train.train", None, n), []).append(e)
            del res
        print(f"  repeat {rep + 1}/{args.repeats} done (load {os.getloadavg()[0]:.2f})",
              flush=True)
    print()

    # The fastest PyTorch setting of each method (thread count), per seed count.
    best_torch: dict = {}
    for (name, t, n), v in per.items():
        if name.startswith("PyTorch"):
            key = (name, n)
            if key not in best_torch or med(v) < med(per[best_torch[key]]):
                best_torch[key] = (name, t, n)
    fastest_seq = min((k for k in best_torch.values() if "sequential" in k[0]),
                      key=lambda k: med(per[k]), default=None)

    print(f"{'method':42s} {'threads':>7s} {'seeds':>5s} {'ms per seed-epoch':>24s} "
          f"{'x floor':>7s} {'vs seq.':>7s} {'vs ens.':>7s}")
    for key, v in per.items():
        name, t, n = key
        m = med(v)
        seq = f"{med(per[fastest_seq]) / m:6.2f}x" if fastest_seq else f"{'-':>7s}"
        ens_key = best_torch.get(("PyTorch torch.func ensemble", n))
        ens = f"{med(per[ens_key]) / m:6.2f}x" if ens_key else f"{'-':>7s}"
        tag = f"{t:7d}" if t else f"{'-':>7s}"
        print(f"{name:42s} {tag} {n:5d} {fmt_ms(v):>24s} {m / t_floor:6.2f}x {seq} {ens}")
    print("(vs seq. / vs ens.: the fastest thread setting of PyTorch's sequential loop / of its "
          "ensemble at the same seed count, divided by this row: > 1 means this row is faster)")
    print()

    print(f"whole call, one seed, {args.epochs} epochs (s; unijax compiled by an earlier call: "
          + ", ".join(f"{n} seeds {c:.1f} s" for n, c in compile_s.items()) + ")")
    for key, v in whole.items():
        if key[2] != 1:
            continue
        name, t, _ = key
        tag = f"{t} threads" if t else ""
        print(f"  {name:40s} {tag:10s} {statistics.median(v):7.3f} s "
              f"[{min(v):.3f}-{max(v):.3f}]")
    seq_whole = [k for k in whole if "sequential" in k[0]]
    uni = ("unijax train.train", None, 1)
    if seq_whole and uni in whole:
        best = min(seq_whole, key=lambda k: med(whole[k]))
        print(f"  unijax / fastest sequential PyTorch ({best[0][8:]}, {best[1]} threads): "
              f"{med(whole[uni]) / med(whole[best]):.2f}x (<= 1: unijax no slower)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of this process: {rss:.0f} MB")
    print(f"load average: {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after, on "
          f"{cores} cores (other work on the machine inflates times)")
    return 0


if __name__ == "__main__":
    main()
