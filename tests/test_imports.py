"""The import graph of ``unijax/`` has no circle, and its arrows run down the layers.

The graph is read from the source with ``ast`` (nothing is imported), imports placed inside
functions included: a lazy import is still an arrow. The layers are those that
``docs/architecture.md`` draws; a new file must be placed in one, and the page must list the
same files as this test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "unijax"

#: The layers, from the ground up: paths relative to ``unijax/`` (a folder ends in ``/``). A
#: module may import from its own layer and those below; an import of a higher layer is an
#: arrow that runs back up.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("_checks.py", "_codes.py", "_dotted.py", "_progress.py", "_cache.py",
                "_host.py", "_normal.py", "_version.py", "_record.py", "distributed.py",
                "nets.py", "authors.py")),
    ("foundations", ("_batch.py", "data.py", "configs.py", "theory.py", "results/")),
    ("engines", ("fit/", "train/")),
    ("uses", ("observe.py", "sweep.py", "plots.py")),
    ("experiments", ("experiments/", "report.py")),
    ("command line", ("cli.py", "__main__.py", "__init__.py")),
)

#: At most this many arrows may run from a lower layer to a higher one (each a known debt).
MAX_ARROWS_UP = 3

#: The packages whose ``__init__`` only hands names on (a docstring, imports, ``__all__``).
FACES = ("fit/__init__.py", "train/__init__.py", "results/__init__.py")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))
            if "__pycache__" not in p.parts}


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement reaches (``from a import b``: ``a.b``, which is a
    module or a name in ``a``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    return [f"{base}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of unijax it imports}``, every import statement of the file counted
    (top level, inside functions, under ``if``), imports of ``unijax`` itself left out."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        out = set()
        for node in ast.walk(tree):
            for target in _imported(node, name, path.name == "__init__.py"):
                if target.split(".")[0] != "unijax":
                    continue
                dest = resolve(target)
                if dest not in (None, name, "unijax"):
                    out.add(dest)
        graph[name] = out
    return graph


def layer_of(module: str) -> int:
    """Index of the layer (0 = the ground) that holds ``module``."""
    path = Path(*module.split(".")[1:])
    rel = (path.as_posix() + "/") if (PACKAGE / path).is_dir() else path.as_posix() + ".py"
    if module == "unijax":
        rel = "__init__.py"
    for i, (_, members) in enumerate(LAYERS):
        for m in members:
            if rel == m or (m.endswith("/") and rel.startswith(m)):
                return i
    raise LookupError(f"{module} ({rel}) is in no layer: place it in LAYERS and in "
                      f"docs/architecture.md")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def arrows_up(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if layer_of(a) < layer_of(b))


def test_the_graph_reads_imports_inside_functions():
    # A lazy import is an arrow too: the reader must see one (fit/_fit imports fit/_mean
    # inside fit_eta_mean only).
    graph = import_graph()
    assert "unijax.fit._mean" in graph["unijax.fit._fit"]
    assert "unijax.results._files" in graph["unijax.results"]


def test_no_import_circle():
    found = cycles(import_graph())
    assert not found, f"import circles: {found}"


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)  # raises, naming the module, if none holds it


def test_at_most_three_arrows_run_back_up():
    up = arrows_up(import_graph())
    assert len(up) <= MAX_ARROWS_UP, f"{len(up)} arrows from a lower layer to a higher: {up}"


def test_the_checks_can_fail():
    # The same checks on a made-up graph with a circle and two arrows back up.
    graph = {"unijax.theory": {"unijax.fit._fit"}, "unijax.fit._fit": {"unijax.cli"},
             "unijax.cli": {"unijax.theory"}}
    assert cycles(graph) == [["unijax.cli", "unijax.fit._fit", "unijax.theory"]]
    assert arrows_up(graph) == [("unijax.fit._fit", "unijax.cli"),
                                ("unijax.theory", "unijax.fit._fit")]
    with pytest.raises(LookupError, match="unijax.nowhere"):
        layer_of("unijax.nowhere")


@pytest.mark.parametrize("face", FACES)
def test_a_package_face_only_hands_names_on(face):
    tree = ast.parse((PACKAGE / face).read_text(encoding="utf-8"))
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        dunder_all = isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [
            "__all__"]
        assert docstring or dunder_all or isinstance(node, ast.ImportFrom), (
            f"{face} line {node.lineno}: {ast.unparse(node)[:60]!r} is more than a re-export")


def test_the_architecture_page_draws_these_layers():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0][:1].isdigit():
            rows[int(cells[0].split()[0])] = (cells[0].split(maxsplit=1)[1],
                                               set(re.findall(r"`([^`]+)`", cells[1])))
    expected = {i + 1: (name, set(members)) for i, (name, members) in enumerate(LAYERS)}
    assert rows == expected
