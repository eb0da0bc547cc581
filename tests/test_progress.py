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
