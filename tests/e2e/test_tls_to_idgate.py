"""TLS between HAProxy and idgate, end to end through the real HAProxy 2.8, in both modes (the ``tls_stack``
fixture: IDGATE_SPOA_TLS / IDGATE_SERVICE_TLS with the dev CA; mutual TLS on the SPOA port, and on the HTTP port in
SPOE mode; idgate's /metrics on ``server.metrics_bind``).

What a user meets: the same answers as over clear TCP (bearer allow and deny, a browser login through the
``/.idgate/`` endpoints); what an attacker meets: idgate's ports speak nothing but TLS, refuse a peer without a
client certificate, and an HAProxy that trusts another CA gets no answer at all, so it fails closed (503).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from stack import Stack, browser_login

from idgate_devstack.certs import generate_dev_certs
from idgate_devstack.haproxy import Haproxy, free_tcp_port, split_bind

pytestmark = pytest.mark.e2e
HELLO = (Path(__file__).resolve().parents[1] / "data/spop/haproxy-2.8-hello.bin").read_bytes()


def test_bearer_allow_and_deny_over_tls(tls_stack: Stack) -> None:
    stack = tls_stack
    stack.reset_upstreams()
    token = stack.login("alice").access_token
    with stack.client() as client:
        allowed = client.get(stack.url + "/app/tls", headers={"authorization": f"Bearer {token}"})
        denied = client.get(stack.url + "/app/tls")
    assert allowed.status_code == 200, allowed.text
    assert denied.status_code == 401
    [record] = stack.upstreams["app"].requests()
    assert ("x-auth-user", "alice") in [(n.lower(), v) for n, v in record["headers"]]
    log = stack.haproxy.log_text()
    assert "idgate=200 decision=allow" in log and "failing closed" not in log


def test_browser_login_through_the_idgate_endpoints_over_tls(tls_stack: Stack) -> None:
    with tls_stack.client() as client:
        result = browser_login(tls_stack, client, "/app/signed-in")
    assert result.saw_login_form and result.response.status_code == 200, result.hops
    assert str(result.response.request.url) == tls_stack.url + "/app/signed-in"


def test_spop_health_checks_pass_over_tls(tls_stack: Stack) -> None:
    if tls_stack.mode != "spoe":
        pytest.skip("HAProxy checks the SPOA agent in SPOE mode only")
    assert metric(tls_stack, "idgate_spoa_healthchecks_total") >= 1  # spop-check over mutual TLS
    assert metric(tls_stack, "idgate_spoa_connections_total") >= 1


def spoa_answer(stack: Stack, *, tls: bool, client_cert: bool) -> bytes:
    """Send HAProxy 2.8's recorded HELLO to idgate's SPOA port (clear, or TLS with or without the dev client
    certificate); the bytes that came back before the agent closed (b"" for none, a refused handshake included)."""
    host, port = split_bind(stack.settings.spoa_addr)
    with socket.create_connection((host, port), timeout=3) as raw:
        if not tls:
            raw.sendall(HELLO)
            return _recv(raw)
        context = ssl.create_default_context(cafile=str(stack.certs.ca))
        if client_cert:
            context.load_cert_chain(str(stack.certs.cert), str(stack.certs.key))
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(HELLO)
                return _recv(conn)
        except (ssl.SSLError, ConnectionError):  # TLS 1.2 refuses in the handshake, TLS 1.3 right after it
            return b""


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(4096)
    except (ssl.SSLError, ConnectionError):
        return b""


def test_the_spoa_port_speaks_only_mutual_tls(tls_stack: Stack) -> None:
    errors_before = metric(tls_stack, "idgate_spoa_tls_errors_total")
    assert spoa_answer(tls_stack, tls=False, client_cert=False) == b""  # clear SPOP: no AGENT-HELLO
    assert spoa_answer(tls_stack, tls=True, client_cert=False) == b""  # TLS without a client certificate
    answer = spoa_answer(tls_stack, tls=True, client_cert=True)
    assert answer[4:5] == b"\x65"  # AGENT-HELLO (frame type 101) for the right certificate
    assert metric(tls_stack, "idgate_spoa_tls_errors_total") >= errors_before + 2
    assert "spoa_tls_failed" in tls_stack.idgate.log_text()


def metric(stack: Stack, name: str) -> float:
    """The value of the unlabelled sample ``name`` in idgate's /metrics (read on its metrics bind)."""
    lines = [x for x in stack.idgate_metrics().splitlines() if x.startswith(name + " ")]
    assert len(lines) == 1, (name, lines)
    return float(lines[0].split()[1])


def test_the_http_port_speaks_only_tls(tls_stack: Stack) -> None:
    stack = tls_stack
    plain_url = stack.idgate.url.replace("https://", "http://")
    with httpx.Client(timeout=3) as plain, pytest.raises(httpx.TransportError):
        plain.get(plain_url + "/readyz")
    with stack.idgate.client(timeout=3) as client:
        assert client.get(stack.idgate.url + "/readyz").status_code == 200
        # /metrics lives on server.metrics_bind: the HTTPS port answers 404 even to a trusted caller
        assert client.get(stack.idgate.url + "/metrics").status_code == 404
    assert "idgate_decisions_total" in stack.idgate_metrics()
    if stack.mode == "spoe":  # mutual TLS on the HTTP port: no client certificate, no answer
        no_cert = ssl.create_default_context(cafile=str(stack.certs.ca))
        with httpx.Client(verify=no_cert, timeout=3) as anonymous, pytest.raises(httpx.TransportError):
            anonymous.get(stack.idgate.url + "/readyz")


def test_an_haproxy_trusting_another_ca_fails_closed(tls_stack: Stack, tmp_path: Path) -> None:
    """A second HAProxy in front of the same idgate, but trusting a CA that did not sign idgate's certificate (as
    if someone impersonated idgate): every auth call fails the certificate check, so every request is 503 and
    nothing reaches an upstream; the login endpoints (be_idgate) fail too."""
    stack = tls_stack
    stack.reset_upstreams()
    other = generate_dev_certs(tmp_path / "other")
    settings = dataclasses.replace(
        stack.settings,
        https_bind=f"127.0.0.1:{free_tcp_port()}",
        http_bind=f"127.0.0.1:{free_tcp_port()}",
        stats_bind=f"127.0.0.1:{free_tcp_port()}",
        h2c_bind=None,
        spoa_tls_ca=other.ca,
        service_tls_ca=other.ca,
        stats_socket=tmp_path / "haproxy.sock",
    )
    token = stack.login("alice").access_token
    with Haproxy(settings, log_path=tmp_path / "haproxy.log") as haproxy:
        with stack.client() as client:
            for _ in range(3):
                response = client.get(settings.https_url + "/app/x", headers={"authorization": f"Bearer {token}"})
                assert response.status_code == 503, response.text
            assert client.get(settings.https_url + "/.idgate/start?rd=/").status_code == 503
        log = haproxy.log_text()
    assert stack.upstream_hits() == 0
    assert "decision=allow" not in log
    lines = [json.loads(x) for x in stack.idgate.log_text().splitlines() if x.startswith("{")]
    events = [x for x in lines if str(x.get("event", "")).startswith("spoa_tls")]
    assert stack.mode != "spoe" or events  # idgate saw the handshakes fail (HAProxy aborts them)
