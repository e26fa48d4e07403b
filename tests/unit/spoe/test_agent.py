"""The SPOP agent over real TCP sockets (frames built with the codec), plus one run behind a real HAProxy 2.8."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from idgate.config import TlsConfig
from idgate.errors import MessageError
from idgate.peers import LOOPBACK, parse_networks
from idgate.spoe import spop
from idgate.spoe.agent import SpoaAgent, message_args
from idgate.spoe.spop import (
    Ack,
    Action,
    AgentDisconnect,
    AgentHello,
    FrameType,
    HaproxyDisconnect,
    HaproxyHello,
    InvalidString,
    Message,
    Notify,
    Scope,
    SetVar,
    Status,
    Value,
)
from idgate.tls import server_context
from idgate_devstack.certs import DevCerts, generate_dev_certs
from idgate_devstack.process import free_tcp_port

pytestmark = pytest.mark.anyio
DATA = Path(__file__).resolve().parents[2] / "data" / "spop"
HELLO = HaproxyHello(
    supported_versions="2.0", max_frame_size=16380, capabilities="pipelining,async", engine_id="test-engine"
)
TXN = Scope.TRANSACTION


def allow(value: str = "allow") -> tuple[Action, ...]:
    return (SetVar(scope=TXN, name="decision", value=value),)


def deny(reason: str) -> tuple[Action, ...]:
    return (SetVar(scope=TXN, name="decision", value="deny"), SetVar(scope=TXN, name="reason", value=reason))


def notify(stream_id: int, frame_id: int, name: str = "check", **args: Value) -> bytes:
    message = Message(name=name, args=tuple(args.items()))
    return spop.encode_frame(Notify(stream_id=stream_id, frame_id=frame_id, messages=(message,)))


class Client:
    """A fake HAProxy: raw socket I/O with frames from the codec. Every client is closed after its test."""

    opened: ClassVar[list[Client]] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        Client.opened.append(self)

    @classmethod
    async def connect(cls, agent: SpoaAgent) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self, wait: float = 3.0) -> spop.Frame:
        async with asyncio.timeout(wait):
            prefix = await self.reader.readexactly(4)
            body = await self.reader.readexactly(struct.unpack(">I", prefix)[0])
        return spop.decode_wire(prefix + body, max_frame_size=1 << 20)

    async def hello(self, hello: HaproxyHello = HELLO) -> spop.Frame:
        await self.send(spop.encode_frame(hello))
        return await self.frame()

    async def closed(self, wait: float = 3.0) -> bool:
        """True when the agent closed the socket (EOF or reset) within ``wait`` seconds with nothing more to read."""
        try:
            async with asyncio.timeout(wait):
                return await self.reader.read(1) == b""
        except ConnectionError:  # reset, or a broken pipe from writing to it
            return True

    async def disconnected(self, status: Status) -> AgentDisconnect:
        frame = await self.frame()
        assert isinstance(frame, AgentDisconnect), frame
        assert frame.status_code == status, frame
        assert await self.closed()
        return frame

    def close(self) -> None:
        self.writer.close()


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    clients, Client.opened[:] = list(Client.opened), []
    for client in clients:
        client.writer.close()
        with contextlib.suppress(OSError):
            await client.writer.wait_closed()


class Recorder:
    """A handler that records its calls and answers ``allow`` (optionally after a delay per call)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, dict[str, Value]]] = []
        self.delay = delay
        self.active = 0
        self.max_active = 0

    async def __call__(self, name: str, args: Mapping[str, Value]) -> Sequence[Action]:
        self.calls.append((name, dict(args)))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            delay = args.get("delay")  # per NOTIFY, in milliseconds
            await asyncio.sleep(delay / 1000 if isinstance(delay, int) else self.delay)
        finally:
            self.active -= 1
        return allow(f"ok-{args.get('n', '')}")


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


async def started(handler: object, **options: object) -> SpoaAgent:
    agent = SpoaAgent(handler=handler, deny_actions=deny, **options)  # type: ignore[arg-type]
    await agent.start("127.0.0.1", 0)
    return agent


@pytest.fixture
async def agent(recorder: Recorder) -> AsyncIterator[SpoaAgent]:
    agent = await started(recorder, messages={"check": ("n",), "check-request": ("method", "name")})
    yield agent
    await agent.close()


# --- HELLO ------------------------------------------------------------------------------------------------------


async def test_hello_negotiation(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    assert await client.hello() == AgentHello(version="2.0", max_frame_size=16380, capabilities="pipelining")
    client.close()
    client = await Client.connect(agent)
    small = HaproxyHello(supported_versions="2.0, 1.5", max_frame_size=4096, capabilities="async")
    assert await client.hello(small) == AgentHello(version="2.0", max_frame_size=4096, capabilities="pipelining")
    client.close()


async def test_hello_uses_our_smaller_maximum(recorder: Recorder) -> None:
    agent = await started(recorder, max_frame_size=1024)
    try:
        client = await Client.connect(agent)
        answer = await client.hello()
        assert isinstance(answer, AgentHello)
        assert answer.max_frame_size == 1024
        await client.send(notify(1, 1, n=1, pad="x" * 1100))  # fits HAProxy's 16380, not the negotiated 1024
        await client.disconnected(Status.TOO_BIG)
    finally:
        await agent.close()


@pytest.mark.parametrize(
    ("hello", "status"),
    [
        (HaproxyHello(supported_versions="1.0", max_frame_size=16380, capabilities=""), Status.BAD_VERSION),
        (HaproxyHello(supported_versions="\u00b2.0", max_frame_size=16380, capabilities=""), Status.BAD_VERSION),
        (HaproxyHello(supported_versions="2.0", max_frame_size=255, capabilities=""), Status.BAD_FRAME_SIZE),
    ],
)
async def test_hello_refused(agent: SpoaAgent, hello: HaproxyHello, status: Status) -> None:
    client = await Client.connect(agent)
    assert (await client.hello(hello)).status_code == status  # type: ignore[union-attr]
    assert await client.closed()


async def test_hello_missing_capabilities_is_status_7(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    payload = spop.encode_kv_list(
        [("supported-versions", "2.0"), ("max-frame-size", spop.TypedInt(spop.DataType.UINT32, 16380))]
    )
    body = bytes([FrameType.HAPROXY_HELLO]) + b"\x00\x00\x00\x01\x00\x00" + payload
    await client.send(struct.pack(">I", len(body)) + body)
    await client.disconnected(Status.NO_CAPABILITIES)


async def test_agent_disconnect_fits_the_minimum_frame_size_whatever_the_detail(agent: SpoaAgent) -> None:
    """The detail names the peer's duplicated key; 150 non-ASCII characters made a 373-byte AGENT-DISCONNECT,
    over the 256 bytes HAProxy may have negotiated (found when the spop fuzz target checked its disconnects)."""
    client = await Client.connect(agent)
    items: list[tuple[str, spop.EncodableValue]] = [
        ("supported-versions", "2.0"),
        ("max-frame-size", spop.TypedInt(spop.DataType.UINT32, 256)),
        ("capabilities", ""),
        ("\u00e9" * 150, 1),
        ("\u00e9" * 150, 2),
    ]
    body = bytes([FrameType.HAPROXY_HELLO]) + b"\x00\x00\x00\x01\x00\x00" + spop.encode_kv_list(items)
    await client.send(struct.pack(">I", len(body)) + body)
    prefix = await client.reader.readexactly(4)
    assert struct.unpack(">I", prefix)[0] <= spop.MIN_FRAME_SIZE
    frame = spop.decode_frame(await client.reader.readexactly(struct.unpack(">I", prefix)[0]))
    assert isinstance(frame, AgentDisconnect) and frame.status_code == Status.INVALID
    assert frame.message.startswith("invalid frame received: duplicated key")
    assert await client.closed()


async def test_recorded_healthcheck_gets_agent_hello_then_close(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    await client.send((DATA / "haproxy-2.8-healthcheck-hello.bin").read_bytes())
    assert await client.frame() == AgentHello(version="2.0", max_frame_size=16380, capabilities="pipelining")
    assert await client.closed()
    assert agent.stats.healthchecks == 1


# --- NOTIFY / ACK -----------------------------------------------------------------------------------------------


async def test_recorded_notify_gets_the_handlers_actions(agent: SpoaAgent, recorder: Recorder) -> None:
    client = await Client.connect(agent)
    await client.send((DATA / "haproxy-2.8-hello.bin").read_bytes())
    assert isinstance(await client.frame(), AgentHello)
    await client.send((DATA / "haproxy-2.8-notify.bin").read_bytes())
    assert await client.frame() == Ack(stream_id=0, frame_id=1, actions=allow("ok-"))
    [(name, args)] = recorder.calls
    assert name == "check-request"
    assert args["name"] == "Zoë"
    assert args["src"] == IPv4Address("127.0.0.1")
    assert args["auth"] == "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ6b2UifQ.c2ln"
    assert args["tls"] is False
    client.close()


async def test_ack_echoes_large_ids_and_carries_unset_var(recorder: Recorder) -> None:
    async def handler(name: str, args: Mapping[str, Value]) -> Sequence[Action]:
        return (SetVar(scope=Scope.REQUEST, name="n", value=args["n"]), spop.UnsetVar(scope=TXN, name="gone"))

    agent = await started(handler)
    try:
        client = await Client.connect(agent)
        await client.hello()
        await client.send(notify(2**40 + 7, 2**33, n=-5))
        assert await client.frame() == Ack(
            stream_id=2**40 + 7,
            frame_id=2**33,
            actions=(SetVar(scope=Scope.REQUEST, name="n", value=-5), spop.UnsetVar(scope=TXN, name="gone")),
        )
    finally:
        await agent.close()


async def test_non_utf8_value_reaches_the_handler_and_the_connection_survives(
    agent: SpoaAgent, recorder: Recorder
) -> None:
    client = await Client.connect(agent)
    await client.hello()
    await client.send(notify(1, 1, n=InvalidString(b"Zo\xc3(")))
    assert await client.frame() == Ack(stream_id=1, frame_id=1, actions=allow("ok-InvalidString(raw=b'Zo\\xc3(')"))
    assert recorder.calls[0][1]["n"] == InvalidString(b"Zo\xc3(")
    await client.send(notify(1, 2, n=2))
    assert await client.frame() == Ack(stream_id=1, frame_id=2, actions=allow("ok-2"))


async def test_fifty_pipelined_notifies_answered_out_of_order_with_matching_ids(
    agent: SpoaAgent, recorder: Recorder
) -> None:
    client = await Client.connect(agent)
    await client.hello()
    # earlier NOTIFYs sleep longer, so a concurrent agent answers them last
    await client.send(b"".join(notify(1000 + i, i, n=i, delay=(50 - i) * 2) for i in range(50)))
    acks = [await client.frame() for _ in range(50)]
    assert all(isinstance(ack, Ack) for ack in acks)
    order = [ack.frame_id for ack in acks]  # type: ignore[union-attr]
    assert sorted(order) == list(range(50))
    assert order != list(range(50))  # really pipelined, not one at a time
    for ack in acks:
        assert isinstance(ack, Ack)
        assert ack.stream_id == 1000 + ack.frame_id
        assert ack.actions == allow(f"ok-{ack.frame_id}")
    assert recorder.max_active > 1


async def test_max_in_flight_is_respected() -> None:
    recorder = Recorder(delay=0.03)
    agent = await started(recorder, max_in_flight=4)
    try:
        client = await Client.connect(agent)
        await client.hello()
        await client.send(b"".join(notify(1, i, n=i) for i in range(20)))
        acks = [await client.frame() for _ in range(20)]
        assert sorted(ack.frame_id for ack in acks) == list(range(20))  # type: ignore[union-attr]
        assert recorder.max_active == 4
    finally:
        await agent.close()


# --- fail closed ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (notify(1, 1, name="other", n=1), "unknown_message"),
        (notify(1, 1, name="check", m=1), "missing_argument"),
        (
            spop.encode_frame(
                Notify(stream_id=1, frame_id=1, messages=(Message(name="check", args=(("n", 1), ("n", 2))),))
            ),
            "duplicate_argument",
        ),
        (
            # two messages in one NOTIFY: one good, one unknown → only the deny actions, no "ok" left behind
            spop.encode_frame(
                Notify(
                    stream_id=1,
                    frame_id=1,
                    messages=(Message(name="check", args=(("n", 1),)), Message(name="zzz", args=())),
                )
            ),
            "unknown_message",
        ),
    ],
)
async def test_bad_messages_get_a_deny_ack(agent: SpoaAgent, recorder: Recorder, frame: bytes, reason: str) -> None:
    client = await Client.connect(agent)
    await client.hello()
    await client.send(frame)
    assert await client.frame() == Ack(stream_id=1, frame_id=1, actions=deny(reason))
    assert all(name == "check" for name, _ in recorder.calls)
    await client.send(notify(1, 2, n=7))  # the connection is still fine
    assert await client.frame() == Ack(stream_id=1, frame_id=2, actions=allow("ok-7"))


async def test_duplicated_argument_is_denied_even_without_a_message_table(recorder: Recorder) -> None:
    agent = await started(recorder)
    try:
        client = await Client.connect(agent)
        await client.hello()
        dup = Message(name="anything", args=(("", 1), ("", 2)))
        await client.send(spop.encode_frame(Notify(stream_id=4, frame_id=5, messages=(dup,))))
        assert await client.frame() == Ack(stream_id=4, frame_id=5, actions=deny("duplicate_argument"))
        assert recorder.calls == []
    finally:
        await agent.close()


async def test_message_args() -> None:
    assert message_args("m", (("a", 1), ("b", None)), None) == {"a": 1, "b": None}
    assert message_args("m", (("a", 1), ("x", 2)), {"m": ("a",)}) == {"a": 1, "x": 2}
    for args, table, reason in [
        ((("a", 1), ("a", 1)), None, "duplicate_argument"),
        ((("a", 1),), {"m": ("a", "b")}, "missing_argument"),
        ((("a", 1),), {"n": ("a",)}, "unknown_message"),
    ]:
        with pytest.raises(MessageError) as info:
            message_args("m", args, table)
        assert info.value.reason == reason


async def test_handler_exception_and_message_error_deny_and_log(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(name: str, args: Mapping[str, Value]) -> Sequence[Action]:
        if args["n"] == 1:
            raise RuntimeError("boom")
        if args["n"] == 2:
            raise MessageError("bad_token", "signature")
        if args["n"] == 3:
            return [object()]  # type: ignore[list-item]
        if args["n"] == 4:
            raise TimeoutError("the handler's own timeout, not ours")
        return allow()

    agent = await started(handler)
    try:
        client = await Client.connect(agent)
        await client.hello()
        with caplog.at_level(logging.WARNING, logger="idgate.spoa"):
            for n, reason in [(1, "handler_error"), (2, "bad_token"), (3, "handler_error"), (4, "handler_error")]:
                await client.send(notify(1, n, n=n))
                assert await client.frame() == Ack(stream_id=1, frame_id=n, actions=deny(reason))
        await client.send(notify(1, 9, n=9))
        assert await client.frame() == Ack(stream_id=1, frame_id=9, actions=allow())
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.spoa"]
        assert [line["reason"] for line in lines if line["event"] == "spoa_deny"] == [
            "handler_error",
            "bad_token",
            "handler_error",
            "handler_error",
        ]
        assert "boom" in lines[0]["error"]
        assert agent.stats.handler_errors == 3
    finally:
        await agent.close()


async def test_slow_handler_gets_deny_within_handler_timeout() -> None:
    async def handler(name: str, args: Mapping[str, Value]) -> Sequence[Action]:
        if args["n"] == 1:
            await asyncio.sleep(30)
        return allow()

    agent = await started(handler, handler_timeout=0.2)
    try:
        client = await Client.connect(agent)
        await client.hello()
        started_at = time.monotonic()
        await client.send(notify(1, 1, n=1) + notify(1, 2, n=2))
        assert await client.frame() == Ack(stream_id=1, frame_id=2, actions=allow())  # not blocked by the slow one
        assert await client.frame() == Ack(stream_id=1, frame_id=1, actions=deny("handler_timeout"))
        assert 0.18 <= time.monotonic() - started_at < 0.2 + 0.5
        assert agent.stats.handler_timeouts == 1
    finally:
        await agent.close()


async def test_deny_actions_that_fail_give_an_empty_ack(recorder: Recorder) -> None:
    def broken_deny(reason: str) -> Sequence[Action]:
        raise RuntimeError("misconfigured")

    agent = SpoaAgent(handler=recorder, deny_actions=broken_deny, messages={"check": ("n",)})
    await agent.start("127.0.0.1", 0)
    try:
        client = await Client.connect(agent)
        await client.hello()
        await client.send(notify(1, 1, name="nope"))
        assert await client.frame() == Ack(stream_id=1, frame_id=1, actions=())
    finally:
        await agent.close()


async def test_ack_too_large_for_the_frame_is_denied() -> None:
    async def handler(name: str, args: Mapping[str, Value]) -> Sequence[Action]:
        return (SetVar(scope=TXN, name="blob", value="x" * 2000),)

    agent = await started(handler, max_frame_size=1024)
    try:
        client = await Client.connect(agent)
        await client.hello()
        await client.send(notify(1, 1, n=1))
        assert await client.frame() == Ack(stream_id=1, frame_id=1, actions=deny("ack_too_large"))
    finally:
        await agent.close()


# --- hostile peers ----------------------------------------------------------------------------------------------


async def test_frame_length_beyond_maximum_is_status_3_without_reading_it(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    await client.hello()
    await client.send(struct.pack(">I", 16381))  # no body sent at all: the agent must not wait for it
    await client.disconnected(Status.TOO_BIG)


async def test_huge_length_before_hello_is_status_3(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    await client.send(b"\xff\xff\xff\xff")
    await client.disconnected(Status.TOO_BIG)


async def test_truncated_varint_is_status_4(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    await client.hello()
    body = bytes([FrameType.NOTIFY]) + b"\x00\x00\x00\x01" + b"\x01" + b"\xf0"  # frame-id varint cut short
    await client.send(struct.pack(">I", len(body)) + body)
    await client.disconnected(Status.INVALID)


async def test_string_length_beyond_the_frame_is_status_4(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    await client.hello()
    payload = b"\x05check\x01\x01n\x08" + spop.encode_varint(4 << 30) + b"abc"
    body = bytes([FrameType.NOTIFY]) + b"\x00\x00\x00\x01\x01\x01" + payload
    await client.send(struct.pack(">I", len(body)) + body)
    await client.disconnected(Status.INVALID)


async def test_notify_before_hello_is_status_4(agent: SpoaAgent, recorder: Recorder) -> None:
    client = await Client.connect(agent)
    await client.send(notify(1, 1, n=1))
    await client.disconnected(Status.INVALID)
    assert recorder.calls == []


async def test_fragmented_notify_is_status_10(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    await client.hello()
    await client.send(spop.encode_frame(Notify(stream_id=1, frame_id=1, messages=()), flags=0))
    await client.disconnected(Status.FRAGMENTATION)


async def test_second_hello_and_agent_frames_are_status_4(agent: SpoaAgent) -> None:
    for frame in (HELLO, Ack(stream_id=1, frame_id=1, actions=())):
        client = await Client.connect(agent)
        await client.hello()
        await client.send(spop.encode_frame(frame))
        await client.disconnected(Status.INVALID)


async def test_unknown_frame_type_is_skipped(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    await client.hello()
    body = b"\x32\x00\x00\x00\x01\x00\x00whatever"
    await client.send(struct.pack(">I", len(body)) + body + notify(3, 3, n=3))
    assert await client.frame() == Ack(stream_id=3, frame_id=3, actions=allow("ok-3"))


@pytest.mark.parametrize("partial", [b"\x00\x00", b"\x00\x00\x00\x40" + b"\x03\x00\x00"], ids=["length", "body"])
async def test_half_frame_then_silence_is_closed_after_read_timeout(recorder: Recorder, partial: bytes) -> None:
    agent = await started(recorder, read_timeout=0.3, idle_timeout=30)
    try:
        client = await Client.connect(agent)
        await client.hello()
        started_at = time.monotonic()
        await client.send(partial)
        await client.disconnected(Status.TIMEOUT)
        assert 0.28 <= time.monotonic() - started_at < 0.3 + 0.5
    finally:
        await agent.close()


async def test_silent_connection_without_hello_is_closed_after_read_timeout(recorder: Recorder) -> None:
    agent = await started(recorder, read_timeout=0.3)
    try:
        client = await Client.connect(agent)
        started_at = time.monotonic()
        await client.disconnected(Status.TIMEOUT)
        assert time.monotonic() - started_at < 0.3 + 0.5
    finally:
        await agent.close()


async def test_idle_connection_is_closed_normally(recorder: Recorder) -> None:
    agent = await started(recorder, idle_timeout=0.3)
    try:
        client = await Client.connect(agent)
        await client.hello()
        frame = await client.disconnected(Status.NORMAL)
        assert frame.message == "idle timeout"
    finally:
        await agent.close()


async def test_haproxy_disconnect_is_answered_and_closed(agent: SpoaAgent) -> None:
    client = await Client.connect(agent)
    await client.hello()
    await client.send(spop.encode_frame(HaproxyDisconnect(status_code=0, message="normal")))
    await client.disconnected(Status.NORMAL)


async def test_close_answers_in_flight_then_disconnects() -> None:
    recorder = Recorder(delay=0.2)
    agent = await started(recorder)
    port = agent.port
    client = await Client.connect(agent)
    await client.hello()
    await client.send(notify(1, 1, n=1))
    await asyncio.sleep(0.05)  # the handler is running
    await agent.close()
    assert await client.frame() == Ack(stream_id=1, frame_id=1, actions=allow("ok-1"))
    frame = await client.disconnected(Status.NORMAL)
    assert frame.message == "agent shutting down"
    with pytest.raises(OSError, match=r"Connect call failed|Connection refused"):
        await asyncio.open_connection("127.0.0.1", port)  # no longer listening


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_agent_under_uvloop(anyio_backend: object) -> None:
    pytest.importorskip("uvloop")
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    recorder = Recorder(delay=0.05)
    agent = await started(recorder)
    client = await Client.connect(agent)
    await client.hello()
    await client.send(b"".join(notify(1, i, n=i) for i in range(5)))
    assert sorted([(await client.frame()).frame_id for _ in range(5)]) == list(range(5))  # type: ignore[union-attr]
    await client.send(notify(1, 9, n=9))
    await asyncio.sleep(0.01)
    await agent.close()  # graceful close pauses reading on uvloop's transport too
    assert await client.frame() == Ack(stream_id=1, frame_id=9, actions=allow("ok-9"))
    await client.disconnected(Status.NORMAL)


async def test_constructor_validation() -> None:
    async def handler(name: str, args: Mapping[str, Value]) -> Sequence[Action]:
        return ()

    for bad in ({"max_frame_size": 255}, {"max_frame_size": 16381}, {"max_in_flight": 0}, {"handler_timeout": 0}):
        with pytest.raises(ValueError, match="must be"):
            SpoaAgent(handler=handler, **bad)  # type: ignore[arg-type]


# --- trusted callers ---------------------------------------------------------------------------------------------


async def test_untrusted_peer_is_closed_before_hello(recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    refused: list[str] = []
    agent = await started(recorder, trusted_callers=parse_networks(["127.0.0.1/32"]), on_untrusted=refused.append)
    try:
        with caplog.at_level(logging.WARNING, logger="idgate.spoa"):
            reader, writer = await asyncio.open_connection("127.0.0.1", agent.port, local_addr=("127.0.0.2", 0))
            outsider = Client(reader, writer)
            with contextlib.suppress(ConnectionError):
                await outsider.send(spop.encode_frame(HELLO))
                await outsider.send(notify(1, 1, n=1))
            assert await outsider.closed()  # no AGENT-HELLO, no ACK: nothing but the close
        insider = await Client.connect(agent)  # 127.0.0.1 is trusted: served as usual
        assert isinstance(await insider.hello(), AgentHello)
        await insider.send(notify(1, 1, n=1))
        assert await insider.frame() == Ack(stream_id=1, frame_id=1, actions=allow("ok-1"))
    finally:
        await agent.close()
    assert refused == ["127.0.0.2"]
    assert recorder.calls == [("check", {"n": 1})]  # only the trusted peer's NOTIFY reached the handler
    assert (agent.stats.untrusted_callers, agent.stats.connections) == (1, 1)
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.spoa"]
    assert [e["event"] for e in events] == ["spoa_untrusted_caller"] and "127.0.0.2" in events[0]["peer"]


async def test_default_trusts_loopback_only_and_a_failing_hook_still_refuses(recorder: Recorder) -> None:
    def broken(peer: str) -> None:
        raise RuntimeError("audit down")

    agent = await started(recorder, on_untrusted=broken)
    try:
        assert agent.trusted_callers == LOOPBACK
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.port, local_addr=("127.0.0.3", 0))
        assert await Client(reader, writer).closed()
        assert isinstance(await (await Client.connect(agent)).hello(), AgentHello)
    finally:
        await agent.close()
    assert agent.stats.untrusted_callers == 1


async def test_an_empty_trusted_list_refuses_everyone(recorder: Recorder) -> None:
    agent = await started(recorder, trusted_callers=())
    try:
        client = await Client.connect(agent)
        with contextlib.suppress(ConnectionError):
            await client.send(spop.encode_frame(HELLO))
        assert await client.closed()
    finally:
        await agent.close()
    assert (agent.stats.untrusted_callers, agent.stats.connections, recorder.calls) == (1, 0, [])


# --- TLS ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return generate_dev_certs(tmp_path_factory.mktemp("spoa-tls"))


async def tls_client(agent: SpoaAgent, certs: DevCerts, *, client_cert: bool) -> Client:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client_cert:
        context.load_cert_chain(str(certs.cert), str(certs.key))
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port, ssl=context, server_hostname="localhost")
    return Client(reader, writer)


@pytest.mark.parametrize("anyio_backend", ["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_spop_over_mutual_tls(anyio_backend: object, tls_files: DevCerts, recorder: Recorder) -> None:
    """TLS from the first byte on both event loops (uvloop loses a ClientHello that an upgraded stream buffered)."""
    uvloop = anyio_backend != "asyncio"
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop") is uvloop
    context = server_context(
        TlsConfig(cert_file=str(tls_files.cert), key_file=str(tls_files.key), ca_file=str(tls_files.ca))
    )
    agent = await started(recorder, ssl_context=context, read_timeout=0.5)
    try:
        for n in range(3):  # a few in a row: every handshake must complete, not just a lucky first one
            client = await tls_client(agent, tls_files, client_cert=True)
            assert isinstance(await client.hello(), AgentHello)
            await client.send(notify(1, n, n=n))
            assert await client.frame() == Ack(stream_id=1, frame_id=n, actions=allow(f"ok-{n}"))
        anonymous = await tls_client(agent, tls_files, client_cert=False)  # TLS 1.3: refused after the handshake
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await anonymous.send(spop.encode_frame(HELLO))
        assert await anonymous.closed()
        plain = await Client.connect(agent)  # clear SPOP to a TLS port: not a ClientHello
        with contextlib.suppress(ConnectionError):
            await plain.send(spop.encode_frame(HELLO))
        assert await plain.closed()
        silent = await Client.connect(agent)  # no ClientHello at all: cut after read_timeout
        assert await silent.closed(wait=3.0)
    finally:
        await agent.close()
    assert agent.stats.connections == 3 and agent.stats.tls_errors == 3
    assert len(recorder.calls) == 3


# --- real HAProxy 2.8 -------------------------------------------------------------------------------------------


async def test_through_real_haproxy(tmp_path: Path) -> None:
    from idgate_devstack.haproxy import haproxy_binary

    try:
        binary = haproxy_binary()
    except RuntimeError:
        pytest.skip("no HAProxy binary")

    hang = asyncio.Event()

    async def handler(name: str, args: Mapping[str, Value]) -> Sequence[Action]:
        if hang.is_set():
            await asyncio.sleep(0.8)  # longer than HAProxy's "timeout processing", shorter than handler_timeout
        if args["method"] == "GET" and args["name"] == "Zoë":
            return allow(f"allow {args['path']}")
        return deny("not_zoe")

    agent = await started(handler, messages={"check-request": ("method", "host", "path", "src", "auth", "name")})
    front = free_tcp_port()
    (tmp_path / "spoe.conf").write_text(
        "[idgate]\n"
        "spoe-agent idgate-agent\n"
        "    messages check-request\n"
        "    option var-prefix idgate\n"
        "    timeout hello 500ms\n"
        "    timeout idle 10s\n"
        "    timeout processing 500ms\n"
        "    use-backend idgate-spoa\n"
        "spoe-message check-request\n"
        "    args method=method host=req.hdr(host) path=path src=src auth=req.fhdr(authorization)"
        " cookie=req.fhdr(cookie) name=req.fhdr(x-name)\n"
        "    event on-frontend-http-request\n"
    )
    (tmp_path / "haproxy.cfg").write_text(
        "global\n"
        "    log stderr format raw local0 info\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 1s\n"
        "    timeout client 5s\n"
        "    timeout server 15s\n"
        "frontend fe\n"
        f"    bind 127.0.0.1:{front}\n"
        f"    filter spoe engine idgate config {tmp_path}/spoe.conf\n"
        '    http-request return status 200 content-type text/plain lf-string "%[var(txn.idgate.decision)]"\n'
        "backend idgate-spoa\n"
        "    mode tcp\n"
        "    option spop-check\n"
        f"    server agent 127.0.0.1:{agent.port} check inter 200ms\n"
    )
    proc = await asyncio.create_subprocess_exec(
        binary, "-db", "-f", str(tmp_path / "haproxy.cfg"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    headers = {"X-Name": "Zoë".encode(), "Authorization": b"Bearer abc"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{front}", timeout=5) as http:
            deadline = time.monotonic() + 5
            while True:
                try:
                    response = await http.get("/app/page?q=1", headers=headers)
                    if response.text:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "HAProxy never answered with the agent's variable"
                await asyncio.sleep(0.05)
            assert response.status_code == 200
            assert response.text == "allow /app/page"
            assert (await http.get("/x", headers={"X-Name": "Bob"})).text == "deny"
            await asyncio.sleep(0.3)
            assert agent.stats.healthchecks >= 1

            hang.set()  # a hung agent: HAProxy gives up after "timeout processing" and the variable is absent
            started_at = time.monotonic()
            response = await http.get("/app/page", headers=headers)
            assert response.text == ""
            assert 0.45 <= time.monotonic() - started_at < 0.5 + 0.5
            hang.clear()

            await agent.close()  # the agent goes away: the variable is simply absent
            started_at = time.monotonic()
            response = await http.get("/app/page", headers=headers)
            assert response.status_code == 200
            assert response.text == ""
            assert time.monotonic() - started_at < 0.5 + 0.5
    finally:
        await agent.close()
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- quick: answers the agent gives without the handler (idgate's memo) ---------------------------------------------


async def test_quick_answers_without_the_handler_and_falls_through_on_none_errors_and_bad_messages(
    recorder: Recorder,
) -> None:
    seen: list[tuple[str, int]] = []

    def quick(name: str, args: Mapping[str, Value], max_bytes: int) -> bytes | None:
        seen.append((name, max_bytes))
        n = args.get("n")
        if n == 1:
            return spop.encode_actions(allow("memo"))
        if n == 2:
            raise RuntimeError("boom")
        return None

    agent = await started(recorder, messages={"check": ("n",)}, quick=quick)
    try:
        client = await Client.connect(agent)
        await client.hello()
        for stream, args in ((1, {"n": 1}), (2, {"n": 2}), (3, {"n": 3}), (4, {"other": 1})):
            await client.send(notify(stream, 1, **args))
            ack = await client.frame()
            assert isinstance(ack, Ack) and ack.stream_id == stream and ack.frame_id == 1
            values = {a.name: a.value for a in ack.actions if isinstance(a, SetVar)}
            expected = {
                1: {"decision": "memo"},
                2: {"decision": "ok-2"},  # quick raised: the handler decides
                3: {"decision": "ok-3"},  # quick had nothing: the handler decides
                4: {"decision": "deny", "reason": "missing_argument"},  # checked before quick, denied as ever
            }[stream]
            assert values == expected
        assert [args["n"] for _, args in recorder.calls] == [2, 3]
        assert seen == [("check", 16380 - 25)] * 3  # the frame size less the largest ACK header
        assert agent.stats.notifies == 4 and agent.stats.denies == 1
    finally:
        await agent.close()
