"""The experiment layer: experiments stand on shared modules, and each is an ``Experiment``.

Read from the source with ``ast`` (imports inside functions included), so a new import of one
experiment by another fails here before it can couple two verdicts.
"""

import ast
import dataclasses
import types
from pathlib import Path

import pytest

import unijax.experiments as experiments
from unijax.experiments import Experiment, _structure
from unijax.experiments import _twopoint as tp

EXP_DIR = Path(experiments.__file__).parent
EXPERIMENT_FILES = sorted(p.stem for p in EXP_DIR.glob("e[0-9]*_*.py"))
SHARED_FILES = sorted(p.stem for p in EXP_DIR.glob("_*.py") if p.stem != "__init__")

def _imported_modules(path: Path) -> set[str]:
    """Every ``unijax.experiments`` submodule that ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("unijax.experiments."):
                    out.add(a.name.split(".")[2])
        elif isinstance(node, ast.ImportFrom):
            # The package imports absolutely (ruff's isort); a relative import is refused.
            assert not node.level, f"{path.name}: relative import of {node.module}"
            mod = node.module or ""
            if mod == "unijax.experiments":
                out.update(a.name for a in node.names)
            elif mod.startswith("unijax.experiments."):
                out.add(mod.split(".")[2])
    return out


def test_the_files_are_found():
    assert EXPERIMENT_FILES == [
        "e1_dynamics", "e2_weight_scale", "e3_final_distance", "e4_xor", "e5_blobs",
        "e6_mnist", "e7_depth", "e8_adam"]
    assert {"_blobs", "_common", "_digits", "_dynamics", "_rows", "_structure", "_twopoint",
            "_xor"} <= set(SHARED_FILES)


def test_the_import_reader_sees_every_form(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from unijax.experiments import e1_dynamics as e1, _rows\n"
                     "import unijax.experiments.e4_xor\n"
                     "def f():\n    from unijax.experiments.e5_blobs import run\n"
                     "import numpy\n")
    assert _imported_modules(probe) == {"e1_dynamics", "_rows", "e4_xor", "e5_blobs"}


@pytest.mark.parametrize("stem", EXPERIMENT_FILES)
def test_no_experiment_imports_another(stem):
    imported = _imported_modules(EXP_DIR / f"{stem}.py")
    others = {m for m in imported if m in EXPERIMENT_FILES and m != stem}
    # E8 reruns E1, E4, E5 and E6 with Adam from the shared parts they stand on (_dynamics,
    # _xor, _blobs, _digits), so no verdict of one experiment is coupled to another's module.
    assert not others, (
        f"{stem} imports the experiments {sorted(others)}: take what it needs from a shared "
        "module (_rows, _twopoint, _structure, _common, _dynamics, _xor, _blobs, _digits)")


@pytest.mark.parametrize("stem", SHARED_FILES)
def test_no_shared_module_imports_an_experiment(stem):
    imported = _imported_modules(EXP_DIR / f"{stem}.py")
    assert not imported & set(EXPERIMENT_FILES), f"{stem} imports {imported}"


@pytest.mark.parametrize("name", experiments.names())
def test_every_registered_experiment_satisfies_the_protocol(name):
    mod = experiments.get(name)
    assert isinstance(mod, Experiment)
    assert mod.NAME == name and mod.TITLE and mod.CLAIM
    assert isinstance(mod.USES_RATES, bool)
    assert set(experiments.PRESETS) <= set(mod.presets)
    for preset in experiments.PRESETS:
        assert isinstance(mod.presets[preset], mod.Config)
    # An experiment that predicts with the rates has the rates block the CLI reads.
    if mod.USES_RATES:
        assert isinstance(mod.Config().rates, _structure.RateSettings)
    else:
        assert "rates" not in {f.name for f in dataclasses.fields(mod.Config)}


def test_a_module_that_is_not_an_experiment_is_refused(monkeypatch):
    fake = types.ModuleType("unijax.experiments.e9_fake")
    fake.NAME, fake.TITLE, fake.CLAIM, fake.USES_RATES = "E9", "t", "c", False
    monkeypatch.setitem(__import__("sys").modules, fake.__name__, fake)
    monkeypatch.setitem(experiments.REGISTRY, "E9", fake.__name__)
    assert not isinstance(fake, Experiment)
    with pytest.raises(TypeError, match="lacks Config, presets, run, agreement, plot, "
                                        "result_arrays"):
        experiments.get("E9")


def test_one_size_block():
    # The rates block is a size block (no repeated settings class), with its own dotted names.
    assert issubclass(_structure.RateSettings, tp.RunSizes) and issubclass(tp.Sizes, tp.RunSizes)
    run_fields = {f.name for f in dataclasses.fields(tp.RunSizes)}
    rate_fields = {f.name for f in dataclasses.fields(_structure.RateSettings)}
    assert rate_fields - run_fields == {"source", "seeds"}
    with pytest.raises(ValueError, match=r"rates\.epochs=10 is out of range"):
        _structure.RateSettings(epochs=10)
    with pytest.raises(ValueError, match=r"size\.epochs=10 is out of range"):
        tp.Sizes(epochs=10)
    with pytest.raises(ValueError, match=r"size\.conv_width=0 is out of range"):
        tp.Sizes(conv_width=0)
    r = _structure.RateSettings(width=16, max_depth=4, epochs=400, seeds=3)
    assert r.sizes() == tp.Sizes(width=16, max_depth=4, epochs=400)
    assert r.depth("default") == 4 and r.row_config("default") == r.sizes().row_config("default")



# ---------------------------------------------------------------------------------------------
# What runs: the same numbers from less work
# ---------------------------------------------------------------------------------------------


def test_e3_grid_trials_stop_early_with_the_records_of_one_uninterrupted_run():
    import jax
    import numpy as np

    from unijax import data, train
    from unijax.experiments import e3_final_distance as e3

    # A slow learning rate: the loss reaches 1e-3 after about 1000 and 1700 epochs.
    cfg = tp.row_config("default", width=16, depth=3, epochs=3500, time_scale=0.02)
    ds = data.two_points(1.0, 0.25)
    key = jax.random.key(3)
    full = train.train(cfg, seeds=2, key=key, data=ds, pair=(0, 1))
    loss, h = np.asarray(full.loss)[0], np.asarray(full.h)[0]
    ends = (np.asarray(full.final_loss)[0], np.asarray(full.final_h)[0])
    # Never below the threshold: every segment runs (1000, 1000, 1000, 500 epochs), bit for
    # bit.
    seg = e3.train_until(cfg, seeds=2, key=key, data=ds, stop_loss=-1.0)
    assert seg["loss"].shape == loss.shape
    assert np.array_equal(seg["loss"], loss) and np.array_equal(seg["h"], h)
    assert np.array_equal(seg["final_loss"], ends[0]) and np.array_equal(seg["final_h"], ends[1])
    assert np.array_equal(seg["y0"], np.asarray(full.y)[0, :, 0])
    # A threshold both seeds reach within two segments: training stops after the second, and
    # the state taken as final (the first epoch below it) is the same.
    early = e3.train_until(cfg, seeds=2, key=key, data=ds, stop_loss=1e-3)
    assert early["loss"].shape[1] == 2 * e3.SEGMENT_EPOCHS
    got = e3.stop_at(early["loss"], early["h"], early["final_loss"], early["final_h"], 1e-3)
    want = e3.stop_at(loss, h, *ends, 1e-3)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert np.all(got[2] > 0) and np.max(got[2]) > e3.SEGMENT_EPOCHS  # one stop in segment 2
    # No threshold: one call, the whole run.
    assert e3.train_until(cfg, seeds=2, key=key, data=ds, stop_loss=None)["loss"].shape[1] == 3500


def test_the_reference_runs_only_where_a_verdict_or_status_can_depend_on_it():
    import numpy as np

    from unijax import fit
    from unijax.experiments import _rows

    ok, poor = int(fit.FitStatus.OK), int(fit.FitStatus.POOR_FIT)
    # Row 0 passes the threshold (one poor fit in it); row 1 misses it on w; row 2 is not
    # fitted at all.
    r2 = np.array([[[0.99, 0.99, 0.98], [0.99, 0.99, 0.97], [0.5, 0.9, 0.2]],
                   [[0.99, 0.99, 0.80], [0.99, 0.99, 0.90], [0.99, 0.99, 0.99]],
                   [[np.nan] * 3] * 3])
    f = {"status": np.array([[ok, ok, poor], [poor, ok, ok], [-1, -1, -1]]), "r2": r2,
         "fit_ok": np.array([[True] * 3, [True] * 3, [False] * 3])}
    fitted = np.array([[True] * 3, [True] * 3, [False] * 3])
    need = _rows.reference_needed(fitted, f, r2_pass=0.95)
    assert need.tolist() == [[False, False, True], [True, True, True], [False] * 3]
    # Without a row verdict (E3), only the poor fits, whose status the reference can change.
    need = _rows.reference_needed(fitted, f, r2_pass=None)
    assert need.tolist() == [[False, False, True], [True, False, False], [False] * 3]
