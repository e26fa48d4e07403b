"""A real ``redis-server`` (Debian's, started on a free loopback port) for the store's unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from idgate_devstack.haproxy import free_tcp_port
from idgate_devstack.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    log: Path = tmp_path_factory.mktemp("redis") / "redis.log"
    with RedisServer(port=free_tcp_port(), log_path=log) as server:
        yield server
