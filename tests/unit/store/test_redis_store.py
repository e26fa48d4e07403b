"""The Redis store (idgate.store.redis) against a real redis-server: sharing between replicas, the replay cache,
the refresh lock, and what happens while Redis is down or frozen (module doc of idgate.store.redis).

Each test uses its own key prefix, so tests never see each other's keys; "replicas" are two store instances.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from idgate.config import StoreConfig
from idgate.sso.session import Session, is_revoked
from idgate.store.redis import RedisRevocationStore
from idgate_devstack.redis_server import RedisServer

pytestmark = pytest.mark.anyio
Factory = Callable[[], RedisRevocationStore]


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[Factory]:
    """Makes stores ("replicas") sharing one random key prefix; closes them afterwards."""
    prefix = f"t{secrets.token_hex(4)}:"
    made: list[RedisRevocationStore] = []

    def make() -> RedisRevocationStore:
        config = StoreConfig(kind="redis", url=redis_server.url, key_prefix=prefix, timeout_seconds=0.2)
        store = RedisRevocationStore.from_config(config)
        made.append(store)
        return store

    yield make
    if not redis_server.running:
        redis_server.start()
    for store in made:
        await store.close()


def _session(sid: str = "s1", created_at: float | None = None) -> Session:
    now = time.time() if created_at is None else created_at
    return Session(
        sid=sid,
        issuer="https://idp.test",
        subject="alice",
        username="alice",
        email=None,
        name=None,
        groups=(),
        created_at=now,
        last_seen=now,
        expires_at=now + 3600,
        token_expires_at=now + 300,
        refresh_token="rt",
        id_token="",
        idp_sid="idp-1",
    )


async def test_a_revocation_written_by_one_replica_is_read_by_another(stores: Factory) -> None:
    a, b = stores(), stores()
    now = time.time()
    await a.revoke("sid:s1", at=now, until=now + 60)
    assert await b.revoked_at("sid:s1") == pytest.approx(now)
    assert await b.revoked_at("sid:other") is None
    assert await is_revoked(b, _session("s1"))
    assert not await is_revoked(b, _session("s2"))


async def test_re_revoking_keeps_the_later_time_and_the_later_expiry(
    stores: Factory, redis_server: RedisServer
) -> None:
    a = stores()
    now = time.time()
    await a.revoke("sub:x", at=now, until=now + 600)
    await a.revoke("sub:x", at=now - 100, until=now + 60)  # an older revocation arriving late (a flushed retry)
    assert await stores().revoked_at("sub:x") == pytest.approx(now)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = await raw.keys("*rev:sub:x")
        assert len(keys) == 1
        assert await raw.pexpiretime(keys[0]) == math.ceil((now + 600) * 1000)
    finally:
        await raw.aclose()


async def test_a_subject_logout_ends_only_sessions_created_before_it(stores: Factory) -> None:
    a, b = stores(), stores()
    now = time.time()
    await a.revoke("sub:https://idp.test|alice", at=now, until=now + 600)
    assert await is_revoked(b, _session("old", created_at=now - 10))
    assert not await is_revoked(b, _session("new", created_at=now + 1))


async def test_a_logout_token_is_accepted_once_across_replicas(stores: Factory) -> None:
    a, b = stores(), stores()
    until = time.time() + 60
    assert await a.remember_once("jti:abc", until=until)
    assert not await b.remember_once("jti:abc", until=until)
    assert not await a.remember_once("jti:abc", until=until)


async def test_one_lock_holder_across_replicas_and_compare_and_delete(stores: Factory) -> None:
    a, b = stores(), stores()
    token = await a.lock("refresh:k", ttl=5)
    assert token is not None
    assert await b.lock("refresh:k", ttl=5) is None
    await b.unlock("refresh:k", "not-the-token")  # a stranger's unlock leaves the lock alone
    assert await b.lock("refresh:k", ttl=5) is None
    await a.unlock("refresh:k", token)
    assert await b.lock("refresh:k", ttl=5) is not None


async def test_shared_values_between_replicas(stores: Factory) -> None:
    a, b = stores(), stores()
    await a.put("refresh:k", "sealed", ttl=5)
    assert await b.get("refresh:k") == "sealed"
    assert await b.get("refresh:missing") is None


async def test_redis_down_keeps_what_the_replica_has_seen_and_queues_new_revocations(
    stores: Factory, redis_server: RedisServer
) -> None:
    a, b = stores(), stores()
    now = time.time()
    await a.revoke("sid:before", at=now, until=now + 600)
    await a.tick()
    await b.tick()  # b mirrors every revocation from the log (its background loop does this every 0.25 s)
    assert b.health().up
    redis_server.stop()
    # a session revoked before the outage stays refused on both replicas; nothing raises
    assert await a.revoked_at("sid:before") == pytest.approx(now)
    assert await b.revoked_at("sid:before") == pytest.approx(now)
    assert not b.health().up
    assert b.health().errors >= 1
    # a revocation during the outage is refused at once where it was made, and queued
    await b.revoke("sid:during", at=now, until=now + 600)
    assert await b.revoked_at("sid:during") == pytest.approx(now)
    assert b.health().pending == 1
    # the lock and the replay cache fall back to the replica's own
    assert await b.lock("refresh:k", ttl=5) is not None
    assert await b.remember_once("jti:x", until=now + 60)
    assert not await b.remember_once("jti:x", until=now + 60)
    # Redis comes back (empty: no persistence here): the queue is flushed, and reaches the other replica
    redis_server.start()
    await b.tick()
    await a.tick()
    assert b.health().up
    assert b.health().pending == 0
    assert await a.revoked_at("sid:during") == pytest.approx(now)


async def test_a_frozen_redis_costs_one_timeout_then_nothing(stores: Factory, redis_server: RedisServer) -> None:
    a = stores()
    now = time.time()
    await a.revoke("sid:x", at=now, until=now + 600)
    await a.tick()  # what start() does at once: read the revocation log, so the store counts as synced
    redis_server.pause()
    try:
        assert await a.revoked_at("sid:x") == pytest.approx(now)  # timed out: the mirror answers
        assert a.health().detail == "TimeoutError"
        assert not a.health().up
        errors = a.health().errors
        assert await a.revoked_at("sid:y") is None  # marked down: Redis is not asked again
        assert a.health().errors == errors
        await a.tick()  # the probe times out too: still down
        assert not a.health().up
    finally:
        redis_server.resume()
    await a.tick()
    assert a.health().up


async def test_a_replica_that_never_read_redis_refuses_every_session(
    stores: Factory, redis_server: RedisServer
) -> None:
    redis_server.stop()
    fresh = stores()
    assert await fresh.revoked_at("sid:anything") == math.inf
    assert await is_revoked(fresh, _session("s1"))
    assert not fresh.health().up


def test_store_config_is_checked() -> None:
    with pytest.raises(ValueError, match="needs a url"):
        StoreConfig(kind="redis")
    with pytest.raises(ValueError, match="no credentials in url"):
        StoreConfig(kind="redis", url="redis://user:pw@127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="redis://host:port/db"):
        StoreConfig(kind="redis", url="http://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="tls needs a rediss"):
        StoreConfig(kind="redis", url="redis://127.0.0.1:6379/0", tls={"ca_file": "/ca.pem"})
    with pytest.raises(ValueError, match="kind: redis only"):
        StoreConfig(kind="memory", url="redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="key_prefix"):
        StoreConfig(kind="redis", url="redis://127.0.0.1:6379/0", key_prefix="a b")
    assert StoreConfig().kind == "memory"
