"""The JWKS fault proxy (idgate_devstack.faultproxy): every mode's answer, fetch counting, hangs released, control
calls; in front of a small HTTPS upstream of this process (the e2e tests put it in front of the real IdP)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from idgate.jwks import parse_jwks
from idgate_devstack.certs import DevCerts, generate_dev_certs
from idgate_devstack.faultproxy import UNUSABLE_JWKS, FaultProxy

UPSTREAM_JWKS = {"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(UPSTREAM_JWKS).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("cache-control", "public, max-age=321")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return generate_dev_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def upstream(certs: DevCerts) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs.cert), str(certs.key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}/certs"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(certs: DevCerts, upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=upstream, tls_cert=certs.cert, tls_key=certs.key, ca_file=certs.ca) as running:
        yield running


def client(certs: DevCerts, timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=str(certs.ca)), timeout=timeout)


def test_pass_relays_the_upstream_answer_and_counts_fetches(proxy: FaultProxy, certs: DevCerts) -> None:
    assert proxy.mode == "pass" and proxy.url.startswith("https://127.0.0.1:") and proxy.url.endswith("/jwks")
    started = time.monotonic()
    with client(certs) as c:
        first, second = c.get(proxy.url), c.get(proxy.url)
        assert c.get(proxy.url.removesuffix("/jwks") + "/other").status_code == 404
    assert first.status_code == 200 and first.json() == UPSTREAM_JWKS
    assert first.headers["cache-control"] == "public, max-age=321"
    assert second.json() == UPSTREAM_JWKS
    assert proxy.fetches == 2 and proxy.fetches_since(started) == 2 and proxy.fetches_since(time.monotonic()) == 0


@pytest.mark.parametrize(
    ("mode", "status", "body"),
    [("empty", 200, {"keys": []}), ("unusable", 200, UNUSABLE_JWKS), ("error", 500, {"error": "server_error"})],
)
def test_fault_modes_answer_what_they_say(
    proxy: FaultProxy, certs: DevCerts, mode: str, status: int, body: object
) -> None:
    proxy.set_mode(mode)  # type: ignore[arg-type]
    with client(certs) as c:
        response = c.get(proxy.url)
    assert (response.status_code, response.json()) == (status, body)
    proxy.set_mode("pass")
    with client(certs) as c:
        assert c.get(proxy.url).json() == UPSTREAM_JWKS
    assert proxy.fetches == 2


def test_the_unusable_set_has_no_usable_key_for_idgate() -> None:
    keys, skipped = parse_jwks(UNUSABLE_JWKS, pinned=frozenset({"RS256", "ES256", "HS256"}))
    assert keys == {} and skipped == len(UNUSABLE_JWKS["keys"])


def test_hang_answers_nothing_until_the_mode_changes(proxy: FaultProxy, certs: DevCerts) -> None:
    proxy.set_mode("hang")
    with client(certs, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        c.get(proxy.url)
    outcome: list[BaseException | int] = []

    def fetch() -> None:
        try:
            with client(certs) as c:
                outcome.append(c.get(proxy.url).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=fetch)
    waiter.start()
    time.sleep(0.3)
    assert outcome == []  # still hanging
    proxy.set_mode("pass")  # releases it: the connection closes without an answer
    waiter.join(timeout=5)
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError)
    assert proxy.fetches == 2


def test_stop_releases_a_hung_request(certs: DevCerts, upstream: str) -> None:
    proxy = FaultProxy(upstream=upstream, tls_cert=certs.cert, tls_key=certs.key, ca_file=certs.ca)
    proxy.start()
    proxy.set_mode("hang")
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            with client(certs) as c:
                c.get(proxy.url)
        except httpx.HTTPError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=fetch)
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    proxy.stop()
    waiter.join(timeout=5)
    assert not waiter.is_alive() and len(errors) == 1 and time.monotonic() - started < 2


def test_control_calls_switch_and_report_without_counting(proxy: FaultProxy, certs: DevCerts) -> None:
    base = proxy.url.removesuffix("/jwks")
    with client(certs) as c:
        assert c.post(base + "/__fault/error").json() == {"mode": "error"}
        assert c.post(base + "/__fault/sideways").status_code == 404
        assert c.get(base + "/__fault").json() == {"mode": "error", "fetches": 0}
        assert c.get(proxy.url).status_code == 500
        assert c.get(base + "/__fault").json() == {"mode": "error", "fetches": 1}
    with pytest.raises(ValueError, match="mode must be one of"):
        proxy.set_mode("sideways")  # type: ignore[arg-type]


def test_an_unreachable_upstream_is_a_502(certs: DevCerts, tmp_path: Path) -> None:
    with (
        FaultProxy(upstream="https://127.0.0.1:9/jwks", tls_cert=certs.cert, tls_key=certs.key, ca_file=certs.ca) as p,
        client(certs) as c,
    ):
        response = c.get(p.url)
    assert response.status_code == 502 and response.json()["error"] == "bad_gateway"
