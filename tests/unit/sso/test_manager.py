"""Browser sessions at decision time (idgate.sso.SessionManager): cookie → session, lifetimes, revocation, refresh.

Everything is real except the network and the clock: ``SessionCookies`` on a ``KeyRing``, a ``MemoryRevocationStore``
and an ``OidcClient`` whose IdP is the conftest ``FakeIdP`` (discovery, JWKS) behind a token endpoint the test
drives. The token endpoint rotates refresh tokens like a strict IdP: each one is redeemable once, a replay answers
``invalid_grant``. Session time is a ``FakeClock`` started at the real time (ID tokens are checked against the real
clock by PyJWT, so both clocks agree at the start).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import SecretStr

from idgate.config import ClaimPaths, IssuerConfig, JwksSettings, LoginConfig, SessionConfig
from idgate.errors import CredentialError
from idgate.jwks import JwksCache
from idgate.sso.claim_sources import ClaimSources, SessionGroups
from idgate.sso.cookies import CookieJarSettings, KeyRing, SessionCookies
from idgate.sso.manager import SessionManager, SessionOutcome
from idgate.sso.oidc import OidcClient, TokenSet
from idgate.sso.session import MemoryRevocationStore, Session
from idgate.verifier import TrustedIssuer

if TYPE_CHECKING:
    from conftest import FakeClock, FakeIdP

ISSUER = "https://idp.test"
DISCOVERY_URL = f"{ISSUER}/.well-known/openid-configuration"
TOKEN_URL = f"{ISSUER}/token"
JWKS_URL = f"{ISSUER}/jwks"
CLIENT_ID = "idgate"
CLIENT_SECRET = "x" * 32
KID = "rsa-1"
COOKIE = "__Host-idgate"
MAX_CHUNKS = 4

IDLE = 7200.0
ABSOLUTE = 86400.0
REFRESH_BEFORE = 60.0
GRACE = 300.0
TOKEN_LIFETIME = 3600
TOUCH = 60.0  # min(60, IDLE / 10)
FIRST_REFRESH_TOKEN = "rt-1"  # what the login's code exchange returned; the IdP answers rt-2, rt-3, ... after it


def half_hash(value: str) -> str:
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


@dataclass
class RotatingIdP:
    """Discovery and JWKS from a ``FakeIdP``; a token endpoint that rotates refresh tokens and records requests.

    ``mode``: ``ok`` (new access, refresh and ID token; a replayed refresh token → invalid_grant), ``invalid_grant``,
    ``unavailable`` (503), ``down`` (connection error). ``claims`` are merged into every refreshed ID token;
    ``with_id_token`` False answers without one; ``rotate`` False answers without a new refresh token.
    """

    idp: FakeIdP
    key: rsa.RSAPrivateKey
    mode: str = "ok"
    delay: float = 0.0
    claims: dict[str, Any] = field(default_factory=dict)
    with_id_token: bool = True
    rotate: bool = True  # False: answers carry no new refresh token, and the old one stays valid
    expires_in: int | None = TOKEN_LIFETIME
    forms: list[dict[str, str]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    redeemed: set[str] = field(default_factory=set)

    @property
    def calls(self) -> int:
        return len(self.forms)

    def id_token(self, access_token: str | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "user-1",
            "aud": CLIENT_ID,
            "exp": now + TOKEN_LIFETIME,
            "iat": now,
            "sid": "idp-sid-1",
            "preferred_username": "alice",
            "email": "alice@example.com",
            "name": "Alice",
            "groups": ["viewers"],
        }
        if access_token is not None:
            claims["at_hash"] = half_hash(access_token)
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not ...}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) != TOKEN_URL:
            return await self.idp.handler(request)
        form = dict(urllib.parse.parse_qsl(request.content.decode("ascii")))
        self.forms.append(form)
        self.authorizations.append(request.headers.get("authorization"))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "unavailable":
            return httpx.Response(503, content=b"<html>maintenance</html>")
        refresh_token = form.get("refresh_token", "")
        if self.mode == "invalid_grant" or refresh_token in self.redeemed:
            return httpx.Response(400, json={"error": "invalid_grant", "error_description": "token reused"})
        n = self.calls + 1
        body: dict[str, Any] = {"access_token": f"at-{n}", "token_type": "Bearer"}
        if self.rotate:
            self.redeemed.add(refresh_token)
            body["refresh_token"] = f"rt-{n}"
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        if self.with_id_token:
            body["id_token"] = self.id_token(f"at-{n}", **self.claims)
        return httpx.Response(200, json=body)


@dataclass
class Harness:
    manager: SessionManager
    store: MemoryRevocationStore
    idp: RotatingIdP
    clock: FakeClock
    cookies: SessionCookies
    sessions: SessionConfig | None = None
    oidc: OidcClient | None = None

    def login(
        self,
        *,
        refresh_token: str | None = FIRST_REFRESH_TOKEN,
        expires_in: float | None = TOKEN_LIFETIME,
        **claims: Any,
    ) -> tuple[Session, str]:
        """A session as the callback would create it, and the Cookie header the browser sends back."""
        id_token = self.idp.id_token("at-1", **claims)
        id_claims = jwt.decode(id_token, options={"verify_signature": False})
        tokens = TokenSet(access_token="at-1", id_token=id_token, refresh_token=refresh_token, expires_in=expires_in)
        session = self.manager.new_session(tokens=tokens, id_claims=id_claims)
        return session, cookie_header(self.manager.issue(session))

    def header_for(self, session: Session) -> str:
        return cookie_header(self.manager.issue(session))


def cookie_header(set_cookies: tuple[str, ...] | list[str]) -> str:
    """The Cookie header a browser sends after storing ``set_cookies`` (deletions dropped)."""
    pairs = [value.split(";", 1)[0] for value in set_cookies]
    return "; ".join(pair for pair in pairs if not pair.endswith("="))


def is_clearing(set_cookies: tuple[str, ...]) -> bool:
    """Every chunk deleted: empty values with Max-Age=0, and the cookie attributes intact."""
    names = [value.split("=", 1)[0] for value in set_cookies]
    return names == [f"{COOKIE}_{i}" for i in range(MAX_CHUNKS)] and all(
        value.split(";", 1)[0].endswith("=") and value.endswith("Max-Age=0") and "Secure; HttpOnly" in value
        for value in set_cookies
    )


@pytest.fixture
def harness(fake_idp: FakeIdP, rsa_key: rsa.RSAPrivateKey, clock: FakeClock) -> Harness:
    clock.now = float(int(time.time()))
    jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": KID, "use": "sig", "alg": "RS256"}
    fake_idp.publish(JWKS_URL, {"keys": [jwk]})
    fake_idp.publish(
        DISCOVERY_URL,
        {
            "issuer": ISSUER,
            "authorization_endpoint": f"{ISSUER}/authorize",
            "token_endpoint": TOKEN_URL,
            "jwks_uri": JWKS_URL,
            "end_session_endpoint": f"{ISSUER}/logout",
            "authorization_response_iss_parameter_supported": True,
        },
    )
    idp = RotatingIdP(idp=fake_idp, key=rsa_key)
    issuer = IssuerConfig(
        name="idp",
        issuer=ISSUER,
        audiences=("https://api.test",),
        client_id=CLIENT_ID,
        client_secret=SecretStr(CLIENT_SECRET),
        jwks=JwksSettings(refetch_cooldown_seconds=0),
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(idp.handler))
    trusted = TrustedIssuer(config=issuer, keys=JwksCache(config=issuer, client=http))
    login = LoginConfig(issuer="idp", redirect_uris=("https://app.test/.idgate/callback",))
    oidc = OidcClient(trusted=trusted, login=login, http=http, dev_mode=False)
    key = os.urandom(32)
    sessions = SessionConfig(
        keys=SecretStr(base64.b64encode(key).decode()),
        idle_timeout_seconds=IDLE,
        absolute_timeout_seconds=ABSOLUTE,
        refresh_before_seconds=REFRESH_BEFORE,
        refresh_grace_seconds=GRACE,
    )
    cookies = SessionCookies(
        ring=KeyRing(keys=[key]), settings=CookieJarSettings(name=COOKIE, max_chunks=MAX_CHUNKS), purpose=b"session"
    )
    store = MemoryRevocationStore(clock=clock)
    manager = SessionManager(config=sessions, cookies=cookies, oidc=oidc, store=store, claims=ClaimPaths(), clock=clock)
    return Harness(manager=manager, store=store, idp=idp, clock=clock, cookies=cookies, sessions=sessions, oidc=oidc)


async def read_back(h: Harness, outcome: SessionOutcome) -> Session | None:
    return await h.manager.read(cookie_header(outcome.set_cookies))


# --- new sessions ---------------------------------------------------------------------------------------------------


def test_new_session_fields(harness: Harness) -> None:
    now = harness.clock()
    session, _ = harness.login(groups=["viewers", "editors", 5, "viewers"])
    assert (session.issuer, session.subject) == (ISSUER, "user-1")
    assert (session.username, session.email, session.name) == ("alice", "alice@example.com", "Alice")
    assert session.groups == ("viewers", "editors")
    assert session.created_at == session.last_seen == now
    assert session.expires_at == now + ABSOLUTE
    assert session.token_expires_at == now + TOKEN_LIFETIME
    assert session.refresh_token == "rt-1"
    assert session.id_token.count(".") == 2
    assert session.idp_sid == "idp-sid-1"


def test_new_session_has_a_new_random_sid_every_time(harness: Harness) -> None:
    sids = {harness.login()[0].sid for _ in range(50)}
    assert len(sids) == 50
    for sid in sids:
        assert len(sid) >= 32  # 24 random bytes, base64url
        assert "idp-sid-1" not in sid


@pytest.mark.parametrize(("claim", "expected"), [("idp-sid-9", "idp-sid-9"), (..., None), (7, None), (["s"], None)])
def test_new_session_idp_sid_from_the_id_token(harness: Harness, claim: object, expected: str | None) -> None:
    session, _ = harness.login(sid=claim)
    assert session.idp_sid == expected


@pytest.mark.parametrize(("claim", "expected"), [(True, True), (False, False), ("true", False), (..., False)])
def test_new_session_keeps_whether_the_email_was_verified(harness: Harness, claim: object, expected: bool) -> None:
    session, _ = harness.login(email_verified=claim)
    assert session.email_verified is expected and session.principal().email_verified is expected


@pytest.mark.anyio
async def test_refresh_updates_whether_the_email_was_verified(harness: Harness) -> None:
    session, header = harness.login(email_verified=True)
    harness.idp.claims = {"email": "alice@elsewhere.example", "email_verified": False}
    advance_into_refresh_window(harness, session)
    refreshed = (await harness.manager.resolve(header)).session
    assert refreshed is not None and refreshed.email == "alice@elsewhere.example"
    assert refreshed.email_verified is False  # a new, unverified address is not carried as verified


def test_new_session_token_expiry(harness: Harness) -> None:
    now = harness.clock()
    exp = int(time.time()) + 1234
    assert harness.login(expires_in=None, exp=exp)[0].token_expires_at == exp  # from the ID token's exp
    assert harness.login(expires_in=10 * ABSOLUTE)[0].token_expires_at == now + ABSOLUTE  # capped at absolute expiry


def test_new_session_without_subject(harness: Harness) -> None:
    with pytest.raises(CredentialError) as excinfo:
        harness.login(sub="")
    assert excinfo.value.reason == "invalid_claims"


def test_new_session_groups_as_a_string_give_no_groups(harness: Harness) -> None:
    assert harness.login(groups="viewers,admin")[0].groups == ()


# --- reading the cookie ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("header", [None, "", "other=1; theme=dark", f"{COOKIE}=x", "__Host-idgate-login_0=abc"])
async def test_no_cookie(harness: Harness, header: str | None) -> None:
    outcome = await harness.manager.resolve(header)
    assert outcome == SessionOutcome(session=None, set_cookies=(), reason="no_cookie")


@pytest.mark.anyio
async def test_fresh_session_is_returned_unchanged(harness: Harness) -> None:
    session, header = harness.login()
    harness.clock.advance(TOUCH - 1)
    outcome = await harness.manager.resolve(f"theme=dark; {header}; lang=en")
    assert outcome == SessionOutcome(session=session)
    assert harness.idp.calls == 0


def flip(header: str, position: int) -> str:
    name, _, value = header.partition("=")
    chars = list(value)
    chars[position] = "A" if chars[position] != "A" else "B"
    return f"{name}={''.join(chars)}"


@pytest.mark.anyio
async def test_tampered_cookie(harness: Harness) -> None:
    _, header = harness.login()
    value_length = len(header.partition("=")[2])
    for position in (3, 10, value_length // 2, value_length - 1):
        outcome = await harness.manager.resolve(flip(header, position))
        assert outcome.session is None
        assert outcome.reason == "invalid_cookie"
        assert is_clearing(outcome.set_cookies)
    truncated = header[:-10]
    assert (await harness.manager.resolve(truncated)).reason == "invalid_cookie"


@pytest.mark.anyio
async def test_cookie_from_another_key_or_purpose(harness: Harness) -> None:
    session, _ = harness.login()
    other = SessionCookies(
        ring=KeyRing(keys=[os.urandom(32)]), settings=CookieJarSettings(name=COOKIE), purpose=b"session"
    )
    forged = cookie_header(other.encode(session.to_bytes(), max_age=60))
    outcome = await harness.manager.resolve(forged)
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "invalid_cookie", True)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "payload",
    [b"{}", b"null", b'{"sid": "x"}', b"\x00" * 40, b"[" * 5_000],
)
async def test_sealed_payload_that_is_not_a_session(harness: Harness, payload: bytes) -> None:
    header = cookie_header(harness.cookies.encode(payload, max_age=60))
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "invalid_cookie", True)


@pytest.mark.anyio
async def test_two_copies_of_the_session_cookie(harness: Harness) -> None:
    _, header = harness.login()
    _, other = harness.login()
    outcome = await harness.manager.resolve(f"{header}; {other}")
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "duplicate_cookie", True)


# --- lifetimes ------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_absolute_expiry(harness: Harness) -> None:
    session, _ = harness.login(expires_in=ABSOLUTE)
    short = replace(session, expires_at=harness.clock() + 100)
    header = harness.header_for(short)
    harness.clock.advance(99)
    assert (await harness.manager.resolve(header)).session is not None
    harness.clock.advance(1)
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "session_expired", True)
    assert harness.idp.calls == 0


@pytest.mark.anyio
async def test_absolute_expiry_of_a_session_due_a_refresh(harness: Harness) -> None:
    _, header = harness.login()
    harness.clock.advance(ABSOLUTE)  # far beyond the token expiry too: no refresh is tried
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason) == (None, "session_expired")
    assert harness.idp.calls == 0


@pytest.mark.anyio
async def test_idle_timeout(harness: Harness) -> None:
    _, header = harness.login(expires_in=ABSOLUTE)
    harness.clock.advance(IDLE)
    assert (await harness.manager.resolve(header)).session is not None  # exactly IDLE is still live
    harness.clock.advance(1)
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "idle_timeout", True)


@pytest.mark.anyio
async def test_touch_reissues_the_cookie_and_restarts_the_idle_clock(harness: Harness) -> None:
    session, header = harness.login(expires_in=ABSOLUTE)
    harness.clock.advance(TOUCH - 1)
    assert (await harness.manager.resolve(header)).set_cookies == ()
    harness.clock.advance(1)
    outcome = await harness.manager.resolve(header)
    assert outcome.session == replace(session, last_seen=harness.clock())
    assert not outcome.refreshed and outcome.reason is None
    assert len(outcome.set_cookies) == MAX_CHUNKS
    live = outcome.set_cookies[0]
    assert live.startswith(f"{COOKIE}_0=v1.") and "; Path=/; Secure; HttpOnly; SameSite=Lax; " in live
    assert live.endswith(f"Max-Age={int(session.expires_at - harness.clock())}")
    assert await read_back(harness, outcome) == outcome.session
    touched = cookie_header(outcome.set_cookies)
    harness.clock.advance(IDLE - 1)
    assert (await harness.manager.resolve(touched)).session is not None
    assert (await harness.manager.resolve(header)).reason == "idle_timeout"


@pytest.mark.anyio
async def test_sign_out_revokes_the_cookie(harness: Harness) -> None:
    session, header = harness.login()
    await harness.manager.sign_out(session)
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "session_revoked", True)
    _, new_header = harness.login()  # a new login is a new sid: not revoked
    assert (await harness.manager.resolve(new_header)).session is not None
    assert await harness.store.revoked_at(f"sid:{session.sid}") is not None


@pytest.mark.anyio
async def test_back_channel_logout_by_idp_sid_and_by_subject(harness: Harness) -> None:
    _, header = harness.login()
    _, other_idp_session = harness.login(sid="idp-sid-2")
    harness.clock.advance(1)
    await harness.store.revoke(f"idp_sid:{ISSUER}|idp-sid-1", at=harness.clock(), until=harness.clock() + ABSOLUTE)
    assert (await harness.manager.resolve(header)).reason == "session_revoked"
    assert (await harness.manager.resolve(other_idp_session)).session is not None
    await harness.store.revoke(f"sub:{ISSUER}|user-1", at=harness.clock(), until=harness.clock() + ABSOLUTE)
    assert (await harness.manager.resolve(other_idp_session)).reason == "session_revoked"
    harness.clock.advance(1)
    _, after = harness.login()  # logged in again after the logout
    assert (await harness.manager.resolve(after)).session is not None


# --- refresh --------------------------------------------------------------------------------------------------------


def advance_into_refresh_window(h: Harness, session: Session, before_expiry: float = 30) -> None:
    h.clock.now = session.token_expires_at - before_expiry


@pytest.mark.anyio
async def test_refresh_window_boundary(harness: Harness) -> None:
    session, header = harness.login()
    harness.clock.now = session.token_expires_at - REFRESH_BEFORE - 1
    outcome = await harness.manager.resolve(header)
    assert not outcome.refreshed and harness.idp.calls == 0
    harness.clock.now = session.token_expires_at - REFRESH_BEFORE
    assert (await harness.manager.resolve(header)).refreshed
    assert harness.idp.calls == 1


@pytest.mark.anyio
async def test_refresh(harness: Harness) -> None:
    session, header = harness.login()
    harness.idp.claims = {"groups": ["admins", "viewers"], "email": "alice@new.example", "name": "Alice L."}
    advance_into_refresh_window(harness, session)
    now = harness.clock()
    outcome = await harness.manager.resolve(header)
    assert outcome.refreshed and outcome.reason is None
    refreshed = outcome.session
    assert refreshed is not None
    assert refreshed.groups == ("admins", "viewers")
    assert (refreshed.email, refreshed.name) == ("alice@new.example", "Alice L.")
    assert refreshed.refresh_token == "rt-2"  # rotated
    assert refreshed.id_token != session.id_token
    assert refreshed.token_expires_at == now + TOKEN_LIFETIME
    assert refreshed.last_seen == now
    for unchanged in ("sid", "issuer", "subject", "created_at", "expires_at", "idp_sid"):
        assert getattr(refreshed, unchanged) == getattr(session, unchanged), unchanged
    assert harness.idp.forms == [{"grant_type": "refresh_token", "refresh_token": "rt-1"}]
    assert (
        harness.idp.authorizations[0] == "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    )
    assert await read_back(harness, outcome) == refreshed
    # The new cookie is a normal live session: no second refresh.
    again = await harness.manager.resolve(cookie_header(outcome.set_cookies))
    assert again == SessionOutcome(session=refreshed)
    assert harness.idp.calls == 1


class FixedSources(ClaimSources):
    """Claim sources answering fixed groups, one answer per call, recording what they were asked with."""

    def __init__(self, *answers: tuple[str, ...]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, object]] = []
        self.note_counts = Counter({"userinfo_unavailable": 1})

    async def groups(self, *, tokens: TokenSet, id_claims: Mapping[str, Any]) -> SessionGroups:
        self.asked.append((tokens.access_token, id_claims.get("sub")))
        return SessionGroups(groups=self.answers.pop(0))


@pytest.mark.anyio
async def test_claim_sources_give_the_groups_at_login_and_at_refresh(harness: Harness) -> None:
    assert harness.sessions is not None and harness.oidc is not None
    sources = FixedSources(("from-access-token",), ("after-refresh",))
    manager = SessionManager(
        config=harness.sessions,
        cookies=harness.cookies,
        oidc=harness.oidc,
        store=harness.store,
        claims=ClaimPaths(),
        clock=harness.clock,
        sources=sources,
    )
    id_token = harness.idp.id_token("at-1")
    id_claims = jwt.decode(id_token, options={"verify_signature": False})
    tokens = TokenSet(access_token="at-1", id_token=id_token, refresh_token=FIRST_REFRESH_TOKEN, expires_in=3600)
    groups = await manager.session_groups(tokens=tokens, id_claims=id_claims)
    session = manager.new_session(tokens=tokens, id_claims=id_claims, groups=groups)
    assert session.groups == ("from-access-token",)  # not the ID token's "viewers"
    advance_into_refresh_window(harness, session)
    outcome = await manager.resolve(cookie_header(manager.issue(session)))
    assert outcome.refreshed and outcome.session is not None
    assert outcome.session.groups == ("after-refresh",)
    assert sources.asked == [("at-1", "user-1"), ("at-2", "user-1")]
    assert manager.group_notes == {"userinfo_unavailable": 1}
    assert harness.manager.group_notes == {}  # without sources: nothing to count


@pytest.mark.anyio
async def test_refresh_without_id_token_or_new_refresh_token(harness: Harness) -> None:
    session, header = harness.login()
    harness.idp.with_id_token = False
    harness.idp.rotate = False
    advance_into_refresh_window(harness, session)
    outcome = await harness.manager.resolve(header)
    refreshed = outcome.session
    assert outcome.refreshed and refreshed is not None
    assert (refreshed.groups, refreshed.id_token) == (session.groups, session.id_token)
    assert refreshed.refresh_token == "rt-1"
    assert refreshed.token_expires_at == harness.clock() + TOKEN_LIFETIME


@pytest.mark.anyio
async def test_refreshed_token_expiry_is_capped_at_the_absolute_expiry(harness: Harness) -> None:
    session, _ = harness.login()
    near_end = replace(session, expires_at=session.token_expires_at + 100)
    advance_into_refresh_window(harness, near_end)
    outcome = await harness.manager.resolve(harness.header_for(near_end))
    assert outcome.session is not None
    assert outcome.session.token_expires_at == near_end.expires_at


@pytest.mark.anyio
async def test_refresh_is_single_flight(harness: Harness) -> None:
    session, header = harness.login()
    harness.idp.delay = 0.2
    advance_into_refresh_window(harness, session)
    outcomes = await asyncio.gather(*(harness.manager.resolve(header) for _ in range(20)))
    assert harness.idp.calls == 1
    first = outcomes[0].session
    assert first is not None and first.refresh_token == "rt-2"
    for outcome in outcomes:
        assert outcome.refreshed and outcome.reason is None
        assert outcome.session == first
        assert outcome.set_cookies
    # A late request still carrying the pre-refresh cookie (within 60 s) gets the refreshed session.
    harness.clock.advance(30)
    late = await harness.manager.resolve(header)
    assert harness.idp.calls == 1
    assert late.refreshed and late.session == first
    assert await read_back(harness, late) == first
    # Without the cache it would have replayed the rotated refresh token and ended the session.
    assert await harness.store.revoked_at(f"sid:{session.sid}") is None
    assert harness.manager.refresh_stats.as_dict() == {
        "ok": 1,
        "transient_failure": 0,
        "invalid_grant": 0,
        "rejected": 0,
    }  # one redemption counted, not one per waiting request


@pytest.mark.anyio
async def test_recent_refresh_cache_is_short_lived(harness: Harness) -> None:
    session, header = harness.login()
    advance_into_refresh_window(harness, session)
    assert (await harness.manager.resolve(header)).refreshed
    harness.clock.advance(61)  # the pre-refresh cookie, past the 60 s cache: its refresh token is replayed
    outcome = await harness.manager.resolve(header)
    assert harness.idp.calls == 2
    assert harness.idp.forms[1]["refresh_token"] == "rt-1"
    assert (outcome.session, outcome.reason) == (None, "refresh_rejected")  # the rotating IdP refuses the replay


@pytest.mark.anyio
async def test_different_sessions_refresh_separately(harness: Harness) -> None:
    a, header_a = harness.login()
    b, header_b = harness.login(refresh_token="rt-b")
    harness.idp.delay = 0.05
    advance_into_refresh_window(harness, a)
    out_a, out_b = await asyncio.gather(harness.manager.resolve(header_a), harness.manager.resolve(header_b))
    assert harness.idp.calls == 2
    assert out_a.session is not None and out_b.session is not None
    assert (out_a.session.sid, out_b.session.sid) == (a.sid, b.sid)


@pytest.mark.anyio
async def test_refresh_invalid_grant_ends_the_session(harness: Harness) -> None:
    session, header = harness.login()
    harness.idp.mode = "invalid_grant"
    advance_into_refresh_window(harness, session)
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "refresh_rejected", True)
    assert await harness.store.revoked_at(f"sid:{session.sid}") is not None
    again = await harness.manager.resolve(header)
    assert again.reason == "session_revoked"
    assert harness.idp.calls == 1  # a revoked session is not refreshed again
    assert (harness.manager.refresh_stats.invalid_grant, harness.manager.refresh_stats.ok) == (1, 0)


@pytest.mark.anyio
async def test_refresh_invalid_grant_for_concurrent_requests(harness: Harness) -> None:
    session, header = harness.login()
    harness.idp.mode = "invalid_grant"
    harness.idp.delay = 0.05
    advance_into_refresh_window(harness, session)
    outcomes = await asyncio.gather(*(harness.manager.resolve(header) for _ in range(5)))
    assert harness.idp.calls == 1
    assert {(o.session, o.reason) for o in outcomes} == {(None, "refresh_rejected")}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["unavailable", "down"])
async def test_transient_refresh_failure_keeps_the_session_until_expiry_plus_grace(harness: Harness, mode: str) -> None:
    session, header = harness.login()
    harness.idp.mode = mode
    for offset in (-30.0, 0.0, GRACE - 1):  # before the token expiry, at it, and within the grace after it
        harness.clock.now = session.token_expires_at + offset
        outcome = await harness.manager.resolve(header)
        assert outcome == SessionOutcome(session=session, reason="refresh_deferred"), offset
    assert harness.idp.calls == 3  # every request retries
    assert await harness.store.revoked_at(f"sid:{session.sid}") is None
    harness.idp.mode = "ok"  # the IdP is back: the same cookie refreshes
    outcome = await harness.manager.resolve(header)
    assert outcome.refreshed and outcome.session is not None and outcome.session.sid == session.sid
    stats = harness.manager.refresh_stats
    assert (stats.transient_failure, stats.ok, stats.invalid_grant, stats.rejected) == (3, 1, 0, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["unavailable", "down"])
async def test_transient_refresh_failure_beyond_the_grace_ends_the_session(harness: Harness, mode: str) -> None:
    session, header = harness.login()
    harness.idp.mode = mode
    harness.clock.now = session.token_expires_at + GRACE
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "refresh_rejected", True)


@pytest.mark.anyio
async def test_refreshed_id_token_for_another_subject_ends_the_session(harness: Harness) -> None:
    session, header = harness.login()
    harness.idp.claims = {"sub": "user-2"}
    advance_into_refresh_window(harness, session)
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "refresh_rejected", True)
    assert await harness.store.revoked_at(f"sid:{session.sid}") is not None
    assert (harness.manager.refresh_stats.rejected, harness.manager.refresh_stats.ok) == (1, 0)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"aud": "someone-else"}, id="wrong-aud"),
        pytest.param({"iss": "https://evil.example"}, id="wrong-iss"),
        pytest.param({"exp": int(time.time()) - 3600}, id="expired"),
        pytest.param({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, id="wrong-at-hash"),
        pytest.param({"azp": "other-client"}, id="wrong-azp"),
        pytest.param({"sub": ...}, id="no-sub"),
    ],
)
async def test_refreshed_id_token_that_fails_verification_ends_the_session(
    harness: Harness, claims: dict[str, Any]
) -> None:
    session, header = harness.login()
    harness.idp.claims = claims
    advance_into_refresh_window(harness, session)
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason) == (None, "refresh_rejected")


@pytest.mark.anyio
async def test_no_refresh_token(harness: Harness) -> None:
    session, header = harness.login(refresh_token=None)
    advance_into_refresh_window(harness, session)
    outcome = await harness.manager.resolve(header)
    assert outcome == SessionOutcome(session=session)  # still valid until the token expiry
    harness.clock.now = session.token_expires_at
    outcome = await harness.manager.resolve(header)
    assert (outcome.session, outcome.reason, is_clearing(outcome.set_cookies)) == (None, "token_expired", True)
    assert harness.idp.calls == 0


@pytest.mark.anyio
async def test_refresh_of_a_revoked_session_is_never_tried(harness: Harness) -> None:
    session, header = harness.login()
    await harness.manager.sign_out(session)
    advance_into_refresh_window(harness, session)
    assert (await harness.manager.resolve(header)).reason == "session_revoked"
    assert harness.idp.calls == 0


@pytest.mark.anyio
async def test_sign_out_after_refresh_also_refuses_the_pre_refresh_cookie(harness: Harness) -> None:
    session, header = harness.login()
    advance_into_refresh_window(harness, session)
    refreshed = await harness.manager.resolve(header)
    assert refreshed.session is not None
    await harness.manager.sign_out(refreshed.session)
    assert (await harness.manager.resolve(header)).reason == "session_revoked"  # not served from the refresh cache
    assert (await harness.manager.resolve(cookie_header(refreshed.set_cookies))).reason == "session_revoked"


# --- bugs -----------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_refresh_finished_after_its_callers_gave_up_is_not_lost(harness: Harness) -> None:
    session, header = harness.login()
    harness.idp.delay = 0.2
    advance_into_refresh_window(harness, session)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(harness.manager.resolve(header), 0.05)  # the decision timed out
    await asyncio.sleep(0.3)  # the shielded refresh completes in the background; the IdP rotated rt-1
    assert harness.idp.calls == 1
    outcome = await harness.manager.resolve(header)  # the browser never got the new cookie
    assert outcome.reason is None and outcome.session is not None
    assert harness.idp.calls == 1


@pytest.mark.anyio
async def test_refresh_to_an_oversized_session_does_not_raise(harness: Harness) -> None:
    session, header = harness.login()
    harness.idp.claims = {"groups": [str(uuid.UUID(int=i)) for i in range(200)]}  # e.g. Entra ID's 200-group cap
    advance_into_refresh_window(harness, session)
    outcome = await harness.manager.resolve(header)
    assert isinstance(outcome, SessionOutcome)


@pytest.mark.anyio
async def test_decoded_session_cache_skips_decryption_but_never_revocation(harness: Harness) -> None:
    session, header = harness.login()
    manager = harness.manager
    assert (await manager.resolve(header)).session == session
    assert (await manager.resolve(header)).session == session
    assert (manager.decoded_hits, manager.decoded_misses) == (1, 1)
    tampered = flip(header, 10)
    assert (await manager.resolve(tampered)).reason == "invalid_cookie"  # a different header is decoded afresh
    await manager.sign_out(session)
    assert (await manager.resolve(header)).reason == "session_revoked"  # cached, yet revocation is still checked
    assert manager.decoded_hits == 2


# --- one refresh across replicas (the store's lock and shared value) -----------------------------------------------


def replica(h: Harness, *, ring: KeyRing | None, wait: float = 1.0) -> SessionManager:
    """Another replica: its own manager (own single-flight and recent cache), the harness's store, IdP and keys."""
    return SessionManager(
        config=h.manager._config,
        cookies=h.cookies,
        oidc=h.manager._oidc,
        store=h.store,
        claims=ClaimPaths(),
        clock=h.clock,
        ring=ring,
        refresh_wait_seconds=wait,
    )


@pytest.mark.anyio
async def test_two_replicas_refreshing_at_once_redeem_the_refresh_token_once(harness: Harness) -> None:
    ring = harness.cookies._ring
    a, b = replica(harness, ring=ring), replica(harness, ring=ring)
    session, header = harness.login()
    advance_into_refresh_window(harness, session)
    harness.idp.delay = 0.2  # both ask while the first refresh is at the IdP
    first, second = await asyncio.gather(a.resolve(header), b.resolve(header))
    assert harness.idp.calls == 1
    assert first.refreshed and second.refreshed
    assert first.session is not None and second.session is not None
    assert first.session.refresh_token == second.session.refresh_token == "rt-2"
    # a late request with the pre-refresh cookie on a third replica gets the same refreshed session, no IdP call
    late = await replica(harness, ring=ring).resolve(header)
    assert late.session == first.session and harness.idp.calls == 1


@pytest.mark.anyio
async def test_without_the_shared_session_the_second_replica_replays_and_loses(harness: Harness) -> None:
    """Guards the test above: without the sealed shared session (no ring), the late replica redeems the rotated
    refresh token again and the IdP answers invalid_grant (what happened before the store was shared)."""
    a, b = replica(harness, ring=None), replica(harness, ring=None)
    session, header = harness.login()
    advance_into_refresh_window(harness, session)
    assert (await a.resolve(header)).refreshed
    late = await b.resolve(header)
    assert late.session is None and late.reason == "refresh_rejected"


@pytest.mark.anyio
async def test_a_replica_waiting_too_long_for_the_lock_keeps_the_session(harness: Harness) -> None:
    ring = harness.cookies._ring
    session, header = harness.login()
    advance_into_refresh_window(harness, session)
    token = await harness.store.lock(f"refresh:{session.sid}:{hashlib.sha256(b'rt-1').hexdigest()}", ttl=60)
    assert token is not None  # a replica that took the lock and went silent
    outcome = await replica(harness, ring=ring, wait=0.1).resolve(header)
    assert outcome.session == session and outcome.reason == "refresh_deferred"
    assert harness.idp.calls == 0
