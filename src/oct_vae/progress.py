"""Progress of a long stage, with its rate and ETA, on the console and in the log.

Every long stage (decoding scans, training epochs, scoring, the bootstrap report) counts
its work through a ``Progress``. On a terminal it draws a tqdm bar; whether or not there is
one, it logs (through ``logging``: the console and Kedro's log file) a line with the count,
the rate and the time left, at a readable pace: none in the first ``first_s`` seconds (a
short stage logs only its last line), then at every ``step`` of the total (10 %) and at
least every ``every_s`` seconds; and always a last line with the total and the mean rate
(``benchmarks/rehearse.py`` parses it), so that a run in the background, under nohup or in
CI leaves the same record as one watched live:

    decode: 12,000/26,861 scans (45%), 310 scans/s, ETA 48 s
    decode: 26,861 scans in 86.6 s (310 scans/s)

Imports only the standard library (tqdm when a bar is drawn).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

LOG_EVERY_S = 30.0  # at most this long between two running lines
FIRST_LINE_S = 5.0  # no running line before this
STEP = 0.1  # a running line at every tenth of the total


class Progress:
    """Counts ``total`` units of work of a stage named ``what``.

    Args:
        what: The stage, as it starts each log line ("decode", "score test scans").
        total: Units expected (``None`` when unknown: no percentage and no ETA).
        unit: The unit's name, plural ("scans", "batches").
        logger: Where the lines go.
        every_s: Longest time between two running lines.
        bar: Draw a tqdm bar when stderr is a terminal.
        first_s: No running line before this many seconds.
        step: A running line each time this share of ``total`` more is done.
    """

    def __init__(self, what: str, total: int | None, unit: str = "scans",
                 logger: logging.Logger | None = None, every_s: float = LOG_EVERY_S,
                 bar: bool = True, clock: Any = time.monotonic, first_s: float = FIRST_LINE_S,
                 step: float = STEP) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.log = logger or logging.getLogger("oct_vae")
        self.every_s, self.first_s, self.step, self.clock = every_s, first_s, step, clock
        self.done, self.lines = 0, 0
        self.start = self.last = clock()
        self.next_mark = 0.0  # the share of the total that gives the next line
        self.bar = _bar(what, total, unit) if bar else None

    def update(self, n: int = 1) -> None:
        """``n`` more units done; a running line when one is due (:meth:`due`)."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        now = self.clock()
        if self.due(now):
            self.last, self.lines = now, self.lines + 1
            if self.total:
                share = self.done / self.total
                self.next_mark = (int(share / self.step + 1e-9) + 1) * self.step
            self.log.info("%s", self.line(now))

    def due(self, now: float) -> bool:
        """Whether a running line is due: ``first_s`` has passed, and this is the first
        line, ``every_s`` has passed since the last, or a next ``step`` of the total is done."""
        if now - self.start < self.first_s:
            return False
        if self.lines == 0 or now - self.last >= self.every_s:
            return True
        return bool(self.total) and self.done / self.total >= self.next_mark - 1e-9

    def line(self, now: float | None = None) -> str:
        """The running line: count, share, rate and ETA."""
        elapsed = max((self.clock() if now is None else now) - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({self.done / self.total:.0%})"
        else:
            text += f" {self.unit}"
        text += f", {_rate(rate)} {self.unit}/s"
        if self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def close(self) -> float:
        """Log the total and the mean rate; returns the seconds the stage took."""
        seconds = self.clock() - self.start
        if self.bar is not None:
            self.bar.close()
        rate = self.done / max(seconds, 1e-9)
        self.log.info("%s: %s %s in %.1f s (%s %s/s)", self.what, f"{self.done:,}", self.unit,
                      seconds, _rate(rate), self.unit)
        return seconds

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self.bar is not None:
            self.bar.close()


class NoProgress(Progress):
    """A ``Progress`` that logs and draws nothing (a stage whose caller counts it itself)."""

    def __init__(self) -> None:
        super().__init__("", None, bar=False)

    def update(self, n: int = 1) -> None:
        """Count only."""
        self.done += n

    def close(self) -> float:
        """Log nothing."""
        return self.clock() - self.start


def track(what: str | None, total: int | None, unit: str = "images") -> Progress:
    """A ``Progress`` of ``what`` without a bar, or a silent one when ``what`` is ``None``."""
    return Progress(what, total, unit, bar=False) if what else NoProgress()


def _bar(what: str, total: int | None, unit: str):
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit=unit.rstrip("s") or unit, leave=False,
                file=sys.stderr, mininterval=1.0)


def _rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
