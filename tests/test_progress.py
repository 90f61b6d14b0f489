"""Progress: a tqdm bar on a terminal, a few plain lines in a log file, nothing when switched off."""

from __future__ import annotations

import io

import pytest

from adabert import progress as progress_mod
from adabert.progress import LogProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_a_line_per_tenth_and_one_at_the_end(monkeypatch):
    monkeypatch.delenv("ADABERT_PROGRESS", raising=False)
    log = io.StringIO()
    assert list(progress(range(250), desc="predict", unit="ex", file=log)) == list(range(250))
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[0].startswith("predict: 10% 25/250 ex, ") and "left" in lines[0]
    assert lines[-1].startswith("predict: 100% 250/250 ex, ") and "in all" in lines[-1]


def test_a_log_file_gets_a_line_every_interval_without_a_total(monkeypatch):
    monkeypatch.setattr(progress_mod, "EVERY_SECONDS", 0.0)
    log = io.StringIO()
    with progress(desc="steps", file=log) as bar:
        for _ in range(3):
            bar.update(2)
            bar.set_postfix(loss=0.5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and lines[2].startswith("steps: 6 it, ") and lines[2].endswith("loss=0.5")


def test_a_terminal_gets_a_bar_and_the_switch_overrides(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.delenv("ADABERT_PROGRESS", raising=False)
    bar = progress(range(3), file=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv("ADABERT_PROGRESS", "log")
    assert isinstance(progress(range(3), file=Terminal()), LogProgress)
    monkeypatch.setenv("ADABERT_PROGRESS", "off")
    log = io.StringIO()
    assert sum(progress(range(50), file=log)) == sum(range(50)) and log.getvalue() == ""


def test_a_manual_bar_needs_updates_not_iteration():
    with pytest.raises(TypeError, match="update"):
        list(progress(total=3, file=io.StringIO()))


def test_other_libraries_bars_are_quiet_in_a_log_file(monkeypatch):
    for name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_MININTERVAL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ADABERT_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    progress_mod.quiet_library_bars()
    assert progress_mod.os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    assert float(progress_mod.os.environ["TQDM_MININTERVAL"]) == progress_mod.EVERY_SECONDS
