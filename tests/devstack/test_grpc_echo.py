"""The gRPC echo upstream (idgate_devstack.grpc_echo): a real server in a child process, a real grpcio client.

Covers the ready line and shutdown, the four demo.Echo methods and their records, the control service, the
``call`` command line, and TLS with the dev CA.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
import pytest
from cryptography import x509

from idgate_devstack.certs import generate_dev_certs
from idgate_devstack.grpc_client import (
    ADMIN,
    CHAT,
    CONTROL_RESET_METHOD,
    TICKS,
    WHOAMI,
    EchoStub,
    echo_stub,
    json_deserializer,
    json_serializer,
    open_channel,
)
from idgate_devstack.grpc_echo import READY_RE, GrpcUpstream

MODULE = "idgate_devstack.grpc_echo"


@pytest.fixture(scope="module")
def upstream() -> Iterator[GrpcUpstream]:
    with GrpcUpstream("mod") as up:
        yield up


@pytest.fixture(scope="module")
def channel(upstream: GrpcUpstream) -> Iterator[Any]:
    with upstream.channel() as ch:
        yield ch


@pytest.fixture
def stub(upstream: GrpcUpstream, channel: Any) -> EchoStub:
    """A client of the module's upstream, whose records are cleared."""
    upstream.reset()
    return echo_stub(channel)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", MODULE, "call", *args], capture_output=True, text=True, timeout=30, check=False
    )


def user_metadata(record: Any) -> list[list[str]]:
    """The record's metadata without what grpcio adds itself (user-agent)."""
    return [pair for pair in record["metadata"] if pair[0] != "user-agent"]


@pytest.mark.timeout(30)
def test_ready_line_then_sigterm_stops_promptly_with_a_call_in_flight() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULE, "serve", "--host", "127.0.0.1", "--port", "0", "--name", "solo"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = READY_RE.match(line.rstrip("\n"))
        assert match is not None, line
        assert (match["name"], match["host"]) == ("solo", "127.0.0.1")
        assert line == f"grpc-echo solo listening on 127.0.0.1:{match['port']}\n"
        with open_channel(f"127.0.0.1:{match['port']}") as ch:
            stub = echo_stub(ch)
            assert stub.whoami(timeout=5)["method"] == WHOAMI
            ticks = stub.ticks(2, 600.0)  # would wait 10 minutes for its first message
            control = ch.unary_unary(
                "/idgate.devstack.Control/Requests",
                request_serializer=json_serializer,
                response_deserializer=json_deserializer,
            )
            deadline = time.monotonic() + 5
            while [r["method"] for r in control(None, timeout=5)] != [WHOAMI, TICKS]:
                assert time.monotonic() < deadline, "the Ticks call never reached the server"
                time.sleep(0.02)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
            assert time.monotonic() - started < 4
            with pytest.raises(grpc.RpcError):
                next(ticks)
        assert proc.stdout.read() == ""  # exactly one line
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_whoami_returns_the_metadata_sent_and_records_the_call(upstream: GrpcUpstream, stub: EchoStub) -> None:
    sent = [("authorization", "Bearer tok"), ("x-user", "alice"), ("x-trace-bin", b"\x00\xffbin"), ("x-user", "bob")]
    record = stub.whoami({"any": ["json", 1]}, metadata=sent, timeout=5)
    assert record["method"] == WHOAMI
    assert user_metadata(record) == [
        ["authorization", "Bearer tok"],
        ["x-user", "alice"],
        ["x-trace-bin", "AP9iaW4="],  # base64 of b"\x00\xffbin"
        ["x-user", "bob"],
    ]
    assert record["authority"] == upstream.address  # grpcio's default :authority is the target
    assert upstream.requests() == [record]


def test_admin_is_recorded_under_its_own_method(upstream: GrpcUpstream, stub: EchoStub) -> None:
    assert stub.admin(metadata=[("x-n", "1")], timeout=5)["method"] == ADMIN
    stub.whoami(timeout=5)
    assert [r["method"] for r in upstream.requests()] == [ADMIN, WHOAMI]


def test_reset_clears_the_records_and_control_calls_are_not_recorded(
    upstream: GrpcUpstream, stub: EchoStub, channel: Any
) -> None:
    stub.whoami(timeout=5)
    stub.admin(timeout=5)
    assert len(upstream.requests()) == 2
    reset = channel.unary_unary(
        CONTROL_RESET_METHOD, request_serializer=json_serializer, response_deserializer=json_deserializer
    )
    assert reset(None, timeout=5) == {"reset": 2}
    assert upstream.requests() == []
    stub.whoami(timeout=5)
    upstream.reset()
    assert upstream.requests() == []


def test_ticks_streams_count_messages_each_after_the_interval(upstream: GrpcUpstream, stub: EchoStub) -> None:
    interval = 0.2
    started = time.monotonic()
    arrivals: list[tuple[float, dict[str, int]]] = [(time.monotonic(), m) for m in stub.ticks(3, interval, timeout=10)]
    assert [m for _, m in arrivals] == [{"tick": 0}, {"tick": 1}, {"tick": 2}]
    times = [started] + [t for t, _ in arrivals]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= interval * 0.9 for gap in gaps), gaps
    assert [r["method"] for r in upstream.requests()] == [TICKS]


@pytest.mark.parametrize(
    "body",
    [b'{"count": 1001}', b'{"count": 1.5}', b'{"count": true}', b'{"interval": -1}', b'{"interval": 601}', b"[]", b"{"],
)
def test_ticks_rejects_bad_requests(channel: Any, body: bytes) -> None:
    ticks = channel.unary_stream(TICKS, response_deserializer=json_deserializer)  # raw bytes out
    with pytest.raises(grpc.RpcError) as caught:
        list(ticks(body, timeout=5))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_ticks_deadline_ends_a_long_interval(stub: EchoStub) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ticks(1, 600.0, timeout=0.3))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    assert stub.whoami(timeout=5)["method"] == WHOAMI


def test_chat_echoes_every_message_in_order(upstream: GrpcUpstream, stub: EchoStub) -> None:
    messages = [{"say": "one"}, {"say": {"n": 2}, "delay": 0.2}, {"say": None}, {"say": [3, "three"]}]
    started = time.monotonic()
    assert list(stub.chat(messages, timeout=10)) == [{"echo": m["say"]} for m in messages]
    assert time.monotonic() - started >= 0.2
    assert [r["method"] for r in upstream.requests()] == [CHAT]


def test_call_cli_prints_one_json_line_per_response(upstream: GrpcUpstream, stub: EchoStub) -> None:
    unary = cli("--target", upstream.address, "--token", "tok", "--metadata", "x-team=blue", "Whoami", '{"a": 1}')
    assert unary.returncode == 0, unary.stderr
    (line,) = unary.stdout.splitlines()
    record = json.loads(line)
    assert record["method"] == WHOAMI
    assert user_metadata(record) == [["authorization", "Bearer tok"], ["x-team", "blue"]]

    chat = cli("--target", upstream.address, "Chat", '[{"say": "hi"}, {"say": 2}]')
    assert chat.returncode == 0, chat.stderr
    assert [json.loads(x) for x in chat.stdout.splitlines()] == [{"echo": "hi"}, {"echo": 2}]
    assert [r["method"] for r in upstream.requests()] == [WHOAMI, CHAT]


def test_call_cli_reports_status_on_a_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = cli("--target", f"127.0.0.1:{port}", "--timeout", "5", "Whoami")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("status=UNAVAILABLE message=")


def test_tls_with_the_dev_ca(tmp_path: Path) -> None:
    certs = generate_dev_certs(tmp_path)
    sans = x509.load_pem_x509_certificate(certs.cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "localhost" in sans.value.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in sans.value.get_values_for_type(x509.IPAddress)

    with GrpcUpstream("tls", tls_cert=certs.cert, tls_key=certs.key, ca_file=certs.ca) as up:
        with up.channel() as ch:
            assert echo_stub(ch).whoami(timeout=5)["authority"] == "localhost"
        with open_channel(up.address) as plain, pytest.raises(grpc.RpcError) as caught:
            echo_stub(plain).whoami(timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        result = cli("--target", up.address, "--ca", str(certs.ca), "--server-name", "localhost", "Whoami")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["authority"] == "localhost"
        assert [r["authority"] for r in up.requests()] == ["localhost", "localhost"]


def test_tls_needs_a_ca_for_the_control_calls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ca_file"):
        GrpcUpstream(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
