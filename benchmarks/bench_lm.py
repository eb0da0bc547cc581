"""unijax's Levenberg-Marquardt loop against Optimistix's ``LevenbergMarquardt``.

    python benchmarks/bench_lm.py              # ~1-2 min on 2 CPU cores
    python benchmarks/bench_lm.py --reps 15 --n-trials 8 --n-epochs 300

The same problem for both: ``--n-trials`` trajectories of the effective ODE (rates and initial
states drawn at random, 1e-3 relative noise), the SSE of h, y, w over ``--n-epochs`` epochs
as a function of ``(log eta_h, log eta_y)``, with the rate fit's own ODE solve (Diffrax Tsit5,
rtol 1e-7, atol 1e-9, forward-mode derivatives), started from the planted rates times 1.5,
``vmap`` over the trials inside one ``jit``:

* unijax: ``_fit_lm.levenberg_marquardt`` with ``_fit_model.evaluate`` (residuals and the
  Jacobian from one ``jacfwd`` solve, then ``J^T J``, ``J^T r``; stop when the Gauss-Newton
  step is below 1e-4 in every log-rate, or after 6 steps without progress);
* Optimistix: ``optx.least_squares`` with ``optx.LevenbergMarquardt(rtol=1e-6, atol=1e-4)``
  on the residual vector (its own Jacobian and linear solve; the ODE solve is the same
  function).

Printed: seconds per call (median and best of ``--reps``, compilation timed apart, after
``block_until_ready``), compile seconds, iterations (median, max), and the final SSE of each
against the other (their minima agree when both converge). CPU, 64-bit floats.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402


def main(argv=None) -> int:
    args = _machine.int_options(__doc__, argv, n_trials=8, n_epochs=300, reps=11)

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import optimistix as optx

    from unijax import theory
    from unijax.fit._args import SolveOpts
    from unijax.fit._lm import levenberg_marquardt
    from unijax.fit._model import Trial, evaluate, model

    print(_machine.header(jax, f"optimistix {optx.__version__}", "float64"))

    rng = np.random.default_rng(0)
    n, T = args.n_trials, args.n_epochs
    ts = np.arange(float(T))
    eta, z0 = _machine.draw_problem(rng, n, T)
    Z = np.stack([np.asarray(theory.solve(z, ts, eta_h=e[0], eta_y=e[1], dx2=1.0, dy2=0.5))
                  for z, e in zip(z0, eta, strict=True)])
    Z = Z * (1.0 + 1e-3 * rng.normal(size=Z.shape))
    p0 = np.log(eta * 1.5)
    opts = SolveOpts(rtol=1e-7, atol=1e-9, max_steps=4096)

    def trial(Zi):
        return Trial(jnp.asarray(ts), Zi, jnp.asarray(1.0), jnp.asarray(0.5))

    @jax.jit
    def ours(Z, p0):
        def one(Zi, pi):
            t = trial(Zi)
            s = levenberg_marquardt(lambda p: evaluate(p, t, opts), pi[None],
                                         max_iters=64, xtol=1e-4, ftol=1e-6)
            return s.p, s.sse, s.n_iter, s.converged

        return jax.vmap(one)(Z, p0)

    solver = optx.LevenbergMarquardt(rtol=1e-6, atol=1e-4)

    @jax.jit
    def theirs(Z, p0):
        def one(Zi, pi):
            t = trial(Zi)

            def residual(p, _):
                return (model(p, t, opts)[0] - t.Z).reshape(-1)

            sol = optx.least_squares(residual, solver, pi, max_steps=64, throw=False)
            r = residual(sol.value, None)
            return (sol.value, jnp.sum(r**2), sol.stats["num_steps"],
                    sol.result == optx.RESULTS.successful)

        return jax.vmap(one)(Z, p0)

    Zj, pj = jnp.asarray(Z), jnp.asarray(p0)
    rows = {}
    for name, fn in (("unijax LM", ours), ("optimistix LM", theirs)):
        out, compile_s, times = _machine.compile_and_time(fn, (Zj, pj), args.reps,
                                                          jax.block_until_ready)
        rows[name] = (np.median(times), min(times), compile_s, [np.asarray(o) for o in out])

    print(f"\n{n} trials x {T} epochs, vmapped in one jit; seconds per call, "
          f"median and best of {args.reps}")
    print(f"{'':>15} {'median s':>9} {'best s':>8} {'compile s':>10} {'iters med/max':>14} "
          f"{'converged':>10}")
    for name, (med, best, comp, (_, _, it, conv)) in rows.items():
        print(f"{name:>15} {med:>9.4f} {best:>8.4f} {comp:>10.1f} "
              f"{np.median(it):>8.0f}/{it.max():<5.0f} {int(conv.sum()):>6}/{n}")
    (pa, sa, _, _), (pb, sb, _, _) = rows["unijax LM"][3], rows["optimistix LM"][3]
    print(f"final SSE, optimistix / unijax: median {np.median(sb / sa):.6f}, "
          f"max {np.max(sb / sa):.6f}; max |log-rate difference| {np.abs(pa - pb).max():.2e}")
    med_a, med_b = rows["unijax LM"][0], rows["optimistix LM"][0]
    print(f"speed: optimistix / unijax = {med_b / med_a:.2f}x (median)")
    print(f"load after: {_machine.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
