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
* Every example that fits rates states its outcome in a comment on the line that prints it,
  ``# RateFit: 4/4 usable; eta_h ≈ 0.016, eta_y ≈ 0.038``; running the example checks the
  printed summary against that comment (the usable count exactly, each rate within 10%), so
  the text and the result cannot drift apart (:func:`check_stated_outcomes`). The README's
  training example, the first one a user runs, is checked in the default suite.
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


#: A stated outcome: the comment after ``print(rates.summary())``.
_STATED = re.compile(r"#\s*RateFit: (\d+)/(\d+) usable(?:; ([^\n]*))?")
#: What ``RateFit.summary()`` prints: its first line and the mean rates over usable fits.
_PRINTED = re.compile(r"^RateFit: (\d+)/(\d+) usable", re.MULTILINE)
_PRINTED_RATE = re.compile(r"^\s*(eta_h|eta_y) = ([0-9.eE+-]+)", re.MULTILINE)
#: Rates are stated to two significant figures; a platform's float rounding moves them less.
RATE_RTOL = 0.1


def stated_outcomes(block: str) -> list[tuple[int, int, dict[str, float]]]:
    """``(usable, trials, {"eta_h": value, ...})`` of each ``# RateFit: ...`` comment."""
    out = []
    for m in _STATED.finditer(block):
        rates = {k: float(v) for k, v in re.findall(r"(eta_h|eta_y) ≈ ([0-9.eE+-]+)",
                                                    m.group(3) or "")}
        out.append((int(m.group(1)), int(m.group(2)), rates))
    return out


def check_stated_outcomes(rel: str, blocks: list[str], stdout: str) -> int:
    """Assert that each block printed what its comments state; returns how many were checked.

    The i-th stated outcome of a block is compared with the i-th ``RateFit`` summary that
    block printed.
    """
    parts = re.split(r"^--- .* block (\d+)$", stdout, flags=re.MULTILINE)
    printed = {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    n = 0
    for i, block in enumerate(blocks):
        stated = stated_outcomes(block)
        if not stated:
            continue
        text = printed.get(i, "")
        starts = [m.start() for m in _PRINTED.finditer(text)] + [len(text)]
        assert len(starts) - 1 >= len(stated), (
            f"{rel} block {i} states {len(stated)} RateFit outcome(s) but printed "
            f"{len(starts) - 1}:\n{text[-2000:]}")
        for k, (usable, trials, rates) in enumerate(stated):
            summary = text[starts[k]:starts[k + 1]]
            got = tuple(int(x) for x in _PRINTED.match(summary).groups())
            assert got == (usable, trials), (
                f"{rel} block {i} states 'RateFit: {usable}/{trials} usable' but printed "
                f"'RateFit: {got[0]}/{got[1]} usable':\n{summary[:600]}")
            values = dict(_PRINTED_RATE.findall(summary))
            for name, value in rates.items():
                assert name in values, f"{rel} block {i}: {name} not printed:\n{summary[:600]}"
                assert abs(float(values[name]) / value - 1) <= RATE_RTOL, (
                    f"{rel} block {i} states {name} ≈ {value} but printed {values[name]}")
            n += 1
    return n


def _run_blocks(rel: str, blocks: list[str], tmp_path: Path, timeout: float) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MPLBACKEND"] = "Agg"  # plt.show() must not block or need a display
    env.pop("JAX_ENABLE_X64", None)  # the blocks must switch float64 on themselves
    script = tmp_path / "blocks.py"
    script.write_text(_RUNNER.format(blocks=blocks, rel=rel), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{rel}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    check_stated_outcomes(rel, blocks, proc.stdout)
    return proc.stdout


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


def _readme_training_block() -> str:
    blocks = [b for b in code_blocks("README.md") if "train.train(" in b]
    assert len(blocks) == 1
    return blocks[0]


def test_readme_training_example_prints_what_it_states(tmp_path):
    # The first example a user runs trains and fits; what its comment states (the usable
    # count, the rates) is what it prints. getting-started repeats it word for word.
    block = _readme_training_block()
    assert block in code_blocks("docs/getting-started.md")
    (usable, trials, rates), = stated_outcomes(block)
    assert usable >= 0.75 * trials and set(rates) == {"eta_h", "eta_y"}
    out = _run_blocks("README.md", [block], tmp_path, timeout=600)
    assert f"{usable} usable fits: eta_h = " in out


def test_every_example_that_fits_states_its_outcome():
    # An example that prints a rate fit's summary says, in a comment, what it prints (checked
    # when it runs), and it leaves at least 75% of its fits usable.
    for rel in CODE_FILES:
        for i, block in enumerate(code_blocks(rel)):
            for line in block.splitlines():
                if re.search(r"print\(rates\.summary\(\)\)", line):
                    stated = stated_outcomes(line)
                    assert stated, f"{rel} block {i}: {line.strip()!r} states no outcome"
                    usable, trials, _ = stated[0]
                    assert usable >= 0.75 * trials, f"{rel} block {i}: {line.strip()!r}"


def test_stated_outcomes_are_checked():
    block = "print(rates.summary())   # RateFit: 4/4 usable; eta_h ≈ 0.016, eta_y ≈ 0.038\n"
    assert stated_outcomes(block) == [(4, 4, {"eta_h": 0.016, "eta_y": 0.038})]
    good = ("--- x block 0\nRateFit: 4/4 usable; 4 converged\n  eta_h = 0.0159 (sd 1) 1/epoch\n"
            "  eta_y = 0.0397 (sd 1) 1/epoch\n")
    assert check_stated_outcomes("x", [block], good) == 1
    with pytest.raises(AssertionError, match="printed 'RateFit: 0/4 usable'"):
        check_stated_outcomes("x", [block], good.replace("4/4", "0/4"))
    with pytest.raises(AssertionError, match="states eta_h ≈ 0.016 but printed 0.03"):
        check_stated_outcomes("x", [block], good.replace("0.0159", "0.03"))
    with pytest.raises(AssertionError, match="printed 0"):
        check_stated_outcomes("x", [block], "--- x block 0\nnothing\n")


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


# --- The summaries of the stored runs quote those runs ---------------------------------------

#: docs/reproduce.md's summary sections -> the report each one summarizes.
RUN_SUMMARIES = {"## What to expect from the quick preset": "docs/quick_run/report.md",
                 "## A paper-size run on a CPU": "docs/paper_cpu_run/report.md"}
_VERDICT_BULLET = re.compile(r"^- \*\*(E\d)\*\* \(([A-Z ]+?)(?::|\)| on |,)", re.MULTILINE)
_DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.])")


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start:] if nxt < 0 else text[start:nxt]


@pytest.mark.parametrize("heading", list(RUN_SUMMARIES))
def test_run_summaries_quote_their_report(heading):
    # Each bullet's verdict is the report's, and every decimal number it quotes appears in
    # the report (numbers are copied as the report prints them, never rounded by hand), so
    # the summary and the stored run cannot drift apart.
    section = _section((ROOT / "docs" / "reproduce.md").read_text(encoding="utf-8"), heading)
    report = (ROOT / RUN_SUMMARIES[heading]).read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (E\d) \| ([A-Z ]+?) \|", report, flags=re.MULTILINE))
    bullets = _VERDICT_BULLET.findall(section)
    assert len(bullets) == 8, f"{heading}: expected a bullet per experiment, got {bullets}"
    for exp, verdict in bullets:
        assert table.get(exp) == verdict, f"{heading}: {exp} is {table.get(exp)} in the report"
    missing = sorted({n for n in _DECIMAL.findall(section)} - set(_DECIMAL.findall(report)))
    assert not missing, f"{heading} quotes numbers its report does not print: {missing}"
    code = re.search(r"\(git ([0-9a-f]{7})", report)
    assert code and f"`{code.group(1)}`" in section, "the summary names the run's code"
