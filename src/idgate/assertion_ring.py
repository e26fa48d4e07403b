"""The shared assertion key ring: which key signs, which are published, and how a rotation moves them (no I/O).

Every replica behind one HAProxy must sign with the same key and publish the same JWKS (``/.idgate/jwks.json``),
or an upstream that fetched the key set from one replica refuses tokens minted by another. With a shared store
(``store.kind: redis``) the ring lives in Redis (:mod:`idgate.assertion_store`: private keys sealed with the
session keys);
this module is the rule every replica applies to it, from the ring's timestamps and its own wall clock alone, so
all replicas move at the same moment without writing anything:

- ``current``: signs. ``next``: published from ``created``, signs from ``activate_at`` (``created`` +
  ``assertion.rotation.publish_seconds``: longer than the upstream's JWKS cache, Grafana ``[auth.jwt] cache_ttl``);
- at ``activate_at`` (:func:`advance`) ``next`` becomes ``current`` and the old ``current`` is retired: still
  published until ``expires_at`` = ``activate_at`` + the assertion lifetime (every token it signed has expired), then
  dropped;
- :func:`rotate` (``idgate keys rotate-assertion``) pre-publishes a fresh ``next``; a second rotation while one is
  pending is refused (:class:`RotationPending`), so a key always gets its full publication time.

Times are epoch seconds. ``pem`` is the PKCS#8 PEM of the private key (only in memory: sealed at rest).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from idgate.errors import IdgateError

__all__ = ["RingKey", "RingState", "RotationPending", "advance", "initial", "published", "rotate"]


class RotationPending(IdgateError):
    """A rotation is already under way: its next key does not sign yet (``activate_at``, epoch seconds)."""

    def __init__(self, kid: str, activate_at: float) -> None:
        self.kid = kid
        self.activate_at = activate_at
        super().__init__(f"key {kid} is published and signs from {activate_at:.0f}; rotate again after that")


@dataclass(frozen=True, kw_only=True, slots=True)
class RingKey:
    """One key of the ring: ``kid`` (:func:`idgate.assertion.key_id`), ``pem`` (private key), ``created``,
    ``activate_at`` (when it signs; None for the first key, which signs from ``created``), ``expires_at`` (retired
    keys: when it leaves the JWKS)."""

    kid: str
    pem: bytes
    created: float
    activate_at: float | None = None
    expires_at: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RingState:
    """The ring: ``current`` signs, ``next`` is pre-published (or None), ``retired`` are published until their
    ``expires_at``. ``lifetime_seconds`` is the assertion lifetime the retirement waits for."""

    current: RingKey
    next: RingKey | None = None
    retired: tuple[RingKey, ...] = ()
    lifetime_seconds: int = 300


def initial(key: RingKey, *, lifetime_seconds: int) -> RingState:
    """A ring whose only key, ``key``, signs."""
    return RingState(current=key, lifetime_seconds=lifetime_seconds)


def advance(state: RingState, now: float) -> RingState:
    """The ring as it stands at ``now``: a due ``next`` promoted (the old ``current`` retired until
    ``activate_at + lifetime``), expired retired keys dropped. Pure: every replica computes the same result."""
    current, upcoming, retired = state.current, state.next, list(state.retired)
    if upcoming is not None and upcoming.activate_at is not None and now >= upcoming.activate_at:
        retired.append(replace(current, expires_at=upcoming.activate_at + state.lifetime_seconds))
        current, upcoming = upcoming, None
    kept = tuple(k for k in retired if k.expires_at is not None and now < k.expires_at and k.kid != current.kid)
    return RingState(current=current, next=upcoming, retired=kept, lifetime_seconds=state.lifetime_seconds)


def rotate(state: RingState, fresh: RingKey, *, now: float, publish_seconds: float) -> RingState:
    """Pre-publish ``fresh`` as ``next``, signing from ``now + publish_seconds``.

    Raises:
        RotationPending: the ring (advanced to ``now``) already has a ``next`` key.
    """
    state = advance(state, now)
    if state.next is not None:
        raise RotationPending(state.next.kid, state.next.activate_at or now)
    upcoming = replace(fresh, created=now, activate_at=now + publish_seconds, expires_at=None)
    return replace(state, next=upcoming)


def published(state: RingState, now: float) -> tuple[RingKey, ...]:
    """The keys of the JWKS at ``now``: current, next, then the retired ones not yet expired (each kid once)."""
    state = advance(state, now)
    keys = [state.current, *([state.next] if state.next else []), *reversed(state.retired)]
    unique: dict[str, RingKey] = {}
    for key in keys:
        unique.setdefault(key.kid, key)
    return tuple(unique.values())
