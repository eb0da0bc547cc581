"""How to sample the effective ODE's solution at every epoch: three Diffrax code paths.

    python benchmarks/bench_ode_sampling.py            # ~1-2 min on 2 CPU cores
    python benchmarks/bench_ode_sampling.py --n-trials 8 --n-epochs 6000 --reps 7

``--n-trials`` trajectories (rates and initial states drawn at random), ``vmap``-ed inside one
``jit``, each sampled at ``--n-epochs`` epochs, Tsit5 with a PID controller (rtol 1e-7, atol
1e-9, the rate fit's tolerances), three ways:

* ``dense``: Diffrax's dense interpolant (``SaveAt(dense=True)``) evaluated at every epoch
  after the solve;
* ``save at ts``: ``SaveAt(ts=...)`` inside the solve;
* ``steps + Hermite``: ``theory.integrate``, the one path unijax uses (theory curves and the
  rate fit): only the accepted steps are saved, then a quintic Hermite interpolant (values,
  first and second derivatives from the vector field) is evaluated at every epoch.

Each is timed for a plain solve and for the fit's use, ``jax.jacfwd`` in the two log-rates
with ``diffrax.ForwardMode()``. Printed: milliseconds per call (median and best of
``--reps``, compilation apart, after ``block_until_ready``), and the largest difference of
each path's values from a tight reference (rtol 1e-12).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402


def main(argv=None) -> int:
    args = _machine.int_options(__doc__, argv, n_trials=8, n_epochs=6000, reps=7)

    import diffrax
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from unijax import theory

    print(_machine.header(jax, f"diffrax {diffrax.__version__}", "float64"))
    rng = np.random.default_rng(0)
    n, T = args.n_trials, args.n_epochs
    ts = jnp.arange(float(T))
    eta, z0 = _machine.draw_problem(rng, n, T)
    log_eta, z0 = jnp.log(eta), jnp.asarray(z0)
    dx2, dy2 = 1.0, 0.5
    tol = dict(rtol=1e-7, atol=1e-9, max_steps=4096)

    def via_diffrax(dense):
        def f(z, le):
            e = jnp.exp(le)
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(lambda t, z, a: theory.vector_field(
                    z, eta_h=e[0], eta_y=e[1], dx2=dx2, dy2=dy2)),
                diffrax.Tsit5(), t0=ts[0], t1=ts[-1], dt0=None, y0=z,
                saveat=diffrax.SaveAt(dense=True) if dense else diffrax.SaveAt(ts=ts),
                stepsize_controller=diffrax.PIDController(rtol=tol["rtol"], atol=tol["atol"]),
                adjoint=diffrax.ForwardMode(), max_steps=tol["max_steps"], throw=False)
            return jax.vmap(sol.evaluate)(ts) if dense else sol.ys
        return f

    def via_theory(z, le):
        e = jnp.exp(le)
        return theory.integrate(z, ts, eta_h=e[0], eta_y=e[1], dx2=dx2, dy2=dy2,
                                adjoint=diffrax.ForwardMode(), **tol).ys

    ref = jax.jit(jax.vmap(lambda z, le: theory.solve(
        z, ts, eta_h=jnp.exp(le[0]), eta_y=jnp.exp(le[1]), dx2=dx2, dy2=dy2, rtol=1e-12,
        atol=1e-14, max_steps=1 << 16)))(z0, log_eta)
    paths = {"dense": via_diffrax(True), "save at ts": via_diffrax(False),
             "steps + Hermite": via_theory}
    print(f"\n{n} trials x {T} epochs, vmap in one jit; ms per call, median and best of "
          f"{args.reps}")
    print(f"{'path':>16} {'solve med':>10} {'best':>8} {'jacfwd med':>11} {'best':>8} "
          f"{'max |err|':>10}")
    for name, f in paths.items():
        cols = []
        for kind in ("solve", "jacfwd"):
            g = f if kind == "solve" else jax.jacfwd(f, argnums=1)
            fn = jax.jit(jax.vmap(g))
            out, _, times = _machine.compile_and_time(fn, (z0, log_eta), args.reps,
                                             jax.block_until_ready)
            if kind == "solve":
                err = float(jnp.max(jnp.abs(out - ref)))
            cols += [1e3 * np.median(times), 1e3 * min(times)]
        print(f"{name:>16} {cols[0]:>10.2f} {cols[1]:>8.2f} {cols[2]:>11.2f} {cols[3]:>8.2f} "
              f"{err:>10.1e}")
    print(f"load after: {_machine.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
