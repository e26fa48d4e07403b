"""The store interface every shared-state backend implements, and its health report.

Keys are opaque ASCII strings chosen by the callers (``sid:…``, ``sub:…``, ``idp_sid:…``, ``jti:…``,
``refresh:…``); times are seconds since the epoch (``at``, ``until``) or durations in seconds (``ttl``).
No method raises for an unreachable backend: a store degrades as its module documents (:mod:`idgate.store.redis`:
a local mirror of what the replica has seen, a bounded retry queue) and says so through :meth:`health`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreHealth:
    """What ``/readyz`` and ``/metrics`` tell about the store.

    ``up``: the backend answered the last call (always true in memory); ``pending``: revocations written locally
    and waiting to be written to the backend; ``errors``: backend calls that failed or timed out since start;
    ``dropped``: pending revocations dropped because the retry queue was full (still refused on this replica);
    ``synced``: the store was read at least once since start (false: this replica knows no shared revocation);
    ``detail``: a short, secret-free description of the last error (empty when up).
    """

    kind: str
    up: bool = True
    pending: int = 0
    errors: int = 0
    dropped: int = 0
    synced: bool = True
    detail: str = ""


class RevocationStore(Protocol):
    """Revocations until a deadline, a replay cache, a lock and short-lived shared values."""

    async def revoke(self, key: str, *, at: float, until: float) -> None:
        """Record that ``key`` was revoked at ``at``; forget it after ``until``. Re-revoking keeps the later
        ``at`` and the later ``until``."""

    async def revoked_at(self, key: str) -> float | None:
        """When ``key`` was revoked, or None."""

    async def remember_once(self, key: str, *, until: float) -> bool:
        """True the first time ``key`` is seen (until ``until``), False on every replay."""

    async def lock(self, key: str, *, ttl: float) -> str | None:
        """Try to take the lock ``key`` for ``ttl`` seconds: a token to :meth:`unlock` it with, or None while
        another holder has it (never waits)."""

    async def unlock(self, key: str, token: str) -> None:
        """Release ``key`` if ``token`` still holds it (a lock that expired and was taken again is left alone)."""

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl`` seconds (best effort: lost on a backend failure)."""

    async def get(self, key: str) -> str | None:
        """The value kept under ``key``, or None."""

    def health(self) -> StoreHealth:
        """The store's current health (no I/O)."""

    async def start(self) -> None:
        """Start background work (reconnects, retries); called once by the lifespan."""

    async def close(self) -> None:
        """Stop background work and release connections."""
