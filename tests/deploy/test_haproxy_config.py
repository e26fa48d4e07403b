"""The shipped HAProxy config and Lua action against a scripted fake idgate, over real TLS.

Real processes on loopback: HAProxy 2.8 (``haproxy/haproxy.cfg`` + ``haproxy/idgate-auth.lua``), three echo
upstreams (``app``, ``grafana``, ``looker``) and, in a thread of this process, a fake ``/auth`` service whose
answer is chosen by the first segment of the ``X-Idgate-Path`` HAProxy sends (see ``ANSWERS``). Each test
checks what the client got, what the fake auth received and what the upstream saw (through the echo's
control path, not through HAProxy).
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import httpx
import pytest
import wire

from idgate_devstack.certs import DevCerts, generate_dev_certs
from idgate_devstack.echo import EchoRecord, EchoUpstream
from idgate_devstack.haproxy import Haproxy, HaproxySettings, check_config, free_tcp_port, haproxy_binary

Mode = Literal["spoe", "auth_request"]
AUTH_TIMEOUT_MS = 600
SLOW_ANSWER_S = 2.0

FULL_IDENTITY = {
    "X-Idgate-User": "alice",
    "X-Idgate-Email": "alice@example.com",
    "X-Idgate-Name": "Alice Liddell",
    "X-Idgate-Groups": "staff,analysts",
    "X-Idgate-Roles": "viewer,editor",
    "X-Idgate-Role": "Editor",
    "X-Idgate-Subject": "sub-0001",
    "X-Idgate-Issuer": "https://idp.example",
}
# what be_app must send for FULL_IDENTITY, and nothing else identity-like
APP_IDENTITY = {
    "x-auth-user": "alice",
    "x-auth-email": "alice@example.com",
    "x-auth-name": "Alice Liddell",
    "x-auth-groups": "staff,analysts",
    "x-auth-roles": "viewer,editor",
    "x-auth-subject": "sub-0001",
    "x-auth-issuer": "https://idp.example",
}
ALLOW = {"X-Idgate-Decision": "allow", "X-Idgate-Reason": "ok"}
CHALLENGE = 'Bearer realm="idgate", error="invalid_token"'
LOGIN_URL = "https://idp.example/authorize?client_id=idgate&state=abc"


@dataclass(frozen=True)
class Answer:
    """One scripted answer of the fake auth service: status and header fields (repeats allowed)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay_s: float = 0.0


def _allow(upstream: str | None, identity: dict[str, str]) -> Answer:
    hdrs = [*ALLOW.items(), *identity.items()]
    if upstream is not None:
        hdrs.append(("X-Idgate-Upstream", upstream))
    return Answer(200, hdrs)


# first segment of X-Idgate-Path -> answer
ANSWERS: dict[str, Answer] = {
    "allow": _allow("app", FULL_IDENTITY),
    "allow-nouser": _allow("app", {}),
    "grafana": _allow("grafana", FULL_IDENTITY),
    "looker": _allow("looker", FULL_IDENTITY),
    "unauthenticated": Answer(
        401, [("X-Idgate-Decision", "deny"), ("X-Idgate-Reason", "token_expired"), ("WWW-Authenticate", CHALLENGE)]
    ),
    "forbidden": Answer(403, [("X-Idgate-Decision", "deny"), ("X-Idgate-Reason", "policy_denied")]),
    "odd-reason": Answer(403, [("X-Idgate-Decision", "deny"), ("X-Idgate-Reason", "a b,c%d/é")]),
    "malformed": Answer(400, [("X-Idgate-Decision", "deny"), ("X-Idgate-Reason", "duplicate_authorization")]),
    "login": Answer(302, [("X-Idgate-Decision", "deny"), ("Location", LOGIN_URL)]),
    "slow": Answer(200, [*ALLOW.items(), ("X-Idgate-Upstream", "app")], delay_s=SLOW_ANSWER_S),
    "noupstream": _allow(None, FULL_IDENTITY),
    "nosuch": _allow("nosuch", FULL_IDENTITY),
    # answers that must all end in 503 (deny unless an explicit, well-formed allow)
    "dup-user": Answer(
        200, [*ALLOW.items(), ("X-Idgate-Upstream", "app"), ("X-Idgate-User", "a"), ("X-Idgate-User", "b")]
    ),
    "status500": Answer(500, [*ALLOW.items(), ("X-Idgate-Upstream", "app")]),
    "status204": Answer(204, [*ALLOW.items(), ("X-Idgate-Upstream", "app")]),
    "deny200": Answer(200, [("X-Idgate-Decision", "deny"), ("X-Idgate-Upstream", "app"), ("X-Idgate-User", "a")]),
    "nodecision200": Answer(200, [("X-Idgate-Upstream", "app"), ("X-Idgate-User", "alice")]),
    "bad-upstream": _allow("../app", FULL_IDENTITY),
    "302-without-location": Answer(302, [("X-Idgate-Decision", "deny")]),
    # idgate's own 503 (the issuer's keys cannot be had): relayed with its Retry-After and reason
    "keys503": Answer(
        503, [("X-Idgate-Decision", "deny"), ("X-Idgate-Reason", "keys_unavailable"), ("Retry-After", "2")]
    ),
    # a 503 without X-Idgate-Decision is what httpclient makes of a dead idgate: nothing is relayed
    "bare503": Answer(503, [("X-Idgate-Reason", "keys_unavailable"), ("Retry-After", "2")]),
    # a Retry-After that is not 1-99999 seconds is never copied to the client
    "odd-retry503": Answer(
        503, [("X-Idgate-Decision", "deny"), ("X-Idgate-Reason", "keys_unavailable"), ("Retry-After", "0")]
    ),
}
DEFAULT_ANSWER = Answer(403, [("X-Idgate-Decision", "deny"), ("X-Idgate-Reason", "no_route")])

# every header name an upstream could take as identity (the config's strip list, plus what it sets)
IDENTITY_NAME = re.compile(r"^x[-_.](auth|webauth|idgate)([-_.]|$)|^x[-_.]forwarded[-_.]user", re.IGNORECASE)
SPOOFED = [
    ("X-Auth-User", "mallory"),
    ("x-webauth-user", "mallory"),
    ("X_Auth_User", "mallory"),
    ("x.auth.user", "mallory"),
    ("X-Forwarded-User", "mallory"),
    ("X-WEBAUTH-ROLE", "Admin"),
    ("X-Auth-Groups", "admins"),
    ("X-Idgate-User", "mallory"),
    ("X-Idgate-Path", "/allow"),
    ("X-Idgate-Upstream", "grafana"),
    ("X-Forwarded-For", "203.0.113.66"),
    ("X-Original-URI", "/allow"),
    ("X-Real-IP", "203.0.113.66"),
    ("Forwarded", "for=203.0.113.66"),
]


class FakeAuth:
    """Threaded HTTP/1.1 ``/auth`` stub on 127.0.0.1; records ``(name, value)`` header lists it received."""

    def __init__(self) -> None:
        self.received: list[list[tuple[str, str]]] = []
        self.stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/readyz":  # HAProxy's health check of be_idgate: ready, and not an auth call
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = list(self.headers.items())
                fake.received.append(headers)
                path = self.headers.get("X-Idgate-Path", "")
                answer = ANSWERS.get(path.lstrip("/").split("/")[0], DEFAULT_ANSWER)
                if answer.delay_s and fake.stopping.wait(answer.delay_s):
                    return
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # HAProxy closes on timeout; the late write then fails by design

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth"

    def __enter__(self) -> FakeAuth:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _values(headers: list[tuple[str, str]] | list[list[str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name.lower()]


def _identity(record: EchoRecord) -> dict[str, str]:
    """Identity-ish headers the upstream saw, lower-cased name -> value (fails on duplicates)."""
    found = [(n.lower(), v) for n, v in record["headers"] if IDENTITY_NAME.search(n)]
    assert len({n for n, _ in found}) == len(found), found
    return dict(found)


@dataclass
class Stack:
    settings: HaproxySettings
    haproxy: Haproxy
    fake: FakeAuth
    echoes: dict[str, EchoUpstream]
    ctx: ssl.SSLContext

    def client(self, *, http2: bool = False) -> httpx.Client:
        return httpx.Client(base_url=self.settings.https_url, verify=self.ctx, http2=http2, timeout=10.0)

    def hits(self, name: str = "app") -> list[EchoRecord]:
        return self.echoes[name].requests()


def _settings(certs: DevCerts, tmp: Path, auth_url: str, echoes: dict[str, EchoUpstream]) -> HaproxySettings:
    return HaproxySettings(
        tls_pem=certs.pem,
        https_bind=f"127.0.0.1:{free_tcp_port()}",
        http_bind=f"127.0.0.1:{free_tcp_port()}",
        stats_bind=f"127.0.0.1:{free_tcp_port()}",
        auth_url=auth_url,
        auth_timeout_ms=AUTH_TIMEOUT_MS,
        upstream_app=echoes["app"].address,
        upstream_grafana=echoes["grafana"].address,
        upstream_looker=echoes["looker"].address,
        stats_socket=tmp / "haproxy.sock",
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    try:
        haproxy_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    return generate_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def echoes() -> Iterator[dict[str, EchoUpstream]]:
    ups = {name: EchoUpstream(name) for name in ("app", "grafana", "looker")}
    try:
        for up in ups.values():
            up.start()
        yield ups
    finally:
        for up in ups.values():
            up.stop()


@pytest.fixture(scope="module")
def stack(
    certs: DevCerts, echoes: dict[str, EchoUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("haproxy")
    with FakeAuth() as fake:
        settings = _settings(certs, tmp, fake.url, echoes)
        with Haproxy(settings, log_path=tmp / "haproxy.log") as hap:
            yield Stack(settings, hap, fake, echoes, ssl.create_default_context(cafile=str(certs.ca)))


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "stack" in request.fixturenames:
        st: Stack = request.getfixturevalue("stack")
        for up in st.echoes.values():
            up.reset()
        st.fake.received.clear()


def _raw_get(st: Stack, target: str, extra: str = "") -> int:
    """Send ``GET target HTTP/1.1`` verbatim over TLS (no client-side path cleanup); return the status."""
    host, port = st.settings.https_url.removeprefix("https://").rsplit(":", 1)
    req = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}Connection: close\r\n\r\n".encode()
    with (
        socket.create_connection((host, int(port)), timeout=5) as sock,
        st.ctx.wrap_socket(sock, server_hostname=host) as tls,
    ):
        tls.sendall(req)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def _wait_for_log(hap: Haproxy, pattern: str, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = hap.log_text()
        if re.search(pattern, text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


# --- config check ---------------------------------------------------------------------------------------


def test_haproxy_c_accepts_shipped_config(certs: DevCerts, tmp_path: Path) -> None:
    settings = HaproxySettings(tls_pem=certs.pem, stats_socket=tmp_path / "s.sock")
    check_config(settings)


@pytest.mark.parametrize("mode", ["spoe", "auth_request"])
def test_haproxy_c_accepts_four_replicas(certs: DevCerts, tmp_path: Path, mode: Mode) -> None:
    more = ("127.0.0.1:9280", "127.0.0.1:9380", "127.0.0.1:9480")
    settings = HaproxySettings(
        tls_pem=certs.pem,
        mode=mode,
        stats_socket=tmp_path / "s.sock",
        more_service_addrs=more,
        more_spoa_addrs=tuple(a.replace("80", "81") for a in more),
        auth_lb_bind="127.0.0.1:9189",
    )
    check_config(settings)
    with pytest.raises(ValueError, match="at most 4 replicas"):
        HaproxySettings(tls_pem=certs.pem, more_service_addrs=(*more, "127.0.0.1:9580"))


def test_haproxy_c_failure_carries_haproxy_output(certs: DevCerts, tmp_path: Path) -> None:
    settings = HaproxySettings(tls_pem=tmp_path / "missing.pem", stats_socket=tmp_path / "s.sock")
    with pytest.raises(RuntimeError, match=r"missing\.pem"):
        check_config(settings)


# --- allowed requests and identity headers --------------------------------------------------------------


def test_allowed_request_reaches_app_with_exact_identity_headers(stack: Stack) -> None:
    with stack.client() as c:
        r = c.get("/allow/page", params={"x": "1"}, headers=SPOOFED)
    assert r.status_code == 200
    assert r.json()["upstream"] == "app"
    (rec,) = stack.hits("app")
    assert (rec["method"], rec["path"], rec["query"]) == ("GET", "/allow/page", "x=1")
    assert _identity(rec) == APP_IDENTITY
    assert _values(rec["headers"], "x-forwarded-for") == ["127.0.0.1"]
    assert _values(rec["headers"], "x-forwarded-proto") == ["https"]
    for name in ("forwarded", "x-real-ip", "x-original-uri"):
        assert _values(rec["headers"], name) == []
    assert stack.hits("grafana") == []
    assert stack.hits("looker") == []


def test_spoofed_identity_headers_never_reach_upstream_or_idgate(stack: Stack) -> None:
    with stack.client() as c:
        r = c.get("/allow-nouser/x", headers=SPOOFED)
    assert r.status_code == 200
    (rec,) = stack.hits("app")
    assert _identity(rec) == {}
    names = {n.lower() for n, _ in rec["headers"]}
    assert not names & {"x_auth_user", "x.auth.user", "x-forwarded-user", "forwarded", "x-real-ip"}
    # the fake idgate got HAProxy's X-Idgate-* only, never the client's copies
    (seen,) = stack.fake.received
    assert _values(seen, "X-Idgate-Path") == ["/allow-nouser/x"]
    assert _values(seen, "X-Idgate-User") == []
    assert _values(seen, "X-Idgate-Upstream") == []
    assert _values(seen, "X-Auth-User") == []


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            "grafana",
            {
                "x-webauth-user": "alice",
                "x-webauth-email": "alice@example.com",
                "x-webauth-name": "Alice Liddell",
                "x-webauth-role": "Editor",
                "x-webauth-groups": "staff,analysts",
            },
        ),
        (
            "looker",
            {
                "x-auth-user": "alice",
                "x-auth-email": "alice@example.com",
                "x-auth-name": "Alice Liddell",
                "x-auth-groups": "staff,analysts",
                "x-auth-roles": "viewer,editor",
            },
        ),
    ],
)
def test_per_backend_identity_headers(stack: Stack, route: str, expected: dict[str, str]) -> None:
    with stack.client() as c:
        r = c.get(f"/{route}/dash", headers=SPOOFED)
    assert r.status_code == 200
    assert r.json()["upstream"] == route
    (rec,) = stack.hits(route)
    assert _identity(rec) == expected
    assert stack.hits("app") == []


def test_allowed_post_with_body_reaches_upstream(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/allow/form", content=b"x" * 70_000, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    (rec,) = stack.hits("app")
    assert (rec["method"], rec["path"]) == ("POST", "/allow/form")
    assert _values(rec["headers"], "content-length") == ["70000"]
    (seen,) = stack.fake.received
    assert _values(seen, "X-Idgate-Method") == ["POST"]
    assert _values(seen, "Content-Type") == ["application/octet-stream"]


def test_http2_via_alpn(stack: Stack) -> None:
    with stack.client(http2=True) as c:
        r = c.get("/allow/h2", headers=SPOOFED)
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200
    (rec,) = stack.hits("app")
    assert _identity(rec) == APP_IDENTITY


# --- what idgate is asked -------------------------------------------------------------------------------


def test_auth_request_carries_request_facts_and_client_credentials(stack: Stack) -> None:
    with stack.client() as c:
        r = c.request(
            "DELETE",
            "/forbidden/item?id=7&b=%20",
            headers=[
                ("Authorization", "Bearer one"),
                ("Authorization", "Bearer two"),
                ("Cookie", "__Host-idgate=abc"),
                ("X-Requested-With", "XMLHttpRequest"),
                ("Sec-Fetch-Mode", "cors"),
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
                ("User-Agent", "pytest-agent"),
            ],
        )
    assert r.status_code == 403
    (seen,) = stack.fake.received
    port = stack.settings.https_url.rsplit(":", 1)[1]
    expected = {
        "X-Idgate-Method": ["DELETE"],
        "X-Idgate-Host": [f"127.0.0.1:{port}"],
        "X-Idgate-Path": ["/forbidden/item"],
        "X-Idgate-Query": ["id=7&b=%20"],
        "X-Idgate-Source": ["127.0.0.1"],
        "X-Idgate-Proto": ["https"],
        "Authorization": ["Bearer one", "Bearer two"],
        "Cookie": ["__Host-idgate=abc"],
        "X-Requested-With": ["XMLHttpRequest"],
        "Sec-Fetch-Mode": ["cors"],
        "Content-Type": ["application/json"],
        "Accept": ["application/json"],
        "User-Agent": ["pytest-agent"],
    }
    assert {name: _values(seen, name) for name in expected} == expected
    assert stack.hits("app") == []


def test_auth_request_does_not_invent_accept_or_user_agent(stack: Stack) -> None:
    assert _raw_get(stack, "/forbidden/bare") == 403
    (seen,) = stack.fake.received
    assert _values(seen, "Accept") == [""]  # httpclient would add "*/*"; empty means absent
    assert _values(seen, "User-Agent") == [""]  # ... and "HAProxy"
    assert _values(seen, "X-Idgate-Query") == [""]
    assert _values(seen, "Authorization") == []


@pytest.mark.parametrize(
    "target", ["/public/../admin", "//admin", "/public/%2e%2e/admin", "/public/./../admin", "/%61dmin", "/../admin"]
)
def test_idgate_judges_the_normalised_path(stack: Stack, target: str) -> None:
    assert _raw_get(stack, target + "?q=/public") == 403
    (seen,) = stack.fake.received
    assert _values(seen, "X-Idgate-Path") == ["/admin"]
    assert _values(seen, "X-Idgate-Query") == ["q=/public"]


def test_malformed_percent_encoding_is_refused_before_idgate(stack: Stack) -> None:
    assert _raw_get(stack, "/allow/%zz") == 400
    assert stack.fake.received == []
    assert stack.hits("app") == []


# --- idgate's refusals are relayed, everything else fails closed ----------------------------------------


def test_401_keeps_www_authenticate_and_hsts(stack: Stack) -> None:
    with stack.client() as c:
        r = c.get("/unauthenticated/x")
    assert r.status_code == 401
    assert r.headers.get_list("www-authenticate") == [CHALLENGE]
    assert r.headers["strict-transport-security"] == "max-age=31536000"
    assert stack.hits("app") == []
    log = _wait_for_log(stack.haproxy, r"/unauthenticated/x.*reason=token_expired")
    assert re.search(r"/unauthenticated/x.*idgate=401 decision=deny reason=token_expired", log)


@pytest.mark.parametrize(("route", "status"), [("forbidden", 403), ("malformed", 400)])
def test_403_and_400_are_relayed(stack: Stack, route: str, status: int) -> None:
    with stack.client() as c:
        r = c.get(f"/{route}/x")
    assert r.status_code == status
    assert "www-authenticate" not in r.headers
    assert stack.hits("app") == []


def test_302_redirects_to_idgate_location(stack: Stack) -> None:
    with stack.client() as c:
        r = c.get("/login/x")
    assert r.status_code == 302
    assert r.headers["location"] == LOGIN_URL
    assert stack.hits("app") == []


@pytest.mark.parametrize(
    "route", ["dup-user", "status500", "status204", "deny200", "nodecision200", "bad-upstream", "302-without-location"]
)
def test_anything_but_an_explicit_allow_is_503(stack: Stack, route: str) -> None:
    with stack.client() as c:
        r = c.get(f"/{route}/x", headers=SPOOFED)
    assert r.status_code == 503
    assert all(up.requests() == [] for up in stack.echoes.values())


def test_idgates_own_503_reaches_the_client_with_retry_after_and_reason(stack: Stack) -> None:
    with stack.client() as c:
        relayed, bare, odd = c.get("/keys503/x"), c.get("/bare503/x"), c.get("/odd-retry503/x")
    assert (relayed.status_code, relayed.headers.get("retry-after")) == (503, "2")
    assert relayed.text == "503 Service Unavailable (keys_unavailable)"
    assert "www-authenticate" not in relayed.headers
    for other in (bare, odd):  # HAProxy's own fail-closed answer: no idgate value leaks through
        assert other.status_code == 503 and "retry-after" not in other.headers
        assert other.text == "503 Service Unavailable (authentication unavailable)"
    assert all(up.requests() == [] for up in stack.echoes.values())


def test_allowed_without_known_upstream_is_404(stack: Stack) -> None:
    with stack.client() as c:
        assert c.get("/noupstream/x").status_code == 404
        assert c.get("/nosuch/x").status_code == 404
    assert all(up.requests() == [] for up in stack.echoes.values())


def test_slow_idgate_gives_503_within_the_timeout(stack: Stack) -> None:
    with stack.client() as c:
        c.get("/forbidden/warmup")  # TLS handshake and the auth connection out of the measurement
        t0 = time.perf_counter()
        r = c.get("/slow/x")
        elapsed = time.perf_counter() - t0
    assert r.status_code == 503
    assert AUTH_TIMEOUT_MS / 1000 - 0.05 <= elapsed < AUTH_TIMEOUT_MS / 1000 + 0.3, elapsed
    assert stack.hits("app") == []
    log = _wait_for_log(stack.haproxy, r"failing closed \(GET /slow/x")
    assert re.search(r"idgate_auth: failing closed \(GET /slow/x from 127\.0\.0\.1\)", log)


def test_dead_idgate_gives_503_fast(
    certs: DevCerts, echoes: dict[str, EchoUpstream], tmp_path: Path, stack: Stack
) -> None:
    dead_url = f"http://127.0.0.1:{free_tcp_port()}/auth"  # nothing listens there
    settings = _settings(certs, tmp_path, dead_url, echoes)
    with Haproxy(settings, log_path=tmp_path / "haproxy.log") as hap:
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        with httpx.Client(base_url=settings.https_url, verify=ctx, timeout=10.0) as c:
            c.get("/allow/warmup")
            t0 = time.perf_counter()
            r = c.get("/allow/x", headers=SPOOFED)
            elapsed = time.perf_counter() - t0
        assert r.status_code == 503
        assert elapsed < 1.0, elapsed
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        log = _wait_for_log(hap, r"failing closed \(GET /allow/x")
        assert "idgate_auth: failing closed (GET /allow/x from 127.0.0.1)" in log
    assert all(up.requests() == [] for up in echoes.values())


# --- transport ------------------------------------------------------------------------------------------


def test_http_redirects_to_https_keeping_path_and_query(stack: Stack) -> None:
    with httpx.Client(timeout=5.0) as c:
        r = c.get(stack.settings.http_url + "/some/path?q=1&r=%2F")
    assert r.status_code in (301, 308)
    port = stack.settings.redirect_port
    assert r.headers["location"] == f"https://127.0.0.1:{port}/some/path?q=1&r=%2F"
    assert stack.fake.received == []


def test_hsts_on_allowed_responses(stack: Stack) -> None:
    with stack.client() as c:
        r = c.get("/allow/x")
    assert r.status_code == 200
    assert r.headers["strict-transport-security"] == "max-age=31536000"


def test_stats_and_metrics(stack: Stack) -> None:
    with httpx.Client(base_url=stack.settings.stats_url, timeout=5.0) as c:
        assert "haproxy_process_nbthread" in c.get("/metrics").text
        assert c.get("/stats").status_code == 200


GRPC_HEADERS = {"content-type": "application/grpc+proto", "te": "trailers"}


@pytest.mark.parametrize(
    ("route", "grpc_status", "grpc_message"),
    [
        ("unauthenticated", "16", "token_expired"),
        ("login", "16", "-"),  # idgate never redirects gRPC; if it did, still UNAUTHENTICATED, never a redirect
        ("forbidden", "7", "policy_denied"),
        ("malformed", "3", "duplicate_authorization"),
        ("status500", "14", "auth_unavailable"),
        ("keys503", "14", "keys_unavailable"),
        ("bare503", "14", "auth_unavailable"),
        ("dup-user", "14", "auth_unavailable"),
        ("deny200", "14", "auth_unavailable"),
        ("nosuch", "12", "no_upstream"),
        ("noupstream", "12", "no_upstream"),
    ],
)
def test_grpc_refusals_are_trailers_only_grpc_statuses(
    stack: Stack, route: str, grpc_status: str, grpc_message: str
) -> None:
    with stack.client(http2=True) as c:
        r = c.post(f"/{route}/Method", headers=[*GRPC_HEADERS.items(), *SPOOFED], content=b"\x00\x00\x00\x00\x00")
    assert r.http_version == "HTTP/2" and r.status_code == 200 and r.content == b""
    assert r.headers["content-type"] == "application/grpc" and "location" not in r.headers
    assert r.headers["grpc-status"] == grpc_status
    assert r.headers.get("grpc-message", "-") in (grpc_message, "")
    # idgate's Retry-After becomes gRPC's retry pushback (gRFC A6), only on idgate's own 503
    assert r.headers.get("grpc-retry-pushback-ms") == ("2000" if route == "keys503" else None)
    assert all(up.requests() == [] for up in stack.echoes.values())


def test_grpc_message_is_percent_encoded(stack: Stack) -> None:
    """grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2): whatever the reason holds, the header is valid."""
    with stack.client(http2=True) as c:
        r = c.post("/odd-reason/x", headers=GRPC_HEADERS)
    message = r.headers["grpc-message"]
    # the fake sends its header in latin-1 (http.server): HAProxy encodes the bytes it got
    assert re.fullmatch(r"[\x20-\x7e]*", message) and urllib.parse.unquote_to_bytes(message) == "a b,c%d/é".encode(
        "latin-1"
    )


# --- edge rules: one Cookie header, no obs-fold, one authority --------------------------------------------------


def _hostport(st: Stack) -> str:
    return st.settings.https_url.removeprefix("https://")


def test_several_http1_cookie_lines_reach_idgate_and_the_upstream_as_one(stack: Stack, certs: DevCerts) -> None:
    head = f"GET /allow/c HTTP/1.1\r\nHost: {_hostport(stack)}\r\nCookie: a=1\r\nCookie: b=2, c\r\nCookie: d=4"
    answer = wire.http1(stack.settings.https_url, certs.ca, head)
    assert answer.status == 200
    (seen,) = stack.fake.received
    assert _values(seen, "Cookie") == ["a=1; b=2, c; d=4"]
    (rec,) = stack.hits("app")
    assert _values(rec["headers"], "cookie") == ["a=1; b=2, c; d=4"]


def test_split_http2_cookie_fields_reach_idgate_as_one(stack: Stack, certs: DevCerts) -> None:
    answer = wire.http2(
        stack.settings.https_url,
        certs.ca,
        [*wire.pseudo(stack.settings.https_url, "/allow/c2"), ("cookie", "a=1"), ("cookie", "b=2")],
    )
    assert answer.status == 200
    (seen,) = stack.fake.received
    assert _values(seen, "Cookie") == ["a=1; b=2"]


def test_more_cookie_lines_than_joined_are_400_before_idgate(stack: Stack, certs: DevCerts) -> None:
    eight = "".join(f"\r\nCookie: c{i}={i}" for i in range(8))
    head = f"GET /forbidden/c HTTP/1.1\r\nHost: {_hostport(stack)}"
    assert wire.http1(stack.settings.https_url, certs.ca, head + eight).status == 403
    (seen,) = stack.fake.received
    assert _values(seen, "Cookie") == ["; ".join(f"c{i}={i}" for i in range(8))]
    nine = wire.http1(stack.settings.https_url, certs.ca, head.replace("/c ", "/c9 ") + eight + "\r\nCookie: c8=8")
    assert nine.status == 400
    assert len(stack.fake.received) == 1 and stack.hits("app") == []
    assert re.search(r"GET /forbidden/c9 .* reason=too_many_cookie_lines", _wait_for_log(stack.haproxy, "c9 .*reason"))


@pytest.mark.parametrize("fold", ["\r\n  b", "\r\n\tb", "  \r\n b"], ids=["space", "tab", "trailing-space"])
def test_obs_fold_is_400_before_idgate(stack: Stack, certs: DevCerts, fold: str) -> None:
    head = f"GET /allow/fold HTTP/1.1\r\nHost: {_hostport(stack)}\r\nX-Note: a{fold}"
    answer = wire.http1(stack.settings.https_url, certs.ca, head)
    assert answer.status == 400
    assert stack.fake.received == [] and stack.hits("app") == []
    assert answer.values("strict-transport-security") == ["max-age=31536000"]
    assert "reason=obs_fold" in _wait_for_log(stack.haproxy, "reason=obs_fold")


def test_folded_authorization_never_reaches_idgate(stack: Stack, certs: DevCerts) -> None:
    head = f"GET /allow/fold HTTP/1.1\r\nHost: {_hostport(stack)}\r\nAuthorization: Bearer a\r\n b"
    assert wire.http1(stack.settings.https_url, certs.ca, head).status == 400
    assert stack.fake.received == []


def test_inner_spaces_without_a_fold_pass(stack: Stack, certs: DevCerts) -> None:
    """Two spaces (HTTP/1.1) or three (HTTP/2, which has no obs-fold) inside a value are not a fold."""
    one = wire.http1(
        stack.settings.https_url, certs.ca, f"GET /allow/s HTTP/1.1\r\nHost: {_hostport(stack)}\r\nX-Note: a  b"
    )
    two = wire.http2(
        stack.settings.https_url,
        certs.ca,
        [*wire.pseudo(stack.settings.https_url, "/allow/s2"), ("x-note", "a   b")],
    )
    assert (one.status, two.status) == (200, 200)
    assert [_values(rec["headers"], "x-note") for rec in stack.hits("app")] == [["a  b"], ["a   b"]]


def test_http2_host_field_never_overrides_authority(stack: Stack, certs: DevCerts) -> None:
    """HAProxy (2.8, h2.c) builds Host from :authority and drops a client's differing host field: idgate judges and
    the upstream receives the same authority; the other value is seen by neither."""
    answer = wire.http2(
        stack.settings.https_url,
        certs.ca,
        [*wire.pseudo(stack.settings.https_url, "/allow/h"), ("host", "evil.example")],
    )
    assert answer.status == 200
    (seen,) = stack.fake.received
    assert _values(seen, "X-Idgate-Host") == [_hostport(stack)]
    (rec,) = stack.hits("app")
    assert _values(rec["headers"], "host") == [_hostport(stack)]
    assert all("evil.example" not in value for _, value in [*seen, *rec["headers"]])


@pytest.mark.parametrize("target", ["https://evil.example/allow/a", "https://{hp}/allow/a"])
def test_http1_absolute_uri_disagreeing_with_host_is_400(stack: Stack, certs: DevCerts, target: str) -> None:
    host = "evil.example" if "{hp}" in target else _hostport(stack)
    head = f"GET {target.format(hp=_hostport(stack))} HTTP/1.1\r\nHost: {host}"
    assert wire.http1(stack.settings.https_url, certs.ca, head).status == 400
    assert stack.fake.received == [] and stack.hits("app") == []


@pytest.mark.parametrize("hosts", ["Host: {hp}\r\nHost: evil.example", "Host: {hp}, evil.example"])
def test_two_distinct_http1_hosts_are_400_before_idgate(stack: Stack, certs: DevCerts, hosts: str) -> None:
    head = f"GET /allow/hosts HTTP/1.1\r\n{hosts.format(hp=_hostport(stack))}"
    assert wire.http1(stack.settings.https_url, certs.ca, head).status == 400
    assert stack.fake.received == [] and stack.hits("app") == []


def test_http2_without_authority_keeps_the_first_host_field_only(stack: Stack, certs: DevCerts) -> None:
    fields = [(n, v) for n, v in wire.pseudo(stack.settings.https_url, "/allow/hosts") if n != ":authority"]
    answer = wire.http2(
        stack.settings.https_url, certs.ca, [*fields, ("host", "first.example"), ("host", "evil.example")]
    )
    assert answer.status == 200
    (seen,) = stack.fake.received
    assert _values(seen, "X-Idgate-Host") == ["first.example"]
    (rec,) = stack.hits("app")
    assert _values(rec["headers"], "host") == ["first.example"]
    assert all("evil.example" not in value for _, value in [*seen, *rec["headers"]])


# --- credentials never reach HAProxy's log ----------------------------------------------------------------------

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtand0In0.c2VjcmV0LXNpZ25hdHVyZQ"
# target -> what its logged URI must be (every SECRET... value and the JWT are gone)
REDACTED_URIS = {
    f"/allow/q?access_token={JWT}&y=1": "/allow/q?access_token=<redacted>&y=1",
    "/forbidden/cb?code=SECRETCODE1&state=SECRETSTATE1&iss=https%3A%2F%2Fidp": (
        "/forbidden/cb?code=<redacted>&state=<redacted>&iss=https%3A%2F%2Fidp"
    ),
    "/forbidden/cb?STATE=SECRETSTATE2;Code=SECRETCODE2": "/forbidden/cb?STATE=<redacted>",
    "/forbidden/t?id_token=SECRETID&refresh_token=SECRETREFRESH&client_secret=SECRETCLIENT": (
        "/forbidden/t?id_token=<redacted>&refresh_token=<redacted>&client_secret=<redacted>"
    ),
    "/forbidden/t?id_token_hint=SECRETHINT&logout_token=SECRETLOGOUT": (
        "/forbidden/t?id_token_hint=<redacted>&logout_token=<redacted>"
    ),
    "/forbidden/rd?rd=%2Fapp%3Fx%3D1%26access_token%3DSECRETNESTED%26y%3D2": (
        "/forbidden/rd?rd=%2Fapp%3Fx%3D1%26access_token%3D<redacted>%26y%3D2"
    ),
    "/forbidden/rd?rd=/app?code=SECRETRAW&z=1": "/forbidden/rd?rd=/app?code=<redacted>&z=1",
    f"/forbidden/p/{JWT}/x?token={JWT}": "/forbidden/p/<jwt>/x?token=<jwt>",
    "/forbidden/q?access_token=a%26SECRETTAIL": "/forbidden/q?access_token=<redacted>",
    "/forbidden/q?xcode=kept&codes=kept2&state_x=kept3": "/forbidden/q?xcode=kept&codes=kept2&state_x=kept3",
}


def _log_lines(hap: Haproxy, marker: str) -> list[str]:
    """HAProxy's request log lines (not its <HTTPCLIENT> lines), once ``marker`` has been logged."""
    text = _wait_for_log(hap, re.escape(marker))
    return [line for line in text.splitlines() if "fe_https" in line and "HTTPCLIENT" not in line]


REQUEST_ID = r"[0-9A-F]+:[0-9A-F]+_[0-9A-F]+:[0-9A-F]+_[0-9A-F]+_[0-9A-F]+:[0-9A-F]+"
"""HAProxy's request id (haproxy.cfg ``unique-id-format``)."""


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_one_request_id_reaches_idgate_the_upstream_and_the_log_and_a_client_copy_none(
    stack: Stack, http2: bool
) -> None:
    spoofed = {"X-Request-ID": "client-rid", "x_request_id": "client-rid2", "X.Request.Id": "client-rid3"}
    marker = f"/allow/rid-{http2}"
    with stack.client(http2=http2) as c:
        assert c.get(marker, headers=spoofed).status_code == 200
    (seen,) = stack.fake.received
    (rid,) = _values(seen, "X-Idgate-Request-Id")
    assert re.fullmatch(REQUEST_ID, rid), rid
    (rec,) = stack.hits("app")
    assert [(n.lower(), v) for n, v in rec["headers"] if "request" in n.lower() and "id" in n.lower()] == [
        ("x-request-id", rid)
    ]
    (line,) = [line for line in _log_lines(stack.haproxy, marker) if marker in line]
    assert line.endswith(f" rid={rid}") and "client-rid" not in stack.haproxy.log_text()


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_credentials_in_the_uri_are_redacted_in_the_text_log(stack: Stack, http2: bool) -> None:
    marker = f"/forbidden/end-text-{http2}"
    with stack.client(http2=http2) as c:
        for target in [*REDACTED_URIS, marker]:
            c.get(target)
    lines = _log_lines(stack.haproxy, marker)
    version = "HTTP/2.0" if http2 else "HTTP/1.1"
    for uri in REDACTED_URIS.values():
        assert any(f'"GET {uri} {version}"' in line for line in lines), uri
    assert not re.search(r"SECRET|eyJ", "\n".join(lines))


def test_json_log_format_with_more_redacted_parameters(
    certs: DevCerts, echoes: dict[str, EchoUpstream], tmp_path: Path
) -> None:
    with FakeAuth() as fake:
        settings = dataclasses.replace(
            _settings(certs, tmp_path, fake.url, echoes), log_format="json", log_redact_params="api_key|sig"
        )
        with Haproxy(settings, log_path=tmp_path / "haproxy.log") as hap:
            ctx = ssl.create_default_context(cafile=str(certs.ca))
            with httpx.Client(base_url=settings.https_url, verify=ctx, timeout=10.0) as c:
                for target in [*REDACTED_URIS, "/allow/k?api_key=SECRETKEY&SIG=SECRETSIG&password=kept", "/end"]:
                    c.get(target, headers={"Cookie": "__Host-idgate_0=SECRETCOOKIE"})
            lines = _log_lines(hap, '"uri":"\\/end"')
            two_hosts = "GET /SECRETBAD?code=SECRETBADCODE HTTP/1.1\r\nHost: a.example\r\nHost: b.example"
            assert wire.http1(settings.https_url, certs.ca, two_hosts).status == 400
            broken = _log_lines(hap, '"PR--"')[-1]
    parsed = [json.loads(line) for line in lines]  # every line is JSON: requests, and connection errors
    records = [r for r in parsed if "error" not in r]
    errors = [r for r in parsed if "error" in r]  # at least the launcher's TCP probe (closed during handshake)
    assert errors and {r["error"] for r in errors} >= {"Connection closed during SSL handshake"}
    uris = [r["uri"] for r in records]
    assert uris == [*REDACTED_URIS.values(), "/allow/k?api_key=<redacted>&SIG=<redacted>&password=kept", "/end"]
    allowed = records[0]
    assert allowed | {"ts": 0, "client_port": 0, "Ta": 0, "TR": 0, "Tr": 0, "Tc": 0, "bytes": 0} == {
        "ts": 0,
        "client": "127.0.0.1",
        "client_port": 0,
        "frontend": "fe_https~",
        "backend": "be_app",
        "server": "app",
        "TR": 0,
        "Tw": 0,
        "Tc": 0,
        "Tr": 0,
        "Ta": 0,
        "status": 200,
        "bytes": 0,
        "termination": "----",
        "conns": allowed["conns"],
        "queues": "0/0",
        "method": "GET",
        "uri": "/allow/q?access_token=<redacted>&y=1",
        "version": "HTTP/1.1",
        "idgate": "200",
        "decision": "allow",
        "reason": "ok",
        "user": "alice",
        "upstream": "app",
        "spoe_err": "-",
        "cache": "miss",  # the fake idgate never marks an answer cacheable
        "request_id": allowed["request_id"],
    }
    assert all(re.fullmatch(REQUEST_ID, r["request_id"]) for r in records)
    assert len({r["request_id"] for r in records}) == len(records)
    assert [r["status"] for r in records[-2:]] == [200, 403] and {r["status"] for r in records[1:-2]} == {403}
    assert (json.loads(broken)["status"], json.loads(broken)["method"]) == (400, "<BADREQ>")
    assert not re.search(r"SECRET|eyJ", "\n".join([*lines, broken]))
