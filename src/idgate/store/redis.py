"""The shared store on Redis (or Valkey), for several idgate replicas (``store: {kind: redis, url: …}``).

Keys (``key_prefix`` first, default ``idgate:``), all with an expiry, so Redis never keeps a dead entry:

    rev:<key>     a revocation: the time it was revoked (epoch seconds), expiring at the session's absolute
                  expiry; re-revoking keeps the later time and the later expiry (one Lua script, atomic)
    revlog        a stream of every revocation (``XADD MAXLEN ~``): each replica reads it to keep a local mirror
    once:<key>    the logout-token ``jti`` replay cache (``SET NX PXAT``)
    lock:<key>    the refresh lock (``SET NX PX`` with a random token; released by a compare-and-delete script)
    val:<key>     short-lived shared values (the refreshed session, sealed by the caller)

**Redis down or slow** (a documented choice, never a silent allow of a revoked session):

- Every call is bounded by ``timeout_seconds``; the first failure marks the store down and later calls skip
  Redis at once (no decision waits on a dead Redis) until a background probe (``PING`` every
  ``retry_interval`` seconds) succeeds.
- Each replica keeps a local mirror of every revocation it wrote, read or received through ``revlog`` (within
  ``retry_interval`` of the write): while Redis is down, a session revoked before the outage stays refused.
- A revocation made while Redis is down is refused at once on the replica that received it, and queued (at most
  ``max_pending``; beyond that the oldest is dropped from the queue, still refused locally, and counted); the
  queue is written to Redis as soon as it answers, and then reaches every replica. Until then the other replicas
  do not know it: that is the window this design accepts, and ``/readyz`` (200, ``degraded``), the metrics
  ``idgate_store_up`` / ``idgate_store_errors_total`` / ``idgate_store_pending_revocations`` and a
  ``store_down`` log line say it is open.
- A replica that has never reached Redis knows no revocation: it refuses every session (``revoked_at`` answers
  "always") and ``/readyz`` answers 503 until it has read Redis once.
- The logout-token replay cache falls back to the local mirror (a replayed logout token only revokes again); the
  refresh lock falls back to the replica's own lock (two replicas could then both refresh one session: the loser
  gets ``invalid_grant`` and that session ends — a sign-in, never an allow); shared values are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from idgate.config import StoreConfig
from idgate.store.base import StoreHealth
from idgate.store.memory import MemoryRevocationStore

log = logging.getLogger("idgate.store")
T = TypeVar("T")

# KEYS[1] the revocation, KEYS[2] the stream; ARGV at (seconds), until (ms), the caller's key, stream length
_REVOKE = """
local at = ARGV[1]
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) and tonumber(current) > tonumber(at) then at = current end
local until_ms = ARGV[2]
local expires = redis.call('PEXPIRETIME', KEYS[1])
if expires > tonumber(until_ms) then until_ms = tostring(expires) end
redis.call('SET', KEYS[1], at, 'PXAT', until_ms)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'k', ARGV[3], 'at', at, 'until', until_ms)
return at
"""
# KEYS[1] the lock, ARGV[1] the holder's token
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_ERRORS = (RedisError, OSError, TimeoutError, ValueError)


def client_from_config(config: StoreConfig) -> aioredis.Redis:
    """An asyncio Redis client for ``config`` (``kind: redis``: url, credentials, TLS, ``timeout_seconds`` on every
    socket operation, no retries); no I/O until the first call."""
    assert config.url is not None
    tls: dict[str, Any] = {}
    if config.url.startswith("rediss://"):
        # the certificate must chain to a trusted CA and name the URL's host (redis-py before 6.0 did not check the
        # name by default)
        tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if config.tls is not None:
        tls |= {"ssl_ca_certs": config.tls.ca_file, "ssl_certfile": config.tls.cert_file}
        tls |= {"ssl_keyfile": config.tls.key_file, "ssl_cert_reqs": "required"}
    client: aioredis.Redis = aioredis.Redis.from_url(
        config.url,
        username=config.username,
        password=config.password.get_secret_value() if config.password else None,
        socket_timeout=config.timeout_seconds,
        socket_connect_timeout=config.timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        client_name="idgate",
        **tls,
    )
    return client


class RedisRevocationStore:
    """:class:`~idgate.store.base.RevocationStore` on Redis with a local mirror and a retry queue (module doc).

    ``timeout`` bounds every Redis call (seconds); ``retry_interval`` is the probe, flush and mirror-sync period
    (seconds); ``max_pending`` bounds the retry queue; ``mirror_entries`` the local mirror and the stream length.
    """

    def __init__(
        self,
        *,
        client: aioredis.Redis,
        prefix: str = "idgate:",
        timeout: float = 0.2,
        max_pending: int = 10_000,
        mirror_entries: int = 100_000,
        retry_interval: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout = timeout
        self._max_pending = max_pending
        self._mirror_entries = mirror_entries
        self._interval = retry_interval
        self._clock = clock
        self._mirror = MemoryRevocationStore(max_entries=mirror_entries, clock=clock)
        self._pending: deque[tuple[str, float, float]] = deque()
        self._revoke = client.register_script(_REVOKE)
        self._unlock = client.register_script(_UNLOCK)
        self._up = True
        self._synced = False  # read Redis at least once: the mirror holds what Redis held
        self._stream_id = "0"
        self._errors = 0
        self._dropped = 0
        self._detail = ""
        self._task: asyncio.Task[None] | None = None
        # called with each revocation key read from ``revlog`` after the first sync (another replica's sign-out or
        # back-channel logout): the decision cache in HAProxy purges it (idgate.cache_purge)
        self.on_remote_revoke: Callable[[str], object] | None = None

    @classmethod
    def from_config(cls, config: StoreConfig) -> RedisRevocationStore:
        """A store for ``config`` (``kind: redis``); no I/O until the first call."""
        return cls(
            client=client_from_config(config),
            prefix=config.key_prefix,
            timeout=config.timeout_seconds,
            max_pending=config.max_pending,
        )

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    async def _call(self, op: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """``(True, result)``, or ``(False, None)`` when Redis is down, failed or took longer than the timeout."""
        if not self._up:
            return False, None
        try:
            async with asyncio.timeout(self._timeout):
                return True, await op()
        except _ERRORS as exc:
            self._failed(exc)
            return False, None

    def _failed(self, exc: BaseException) -> None:
        self._errors += 1
        self._detail = type(exc).__name__
        if self._up:
            self._up = False
            log.warning(json.dumps({"event": "store_down", "store": "redis", "error": self._detail}))

    async def revoke(self, key: str, *, at: float, until: float) -> None:
        await self._mirror.revoke(key, at=at, until=until)
        if not await self._write(key, at, until):
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self._dropped += 1
                log.warning(json.dumps({"event": "store_revocation_dropped", "store": "redis"}))
            self._pending.append((key, at, until))

    async def _write(self, key: str, at: float, until: float) -> bool:
        keys = [self._key("rev", key), self._key("revlog", "")]
        args = [repr(float(at)), str(math.ceil(until * 1000)), key, str(self._mirror_entries)]
        ok, _ = await self._call(lambda: self._revoke(keys=keys, args=args))
        return ok

    async def revoked_at(self, key: str) -> float | None:
        local = await self._mirror.revoked_at(key)
        name = self._key("rev", key)

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(name)
                pipe.pexpiretime(name)
                result: list[Any] = await pipe.execute()
                return result

        ok, found = await self._call(read)
        if not ok or found is None:
            if not self._synced:
                return math.inf  # never read Redis: every revocation is unknown, so every session is refused
            return local
        raw, expires_ms = found
        if raw is None:
            return local
        try:
            remote = float(raw)
        except ValueError:
            return math.inf  # an unreadable revocation still revokes
        until = expires_ms / 1000 if isinstance(expires_ms, int) and expires_ms > 0 else self._clock() + 3600
        await self._mirror.revoke(key, at=remote, until=until)
        return remote if local is None else max(remote, local)

    async def remember_once(self, key: str, *, until: float) -> bool:
        first_here = await self._mirror.remember_once(f"once:{key}", until=until)
        name, until_ms = self._key("once", key), math.ceil(until * 1000)
        ok, created = await self._call(lambda: self._client.set(name, "1", nx=True, pxat=until_ms))
        return bool(created) if ok else first_here

    async def lock(self, key: str, *, ttl: float) -> str | None:
        token = secrets.token_urlsafe(16)
        name = self._key("lock", key)
        ok, taken = await self._call(lambda: self._client.set(name, token, nx=True, px=max(1, int(ttl * 1000))))
        if not ok:
            return await self._mirror.lock(key, ttl=ttl)
        return token if taken else None

    async def unlock(self, key: str, token: str) -> None:
        await self._mirror.unlock(key, token)
        await self._call(lambda: self._unlock(keys=[self._key("lock", key)], args=[token]))

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        name = self._key("val", key)
        await self._call(lambda: self._client.set(name, value, px=max(1, int(ttl * 1000))))

    async def get(self, key: str) -> str | None:
        ok, value = await self._call(lambda: self._client.get(self._key("val", key)))
        return value if ok and isinstance(value, str) else None

    def health(self) -> StoreHealth:
        return StoreHealth(
            kind="redis",
            up=self._up,
            synced=self._synced,
            pending=len(self._pending),
            errors=self._errors,
            dropped=self._dropped,
            detail="" if self._up and self._synced else self._detail or "not read yet",
        )

    @property
    def synced(self) -> bool:
        """True once Redis was read at least once (the mirror holds what Redis held)."""
        return self._synced

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._maintain(), name="store:redis")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()

    async def _maintain(self) -> None:
        """Probe a down Redis, flush the retry queue, and mirror the other replicas' revocations; forever."""
        while True:
            await self.tick()
            await asyncio.sleep(self._interval)

    async def tick(self) -> None:
        """One round of :meth:`_maintain` (tests call it directly)."""
        if not self._up:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._client.ping()
            except _ERRORS as exc:
                self._detail = type(exc).__name__
                return
            self._up = True
            log.info(json.dumps({"event": "store_up", "store": "redis", "pending": len(self._pending)}))
        while self._pending:
            key, at, until = self._pending[0]
            if not await self._write(key, at, until):
                return
            self._pending.popleft()
        await self._sync()

    async def _read_log(self) -> Any:
        return await self._client.xread({self._key("revlog", ""): self._stream_id}, count=1000)

    async def _sync(self) -> None:
        """Read new ``revlog`` entries into the mirror (all of them, in pages, from the start on the first call)."""
        hook = self.on_remote_revoke if self._synced else None  # the first read is history, not news
        while True:
            ok, found = await self._call(self._read_log)
            if not ok:
                return
            self._synced = True
            entries = _stream_entries(found)
            for entry_id, fields in entries:
                self._stream_id = entry_id
                try:
                    key, at, until = str(fields["k"]), float(fields["at"]), int(fields["until"]) / 1000
                except (KeyError, ValueError, TypeError):
                    continue
                await self._mirror.revoke(key, at=at, until=until)
                if hook is not None:
                    hook(key)
            if len(entries) < 1000:
                return


def _stream_entries(found: Any) -> list[tuple[str, dict[str, Any]]]:
    """The entries of XREAD's answer for one stream (RESP2: ``[[name, [(id, fields), ...]]]``)."""
    if not found:
        return []
    return [(str(entry_id), dict(fields or {})) for entry_id, fields in found[0][1]]
