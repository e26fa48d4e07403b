"""A memo of finished allows: a repeat request is answered from what was rendered for the first one.

The key (:func:`memo_key`) is a BLAKE2b-256 digest of everything an allow depends on, each field length-prefixed
so no two different requests share an input: the adapter (its rendering differs), every ``Authorization`` copy, the
whole ``Cookie`` header, the method, the host and the path exactly as HAProxy sent them (a different spelling of the
same canonical host or path is a miss, never a wrong hit). Nothing else of a request is read for an allow:
``query``, ``accept``, ``sec-fetch-mode``, ``x-requested-with`` and ``content-type`` only shape refusals, which are
never memoised; the source address and request id are only logged.

What the engine stores (:meth:`idgate.decision.DecisionEngine.remember`): an allow with no ``Set-Cookie``, decided
from a bearer token or for a public route, with no signed assertion, until the earliest of the token's ``exp`` and
``now + max_ttl_seconds``. A session-cookie allow is not memoised: its revocation (sign-out, back-channel logout,
another replica through the shared store) is read from the store on every request.

Bounds: ``max_entries`` (least recently used go first), and :meth:`DecisionMemo.invalidate` empties it — the
runtime calls it when an issuer's keys are withdrawn, and whatever changes answers (a policy reload) must too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from idgate.audit import AuditTemplate
from idgate.facts import Decision

MAX_TTL_SECONDS = 30.0


def memo_key(mode: str, authorization: tuple[str, ...], cookie: str | None, method: str, host: str, path: str) -> bytes:
    """The 32-byte BLAKE2b digest of the fields an allow depends on (module docstring); ``None`` and ``""`` differ.
    Every field is length-prefixed (``len:value``; ``-`` for None), so no two field lists share an input."""
    if len(authorization) == 1:
        credentials = f"{len(authorization[0])}:{authorization[0]}"
    else:
        credentials = "|".join(f"{len(a)}:{a}" for a in authorization)
    jar = "-" if cookie is None else f"{len(cookie)}:{cookie}"
    material = (
        f"{len(mode)}:{mode}|{len(authorization)}|{credentials}|{jar}"
        f"|{len(method)}:{method}|{len(host)}:{host}|{len(path)}:{path}"
    )
    return hashlib.blake2b(material.encode("utf-8", "surrogatepass"), digest_size=32).digest()


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoEntry:
    """One finished allow: the decision, what the adapter rendered from it (SPOE: the encoded ACK actions), its
    audit line but for the per-request fields, its metrics with their labels resolved (called with the seconds each
    request took; None without metrics), and when it expires (epoch seconds)."""

    decision: Decision
    rendered: object
    audit: AuditTemplate
    expires_at: float
    observe: Callable[[float], None] | None = None


class DecisionMemo:
    """LRU of ``memo_key`` → :class:`MemoEntry`. ``hits``/``misses``/``invalidations`` are cumulative counters.

    Raises ``ValueError`` for ``max_entries`` < 0 or ``max_ttl_seconds`` outside (0, 30]."""

    def __init__(self, *, max_entries: int, max_ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        if not 0 < max_ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"max_ttl_seconds must be in (0, {MAX_TTL_SECONDS}]")
        self.max_entries = max_entries
        self.max_ttl_seconds = max_ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[bytes, MemoEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self.generation = 0
        """Bumped by :meth:`invalidate`: an answer decided under an older generation is not stored (it may have
        been decided with the keys or policy just dropped)."""

    @property
    def enabled(self) -> bool:
        """False when ``max_entries`` is 0: nothing is stored."""
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> MemoEntry | None:
        """The live entry under ``key`` (a hit), else None (a miss; an expired entry is dropped)."""
        entry = self._entries.get(key)
        if entry is not None:
            if self._clock() < entry.expires_at:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
            del self._entries[key]
        self.misses += 1
        return None

    def put(self, key: bytes, entry: MemoEntry, *, generation: int) -> bool:
        """Store ``entry``, decided while :attr:`generation` was ``generation``; nothing when the memo is off, the
        entry already expired or the memo was invalidated since. ``expires_at`` is cut to ``now + max_ttl_seconds``.
        True when stored."""
        now = self._clock()
        if not self.max_entries or entry.expires_at <= now or generation != self.generation:
            return False
        limit = now + self.max_ttl_seconds
        if entry.expires_at > limit:
            entry = dataclasses.replace(entry, expires_at=limit)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def invalidate(self) -> None:
        """Forget every entry: call it whenever answers may change (keys withdrawn, policy reloaded, a revocation)."""
        self._entries.clear()
        self.generation += 1
        self.invalidations += 1
