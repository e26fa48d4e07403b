"""TLS to Redis (``rediss://`` with ``store.tls``): the server's certificate must chain to ``tls.ca_file`` AND name
the URL's host. A real ``redis-server`` with TLS on a free loopback port; certificates from the dev CA helper.

redis-py checked the host name by default only from 6.0 (``ssl_check_hostname``); the store asks for it itself, so
an older redis-py cannot silently accept any certificate the CA ever issued (another Redis, another tenant's).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from idgate.config import StoreConfig, StoreTlsConfig
from idgate.store.redis import RedisRevocationStore
from idgate_devstack.certs import issue_dev_certs
from idgate_devstack.process import free_tcp_port
from idgate_devstack.redis_server import redis_server_binary


@contextmanager
def tls_redis(tmp_path: Path, *, dns_names: list[str]) -> Iterator[tuple[int, Path]]:
    """redis-server speaking TLS only, its certificate for ``dns_names`` (no IP address); yields (port, CA file)."""
    issued = issue_dev_certs(dns_names=dns_names, ip_addresses=())
    for name, data in (("ca.pem", issued.ca), ("server.crt", issued.cert), ("server.key", issued.key)):
        (tmp_path / name).write_bytes(data)
    port = free_tcp_port()
    args = [redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(tmp_path / "server.crt"), "--tls-key-file", str(tmp_path / "server.key")]
    args += ["--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "no"]
    args += ["--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "redis-server with TLS did not start"
                time.sleep(0.05)
        yield port, tmp_path / "ca.pem"
    finally:
        process.terminate()
        process.wait(timeout=10)


def reachable(url: str, ca: Path) -> bool:
    """Whether the store, configured as ``store: {kind: redis, url, tls: {ca_file}}``, can use that Redis."""

    async def attempt() -> bool:
        config = StoreConfig(kind="redis", url=url, tls=StoreTlsConfig(ca_file=str(ca)), timeout_seconds=2)
        store = RedisRevocationStore.from_config(config)
        try:
            await store.revoke("sid:tls-probe", at=time.time(), until=time.time() + 60)
            return store.health().up and await store.revoked_at("sid:tls-probe") is not None
        finally:
            await store.close()

    return asyncio.run(attempt())


def test_certificate_for_the_urls_host_is_accepted(tmp_path: Path) -> None:
    with tls_redis(tmp_path, dns_names=["localhost"]) as (port, ca):
        assert reachable(f"rediss://localhost:{port}/0", ca)


def test_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    """Same CA, valid chain, wrong name: no connection (the store counts Redis as down; never a silent accept)."""
    with tls_redis(tmp_path, dns_names=["other-redis.internal"]) as (port, ca):
        assert not reachable(f"rediss://localhost:{port}/0", ca)


@pytest.mark.parametrize("with_ca_file", [True, False], ids=["tls-ca_file", "system-CAs"])
def test_the_store_asks_for_the_host_name_check_itself(with_ca_file: bool, tmp_path: Path) -> None:
    """Also for ``rediss://`` without a ``tls`` block (the system's CAs): the name is checked either way."""
    (tmp_path / "ca.pem").write_bytes(issue_dev_certs(dns_names=["localhost"]).ca)
    tls = StoreTlsConfig(ca_file=str(tmp_path / "ca.pem")) if with_ca_file else None
    store = RedisRevocationStore.from_config(StoreConfig(kind="redis", url="rediss://localhost:6380/0", tls=tls))
    kwargs = store._client.connection_pool.connection_kwargs
    assert kwargs["ssl_check_hostname"] is True and kwargs["ssl_cert_reqs"] == "required"
    plain = RedisRevocationStore.from_config(StoreConfig(kind="redis", url="redis://localhost:6379/0"))
    assert "ssl_check_hostname" not in plain._client.connection_pool.connection_kwargs
