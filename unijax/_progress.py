"""Progress of long calls: tqdm bars on a terminal, plain lines in a log.

On a terminal (stderr is a TTY) progress is tqdm's bars. Anywhere else (a file, a pipe, a CI
log) a bar's escape codes and carriage returns would garble the log, so progress is written
as plain lines instead (:class:`LineProgress`): one line per step, at most one every
:data:`LINE_INTERVAL_S` seconds (and the first and last step), each with the elapsed time and
an estimate of the time left, with no escape codes and no blank lines::

    unijax: E1: rows: 3/12 steps (25%), 41 s elapsed, ETA 2.0 min

:func:`bar` serves the library's own long calls (training over chunks of epochs, fits over
chunks of trials): shown only on a terminal and when there is more than one step; the
environment variable ``UNIJAX_PROGRESS=0`` turns it off everywhere and ``UNIJAX_PROGRESS=1`` on
(then as lines when stderr is not a terminal, or as tqdm's widget in a notebook). Under the
``unijax`` command (:func:`in_logs`) it reports as lines in a log too, briefly: nothing for a
call that ends within :data:`LINE_INTERVAL_S` seconds.
:func:`iter_progress` is the ``progress(iterable, desc=...)`` wrapper the ``unijax`` command
hands to the experiments: always shown, as bars or lines.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

#: Least seconds between two progress lines of one :class:`LineProgress` (first and last
#: step excepted).
LINE_INTERVAL_S = 10.0

# Set by the `unijax` command while it runs (see in_logs): the library's own bars then report
# as lines off a terminal too. A context variable, so nothing changes for library users.
_IN_LOGS: contextvars.ContextVar[bool] = contextvars.ContextVar("unijax_progress_in_logs",
                                                                default=False)


@contextlib.contextmanager
def in_logs() -> Iterator[None]:
    """Within the block, :func:`bar` reports as lines when stderr is not a terminal (what the
    ``unijax`` command wants in a log) instead of staying hidden."""
    token = _IN_LOGS.set(True)
    try:
        yield
    finally:
        _IN_LOGS.reset(token)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def _duration(s: float) -> str:
    """``"41 s"``, ``"2.5 min"``, ``"1.2 h"``."""
    if s < 100:
        return f"{s:.0f} s"
    if s < 6000:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class LineProgress:
    """A progress report of ``total`` steps as plain lines (the log's twin of a tqdm bar).

    Supports what unijax uses of tqdm: a context manager, ``update(n)``, ``close()``, ``n``,
    ``disable`` and iteration over a wrapped iterable.

    Args:
        iterable: items to yield (one step each), or None with ``update`` called by hand.
        total: number of steps; default ``len(iterable)`` when it has one (else no ETA).
        desc: what is progressing, e.g. ``"E1: rows"``.
        unit: the step's name in the lines (``"chunk"``).
        file: where the lines go (default ``sys.stderr``).
        interval: least seconds between lines (default :data:`LINE_INTERVAL_S`).
        brief: a step of a longer report (a library call inside an experiment's row): no
            line at the start, and none at all when it ends within ``interval`` seconds.
        clock: a ``time.monotonic``-like function (tests pass a fake clock).
    """

    disable = False

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "step", file: TextIO | None = None,
                 interval: float = LINE_INTERVAL_S, brief: bool = False,
                 clock=time.monotonic, **_: Any):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.file = file if file is not None else sys.stderr
        self.interval, self.clock = float(interval), clock
        self.n = 0
        self.start = clock()
        self.brief = brief
        self._last: float | None = None if not brief else self.start
        self._printed = False
        self._closed = False
        if not brief:
            self._line(force=True)

    def _text(self) -> str:
        elapsed = self.clock() - self.start
        head = f"unijax: {self.desc}: " if self.desc else "unijax: "
        if self.total:
            text = f"{head}{self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%)"
        else:
            text = f"{head}{self.n} {self.unit}s"
        text += f", {_duration(elapsed)} elapsed"
        if self.total and 0 < self.n < self.total:
            text += f", ETA {_duration(elapsed / self.n * (self.total - self.n))}"
        elif self.total and self.n >= self.total:
            text += ", done"
        return text

    def _line(self, force: bool = False) -> None:
        now = self.clock()
        if force and self.brief and not self._printed and now - self.start < self.interval:
            return  # a brief report that ended quickly: nothing to say in a log
        if force or self._last is None or now - self._last >= self.interval:
            print(self._text(), file=self.file, flush=True)
            self._last = now
            self._printed = True

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps done; print a line if the last is old enough (or done)."""
        self.n += n
        self._line(force=self.total is not None and self.n >= self.total)

    def close(self) -> None:
        """End the report (prints the last count if it was not printed)."""
        if not self._closed:
            self._closed = True
            if self.total is None or self.n < self.total:
                self._line(force=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable if self.iterable is not None else ():
                yield item
                self.update()
        finally:
            self.close()


def bar(total: int, desc: str, unit: str):
    """Progress of ``total`` steps of a library call (a context manager; ``.disable`` is True
    when hidden): a tqdm bar on a terminal, hidden elsewhere unless ``UNIJAX_PROGRESS=1``
    (then lines, see :class:`LineProgress`)."""
    from tqdm.auto import tqdm

    env = os.environ.get("UNIJAX_PROGRESS", "").strip()
    on_terminal = _is_terminal(sys.stderr)
    if env == "0" or total <= 1 or (env != "1" and not on_terminal and not _IN_LOGS.get()):
        return tqdm(total=total, disable=True)
    if on_terminal or (_in_notebook() and not _IN_LOGS.get()):
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                    dynamic_ncols=True)
    return LineProgress(total=total, desc=desc, unit=unit, brief=_IN_LOGS.get())


def iter_progress(iterable: Iterable, **kw: Any) -> Iterable:
    """``iterable`` with its progress shown (the ``progress`` the ``unijax`` command hands to
    the experiments, tqdm's signature): tqdm bars on a terminal, lines elsewhere."""
    if _is_terminal(sys.stderr):
        from tqdm.auto import tqdm

        kw.setdefault("leave", False)
        kw.setdefault("dynamic_ncols", True)
        return tqdm(iterable, file=sys.stderr, **kw)
    return LineProgress(iterable, total=kw.get("total"), desc=kw.get("desc", ""),
                        unit=kw.get("unit", "step"))
