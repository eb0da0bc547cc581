"""Progress bars of long API calls: shown on a terminal (or when forced), silent otherwise."""

import numpy as np

from unijax import _progress, configs, train


def test_bar_is_off_off_a_terminal_and_for_one_step(monkeypatch):
    monkeypatch.delenv("UNIJAX_PROGRESS", raising=False)
    assert _progress.bar(5, "x", "chunk").disable  # pytest's stderr is not a terminal
    monkeypatch.setenv("UNIJAX_PROGRESS", "1")
    assert not _progress.bar(5, "x", "chunk").disable
    assert _progress.bar(1, "x", "chunk").disable
    monkeypatch.setenv("UNIJAX_PROGRESS", "0")
    assert _progress.bar(5, "x", "chunk").disable


def test_training_over_chunks_reports_each_chunk(monkeypatch, capsys):
    monkeypatch.setenv("UNIJAX_PROGRESS", "1")
    bars = []
    real = _progress.bar
    monkeypatch.setattr(_progress, "bar", lambda *a, **k: bars.append(real(*a, **k)) or bars[-1])
    cfg = configs.get("default", width=8, depth=3, epochs=30, lr=0.05)
    res = train.train(cfg, seeds=1, chunk_epochs=10)
    err = capsys.readouterr().err
    assert "train default:" in err and "0/3" in err
    assert [b.n for b in bars] == [3]  # one step per chunk
    monkeypatch.setenv("UNIJAX_PROGRESS", "0")
    again = train.train(cfg, seeds=1, chunk_epochs=10)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(res.loss, again.loss)  # the bar changes nothing computed


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_in_a_log_are_throttled_with_elapsed_time_and_eta():
    """Off a terminal: the start and the last step always, others at most every ``interval``
    seconds; each line has the count, the elapsed time and (until done) an ETA; no escape
    codes, no carriage returns, no blank lines."""
    import io

    out, clock = io.StringIO(), _Clock()
    p = _progress.LineProgress(range(10), desc="E1: rows", unit="row", file=out,
                               interval=10.0, clock=clock)
    for _ in p:
        clock.t += 3.0  # 3 s per row: a line every 4th row at most
    lines = out.getvalue().splitlines()
    assert lines[0] == "unijax: E1: rows: 0/10 rows (0%), 0 s elapsed"
    assert lines[1] == "unijax: E1: rows: 4/10 rows (40%), 12 s elapsed, ETA 18 s"
    assert lines[2] == "unijax: E1: rows: 8/10 rows (80%), 24 s elapsed, ETA 6 s"
    assert lines[3] == "unijax: E1: rows: 10/10 rows (100%), 30 s elapsed, done"
    assert len(lines) == 4  # 10 s apart at least, and the last
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and all(ln.strip() for ln in lines)


def test_an_interrupted_report_ends_with_its_count_and_a_bar_stays_a_bar_on_a_terminal(
        monkeypatch):
    import io

    out, clock = io.StringIO(), _Clock()
    with _progress.LineProgress(total=4, desc="fit", file=out, clock=clock) as p:
        clock.t = 200.0
        p.update(1)
    assert out.getvalue().splitlines()[-1] == "unijax: fit: 1/4 steps (25%), 3.3 min " \
        "elapsed, ETA 10.0 min"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    from tqdm.auto import tqdm

    assert isinstance(_progress.iter_progress(range(3), desc="x"), tqdm)
    monkeypatch.delenv("UNIJAX_PROGRESS", raising=False)
    bar = _progress.bar(5, "x", "chunk")
    assert isinstance(bar, tqdm) and not bar.disable
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(_progress.iter_progress(range(3), desc="x"), _progress.LineProgress)


def test_library_bars_under_the_command_report_briefly_in_a_log(monkeypatch, capsys):
    """Under `unijax` (in_logs) a library call's progress shows in a log as lines, but only
    when it lasts: a call done within the interval prints nothing."""
    import io

    monkeypatch.delenv("UNIJAX_PROGRESS", raising=False)
    assert _progress.bar(5, "x", "chunk").disable  # a library user's log stays quiet
    with _progress.in_logs():
        bar = _progress.bar(5, "train x", "chunk")
        assert isinstance(bar, _progress.LineProgress)
    assert _progress.bar(5, "x", "chunk").disable  # only within the block
    for seconds, expect in ((1.0, []), (12.0, ["unijax: train x: 2/2 chunks (100%), 24 s "
                                                "elapsed, done"])):
        out, clock = io.StringIO(), _Clock()
        with _progress.LineProgress(total=2, desc="train x", unit="chunk", file=out,
                                    clock=clock, brief=True) as p:
            for _ in range(2):
                clock.t += seconds
                p.update()
        lines = out.getvalue().splitlines()
        assert lines[-1:] == expect[-1:] and (len(lines) > 0) == bool(expect), lines
