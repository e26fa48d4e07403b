"""A bounded cache of verified bearer tokens: the hot path's biggest win (no JWS parse, no signature check).

Rules:
- Keyed on SHA-256 of the token (the token itself is not kept as a key), valued with the verified principal.
- An entry is served only while ``clock() < exp`` of the token — never past ``exp``, whatever the leeway.
- Only successful verifications are cached; a refused token is checked in full every time.
- Bounded: least recently used entries go first beyond ``max_entries``.
- Each entry remembers the kid of the key that verified it: :meth:`TokenCache.purge` drops every token of an
  issuer's withdrawn keys (the JWKS cache calls it when a key leaves the set or changes), so such a token is
  refused at once. :meth:`TokenCache.clear` empties it.
- ``hits`` / ``misses`` feed the ``idgate_token_cache_*`` metrics (hit ratio).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from idgate.principal import Principal


class TokenCache:
    """LRU of (token hash → principal, verifying kid), each entry valid until the token's ``exp`` (epoch seconds)."""

    def __init__(self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[Principal, str | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str) -> Principal | None:
        """The cached principal of ``token`` while it is unexpired, else None (counted as a miss)."""
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is not None:
            principal = entry[0]
            if self._clock() < principal.expires_at:
                self._entries.move_to_end(key)
                self.hits += 1
                return principal
            del self._entries[key]
        self.misses += 1
        return None

    def put(self, token: str, principal: Principal, *, kid: str | None = None) -> None:
        """Remember a token verified by the key ``kid`` of ``principal.issuer`` until its ``exp``; tokens already
        expired are not stored."""
        if self._clock() >= principal.expires_at:
            return
        key = self._key(token)
        self._entries[key] = (principal, kid)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def purge(self, *, issuer: str, kids: Collection[str | None]) -> int:
        """Forget every token of ``issuer`` verified by one of ``kids`` (withdrawn keys); returns how many."""
        doomed = [k for k, (p, kid) in self._entries.items() if kid in kids and p.issuer == issuer]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
