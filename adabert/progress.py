"""Progress that stays readable in a log file.

``progress(iterable, desc=..., total=..., unit=...)`` is a ``tqdm`` bar when stderr is a terminal.
When it is not (a log file, a pipe, a CI job), a redrawn bar would write one carriage-return frame
per update into the file; instead a plain line is written at every tenth of the work or every 30
seconds, whichever comes first, and one at the end::

    predict: 40% 400/1000 ex, 52.1 ex/s, 7.7s elapsed, ~11.5s left

Both kinds are iterables (when given one), support ``update(n)``, ``set_postfix(**values)``,
``close()`` and ``with``, so a caller never needs to know which it got. ``ADABERT_PROGRESS=bar`` or
``=log`` forces one kind, ``=off`` disables both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

STEPS = 10  # a line at every tenth of the total
EVERY_SECONDS = 30.0


def quiet_library_bars() -> None:
    """When stderr is not a terminal, keep other libraries' bars from flooding the log file.

    datasets' and transformers' bars (Map, Saving, Loading weights) are switched off, and any plain
    ``tqdm`` bar redraws at most every 30 s (tqdm reads ``TQDM_MININTERVAL``). Settings already in the
    environment win. Called by the ``adabert`` command before anything heavy is imported.
    """
    if sys.stderr.isatty() or os.environ.get("ADABERT_PROGRESS", "").lower() == "bar":
        return
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_MININTERVAL", str(EVERY_SECONDS))


def progress(
    iterable: Iterable[Any] | None = None,
    desc: str = "",
    total: int | None = None,
    unit: str = "it",
    disable: bool = False,
    leave: bool = False,
    file: IO[str] | None = None,
) -> Any:
    """A progress bar over ``iterable`` (or a manual one: ``update(n)``) that suits where it is shown.

    ``total`` defaults to ``len(iterable)`` when it has one. ``leave`` keeps a terminal bar on screen
    when done (log lines always stay).
    """
    stream = file if file is not None else sys.stderr
    mode = os.environ.get("ADABERT_PROGRESS", "").lower()
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if disable or mode == "off":
        return LogProgress(iterable, desc, total, unit, stream, enabled=False)
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if mode == "bar" or (mode != "log" and tty):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=stream)
    return LogProgress(iterable, desc, total, unit, stream)


class LogProgress:
    """Plain progress lines: every tenth of ``total`` or ``EVERY_SECONDS``, and at the end."""

    def __init__(
        self,
        iterable: Iterable[Any] | None,
        desc: str,
        total: int | None,
        unit: str,
        stream: IO[str],
        enabled: bool = True,
    ) -> None:
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.stream, self.enabled = stream, enabled
        self.n = 0
        self.postfix = ""
        self.start = self._last_time = time.monotonic()
        self._last_step = 0
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress has no iterable: call update(n) instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("progress without a total has no length")
        return self.total

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        """Extra figures shown after the rate (e.g. the loss), as tqdm's ``set_postfix``."""
        items = {**(values or {}), **kw}
        self.postfix = ", ".join(f"{k}={_short(v)}" for k, v in items.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        now = time.monotonic()
        step = int(self.n * STEPS // self.total) if self.total else 0  # tenths done
        if step > self._last_step or now - self._last_time >= EVERY_SECONDS:
            if not (self.total and self.n >= self.total):  # the end line is written by close()
                self._write(now)
            self._last_step, self._last_time = step, now

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled and self.n:
            self._write(time.monotonic(), done=True)

    def line(self, now: float | None = None, done: bool = False) -> str:
        """The text of one progress line."""
        elapsed = (now if now is not None else time.monotonic()) - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}:" if self.desc else ""]
        if self.total:
            parts.append(f"{100 * self.n / self.total:.0f}% {self.n}/{self.total} {self.unit}")
        else:
            parts.append(f"{self.n} {self.unit}")
        parts.append(
            f"{rate:.1f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.2f} s/{self.unit}"
        )
        parts.append(f"{elapsed:.1f}s {'in all' if done else 'elapsed'}")
        if not done and self.total and rate > 0 and self.n < self.total:
            parts.append(f"~{(self.total - self.n) / rate:.1f}s left")
        if self.postfix:
            parts.append(self.postfix)
        return " ".join(parts[:2]) + ", " + ", ".join(parts[2:])

    def _write(self, now: float, done: bool = False) -> None:
        print(self.line(now, done).strip(), file=self.stream, flush=True)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
