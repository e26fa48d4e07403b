"""Claim hardening through the real HAProxy, in SPOE and in auth_request mode (the ``fresh`` stack fixture):

- a registered claim of the wrong JSON type is a 401 ``invalid_claim_type`` (RFC 7519 §2: ``exp`` is a number);
- an email the IdP did not verify never becomes Grafana's user (403 ``unverified_email``) nor an email header,
  for bearer tokens and for browser sessions (the test IdP's ``trudy`` has alice's address, unverified);
- a back-channel logout token must be recent (``iat``), carry a string ``jti``, and is not accepted twice.

Forged tokens are signed with the test IdP's real key (``stack.idp.sign``); each differs from a good one only in the
property under test, and the good one is accepted in the same test.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from stack import AUDIENCE, Stack, access_claims, browser_login

pytestmark = pytest.mark.e2e
AT = {"typ": "at+jwt"}
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def get(stack: Stack, path: str, token: str) -> httpx.Response:
    with stack.client() as client:
        return client.get(stack.url + path, headers={"authorization": f"Bearer {token}", "accept": "application/json"})


def identity_headers(record: dict[str, Any]) -> dict[str, str]:
    return {n.lower(): v for n, v in record["headers"] if n.lower().startswith(("x-auth-", "x-webauth-"))}


def log_events(stack: Stack, event: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stack.idgate.log_text().splitlines() if f'"event": "{event}"' in line]


# --- claim types ----------------------------------------------------------------------------------------------------


def test_a_claim_of_the_wrong_type_is_401_invalid_claim_type(fresh: Stack) -> None:
    now = int(time.time())
    forged = {
        "exp_string": {"exp": "9999999999"},  # PyJWT alone: accepted, and never expires
        "exp_string_now": {"exp": str(now + 300)},
        "iat_true": {"iat": True},
        "nbf_false": {"nbf": False},
        "sub_number": {"sub": 7},
        "jti_list": {"jti": ["a"]},
        "client_id_number": {"client_id": 1},
        "aud_with_a_number": {"aud": [AUDIENCE, 1]},
    }
    good = fresh.idp.sign(AT, access_claims(fresh))
    assert get(fresh, "/app/control", good).status_code == 200
    seen = {
        name: get(fresh, "/app/x", fresh.idp.sign(AT, access_claims(fresh, **claims)))
        for name, claims in forged.items()
    }
    challenge = 'Bearer realm="idgate", error="invalid_token", error_description="invalid_claim_type"'
    assert {n: (r.status_code, r.headers.get("www-authenticate")) for n, r in seen.items()} == dict.fromkeys(
        forged, (401, challenge)
    )
    assert [r["path"] for r in fresh.upstreams["app"].requests()] == ["/app/control"]
    decisions = [d for d in log_events(fresh, "decision") if d["path"] == "/app/x"]
    assert [d["reasons"] for d in decisions[-len(forged) :]] == [["invalid_claim_type"]] * len(forged)


# --- unverified email -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "verified", [{"email_verified": False}, {}, {"email_verified": "true"}], ids=["false", "absent", "string-true"]
)
def test_an_unverified_email_never_becomes_the_grafana_user(fresh: Stack, verified: dict[str, Any]) -> None:
    trudy = access_claims(fresh, sub="trudy", preferred_username="trudy", email="alice@example.test") | verified
    response = get(fresh, "/grafana/api/user", fresh.idp.sign(AT, trudy))
    assert response.status_code == 403
    assert fresh.upstreams["grafana"].requests() == []
    assert log_events(fresh, "decision")[-1]["reasons"][0] == "unverified_email"
    # the same token, verified: Grafana's user is that address (the control)
    ok = get(fresh, "/grafana/api/user", fresh.idp.sign(AT, trudy | {"email_verified": True}))
    assert ok.status_code == 200 and ok.json()["email"] == "alice@example.test"


def test_an_unverified_email_is_not_passed_to_the_upstream(fresh: Stack) -> None:
    trudy = access_claims(fresh, sub="trudy", preferred_username="trudy", email_verified=False)
    assert get(fresh, "/app/x", fresh.idp.sign(AT, trudy)).status_code == 200
    [record] = fresh.upstreams["app"].requests()
    headers = identity_headers(record)
    assert headers["x-auth-user"] == "trudy" and "x-auth-email" not in headers
    assert "email_dropped_unverified" in log_events(fresh, "decision")[-1]["reasons"]


def test_a_real_idp_token_with_an_unverified_email(fresh: Stack) -> None:
    token = fresh.login("trudy").access_token  # the IdP's own token: alice's address, email_verified false
    assert get(fresh, "/grafana/api/user", token).status_code == 403
    assert get(fresh, "/app/x", token).status_code == 200
    assert "x-auth-email" not in identity_headers(fresh.upstreams["app"].requests()[0])
    assert fresh.upstreams["grafana"].requests() == []


def test_an_unverified_email_in_a_browser_session(fresh: Stack) -> None:
    with fresh.client() as client:
        result = browser_login(fresh, client, "/grafana/", username="trudy")
        assert result.saw_login_form and result.response.status_code == 403, result.hops
        assert log_events(fresh, "decision")[-1]["reasons"][0] == "unverified_email"
        app = client.get(fresh.url + "/app/page", headers={"accept": "application/json"})
    assert app.status_code == 200  # the session itself is fine: only the email is not an identity
    assert fresh.upstreams["grafana"].requests() == []
    headers = identity_headers(fresh.upstreams["app"].requests()[0])
    assert headers["x-auth-user"] == "trudy" and "x-auth-email" not in headers


# --- back-channel logout tokens -------------------------------------------------------------------------------------


def logout_token(stack: Stack, *, sub: str, **overrides: Any) -> str:
    claims = {
        "iss": stack.idp.issuer,
        "aud": "idgate",
        "iat": int(time.time()),
        "jti": uuid.uuid4().hex,
        "sub": sub,
        "events": {BACKCHANNEL_EVENT: {}},
    } | overrides
    return stack.idp.sign({"typ": "logout+jwt"}, {k: v for k, v in claims.items() if v is not ...})


def post_logout(stack: Stack, token: str) -> int:
    with stack.client() as client:
        return client.post(stack.url + "/.idgate/backchannel-logout", data={"logout_token": token}).status_code


def test_backchannel_logout_tokens_must_be_recent_and_are_used_once(fresh: Stack) -> None:
    now = int(time.time())
    with fresh.client() as client:
        assert browser_login(fresh, client, "/app/", username="carol").response.status_code == 200

        def signed_in() -> bool:
            return client.get(fresh.url + "/app/", headers={"accept": "application/json"}).status_code == 200

        refused = {
            "a_day_old": logout_token(fresh, sub="carol", iat=now - 86400),
            "a_day_old_with_exp": logout_token(fresh, sub="carol", iat=now - 86400, exp=now + 300),
            "jti_a_number": logout_token(fresh, sub="carol", jti=7),
            "no_jti": logout_token(fresh, sub="carol", jti=...),
        }
        assert {name: post_logout(fresh, token) for name, token in refused.items()} == dict.fromkeys(refused, 400)
        assert signed_in()  # none of them ended the session
        fresh_token = logout_token(fresh, sub="carol")
        assert post_logout(fresh, fresh_token) == 200
        assert not signed_in()
        assert post_logout(fresh, fresh_token) == 400  # replayed
    reasons = [e["reason"] for e in log_events(fresh, "backchannel_logout_refused")][-5:]
    assert reasons == [
        "logout_token_too_old",
        "logout_token_too_old",
        "invalid_claim_type",
        "invalid_claims",
        "jti_replayed",
    ]
