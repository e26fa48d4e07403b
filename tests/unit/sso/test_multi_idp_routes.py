"""Several login IdPs at the ``/.idgate/`` endpoints (idgate.sso.routes): which IdP a login starts at, the callback's
mix-up checks, and back-channel logout per issuer. Real ``OidcClient``s, ``SessionManager`` and
``MemoryRevocationStore`` behind Starlette; two IdPs served by the conftest ``FakeIdP`` (discovery, JWKS)."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse
from dataclasses import replace
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
from idgate.sso.cookies import CookieJarSettings, KeyRing, SessionCookies
from idgate.sso.manager import SessionManager
from idgate.sso.oidc import BACKCHANNEL_EVENT, LoginState, OidcClient, unverified_issuer
from idgate.sso.routes import Sso, sso_routes
from idgate.sso.session import MemoryRevocationStore, Session
from idgate.verifier import TrustedIssuer

if TYPE_CHECKING:
    from conftest import FakeClock, FakeIdP

SITE = "https://app.test"
IDPS = {"corp": "https://corp.test", "partner": "https://partner.test"}
HTML = {"accept": "text/html"}


def build(
    fake_idp: FakeIdP, keys: dict[str, rsa.RSAPrivateKey], clock: FakeClock, **login: Any
) -> tuple[Starlette, Sso]:
    clients = []
    http = fake_idp.client()
    config = LoginConfig(
        issuers=tuple(IDPS),
        redirect_uris=(f"{SITE}/.idgate/callback", f"{SITE}/.idgate/callback/partner"),
        **login,
    )
    for name, issuer in IDPS.items():
        jwk = RSAAlgorithm.to_jwk(keys[name].public_key(), as_dict=True) | {"kid": name, "alg": "RS256"}
        fake_idp.publish(f"{issuer}/jwks", {"keys": [jwk]})
        fake_idp.publish(
            f"{issuer}/.well-known/openid-configuration",
            {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/auth",
                "token_endpoint": f"{issuer}/token",
                "end_session_endpoint": f"{issuer}/logout",
                "authorization_response_iss_parameter_supported": name == "corp",
            },
        )
        cfg = IssuerConfig(
            name=name,
            issuer=issuer,
            discovery=False,
            jwks_uri=f"{issuer}/jwks",
            audiences=("https://api.test",),
            client_id="idgate",
            client_secret=SecretStr("x" * 32),
            jwks=JwksSettings(refetch_cooldown_seconds=0),
        )
        trusted = TrustedIssuer(config=cfg, keys=JwksCache(config=cfg, client=http))
        clients.append(OidcClient(trusted=trusted, login=config, http=http, dev_mode=False, clock=clock))
    key = os.urandom(32)
    ring = KeyRing(keys=[key])
    store = MemoryRevocationStore(clock=clock)
    sessions = SessionManager(
        config=SessionConfig(keys=SecretStr(base64.b64encode(key).decode())),
        cookies=SessionCookies(ring=ring, settings=CookieJarSettings(name="__Host-idgate"), purpose=b"session"),
        oidc=clients[0],
        store=store,
        claims=ClaimPaths(),
        clock=clock,
        idps={c.issuer: (c, ClaimPaths()) for c in clients},
    )
    sso = Sso(
        login=config,
        oidc=clients[0],
        sessions=sessions,
        login_cookies=SessionCookies(
            ring=ring, settings=CookieJarSettings(name="__Host-idgate-login", max_chunks=1), purpose=b"login-state"
        ),
        ring=ring,
        store=store,
        absolute_timeout_seconds=86400,
        clock=clock,
        clients=tuple(clients),
    )
    return Starlette(routes=sso_routes(lambda _: sso)), sso


@pytest.fixture
def keys(rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey) -> dict[str, rsa.RSAPrivateKey]:
    return {"corp": rsa_key, "partner": rsa_key_2}


@pytest.fixture
def started(clock: FakeClock) -> FakeClock:
    clock.now = float(int(time.time()))
    return clock


def client(app: Starlette, host: str = "app.test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"https://{host}")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "host", "idp", "callback"),
    [
        ("idp=corp&", "app.test", "corp", "/.idgate/callback"),
        ("idp=partner&", "app.test", "partner", "/.idgate/callback/partner"),
        ("", "app.test", "partner", "/.idgate/callback/partner"),  # by host (e2e: host:port falls back to host)
    ],
)
async def test_start_goes_to_the_chosen_idp_with_its_redirect_uri(
    fake_idp: FakeIdP,
    keys: dict[str, rsa.RSAPrivateKey],
    started: FakeClock,
    query: str,
    host: str,
    idp: str,
    callback: str,
) -> None:
    app, _ = build(fake_idp, keys, started, default_issuer_by_host={"app.test": "partner"})
    async with client(app) as http:
        response = await http.get(f"/.idgate/start?{query}rd=/x", headers=HTML | {"host": host})
    assert response.status_code == 302
    location = urllib.parse.urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{IDPS[idp]}/auth"
    assert urllib.parse.parse_qs(location.query)["redirect_uri"] == [SITE + callback]


@pytest.mark.anyio
async def test_without_a_default_the_chooser_and_an_unknown_idp_is_400(
    fake_idp: FakeIdP, keys: dict[str, rsa.RSAPrivateKey], started: FakeClock
) -> None:
    app, _ = build(fake_idp, keys, started)
    async with client(app) as http:
        chooser = await http.get("/.idgate/start?rd=/x", headers=HTML)
        unknown = await http.get("/.idgate/start?idp=%3Cb%3E&rd=/x", headers=HTML)
    assert chooser.status_code == 200 and "idp-partner" in chooser.text
    assert "set-cookie" not in chooser.headers  # no login begins before an IdP is chosen
    assert unknown.status_code == 400 and "<b>" not in unknown.text and "set-cookie" not in unknown.headers


async def begin(http: httpx.AsyncClient, idp: str) -> str:
    """Start a login at ``idp``; the state it sent (the login-state cookie stays in ``http``)."""
    response = await http.get(f"/.idgate/start?idp={idp}&rd=/x", headers=HTML)
    return urllib.parse.parse_qs(urllib.parse.urlsplit(response.headers["location"]).query)["state"][0]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("idp", "path", "iss", "via"),
    [
        ("corp", "/.idgate/callback/partner", None, "redirect_uri"),
        ("partner", "/.idgate/callback", IDPS["partner"], "redirect_uri"),
        ("corp", "/.idgate/callback", IDPS["partner"], None),
        ("corp", "/.idgate/callback", None, None),  # corp advertises RFC 9207: iss is required
        ("partner", "/.idgate/callback/partner", IDPS["corp"], None),  # sent: must match even if not advertised
    ],
)
async def test_an_answer_for_another_idp_is_issuer_mismatch_and_no_code_is_redeemed(
    fake_idp: FakeIdP,
    keys: dict[str, rsa.RSAPrivateKey],
    started: FakeClock,
    caplog: pytest.LogCaptureFixture,
    idp: str,
    path: str,
    iss: str | None,
    via: str | None,
) -> None:
    app, _ = build(fake_idp, keys, started)
    async with client(app) as http:
        params = {"code": "c", "state": await begin(http, idp)} | ({"iss": iss} if iss else {})
        with caplog.at_level("INFO", logger="idgate.sso"):
            response = await http.get(path, params=params, headers=HTML)
    assert response.status_code == 400
    failed = [json.loads(r.getMessage()) for r in caplog.records if "login_failed" in r.getMessage()]
    assert [(e["reason"], e.get("via")) for e in failed] == [("issuer_mismatch", via)]
    assert not [r for r in fake_idp.requests if r.url.path == "/token"]


def logout_token(key: rsa.RSAPrivateKey, kid: str, **claims: Any) -> str:
    body = {"aud": "idgate", "iat": int(time.time()), "jti": os.urandom(8).hex(), "events": {BACKCHANNEL_EVENT: {}}}
    return jwt.encode(body | claims, key, algorithm="RS256", headers={"kid": kid, "typ": "logout+jwt"})


@pytest.mark.anyio
async def test_a_logout_token_revokes_its_own_issuers_subject_only(
    fake_idp: FakeIdP, keys: dict[str, rsa.RSAPrivateKey], started: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app, sso = build(fake_idp, keys, started)
    url = "/.idgate/backchannel-logout"
    partner = logout_token(keys["partner"], "partner", iss=IDPS["partner"], sub="alice")
    forged = logout_token(keys["partner"], "partner", iss=IDPS["corp"], sub="alice")  # partner's key, corp's name
    stranger = logout_token(keys["partner"], "partner", iss="https://stranger.test", sub="alice")
    async with client(app) as http:
        with caplog.at_level("INFO", logger="idgate.sso"):
            answers = [
                (await http.post(url, data={"logout_token": t})).status_code for t in (partner, forged, stranger)
            ]
    assert answers == [200, 400, 400]
    assert await sso.store.revoked_at(f"sub:{IDPS['partner']}|alice") is not None
    assert await sso.store.revoked_at(f"sub:{IDPS['corp']}|alice") is None
    refused = [json.loads(r.getMessage()) for r in caplog.records if "backchannel_logout_refused" in r.getMessage()]
    assert refused[-1]["reason"] == "unknown_issuer"


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c", "a.bm90IGpzb24.c", "a." + base64.urlsafe_b64encode(b'{"iss": 5}').decode() + ".c", "a.W10.c"],
)
def test_unverified_issuer_of_garbage_is_none(token: str) -> None:
    assert unverified_issuer(token) is None


def test_unverified_issuer_reads_the_payload() -> None:
    payload = base64.urlsafe_b64encode(b'{"iss":"https://x.test"}').decode().rstrip("=")
    assert unverified_issuer(f"e30.{payload}.sig") == "https://x.test"


def test_the_login_state_keeps_the_idp() -> None:
    state = LoginState(
        state="s", nonce="n", code_verifier="v", return_to="/", redirect_uri="r", created_at=1.0, idp="partner"
    )
    assert LoginState.from_bytes(state.to_bytes()) == state
    assert LoginState.from_bytes(json.dumps(["s", "n", "v", "/", "r", 1.0]).encode()) is not None  # before: idp ""
    assert LoginState.from_bytes(json.dumps(["s", "n", "v", "/", "r", 1.0, 5]).encode()) is None
    assert LoginState.from_bytes(json.dumps(["s", "n", "v", "/", "r", 1.0, "a", "b"]).encode()) is None


def session_of(issuer: str, now: float, **changes: Any) -> Session:
    base = Session(
        sid="s" * 32,
        issuer=issuer,
        subject="alice",
        username=None,
        email=None,
        name=None,
        groups=(),
        created_at=now,
        last_seen=now,
        expires_at=now + 3600,
        token_expires_at=now + 3600,
        refresh_token=None,
        id_token="",
    )
    return replace(base, **changes)


@pytest.mark.anyio
async def test_a_session_is_refreshed_at_its_own_idp(
    fake_idp: FakeIdP, keys: dict[str, rsa.RSAPrivateKey], started: FakeClock
) -> None:
    _, sso = build(fake_idp, keys, started)
    for issuer in IDPS.values():
        fake_idp.publish(f"{issuer}/token", {"access_token": "at", "expires_in": 300, "refresh_token": "rt-2"})
    now = started()
    session = session_of(IDPS["partner"], now, token_expires_at=now + 1, refresh_token="rt-1")
    header = "; ".join(c.split(";", 1)[0] for c in sso.sessions.issue(session))
    outcome = await sso.sessions.resolve(header)
    assert outcome.session is not None and outcome.refreshed and outcome.session.refresh_token == "rt-2"
    assert fake_idp.hits(f"{IDPS['partner']}/token") == 1
    assert fake_idp.hits(f"{IDPS['corp']}/token") == 0


@pytest.mark.anyio
async def test_a_session_of_an_idp_no_longer_configured_is_no_session(
    fake_idp: FakeIdP, keys: dict[str, rsa.RSAPrivateKey], started: FakeClock
) -> None:
    _, sso = build(fake_idp, keys, started)
    session = session_of("https://gone.test", started())
    header = "; ".join(c.split(";", 1)[0] for c in sso.sessions.issue(session))
    outcome = await sso.sessions.resolve(header)
    assert outcome.session is None and outcome.reason == "unknown_issuer"
