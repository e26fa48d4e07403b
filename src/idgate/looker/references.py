"""Looker cookieless session reference tokens, kept by idgate (Looker "Cookieless embedding": the reference token
never reaches the browser), per process and bounded."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class ReferenceStore:
    """Looker session reference tokens by (idgate session, embed user) until Looker's TTL; bounded, oldest
    dropped first. Per process: a replica that has none acquires a new Looker session (the user sees a reload)."""

    def __init__(self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def get(self, key: str) -> str | None:
        """The live reference for ``key``, or None."""
        entry = self._entries.get(key)
        if entry is None or self._clock() >= entry[1]:
            self._entries.pop(key, None)
            return None
        return entry[0]

    def put(self, key: str, reference: str, ttl_seconds: float) -> None:
        """Remember ``reference`` for ``ttl_seconds``."""
        self._entries[key] = (reference, self._clock() + ttl_seconds)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
