"""The test IdP harness (testidp/server.mjs via idgate_devstack.idp) and the httpx login helper.

One HTTPS IdP with test endpoints serves the module; one extra plain-HTTP IdP without them checks that the
test endpoints stay off by default.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from idgate_devstack.certs import generate_dev_certs
from idgate_devstack.idp import IdpConfig, TestIdp, free_port
from idgate_devstack.login import Tokens, login

REDIRECT_URI = "https://127.0.0.1:9/oauth2/callback"  # never requested: login() stops at the redirect
POST_LOGOUT_URI = "https://127.0.0.1:9/logged-out"
RESOURCE = "https://api.idgate.test"
OTHER_RESOURCE = "https://other.idgate.test"
ALICE_GROUPS = ["grafana-admins", "staff", "looker-analysts"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("idp")


class LogoutReceiver(HTTPServer):
    """A loopback HTTP server that records back-channel logout POST bodies in ``received``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _LogoutHandler)
        self.received: list[str] = []


class _LogoutHandler(BaseHTTPRequestHandler):
    server: LogoutReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.received.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def logout_receiver() -> Iterator[LogoutReceiver]:
    server = LogoutReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def idp(workdir: Path, logout_receiver: LogoutReceiver) -> Iterator[TestIdp]:
    certs = generate_dev_certs(workdir / "tls")
    config = IdpConfig(
        port=free_port(),
        tls_cert=certs.cert,
        tls_key=certs.key,
        ca_file=certs.ca,
        redirect_uris=(REDIRECT_URI,),
        post_logout_redirect_uris=(POST_LOGOUT_URI,),
        backchannel_logout_uri=f"http://127.0.0.1:{logout_receiver.server_port}/backchannel-logout",
        resources=(RESOURCE, OTHER_RESOURCE),
        test_endpoints=True,
        log_file=workdir / "idp.log",
    )
    with TestIdp(config) as running:
        yield running


def do_login(idp: TestIdp, username: str, resource: str | None = RESOURCE, http: httpx.Client | None = None) -> Tokens:
    assert idp.config.ca_file is not None
    return login(
        issuer=idp.issuer,
        client_id=idp.config.client_id,
        client_secret=idp.config.client_secret,
        redirect_uri=REDIRECT_URI,
        username=username,
        resource=resource,
        verify=str(idp.config.ca_file),
        http=http,
    )


def verify(idp: TestIdp, token: str, *, audience: str, algorithms: tuple[str, ...] = ("RS256",)) -> dict[str, Any]:
    """Verify ``token`` against the JWKS as published right now (fetched with httpx, no PyJWKClient)."""
    assert idp.config.ca_file is not None
    ctx = ssl.create_default_context(cafile=str(idp.config.ca_file))
    jwks = httpx.get(idp.jwks_uri, verify=ctx).json()
    kid = jwt.get_unverified_header(token)["kid"]
    matches = [k for k in jwks["keys"] if k["kid"] == kid]
    assert len(matches) == 1, f"kid {kid!r} not published (JWKS kids: {[k['kid'] for k in jwks['keys']]})"
    (jwk,) = matches
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=list(algorithms),
        audience=audience,
        issuer=idp.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return claims


def published_kids(idp: TestIdp) -> list[str]:
    return [k["kid"] for k in idp.jwks()["keys"]]


def test_alice_gets_a_jwt_access_token(idp: TestIdp) -> None:
    started = time.perf_counter()
    tokens = do_login(idp, "alice")
    elapsed = time.perf_counter() - started

    header = jwt.get_unverified_header(tokens.access_token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    assert header["kid"] in published_kids(idp)
    claims = verify(idp, tokens.access_token, audience=RESOURCE)
    assert claims["aud"] == RESOURCE
    assert claims["iss"] == idp.issuer
    assert claims["sub"] == "alice"
    assert claims["client_id"] == "idgate"
    assert claims["groups"] == ALICE_GROUPS
    assert claims["email"] == "alice@example.test"
    assert claims["name"] == "Alice Admin"
    assert claims["preferred_username"] == "alice"
    assert claims["exp"] - claims["iat"] == 300
    assert tokens.expires_in == 300
    assert elapsed < 1.0


def test_id_token_and_refresh_token(idp: TestIdp) -> None:
    tokens = do_login(idp, "alice")
    id_claims = verify(idp, tokens.id_token, audience=idp.config.client_id)
    assert jwt.get_unverified_header(tokens.id_token).get("typ") != "at+jwt"
    assert id_claims["sub"] == "alice"
    assert id_claims["groups"] == ALICE_GROUPS  # conformIdTokenClaims: false
    assert id_claims["email_verified"] is True
    assert tokens.refresh_token

    refreshed = idp.http.post(
        idp.discovery["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": tokens.refresh_token},
        auth=(idp.config.client_id, idp.config.client_secret),
    )
    assert refreshed.status_code == 200, refreshed.text
    claims = verify(idp, refreshed.json()["access_token"], audience=RESOURCE)
    assert claims["sub"] == "alice"
    assert claims["groups"] == ALICE_GROUPS


def test_resource_selects_audience_and_unknown_resource_fails(idp: TestIdp) -> None:
    other = do_login(idp, "bob", resource=OTHER_RESOURCE)
    assert verify(idp, other.access_token, audience=OTHER_RESOURCE)["aud"] == OTHER_RESOURCE
    default = do_login(idp, "bob", resource=None)
    assert verify(idp, default.access_token, audience=RESOURCE)["aud"] == RESOURCE
    with pytest.raises(RuntimeError, match="invalid_target"):
        do_login(idp, "bob", resource="https://evil.example.test")


def test_group_edge_cases_pass_verbatim(idp: TestIdp) -> None:
    mallory = verify(idp, do_login(idp, "mallory").access_token, audience=RESOURCE)
    assert mallory["groups"] == ["viewers,admin", "ops\r\nX-Auth-Roles: admin"]
    carol = verify(idp, do_login(idp, "carol").access_token, audience=RESOURCE)
    assert carol["groups"] == []
    assert carol["name"] == "Carol NoGroups"


def test_email_verified_in_access_and_id_tokens(idp: TestIdp) -> None:
    alice = do_login(idp, "alice")
    assert verify(idp, alice.access_token, audience=RESOURCE)["email_verified"] is True
    trudy = do_login(idp, "trudy")  # alice's address, typed in by trudy and never verified
    for claims in (
        verify(idp, trudy.access_token, audience=RESOURCE),
        verify(idp, trudy.id_token, audience=idp.config.client_id),
    ):
        assert (claims["sub"], claims["email"], claims["email_verified"]) == ("trudy", "alice@example.test", False)


def test_unknown_user_cannot_log_in(idp: TestIdp) -> None:
    with pytest.raises(RuntimeError, match="rejected user 'eve'"):
        do_login(idp, "eve")


def test_sign_uses_the_real_key(idp: TestIdp) -> None:
    now = int(time.time())
    claims = {"iss": idp.issuer, "aud": RESOURCE, "sub": "alice", "iat": now - 600, "exp": now - 300}
    expired = idp.sign({"typ": "at+jwt"}, claims)
    header = jwt.get_unverified_header(expired)
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": published_kids(idp)[0]}
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(idp, expired, audience=RESOURCE)

    fresh = {**claims, "iat": now, "exp": now + 60, "groups": ["x"]}
    assert verify(idp, idp.sign({}, fresh), audience=RESOURCE)["groups"] == ["x"]
    pss = idp.sign({"alg": "PS256"}, fresh)
    assert jwt.get_unverified_header(pss)["alg"] == "PS256"
    assert verify(idp, pss, audience=RESOURCE, algorithms=("PS256",))["sub"] == "alice"

    bogus = idp.sign({"kid": "no-such-kid"}, fresh)
    assert jwt.get_unverified_header(bogus)["kid"] == "no-such-kid"
    with pytest.raises(RuntimeError, match="400"):
        idp.sign({"alg": "HS256"}, fresh)


def test_public_key_pem_matches_jwks(idp: TestIdp) -> None:
    current = published_kids(idp)[0]
    key = load_pem_public_key(idp.public_key_pem())
    assert isinstance(key, rsa.RSAPublicKey)
    jwk = next(k for k in idp.jwks()["keys"] if k["kid"] == current)
    published = jwt.PyJWK(jwk).key
    assert isinstance(published, rsa.RSAPublicKey)
    assert key.public_numbers() == published.public_numbers()
    assert idp.public_key_pem(current) == idp.public_key_pem()


def test_rotate_keys_keeps_old_key_and_sessions(idp: TestIdp) -> None:
    before = do_login(idp, "bob")
    old_kid = jwt.get_unverified_header(before.access_token)["kid"]

    rotation = idp.rotate_keys()
    assert rotation.kid != old_kid
    assert rotation.published[0] == rotation.kid
    assert old_kid in rotation.published
    assert published_kids(idp) == list(rotation.published)
    assert len(rotation.published) >= 2

    after = do_login(idp, "bob")
    assert jwt.get_unverified_header(after.access_token)["kid"] == rotation.kid
    verify(idp, after.access_token, audience=RESOURCE)
    verify(idp, before.access_token, audience=RESOURCE)  # old key still published

    # The refresh token from before the rotation still works: the store survived the rebuild.
    refreshed = idp.http.post(
        idp.discovery["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": before.refresh_token},
        auth=(idp.config.client_id, idp.config.client_secret),
    )
    assert refreshed.status_code == 200, refreshed.text
    assert jwt.get_unverified_header(refreshed.json()["access_token"])["kid"] == rotation.kid

    dropped = idp.rotate_keys(drop_old=True)
    assert dropped.published == (dropped.kid,)
    assert published_kids(idp) == [dropped.kid]
    assert old_kid not in published_kids(idp)  # tokens signed with it no longer verify
    # Dropped keys can still forge tokens ("signed by a retired key").
    old_signed = idp.sign({}, {"sub": "x"}, key=old_kid)
    assert jwt.get_unverified_header(old_signed)["kid"] == old_kid


def test_session_survives_rotation_and_logout_ends_it(idp: TestIdp, logout_receiver: LogoutReceiver) -> None:
    with httpx.Client(verify=idp.config.verify()) as browser:
        first = do_login(idp, "alice", http=browser)
        rotation = idp.rotate_keys()
        # The IdP session cookie still works after the provider was rebuilt: no login form this time,
        # so the (unknown) username is never used.
        again = do_login(idp, "eve", http=browser)
        assert jwt.get_unverified_header(again.access_token)["kid"] == rotation.kid
        assert verify(idp, again.access_token, audience=RESOURCE)["sub"] == "alice"

        page = browser.get(
            idp.discovery["end_session_endpoint"],
            params={"id_token_hint": first.id_token, "post_logout_redirect_uri": POST_LOGOUT_URI, "state": "s1"},
        )
        assert page.status_code == 200
        action = re.search(r'<form id="op.logoutForm"[^>]*action="([^"]+)"', page.text)
        assert action is not None
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
        done = browser.post(action.group(1), data={**fields, "logout": "yes"})
        assert done.status_code == 303
        assert done.headers["location"] == f"{POST_LOGOUT_URI}?state=s1"

        (body,) = logout_receiver.received
        logout_token = body.removeprefix("logout_token=")
        assert jwt.get_unverified_header(logout_token)["typ"] == "logout+jwt"
        claims = verify(idp, logout_token, audience=idp.config.client_id)
        assert claims["sub"] == "alice"
        assert claims["sid"] == jwt.decode(first.id_token, options={"verify_signature": False})["sid"]

        with pytest.raises(RuntimeError, match="rejected user 'eve'"):
            do_login(idp, "eve", http=browser)


def test_set_groups_changes_the_next_token(idp: TestIdp) -> None:
    idp.set_groups("bob", ["staff", "release-managers"])
    try:
        claims = verify(idp, do_login(idp, "bob").access_token, audience=RESOURCE)
        assert claims["groups"] == ["staff", "release-managers"]
    finally:
        idp.set_groups("bob", ["staff"])
    assert verify(idp, do_login(idp, "bob").access_token, audience=RESOURCE)["groups"] == ["staff"]
    with pytest.raises(RuntimeError, match="404"):
        idp.set_groups("nobody", ["x"])


def test_plain_http_idp_has_no_test_endpoints(workdir: Path) -> None:
    config = IdpConfig(port=free_port(), redirect_uris=(REDIRECT_URI,), log_file=workdir / "plain.log")
    with TestIdp(config) as plain:
        assert plain.issuer == f"http://localhost:{config.port}"
        tokens = login(
            issuer=plain.issuer,
            client_id=config.client_id,
            client_secret=config.client_secret,
            redirect_uri=REDIRECT_URI,
            username="alice",
        )
        assert jwt.get_unverified_header(tokens.access_token)["typ"] == "at+jwt"
        for path in ("/test/rotate-keys", "/test/sign", "/test/users/alice/groups"):
            response = plain.http.post(plain.issuer + path, json={"claims": {}, "groups": []})
            assert response.status_code == 404, path
        assert plain.http.get(plain.issuer + "/test/public-key.pem").status_code == 404
        with pytest.raises(RuntimeError, match="disabled"):
            plain.rotate_keys()


def test_start_failure_reports_node_output(idp: TestIdp, workdir: Path) -> None:
    busy = IdpConfig(
        port=idp.config.port,
        tls_cert=idp.config.tls_cert,
        tls_key=idp.config.tls_key,
        ca_file=idp.config.ca_file,
        redirect_uris=(REDIRECT_URI,),
        log_file=workdir / "busy.log",
    )
    with pytest.raises(RuntimeError, match=r"exited with code 2(?s:.*)EADDRINUSE"), TestIdp(busy):
        pass


def test_a_start_that_hangs_is_tried_twice_then_reported(workdir: Path) -> None:
    # a "node" that stays alive and never prints the ready line: the harness kills it and starts once more
    starts = workdir / "starts"
    hanging_node = workdir / "hanging-node"
    hanging_node.write_text(f"#!/bin/sh\necho started >> {starts}\nexec sleep 60\n")
    hanging_node.chmod(0o755)
    hangs = IdpConfig(
        port=free_port(),
        redirect_uris=(REDIRECT_URI,),
        log_file=workdir / "hang.log",
        node=str(hanging_node),
        startup_timeout=0.5,
    )
    hang = r"not ready after 0.5 s \(last: no ready line yet; load average [0-9.]+; node pid \d+: state S, [0-9.]+ s"
    with pytest.raises(RuntimeError, match=hang):
        TestIdp(hangs).start()
    assert starts.read_text().splitlines() == ["started", "started"]
    assert "start attempt 1 hung; trying again" in (workdir / "hang.log").read_text()
