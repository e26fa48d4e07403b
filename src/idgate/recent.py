"""Denials of the last minute by reason: a ring of one-second buckets, for ``idgate status`` and dashboards.

Counters (``idgate_decisions_total``) answer "how many since start"; an operator at the console asks "what is being
refused right now". :class:`RecentDenials` keeps ``window_seconds`` one-second buckets of ``reason → count`` and
answers the sum over the last window. Memory is bounded by ``window_seconds`` times the reason vocabulary (reason codes
are a fixed set, :func:`idgate.metrics.reason_label`). Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from time import monotonic

WINDOW_SECONDS = 60


class RecentDenials:
    """``note(reason)`` per deny; ``totals()`` → ``{reason: count}`` over the last ``window_seconds`` seconds
    (whole seconds: the current, partly elapsed second counts; the oldest bucket falls out as time moves on).
    ``clock`` returns seconds (monotonic)."""

    def __init__(self, *, window_seconds: int = WINDOW_SECONDS, clock: Callable[[], float] = monotonic) -> None:
        if window_seconds < 1:
            raise ValueError("window_seconds must be at least 1")
        self._window = window_seconds
        self._clock = clock
        self._buckets: list[Counter[str]] = [Counter() for _ in range(window_seconds)]
        self._stamps: list[int] = [-1] * window_seconds

    @property
    def window_seconds(self) -> int:
        return self._window

    def note(self, reason: str) -> None:
        """Count one deny with this (already bounded) reason label."""
        second = int(self._clock())
        slot = second % self._window
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._buckets[slot] = Counter()
        self._buckets[slot][reason] += 1

    def totals(self) -> dict[str, int]:
        """Denies per reason over the window, most frequent first."""
        now = int(self._clock())
        total: Counter[str] = Counter()
        for stamp, bucket in zip(self._stamps, self._buckets, strict=True):
            if now - self._window < stamp <= now:
                total.update(bucket)
        return dict(total.most_common())
