"""Bearer JWTs from the real IdP, through real HAProxy over TLS, decided by idgate, to echo upstreams."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from stack import AUTH_TIMEOUT_MS, Stack, access_claims

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
IDENTITY_PREFIXES = ("x-auth-", "x-webauth-", "x_auth_", "x_webauth_", "x-idgate-", "x.auth.")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def identity_headers(record: dict[str, Any]) -> dict[str, str]:
    """The identity headers an upstream received, names lower-cased."""
    return {n.lower(): v for n, v in record["headers"] if n.lower().startswith(IDENTITY_PREFIXES)}


def get(stack: Stack, path: str, token: str | None = None, **headers: str) -> httpx.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    with stack.client() as client:
        return client.get(stack.url + path, headers=headers)


def test_valid_token_reaches_the_upstream_with_exactly_the_injected_identity(fresh: Stack) -> None:
    token = fresh.login("alice").access_token
    response = get(fresh, "/app/x?y=1", token)
    assert response.status_code == 200, response.text
    [record] = fresh.upstreams["app"].requests()
    assert record["path"] == "/app/x" and record["query"] == "y=1"
    assert identity_headers(record) == {
        "x-auth-user": "alice",
        "x-auth-email": "alice@example.test",
        "x-auth-name": "Alice Admin",
        "x-auth-groups": "grafana-admins,staff,looker-analysts",
        "x-auth-subject": "alice",
        "x-auth-issuer": fresh.idp.issuer,
    }
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_grafana_and_looker_profiles_get_their_roles(fresh: Stack) -> None:
    alice, bob = fresh.login("alice").access_token, fresh.login("bob").access_token
    assert get(fresh, "/grafana/d/home", alice).status_code == 200
    assert get(fresh, "/grafana/d/home", bob).status_code == 200
    first, second = fresh.upstreams["grafana"].requests()
    assert identity_headers(first) == {
        "x-webauth-user": "alice@example.test",
        "x-webauth-email": "alice@example.test",
        "x-webauth-name": "Alice Admin",
        "x-webauth-role": "Admin",
        "x-webauth-groups": "grafana-admins,staff,looker-analysts",
    }
    assert identity_headers(second)["x-webauth-role"] == "Viewer"
    assert get(fresh, "/looker/dashboards/1", alice).status_code == 200
    [looker] = fresh.upstreams["looker"].requests()
    assert identity_headers(looker)["x-auth-roles"] == "looker_viewer"
    denied = get(fresh, "/looker/dashboards/1", bob)
    assert denied.status_code == 403
    assert len(fresh.upstreams["looker"].requests()) == 1


def test_http2_through_alpn(fresh: Stack) -> None:
    token = fresh.login("bob").access_token
    with fresh.client(http2=True) as client:
        response = client.get(fresh.url + "/app/h2", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.http_version == "HTTP/2"
    assert identity_headers(fresh.upstreams["app"].requests()[0])["x-auth-user"] == "bob"


def _bad_tokens(stack: Stack) -> dict[str, tuple[str, str]]:
    """name → (token, expected reason code); every token here must be refused with 401."""
    now = int(time.time())
    at = {"typ": "at+jwt"}
    good = stack.login("alice")
    head, payload, sig = good.access_token.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(payload + "==")) | {"groups": ["grafana-admins", "root"]}
    pem = stack.idp.public_key_pem()
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt"}).encode())
    good_claims = access_claims(stack)
    hs_body = b64(json.dumps(good_claims).encode())
    hs_sig = b64(hmac.new(pem, f"{hs_header}.{hs_body}".encode(), hashlib.sha256).digest())
    none_header = b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    return {
        "expired": (stack.idp.sign(at, access_claims(stack, iat=now - 900, exp=now - 600)), "expired"),
        "wrong_aud": (stack.idp.sign(at, access_claims(stack, aud="https://other.test")), "invalid_audience"),
        "wrong_iss": (stack.idp.sign(at, access_claims(stack, iss="https://evil.test")), "invalid_issuer"),
        "iss_trailing_slash": (stack.idp.sign(at, access_claims(stack, iss=stack.idp.issuer + "/")), "invalid_issuer"),
        "alg_none": (f"{none_header}.{hs_body}.", "alg_not_allowed"),
        "alg_none_sig": (f"{none_header}.{hs_body}.c2ln", "alg_not_allowed"),
        "hs256_with_public_key": (f"{hs_header}.{hs_body}.{hs_sig}", "alg_not_allowed"),
        "unknown_kid": (stack.idp.sign(at | {"kid": "no-such-key"}, good_claims), "unknown_kid"),
        "tampered": (f"{head}.{b64(json.dumps(tampered_claims).encode())}.{sig}", "invalid_signature"),
        "id_token_as_bearer": (good.id_token, "invalid_typ"),
        "jku_header": (stack.idp.sign(at | {"jku": "https://evil.test/jwks"}, good_claims), "forbidden_header"),
        "not_a_jwt": ("abc.def", "invalid_token"),
    }


def test_bad_tokens_get_401_with_reason_and_never_reach_the_upstream(fresh: Stack) -> None:
    cases = _bad_tokens(fresh)
    seen = {}
    for name, (token, _) in cases.items():
        response = get(fresh, "/app/secret", token)
        seen[name] = (response.status_code, response.headers.get("www-authenticate", ""))
    expected = {
        name: (401, f'Bearer realm="idgate", error="invalid_token", error_description="{reason}"')
        for name, (_, reason) in cases.items()
    }
    assert seen == expected
    assert fresh.upstream_hits() == 0


def test_missing_token_is_401_and_bearer_challenge(fresh: Stack) -> None:
    response = get(fresh, "/app/x")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="idgate"'
    assert fresh.upstream_hits() == 0


def test_authenticated_without_the_group_is_403(fresh: Stack) -> None:
    bob = fresh.login("bob").access_token
    assert get(fresh, "/admin/users", bob).status_code == 403
    carol = fresh.login("carol").access_token
    assert get(fresh, "/grafana/", carol).status_code == 403
    assert fresh.upstream_hits() == 0
    audit = [json.loads(line) for line in fresh.idgate.log_text().splitlines() if '"event": "decision"' in line]
    last = audit[-1]
    assert last["status"] == 403 and last["reasons"] == ["missing_role_or_group"] and last["sub"] == "carol"


SPOOFED = {
    "X-Auth-User": "root",
    "x-webauth-user": "root",
    "X_Auth_User": "root",
    "X-WEBAUTH-ROLE": "Admin",
    "x.auth.roles": "admin",
    "X-Idgate-User": "root",
    "X-Forwarded-User": "root",
}


@pytest.mark.parametrize("path", ["/public/page", "/app/page", "/grafana/page"])
def test_client_sent_identity_headers_never_reach_the_upstream(fresh: Stack, path: str) -> None:
    token = fresh.login("bob").access_token
    response = get(fresh, path, token, **SPOOFED)
    assert response.status_code == 200
    [record] = [r for u in fresh.upstreams.values() for r in u.requests()]
    received = {n.lower(): v for n, v in record["headers"]}
    assert "root" not in received.values() and received.get("x-webauth-role") != "Admin"
    assert "x_auth_user" not in received and "x.auth.roles" not in received and "x-forwarded-user" not in received
    if path == "/public/page":
        assert identity_headers(record) == {}


def test_path_tricks_are_judged_on_the_normalised_path(fresh: Stack) -> None:
    bob = fresh.login("bob").access_token
    assert get(fresh, "/public/%2e%2e/admin/users", bob).status_code == 403  # /admin, not /public
    assert get(fresh, "/public/%2e%2e/admin/users").status_code == 401
    assert get(fresh, "//admin/users", bob).status_code == 403
    assert get(fresh, "/admin;x=1", bob).status_code == 400
    assert fresh.upstream_hits() == 0


def test_duplicate_authorization_is_400(fresh: Stack) -> None:
    token = fresh.login("alice").access_token
    with fresh.client() as client:
        response = client.get(
            fresh.url + "/app/x", headers=[("authorization", f"Bearer {token}"), ("authorization", "Bearer x.y.z")]
        )
    assert response.status_code == 400
    assert fresh.upstream_hits() == 0


def test_http_redirects_to_https(fresh: Stack) -> None:
    with fresh.client() as client:
        response = client.get(fresh.settings.http_url + "/app/x?y=1")
    assert response.status_code == 308
    assert response.headers["location"] == f"https://127.0.0.1:{fresh.settings.redirect_port}/app/x?y=1"


def test_key_rotation_needs_no_restart(fresh: Stack) -> None:
    old = fresh.login("alice").access_token
    assert get(fresh, "/app/before", old).status_code == 200
    rotation = fresh.idp.rotate_keys()
    new = fresh.login("alice").access_token
    assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"] == rotation.kid
    assert get(fresh, "/app/new-key", new).status_code == 200
    assert get(fresh, "/app/old-key-still-published", old).status_code == 200
    fresh.idp.rotate_keys(drop_old=True)
    newest = fresh.login("alice").access_token
    assert get(fresh, "/app/newest", newest).status_code == 200
    retired = get(fresh, "/app/retired", old)
    assert retired.status_code == 401 and 'error_description="unknown_kid"' in retired.headers["www-authenticate"]
    assert [r["path"] for r in fresh.upstreams["app"].requests()] == [
        "/app/before",
        "/app/new-key",
        "/app/old-key-still-published",
        "/app/newest",
    ]


def test_idgate_down_fails_closed_then_recovers(fresh: Stack) -> None:
    token = fresh.login("alice").access_token
    fresh.idgate.kill()
    try:
        for path in ("/app/x", "/public/x"):
            started = time.monotonic()
            response = get(fresh, path, token)
            elapsed = time.monotonic() - started
            assert response.status_code == 503
            assert elapsed < AUTH_TIMEOUT_MS / 1000 + 0.5
        if fresh.mode == "spoe":
            time.sleep(1.5)  # `option spop-check` (inter 1s, fall 1) marks the agent down: no more waiting
            started = time.monotonic()
            assert get(fresh, "/app/after-check", token).status_code == 503
            assert time.monotonic() - started < 0.25
            log = fresh.haproxy.log_text()
            assert re.search(r"/app/after-check HTTP/1.1\" idgate=- .* spoe_err=[1-9]", log), log[-2000:]
        assert fresh.upstream_hits() == 0
    finally:
        fresh.idgate.start()
    # auth_request: the next call reconnects; SPOE: the agent is back once `option spop-check` (inter 1s) sees it
    deadline = time.monotonic() + 3.0
    while (status := get(fresh, "/app/back", token).status_code) != 200 and time.monotonic() < deadline:
        assert status == 503
        time.sleep(0.1)
    assert status == 200
    assert fresh.upstream_hits() == 1


def test_bad_config_is_listed_and_refused_by_the_real_cli() -> None:
    bad = REPO / "tests" / "data" / "bad-config.yaml"
    check = subprocess.run(
        [sys.executable, "-m", "idgate.cli", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 1
    assert check.stderr.count("\n  - ") == 8 and "hunter2" not in check.stderr + check.stdout
    serve = subprocess.run(
        [sys.executable, "-m", "idgate.cli", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert serve.returncode == 1 and "refusing to start" in serve.stderr
