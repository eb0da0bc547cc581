"""Property-based tests (Hypothesis) of input validation over the public API.

Bad inputs: every entry point raises ValueError naming the argument (never a JAX-internal
error, never a silent result). Valid inputs: results are finite, float64 where the theory
promises it, and the same whether vmapped or looped.
"""

import dataclasses
import os
import re
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unijax import configs, data, experiments, fit, sweep, theory, train

# Few examples by default (the whole file runs in well under a minute); set
# UNIJAX_HYPOTHESIS_EXAMPLES=200 for a thorough run.
N_EXAMPLES = int(os.environ.get("UNIJAX_HYPOTHESIS_EXAMPLES", "8"))
FAST = settings(max_examples=N_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

RATES = dict(eta_h=1e-3, eta_y=2e-3)
DATA = dict(dx2=1.0, dy2=0.5)
Z0 = [0.5, 0.1, 0.0]
_X = np.random.default_rng(0).normal(size=(5, 3))
_Y = np.eye(2)[[0, 1, 0, 1, 1]]

# Each public function of unijax.theory: its valid keyword arguments and, per argument, the
# kind of value it takes ("pos" > 0, "nonneg" >= 0, "real" finite, "int" an integer >= 1,
# "int_or_none" the same or None).
THEORY = {
    "vector_field": (lambda z, **k: theory.vector_field(z, **k),
                     dict(z=Z0, **RATES, **DATA), dict(eta_h="pos", eta_y="pos", dx2="pos",
                                                       dy2="nonneg")),
    "integrate": (lambda z0, ts, **k: theory.integrate(z0, ts, **k),
                  dict(z0=Z0, ts=[0.0, 1.0], **RATES, **DATA),
                  dict(eta_h="pos", eta_y="pos", dx2="pos", dy2="nonneg", rtol="pos",
                       atol="pos", max_steps="int")),
    "solve": (lambda z0, ts, **k: theory.solve(z0, ts, **k),
              dict(z0=Z0, ts=[0.0, 1.0], **RATES, **DATA),
              dict(eta_h="pos", eta_y="pos", dx2="pos", dy2="nonneg")),
    "loss_curve": (lambda ts, z, **k: theory.loss_curve(ts, z, **k),
                   dict(ts=[0.0, 1.0], z=[Z0, Z0], eta_mean=1e-2, dy2=0.5, m0=0.1),
                   dict(eta_mean="pos", dy2="nonneg", m0="nonneg")),
    "invariant": (lambda h, y, **k: theory.invariant(h, y, **k),
                  dict(h=0.5, y=0.1, **RATES, dx2=1.0),
                  dict(h="pos", y="nonneg", eta_h="pos", eta_y="pos", dx2="pos")),
    "invariant_c": (theory.invariant_c, dict(**RATES, dx2=1.0),
                    dict(eta_h="pos", eta_y="pos", dx2="pos")),
    "y_of_h": (lambda h, **k: theory.y_of_h(h, **k), dict(h=0.5, c=2.0, K=0.1),
               dict(h="nonneg", c="pos", K="real")),
    "reduced_vector_field": (lambda hw, **k: theory.reduced_vector_field(hw, **k),
                             dict(hw=[0.5, 0.0], **RATES, **DATA, K=0.1),
                             dict(eta_h="pos", eta_y="pos", dx2="pos", dy2="nonneg", K="real")),
    "fixed_points": (lambda h0, y0, **k: theory.fixed_points(h0, y0, **k),
                     dict(h0=0.5, y0=0.1, **RATES, **DATA),
                     dict(h0="pos", y0="nonneg", eta_h="pos", eta_y="pos", dx2="pos",
                          dy2="nonneg")),
    "stability": (lambda h_star, **k: theory.stability(h_star, **k),
                  dict(h_star=0.5, K=0.1, **RATES, **DATA),
                  dict(h_star="pos", K="real", eta_h="pos", eta_y="pos", dx2="pos",
                       dy2="nonneg")),
    "saddle_directions": (lambda K, **k: theory.saddle_directions(K, **k),
                          dict(K=0.1, **RATES, **DATA),
                          dict(K="real", eta_h="pos", eta_y="pos", dx2="pos", dy2="nonneg")),
    "a_high": (lambda h0, y0, **k: theory.a_high(h0, y0, **k), dict(h0=0.5, y0=0.1, **RATES,
                                                                      dx2=1.0),
               dict(h0="pos", y0="nonneg", eta_h="pos", eta_y="pos", dx2="pos")),
    "a_low": (theory.a_low, dict(**RATES, **DATA),
              dict(eta_h="pos", eta_y="pos", dx2="pos", dy2="nonneg")),
    "final_distance": (lambda h0, y0, **k: theory.final_distance(h0, y0, **k),
                       dict(h0=0.5, y0=0.1, **RATES, **DATA),
                       dict(h0="pos", y0="nonneg", eta_h="pos", eta_y="pos", dx2="pos",
                            dy2="nonneg")),
    "rich_limit": (theory.rich_limit, dict(**RATES, **DATA),
                   dict(eta_h="pos", eta_y="pos", dx2="pos", dy2="nonneg")),
    "lazy_limit": (lambda h0, y0, **k: theory.lazy_limit(h0, y0, **k),
                   dict(h0=0.5, y0=0.1, **RATES, dx2=1.0),
                   dict(h0="pos", y0="nonneg", eta_h="pos", eta_y="pos", dx2="pos")),
    "identical_outputs": (lambda t, h0, y0, **k: theory.identical_outputs(t, h0, y0, **k),
                          dict(t=[0.0, 1.0], h0=0.5, y0=0.1, **RATES, dx2=1.0),
                          dict(t="nonneg", h0="pos", y0="nonneg", eta_h="pos", eta_y="pos",
                               dx2="pos")),
    "lazy_rescale": (lambda z, t, **k: theory.lazy_rescale(z, t, **k),
                     dict(z=Z0, t=[0.0, 1.0], scale=2.0, dy2=0.5),
                     dict(t="real", scale="pos", dy2="nonneg")),
    "lazy_unscale": (lambda z_scaled, t_scaled, **k: theory.lazy_unscale(z_scaled, t_scaled, **k),
                     dict(z_scaled=Z0, t_scaled=[0.0, 1.0], scale=2.0),
                     dict(t_scaled="real", scale="pos")),
    "a_high_from_final": (lambda h_final, **k: theory.a_high_from_final(h_final, **k),
                          dict(h_final=0.5, a_low=0.1), dict(h_final="pos", a_low="nonneg")),
    "final_distance_density": (lambda h, **k: theory.final_distance_density(h, **k),
                               dict(h=[0.5], a_low=0.1, a_high_mean=0.0, a_high_std=1.0),
                               dict(h="real", a_low="nonneg", a_high_mean="real",
                                    a_high_std="pos")),
    "initial_distance_at_depth": (lambda layer, **k: theory.initial_distance_at_depth(layer, **k),
                                  dict(layer=2, gain=0.8, dx2=1.0),
                                  dict(layer="nonneg", gain="pos", dx2="pos")),
    "fit_depth_gain": (lambda layers, h0, **k: theory.fit_depth_gain(layers, h0, **k),
                       dict(layers=[1, 2], h0=[0.5, 0.25], dx2=1.0),
                       dict(h0="pos", dx2="pos")),
    "pairwise_sq_distances": (lambda X, **k: theory.pairwise_sq_distances(X, **k), dict(X=_X),
                              dict(X="real", block_size="int_or_none")),
    "pairwise_a_low": (lambda X, Y, **k: theory.pairwise_a_low(X, Y, **k), dict(X=_X, Y=_Y),
                       dict(X="real", Y="real", eta_h="pos", eta_y="pos",
                            block_size="int_or_none")),
    "pairwise_final_distance": (
        lambda X, Y, H0, F0, **k: theory.pairwise_final_distance(X, Y, H0, F0, **k),
        dict(X=_X, Y=_Y, H0=_X, F0=_Y, **RATES),
        dict(X="real", Y="real", H0="real", F0="real", eta_h="pos", eta_y="pos",
             block_size="int_or_none")),
    "exponential_weighting": (theory.exponential_weighting, dict(A=np.ones((3, 3))),
                              dict(A="nonneg")),
    "exponential_weighting_from_data": (
        lambda X, Y, **k: theory.exponential_weighting_from_data(X, Y, **k),
        dict(X=_X, Y=_Y), dict(X="real", Y="real", block_size="int")),
}


def test_the_table_covers_every_public_theory_function():
    public = {n for n in theory.__all__
              if callable(getattr(theory, n)) and not isinstance(getattr(theory, n), type)}
    assert public == set(THEORY)


_NOT_A_NUMBER = st.sampled_from([None, "1.0", True, 1 + 1j, [1.0, None], object()])
_NON_FINITE = st.sampled_from([np.nan, np.inf, -np.inf])
_BAD = {
    "pos": st.one_of(st.floats(max_value=0.0, allow_nan=False), _NON_FINITE, _NOT_A_NUMBER),
    "nonneg": st.one_of(st.floats(max_value=-1e-300, allow_nan=False), _NON_FINITE,
                        _NOT_A_NUMBER),
    "real": st.one_of(_NON_FINITE, _NOT_A_NUMBER),
    "int": st.one_of(st.integers(max_value=0), st.floats(allow_nan=True),
                     st.sampled_from([None, True, "4"])),
    "int_or_none": st.one_of(st.integers(max_value=0), st.floats(allow_nan=True),
                             st.sampled_from([True, "4"])),
}


def _names(name: str, message: str) -> bool:
    return re.search(rf"(^|[^\w]){re.escape(name)}([^\w]|$)", message) is not None


def _refuses(call, kwargs, name):
    """``call(**kwargs)`` raises ValueError/TypeError naming ``name`` (nothing else passes)."""
    try:
        out = call(**kwargs)
    except (ValueError, TypeError) as e:
        assert _names(name, str(e)), f"{name!r} not named in: {e}"
        return
    raise AssertionError(f"no error for {name}={kwargs[name]!r}; returned {out!r:.200}")


@pytest.mark.parametrize(
    "fn, arg", [(fn, arg) for fn, (_, _, kinds) in THEORY.items() for arg in kinds]
)
@FAST
@given(data=st.data())
def test_theory_refuses_bad_values_naming_the_argument(fn, arg, data):
    call, valid, kinds = THEORY[fn]
    bad = data.draw(_BAD[kinds[arg]], label=arg)
    _refuses(call, {**valid, arg: bad}, arg)


_SHAPES = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@FAST
@given(shape=_SHAPES.filter(lambda s: s != (3,)))
def test_states_of_the_wrong_shape_are_refused(shape):
    z = np.full(shape, 0.5)
    _refuses(THEORY["integrate"][0], {**THEORY["integrate"][1], "z0": z}, "z0")
    _refuses(THEORY["vector_field"][0], {**THEORY["vector_field"][1], "z": z}, "z")


@FAST
@given(n=st.integers(1, 4), cols=st.integers(0, 5).filter(lambda c: c != 3))
def test_loss_curve_refuses_z_without_three_columns(n, cols):
    # (n, 2) used to be read with column 1 as w.
    kw = {**THEORY["loss_curve"][1], "ts": np.arange(float(n)), "z": np.full((n, cols), 0.1)}
    _refuses(THEORY["loss_curve"][0], kw, "z")


@FAST
@given(ts=st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=6).filter(
    lambda t: np.any(np.diff(t) <= 0)))
def test_times_that_do_not_increase_are_refused(ts):
    _refuses(THEORY["integrate"][0], {**THEORY["integrate"][1], "ts": ts}, "ts")
    z = np.tile(Z0, (len(ts), 1))
    _refuses(THEORY["loss_curve"][0], {**THEORY["loss_curve"][1], "ts": ts, "z": z}, "ts")


@FAST
@given(rows=st.lists(st.integers(-10, 10), min_size=1, max_size=4).filter(
    lambda r: min(r) < 0 or max(r) >= 5))
def test_pairwise_indices_out_of_range_are_refused(rows):
    _refuses(theory.exponential_weighting_from_data, dict(X=_X, Y=_Y, rows=rows), "rows")


@pytest.mark.parametrize("fn", sorted(THEORY))
def test_every_theory_function_refuses_float32_mode(fn):
    call, valid, _ = THEORY[fn]
    with jax.enable_x64(False), pytest.raises(RuntimeError, match="64-bit"):
        call(**valid)


# ---------------------------------------------------------------------------------------------
# Valid inputs: finite, float64, vmap equals loop
# ---------------------------------------------------------------------------------------------

_pos = st.floats(1e-3, 1e2)
_rate = st.floats(1e-4, 1e-1)


@FAST
@given(h0=_pos, y0=st.floats(0.0, 1e2), eh=_rate, ey=_rate, dx2=_pos, dy2=st.floats(0.0, 1e2))
def test_final_distance_is_finite_float64_and_solves_its_quadratic(h0, y0, eh, ey, dx2, dy2):
    args = dict(eta_h=eh, eta_y=ey, dx2=dx2, dy2=dy2)
    # float32 inputs still compute in float64 (the theory's contract).
    hf = theory.final_distance(np.float32(h0), np.float32(y0), **args)
    assert hf.dtype == jnp.float64 and np.isfinite(hf) and hf >= 0
    fp = theory.fixed_points(np.float32(h0), np.float32(y0), **args)
    np.testing.assert_allclose(fp.h_plus, hf, rtol=1e-12)
    ah = theory.a_high(np.float32(h0), np.float32(y0), eta_h=eh, eta_y=ey, dx2=dx2)
    al2 = theory.a_low(**args) ** 2
    # h_final solves h^2 - A_high h - A_low^2 = 0 (scaled by the size of its terms).
    scale = hf**2 + abs(ah) * hf + al2
    assert abs(hf * (hf - ah) - al2) <= 1e-12 * scale


@pytest.mark.parametrize("ratio", [1e10, 1e100, 1e160, 1e300])
def test_final_distance_at_extreme_rate_ratios_is_its_limit_not_zero(ratio):
    """eta_h/eta_y = 1e160 overflowed A_high^2 and returned 0.0; the limit is dy2 h0/y0
    (here 25), and A_low = sqrt(ratio dx2 dy2) when y0 = 0."""
    h = theory.final_distance(1.0, 0.04, eta_h=ratio, eta_y=1.0, dx2=1.0, dy2=1.0)
    np.testing.assert_allclose(h, 25.0, rtol=1e-6)
    h = theory.final_distance(np.asarray([1.0, 2.0]), np.asarray([0.04, 0.5]), eta_h=1.0,
                              eta_y=1.0 / ratio, dx2=1.0, dy2=1.0)
    np.testing.assert_allclose(h, [25.0, 4.0], rtol=1e-6)
    if ratio <= 1e300:
        h0 = theory.final_distance(1.0, 0.0, eta_h=ratio, eta_y=1.0, dx2=1.0, dy2=1.0)
        np.testing.assert_allclose(h0, np.sqrt(ratio), rtol=1e-4)  # + A_high/2 = 0.5
    # The other way round (eta_y >> eta_h): the lazy limit, A_high = h0.
    np.testing.assert_allclose(theory.final_distance(3.0, 0.04, eta_h=1.0, eta_y=ratio,
                                                     dx2=1.0, dy2=1.0), 3.0, rtol=1e-6)


_TSC = np.arange(12.0)
_ZC = np.stack([np.linspace(1.0, 2.0, 12), np.linspace(0.5, 0.1, 12), np.zeros(12)], -1)

# Every public entry point that takes arrays, given a complex one: refused naming it (before,
# fit_rates and observe.trajectory cut complex values to their real part silently).
_COMPLEX = {
    "fit_rates Z": (lambda: fit.fit_rates(_TSC, _ZC + 1j, **DATA), "Z"),
    "fit_rates ts": (lambda: fit.fit_rates(_TSC + 0j, _ZC, **DATA), "ts"),
    "fit_rates init": (lambda: fit.fit_rates(_TSC, _ZC, **DATA, init=(1.0 + 1j, 1.0)), "init"),
    "fit_eta_mean loss": (lambda: fit.fit_eta_mean(_TSC, np.ones(12) + 1j, _ZC, dy2=1.0),
                          "loss"),
    "fit_eta_mean z": (lambda: fit.fit_eta_mean(_TSC, np.ones(12), _ZC + 1j, dy2=1.0), "z"),
    "pair_observables": (lambda: __import__("unijax.observe").observe.pair_observables(
        np.ones((4, 2, 3)) + 1j, np.ones((4, 2, 1)), np.ones((2, 1))), "hidden"),
    "trajectory": (lambda: __import__("unijax.observe").observe.trajectory(
        np.ones((4, 2, 3)), np.ones((4, 2, 1)) * 1j, np.ones((2, 1)), dx2=1.0), "outputs"),
    "final_distance": (lambda: theory.final_distance(1.0 + 1j, 0.1, **RATES, **DATA), "h0"),
    "solve": (lambda: theory.solve(np.asarray(Z0) + 1j, _TSC, **RATES, **DATA), "z0"),
    "train gains": (lambda: train.train(configs.get("default", width=4, depth=2, epochs=5),
                                        seeds=1, gains=[1.0 + 1j]), "gains"),
}


@pytest.mark.parametrize("case", list(_COMPLEX))
def test_complex_arrays_are_refused_naming_the_argument(case):
    call, name = _COMPLEX[case]
    with pytest.raises(ValueError, match=name) as e:
        call()
    assert "complex" in str(e.value) or "finite numbers" in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", [None, 3, b"xor", ["xor"]])
def test_data_load_refuses_a_name_that_is_not_a_string(name):
    with pytest.raises(ValueError, match=r"name=.* must be a data set name.*two_points"):
        data.load(name)


_T = np.linspace(0.0, 100.0, 4)
_ARGS = dict(**RATES, dx2=1.0)


@jax.jit
def _closed_forms_batch(h0, y0, dy2):
    # One fixed batch size: compiled once for all examples.
    hf = jax.vmap(lambda h, y, d: theory.final_distance(h, y, **_ARGS, dy2=d))(h0, y0, dy2)
    return hf, jax.vmap(lambda h, y: theory.identical_outputs(_T, h, y, **_ARGS))(h0, y0)


@FAST
@given(st.lists(st.tuples(_pos, st.floats(0.0, 10.0), st.floats(0.1, 10.0)), min_size=4,
                max_size=4))
def test_vmapped_closed_forms_equal_the_loop(rows):
    h0, y0, dy2 = (np.array(c) for c in zip(*rows, strict=True))
    batched, traj = _closed_forms_batch(h0, y0, dy2)
    for i, (h, y, d) in enumerate(rows):
        np.testing.assert_allclose(batched[i], theory.final_distance(h, y, **_ARGS, dy2=d),
                                   rtol=1e-13)
        one = theory.identical_outputs(_T, h, y, **_ARGS)
        assert one.dtype == jnp.float64 and np.all(np.isfinite(one))
        # y = c h^2 + K h cancels when y ~ 0: compare at the scale of its terms
        # (c = eta_y / eta_h = 2 here, |K| h <= c h0^2 + y0).
        np.testing.assert_allclose(traj[i], one, rtol=1e-13, atol=1e-13 * (4 * h**2 + y + 1))


_TS = np.linspace(0.0, 200.0, 5)


@jax.jit
def _solve_batch(z0s, eh, ey):
    return jax.vmap(lambda z, a, b: theory.integrate(z, _TS, eta_h=a, eta_y=b, **DATA))(
        z0s, eh, ey)


def _consistent_state(h0, y0, s):
    # w = y - dy . (f2 - f1), with dy . (f2 - f1) = s sqrt(dy2 y). Only aligned starts
    # (s >= 0): anti-aligned outputs must cross y = 0, which on the invariant's level set
    # K > 0 means h -> 0, the ODE's singular point, and the solve then (rightly) reports
    # ok=False.
    return [h0, y0, y0 - s * np.sqrt(DATA["dy2"] * y0)]


@settings(max_examples=max(3, N_EXAMPLES // 4), deadline=None)
@given(st.lists(st.tuples(st.floats(0.05, 2.0), st.floats(0.0, 0.5), st.floats(0.0, 1.0),
                          _rate, _rate), min_size=3, max_size=3))
def test_vmapped_jitted_solve_equals_the_loop_and_stays_float64(rows):
    z0s = np.array([_consistent_state(*r[:3]) for r in rows])
    eh, ey = np.array([r[3] for r in rows]), np.array([r[4] for r in rows])
    sol = _solve_batch(z0s, eh, ey)
    assert sol.ys.dtype == jnp.float64 and bool(jnp.all(sol.ok))
    for i in range(len(rows)):
        one = theory.integrate(z0s[i], _TS, eta_h=eh[i], eta_y=ey[i], **DATA)
        assert bool(one.ok) and np.all(np.isfinite(one.ys))
        np.testing.assert_allclose(sol.ys[i], one.ys, rtol=1e-9, atol=1e-12)
    # float32 inputs are computed in float64 (x64 kept), starting exactly at z0.
    z32 = z0s[0].astype(np.float32)
    one = theory.integrate(z32, _TS, eta_h=np.float32(eh[0]), eta_y=ey[0], **DATA)
    assert one.ys.dtype == jnp.float64
    np.testing.assert_allclose(one.ys[0], z32, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Seeds, rows, fits, training, data
# ---------------------------------------------------------------------------------------------

TINY = configs.get("default", width=4, depth=2, epochs=3)

_bad_seeds = st.one_of(
    st.sampled_from([None, 2.5, True, "3", 0, -1, [], [0.0, 1.0], [0, 2**32], [2**31]]),
    st.integers(max_value=0),
    st.lists(st.integers(0, 5), min_size=2, max_size=6).filter(lambda s: len(set(s)) < len(s)),
    st.lists(st.integers(-50, -1), min_size=1, max_size=3),
)


@FAST
@given(seeds=_bad_seeds)
def test_bad_or_aliasing_seeds_are_refused_everywhere(seeds):
    for call in (
        lambda: train.train(TINY, seeds=seeds),
        lambda: train.init_params(TINY, seeds=seeds),
        lambda: train.train_model(_Head(1), data.two_points(), layers="hidden", lr=0.1,
                                  epochs=2, seeds=seeds),
    ):
        with pytest.raises(ValueError, match="seeds"):
            call()
    with pytest.raises(ValueError, match="seeds"):
        sweep.SweepConfig(train=TINY, seeds=seeds)


@FAST
@given(seeds=st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=6, unique=True))
def test_distinct_seeds_in_range_are_kept_as_given(seeds):
    assert sweep.SweepConfig(train=TINY, seeds=seeds).seeds == tuple(seeds)


@pytest.mark.parametrize("name", ["E1", "E2", "E3", "E4", "E5"])
@FAST
@given(data=st.data())
def test_repeated_experiment_rows_are_refused(name, data):
    cfg = experiments.get(name).presets["tiny"]
    rows = list(cfg.rows)
    dup = data.draw(st.sampled_from(rows))
    with pytest.raises(ValueError, match=r"rows=.* repeats"):
        dataclasses.replace(cfg, rows=(*rows, dup))


@FAST
@given(flag=st.one_of(st.text(max_size=3), st.integers(), st.none(), st.floats()))
def test_fit_flags_and_counts_must_have_their_type(flag):
    ts = np.arange(5.0)
    Z = np.tile(Z0, (5, 1))
    _refuses(lambda **k: fit.fit_rates(ts, Z, **k), dict(**DATA, fit_initial=flag),
             "fit_initial")
    if not isinstance(flag, int) or flag < 1:
        _refuses(lambda **k: fit.fit_rates(ts, Z, **k), dict(**DATA, max_steps=flag),
                 "max_steps")


class _Head(nn.Module):
    out: int

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(3, name="hidden")(x)
        return nn.Dense(self.out)(nn.tanh(h))


@FAST
@given(out=st.integers(1, 4), target=st.integers(1, 4))
def test_train_model_refuses_outputs_that_do_not_match_the_targets(out, target):
    ds = data.two_points(out_dim=target)
    if out == target:
        return  # the matching case trains (tests/test_train.py)
    with pytest.raises(ValueError, match=r"output has shape .* targets y have shape"):
        train.train_model(_Head(out), ds, layers="hidden", lr=0.1, epochs=2)


_NET = train.make_network(TINY)
_PARAMS = jax.tree.map(lambda a: a[0, 0], train.init_params(TINY, seeds=1))
_DS = data.two_points()


@FAST
@given(pair=st.tuples(st.integers(-3, 4), st.integers(-3, 4)), layer=st.integers(-2, 4))
def test_observables_refuse_out_of_range_pairs_and_layers(pair, layer):
    good_pair = pair[0] != pair[1] and all(0 <= i < 2 for i in pair)
    call = lambda: train.hidden_observables(_NET, _PARAMS, _DS.x, _DS.y, layer=layer,  # noqa: E731
                                            pair=pair)
    if good_pair and 0 <= layer < TINY.depth:
        assert np.all(np.isfinite(call()))
        return
    with pytest.raises(ValueError, match="pair" if not good_pair else "layer"):
        call()


@settings(max_examples=max(4, N_EXAMPLES // 4), deadline=None)
@given(width=st.integers(10**5, 10**7), seeds=st.integers(1, 64))
def test_absurd_sizes_are_refused_up_front_with_the_memory_needed(width, seeds):
    cfg = configs.get("default", width=width, depth=20, epochs=10)
    with pytest.raises(ValueError, match=r"would need at least [\d.e+]+ GiB"):
        train.train(cfg, seeds=seeds)


@FAST
@given(images=st.one_of(
    st.just(np.full((2, 784), np.nan)),
    st.floats(-1e3, -1e-3).map(lambda v: np.full((2, 784), v)),
    st.floats(256.0, 1e6).map(lambda v: np.full((2, 784), v)),
), labels=st.sampled_from([np.array([0, 1]), np.array([0.0, 1.0]), np.array([3, 12])]))
def test_mnist_refuses_bad_pixels_and_labels_naming_the_file(images, labels):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "digits.npz"
        np.savez(path, x_train=images, y_train=labels)
        with pytest.raises(ValueError, match=r"digits\.npz"):
            data.mnist(path)


class _TwoHidden(nn.Module):
    @nn.compact
    def __call__(self, x):
        h1 = nn.Dense(3)(x)
        h2 = nn.Dense(3)(nn.tanh(h1))
        return nn.Dense(1)(nn.tanh(h2)), (h1, h2)


@FAST
@given(layer=st.integers(-5, 6).filter(lambda v: not 0 <= v < 2))
def test_train_model_refuses_hidden_layer_indices_out_of_range(layer):
    with pytest.raises(ValueError, match=r"layer=-?\d+ is out of range"):
        train.train_model(_TwoHidden(), data.two_points(), layers=layer, lr=0.1, epochs=2)


@pytest.mark.parametrize("flag", ["no", 1, None])
def test_training_and_fit_flags_must_be_bools(flag):
    with pytest.raises(ValueError, match="return_params"):
        train.train(TINY, seeds=1, return_params=flag)
    with pytest.raises(ValueError, match="return_trajectory"):
        fit.fit_rates(np.arange(5.0), np.tile(Z0, (5, 1)), **DATA, return_trajectory=flag)


@pytest.mark.parametrize("name, field", [("E1", "reference"), ("E1", "fit_initial"),
                                         ("E3", "reference"), ("E6", "normalize"),
                                         ("E6", "reference")])
@pytest.mark.parametrize("flag", ["no", 1, None])
def test_experiment_flags_must_be_bools_in_the_one_message(name, field, flag):
    # Every experiment's switch is refused with the shared wording of unijax._checks.
    mod = experiments.get(name)
    with pytest.raises(ValueError, match=rf"^{field}=.* is out of range: must be True or False"):
        dataclasses.replace(mod.presets["tiny"], **{field: flag})
    with pytest.raises(ValueError, match=r"^digits\.enabled=.* must be True or False"):
        experiments.get("E8").DigitsPart(enabled=flag)
