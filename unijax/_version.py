"""The version of the code that computed a result: package version, git commit, source hash.

Every stored chunk and result records :func:`code_version` (see :mod:`unijax.results._store`), and a
report can stamp itself with :meth:`CodeVersion.label`. The source hash is what identifies the
code: the git commit is only present when unijax runs from a git checkout, and says nothing
about uncommitted edits (``git_dirty`` does).
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path
from typing import NamedTuple

__all__ = ["CodeVersion", "code_version"]

_PACKAGE = Path(__file__).resolve().parent


class CodeVersion(NamedTuple):
    """What identifies the running unijax code.

    Attributes:
        unijax: the package version (``unijax.__version__``).
        git_commit: the 40-hex commit of the checkout unijax runs from, or None (an installed
            wheel, no git, or the package is not at the top of a git work tree).
        git_dirty: True when the checkout has uncommitted changes under ``unijax/``; None
            without a commit.
        source_sha256: sha256 (hex) over the relative path and bytes of every ``.py`` file of
            the package, in sorted order: equal iff the package's code is byte-identical.
    """

    unijax: str
    git_commit: str | None
    git_dirty: bool | None
    source_sha256: str

    def label(self) -> str:
        """One line, e.g. ``0.1.0 (git 19ca008+dirty, source 3f2a9c1d04be)``."""
        parts = []
        if self.git_commit:
            parts.append(f"git {self.git_commit[:7]}" + ("+dirty" if self.git_dirty else ""))
        parts.append(f"source {self.source_sha256[:12]}")
        return f"{self.unijax} ({', '.join(parts)})"

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict (what ``results.json`` stores)."""
        return self._asdict()


def _source_sha256(package: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(package).as_posix()
        data = path.read_bytes()
        # Length-prefixed so that no two different file sets hash alike.
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_state(package: Path) -> tuple[str | None, bool | None]:
    root = package.parent
    if not (root / ".git").exists():  # a directory, or a file in a linked worktree
        return None, None
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return None, None
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(root, "status", "--porcelain", "--", package.name)
    return commit, (bool(status) if status is not None else None)


@functools.lru_cache(maxsize=1)
def code_version() -> CodeVersion:
    """The :class:`CodeVersion` of the running unijax (computed once per process)."""
    from unijax import __version__

    commit, dirty = _git_state(_PACKAGE)
    return CodeVersion(__version__, commit, dirty, _source_sha256(_PACKAGE))
