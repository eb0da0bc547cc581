"""Training throughput: unijax's seed batch vs the paper's sequential PyTorch loop.

Trains the default network of Table 1 (width 500, 20 hidden layers, leaky ReLU, two points,
full-batch gradient descent, (h, y, w) and the loss recorded at hidden layer 10 every epoch):

(a) with PyTorch, one seed after another, as the paper's code did. Two loops are timed: "paper"
    (per epoch a separate no-grad tracking forward pass for the observables, then a DataLoader
    training step, like the authors' ``Compiler.training_run``) and "lean" (observables taken
    from the training forward pass, no DataLoader: the fastest fair PyTorch loop we could
    write). PyTorch is optional (``pip install torch``, the ``[bench]`` extra); without it
    this part is skipped with a message.
(b) with ``unijax.train.train`` for 1, 4, 16 and 64 seeds in one compiled call each.

Reported: seconds per seed per 1000 epochs (median over repetitions, min-max in brackets),
compile time apart (unijax compiles once per batch shape), the speed-up over PyTorch, and
the memory-bandwidth lower bound of one SGD step: every weight must be read in the forward
pass, read in the backward pass and written once (3 x 4 bytes x n_params; biases and
activations are negligible), divided by the bandwidth of a large NumPy copy measured here
(best of 1 and all threads; on a GPU the device's own copy bandwidth). Times are steady-state
training epochs; the one-time weight initialization is reported apart.

    python benchmarks/bench_train.py                       # full: 1000 epochs, 3 repeats
    python benchmarks/bench_train.py --epochs 300          # shorter
    python benchmarks/bench_train.py --epochs 50 --repeats 1 --seeds 1,4 --torch-seeds 1
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from unijax import configs, nets, train


def numpy_copy_bandwidth(n_bytes: int = 256 << 20, threads: int = 1, repeats: int = 5) -> float:
    """Bytes moved (read + write) per second by ``np.copyto`` of a large array, best of N."""
    a = np.ones(n_bytes // 4, np.float32)
    b = np.empty_like(a)
    b.fill(0)  # touch the pages before timing
    parts = np.array_split(np.arange(a.size), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]

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


def device_copy_bandwidth(n_bytes: int = 256 << 20, repeats: int = 5) -> float:
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


def torch_runs(cfg, n_seeds: int, epochs: int, repeats: int, threads: int | None):
    """Seconds per seed per epoch for the two PyTorch loops (lists over repeats x seeds)."""
    try:
        import torch
    except ImportError:
        print("PyTorch not installed: skipping the PyTorch baseline (pip install torch)")
        return None
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.tensor([[-1.0], [-1.0 + cfg.dx2**0.5]], device=device)
    y = torch.tensor([[0.6], [0.6 + cfg.dy2**0.5]], device=device)
    layer = cfg.layer

    def build(seed):
        torch.manual_seed(seed)
        dims = [1] + [cfg.width] * cfg.depth + [1]
        layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        for lin in layers:
            torch.nn.init.xavier_normal_(lin.weight, gain=cfg.gain)
            torch.nn.init.zeros_(lin.bias)
        return layers.to(device)

    def forward(layers, inp):
        a, hs = inp, []
        for k, lin in enumerate(layers):
            a = lin(a)
            if k < len(layers) - 1:
                a = torch.nn.functional.leaky_relu(a, 0.01)
                hs.append(a)
        return a, hs

    def record(rec, e, out, h, loss):
        dh, df, dy = h[1] - h[0], out[1] - out[0], y[1] - y[0]
        yv = df @ df
        rec[e, 0], rec[e, 1], rec[e, 2], rec[e, 3] = dh @ dh, yv, yv - dy @ df, loss

    def paper_loop(layers, opt, n):
        # As the authors' Compiler.training_run: track (eval, no grad), then a training step
        # through a DataLoader (full batch of the two points, shuffled).
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=2, shuffle=True
        )
        rec = torch.zeros(n, 4, device=device)
        for e in range(n):
            layers.eval()
            with torch.no_grad():
                out, hs = forward(layers, x)
                loss = 0.5 * torch.mean((out - y) ** 2)
                record(rec, e, out, hs[layer], loss)
            layers.train()
            for xb, yb in loader:
                opt.zero_grad()
                outb, _ = forward(layers, xb)
                lb = 0.5 * torch.mean((outb - yb) ** 2)
                lb.backward()
                opt.step()
        return rec

    def lean_loop(layers, opt, n):
        rec = torch.zeros(n, 4, device=device)
        for e in range(n):
            opt.zero_grad()
            out, hs = forward(layers, x)
            loss = 0.5 * torch.mean((out - y) ** 2)
            loss.backward()
            with torch.no_grad():
                record(rec, e, out, hs[layer], loss)
            opt.step()
        return rec

    times = {"paper": [], "lean": []}
    for _ in range(repeats):
        for seed in range(n_seeds):
            for name, loop in (("paper", paper_loop), ("lean", lean_loop)):
                layers = build(seed)
                opt = torch.optim.SGD(layers.parameters(), lr=cfg.lr)
                loop(layers, opt, 3)  # warm-up: allocations, thread pool
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                rec = loop(layers, opt, epochs)
                rec.cpu()
                times[name].append((time.perf_counter() - t0) / epochs)
    return times, torch.__version__, torch.get_num_threads(), device


def fmt(values, scale=1000.0):
    v = [x * scale for x in values]
    return f"{statistics.median(v):8.2f} [{min(v):.2f}-{max(v):.2f}]"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1000, help="timed epochs per run")
    p.add_argument("--repeats", type=int, default=3, help="repetitions (median reported)")
    p.add_argument("--seeds", default="1,4,16,64", help="unijax seed counts, comma separated")
    p.add_argument("--torch-seeds", type=int, default=2, help="seeds of the sequential loop")
    p.add_argument("--torch-epochs", type=int, default=None,
                   help="timed epochs per PyTorch run (default: --epochs)")
    p.add_argument("--torch-threads", default="1,all",
                   help="torch.set_num_threads values to time, comma separated ('all' = cores); "
                        "the fastest lean loop is the baseline")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--depth", type=int, default=20)
    args = p.parse_args(argv)
    seed_counts = [int(s) for s in args.seeds.split(",")]
    cfg = configs.get("default", epochs=args.epochs, width=args.width, depth=args.depth)

    dev = jax.devices()[0]
    print("== unijax training benchmark: default network of Table 1 ==")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; "
          f"JAX {jax.__version__} on {dev.platform} ({dev.device_kind}) x{len(jax.devices())}; "
          f"dtype {cfg.dtype}")
    print(f"network: width {cfg.width}, {cfg.depth} hidden layers, {cfg.nonlinearity}, two points, "
          f"full-batch SGD lr {cfg.lr}, records (h, y, w, loss) at layer {cfg.layer} every "
          f"epoch; {args.epochs} timed epochs (PyTorch {args.torch_epochs or args.epochs}) x "
          f"{args.repeats} repeats")

    module = nets.make("mlp", width=cfg.width, depth=cfg.depth)
    n_params = nets.count_params(
        jax.eval_shape(lambda: nets.init(module, jnp.ones((2, 1)), key=jax.random.key(0)))
    )
    param_bytes = 4 * n_params
    bw = {
        "numpy copy, 1 thread": numpy_copy_bandwidth(threads=1),
        f"numpy copy, {os.cpu_count()} threads": numpy_copy_bandwidth(threads=os.cpu_count()),
    }
    dev_bw = device_copy_bandwidth()
    host_bw = max(bw.values())
    bound_bw = host_bw if dev.platform == "cpu" else dev_bw
    step_bytes = 3 * param_bytes
    t_bound = step_bytes / bound_bw
    for k, v in bw.items():
        print(f"bandwidth ({k}): {v / 1e9:.1f} GB/s")
    print(f"bandwidth (XLA elementwise on {dev.platform}): {dev_bw / 1e9:.1f} GB/s")
    print(f"parameters per seed: {n_params:,} ({param_bytes / 1e6:.1f} MB); SGD step moves >= "
          f"3 x {param_bytes / 1e6:.1f} MB -> lower bound {t_bound * 1e3:.2f} ms per seed per "
          f"epoch = {t_bound * 1e3:.2f} s per seed per 1000 epochs (at "
          f"{bound_bw / 1e9:.1f} GB/s)")
    print()
    rows = []

    # Warm up (compile every batch shape) first, then interleave the repetitions of all
    # methods, so that other work on a shared machine slows them alike.
    thread_counts = [] if args.no_torch else [
        os.cpu_count() if t == "all" else int(t) for t in args.torch_threads.split(",")
    ]
    # The first call of each batch shape compiles; its run time (compile excluded) is the
    # first repetition.
    unijax_times = {n: [] for n in seed_counts}
    unijax_init = {n: [] for n in seed_counts}
    compile_s = {}
    for n in seed_counts:
        res = train.train(cfg, seeds=n)
        compile_s[n] = res.compile_s
        unijax_times[n].append(res.run_s / n / args.epochs)
        unijax_init[n].append(res.init_s / n)
        del res
    torch_times: dict = {}
    torch_info = {}
    torch_epochs = args.torch_epochs or args.epochs
    for rep in range(args.repeats):
        for threads in thread_counts:
            out = torch_runs(cfg, args.torch_seeds, torch_epochs, 1, threads)
            if out is None:
                thread_counts = []
                break
            times, version, got_threads, tdev = out
            torch_info[threads] = (version, got_threads, tdev)
            for name, v in times.items():
                torch_times.setdefault((threads, name), []).extend(v)
        for n in seed_counts:
            if rep == 0:
                continue  # done above
            res = train.train(cfg, seeds=n)
            unijax_times[n].append(res.run_s / n / args.epochs)
            unijax_init[n].append(res.init_s / n)
            del res
        print(f"  repeat {rep + 1}/{args.repeats} done", flush=True)
    print()

    torch_lean = None
    for (threads, name), values in torch_times.items():
        version, got_threads, tdev = torch_info[threads]
        rows.append((f"PyTorch {version} ({name} loop, {got_threads} threads, {tdev})",
                     args.torch_seeds, None, values))
        if name == "lean":
            med = statistics.median(values)
            torch_lean = med if torch_lean is None else min(torch_lean, med)
    results = {}
    for n in seed_counts:
        results[n] = statistics.median(unijax_times[n])
        rows.append((f"unijax (vmap_size auto, {len(jax.local_devices())} device(s))", n,
                     (compile_s[n], statistics.median(unijax_init[n])), unijax_times[n]))

    print(f"{'method':58s} {'seeds':>5s} {'compile s':>9s} {'init s/seed':>11s} "
          f"{'s per seed per 1000 epochs':>28s} {'vs torch':>13s} {'x bound':>8s}")
    for name, n, extra, values in rows:
        med = statistics.median(values)
        comp = f"{extra[0]:9.2f} {extra[1]:11.3f}" if extra else f"{'-':>9s} {'-':>11s}"
        speed = f"{torch_lean / med:12.2f}x" if torch_lean else f"{'-':>13s}"
        print(f"{name:58s} {n:5d} {comp} {fmt(values):>28s} {speed} {med / t_bound:7.2f}x")
    if len(results) > 1:
        lo = min((k for k in results if k >= 4), default=min(results))
        hi = max(results)
        best_of = {n: min(unijax_times[n]) for n in results}
        print(f"\nper-seed cost, {hi} vs {lo} seeds: {100 * (results[hi] / results[lo] - 1):+.1f}% "
              f"(medians), {100 * (best_of[hi] / best_of[lo] - 1):+.1f}% (best runs; on a shared "
              "machine a long 64-seed run meets more of the other work than a short one)")
    if torch_lean:
        best = min(results.values())
        print(f"best unijax throughput per seed: {torch_lean / best:.2f}x the fastest PyTorch "
              "loop (lean, best thread count)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {rss:.0f} MB "
          f"(64 seeds of parameters alone: {64 * param_bytes / 1e9:.2f} GB)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
          "(other work on the machine inflates times)")


if __name__ == "__main__":
    main()
