# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial: from the ODE to trained networks
#
# This tutorial walks the path of the paper in one sitting: solve the effective theory's ODE,
# see its two regimes, train a batch of small networks on two points, fit the theory's two
# effective learning rates to them, and predict where their hidden representations end up.
# Every size is small, so it runs in about a minute on a laptop CPU (most of it compilation);
# the equations it uses are derived in [the theory](theory.md), section numbers below refer
# to that page.

# %%
import jax

jax.config.update("jax_enable_x64", True)  # the theory and the fits compute in float64

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from unijax import configs, fit, theory, train  # noqa: E402

# %% [markdown]
# ## 1. The ODE and its two regimes
#
# Two points with squared input distance `dx2 = 1` and squared output distance `dy2 = 0.5`
# (the paper's two-point data). The state is `(h, y, w)`: squared hidden distance, squared
# output distance, alignment (section 2). We start from a small and from a large initial
# state, as small and large initial weights would give (section 7: scaling the weights by
# `s` scales `h` by `s` and `y, w` by `s**2`).

# %%
eta_h, eta_y, dx2, dy2 = 2e-3, 4e-3, 1.0, 0.5
ts = np.arange(6000.0)  # epochs
starts = {"small weights": np.array([0.05, 1e-3, 0.0]), "large weights": np.array([2.0, 1.6, 0.0])}
sols = {name: np.asarray(theory.solve(z0, ts, eta_h=eta_h, eta_y=eta_y, dx2=dx2, dy2=dy2))
        for name, z0 in starts.items()}

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for name, Z in sols.items():
    loss = np.asarray(theory.loss_curve(ts, Z, eta_mean=1.0, dy2=dy2, m0=0.0))
    axes[0].plot(ts, Z[:, 0], label=name)
    axes[1].semilogy(ts, loss, label=name)
axes[0].set(xlabel="epoch", ylabel="h (squared hidden distance)")
axes[1].set(xlabel="epoch", ylabel="loss (difference part)")
axes[0].legend()
plt.show()

# %% [markdown]
# Small weights sit on a plateau and then drop suddenly; large weights decay at once, with no
# plateau (section 7).
#
# ## 2. The invariant and the final distance
#
# `K = y/h - c h` with `c = eta_y / (eta_h dx2)` is conserved along every solution
# (section 4), and `h` ends at the closed form `h_final` of section 5, which depends on the
# start only through `A_high`.

# %%
for name, Z in sols.items():
    K = np.asarray(theory.invariant(Z[:, 0], Z[:, 1], eta_h=eta_h, eta_y=eta_y, dx2=dx2))
    h_final = float(theory.final_distance(Z[0, 0], Z[0, 1], eta_h=eta_h, eta_y=eta_y,
                                           dx2=dx2, dy2=dy2))
    print(f"{name}: K drifts by {np.ptp(K):.1e}; h(6000) = {Z[-1, 0]:.4f}, "
          f"h_final = {h_final:.4f}")
    assert np.ptp(K) < 1e-6

a_low = float(theory.a_low(eta_h=eta_h, eta_y=eta_y, dx2=dx2, dy2=dy2))
print(f"rich limit A_low = {a_low:.4f}: small weights end near it, large weights keep their start")

# %% [markdown]
# ## 3. Train networks on two points
#
# The paper's default network (Table 1) at a small size: leaky ReLU, 64 units, 4 hidden
# layers, two Xavier gains, four seeds each. `train.train` runs all eight trials in one
# compiled call and records `(h, y, w)` at the middle hidden layer *before* every epoch's
# update (entry 0 is the initialization).

# %%
cfg = configs.get("default", width=64, depth=4, epochs=600, lr=0.02)
res = train.train(cfg, seeds=4, gains=[0.8, 1.0])
print(res.summary())
print("h:", res.h.shape, "(n_gains, n_seeds, n_epochs)")

# %% [markdown]
# ## 4. Fit the two effective learning rates
#
# For each trial of gain 1.0 that did not diverge, `fit.fit_rates` finds `(eta_h, eta_y)` that
# make the ODE, started from the measured epoch-0 state, match the recorded trajectory in the
# least-squares sense (section 11). All trials are fitted in one call.

# %%
ok = ~np.asarray(res.diverged[1])
Z_net = np.asarray(res.hyw()[1], np.float64)[ok]  # (n_trials, n_epochs, 3)
rates = fit.fit_rates(res.ts, Z_net, dx2=res.dx2, dy2=res.dy2)
print(rates.summary())  # RateFit: 4/4 usable; eta_h ≈ 0.016, eta_y ≈ 0.040

fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for j, name in enumerate("hyw"):
    axes[j].plot(res.ts, Z_net[0, :, j], color="C0", lw=2, alpha=0.7, label="network")
    axes[j].plot(res.ts, np.asarray(rates.z_fit)[0, :, j], "k--", label="ODE, fitted")
    axes[j].set(xlabel="epoch", ylabel=name)
axes[0].legend()
plt.show()

# %% [markdown]
# ## 5. Predict where the representations end
#
# With the rates averaged over the usable fits (`status == OK`), section 5 predicts each
# trial's final squared hidden distance from that trial's own initial `(h0, y0)`. Compare with
# what the networks reached.

# %%
mean = rates.mean_over_usable()  # fits that are not usable are left out, and counted
h0, y0 = Z_net[:, 0, 0], Z_net[:, 0, 1]
predicted = np.asarray(theory.final_distance(h0, y0, eta_h=float(mean.eta_h),
                                             eta_y=float(mean.eta_y), dx2=res.dx2,
                                             dy2=res.dy2))
measured = np.asarray(res.final_h[1], np.float64)[ok]
for p, m in zip(predicted, measured, strict=True):
    print(f"final h: theory {p:.4f}, network {m:.4f}")

# %% [markdown]
# ## Where next
#
# * The paper's sizes are one argument away: `configs.get("default")` is Table 1's network
#   (500 units, 20 hidden layers, 6000 epochs), and `unijax run E1 --preset paper` runs the
#   whole experiment.
# * `unijax run all --preset quick` reproduces every experiment in about 14 minutes on two CPU
#   cores; [Reproduce the paper](reproduce.md) says what to expect.
