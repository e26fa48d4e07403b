"""The back-channel logout endpoint (idgate.sso.routes): an old logout token is refused, and a ``jti`` is remembered
for the token's acceptance window only (Back-Channel Logout 1.0 §2.6) while the revocation it made lasts the
sessions' lifetime.

Real components (``OidcClient``, ``MemoryRevocationStore``, ``SessionManager``) behind Starlette; the IdP is the
conftest ``FakeIdP`` (discovery, JWKS) and idgate's time is a ``FakeClock`` started at the real time (PyJWT checks
``iat`` against the real clock, so both agree at the start).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import SecretStr
from starlette.applications import Starlette

from idgate.config import ClaimPaths, IssuerConfig, JwksSettings, LoginConfig, SessionConfig
from idgate.jwks import JwksCache
from idgate.metrics import Metrics
from idgate.sso.cookies import CookieJarSettings, KeyRing, SessionCookies
from idgate.sso.manager import SessionManager
from idgate.sso.oidc import BACKCHANNEL_EVENT, OidcClient
from idgate.sso.routes import Sso, sso_routes
from idgate.sso.session import MemoryRevocationStore
from idgate.verifier import TrustedIssuer

if TYPE_CHECKING:
    from conftest import FakeClock, FakeIdP

ISSUER = "https://idp.test"
CLIENT_ID = "idgate"
KID = "rsa-1"
MAX_AGE = 300.0
LEEWAY = 30.0
ABSOLUTE = 86400.0
URL = "https://app.test/.idgate/backchannel-logout"


def build(fake_idp: FakeIdP, rsa_key: rsa.RSAPrivateKey, clock: FakeClock) -> tuple[Starlette, Sso]:
    jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": KID, "use": "sig", "alg": "RS256"}
    fake_idp.publish(f"{ISSUER}/jwks", {"keys": [jwk]})
    issuer = IssuerConfig(
        name="idp",
        issuer=ISSUER,
        discovery=False,
        jwks_uri=f"{ISSUER}/jwks",
        audiences=("https://api.test",),
        leeway_seconds=LEEWAY,
        client_id=CLIENT_ID,
        client_secret=SecretStr("x" * 32),
        jwks=JwksSettings(refetch_cooldown_seconds=0),
    )
    login = LoginConfig(
        issuer="idp", redirect_uris=("https://app.test/.idgate/callback",), logout_token_max_age_seconds=MAX_AGE
    )
    http = fake_idp.client()
    oidc = OidcClient(
        trusted=TrustedIssuer(config=issuer, keys=JwksCache(config=issuer, client=http)),
        login=login,
        http=http,
        dev_mode=False,
        clock=clock,
    )
    key = os.urandom(32)
    ring = KeyRing(keys=[key])
    store = MemoryRevocationStore(clock=clock)
    cookies = SessionCookies(ring=ring, settings=CookieJarSettings(name="__Host-idgate"), purpose=b"session")
    sessions = SessionManager(
        config=SessionConfig(keys=SecretStr(base64.b64encode(key).decode()), absolute_timeout_seconds=ABSOLUTE),
        cookies=cookies,
        oidc=oidc,
        store=store,
        claims=ClaimPaths(),
        clock=clock,
    )
    sso = Sso(
        login=login,
        oidc=oidc,
        sessions=sessions,
        login_cookies=SessionCookies(
            ring=ring, settings=CookieJarSettings(name="__Host-idgate-login", max_chunks=1), purpose=b"login-state"
        ),
        ring=ring,
        store=store,
        absolute_timeout_seconds=ABSOLUTE,
        clock=clock,
        metrics=Metrics(),
    )
    return Starlette(routes=sso_routes(lambda _: sso)), sso


def logout_token(key: rsa.RSAPrivateKey, **overrides: Any) -> str:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "iat": int(time.time()),
        "jti": "jti-1",
        "sid": "idp-sid-1",
        "events": {BACKCHANNEL_EVENT: {}},
    } | overrides
    claims = {k: v for k, v in claims.items() if v is not ...}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID, "typ": "logout+jwt"})


async def post(app: Starlette, token: str) -> int:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        response = await client.post(URL, data={"logout_token": token})
    assert response.headers["cache-control"] == "no-store"
    return response.status_code


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.sso"]
    return [e["reason"] for e in events if e["event"] == "backchannel_logout_refused"]


@pytest.fixture
def started(clock: FakeClock) -> FakeClock:
    clock.now = float(int(time.time()))
    return clock


@pytest.mark.anyio
@pytest.mark.parametrize("exp", [..., 3600], ids=["no-exp", "exp-in-an-hour"])
async def test_a_day_old_logout_token_is_refused_and_ends_nothing(
    fake_idp: FakeIdP, rsa_key: rsa.RSAPrivateKey, started: FakeClock, caplog: pytest.LogCaptureFixture, exp: Any
) -> None:
    app, sso = build(fake_idp, rsa_key, started)
    now = int(started())
    old = logout_token(rsa_key, iat=now - 86400, exp=now + exp if exp is not ... else ...)
    with caplog.at_level("INFO", logger="idgate.sso"):
        assert await post(app, old) == 400
    assert refusals(caplog) == ["logout_token_too_old"]
    assert await sso.store.revoked_at(f"idp_sid:{ISSUER}|idp-sid-1") is None


@pytest.mark.anyio
async def test_the_jti_is_remembered_for_the_tokens_window_and_the_revocation_for_the_sessions_lifetime(
    fake_idp: FakeIdP, rsa_key: rsa.RSAPrivateKey, started: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app, sso = build(fake_idp, rsa_key, started)
    iat = int(started())
    token = logout_token(rsa_key, iat=iat)
    jti_key, sid_key = f"jti:{ISSUER}|jti-1", f"idp_sid:{ISSUER}|idp-sid-1"
    with caplog.at_level("INFO", logger="idgate.sso"):
        assert await post(app, token) == 200
        started.advance(MAX_AGE + LEEWAY - 1)
        assert await post(app, token) == 400  # replayed within the window
        started.advance(1.5)  # the window is over: the token is too old, and its jti may be forgotten
        assert await sso.store.revoked_at(jti_key) is None
        assert await post(app, token) == 400
    assert refusals(caplog) == ["jti_replayed", "logout_token_too_old"]
    assert sso.metrics is not None  # every logged event is counted, refusals by reason
    value = sso.metrics.registry.get_sample_value
    assert value("idgate_backchannel_logouts_total") == 1
    for reason in ("jti_replayed", "logout_token_too_old"):
        assert value("idgate_backchannel_logouts_refused_total", {"reason": reason}) == 1
    assert await sso.store.revoked_at(sid_key) == iat  # sessions of that IdP session stay ended
    started.advance(ABSOLUTE - MAX_AGE - LEEWAY - 2)
    assert await sso.store.revoked_at(sid_key) == iat


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"jti": ...}, "invalid_claims"),
        ({"jti": 7}, "invalid_claim_type"),
        ({"iat": str(int(time.time()))}, "invalid_claim_type"),
        ({"iat": ...}, "invalid_claims"),
    ],
    ids=["no-jti", "jti-number", "iat-string", "no-iat"],
)
async def test_logout_tokens_without_a_usable_jti_or_iat_are_400(
    fake_idp: FakeIdP,
    rsa_key: rsa.RSAPrivateKey,
    started: FakeClock,
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, Any],
    reason: str,
) -> None:
    app, sso = build(fake_idp, rsa_key, started)
    with caplog.at_level(logging.INFO, logger="idgate.sso"):
        assert await post(app, logout_token(rsa_key, **overrides)) == 400
    assert refusals(caplog) == [reason]
    assert await sso.store.revoked_at(f"idp_sid:{ISSUER}|idp-sid-1") is None
