"""Smoke test of the real-browser setup, without idgate: Chromium logs in at the real test IdP over HTTPS.

A tiny HTTPS relying party (``http.server`` on 127.0.0.1, same dev certificate) receives the redirect at ``/cb``.
The IdP stays on ``localhost`` so its session cookies and the relying party's never share a jar (cookies ignore
ports). Timings are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from playwright.sync_api import Page, Request

from idgate_devstack.certs import DevCerts, generate_dev_certs
from idgate_devstack.idp import IdpConfig, TestIdp, free_port

CLIENT_ID = "idgate"
USER = "alice"
STEP_TIMEOUT_MS = 10_000


class _CallbackHandler(BaseHTTPRequestHandler):
    """``GET /cb`` shows the query string in ``<pre id="query">``; anything else is a 404."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/cb":
            self.send_error(404)
            return
        body = (
            "<!doctype html><title>callback</title>"
            f'<h1>relying party callback</h1><pre id="query">{html.escape(parts.query)}</pre>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class RelyingParty:
    base: str  # https://127.0.0.1:<port>

    @property
    def redirect_uri(self) -> str:
        return f"{self.base}/cb"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return generate_dev_certs(tmp_path_factory.mktemp("browser-tls"))


@pytest.fixture(scope="module")
def relying_party(certs: DevCerts) -> Iterator[RelyingParty]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CallbackHandler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="relying-party", daemon=True)
    thread.start()
    try:
        yield RelyingParty(base=f"https://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def idp(certs: DevCerts, relying_party: RelyingParty, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestIdp]:
    log_dir: Path = tmp_path_factory.mktemp("browser-idp")
    config = IdpConfig(
        port=free_port(),
        tls_cert=certs.cert,
        tls_key=certs.key,
        ca_file=certs.ca,
        redirect_uris=(relying_party.redirect_uri,),
        test_endpoints=False,
        log_file=log_dir / "idp.log",
    )
    with TestIdp(config) as running:
        yield running


def _pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _authorize_url(idp: TestIdp, rp: RelyingParty, state: str, challenge: str) -> str:
    params = {
        "client_id": CLIENT_ID,
        "response_type": "code",
        "scope": "openid",
        "redirect_uri": rp.redirect_uri,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{idp.discovery['authorization_endpoint']}?{urlencode(params)}"


def _callback_query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def _on_callback(rp: RelyingParty) -> Any:
    return lambda url: url.startswith(rp.redirect_uri + "?")


def test_login_with_form_then_single_sign_on(page: Page, idp: TestIdp, relying_party: RelyingParty) -> None:
    page.set_default_timeout(STEP_TIMEOUT_MS)
    rp = relying_party

    # 1. First visit: the IdP shows its login form; submitting it sends the browser to /cb with a code.
    verifier, challenge = _pkce_pair()
    state = secrets.token_urlsafe(16)
    started = time.perf_counter()
    page.goto(_authorize_url(idp, rp, state, challenge))
    assert "/interaction/" in urlsplit(page.url).path, f"expected the IdP's login page, got {page.url}"
    page.fill("#login", USER)
    page.fill("#password", "any password works")
    page.click("#sign-in")
    page.wait_for_url(_on_callback(rp))
    first_login_s = time.perf_counter() - started

    query = _callback_query(page.url)
    assert "error" not in query, query
    assert query.get("state") == state
    assert query.get("code")
    assert page.inner_text("#query") == urlsplit(page.url).query  # the relying party got what the browser shows

    # The code is real: it redeems at the token endpoint with the PKCE verifier (client_secret_basic).
    token_response = idp.http.post(
        idp.discovery["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": rp.redirect_uri,
            "code_verifier": verifier,
        },
        auth=(CLIENT_ID, idp.config.client_secret),
    )
    assert token_response.status_code == 200, token_response.text
    assert token_response.json().get("id_token")

    # 2. Second visit, same browser context: the IdP session cookie logs in without any interaction page.
    interaction_pages: list[str] = []

    def record(request: Request) -> None:
        if request.is_navigation_request() and "/interaction/" in urlsplit(request.url).path:
            interaction_pages.append(request.url)

    page.on("request", record)
    _, challenge2 = _pkce_pair()
    state2 = secrets.token_urlsafe(16)
    started = time.perf_counter()
    page.goto(_authorize_url(idp, rp, state2, challenge2))
    page.wait_for_url(_on_callback(rp))
    sso_s = time.perf_counter() - started
    page.remove_listener("request", record)

    assert interaction_pages == [], f"the IdP showed an interaction page again: {interaction_pages}"
    assert page.locator("#login-form").count() == 0
    query2 = _callback_query(page.url)
    assert query2.get("state") == state2
    assert query2.get("code") and query2["code"] != query["code"]

    print(f"\n[browser] login with the form: {first_login_s:.2f} s; single sign-on round trip: {sso_s:.2f} s")
