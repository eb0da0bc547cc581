"""Options and results as objects: the fit's option objects, FitStatus and SolveResult with
their messages, NetSpec, and the one walker of dotted config keys."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from unijax import configs, fit, theory
from unijax._dotted import dotted_keys
from unijax.fit._status import status_counts
from unijax.train._nets import NetSpec, builtin_factory

TS = np.arange(300.0)
RATES = dict(eta_h=8e-3, eta_y=5e-3, dx2=1.0, dy2=0.5)


@pytest.fixture(scope="module")
def trajectory():
    with jax.enable_x64(True):
        return np.asarray(theory.solve(np.array([0.1, 0.02, -0.05]), TS, **RATES))


def test_option_objects_are_the_flat_keywords(trajectory):
    with jax.enable_x64(True):
        flat = fit.fit_rates(TS, trajectory, dx2=1.0, dy2=0.5, max_steps=256, opt_atol=1e-5,
                             return_trajectory=False)
        objs = fit.fit_rates(TS, trajectory, dx2=1.0, dy2=0.5, return_trajectory=False,
                             solver=fit.SolverOptions(max_steps=256),
                             optimizer=fit.OptimizerOptions(opt_atol=1e-5))
    assert float(objs.eta_h) == float(flat.eta_h) and float(objs.eta_y) == float(flat.eta_y)
    assert int(objs.status) == fit.FitStatus.OK
    np.testing.assert_allclose([float(objs.eta_h), float(objs.eta_y)], [8e-3, 5e-3], rtol=1e-4)


def test_a_setting_given_twice_or_a_wrong_object_is_refused(trajectory):
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match="max_steps given twice"):
            fit.fit_rates(TS, trajectory, dx2=1.0, dy2=0.5, max_steps=256,
                          solver=fit.SolverOptions(max_steps=128))
        with pytest.raises(ValueError, match=r"optimizer=.* is out of range: must be a "
                                             r"unijax.fit.OptimizerOptions or None"):
            fit.fit_rates(TS, trajectory, dx2=1.0, dy2=0.5, optimizer=fit.SolverOptions())
        with pytest.raises(ValueError, match="max_iters given twice"):
            fit.fit_eta_mean(TS, np.ones(300), trajectory, dy2=0.5, max_iters=8,
                             optimizer=fit.OptimizerOptions())
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.SolverOptions().rtol = 1.0


def test_every_fit_status_carries_its_message():
    assert [int(s) for s in fit.FitStatus] == [-1, 0, 1, 2, 3, 4, 5]
    for status in fit.FitStatus:
        assert isinstance(status.message, str) and len(status.message) > 10, status
    assert "min_r2" in fit.FitStatus.POOR_FIT.message
    assert fit.FitStatus(-1) is fit.FitStatus.NOT_FITTED  # the stored codes read back
    assert status_counts([0, 0, 1, -1]) == {"NOT_FITTED": 1, "OK": 2, "POOR_FIT": 1}


def test_an_ode_solution_reports_a_result_code():
    with jax.enable_x64(True):
        ok = theory.integrate(np.array([0.4, 0.02, -0.01]), TS, **RATES)
        short = theory.integrate(np.array([0.4, 0.02, -0.01]), TS, **RATES, max_steps=3)
    assert int(ok.result) == theory.SolveResult.SUCCESSFUL and bool(ok.ok)
    assert int(short.result) == theory.SolveResult.MAX_STEPS and not bool(short.ok)
    assert "max_steps" in theory.SolveResult.MAX_STEPS.message


def test_a_net_spec_names_its_fields_and_keys_the_programs():
    cfg = configs.get("default", width=8, depth=2, epochs=10)
    spec = NetSpec.of(cfg, out_dim=1)
    assert (spec.arch, spec.width, spec.depth, spec.out_dim) == ("mlp", 8, 2, 1)
    assert NetSpec.of(cfg.replace(lr=0.5, gain=2.0), out_dim=1) == spec  # shares programs
    assert builtin_factory(spec, (1,)) is builtin_factory(NetSpec.of(cfg, 1), (1,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.width = 16


def test_one_walker_reads_types_instances_and_stored_dicts():
    @dataclasses.dataclass(frozen=True)
    class Block:
        epochs: int = 400

    @dataclasses.dataclass(frozen=True)
    class Config:
        seeds: int = 4
        rates: Block = dataclasses.field(default_factory=Block)

    Config.__annotations__ = {"seeds": int, "rates": Block}  # resolvable here
    Block.__annotations__ = {"epochs": int}
    assert dotted_keys(Config) == {"seeds": int, "rates.epochs": int}
    assert dotted_keys(Config()) == {"seeds": 4, "rates.epochs": 400}
    assert dotted_keys({"seeds": 4, "rates": {"epochs": 400}}) == {"seeds": 4, "rates.epochs": 400}


@pytest.mark.parametrize("make, message", [
    (lambda: configs.get("default", width=0), "width=0 is out of range: must be an integer >= 1."),
    (lambda: configs.get("default", dy2=-1.0),
     "dy2=-1.0 is out of range: must be a finite number in [0.0, inf)."),
    (lambda: configs.get("default", arch="resnet"),
     "arch='resnet' is out of range: must be one of"),
])
def test_one_message_format(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value).startswith(message), str(err.value)


def test_the_network_says_it_in_the_same_words():
    from unijax import nets

    with pytest.raises(ValueError, match=r"^width=0 is out of range: must be an integer >= 1\.$"):
        nets.make("mlp", width=0, depth=2, out_dim=1)
