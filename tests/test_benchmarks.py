"""The benchmark scripts and examples keep up with the code they measure.

They live outside the package and no other test imports them, so a name that moves inside
``unijax`` would break them silently; here every ``unijax`` name they reach is resolved, and the
cheapest benchmark runs end to end at toy sizes (the others at toy sizes in the slow suite).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "examples").glob("*.py"))


def _unijax_names(path: Path) -> list[tuple[int, str, str]]:
    """``(line, module, attribute)`` of every ``unijax`` name the script reaches: names it
    imports from a ``unijax`` module, and attributes of a ``unijax`` module it holds."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: dict[str, str] = {}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unijax"):
            for a in node.names:
                if importlib.util.find_spec(f"{node.module}.{a.name}") if _is_package(
                        node.module) else None:
                    modules[a.asname or a.name] = f"{node.module}.{a.name}"
                else:
                    out.append((node.lineno, node.module, a.name))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "unijax":
                    modules[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            out.append((node.lineno, modules[node.value.id], node.attr))
    return out


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scripts_reach_only_names_that_exist(path):
    missing = [f"{path.name}:{line}: {mod}.{attr}" for line, mod, attr in _unijax_names(path)
               if not hasattr(importlib.import_module(mod), attr)]
    assert not missing, "names the script uses but unijax no longer has:\n" + "\n".join(missing)


def test_the_name_check_can_fail(tmp_path):
    script = tmp_path / "bench_gone.py"
    script.write_text("from unijax import train, theory\n"
                      "from unijax.fit import fit_rates, fit_everything\n"
                      "train._gone_step(1)\ntheory.solve\n")
    names = _unijax_names(script)
    gone = [(m, a) for _, m, a in names if not hasattr(importlib.import_module(m), a)]
    assert sorted(gone) == [("unijax.fit", "fit_everything"), ("unijax.train", "_gone_step")]


def _bench(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_bench_sgd_step_runs_and_both_steps_agree(capsys):
    rc = _bench("bench_sgd_step").main(
        ["--width", "8", "--depth", "3", "--trials", "2", "--epochs", "3", "--reps", "1"])
    out = capsys.readouterr().out
    assert rc in (0, None)
    diff = float(out.split("max |parameter difference| after 3 epochs:")[1].split()[0])
    assert diff < 1e-5
    assert "autodiff / fused" in out


def test_bench_train_runs_at_toy_size(capsys):
    rc = _bench("bench_train").main(
        ["--width", "8", "--depth", "3", "--epochs", "3", "--repeats", "1", "--seeds", "1,2",
         "--no-torch", "--buffer-mib", "8"])
    out = capsys.readouterr().out
    assert rc in (0, None)
    assert "memory floor: 169 parameters" in out  # 1x8 + 8x8 + 8x8 + 8x1 weights, 25 biases
    rows = [line for line in out.splitlines() if line.startswith("unijax train.train")]
    assert len(rows) == 2 and all(line.split()[-3].endswith("x") for line in rows)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bench_lm", "bench_ode_sampling"])
def test_small_benchmarks_run_at_toy_sizes(name, capsys):
    rc = _bench(name).main(["--n-trials", "2", "--n-epochs", "200", "--reps", "1"])
    assert rc in (0, None)
    assert "speed" in capsys.readouterr().out or name == "bench_ode_sampling"
