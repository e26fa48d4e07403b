"""The last-minute deny window (idgate.recent) and its gauge in /metrics."""

from __future__ import annotations

import pytest

from idgate.facts import Decision
from idgate.metrics import Metrics
from idgate.recent import RecentDenials


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_within_the_window_and_forgets_what_fell_out() -> None:
    clock = Clock()
    recent = RecentDenials(window_seconds=60, clock=clock)
    recent.note("expired_token")
    clock.now += 30
    recent.note("expired_token")
    recent.note("missing_credentials")
    assert recent.totals() == {"expired_token": 2, "missing_credentials": 1}
    clock.now += 30  # the first note is now 60 s old: out of the window
    assert recent.totals() == {"expired_token": 1, "missing_credentials": 1}
    clock.now += 31
    assert recent.totals() == {}


def test_a_reused_slot_starts_empty_and_the_busiest_reason_comes_first() -> None:
    clock = Clock()
    recent = RecentDenials(window_seconds=3, clock=clock)
    for _ in range(5):
        recent.note("a")
    clock.now += 3  # same slot (1003 % 3 == 1000 % 3), a new second
    recent.note("b")
    recent.note("b")
    recent.note("c")
    assert list(recent.totals().items()) == [("b", 2), ("c", 1)]


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecentDenials(window_seconds=0)


def test_the_gauge_shows_denies_only_by_reason() -> None:
    metrics = Metrics()
    metrics.observe(Decision(status=200, reasons=()), mode="spoe", seconds=0.001)
    metrics.observe(Decision(status=401, reasons=("missing_credentials",)), mode="spoe", seconds=0.001)
    metrics.observe(Decision(status=403, reasons=("missing_role_or_group",)), mode="spoe", seconds=0.0)
    metrics.observe(Decision(status=403, reasons=("missing_role_or_group",)), mode="spoe", seconds=0.0)
    text = metrics.exposition().decode()
    assert 'idgate_denials_last_minute{reason="missing_role_or_group"} 2.0' in text
    assert 'idgate_denials_last_minute{reason="missing_credentials"} 1.0' in text
    assert text.count("idgate_denials_last_minute{") == 2
