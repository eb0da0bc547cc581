"""unijax.plots: the result figures return a Figure and leave matplotlib's backend alone."""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from unijax import fit, plots, theory


@pytest.fixture(autouse=True)
def _backend_untouched():
    before = matplotlib.get_backend()
    yield
    assert matplotlib.get_backend() == before
    plt.close("all")


def _fake_fit(n_trials=2, n_epochs=50):
    """A RateFit whose fitted trajectory is the theory's (what a perfect fit returns)."""
    with jax.enable_x64(True):
        ts = jnp.arange(float(n_epochs))
        z0 = jnp.array([[0.02, 0.002, -0.02], [0.5, 0.1, -0.1]])[:n_trials]
        Z = jnp.stack([theory.solve(z, ts, eta_h=8e-2, eta_y=5e-2, dx2=1.0, dy2=0.5) for z in z0])
        one = jnp.ones(n_trials)
        rf = fit.RateFit(
            eta_h=0.08 * one, eta_y=0.05 * one, stderr_eta_h=1e-4 * one, stderr_eta_y=1e-4 * one,
            cov_log_rates=jnp.zeros((n_trials, 2, 2)), sse=0 * one, r2=jnp.ones((n_trials, 3)),
            status=jnp.array([0, 3][:n_trials], jnp.int32),
            converged=jnp.array([True, False][:n_trials]), identified=one > 0,
            good_fit=one > 0, ode_ok=one > 0, step_budget_hit=one < 0,
            max_steps=jnp.full(n_trials, 512), n_iters=jnp.ones(n_trials, int),
            n_ode_steps=jnp.ones(n_trials, int), init_eta_h=one, init_eta_y=one, z0_fit=z0,
            z_fit=Z,
        )
    return ts, Z, rf


def test_fit_vs_data_draws_h_y_w_and_the_loss():
    ts, Z, rf = _fake_fit()
    fig = plots.fit_vs_data(rf, ts, Z)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    # Only the usable fit is drawn (data and fit: 2 lines a panel); the title counts the
    # excluded one by its reason.
    assert len(fig.axes[0].lines) == 2
    assert fig.axes[0].get_title() == "1/2 fits usable (excluded: 1 optimizer_failed)"
    loss = np.exp(-np.arange(50.0) / 10)[None].repeat(2, 0)
    mf = fit.MeanFit(*(jnp.ones(2) for _ in range(6)), converged=jnp.ones(2, bool),
                     n_iters=jnp.ones(2, int), loss_fit=jnp.asarray(loss * 1.01))
    fig = plots.fit_vs_data(rf, ts, Z, loss=loss, mean_fit=mf, trials=[0])
    assert len(fig.axes) == 4 and fig.axes[3].get_yscale() == "log"
    assert fig.axes[0].get_title().endswith("1/epoch (fit usable)")
    fig = plots.fit_vs_data(rf, ts, Z, trials=[1])
    assert fig.axes[0].get_title() == "0/1 fits usable (excluded: 1 optimizer_failed); none drawn"
    assert not fig.axes[0].lines
    # Drawing on the caller's axes.
    f2, axes = plt.subplots(1, 3)
    assert plots.fit_vs_data(rf, ts, Z, ax=axes) is f2


def test_fit_vs_data_needs_the_fitted_trajectory():
    ts, Z, rf = _fake_fit()
    with pytest.raises(ValueError, match="return_trajectory=True"):
        plots.fit_vs_data(dataclasses.replace(rf, z_fit=None), ts, Z)
    with pytest.raises(ValueError, match="trials must be indices"):
        plots.fit_vs_data(rf, ts, Z, trials=[5])


def test_sweep_shows_median_and_spread_and_counts_missing_runs():
    gains = np.array([0.1, 0.3, 1.0, 3.0])
    v = np.random.default_rng(0).normal(1.0, 0.1, size=(4, 5))
    v[3, :2] = np.nan
    fig = plots.sweep(gains, v, quantity="final h (a.u.)")
    (ax,) = fig.axes
    assert isinstance(fig, Figure) and ax.get_xscale() == "log"
    median = [line for line in ax.lines if line.get_label() == "network: median"][0]
    np.testing.assert_allclose(median.get_ydata(), np.nanmedian(v, axis=1))
    assert "2 of 20 runs without a value" in ax.get_title()
    with pytest.raises(ValueError, match="n_gains=4"):
        plots.sweep(gains, v[:3])


def test_theory_vs_network_scatter_with_identity():
    p = np.array([[1.0, 2.0], [3.0, 4.0]])
    fig = plots.theory_vs_network(p, p * 1.1, gains=[0.5, 1.0])
    (ax,) = fig.axes
    assert isinstance(fig, Figure) and len(ax.collections) == 2
    assert ax.lines[0].get_label() == "identity (perfect theory)"
    assert isinstance(plots.theory_vs_network(p, p), Figure)
    with pytest.raises(ValueError, match="same shape"):
        plots.theory_vs_network(p, p[0])


def test_plots_never_switch_the_backend():
    src = inspect.getsource(plots)
    assert "matplotlib.use(" not in src and "switch_backend" not in src
