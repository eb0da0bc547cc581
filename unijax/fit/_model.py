"""The rate fit's model: the ODE from a parameter vector, its residuals and Jacobian (private).

Parameters are ``(log eta_h, log eta_y)``, or those and three initial-state parameters ``q``
(``fit_initial=True``); the ODE of docs/theory.md section 2 is solved by
:func:`unijax.theory.integrate` with forward-mode derivatives. A :class:`Trial` may be padded
to its length bucket (see :mod:`unijax.fit._args`): padded epochs repeat the last measured one
and carry weight 0, so they change neither the solve nor any sum over epochs.
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from unijax import theory
from unijax.fit._args import SolveOpts

__all__ = ["Trial", "evaluate", "model", "score", "start_params", "start_scale", "subsample",
           "unpack"]


def field(z, rates, dx2, dy2):
    """The vector field of section 2 at ``z`` for ``rates = (eta_h, eta_y)``."""
    return theory.vector_field(z, eta_h=rates[0], eta_y=rates[1], dx2=dx2, dy2=dy2)


def trajectory(z0, ts, log_rates, dx2, dy2, opts: SolveOpts):
    """ODE from ``z0`` at ``ts[0]``, sampled at ``ts`` (:func:`unijax.theory.integrate`):
    ``(ys (n, 3), ok, num_steps, hit)``, ``hit`` when the solve ran out of its step budget
    ``opts.max_steps``.

    Forward-mode differentiable in ``log_rates`` (``diffrax.ForwardMode``). The step-size
    controller is not differentiated (Diffrax stops its gradient), so the derivative is that of
    the discrete solution on its own mesh, consistent with finite differences to the tolerance.
    Padded epochs (``ts`` repeating its last value) cost nothing: the solve ends at ``ts[-1]``.
    """
    rates = jnp.exp(log_rates)
    sol = theory.integrate(z0, ts, eta_h=rates[0], eta_y=rates[1], dx2=dx2, dy2=dy2,
                           rtol=opts.rtol, atol=opts.atol, max_steps=opts.max_steps,
                           adjoint=diffrax.ForwardMode())
    return sol.ys, sol.ok, sol.num_steps, sol.max_steps_reached


class Trial(NamedTuple):
    """One trial's data, the pytree that is vmapped over.

    ``ts`` and ``Z`` may be padded to a bucket: the padding repeats the last measured epoch
    and row, and ``weight`` is 1 on measured epochs, 0 on padding (None: all measured). Padded
    ``ts`` must be traced (an argument of the compiled fit): :func:`unijax.theory.integrate`
    refuses concrete epochs that do not increase.
    """

    ts: Float[Array, " n"]
    Z: Float[Array, "n 3"]
    dx2: Float[Array, ""]
    dy2: Float[Array, ""]
    # Scales of the initial-state parameters; None: from Z (see start_scale).
    start_scale: Float[Array, "2"] | None = None
    weight: Float[Array, " n"] | None = None

    def w(self):
        """Per-epoch weights ``(n,)``: 1 measured, 0 padding."""
        return jnp.ones_like(self.ts) if self.weight is None else self.weight

    def n_epochs(self):
        """Number of measured epochs (a traced scalar once padded)."""
        return self.ts.shape[0] if self.weight is None else jnp.sum(self.weight)


def start_scale(trial: Trial):
    """Scales of the initial-state parameters: ``z0 = (h0 e^q0, y0 + s_y q1, w0 + s_w q2)``.

    Unit-free parameters keep Levenberg-Marquardt's damping sensible; ``h0 > 0`` is kept by
    the log. (Padding repeats a measured row, so it does not change the maximum.)
    """
    if trial.start_scale is not None:
        return trial.start_scale
    return jnp.maximum(jnp.max(jnp.abs(trial.Z[:, 1:]), axis=0), 1e-12)


def unpack(p, trial: Trial):
    """Parameters -> ``(log_rates (2,), z0 (3,))``. ``p`` is ``(2,)`` (rates only; the ODE
    starts at the measured first point) or ``(5,)`` (rates and initial state)."""
    z_meas = trial.Z[0]
    if p.shape[0] == 2:
        return p, z_meas
    s = start_scale(trial)
    z0 = jnp.stack([z_meas[0] * jnp.exp(p[2]), z_meas[1] + s[0] * p[3], z_meas[2] + s[1] * p[4]])
    return p[:2], z0


def start_params(z0, trial: Trial):
    """Initial-state parameters ``q`` of :func:`unpack` that give the state ``z0``."""
    s = start_scale(trial)
    z_meas = trial.Z[0]
    return jnp.stack(
        [jnp.log(z0[0] / z_meas[0]), (z0[1] - z_meas[1]) / s[0], (z0[2] - z_meas[2]) / s[1]]
    )


def model(p, trial: Trial, opts: SolveOpts):
    """The fitted ODE at the parameters ``p``, sampled at ``trial.ts`` (see
    :func:`trajectory`)."""
    log_rates, z0 = unpack(p, trial)
    return trajectory(z0, trial.ts, log_rates, trial.dx2, trial.dy2, opts)


def evaluate(p, trial: Trial, opts: SolveOpts):
    """One forward-mode solve: ``(SSE, J^T J, J^T r, (ys, steps, J, hit))`` at the parameters
    ``p`` (``hit``: the solve ran out of its step budget).

    ``jacfwd`` runs the ODE once carrying one tangent per parameter (the primal part is not
    batched): residuals and Jacobian ``(3n, n_p)`` together, at about the cost of
    ``1 + n_p / 2`` plain solves. (That layout matters: XLA on CPU contracts ``J^T J`` over
    ``(3n, n_p)`` several times faster than over the tangent-major ``(n_p, n, 3)``.) Residuals
    of padded epochs are multiplied by their weight 0, so their rows of ``J`` vanish too. A
    failed solve gives ``SSE = inf`` (and zeros elsewhere), which the optimizer rejects.
    """

    def f(q):
        ys, ok, steps, hit = model(q, trial, opts)
        r = ys - trial.Z
        if trial.weight is not None:
            r = r * trial.weight[:, None]
        r = r.reshape(-1)
        return r, (r, ys, ok, steps, hit)

    jac, (r, ys, ok, steps, hit) = jax.jacfwd(f, has_aux=True)(p)
    sse = jnp.sum(r**2)
    hess, grad = jac.T @ jac, jac.T @ r
    ok = ok & jnp.isfinite(sse) & jnp.all(jnp.isfinite(hess)) & jnp.all(jnp.isfinite(grad))
    hess = jnp.where(ok, hess, 0.0)
    grad = jnp.where(ok, grad, 0.0)
    return jnp.where(ok, sse, jnp.inf), hess, grad, (ys, steps, jac, hit)


def score(p, trial: Trial, substeps: int = 3):
    """SSE of the ODE from the parameters ``p`` on the trial's epochs, by classical RK4 with
    ``substeps`` fixed steps per interval (``inf`` when it fails or reaches ``h <= 0``).

    Only used to rank starting points (on a subsample of the epochs, see :func:`subsample`):
    a fixed-step ``lax.scan`` compiles in a fraction of the time of an adaptive solve and is
    accurate enough to rank; the fit itself uses the adaptive solver. A padded interval has
    length 0 and leaves the state exactly as it was.
    """
    log_rates, z0 = unpack(p, trial)
    rates = jnp.exp(log_rates)

    def f(z):
        return field(z, rates, trial.dx2, trial.dy2)

    def interval(z, dt):
        h = dt / substeps
        for _ in range(substeps):
            k1 = f(z)
            k2 = f(z + 0.5 * h * k1)
            k3 = f(z + 0.5 * h * k2)
            k4 = f(z + h * k3)
            z = z + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return z, z

    _, zs = jax.lax.scan(interval, z0, jnp.diff(trial.ts))
    zs = jnp.concatenate([z0[None], zs])
    sse = jnp.sum(trial.w()[:, None] * (zs - trial.Z) ** 2)
    return jnp.where(jnp.isfinite(sse) & jnp.all(zs[:, 0] > 0), sse, jnp.inf)


def subsample(trial: Trial, idx, weight) -> Trial:
    """The trial on the epochs ``idx`` (with their ``weight``, see
    :func:`unijax.fit._args.make_grid`): enough to rank starting points, or for a sum over
    epochs of smooth terms, at a fraction of the cost of all epochs."""
    return trial._replace(ts=trial.ts[idx], Z=trial.Z[idx], start_scale=start_scale(trial),
                          weight=weight)
