"""The composition root wires the listeners' guards from the config: the SPOA agent's trusted callers (a refused
peer is audited and counted like /auth's ``untrusted_caller``)."""

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
from idgate.runtime import create_app

HELLO = (Path(__file__).resolve().parents[1] / "data/spop/haproxy-2.8-hello.bin").read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(**sections: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app of the fake issuer's config with ``sections`` added, its lifespan running, reached from 127.0.0.1."""
    raw = config().model_dump(mode="json", exclude_none=True) | sections
    app = create_app(parse_config(raw, environ={}), transport=idp())
    async with app.router.lifespan_context(app):
        asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
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
    port = free_port()
    spoa = {"host": "127.0.0.1", "port": port, "trusted_callers": ["127.0.0.1/32", "127.0.0.5/32"]}
    with caplog.at_level("INFO", logger="idgate.audit"):
        async with serve(spoa=spoa) as c:
            assert await exchange(port, "127.0.0.2") == b""  # outside the list: closed, no AGENT-HELLO
            assert await exchange(port, "127.0.0.5") != b""  # listed: AGENT-HELLO
            assert await exchange(port, "127.0.0.1") != b""
            text = (await c.get("/metrics")).text
    assert "idgate_spoa_untrusted_callers_total 1.0" in text
    assert 'idgate_decisions_total{status="403"} 1.0' in text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.audit"]
    assert [(line["status"], line["reasons"], line["source"], line["allow"]) for line in lines] == [
        (403, ["untrusted_caller"], "127.0.0.2", False)
    ]


@pytest.mark.anyio
async def test_spoa_default_trusts_loopback_only() -> None:
    port = free_port()
    async with serve(spoa={"host": "127.0.0.1", "port": port}) as c:
        assert await exchange(port, "127.0.0.9") == b""
        assert await exchange(port, "127.0.0.1") != b""
        assert "idgate_spoa_untrusted_callers_total 1.0" in (await c.get("/metrics")).text
