"""The SPOA agent's health-check answer follows ``ready()``: raw SPOP over TCP, then HAProxy 2.8's ``spop-check``."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import pytest

from idgate.spoe import spop
from idgate.spoe.agent import NOT_READY, SpoaAgent
from idgate.spoe.spop import Action, AgentDisconnect, AgentHello, HaproxyHello, Scope, SetVar, Status, Value
from idgate_devstack.process import free_tcp_port

pytestmark = pytest.mark.anyio
CHECK = HaproxyHello(supported_versions="2.0", max_frame_size=16380, capabilities="", healthcheck=True)
HELLO = HaproxyHello(supported_versions="2.0", max_frame_size=16380, capabilities="pipelining", engine_id="e")


async def handler(name: str, args: Mapping[str, Value]) -> Sequence[Action]:
    return (SetVar(scope=Scope.TRANSACTION, name="decision", value="allow"),)


async def exchange(agent: SpoaAgent, hello: HaproxyHello) -> tuple[spop.Frame, bool]:
    """Send ``hello``; the agent's first frame, and whether it then closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    try:
        writer.write(spop.encode_frame(hello))
        await writer.drain()
        async with asyncio.timeout(3):
            length = struct.unpack(">I", await reader.readexactly(4))[0]
            frame = spop.decode_frame(await reader.readexactly(length))
        try:
            async with asyncio.timeout(0.5):
                closed = await reader.read(1) == b""
        except TimeoutError:
            closed = False
        return frame, closed
    finally:
        writer.close()


async def test_a_health_check_is_refused_until_ready_and_answered_after() -> None:
    ready = False
    agent = SpoaAgent(handler=handler, ready=lambda: ready)
    await agent.start("127.0.0.1", 0)
    try:
        frame, closed = await exchange(agent, CHECK)
        assert frame == AgentDisconnect(status_code=Status.RESOURCE, message=NOT_READY) and closed
        assert (agent.stats.healthchecks, agent.stats.healthchecks_not_ready) == (0, 1)
        # a real connection is not the health check's business: HAProxy only opens one to an agent it sees up
        frame, closed = await exchange(agent, HELLO)
        assert isinstance(frame, AgentHello) and not closed
        ready = True
        frame, closed = await exchange(agent, CHECK)
        assert isinstance(frame, AgentHello) and closed
        assert (agent.stats.healthchecks, agent.stats.healthchecks_not_ready) == (1, 1)
    finally:
        await agent.close()


async def test_haproxy_spop_check_keeps_a_not_ready_agent_down(tmp_path: Path) -> None:
    from idgate_devstack.haproxy import haproxy_binary

    try:
        binary = haproxy_binary()
    except RuntimeError:
        pytest.skip("no HAProxy binary")
    ready = False
    agent = SpoaAgent(handler=handler, ready=lambda: ready)
    await agent.start("127.0.0.1", 0)
    front = free_tcp_port()
    (tmp_path / "haproxy.cfg").write_text(
        "global\n"
        "    log stderr format raw local0 info\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 1s\n"
        "    timeout client 5s\n"
        "    timeout server 5s\n"
        "frontend fe\n"
        f"    bind 127.0.0.1:{front}\n"
        '    http-request return status 200 content-type text/plain lf-string "%[srv_is_up(be_spoa/agent)]"\n'
        "backend be_spoa\n"
        "    mode tcp\n"
        "    option spop-check\n"
        f"    server agent 127.0.0.1:{agent.port} check inter 100ms fall 1 rise 1\n"
    )
    proc = await asyncio.create_subprocess_exec(
        binary, "-db", "-f", str(tmp_path / "haproxy.cfg"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    async def up(http: httpx.AsyncClient) -> str:
        deadline = time.monotonic() + 5
        while True:
            try:
                return (await http.get("/")).text
            except httpx.TransportError:
                assert time.monotonic() < deadline, "HAProxy never answered"
                await asyncio.sleep(0.05)

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{front}", timeout=5) as http:
            await up(http)
            await asyncio.sleep(0.5)  # several checks: each one refused
            assert await up(http) == "0"
            assert agent.stats.healthchecks_not_ready >= 2 and agent.stats.healthchecks == 0
            ready = True
            deadline = time.monotonic() + 3
            while await up(http) != "1":
                assert time.monotonic() < deadline, "the agent never came up once ready"
                await asyncio.sleep(0.05)
            assert agent.stats.healthchecks >= 1
    finally:
        await agent.close()
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
