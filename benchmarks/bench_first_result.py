"""Time to the first result in a fresh process: one fit, one training run, the SciPy method.

    python benchmarks/bench_first_result.py                 # ~3-5 min on 2 CPU cores
    python benchmarks/bench_first_result.py --reps 5 --json out.json
    python benchmarks/bench_first_result.py --baseline ../unijax-main   # before/after

What a researcher meets first is not the steady-state speed of a compiled program but the
seconds from ``python my_script.py`` to a number. Every measurement here runs in a *fresh*
Python process (what a script or a notebook kernel restart costs) and is timed twice:

* ``process``: from starting the interpreter to its exit (imports, tracing, compilation,
  the work itself);
* ``call``: the first call of the entry point alone, inside that process.

Cases, each repeated ``--reps`` times (medians printed, all runs in the JSON):

* ``fit cold``: ``fit.fit_rates`` on one trajectory with an empty persistent compilation
  cache directory (the first time ever on this machine);
* ``fit warm``: the same, with the cache directory that a previous process filled;
* ``fit new len``: with that cache, a trajectory of another length in the same length bucket
  (halfway between the bucket's first length and ``--n-epochs``: 2972 epochs at the default
  3000, bucket 3456; see ``unijax.fit._args``), which must not compile anything new;
* ``scipy``: the paper's method on the same trajectory (Radau + 200-point grid + BFGS with
  finite differences, as in ``bench_fit.py``), imports included;
* ``train cold`` / ``train warm``: ``train.train`` of the default two-point network (width
  ``--width``, ``--epochs`` epochs, ``--seeds`` seeds), with an empty and a filled cache;
* with ``--baseline DIR`` (another checkout of unijax, say the main branch):
  ``base fit cold`` / ``base fit warm``, the fit cases run on that code, interleaved with the
  others in every repetition, so that a change is measured side by side at the same load.

The trajectory is the README's example (``--n-epochs`` epochs, 1% noise), written once to a
temporary ``.npz`` so that no case pays for making it (the shorter one is its first epochs).
JAX's persistent cache is pointed at a temporary directory through
``JAX_COMPILATION_CACHE_DIR`` (with the minimum compile time and entry size set to 0 so that
every program is cached; unijax keeps its exported fit programs there too, in
``unijax_exports/``); nothing outside the temporary directories is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # unijax.fit._args (the length buckets) from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model, git_commit, load_average, utc_now  # noqa: E402

# Each child prints one JSON line: {"call": seconds of the first entry-point call}.
_FIT = """
import time, json, sys
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
from unijax import fit
d = np.load(sys.argv[1])
t = time.perf_counter()
res = fit.fit_rates(d["ts"], d["Z"], dx2=1.0, dy2=0.5)
eta = (float(res.eta_h), float(res.eta_y))
print(json.dumps({"call": time.perf_counter() - t, "eta": eta}))
"""

_SCIPY = """
import time, json, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from scipy.integrate import solve_ivp
from scipy.optimize import minimize
DX2, DY2 = 1.0, 0.5

def rhs(t, z, eta_h, eta_y):
    h, y, w = z
    a = eta_h * DX2
    return [-a * w, -w * (eta_y * h + a * y / h),
            -0.5 * eta_y * (3.0 * w - y + DY2) * h - 0.5 * a * (y + w) * w / h]

def sse(rates, ts, Z):
    eta_h, eta_y = rates
    if not (eta_h > 0 and eta_y > 0):
        return 1e10
    sol = solve_ivp(rhs, (ts[0], ts[-1]), Z[0], method="Radau", t_eval=ts, args=(eta_h, eta_y))
    if not sol.success or sol.y.shape[1] != len(ts):
        return 1e10
    return float(np.sum((sol.y.T - Z) ** 2))

d = np.load(sys.argv[1])
ts, Z = d["ts"], d["Z"]
t = time.perf_counter()
ratio = Z[-1, 0] ** 2 / (DX2 * DY2)
grid = np.logspace(-6, 2, 200)
s = grid[int(np.argmin([sse((g * ratio, g), ts, Z) for g in grid]))]
res = minimize(sse, np.array([s * ratio, s]), args=(ts, Z), method="BFGS")
print(json.dumps({"call": time.perf_counter() - t, "eta": [float(v) for v in res.x]}))
"""

_TRAIN = """
import time, json, sys
import jax
from unijax import configs, train
width, epochs, seeds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cfg = configs.get("default", width=width, epochs=epochs)
t = time.perf_counter()
res = train.train(cfg, seeds=seeds)
jax.block_until_ready(res.loss)
print(json.dumps({"call": time.perf_counter() - t, "final_loss": float(res.final_loss.mean())}))
"""

_MAKE = """
import sys
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
from unijax import theory
n = int(sys.argv[2])
ts = np.arange(float(n))
Z = theory.solve(np.array([0.05, 1e-3, 0.0]), ts, eta_h=2e-3, eta_y=4e-3, dx2=1.0, dy2=0.5)
Z = np.asarray(Z) * (1 + 0.01 * np.random.default_rng(0).normal(size=Z.shape))
np.savez(sys.argv[1], ts=ts, Z=Z)
"""


def _same_bucket(n: int) -> int:
    """A length below ``n`` in ``n``'s length bucket (halfway to the bucket's first length),
    or ``n`` when it is the first."""
    from unijax.fit._args import bucket_size  # NumPy only: nothing traced here

    first = n
    while first > 1 and bucket_size(first - 1) == bucket_size(n):
        first -= 1
    return first + (n - first) // 2


def child(code: str, args: list[str], cache_dir: str | None, repo: Path = REPO) -> dict:
    """Run ``code`` in a fresh interpreter that imports unijax from ``repo``; its JSON line
    plus the process wall time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    for k in ("JAX_COMPILATION_CACHE_DIR", "UNIJAX_NO_COMPILATION_CACHE"):
        env.pop(k, None)
    if cache_dir is None:
        env["UNIJAX_NO_COMPILATION_CACHE"] = "1"  # honoured once unijax enables a cache itself
    else:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    t = time.perf_counter()
    # In ``repo``: ``python -c`` puts the working directory first on sys.path, and a unijax
    # there would be imported instead of ``repo``'s.
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, cwd=repo,
                       capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    lines = p.stdout.strip().splitlines()
    out = json.loads(lines[-1]) if lines else {}
    out["process"] = wall
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="fresh processes per case (3)")
    ap.add_argument("--n-epochs", type=int, default=3000, help="trajectory length (3000)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1000, help="training epochs (1000)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None, help="write all runs here")
    ap.add_argument("--md", type=Path, default=None,
                    help="write the medians as a markdown fragment here (the docs include "
                         "docs/benchmarks/first_result.md)")
    ap.add_argument("--no-train", action="store_true", help="skip the training cases")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another unijax checkout: its cold and warm fit, interleaved")
    args = ap.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "unijax" / "__init__.py").is_file():
        ap.error(f"--baseline {args.baseline}: not a unijax checkout (no unijax/__init__.py)")

    import jax  # only for its version
    import numpy as np

    base = () if args.baseline is None else ("base fit cold", "base fit warm")
    cases = base + ("fit cold", "fit warm", "fit new len", "scipy") + (
        () if args.no_train else ("train cold", "train warm"))
    runs: dict[str, list[dict]] = {k: [] for k in cases}
    load0 = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        traj = str(Path(tmp) / "traj.npz")
        child(_MAKE, [traj, str(args.n_epochs)], None)
        other = str(Path(tmp) / "traj_other.npz")
        n_other = _same_bucket(args.n_epochs)
        with np.load(traj) as d:
            np.savez(other, ts=d["ts"][:n_other], Z=d["Z"][:n_other])
        train_args = [str(args.width), str(args.epochs), str(args.seeds)]
        for r in range(args.reps):
            if args.baseline is not None:
                base_cache = tempfile.mkdtemp(dir=tmp, prefix=f"base{r}-")
                runs["base fit cold"].append(child(_FIT, [traj], base_cache, args.baseline))
                runs["base fit warm"].append(child(_FIT, [traj], base_cache, args.baseline))
            fit_cache = tempfile.mkdtemp(dir=tmp, prefix=f"fit{r}-")
            runs["fit cold"].append(child(_FIT, [traj], fit_cache))
            runs["fit warm"].append(child(_FIT, [traj], fit_cache))
            runs["fit new len"].append(child(_FIT, [other], fit_cache))
            runs["scipy"].append(child(_SCIPY, [traj, str(REPO)], None))
            if not args.no_train:
                train_cache = tempfile.mkdtemp(dir=tmp, prefix=f"train{r}-")
                runs["train cold"].append(child(_TRAIN, train_args, train_cache))
                runs["train warm"].append(child(_TRAIN, train_args, train_cache))
            print(f"rep {r + 1}/{args.reps} done", file=sys.stderr, flush=True)

    machine = dict(cpu=cpu_model(), cores=os.cpu_count(), jax=jax.__version__,
                   python=platform.python_version(), load_start=load0, load_end=load_average())
    print(f"machine: {machine}")
    print(f"trajectory: {args.n_epochs} epochs (new len: {n_other}); training: default net "
          f"width {args.width}, {args.epochs} epochs, {args.seeds} seeds; medians of "
          f"{args.reps} fresh processes")
    print(f"{'case':<12} {'process s':>10} {'first call s':>13}")
    med = {}
    for name, rs in runs.items():
        med[name] = {k: statistics.median(r[k] for r in rs) for k in ("process", "call")}
        print(f"{name:<12} {med[name]['process']:>10.2f} {med[name]['call']:>13.2f}")
    sp = med["scipy"]["process"]
    for name in (*base, "fit cold", "fit warm", "fit new len"):
        print(f"{name} / scipy (process): {med[name]['process'] / sp:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(
            {"machine": machine, "args": vars(args) | {"json": None, "md": None},
             "runs": runs, "medians": med}, indent=2, default=str))
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown(machine, args, n_other, med, argv))
    return 0


def markdown(machine: dict, args, n_other: int, med: dict, argv) -> str:
    """The medians as a markdown fragment (no title: the docs include it under theirs)."""
    cmd = "python benchmarks/bench_first_result.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    load = lambda v: "?" if v is None else v[0]  # noqa: E731
    sp = med["scipy"]["process"]
    what = {
        "base fit cold": "`fit.fit_rates` at the baseline code (`--baseline`), empty cache",
        "base fit warm": "the same, the cache filled by the process before",
        "fit cold": f"`fit.fit_rates`, one {args.n_epochs}-epoch trajectory, empty cache",
        "fit warm": "the same, the cache filled by the process before",
        "fit new len": f"a {n_other}-epoch trajectory (same length bucket), that cache",
        "scipy": "the paper's SciPy method on the same trajectory",
        "train cold": f"`train.train`, default net width {args.width}, {args.epochs} epochs, "
                      f"{args.seeds} seeds, empty cache",
        "train warm": "the same, the cache filled",
    }
    lines = [
        f"Generated by `{cmd.strip()}` on {utc_now()} at code {git_commit()}: "
        f"{machine['cpu']}, {machine['cores']} cores, load average {load(machine['load_start'])}"
        f" at the start and {load(machine['load_end'])} at the end (1 min), JAX "
        f"{machine['jax']}, Python {machine['python']}. Medians of {args.reps} fresh processes "
        "per case, run interleaved.",
        "",
        "| case | what | whole process | first call | process vs SciPy |",
        "|---|---|---|---|---|",
    ]
    for name, m in med.items():
        ratio = f"{m['process'] / sp:.2f}×" if name != "scipy" else "1×"
        lines.append(f"| {name} | {what[name]} | {m['process']:.2f} s | {m['call']:.2f} s | "
                     f"{ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
