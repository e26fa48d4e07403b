"""The assertion key ring in Redis (``store.kind: redis``), and the follower that keeps a signer on it.

One Redis key, ``<key_prefix>assertion:ring``, holds the ring (:mod:`idgate.assertion_ring`) as JSON::

    {"v": 1, "lifetime": 120, "current": KEY, "next": KEY | null, "retired": [KEY, ...]}
    KEY = {"kid", "sealed", "created", "activate_at", "expires_at"}

``sealed`` is the PEM private key sealed with the session keys (:class:`idgate.sso.cookies.KeyRing`, AES-256-GCM,
bound to the kid as associated data) — a private key is never stored in clear; a replica whose session keys cannot
open it refuses to start. The ring is created once (``SET NX``: the first replica to start, from
``assertion.keys_file`` or a fresh key) and changed only by ``idgate keys rotate-assertion`` (a compare-and-set
script: a concurrent rotation loses and retries). Replicas never write it: each reads it every
``assertion.rotation.poll_seconds`` and applies :func:`idgate.assertion_ring.advance` with its own clock, so all of
them switch keys at the ring's ``activate_at`` (within one poll) and publish the same JWKS. While Redis is down a
replica keeps the last ring it read (the switch still happens on time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from idgate.assertion import Algorithm, AssertionSigner, generate_pem, pem_kid
from idgate.assertion_ring import RingKey, RingState, advance, initial, published
from idgate.errors import IdgateError
from idgate.sso.cookies import KeyRing

log = logging.getLogger("idgate.store")
_AAD = b"idgate-assertion-key:"
_ERRORS = (RedisError, OSError, TimeoutError)
# KEYS[1] the ring; ARGV[1] the value read before (empty: none), ARGV[2] the new value
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


class RingError(IdgateError):
    """The ring in Redis cannot be read: unreachable, malformed, or sealed with keys this replica lacks."""


def encode(state: RingState, seal: KeyRing) -> str:
    """The ring as its Redis JSON value, private keys sealed."""

    def key(k: RingKey) -> dict[str, Any]:
        sealed = seal.seal(k.pem, aad=_AAD + k.kid.encode("ascii"))
        return {
            "kid": k.kid,
            "sealed": sealed,
            "created": k.created,
            "activate_at": k.activate_at,
            "expires_at": k.expires_at,
        }

    return json.dumps(
        {
            "v": 1,
            "lifetime": state.lifetime_seconds,
            "current": key(state.current),
            "next": key(state.next) if state.next else None,
            "retired": [key(k) for k in state.retired],
        },
        separators=(",", ":"),
    )


def decode(raw: str, seal: KeyRing) -> RingState:
    """The ring from its Redis JSON value.

    Raises:
        RingError: malformed, or a private key the session keys cannot open.
    """
    try:
        data = json.loads(raw)
        if data.get("v") != 1:
            raise RingError(f"unknown ring version {data.get('v')!r}")

        def key(item: dict[str, Any]) -> RingKey:
            kid = str(item["kid"])
            pem = seal.open(str(item["sealed"]), aad=_AAD + kid.encode("ascii"))
            if pem is None:
                raise RingError(f"key {kid} cannot be opened with these session keys")
            return RingKey(
                kid=kid,
                pem=pem,
                created=float(item["created"]),
                activate_at=None if item.get("activate_at") is None else float(item["activate_at"]),
                expires_at=None if item.get("expires_at") is None else float(item["expires_at"]),
            )

        return RingState(
            current=key(data["current"]),
            next=key(data["next"]) if data.get("next") else None,
            retired=tuple(key(k) for k in data.get("retired") or ()),
            lifetime_seconds=int(data["lifetime"]),
        )
    except RingError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RingError(f"malformed ring ({type(exc).__name__})") from None


def ring_key(pem: bytes, algorithm: Algorithm, *, created: float) -> RingKey:
    """A ring entry for the PEM private key ``pem`` (raises ValueError when it does not fit ``algorithm``)."""
    return RingKey(kid=pem_kid(pem, algorithm), pem=pem, created=created)


def fresh_key(algorithm: Algorithm, *, created: float) -> RingKey:
    """A ring entry for a newly generated key."""
    return ring_key(generate_pem(algorithm), algorithm, created=created)


def first_ring(pem: bytes | None, algorithm: Algorithm, *, lifetime_seconds: int, now: float) -> RingState:
    """The ring a first replica creates: ``pem`` (``assertion.keys_file``'s first key) or a fresh key signs."""
    key = ring_key(pem, algorithm, created=now) if pem else fresh_key(algorithm, created=now)
    return initial(key, lifetime_seconds=lifetime_seconds)


class RedisAssertionRing:
    """Reads and writes the ring under ``<prefix>assertion:ring`` (calls bounded by ``timeout`` seconds)."""

    def __init__(self, *, client: aioredis.Redis, seal: KeyRing, prefix: str = "idgate:", timeout: float = 0.2):
        self._client = client
        self._seal = seal
        self._name = f"{prefix}assertion:ring"
        self._timeout = timeout
        self._cas = client.register_script(_COMPARE_AND_SET)

    async def read(self) -> tuple[str, RingState] | None:
        """``(raw value, ring)``, or None when no ring was created yet.

        Raises:
            RingError: Redis unreachable or slow, or the value unreadable.
        """
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._client.get(self._name)
        except _ERRORS as exc:
            raise RingError(f"redis: {type(exc).__name__}") from None
        if raw is None:
            return None
        return str(raw), decode(str(raw), self._seal)

    async def create(self, state: RingState) -> bool:
        """Store ``state`` unless a ring exists (``SET NX``); True when this call created it."""
        try:
            async with asyncio.timeout(self._timeout):
                return bool(await self._client.set(self._name, encode(state, self._seal), nx=True))
        except _ERRORS as exc:
            raise RingError(f"redis: {type(exc).__name__}") from None

    async def replace(self, before: str, state: RingState) -> bool:
        """Store ``state`` if the value is still ``before`` (compare-and-set); False when another writer won."""
        try:
            async with asyncio.timeout(self._timeout):
                done = await self._cas(keys=[self._name], args=[before, encode(state, self._seal)])
        except _ERRORS as exc:
            raise RingError(f"redis: {type(exc).__name__}") from None
        return bool(done)

    async def load_or_create(self, first: Callable[[], RingState]) -> RingState:
        """The ring in Redis, created from ``first()`` when there is none yet (the first replica wins)."""
        found = await self.read()
        if found is None:
            await self.create(first())
            found = await self.read()
        if found is None:
            raise RingError("the ring vanished right after it was created")
        return found[1]

    async def close(self) -> None:
        """Release the connection."""
        await self._client.aclose()


class RingFollower:
    """Keeps the signer that ``signer()`` returns on the ring: reads it every ``poll_seconds`` and installs the
    signing and published keys at the wall-clock time ``clock()`` (:func:`apply`)."""

    def __init__(
        self,
        *,
        ring: RedisAssertionRing,
        signer: Callable[[], AssertionSigner | None],
        poll_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ring = ring
        self._signer = signer
        self._poll = poll_seconds
        self._clock = clock
        self._state: RingState | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def state(self) -> RingState | None:
        """The last ring read (None before the first)."""
        return self._state

    async def start(self, first: Callable[[], RingState], *, wait_seconds: float = 10.0) -> None:
        """Read (or create) the ring, retrying for up to ``wait_seconds``, install it, then follow it.

        Raises:
            RingError: no ring could be read in time, or it cannot be opened (idgate then refuses to start: signing
                with a key the other replicas do not publish would break the upstreams' verification).
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                self._state = await self._ring.load_or_create(first)
                break
            except RingError as exc:
                if "cannot be opened" in str(exc) or "malformed" in str(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
        self.apply()
        self._task = asyncio.create_task(self._follow(), name="assertion-ring")

    def apply(self, signer: AssertionSigner | None = None) -> None:
        """Install the ring as it stands now into ``signer`` (default: ``signer()``)."""
        signer = signer or self._signer()
        if signer is None or self._state is None:
            return
        now = self._clock()
        state = advance(self._state, now)
        signer.use_ring(signing_pem=state.current.pem, published_pems=[k.pem for k in published(state, now)])

    async def tick(self) -> None:
        """One poll: re-read the ring (keeping the last one when Redis fails) and apply it."""
        try:
            found = await self._ring.read()
        except RingError as exc:
            if not self._failing:
                log.warning(json.dumps({"event": "assertion_ring_unreadable", "error": str(exc)}))
            self._failing = True
        else:
            if self._failing:
                log.info(json.dumps({"event": "assertion_ring_readable"}))
            self._failing = False
            if found is not None:
                self._state = found[1]
        try:
            self.apply()
        except ValueError as exc:  # a ring key that does not fit the signer's algorithm: keep the keys in force
            log.error(json.dumps({"event": "assertion_ring_unusable", "error": str(exc)}))

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            await self.tick()

    async def close(self) -> None:
        """Stop following and release the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._ring.close()
