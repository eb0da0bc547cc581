"""MkDocs hook: render the tutorial, kept as a jupytext percent script, into the site.

``examples/tutorial.py`` is the one source of the tutorial (it diffs as code and a test runs
it); at build time it is converted to Markdown (prose cells as text, code cells as ``python``
blocks) and served as ``tutorial.md``.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
from mkdocs.structure.files import File

TUTORIAL = Path(__file__).resolve().parent.parent / "examples" / "tutorial.py"


def tutorial_markdown(path: Path = TUTORIAL) -> str:
    """The tutorial script as Markdown, without jupytext's metadata header."""
    nb = jupytext.read(path)
    nb.metadata = {"jupytext": {"notebook_metadata_filter": "-all",
                                "cell_metadata_filter": "-all"}}
    note = (
        "\n\n!!! note\n    This page is `examples/tutorial.py`, a jupytext percent script: run it"
        " with `python examples/tutorial.py`, or open it as a notebook with"
        " `jupytext --to notebook examples/tutorial.py`.\n"
    )
    md = jupytext.writes(nb, fmt="md")
    title, _, rest = md.partition("\n")
    return title + note + rest


def on_files(files, config):
    files.append(File.generated(config, "tutorial.md", content=tutorial_markdown()))
    return files
