"""Properties of unijax.theory: closed forms, an independent integrator, the matrix flow the
ODE was derived from, finite differences, and vmap-vs-loop equivalence."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from unijax import authors, theory

RATES = dict(eta_h=1.2e-3, eta_y=2.5e-3, dx2=1.0, dy2=0.5)
Z0 = np.array([0.4, 0.02, -0.01])
TS = np.linspace(0.0, 4000.0, 801)


def scipy_reference(z0, ts, eta_h, eta_y, dx2, dy2):
    """The ODE written again in NumPy (``unijax.authors.rhs``, which imports nothing of
    unijax.theory), solved with SciPy's Radau at 1e-12."""
    sol = solve_ivp(authors.rhs, (ts[0], ts[-1]), z0, method="Radau", t_eval=ts,
                    args=(eta_h, eta_y, dx2, dy2), rtol=1e-12, atol=1e-14)
    assert sol.success
    return sol.y.T


def test_solve_matches_independent_radau_reference():
    ys = np.asarray(theory.solve(Z0, TS, **RATES))
    ref = scipy_reference(Z0, TS, **RATES)
    scale = np.max(np.abs(ref), axis=0)
    # Defaults promise 1e-6 relative to the scale of each variable.
    assert np.max(np.abs(ys - ref) / scale) < 1e-6


def test_sampling_between_steps_equals_diffrax_dense_output():
    # theory samples its accepted steps with a quintic Hermite interpolant; Diffrax's own
    # dense output of the same solve agrees to the solver's tolerance.
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, z, a: theory.vector_field(z, **RATES)), diffrax.Tsit5(),
        t0=TS[0], t1=TS[-1], dt0=None, y0=jnp.asarray(Z0), saveat=diffrax.SaveAt(dense=True),
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10), max_steps=16_384)
    dense = jax.vmap(sol.evaluate)(jnp.asarray(TS))
    np.testing.assert_allclose(theory.solve(Z0, TS, **RATES), dense, rtol=1e-7, atol=1e-9)


def test_ode_matches_linearized_gradient_flow_of_the_matrices():
    """Section 2's derivation: simulate d(dh)/dt = dx2/(4 tau_h) G^T e, dG/dt = e dh^T/(4 tau_g)
    from an aligned start (G0 = b v u^T, dh0 = a u, dy || v) and read off (h, y, w)."""
    rng = np.random.default_rng(0)
    n_hidden, n_out = 5, 3
    u = rng.normal(size=n_hidden)
    u /= np.linalg.norm(u)
    v = rng.normal(size=n_out)
    v /= np.linalg.norm(v)
    a, b = 0.6, 0.3
    eta_h, eta_y, dx2 = 1.5e-3, 2.0e-3, 1.3
    tau_h, tau_g = 1 / (2 * eta_h), 1 / (2 * eta_y)
    dy = np.sqrt(0.5) * v
    dy2 = float(dy @ dy)

    def flow(t, s):
        dh, G = s[:n_hidden], s[n_hidden:].reshape(n_out, n_hidden)
        e = dy - G @ dh
        d_dh = dx2 / (4 * tau_h) * G.T @ e
        d_G = np.outer(e, dh) / (4 * tau_g)
        return np.concatenate([d_dh, d_G.ravel()])

    s0 = np.concatenate([a * u, (b * np.outer(v, u)).ravel()])
    ts = np.linspace(0, 3000, 301)
    sol = solve_ivp(flow, (0, ts[-1]), s0, t_eval=ts, rtol=1e-12, atol=1e-14, method="DOP853")
    dh = sol.y[:n_hidden].T
    G = sol.y[n_hidden:].T.reshape(-1, n_out, n_hidden)
    dyhat = np.einsum("toh,th->to", G, dh)
    h = np.sum(dh**2, 1)
    y = np.sum(dyhat**2, 1)
    w = y - dyhat @ dy
    measured = np.stack([h, y, w], 1)
    ode = theory.solve(measured[0], ts, eta_h=eta_h, eta_y=eta_y, dx2=dx2, dy2=dy2)
    np.testing.assert_allclose(ode, measured, rtol=1e-6, atol=1e-8)


def test_invariant_is_conserved():
    ys = theory.solve(Z0, TS, **RATES, rtol=1e-10, atol=1e-12)
    K = theory.invariant(ys[:, 0], ys[:, 1], eta_h=RATES["eta_h"], eta_y=RATES["eta_y"], dx2=1.0)
    assert float(jnp.max(jnp.abs(K - K[0]))) < 1e-8


def test_reduced_system_reproduces_full_solution():
    K = theory.invariant(Z0[0], Z0[1], eta_h=RATES["eta_h"], eta_y=RATES["eta_y"], dx2=1.0)
    term = diffrax.ODETerm(lambda t, hw, args: theory.reduced_vector_field(hw, **RATES, K=K))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), 0.0, TS[-1], None, jnp.array([Z0[0], Z0[2]]),
        saveat=diffrax.SaveAt(ts=TS),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
        max_steps=100_000,
    )
    full = theory.solve(Z0, TS, **RATES, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sol.ys[:, 0], full[:, 0], rtol=1e-7)
    np.testing.assert_allclose(sol.ys[:, 1], full[:, 2], atol=1e-9)


@pytest.mark.parametrize("h0,y0", [(0.5, 0.1), (1e-3, 1e-5), (0.05, 0.0)])
def test_identical_outputs_closed_form(h0, y0):
    rates = dict(eta_h=1e-3, eta_y=3e-3, dx2=1.0)
    ts = np.linspace(0, 5000, 501)
    closed = theory.identical_outputs(ts, h0, y0, **rates)
    ode = theory.solve(np.array([h0, y0, y0]), ts, **rates, dy2=0.0, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(closed, ode, rtol=1e-7, atol=1e-12)


def test_identical_outputs_alpha_zero_limit():
    # K = 0 exactly: y0 = c h0^2, then h = h0 / (1 + eta_y h0 t).
    eta_h, eta_y, dx2, h0 = 1e-3, 2e-3, 1.0, 0.3
    c = eta_y / (eta_h * dx2)
    t = np.linspace(0, 1000, 11)
    z = theory.identical_outputs(t, h0, c * h0**2, eta_h=eta_h, eta_y=eta_y, dx2=dx2)
    np.testing.assert_allclose(z[:, 0], h0 / (1 + eta_y * h0 * t), rtol=1e-12)


@pytest.mark.parametrize("z0", [Z0, np.array([2.0, 1.5, 0.3]), np.array([1e-3, 1e-6, 0.0])])
def test_solution_converges_to_final_distance(z0):
    ts = np.linspace(0, 60_000, 61)
    ys = theory.solve(z0, ts, **RATES)
    h_final = theory.final_distance(z0[0], z0[1], **RATES)
    fp = theory.fixed_points(z0[0], z0[1], **RATES)
    np.testing.assert_allclose(ys[-1, 0], h_final, rtol=1e-6)
    np.testing.assert_allclose(fp.h_plus, h_final, rtol=1e-12)
    np.testing.assert_allclose(ys[-1, 1], RATES["dy2"], rtol=1e-6)  # outputs reach targets
    assert abs(float(ys[-1, 2])) < 1e-7


def test_fixed_point_roots_and_a_scales_agree():
    h0, y0 = 0.7, 0.05
    fp = theory.fixed_points(h0, y0, **RATES)
    c, K, dy2 = fp.c, fp.K, RATES["dy2"]
    for r in (fp.h_plus, fp.h_minus):
        np.testing.assert_allclose(c * r**2 + K * r - dy2, 0.0, atol=1e-12)
    assert fp.h_minus < 0 < fp.h_plus
    ah = theory.a_high(h0, y0, eta_h=RATES["eta_h"], eta_y=RATES["eta_y"], dx2=1.0)
    al = theory.a_low(**RATES)
    np.testing.assert_allclose(ah, -K / c, rtol=1e-12)
    np.testing.assert_allclose(al, np.sqrt(dy2 / c), rtol=1e-12)
    np.testing.assert_allclose(fp.h_plus, ah / 2 + np.sqrt(ah**2 / 4 + al**2), rtol=1e-12)


def test_final_distance_is_accurate_when_a_high_is_very_negative():
    # y0/h0 large: A_high << 0, h_final ~ A_low^2 / |A_high| must not cancel to 0.
    h_final = theory.final_distance(1e-4, 10.0, **RATES)
    ah = theory.a_high(1e-4, 10.0, eta_h=RATES["eta_h"], eta_y=RATES["eta_y"], dx2=1.0)
    al2 = theory.a_low(**RATES) ** 2
    np.testing.assert_allclose(h_final * (h_final - ah), al2, rtol=1e-10)
    assert h_final > 0


def test_rich_and_lazy_limits():
    h0, y0 = 0.5, 0.05
    for s in (1e-4, 1e-5):  # rich: the initial structure is forgotten
        hf = theory.final_distance(s * h0, s**2 * y0, **RATES)
        np.testing.assert_allclose(hf, theory.rich_limit(**RATES), rtol=20 * s)
    for s in (1e3, 1e4):  # lazy: the initial distance is kept
        hf = theory.final_distance(s * h0, s**2 * y0, **RATES)
        lazy = theory.lazy_limit(s * h0, s**2 * y0, eta_h=RATES["eta_h"], eta_y=RATES["eta_y"],
                                 dx2=1.0)
        np.testing.assert_allclose(hf, lazy, rtol=1 / s)


def test_stability_at_h_plus_and_saddle_at_zero():
    fp = theory.fixed_points(*Z0[:2], **RATES)
    st = theory.stability(fp.h_plus, K=fp.K, **RATES)
    assert bool(st.stable) and float(st.trace) < 0
    eta_h, eta_y, dx2, dy2 = RATES.values()
    det = 0.5 * eta_h * dx2 * eta_y * fp.h_plus * np.sqrt(fp.K**2 + 4 * fp.c * dy2)
    np.testing.assert_allclose(st.det, det, rtol=1e-12)
    # Jacobian equals the finite-difference Jacobian of the reduced field.
    jac_fd = jax.jacfwd(lambda hw: theory.reduced_vector_field(hw, **RATES, K=fp.K))(
        jnp.array([fp.h_plus, 0.0])
    )
    np.testing.assert_allclose(st.jacobian, jac_fd, rtol=1e-10, atol=1e-15)
    sd = theory.saddle_directions(fp.K, **RATES)
    lam = np.sort(np.asarray(sd.eigenvalues))
    assert lam[0] < 0 < lam[1]
    for s in sd.slopes:
        np.testing.assert_allclose(s**2 - fp.K * s - eta_y * dy2 / (eta_h * dx2), 0, atol=1e-12)


def test_loss_curve_formula_matches_direct_computation():
    # L = 1/2 |ybar - gbar|^2 + 1/8 |dy - dyhat|^2 with dyhat along dy (1-D outputs).
    dy = np.sqrt(RATES["dy2"])
    dyhat = np.array([0.1, 0.4, 0.7])
    y = dyhat**2
    w = y - dy * dyhat
    ts = np.array([0.0, 10.0, 20.0])
    m0, eta_mean = 0.3, 0.01
    z = np.stack([np.ones(3), y, w], 1)
    L = theory.loss_curve(ts, z, eta_mean=eta_mean, dy2=RATES["dy2"], m0=m0)
    direct = 0.5 * m0 * np.exp(-2 * eta_mean * ts) + (dy - dyhat) ** 2 / 8
    np.testing.assert_allclose(L, direct, rtol=1e-12)


def test_lazy_rescaling_maps_solutions_exactly():
    s = 7.0
    ts = np.linspace(0, 2000, 201)
    scaled = theory.lazy_rescale(Z0, ts, scale=s, dy2=RATES["dy2"])
    rates = dict(RATES, dy2=scaled.dy2)
    ys_scaled = theory.solve(scaled.z, scaled.t, **rates, rtol=1e-10, atol=1e-13)
    z_back, t_back = theory.lazy_unscale(ys_scaled, scaled.t, scale=s)
    np.testing.assert_allclose(t_back, ts, rtol=1e-14)
    direct = theory.solve(Z0, ts, **RATES, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(z_back, direct, rtol=1e-7, atol=1e-10)


def test_final_distance_density_is_the_pushforward():
    a_low, mu, sd = 0.5, 0.2, 0.3
    h = np.linspace(1e-4, 6, 200_001)
    p = theory.final_distance_density(h, a_low=a_low, a_high_mean=mu, a_high_std=sd)
    np.testing.assert_allclose(np.trapezoid(p, h), 1.0, atol=1e-4)
    rng = np.random.default_rng(1)
    A = rng.normal(mu, sd, 400_000)
    hs = A / 2 + np.sqrt(A**2 / 4 + a_low**2)  # h_final as a function of A_high
    hist, edges = np.histogram(hs, bins=60, range=(0.1, 1.5), density=False)
    centers = (edges[1:] + edges[:-1]) / 2
    expected = theory.final_distance_density(centers, a_low=a_low, a_high_mean=mu,
                                             a_high_std=sd) * np.diff(edges) * len(hs)
    # Poisson counts: 5 sigma band.
    assert np.all(np.abs(hist - expected) < 5 * np.sqrt(expected) + 5)


def test_depth_gain_recovered():
    layers = np.arange(1, 11)
    h0 = theory.initial_distance_at_depth(layers, gain=0.8, dx2=2.0)
    np.testing.assert_allclose(theory.fit_depth_gain(layers, h0, dx2=2.0), 0.8, rtol=1e-12)


def _pair_data(n=23, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    Y = np.eye(3)[rng.integers(0, 3, n)]
    H0 = 0.1 * rng.normal(size=(n, 8))
    F0 = 0.05 * rng.normal(size=(n, 3))
    return X, Y, H0, F0


def test_pairwise_predictions_match_per_pair_loop():
    X, Y, H0, F0 = _pair_data()
    rates = dict(eta_h=1e-3, eta_y=3e-3)
    A = theory.pairwise_a_low(X, Y, **rates, block_size=5)
    Hf = theory.pairwise_final_distance(X, Y, H0, F0, **rates, block_size=7)
    n = len(X)
    for i in range(n):
        for j in range(n):
            dx2 = np.sum((X[i] - X[j]) ** 2)
            dy2 = np.sum((Y[i] - Y[j]) ** 2)
            if i == j:
                assert A[i, j] == pytest.approx(0.0, abs=1e-6) and Hf[i, j] == 0.0
                continue
            np.testing.assert_allclose(A[i, j], theory.a_low(**rates, dx2=dx2, dy2=dy2),
                                       rtol=1e-9)
            h0 = np.sum((H0[i] - H0[j]) ** 2)
            y0 = np.sum((F0[i] - F0[j]) ** 2)
            ref = theory.final_distance(h0, y0, **rates, dx2=dx2, dy2=dy2)
            np.testing.assert_allclose(Hf[i, j], ref, rtol=1e-9)


def test_blocked_equals_unblocked_and_exponential_weighting():
    X, Y, _, _ = _pair_data(n=37)
    A = theory.pairwise_a_low(X, Y)
    np.testing.assert_allclose(theory.pairwise_a_low(X, Y, block_size=8), A, rtol=1e-12)
    np.testing.assert_allclose(
        theory.pairwise_sq_distances(X, block_size=10), theory.pairwise_sq_distances(X),
        rtol=1e-12, atol=1e-12,
    )
    E = np.exp(-np.asarray(A))
    full = theory.exponential_weighting(A)
    np.testing.assert_allclose(full, E @ np.asarray(A) @ E, rtol=1e-12)
    rows, cols = np.array([0, 5, 36]), np.array([1, 2, 3, 30])
    part = theory.exponential_weighting_from_data(X, Y, rows=rows, cols=cols, block_size=6)
    np.testing.assert_allclose(part, np.asarray(full)[np.ix_(rows, cols)], rtol=1e-6, atol=1e-9)


def test_gradient_through_solver_matches_finite_differences():
    ts = np.linspace(0, 3000, 301)

    def loss(log_rates):
        eh, ey = jnp.exp(log_rates)
        ys = theory.solve(Z0, ts, eta_h=eh, eta_y=ey, dx2=1.0, dy2=0.5, rtol=1e-10, atol=1e-12)
        return jnp.sum(ys**2)

    x = jnp.log(jnp.array([RATES["eta_h"], RATES["eta_y"]]))
    g = jax.grad(loss)(x)
    eps = 1e-6
    fd = [(loss(x + eps * e) - loss(x - eps * e)) / (2 * eps) for e in jnp.eye(2)]
    np.testing.assert_allclose(g, fd, rtol=1e-5)

    def traj(log_rates):
        eh, ey = jnp.exp(log_rates)
        return theory.solve(Z0, ts, eta_h=eh, eta_y=ey, dx2=1.0, dy2=0.5, rtol=1e-10,
                            atol=1e-12, adjoint=diffrax.ForwardMode())

    J = jax.jacfwd(traj)(x)
    J_fd = np.stack([(traj(x + eps * e) - traj(x - eps * e)) / (2 * eps) for e in jnp.eye(2)], -1)
    np.testing.assert_allclose(J, J_fd, rtol=1e-4, atol=1e-9)


def test_vmap_over_rates_and_states_equals_loop():
    rng = np.random.default_rng(3)
    z0s = np.stack([rng.uniform(0.05, 1.0, 6), rng.uniform(0, 0.1, 6), rng.normal(0, 0.01, 6)], 1)
    eh = rng.uniform(5e-4, 2e-3, 6)
    ey = rng.uniform(5e-4, 4e-3, 6)

    @jax.jit
    def batched(z0s, eh, ey):
        return jax.vmap(lambda z, a, b: theory.solve(z, TS, eta_h=a, eta_y=b, dx2=1.0, dy2=0.5))(
            z0s, eh, ey)

    out = batched(z0s, eh, ey)
    for i in range(6):
        ref = theory.solve(z0s[i], TS, eta_h=eh[i], eta_y=ey[i], dx2=1.0, dy2=0.5)
        np.testing.assert_allclose(out[i], ref, rtol=1e-9, atol=1e-12)


def test_failed_solve_is_flagged_not_silent():
    sol = theory.integrate(Z0, TS, **RATES, max_steps=3)
    assert not bool(sol.ok)
    assert bool(jnp.all(jnp.isnan(sol.ys)))
    ok = theory.integrate(Z0, TS, **RATES)
    assert bool(ok.ok)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(z0=np.array([0.0, 0.1, 0.0])), r"h0.*\(0, inf\)"),
        (dict(z0=np.array([0.3, -0.1, 0.0])), r"y0.*\[0, inf\)"),
        (dict(z0=np.array([0.3, np.nan, 0.0])), "finite"),
        (dict(z0=np.array([0.3, 0.1])), r"z0 must have shape \(3,\)"),
        (dict(eta_h=-1.0), r"eta_h=-1.0.*\(0, inf\)"),
        (dict(eta_y=0.0), r"eta_y=0.0"),
        (dict(dx2=0.0), r"dx2=0.0"),
        (dict(dy2=-0.5), r"dy2=-0.5"),
        (dict(ts=np.array([0.0, 2.0, 1.0])), "strictly increasing"),
    ],
)
def test_bad_input_names_argument_and_range(kwargs, match):
    args = dict(z0=Z0, ts=TS, **RATES)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        theory.solve(args.pop("z0"), args.pop("ts"), **args)


def test_float32_mode_is_refused_with_instructions():
    with jax.enable_x64(False):
        with pytest.raises(RuntimeError, match="jax_enable_x64"):
            theory.solve(Z0, TS, **RATES)
