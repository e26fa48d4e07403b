"""The decision cache hears another replica's revocations: the Redis store calls ``on_remote_revoke`` for each key
it reads from the shared revocation log after its first sync (a real redis-server; idgate.store.redis)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from idgate.config import StoreConfig
from idgate.store.redis import RedisRevocationStore
from idgate_devstack.haproxy import free_tcp_port
from idgate_devstack.redis_server import RedisServer


@pytest.mark.anyio
async def test_a_revocation_written_by_another_replica_reaches_the_hook_once(tmp_path: Path) -> None:
    with RedisServer(port=free_tcp_port(), log_path=tmp_path / "redis.log") as server:
        config = StoreConfig(kind="redis", url=server.url, key_prefix="cache:", timeout_seconds=0.5)
        a, b = RedisRevocationStore.from_config(config), RedisRevocationStore.from_config(config)
        try:
            now = time.time()
            await a.revoke("sid:before", at=now, until=now + 60)
            heard: list[str] = []
            b.on_remote_revoke = heard.append
            await b.tick()  # the first read is history (idgate clears HAProxy's map at start anyway)
            assert heard == []
            await a.revoke("sid:s1", at=now, until=now + 60)
            await a.revoke("sub:https://idp.test|alice", at=now, until=now + 60)
            await b.tick()
            await b.tick()
            assert heard == ["sid:s1", "sub:https://idp.test|alice"]
        finally:
            await a.close()
            await b.close()
