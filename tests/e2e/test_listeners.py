"""idgate's own listeners, as HAProxy and an outsider meet them: who may connect to the SPOA agent, and who may
read idgate's ``/metrics``.

The stack runs in both modes; idgate's SPOA agent listens in both (HAProxy uses it in SPOE mode only), with the
default ``spoa.trusted_callers`` (loopback 127.0.0.1 and ::1). HAProxy connects from 127.0.0.1; an outsider is
played by a socket bound to 127.0.0.2 (any 127/8 address is local on Linux, and outside 127.0.0.1/32).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
from pathlib import Path

import httpx
import pytest
from stack import Stack

from idgate_devstack.haproxy import Haproxy, free_tcp_port, split_bind

pytestmark = pytest.mark.e2e
HELLO = (Path(__file__).resolve().parents[1] / "data/spop/haproxy-2.8-hello.bin").read_bytes()
OUTSIDER = "127.0.0.2"


def spoa_exchange(stack: Stack, source: str) -> bytes:
    """Connect to idgate's SPOA port from ``source``, send HAProxy 2.8's recorded HELLO, return the answer bytes
    received before the agent closed (b"" for a close without a word)."""
    host, port = split_bind(stack.settings.spoa_addr)
    with socket.create_connection((host, port), timeout=3, source_address=(source, 0)) as sock:
        with contextlib.suppress(ConnectionError):
            sock.sendall(HELLO)
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


def test_an_outsider_is_closed_before_hello_while_haproxy_is_served(stack: Stack) -> None:
    assert spoa_exchange(stack, OUTSIDER) == b""
    assert spoa_exchange(stack, "127.0.0.1") != b""  # AGENT-HELLO for a trusted peer
    with stack.client() as client:  # HAProxy (127.0.0.1) still gets its answers: a public route is allowed
        assert client.get(stack.url + "/public/x").status_code == 200
        assert client.get(stack.url + "/app/x").status_code == 401
    events = [json.loads(line) for line in stack.idgate.log_text().splitlines() if line.startswith("{")]
    refused = [e for e in events if e.get("event") == "spoa_untrusted_caller"]
    assert refused and OUTSIDER in refused[-1]["peer"]
    audited = [e for e in events if e.get("reasons") == ["untrusted_caller"] and e.get("source") == OUTSIDER]
    assert audited and audited[-1]["status"] == 403 and audited[-1]["allow"] is False
    assert metric(stack.idgate_metrics(), "idgate_spoa_untrusted_callers_total") >= 1


def metric(text: str, name: str) -> float:
    """The value of the sample ``name`` (no labels) in a Prometheus text exposition."""
    values = [float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, (name, values)
    return values[0]


@pytest.mark.parametrize(
    "target",
    [
        "/metrics",
        "/.idgate/metrics",
        "/.idgate/../metrics",
        "/.idgate/%2e%2e/metrics",
        "/.idgate/%2E%2E/metrics",
        "/.idgate/..%2Fmetrics",
        "/.idgate/..%2fmetrics",
        "/.idgate//../metrics",
        "/.idgate/./../metrics",
        "/.idgate/jwks.json/../../metrics",
        "/.IDGATE/../metrics",
        "//metrics",
    ],
)
def test_idgates_metrics_never_leak_through_haproxy(stack: Stack, target: str) -> None:
    """Whatever the spelling, HAProxy's public port never returns idgate's metrics (the request target is sent
    as written: no client-side normalisation)."""
    with stack.client() as client:
        response = client.get(stack.url + "/", extensions={"target": target.encode()})
    assert response.status_code in (400, 401, 403, 404), (response.status_code, response.text[:200])
    assert "idgate_decisions_total" not in response.text


def test_an_outsider_gets_403_from_idgates_metrics_a_trusted_caller_200(stack: Stack) -> None:
    transport = httpx.HTTPTransport(local_address=OUTSIDER)
    with httpx.Client(transport=transport, timeout=5.0) as outsider:
        refused = outsider.get(f"{stack.idgate.url}/metrics")
    assert refused.status_code == 403 and "idgate_" not in refused.text
    assert "idgate_decisions_total" in stack.idgate_metrics()  # 127.0.0.1 is a trusted caller


class Relay:
    """A TCP relay on 127.0.0.1 that reaches ``target`` from the source address ``source``: an HAProxy behind it
    looks, to idgate, like one on an untrusted network."""

    def __init__(self, target: tuple[str, int], source: str) -> None:
        self.target, self.source = target, source
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError):
            upstream = socket.create_connection(self.target, timeout=5, source_address=(self.source, 0))
            with upstream:
                threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
                self._pipe(client, upstream)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()


def test_an_haproxy_outside_the_trusted_callers_gets_no_allow(stack: Stack, tmp_path: Path) -> None:
    """A second HAProxy whose connections reach idgate from 127.0.0.2: SPOE mode, the agent closes it before HELLO
    (no answer: 503); auth_request mode, /auth answers 403 untrusted_caller. Nothing reaches an upstream."""
    stack.reset_upstreams()
    target = stack.settings.spoa_addr if stack.mode == "spoe" else stack.idgate.url.removeprefix("http://")
    relay = Relay(split_bind(target), OUTSIDER)
    settings = dataclasses.replace(
        stack.settings,
        https_bind=f"127.0.0.1:{free_tcp_port()}",
        http_bind=f"127.0.0.1:{free_tcp_port()}",
        stats_bind=f"127.0.0.1:{free_tcp_port()}",
        h2c_bind=None,
        spoa_addr=f"127.0.0.1:{relay.port}",
        auth_url=f"http://127.0.0.1:{relay.port}/auth",
        # auth_request mode: the /auth calls go through the local listener (its own port) to the relay
        auth_lb_bind=f"127.0.0.1:{free_tcp_port()}" if stack.settings.auth_lb_bind else None,
        service_addr=f"127.0.0.1:{relay.port}"
        if stack.mode == "auth_request"
        else stack.idgate.url.removeprefix("http://"),
        stats_socket=tmp_path / "haproxy.sock",
    )
    token = stack.login("alice").access_token
    try:
        with Haproxy(settings, log_path=tmp_path / "haproxy.log"), stack.client() as client:
            answers = {
                client.get(settings.https_url + path, headers={"authorization": f"Bearer {token}"}).status_code
                for path in ("/app/x", "/public/x", "/grafana/")
            }
    finally:
        relay.close()
    assert answers == ({503} if stack.mode == "spoe" else {403})
    assert stack.upstream_hits() == 0
    events = [json.loads(line) for line in stack.idgate.log_text().splitlines() if line.startswith("{")]
    refused = "spoa_untrusted_caller" if stack.mode == "spoe" else "untrusted_caller"
    assert any(e.get("event") == refused and OUTSIDER in str(e.get("peer")) for e in events)
