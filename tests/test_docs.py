"""The documentation ships with the code, builds, and its code runs.

* The site (``mkdocs.yml``, ``docs/``) builds with ``mkdocs build --strict`` (warnings are
  errors: broken links, missing pages, docstrings that do not parse).
* Every ```` ```python ```` block of README.md and of the docs pages, and every code cell of the
  tutorial (``examples/tutorial.py``), is executed. Blocks are run in order, one subprocess per
  file, sharing one namespace, as a reader pasting them would.
  - Blocks that fit rates or train networks (``HEAVY`` below) cost 15-90 s per file on a
    2-core CPU, nearly all of it XLA compilation of the fit and training programs; they run in
    the slow suite (``pytest -m slow tests/test_docs.py``). The default suite runs each file's
    blocks up to its first heavy one and checks that every block compiles as Python.
  - ``SIZE_OVERRIDES`` shrinks paper-sized examples (textual replacements, each asserted to
    match, so an edited block cannot silently escape its override).
* Nothing points outside the repository, the cited sections of the theory and experiments
  pages exist, and importing ``unijax.plots`` leaves matplotlib's backend alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUTORIAL = ROOT / "examples" / "tutorial.py"

# docs/quick_run/ and docs/paper_cpu_run/ are generated reports of one run each (no code
# blocks of their own).
DOC_FILES = ["README.md"] + sorted(
    str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md")
    if not {"quick_run", "paper_cpu_run"} & set(p.parts)
)
CODE_FILES = DOC_FILES + [str(TUTORIAL.relative_to(ROOT))]

#: A block that compiles a rate fit or trains networks belongs to the slow suite.
HEAVY = re.compile(
    r"fit\.fit_rates|fit\.fit_eta_mean|train\.train\(|train_model\(|"
    r"run_sweep\(|\.run\("
)

#: Paper-sized examples, made small for the test: file -> [(as written, as run)].
SIZE_OVERRIDES: dict[str, list[tuple[str, str]]] = {
    "docs/scaling.md": [
        ('train=configs.get("default")',
         'train=configs.get("default", width=16, depth=16, epochs=200)'),
        ("seeds=tuple(range(64))", "seeds=tuple(range(2))"),
        ("seeds_per_chunk=16", "seeds_per_chunk=2"),
    ],
}

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(rel: str) -> list[str]:
    """The Python code of ``rel``: fenced ``python`` blocks, or the tutorial's code cells."""
    text = (ROOT / rel).read_text(encoding="utf-8")
    if rel.endswith(".py"):
        cells = re.split(r"^# %%.*$", text, flags=re.MULTILINE)
        markers = re.findall(r"^# %%.*$", text, flags=re.MULTILINE)
        # cells[0] is jupytext's header; cell i+1 follows marker i.
        return [c for m, c in zip(markers, cells[1:], strict=True) if "[markdown]" not in m]
    return _FENCE.findall(text)


def _apply_overrides(rel: str, blocks: list[str]) -> list[str]:
    joined = "\n\x00\n".join(blocks)
    for old, new in SIZE_OVERRIDES.get(rel, []):
        assert old in joined, f"size override {old!r} no longer matches any block of {rel}"
        joined = joined.replace(old, new)
    return joined.split("\n\x00\n")


_RUNNER = """
import sys
blocks = {blocks!r}
ns = {{"__name__": "__main__"}}
for i, src in enumerate(blocks):
    print(f"--- {rel} block {{i}}", flush=True)
    exec(compile(src, f"{rel}[block {{i}}]", "exec"), ns)
"""


def _run_blocks(rel: str, blocks: list[str], tmp_path: Path, timeout: float) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MPLBACKEND"] = "Agg"  # plt.show() must not block or need a display
    env.pop("JAX_ENABLE_X64", None)  # the blocks must switch float64 on themselves
    script = tmp_path / "blocks.py"
    script.write_text(_RUNNER.format(blocks=blocks, rel=rel), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{rel}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.parametrize("rel", CODE_FILES)
def test_code_blocks_are_valid_python(rel):
    for i, src in enumerate(code_blocks(rel)):
        compile(src, f"{rel}[block {i}]", "exec")


def test_every_doc_page_with_code_is_found():
    # The extraction must see the examples the docs are known to hold.
    assert len(code_blocks("README.md")) >= 2
    assert len(code_blocks("docs/getting-started.md")) >= 4
    assert len(code_blocks(str(TUTORIAL.relative_to(ROOT)))) >= 5


def _light_prefix(blocks: list[str]) -> list[str]:
    """The blocks before the first heavy one (later blocks may use what a heavy one made)."""
    out = []
    for b in blocks:
        if HEAVY.search(b):
            break
        out.append(b)
    return out


@pytest.mark.parametrize("rel", [f for f in CODE_FILES if _light_prefix(code_blocks(f))])
def test_light_code_blocks_run(rel, tmp_path):
    _run_blocks(rel, _light_prefix(_apply_overrides(rel, code_blocks(rel))), tmp_path,
                timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("rel", [f for f in CODE_FILES if code_blocks(f)])
def test_all_code_blocks_run(rel, tmp_path):
    _run_blocks(rel, _apply_overrides(rel, code_blocks(rel)), tmp_path, timeout=1800)


def test_site_builds_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    site = tmp_path / "site"
    # The generated pages exist: the tutorial (from examples/tutorial.py), the API reference
    # (from docstrings) and the included benchmark notes.
    tutorial = (site / "tutorial" / "index.html").read_text(encoding="utf-8")
    assert "fit.fit_rates" in tutorial
    api = (site / "api" / "theory" / "index.html").read_text(encoding="utf-8")
    assert "final_distance" in api
    bench = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "bench_train.py" in bench and "bench_fit.py" in bench


def test_nothing_points_outside_the_repository():
    pattern = re.compile(r"THEORY\.md|EXPERIMENTS\.md|STYLE\.md|\.\./shared")
    hits = []
    for top in ("unijax", "benchmarks", "examples", "docs", "README.md"):
        paths = [ROOT / top] if top.endswith(".md") else (ROOT / top).rglob("*")
        for p in paths:
            if p.is_file() and p.suffix in {".py", ".md", ".yml", ".toml", ".txt"}:
                for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                    if pattern.search(line):
                        hits.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_cited_sections_exist():
    theory = (DOCS / "theory.md").read_text(encoding="utf-8")
    experiments = (DOCS / "experiments.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", theory, flags=re.MULTILINE))
    assert sections == {str(i) for i in range(1, 12)}
    exps = set(re.findall(r"^## (E\d)\. ", experiments, flags=re.MULTILINE))
    assert exps == {f"E{i}" for i in range(1, 9)}
    for top in ("unijax", "benchmarks", "examples"):
        for p in (ROOT / top).rglob("*"):
            if not (p.is_file() and p.suffix in {".py", ".md"}):
                continue
            text = p.read_text(encoding="utf-8")
            for n in re.findall(r"docs/theory\.md,?\s+section\s+(\d+)", text):
                assert n in sections, f"{p.relative_to(ROOT)} cites docs/theory.md section {n}"
            for e in re.findall(r"docs/experiments\.md,?\s+(E\d)", text):
                assert e in exps, f"{p.relative_to(ROOT)} cites docs/experiments.md {e}"


def test_readme_keeps_the_ci_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    cmd = 'python -m pip install -e ".[test]" && python -m pytest'
    assert cmd in ci
    assert cmd in (ROOT / "README.md").read_text(encoding="utf-8")


def test_importing_plots_keeps_the_backend():
    code = ("import matplotlib; matplotlib.use('svg'); import unijax.plots; "
            "import matplotlib.pyplot as plt; print(matplotlib.get_backend())")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MPLBACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout
    assert out.strip().lower() == "svg"


def test_license_citation_changelog():
    import yaml  # comes with mkdocs

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    meta = {"version": re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)}
    assert 'license = { text = "MIT" }' in pyproject
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["version"] == meta["version"]
    assert "arXiv:2402.09142" in str(cff["preferred-citation"])
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## Unreleased" in changelog and f"## {meta['version']}" in changelog
