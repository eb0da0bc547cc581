"""unijax._version: the code version recorded with every stored result."""

import re

from unijax import __version__
from unijax._version import _source_sha256, code_version


def test_code_version_names_the_package_and_hashes_its_sources():
    cv = code_version()
    assert cv.unijax == __version__
    assert re.fullmatch(r"[0-9a-f]{64}", cv.source_sha256)
    assert cv.git_commit is None or re.fullmatch(r"[0-9a-f]{40}", cv.git_commit)
    assert cv.label().startswith(__version__) and cv.source_sha256[:12] in cv.label()
    assert code_version() is cv  # computed once per process


def test_source_hash_changes_with_any_source_file(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    h = _source_sha256(pkg)
    assert h == _source_sha256(pkg)
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    assert _source_sha256(pkg) != h
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not source")
    assert _source_sha256(pkg) == h
    (pkg / "sub" / "b.py").rename(pkg / "b2.py")  # same bytes, other path
    assert _source_sha256(pkg) != h
