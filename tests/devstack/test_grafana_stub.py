"""The Grafana contract stub (idgate_devstack.grafana_stub): [auth.jwt] against a real AssertionSigner's JWKS,
[auth.proxy] headers (plain and quoted-printable), the HTML page, and request recording.

The JWKS is served live from the signer by a loopback HTTP server in a thread (and once over HTTPS with the dev CA),
so rotation is visible to the stub as it would be to Grafana.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idgate.assertion import AssertionSigner
from idgate_devstack.certs import generate_dev_certs
from idgate_devstack.grafana_stub import GrafanaStub

ISS = "https://idgate.test"
AUD = "grafana"
JWT_HEADER = "X-JWT-Assertion"
ALICE = {"email": "alice@example.com", "name": "Alice", "groups": ["staff", "grafana-admins"], "role": "Admin"}


class Clock:
    """Wall clock with an offset (seconds) the test can move, for expired and future tokens."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class JwksServer(ThreadingHTTPServer):
    """Serves ``signer.jwks()`` at any path, live, with an optional Cache-Control header; counts fetches."""

    def __init__(self, signer: AssertionSigner, *, cache_control: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _JwksHandler)
        self.signer = signer
        self.cache_control = cache_control
        self.fetches = 0

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://localhost:{self.server_address[1]}/.idgate/jwks.json"


class _JwksHandler(BaseHTTPRequestHandler):
    server: JwksServer

    def do_GET(self) -> None:
        self.server.fetches += 1
        body = json.dumps(self.server.signer.jwks()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.server.cache_control:
            self.send_header("Cache-Control", self.server.cache_control)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(server: JwksServer) -> Iterator[JwksServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def signer(clock: Clock, key_pem: bytes) -> AssertionSigner:
    return AssertionSigner(issuer=ISS, lifetime_seconds=120, clock=clock, private_keys_pem=[key_pem])


@pytest.fixture(scope="module")
def jwks_server(signer: AssertionSigner) -> Iterator[JwksServer]:
    yield from serve(JwksServer(signer))


@pytest.fixture(scope="module")
def stub(jwks_server: JwksServer) -> Iterator[GrafanaStub]:
    with GrafanaStub(jwks_url=jwks_server.url, expect_iss=ISS, expect_aud=AUD) as grafana:
        yield grafana


@pytest.fixture(scope="module")
def encoded_stub() -> Iterator[GrafanaStub]:
    """Proxy mode only ([auth.jwt] disabled), headers_encoded = true."""
    with GrafanaStub("grafana-qp", headers_encoded=True) as grafana:
        yield grafana


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def mint(signer: AssertionSigner, claims: dict[str, Any] | None = None, *, aud: str = AUD, key: str = "s") -> str:
    return signer.mint(cache_key=key, audience=aud, subject="sub-alice", claims=ALICE if claims is None else claims)


def api_user(client: httpx.Client, stub: GrafanaStub, headers: dict[str, str]) -> httpx.Response:
    return client.get(stub.url + "/api/user", headers=headers)


def assert_invalid_jwt(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"message": "invalid JWT", "reason": reason}


class IdText(HTMLParser):
    """Collects the text of every element with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        self._open.append(ident)
        if ident is not None:
            self.texts[ident] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident is not None:
                self.texts[ident] += data


def page_ids(text: str) -> dict[str, str]:
    parser = IdText()
    parser.feed(text)
    return parser.texts


# --- [auth.jwt] -------------------------------------------------------------------------------------------------


def test_valid_jwt(stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client) -> None:
    response = api_user(client, stub, {JWT_HEADER: mint(signer)})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "login": "alice@example.com",
        "email": "alice@example.com",
        "name": "Alice",
        "role": "Admin",
        "groups": ["staff", "grafana-admins"],
        "authMode": "jwt",
    }


def test_jwt_wins_over_proxy_headers(stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client) -> None:
    token = mint(signer, {**ALICE, "role": "Viewer"}, key="both")
    response = api_user(client, stub, {JWT_HEADER: token, "X-WEBAUTH-USER": "mallory", "X-WEBAUTH-ROLE": "Admin"})
    assert (response.json()["login"], response.json()["role"], response.json()["authMode"]) == (
        "alice@example.com",
        "Viewer",
        "jwt",
    )


def test_grafana_admin_role_accepted(stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client) -> None:
    response = api_user(client, stub, {JWT_HEADER: mint(signer, {**ALICE, "role": "GrafanaAdmin"}, key="ga")})
    assert response.json()["role"] == "GrafanaAdmin"


def test_wrong_audience(stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client) -> None:
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: mint(signer, aud="looker")}), "wrong_audience")


def test_wrong_issuer(stub: GrafanaStub, key_pem: bytes, client: httpx.Client) -> None:
    other = AssertionSigner(issuer="https://evil.test", private_keys_pem=[key_pem])  # same, published key
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: mint(other)}), "wrong_issuer")


def test_expired(stub: GrafanaStub, signer: AssertionSigner, clock: Clock, client: httpx.Client) -> None:
    clock.offset = -600  # exp = now - 480 s, beyond the 60 s leeway
    try:
        token = mint(signer, key="expired")
    finally:
        clock.offset = 0
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: token}), "expired")


def test_within_leeway_accepted(stub: GrafanaStub, signer: AssertionSigner, clock: Clock, client: httpx.Client) -> None:
    clock.offset = -150  # lifetime 120: expired 30 s ago, inside go-jose's 60 s leeway
    try:
        token = mint(signer, key="leeway")
    finally:
        clock.offset = 0
    assert api_user(client, stub, {JWT_HEADER: token}).status_code == 200


def test_issued_in_future(stub: GrafanaStub, signer: AssertionSigner, clock: Clock, client: httpx.Client) -> None:
    clock.offset = 600
    try:
        token = mint(signer, key="future")
    finally:
        clock.offset = 0
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: token}), "issued_in_future")


def test_bad_signature(stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client) -> None:
    good = mint(signer)
    stranger = mint(AssertionSigner(issuer=ISS))
    forged = ".".join([*good.split(".")[:2], stranger.split(".")[2]])
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: forged}), "bad_signature")
    tampered_claims = jwt.utils.base64url_encode(json.dumps({**ALICE, "role": "Admin", "email": "x"}).encode())
    tampered = ".".join([good.split(".")[0], tampered_claims.decode(), good.split(".")[2]])
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: tampered}), "bad_signature")


def test_unknown_key(stub: GrafanaStub, client: httpx.Client) -> None:
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: mint(AssertionSigner(issuer=ISS))}), "unknown_kid")


def test_alg_none_refused(stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client) -> None:
    now = int(time.time())
    claims = {**ALICE, "iss": ISS, "aud": AUD, "sub": "x", "iat": now, "exp": now + 60}
    token = jwt.encode(claims, "", algorithm="none", headers={"kid": signer.kid})
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: token}), "algorithm_mismatch")


def test_malformed(stub: GrafanaStub, client: httpx.Client) -> None:
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: "not-a-jwt"}), "malformed")


@pytest.mark.parametrize("role", ["Superuser", "admin", "None", "", None])
def test_role_outside_vocabulary_denied(
    stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client, role: str | None
) -> None:
    claims = {k: v for k, v in ALICE.items() if k != "role"}
    if role is not None:
        claims["role"] = role
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: mint(signer, claims, key="role")}), "invalid_role")


def test_missing_username_claim(stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client) -> None:
    claims = {k: v for k, v in ALICE.items() if k != "email"}
    assert_invalid_jwt(api_user(client, stub, {JWT_HEADER: mint(signer, claims)}), "missing_username")


def test_jwks_cached_then_refetched_on_rotation(
    stub: GrafanaStub, signer: AssertionSigner, jwks_server: JwksServer, client: httpx.Client
) -> None:
    old_token = mint(signer, key="rotation")
    assert api_user(client, stub, {JWT_HEADER: old_token}).status_code == 200
    fetches = jwks_server.fetches
    for i in range(3):
        assert api_user(client, stub, {JWT_HEADER: mint(signer, key=f"cached{i}")}).status_code == 200
    assert jwks_server.fetches == fetches  # within cache_ttl: no refetch

    # First rotation: the new signer was pre-published, so the cached copy already holds it — no refetch.
    pre_published = signer.next_kid
    assert signer.rotate() == pre_published
    first = mint(signer, key="after-rotation")
    assert jwt.get_unverified_header(first)["kid"] == pre_published
    assert api_user(client, stub, {JWT_HEADER: first}).status_code == 200
    assert jwks_server.fetches == fetches

    # Second rotation within the cache: its key was published after the stub's copy was taken, so the stub's
    # default (refetch on an unknown kid) fetches once.
    second_kid = signer.rotate()
    second = mint(signer, key="after-second-rotation")
    assert jwt.get_unverified_header(second)["kid"] == second_kid
    assert api_user(client, stub, {JWT_HEADER: second}).status_code == 200
    assert jwks_server.fetches == fetches + 1
    # Tokens minted before either rotation still pass: the old keys stay published.
    assert mint(signer, key="rotation") == old_token
    assert mint(signer, key="after-rotation") == first
    for token in (old_token, first):
        assert api_user(client, stub, {JWT_HEADER: token}).status_code == 200
    assert jwks_server.fetches == fetches + 1


def test_real_grafana_cache_no_refetch_on_unknown_kid(client: httpx.Client) -> None:
    """Real Grafana keeps its cached JWKS until it expires (cache_ttl) and does not refetch on an unknown kid; the
    stub models that with refetch_on_unknown_kid=False. Because the signer pre-publishes its next key, a copy
    fetched before rotate() already holds the key that signs after it: the new tokens pass with no refetch."""
    signer = AssertionSigner(issuer=ISS)
    for server in serve(JwksServer(signer)):  # no Cache-Control: cache_ttl (1 h) alone decides
        with GrafanaStub(
            jwks_url=server.url, expect_iss=ISS, expect_aud=AUD, cache_ttl=3600, refetch_on_unknown_kid=False
        ) as strict:
            old_kid, pre_published = signer.kid, signer.next_kid
            old_token = mint(signer)
            assert api_user(client, strict, {JWT_HEADER: old_token}).status_code == 200
            assert server.fetches == 1  # the stub's copy, taken before the rotation: [old_kid, pre_published]

            assert signer.rotate() == pre_published
            token = mint(signer, key="new")
            assert jwt.get_unverified_header(token)["kid"] == pre_published != old_kid
            response = api_user(client, strict, {JWT_HEADER: token})
            assert response.status_code == 200, response.text
            assert (response.json()["authMode"], response.json()["login"]) == ("jwt", "alice@example.com")
            assert api_user(client, strict, {JWT_HEADER: old_token}).status_code == 200  # in flight: still valid
            assert server.fetches == 1  # accepted from the pre-rotation copy, no refetch


def test_real_grafana_rotations_closer_than_cache_refused_until_max_age(client: httpx.Client) -> None:
    """Pre-publication covers one rotation per cache period: a second rotation signs with a key published after
    the copy was taken, which real Grafana refuses until its copy expires (here the response's max-age=2, shorter
    than cache_ttl, wins)."""
    signer = AssertionSigner(issuer=ISS)
    for server in serve(JwksServer(signer, cache_control="public, max-age=2")):
        with GrafanaStub(
            jwks_url=server.url, expect_iss=ISS, expect_aud=AUD, cache_ttl=3600, refetch_on_unknown_kid=False
        ) as strict:
            assert api_user(client, strict, {JWT_HEADER: mint(signer)}).status_code == 200
            signer.rotate()
            assert api_user(client, strict, {JWT_HEADER: mint(signer, key="first")}).status_code == 200
            signer.rotate()
            assert_invalid_jwt(api_user(client, strict, {JWT_HEADER: mint(signer, key="second")}), "unknown_kid")
            assert server.fetches == 1
            time.sleep(2.1)
            response = api_user(client, strict, {JWT_HEADER: mint(signer, key="second")})
            assert response.status_code == 200, response.text
            assert response.json()["authMode"] == "jwt"
            assert server.fetches == 2


def test_jwks_over_https_with_ca_file(tmp_path: Path, client: httpx.Client) -> None:
    certs = generate_dev_certs(tmp_path)
    signer = AssertionSigner(issuer=ISS)
    server = JwksServer(signer)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for running in serve(server):
        with GrafanaStub(jwks_url=running.url, expect_iss=ISS, expect_aud=AUD, ca_file=str(certs.ca)) as trusting:
            response = api_user(client, trusting, {JWT_HEADER: mint(signer)})
            assert response.status_code == 200, response.text
            assert response.json()["authMode"] == "jwt"
        with GrafanaStub(
            jwks_url=running.url, expect_iss=ISS, expect_aud=AUD
        ) as untrusting:  # the dev CA is not in the default trust store
            assert_invalid_jwt(api_user(client, untrusting, {JWT_HEADER: mint(signer)}), "jwks_unavailable")


# --- [auth.proxy] -----------------------------------------------------------------------------------------------

PROXY = {
    "X-WEBAUTH-USER": "alice",
    "X-WEBAUTH-EMAIL": "alice@example.com",
    "X-WEBAUTH-NAME": "Alice Liddell",
    "X-WEBAUTH-ROLE": "Editor",
    "X-WEBAUTH-GROUPS": "staff, grafana-editors,,",
}


def test_proxy_headers(stub: GrafanaStub, client: httpx.Client) -> None:
    response = api_user(client, stub, PROXY)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "login": "alice",
        "email": "alice@example.com",
        "name": "Alice Liddell",
        "role": "Editor",
        "groups": ["staff", "grafana-editors"],
        "authMode": "proxy",
    }


def test_proxy_lowercase_header_names(stub: GrafanaStub, client: httpx.Client) -> None:
    response = api_user(client, stub, {k.lower(): v for k, v in PROXY.items()})
    assert response.json()["login"] == "alice"


def test_proxy_user_only(stub: GrafanaStub, client: httpx.Client) -> None:
    assert api_user(client, stub, {"X-WEBAUTH-USER": "bob"}).json() == {
        "login": "bob",
        "email": "",
        "name": "",
        "role": "Viewer",  # auto_assign_org_role default
        "groups": [],
        "authMode": "proxy",
    }


@pytest.mark.parametrize("role", ["GrafanaAdmin", "Superuser", "admin"])
def test_proxy_invalid_role_ignored(stub: GrafanaStub, client: httpx.Client, role: str) -> None:
    assert api_user(client, stub, {**PROXY, "X-WEBAUTH-ROLE": role}).json()["role"] == "Viewer"


@pytest.mark.parametrize("user", [None, ""])
def test_proxy_missing_user(stub: GrafanaStub, client: httpx.Client, user: str | None) -> None:
    headers = {k: v for k, v in PROXY.items() if k != "X-WEBAUTH-USER"}
    if user is not None:
        headers["X-WEBAUTH-USER"] = user
    for path in ("/api/user", "/d/home"):
        response = client.get(stub.url + path, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"message": "Unauthorized"}


def test_quoted_printable_decoded_with_flag(stub: GrafanaStub, encoded_stub: GrafanaStub, client: httpx.Client) -> None:
    headers = {
        "X-WEBAUTH-USER": "j=C3=BCrgen",
        "X-WEBAUTH-NAME": "J=C3=BCrgen M=C3=BCller",
        "X-WEBAUTH-EMAIL": "j=3Dx@example.com",
        "X-WEBAUTH-GROUPS": "caf=C3=A9,=E6=97=A5=E6=9C=AC",
        "X-WEBAUTH-ROLE": "Admin",
    }
    decoded = api_user(client, encoded_stub, headers).json()
    assert decoded == {
        "login": "jürgen",
        "email": "j=x@example.com",
        "name": "Jürgen Müller",
        "role": "Admin",
        "groups": ["café", "日本"],
        "authMode": "proxy",
    }
    raw = api_user(client, stub, headers).json()  # headers_encoded off: values taken literally
    assert (raw["login"], raw["name"], raw["groups"]) == (
        "j=C3=BCrgen",
        "J=C3=BCrgen M=C3=BCller",
        ["caf=C3=A9", "=E6=97=A5=E6=9C=AC"],
    )


def test_jwt_header_ignored_when_jwt_auth_disabled(
    encoded_stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client
) -> None:
    response = api_user(client, encoded_stub, {JWT_HEADER: mint(signer), "X-WEBAUTH-USER": "carol"})
    assert response.json()["login"] == "carol"
    assert response.json()["authMode"] == "proxy"
    assert api_user(client, encoded_stub, {JWT_HEADER: mint(signer)}).json() == {"message": "Unauthorized"}


# --- page and recording -----------------------------------------------------------------------------------------


def test_html_page_ids(stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client) -> None:
    response = client.get(stub.url + "/d/abc/home", params={"orgId": "1"}, headers={JWT_HEADER: mint(signer)})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Grafana (contract stub)</h1>" in response.text
    ids = page_ids(response.text)
    assert ids == {
        "user": "alice@example.com",
        "email": "alice@example.com",
        "name": "Alice",
        "role": "Admin",
        "groups": "staff, grafana-admins",
        "auth-mode": "jwt",
        "path": "/d/abc/home",
    }


def test_html_page_escapes(stub: GrafanaStub, client: httpx.Client) -> None:
    headers = {"X-WEBAUTH-USER": "<script>alert(1)</script>", "X-WEBAUTH-NAME": 'a"b&c'}
    response = client.get(stub.url + "/%3Cimg%3E/x<y", headers=headers)
    assert response.status_code == 200
    assert "<script>" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    ids = page_ids(response.text)
    assert (ids["user"], ids["name"], ids["auth-mode"]) == ("<script>alert(1)</script>", 'a"b&c', "proxy")
    assert ids["path"] == "/%3Cimg%3E/x%3Cy"  # the raw request path as sent (httpx percent-encodes "<")


def test_recording_and_reset(stub: GrafanaStub, signer: AssertionSigner, client: httpx.Client) -> None:
    stub.reset()
    assert stub.requests() == []
    client.get(stub.url + "/api/user", headers={JWT_HEADER: mint(signer)})
    client.post(stub.url + "/api/dashboards/db?x=1&y=2", content=b"{}", headers={"X-WEBAUTH-EMAIL": "nobody"})
    client.get(stub.url + "/", headers={"X-WEBAUTH-USER": "alice"})

    records = stub.requests()
    assert [(r["method"], r["path"], r["query"], r["status"], r["auth_mode"], r["login"]) for r in records] == [
        ("GET", "/api/user", "", 200, "jwt", "alice@example.com"),
        ("POST", "/api/dashboards/db", "x=1&y=2", 401, "proxy", None),
        ("GET", "/", "", 200, "proxy", "alice"),
    ]
    assert {r["upstream"] for r in records} == {"grafana"}
    assert ["x-webauth-email", "nobody"] in records[1]["headers"]
    assert ["x-webauth-user", "alice"] in records[2]["headers"]
    assert records[2]["headers"][0][0] == "host"

    # Control calls are not recorded, and the reset answer counts what it dropped.
    response = client.post(stub.url + "/__echo/reset")
    assert response.json() == {"reset": 3}
    assert stub.requests() == []
