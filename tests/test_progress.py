"""``oct_vae.progress``: log lines with count, rate and ETA, on a clock the test drives."""

from __future__ import annotations

import logging

import pytest

from oct_vae.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_logs_rate_and_eta_every_interval_and_a_summary_at_the_end(caplog):
    clock = Clock()
    log = logging.getLogger("test.progress")
    progress = Progress("decode", 1000, "scans", log, every_s=10, bar=False, clock=clock,
                        first_s=10)
    with caplog.at_level(logging.INFO, logger="test.progress"), progress as p:
        clock.now += 5
        p.update(100)  # 5 s in: no line yet (first_s)
        clock.now += 5
        p.update(100)  # 10 s in: 200 done, 20/s, 800 left -> 40 s
        clock.now += 10
        p.update(300)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "decode: 200/1,000 scans (20%), 20 scans/s, ETA 40 s",
        "decode: 500/1,000 scans (50%), 25 scans/s, ETA 20 s",
        "decode: 500 scans in 20.0 s (25 scans/s)",
    ]


def test_unknown_total_gives_no_eta_and_slow_rates_keep_their_decimals():
    clock = Clock()
    p = Progress("score", None, "scans", bar=False, clock=clock)
    clock.now += 4
    p.update(1)
    assert p.line() == "score: 1 scans, 0.25 scans/s"
    clock.now += 7196  # 2 h in, half of 100 done: 2 h left
    p.total = 100
    p.update(49)
    assert p.line() == "score: 50/100 scans (50%), 0.01 scans/s, ETA 2.0 h"


def test_an_exception_inside_logs_no_summary(caplog):
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError), Progress(
            "train", 10, "batches", bar=False):
        raise RuntimeError("boom")
    assert not [r for r in caplog.records if "train:" in r.getMessage()]
