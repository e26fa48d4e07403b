"""The composition root wires the listeners' guards from the config: the SPOA agent's trusted callers (a refused
peer is audited and counted like /auth's ``untrusted_caller``), and who may read ``/metrics``: trusted callers on
the main port, or nobody there and everyone on ``server.metrics_bind``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_issuer import config, idp

from idgate.config_load import parse_config
from idgate.errors import ConfigError
from idgate.runtime import create_app
from idgate_devstack.process import free_tcp_port

HELLO = (Path(__file__).resolve().parents[1] / "data/spop/haproxy-2.8-hello.bin").read_bytes()
HEALTHCHECK = (Path(__file__).resolve().parents[1] / "data/spop/haproxy-2.8-healthcheck-hello.bin").read_bytes()


@contextlib.asynccontextmanager
async def serve(peer: str = "127.0.0.1", **sections: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app of the fake issuer's config with ``sections`` added, its lifespan running, reached from ``peer``."""
    raw = config().model_dump(mode="json", exclude_none=True) | sections
    app = create_app(parse_config(raw, environ={}), transport=idp())
    async with app.router.lifespan_context(app):
        asgi = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=asgi, base_url="http://idgate.test") as c:
            yield c


async def exchange(port: int, source: str) -> bytes:
    """Connect from ``source``, send HAProxy 2.8's recorded HELLO, return what came back before the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(HELLO)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(3):
            try:
                return await reader.read(4096)
            except ConnectionResetError:
                return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.anyio
async def test_spoa_trusted_callers_come_from_the_config_and_refusals_are_audited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_tcp_port()
    spoa = {"host": "127.0.0.1", "port": port, "trusted_callers": ["127.0.0.1/32", "127.0.0.5/32"]}
    with caplog.at_level("INFO", logger="idgate.audit"):
        async with serve(spoa=spoa) as c:
            assert await exchange(port, "127.0.0.2") == b""  # outside the list: closed, no AGENT-HELLO
            assert await exchange(port, "127.0.0.5") != b""  # listed: AGENT-HELLO
            assert await exchange(port, "127.0.0.1") != b""
            text = (await c.get("/metrics")).text
    assert "idgate_spoa_untrusted_callers_total 1.0" in text
    labels = 'mode="spoe",reason="untrusted_caller",route="none",status="403",upstream="none"'
    assert f"idgate_decisions_total{{{labels}}} 1.0" in text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.audit"]
    assert [(line["status"], line["reasons"], line["source"], line["allow"]) for line in lines] == [
        (403, ["untrusted_caller"], "127.0.0.2", False)
    ]


@pytest.mark.anyio
async def test_spoa_default_trusts_loopback_only() -> None:
    port = free_tcp_port()
    async with serve(spoa={"host": "127.0.0.1", "port": port}) as c:
        assert await exchange(port, "127.0.0.9") == b""
        assert await exchange(port, "127.0.0.1") != b""
        assert "idgate_spoa_untrusted_callers_total 1.0" in (await c.get("/metrics")).text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("peer", "trusted_callers", "status"),
    [
        ("127.0.0.1", None, 200),
        ("::1", None, 200),
        ("203.0.113.9", None, 403),
        ("10.0.0.5", ["10.0.0.0/8"], 200),
        ("127.0.0.1", ["10.0.0.0/8"], 403),
        ("::ffff:10.0.0.5", ["10.0.0.0/8"], 200),
    ],
)
async def test_metrics_on_the_main_port_only_for_trusted_callers(
    peer: str, trusted_callers: list[str] | None, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    server = {} if trusted_callers is None else {"trusted_callers": trusted_callers}
    with caplog.at_level("WARNING", logger="idgate"):
        async with serve(peer, server=server) as c:
            response = await c.get("/metrics")
            assert (await c.get("/healthz")).status_code == 200  # probes stay open to anyone
    assert response.status_code == status
    assert ("idgate_decisions_total" in response.text) is (status == 200)
    refusals = [r.getMessage() for r in caplog.records if "metrics_untrusted_caller" in r.getMessage()]
    assert len(refusals) == (status == 403)


@pytest.mark.anyio
async def test_metrics_bind_moves_metrics_to_a_listener_of_its_own() -> None:
    port = free_tcp_port()
    async with serve(server={"metrics_bind": f"127.0.0.1:{port}"}) as c:
        assert (await c.get("/auth", headers={"x-idgate-method": "GET"})).status_code == 400  # one decision
        main = await c.get("/metrics")  # a trusted caller, yet: not here any more
        async with httpx.AsyncClient() as direct:
            served = await direct.get(f"http://127.0.0.1:{port}/metrics")
    assert main.status_code == 404 and "idgate_" not in main.text
    assert served.status_code == 200
    labels = 'mode="auth_request",reason="missing_facts",route="none",status="400",upstream="none"'
    assert f"idgate_decisions_total{{{labels}}} 1.0" in served.text and "idgate_jwks_ready" in served.text
    async with httpx.AsyncClient() as direct:
        with pytest.raises(httpx.ConnectError):  # closed with the app
            await direct.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.anyio
async def test_an_unusable_metrics_bind_stops_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            async with serve(server={"metrics_bind": f"127.0.0.1:{taken.getsockname()[1]}"}):
                pass


def test_metrics_bind_is_validated() -> None:
    raw = config().model_dump(mode="json", exclude_none=True)
    for bad, message in (
        ("9190", "not host:port"),
        ("::1:9190", "in brackets"),
        ("127.0.0.1:0", "not host:port"),
        ("a b:9190", "IP address or a DNS name"),
        ("127.0.0.1:9180", "a port of its own"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(raw | {"server": {"metrics_bind": bad}}, environ={})
        assert any(p.startswith("server") and message in p for p in info.value.problems), (bad, info.value.problems)
    ok = parse_config(raw | {"server": {"metrics_bind": "[::1]:9190"}}, environ={})
    assert ok.server.metrics_address == ("::1", 9190)


@pytest.mark.anyio
@pytest.mark.parametrize(("store", "gated"), [({"kind": "memory"}, False), ({"kind": "redis"}, True)])
async def test_spoa_checks_wait_for_readiness_only_with_a_shared_store(store: dict[str, Any], gated: bool) -> None:
    """Replicas (a shared store): HAProxy's spop-check must not see a replica up before its /readyz would be 200.
    One process (memory store): its checks pass at once, so its own 503 ``keys_unavailable`` reaches the client."""
    from idgate.spoe import spop

    port, redis_port = free_tcp_port(), free_tcp_port()  # nothing listens on redis_port
    if store["kind"] == "redis":
        store = store | {"url": f"redis://127.0.0.1:{redis_port}/0", "timeout_seconds": 0.1}
    raw = config().model_dump(mode="json", exclude_none=True) | {
        "spoa": {"host": "127.0.0.1", "port": port},
        "store": store,
    }
    app = create_app(parse_config(raw, environ={}), transport=idp(delay=30))  # the issuer's keys never come
    async with app.router.lifespan_context(app):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(HEALTHCHECK)
            async with asyncio.timeout(3):
                answer = await reader.read(4096)
        finally:
            writer.close()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://idgate.test") as c:
            assert (await c.get("/readyz")).status_code == 503
    frame = spop.decode_frame(answer[4:])
    assert isinstance(frame, spop.AgentDisconnect if gated else spop.AgentHello), frame
