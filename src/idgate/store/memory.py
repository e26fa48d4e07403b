"""The in-process store: one replica only (the default, ``store: {kind: memory}``).

Bounded: when full, the revocations nearest their deadline are dropped first. The lock and the shared values live
in this process, so "one refresh per session" holds within it (the session manager's single-flight does the rest).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from idgate.store.base import StoreHealth


@dataclass(kw_only=True)
class MemoryRevocationStore:
    """In-process :class:`~idgate.store.base.RevocationStore`; ``max_entries`` bounds revocations and values."""

    max_entries: int = 100_000
    clock: Callable[[], float] = time.time
    _entries: dict[str, tuple[float, float]] = field(default_factory=dict)
    _values: dict[str, tuple[str, float]] = field(default_factory=dict)

    def _prune(self) -> None:
        now = self.clock()
        if len(self._entries) < self.max_entries:
            return
        for key in [k for k, (_, until) in self._entries.items() if until <= now]:
            del self._entries[key]
        while len(self._entries) >= self.max_entries:
            del self._entries[min(self._entries, key=lambda k: self._entries[k][1])]

    async def revoke(self, key: str, *, at: float, until: float) -> None:
        previous = self._entries.get(key)
        if previous is None:
            self._prune()  # only a new key needs room: re-revoking must never evict another live revocation
        self._entries[key] = (max(at, previous[0]) if previous else at, max(until, previous[1] if previous else 0))

    async def revoked_at(self, key: str) -> float | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    async def remember_once(self, key: str, *, until: float) -> bool:
        if await self.revoked_at(key) is not None:
            return False
        await self.revoke(key, at=self.clock(), until=until)
        return True

    async def lock(self, key: str, *, ttl: float) -> str | None:
        held = await self.get(key)
        if held is not None:
            return None
        token = secrets.token_urlsafe(16)
        await self.put(key, token, ttl=ttl)
        return token

    async def unlock(self, key: str, token: str) -> None:
        if await self.get(key) == token:
            self._values.pop(key, None)

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        now = self.clock()
        if key not in self._values and len(self._values) >= self.max_entries:
            for old in [k for k, (_, until) in self._values.items() if until <= now] or [next(iter(self._values))]:
                del self._values[old]
        self._values[key] = (value, now + ttl)

    async def get(self, key: str) -> str | None:
        entry = self._values.get(key)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    def health(self) -> StoreHealth:
        return StoreHealth(kind="memory")

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
