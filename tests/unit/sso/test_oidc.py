"""The OIDC relying party (idgate.sso.oidc): authorization request with PKCE S256, RFC 9207 ``iss``, code exchange with
client_secret_basic, refresh errors, ID token (OIDC Core §3.1.3.7) and logout token (Back-Channel Logout §2.6) checks,
and the RP-initiated logout URL.

The IdP is the conftest ``FakeIdP`` (discovery and JWKS from its URL table) with a token endpoint in front of it
whose answers the test sets and whose requests (form bodies, ``Authorization`` headers) it records. Tokens are
signed with the module's RSA test key through PyJWT; only the property under test differs from a good token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm
from pydantic import SecretStr

from idgate.config import IssuerConfig, JwksSettings, LoginConfig
from idgate.errors import ProviderError, TokenError
from idgate.jwks import JwksCache
from idgate.sso.oidc import BACKCHANNEL_EVENT, LoginState, OidcClient, TokenSet, at_hash_matches
from idgate.verifier import TrustedIssuer

if TYPE_CHECKING:
    from conftest import FakeClock, FakeIdP

ISSUER = "https://idp.test"
DISCOVERY_URL = f"{ISSUER}/.well-known/openid-configuration"
AUTHORIZE_URL = f"{ISSUER}/authorize"
TOKEN_URL = f"{ISSUER}/token"
JWKS_URL = f"{ISSUER}/jwks"
END_SESSION_URL = f"{ISSUER}/logout"
CLIENT_ID = "idgate"
CLIENT_SECRET = "x" * 32
REDIRECT_URI = "https://app.test/.idgate/callback"
POST_LOGOUT = "https://app.test/signed-out"
API_AUDIENCE = "https://api.test"
KID = "rsa-1"
NONCE = "n-0S6_WzA2Mj"
UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]+")  # RFC 7636 §4.1 code_verifier alphabet


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def half_hash(value: str, hasher: Callable[[bytes], Any] = hashlib.sha256) -> str:
    """OIDC Core §3.3.2.11: base64url of the left half of the hash of the ASCII octets."""
    digest = hasher(value.encode("ascii")).digest()
    return b64url(digest[: len(digest) // 2])


def discovery(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": AUTHORIZE_URL,
        "token_endpoint": TOKEN_URL,
        "jwks_uri": JWKS_URL,
        "end_session_endpoint": END_SESSION_URL,
        "authorization_response_iss_parameter_supported": True,
        # Advertised but never used: idgate pins its algorithms in config.
        "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"],
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


@dataclass
class TokenEndpoint:
    """The IdP's token endpoint in front of a ``FakeIdP``: answers with ``answer``, records every request."""

    idp: FakeIdP
    answer: Callable[[dict[str, str]], httpx.Response] = field(
        default=lambda form: httpx.Response(200, json={"access_token": "at", "token_type": "Bearer"})
    )
    delay: float = 0.0
    down: bool = False
    forms: list[dict[str, str]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    content_types: list[str | None] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.forms)

    def reply(self, status: int, body: object) -> None:
        self.answer = lambda form: httpx.Response(status, json=body)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) != TOKEN_URL:
            return await self.idp.handler(request)
        pairs = urllib.parse.parse_qsl(request.content.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        assert len(pairs) == len(dict(pairs)), "a form field was sent twice"
        assert request.method == "POST"
        self.forms.append(dict(pairs))
        self.authorizations.append(request.headers.get("authorization"))
        self.content_types.append(request.headers.get("content-type"))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return self.answer(self.forms[-1])


@pytest.fixture
def idp(fake_idp: FakeIdP, rsa_key: rsa.RSAPrivateKey) -> TokenEndpoint:
    jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": KID, "use": "sig", "alg": "RS256"}
    fake_idp.publish(JWKS_URL, {"keys": [jwk]})
    fake_idp.publish(DISCOVERY_URL, discovery())
    return TokenEndpoint(idp=fake_idp)


def issuer_config(**overrides: Any) -> IssuerConfig:
    settings: dict[str, Any] = {
        "name": "idp",
        "issuer": ISSUER,
        "audiences": (API_AUDIENCE,),
        "client_id": CLIENT_ID,
        "client_secret": SecretStr(CLIENT_SECRET),
        "jwks": JwksSettings(refetch_cooldown_seconds=0, unknown_kid_cooldown_seconds=0),
    }
    settings.update(overrides)
    return IssuerConfig(**settings)


def login_config(**overrides: Any) -> LoginConfig:
    settings: dict[str, Any] = {
        "issuer": "idp",
        "redirect_uris": (REDIRECT_URI,),
        "post_logout_redirect_uri": POST_LOGOUT,
    }
    settings.update(overrides)
    return LoginConfig(**settings)


MakeClient = Callable[..., OidcClient]


@pytest.fixture
def make_client(idp: TokenEndpoint) -> MakeClient:
    def build(
        *,
        dev_mode: bool = False,
        login: LoginConfig | None = None,
        clock: Callable[[], float] = time.time,
        **issuer: Any,
    ) -> OidcClient:
        config = issuer_config(**issuer)
        http = httpx.AsyncClient(transport=httpx.MockTransport(idp.handler))
        cache = JwksCache(config=config, client=http, dev_mode=dev_mode)
        return OidcClient(
            trusted=TrustedIssuer(config=config, keys=cache),
            login=login or login_config(),
            http=http,
            dev_mode=dev_mode,
            clock=clock,
        )

    return build


@pytest.fixture
def client(make_client: MakeClient) -> OidcClient:
    return make_client()


def id_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "auth_time": now,
        "nonce": NONCE,
        "sid": "idp-session-1",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "groups": ["viewers"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


class FromNow(int):
    """A time claim written as seconds from the moment the token is signed, not from test collection (the
    parametrized claims below are built when pytest collects, minutes before a long suite runs them)."""


def logout_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "iat": FromNow(0),
        "jti": "jti-1",
        "sid": "idp-session-1",
        "events": {BACKCHANNEL_EVENT: {}},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


_PARAMETERS_BUILT_AT = int(time.time())  # when this module's parameters (claims with times in them) were built


def as_of_now(claims: dict[str, Any]) -> dict[str, Any]:
    """A parameter's claims with ``iat``/``exp``/``nbf`` moved by the time since collection: a long suite must not age
    them (a two-minute ``exp`` built at collection has expired when a test late in the run signs it)."""
    shift = int(time.time()) - _PARAMETERS_BUILT_AT
    timed = ("iat", "exp", "nbf")
    return {k: v + shift if k in timed and type(v) is int else v for k, v in claims.items()}


def sign(claims: dict[str, Any], key: Any, *, typ: str | None = "JWT", alg: str = "RS256", kid: str = KID) -> str:
    """PyJWT-signed compact JWS; ``typ=None`` leaves the header without ``typ``; :class:`FromNow` times resolved."""
    now = int(time.time())
    claims = {k: now + int(v) if isinstance(v, FromNow) else v for k, v in claims.items()}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": typ})


def login_state(**overrides: Any) -> LoginState:
    values: dict[str, Any] = {
        "state": "st-123",
        "nonce": NONCE,
        "code_verifier": "v" * 43 + "-._~",
        "return_to": "https://app.test/dash",
        "redirect_uri": REDIRECT_URI,
        "created_at": 1000.0,
    }
    values.update(overrides)
    return LoginState(**values)


def token_response(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_token": "at-1",
        "token_type": "Bearer",
        "expires_in": 300,
        "refresh_token": "rt-1",
        "id_token": "h.p.s",
        "scope": "openid profile",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def tokens(id_token: str | None, refresh_token: str | None, expires_in: float | None) -> TokenSet:
    return TokenSet(access_token="at-1", id_token=id_token, refresh_token=refresh_token, expires_in=expires_in)


async def id_reason(
    client: OidcClient, token: str, *, nonce: str | None = NONCE, access_token: str | None = None
) -> str:
    with pytest.raises(TokenError) as excinfo:
        await client.verify_id_token(token, nonce=nonce, access_token=access_token)
    return excinfo.value.reason


async def logout_reason(client: OidcClient, token: str) -> str:
    with pytest.raises(TokenError) as excinfo:
        await client.verify_logout_token(token)
    return excinfo.value.reason


# --- construction and metadata --------------------------------------------------------------------------------------


def test_client_needs_client_id_and_secret(idp: TokenEndpoint) -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(idp.handler))
    for config in (issuer_config(client_id=None), issuer_config(client_secret=None)):
        trusted = TrustedIssuer(config=config, keys=JwksCache(config=config, client=http))
        with pytest.raises(ValueError, match="client_id and client_secret"):
            OidcClient(trusted=trusted, login=login_config(), http=http, dev_mode=False)


@pytest.mark.anyio
async def test_metadata_is_fetched_once(client: OidcClient, idp: TokenEndpoint) -> None:
    meta = await client.metadata()
    assert meta["token_endpoint"] == TOKEN_URL
    await client.metadata()
    await client.authorization_url(login_state())
    assert idp.idp.hits(DISCOVERY_URL) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(discovery(issuer=ISSUER + "/"), id="issuer-trailing-slash"),
        pytest.param(discovery(issuer="https://idp.test.evil.example"), id="issuer-prefix"),
        pytest.param(discovery(issuer="HTTPS://IDP.TEST"), id="issuer-case"),
        pytest.param(discovery(issuer=None), id="issuer-missing"),
        pytest.param(discovery(token_endpoint="http://idp.test/token"), id="token-endpoint-http"),
        pytest.param(discovery(authorization_endpoint="http://idp.test/authorize"), id="authorize-endpoint-http"),
        pytest.param(discovery(token_endpoint=None), id="token-endpoint-missing"),
        pytest.param(discovery(authorization_endpoint=["https://idp.test/a"]), id="authorize-endpoint-list"),
        pytest.param(discovery(token_endpoint="javascript:alert(1)"), id="token-endpoint-javascript"),
        pytest.param([discovery()], id="not-an-object"),
    ],
)
async def test_metadata_refused(make_client: MakeClient, idp: TokenEndpoint, doc: object) -> None:
    idp.idp.publish(DISCOVERY_URL, doc)
    with pytest.raises(ProviderError) as excinfo:
        await make_client().metadata()
    assert excinfo.value.reason == "bad_metadata"
    assert excinfo.value.transient is False


@pytest.mark.anyio
async def test_http_endpoints_only_in_dev_mode(make_client: MakeClient, idp: TokenEndpoint) -> None:
    idp.idp.publish(
        DISCOVERY_URL,
        discovery(authorization_endpoint="http://idp.test/authorize", token_endpoint="http://idp.test/token"),
    )
    with pytest.raises(ProviderError):
        await make_client(dev_mode=False).metadata()
    meta = await make_client(dev_mode=True).metadata()
    assert meta["token_endpoint"] == "http://idp.test/token"


@pytest.mark.anyio
async def test_metadata_unreachable_is_transient(client: OidcClient, idp: TokenEndpoint) -> None:
    idp.idp.down = True
    with pytest.raises(ProviderError) as excinfo:
        await client.metadata()
    assert (excinfo.value.reason, excinfo.value.transient) == ("idp_unavailable", True)
    idp.idp.down = False
    assert (await client.metadata())["issuer"] == ISSUER  # a failure is not cached


# --- authorization request (OIDC Core §3.1.2.1, RFC 7636) -----------------------------------------------------------


def test_new_login_is_fresh_and_pkce_shaped(client: OidcClient) -> None:
    logins = [client.new_login(return_to="/x", redirect_uri=REDIRECT_URI, now=1234.5) for _ in range(20)]
    assert len({login.state for login in logins}) == 20
    assert len({login.nonce for login in logins}) == 20
    assert len({login.code_verifier for login in logins}) == 20
    for login in logins:
        assert 43 <= len(login.code_verifier) <= 128
        assert UNRESERVED.fullmatch(login.code_verifier)
        assert len(login.state) >= 22 and len(login.nonce) >= 22  # >= 128 bits of entropy
        assert (login.return_to, login.redirect_uri, login.created_at) == ("/x", REDIRECT_URI, 1234.5)
        assert LoginState.from_bytes(login.to_bytes()) == login


@pytest.mark.parametrize(
    "raw", [b"", b"{}", b"[1,2,3,4,5,6]", b'["s","n","v","r","u"]', b'["s","n","v","r","u","t"]', b"[" * 100_000]
)
def test_login_state_from_bytes_refuses(raw: bytes) -> None:
    assert LoginState.from_bytes(raw) is None


@pytest.mark.anyio
async def test_authorization_url(client: OidcClient) -> None:
    login = client.new_login(return_to="/", redirect_uri=REDIRECT_URI, now=0.0)
    url = await client.authorization_url(login)
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AUTHORIZE_URL
    query = urllib.parse.parse_qs(parts.query, strict_parsing=True)
    assert all(len(v) == 1 for v in query.values())
    params = {k: v[0] for k, v in query.items()}
    expected_challenge = b64url(hashlib.sha256(login.code_verifier.encode("ascii")).digest())
    assert params == {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile email groups offline_access",
        "state": login.state,
        "nonce": login.nonce,
        "code_challenge": expected_challenge,
        "code_challenge_method": "S256",
    }
    assert "code_verifier" not in url and login.code_verifier not in url


@pytest.mark.anyio
async def test_authorization_url_with_resource_and_scopes(make_client: MakeClient) -> None:
    client = make_client(login=login_config(resource="https://api.test/", scopes=("openid", "email")))
    url = await client.authorization_url(login_state())
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert params["resource"] == "https://api.test/"
    assert params["scope"] == "openid email"
    # RFC 7636 Appendix B test vector, through our own recomputation.
    rfc_verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    url = await client.authorization_url(login_state(code_verifier=rfc_verifier))
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert params["code_challenge"] == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


# --- RFC 9207 iss in the authorization response ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_check_response_issuer_when_advertised(client: OidcClient) -> None:
    await client.check_response_issuer(ISSUER)
    for bad in (None, "", ISSUER + "/", "https://evil.example", "https://idp.test.evil"):
        with pytest.raises(ProviderError) as excinfo:
            await client.check_response_issuer(bad)
        assert (excinfo.value.reason, excinfo.value.transient) == ("issuer_mismatch", False)


@pytest.mark.anyio
async def test_check_response_issuer_when_not_advertised(make_client: MakeClient, idp: TokenEndpoint) -> None:
    idp.idp.publish(DISCOVERY_URL, discovery(authorization_response_iss_parameter_supported=None))
    client = make_client()
    await client.check_response_issuer(None)  # absent is fine when not advertised
    await client.check_response_issuer(ISSUER)
    with pytest.raises(ProviderError):
        await client.check_response_issuer("https://evil.example")  # present must still match


@pytest.mark.anyio
async def test_check_response_issuer_advertised_as_string_true_is_not_advertised(
    make_client: MakeClient, idp: TokenEndpoint
) -> None:
    idp.idp.publish(DISCOVERY_URL, discovery(authorization_response_iss_parameter_supported="true"))
    await make_client().check_response_issuer(None)


# --- code exchange (RFC 6749 §4.1.3, §2.3.1) ------------------------------------------------------------------------


def decode_basic(header: str | None) -> tuple[str, str]:
    assert header is not None and header.startswith("Basic ")
    raw = base64.b64decode(header[len("Basic ") :], validate=True).decode("ascii")
    user, sep, password = raw.partition(":")
    assert sep == ":"
    return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)


@pytest.mark.anyio
async def test_exchange_code(client: OidcClient, idp: TokenEndpoint) -> None:
    idp.reply(200, token_response())
    login = login_state()
    tokens = await client.exchange_code(code="code-abc", login=login)
    assert tokens == TokenSet(access_token="at-1", id_token="h.p.s", refresh_token="rt-1", expires_in=300.0)
    assert idp.forms == [
        {
            "grant_type": "authorization_code",
            "code": "code-abc",
            "redirect_uri": REDIRECT_URI,
            "code_verifier": login.code_verifier,
        }
    ]
    assert decode_basic(idp.authorizations[0]) == (CLIENT_ID, CLIENT_SECRET)
    assert idp.content_types[0] == "application/x-www-form-urlencoded"


@pytest.mark.anyio
async def test_client_secret_basic_form_encodes_id_and_secret(make_client: MakeClient, idp: TokenEndpoint) -> None:
    client_id, secret = "my client:1/é", "p@ss:w rd+/&=%~" + "x" * 20
    client = make_client(client_id=client_id, client_secret=SecretStr(secret))
    idp.reply(200, token_response())
    await client.exchange_code(code="c", login=login_state())
    header = idp.authorizations[0]
    assert header is not None
    raw = base64.b64decode(header[len("Basic ") :]).decode("ascii")
    assert raw.count(":") == 1  # the colons inside the id and the secret are escaped: one separator is left
    assert decode_basic(header) == (client_id, secret)
    assert client.client_id == client_id


@pytest.mark.anyio
async def test_exchange_code_sends_resource_when_configured(make_client: MakeClient, idp: TokenEndpoint) -> None:
    idp.reply(200, token_response())
    await make_client(login=login_config(resource="https://api.test/")).exchange_code(code="c", login=login_state())
    assert idp.forms[0]["resource"] == "https://api.test/"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (token_response(id_token=..., refresh_token=..., expires_in=...), tokens(None, None, None)),
        (token_response(expires_in="300"), tokens("h.p.s", "rt-1", None)),
        (token_response(id_token=5, refresh_token=["r"]), tokens(None, None, 300.0)),
        (token_response(expires_in=59.5), tokens("h.p.s", "rt-1", 59.5)),
    ],
)
async def test_token_response_fields(client: OidcClient, idp: TokenEndpoint, body: Any, expected: TokenSet) -> None:
    idp.reply(200, body)
    assert await client.exchange_code(code="c", login=login_state()) == expected


@pytest.mark.anyio
@pytest.mark.parametrize("body", [token_response(access_token=...), token_response(access_token=7), ["at-1"]])
async def test_token_response_without_access_token(client: OidcClient, idp: TokenEndpoint, body: object) -> None:
    idp.reply(200, body)
    with pytest.raises(ProviderError) as excinfo:
        await client.exchange_code(code="c", login=login_state())
    assert (excinfo.value.reason, excinfo.value.transient) == ("bad_token_response", False)


# --- refresh (RFC 6749 §6) and token endpoint errors (§5.2) ---------------------------------------------------------


@pytest.mark.anyio
async def test_refresh_request(client: OidcClient, idp: TokenEndpoint) -> None:
    idp.reply(200, token_response(access_token="at-2", refresh_token="rt-2"))
    tokens = await client.refresh("rt-1")
    assert (tokens.access_token, tokens.refresh_token) == ("at-2", "rt-2")
    assert idp.forms == [{"grant_type": "refresh_token", "refresh_token": "rt-1"}]
    assert decode_basic(idp.authorizations[0]) == (CLIENT_ID, CLIENT_SECRET)


@pytest.mark.anyio
async def test_refresh_sends_resource_when_configured(make_client: MakeClient, idp: TokenEndpoint) -> None:
    idp.reply(200, token_response())
    await make_client(login=login_config(resource="https://api.test/")).refresh("rt-1")
    assert idp.forms[0] == {"grant_type": "refresh_token", "refresh_token": "rt-1", "resource": "https://api.test/"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, {"error": "invalid_grant", "error_description": "token revoked"}, "invalid_grant"),
        (401, {"error": "invalid_client"}, "invalid_client"),
        (400, {"error": "invalid_request"}, "invalid_request"),
        (400, {"error": "unauthorized_client"}, "idp_error"),
        (400, {"error": "<script>"}, "idp_error"),
        (403, ["invalid_grant"], "idp_error"),
        (200, {"error": "invalid_grant"}, "bad_token_response"),
    ],
)
async def test_refresh_refused_is_not_transient(
    client: OidcClient, idp: TokenEndpoint, status: int, body: object, reason: str
) -> None:
    idp.reply(status, body)
    with pytest.raises(ProviderError) as excinfo:
        await client.refresh("rt-1")
    assert (excinfo.value.reason, excinfo.value.transient) == (reason, False)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_refresh_5xx_is_transient(client: OidcClient, idp: TokenEndpoint, status: int) -> None:
    idp.answer = lambda form: httpx.Response(status, content=b"<html>down</html>")
    with pytest.raises(ProviderError) as excinfo:
        await client.refresh("rt-1")
    assert (excinfo.value.reason, excinfo.value.transient) == ("idp_unavailable", True)


@pytest.mark.anyio
async def test_refresh_connection_error_is_transient(client: OidcClient, idp: TokenEndpoint) -> None:
    await client.metadata()
    idp.down = True
    with pytest.raises(ProviderError) as excinfo:
        await client.refresh("rt-1")
    assert (excinfo.value.reason, excinfo.value.transient) == ("idp_unavailable", True)
    assert idp.calls == 1


@pytest.mark.anyio
async def test_refresh_timeout_is_transient(make_client: MakeClient, idp: TokenEndpoint) -> None:
    client = make_client()
    await client.metadata()

    def slow(form: dict[str, str]) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    idp.answer = slow
    with pytest.raises(ProviderError) as excinfo:
        await client.refresh("rt-1")
    assert excinfo.value.transient is True


@pytest.mark.anyio
async def test_token_answer_not_json(client: OidcClient, idp: TokenEndpoint) -> None:
    idp.answer = lambda form: httpx.Response(200, content=b"access_token=at")
    with pytest.raises(ProviderError) as excinfo:
        await client.refresh("rt-1")
    assert excinfo.value.reason == "bad_response"


# --- ID token (OIDC Core §3.1.3.7) ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_id_token_good(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    claims = await client.verify_id_token(sign(id_claims(), rsa_key), nonce=NONCE, access_token=None)
    assert (claims["sub"], claims["sid"], claims["nonce"]) == ("user-1", "idp-session-1", NONCE)


@pytest.mark.anyio
@pytest.mark.parametrize("typ", [None, "JWT", "jwt"])
async def test_id_token_typ_absent_or_jwt(client: OidcClient, rsa_key: rsa.RSAPrivateKey, typ: str | None) -> None:
    await client.verify_id_token(sign(id_claims(), rsa_key, typ=typ), nonce=NONCE, access_token=None)


@pytest.mark.anyio
async def test_id_token_nonce(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    assert await id_reason(client, sign(id_claims(nonce="other"), rsa_key)) == "invalid_nonce"
    assert await id_reason(client, sign(id_claims(nonce=...), rsa_key)) == "invalid_nonce"
    assert await id_reason(client, sign(id_claims(nonce=NONCE + "x"), rsa_key)) == "invalid_nonce"
    assert await id_reason(client, sign(id_claims(nonce=NONCE[:-1]), rsa_key)) == "invalid_nonce"
    assert await id_reason(client, sign(id_claims(nonce=[NONCE]), rsa_key)) == "invalid_nonce"
    # nonce=None (refresh, §12.2) skips the check.
    await client.verify_id_token(sign(id_claims(nonce=...), rsa_key), nonce=None, access_token=None)


@pytest.mark.anyio
async def test_id_token_non_ascii_nonce_is_invalid_nonce(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    assert await id_reason(client, sign(id_claims(nonce="nönce"), rsa_key)) == "invalid_nonce"


@pytest.mark.anyio
async def test_id_token_audience_and_azp(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    async def ok(**claims: Any) -> None:
        await client.verify_id_token(sign(id_claims(**claims), rsa_key), nonce=NONCE, access_token=None)

    await ok(aud=[CLIENT_ID])
    await ok(aud=[CLIENT_ID, "other"], azp=CLIENT_ID)
    await ok(aud=CLIENT_ID, azp=CLIENT_ID)
    refused = [
        {"aud": [CLIENT_ID, "other"]},  # several audiences and no azp
        {"aud": [CLIENT_ID, "other"], "azp": "other"},
        {"aud": CLIENT_ID, "azp": "other"},  # azp present must be us
        {"aud": [CLIENT_ID], "azp": ""},
        {"aud": "other"},
        {"aud": API_AUDIENCE},  # the issuer's API audience is not the client's
        {"aud": ["other", "another"], "azp": CLIENT_ID},
        {"aud": CLIENT_ID + "x"},
        {"aud": ...},
    ]
    for claims in refused:
        assert await id_reason(client, sign(id_claims(**claims), rsa_key)) == "invalid_audience", claims


@pytest.mark.anyio
async def test_id_token_at_hash(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    access_token = "eyJhbGciOi.access.token-value_1"
    good = sign(id_claims(at_hash=half_hash(access_token)), rsa_key)
    await client.verify_id_token(good, nonce=NONCE, access_token=access_token)
    await client.verify_id_token(good, nonce=NONCE, access_token=None)  # nothing to bind to
    await client.verify_id_token(sign(id_claims(), rsa_key), nonce=NONCE, access_token=access_token)  # optional
    assert await id_reason(client, good, access_token=access_token + "x") == "invalid_at_hash"
    for wrong in (
        half_hash("other"),
        half_hash(access_token, hashlib.sha384),  # the hash must follow alg (RS256 → SHA-256)
        b64url(hashlib.sha256(access_token.encode()).digest()),  # the whole hash, not its left half
        half_hash(access_token) + "=",
        "",
        123,
        ["x"],
    ):
        token = sign(id_claims(at_hash=wrong), rsa_key)
        assert await id_reason(client, token, access_token=access_token) == "invalid_at_hash", wrong


@pytest.mark.anyio
async def test_id_token_non_ascii_at_hash_is_invalid_at_hash(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(id_claims(at_hash="ä" * 22), rsa_key)
    assert await id_reason(client, token, access_token="at-1") == "invalid_at_hash"


@pytest.mark.parametrize(
    ("alg", "hasher"), [("RS256", hashlib.sha256), ("ES384", hashlib.sha384), ("PS512", hashlib.sha512)]
)
def test_at_hash_matches_follows_alg(alg: str, hasher: Callable[[bytes], Any]) -> None:
    assert at_hash_matches(alg, "tok", half_hash("tok", hasher))
    assert not at_hash_matches(alg, "tok", half_hash("tok2", hasher))
    assert not at_hash_matches("none", "tok", half_hash("tok"))


def eddsa_client(idp: TokenEndpoint, key: ed25519.Ed25519PrivateKey) -> OidcClient:
    jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "ed-1", "use": "sig"}
    idp.idp.publish(JWKS_URL, {"keys": [jwk]})
    config = issuer_config(algorithms=("EdDSA",))
    http = httpx.AsyncClient(transport=httpx.MockTransport(idp.handler))
    trusted = TrustedIssuer(config=config, keys=JwksCache(config=config, client=http))
    return OidcClient(trusted=trusted, login=login_config(), http=http, dev_mode=False)


@pytest.mark.anyio
async def test_eddsa_id_token_without_at_hash(idp: TokenEndpoint) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    client = eddsa_client(idp, key)
    await client.verify_id_token(sign(id_claims(), key, alg="EdDSA", kid="ed-1"), nonce=NONCE, access_token="at-1")


@pytest.mark.anyio
async def test_at_hash_with_eddsa(idp: TokenEndpoint) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    client = eddsa_client(idp, key)
    token = sign(id_claims(at_hash=half_hash("at-1", hashlib.sha512)), key, alg="EdDSA", kid="ed-1")
    await client.verify_id_token(token, nonce=NONCE, access_token="at-1")


@pytest.mark.anyio
async def test_id_token_time_claims(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    assert await id_reason(client, sign(id_claims(exp=now - 60), rsa_key)) == "expired"  # beyond the 30 s leeway
    await client.verify_id_token(sign(id_claims(exp=now - 10), rsa_key), nonce=NONCE, access_token=None)
    assert await id_reason(client, sign(id_claims(iat=now + 3600), rsa_key)) == "not_yet_valid"
    assert await id_reason(client, sign(id_claims(nbf=now + 3600), rsa_key)) == "not_yet_valid"
    assert await id_reason(client, sign(id_claims(exp=...), rsa_key)) == "invalid_claims"
    assert await id_reason(client, sign(id_claims(iat=...), rsa_key)) == "invalid_claims"
    assert await id_reason(client, sign(id_claims(exp="tomorrow"), rsa_key)) == "invalid_claim_type"


WRONG_TYPES = [
    ("exp", "9999999999"),
    ("iat", str(int(time.time()))),
    ("iat", True),
    ("nbf", False),
    ("sub", 7),
    ("sid", 1),
    ("azp", [CLIENT_ID]),
    ("aud", [CLIENT_ID, 1]),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("claim", "value"), WRONG_TYPES, ids=[f"{c}={v!r}" for c, v in WRONG_TYPES])
async def test_id_and_logout_tokens_share_the_claim_type_check(
    client: OidcClient, rsa_key: rsa.RSAPrivateKey, claim: str, value: object
) -> None:
    """One function (idgate.claims.check_claims) for access, ID and logout tokens: PyJWT never coerces a type."""
    assert await id_reason(client, sign(id_claims(**{claim: value}), rsa_key)) == "invalid_claim_type"
    logout = sign(logout_claims(**{claim: value}), rsa_key, typ="logout+jwt")
    assert await logout_reason(client, logout) == "invalid_claim_type"


@pytest.mark.anyio
async def test_logout_token_jti_must_be_a_string(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    for jti in (7, ["jti-1"], {"id": 1}, None):
        token = sign(logout_claims(jti=jti), rsa_key, typ="logout+jwt")
        assert await logout_reason(client, token) == ("invalid_claims" if jti is None else "invalid_claim_type")


@pytest.mark.anyio
async def test_id_token_issuer_and_subject(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    assert await id_reason(client, sign(id_claims(iss=ISSUER + "/"), rsa_key)) == "invalid_issuer"
    assert await id_reason(client, sign(id_claims(iss="https://evil.example"), rsa_key)) == "invalid_issuer"
    assert await id_reason(client, sign(id_claims(iss=...), rsa_key)) == "invalid_issuer"
    assert await id_reason(client, sign(id_claims(sub=...), rsa_key)) == "invalid_claims"


@pytest.mark.anyio
async def test_id_token_signature_and_alg(
    client: OidcClient, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    assert await id_reason(client, sign(id_claims(), rsa_key_2)) == "invalid_signature"  # same kid, other key
    assert await id_reason(client, sign(id_claims(), b"k" * 64, alg="HS256")) == "alg_not_allowed"
    assert await id_reason(client, sign(id_claims(), rsa_key, alg="RS384")) == "alg_not_allowed"  # not pinned
    unsigned = jwt.encode(id_claims(), None, algorithm="none")  # type: ignore[arg-type]
    assert await id_reason(client, unsigned) in ("alg_not_allowed", "invalid_token")
    assert await id_reason(client, sign(id_claims(), rsa_key, kid="unknown")) == "unknown_kid"
    token = sign(id_claims(), rsa_key)
    header, _, signature = token.split(".")
    forged = b64url(json.dumps(id_claims(sub="admin")).encode())
    assert await id_reason(client, f"{header}.{forged}.{signature}") == "invalid_signature"


@pytest.mark.anyio
async def test_id_token_typ_at_jwt_refused(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    for typ in ("at+jwt", "application/at+jwt", "logout+jwt", "JOSE"):
        assert await id_reason(client, sign(id_claims(), rsa_key, typ=typ)) == "invalid_typ", typ


@pytest.mark.anyio
async def test_access_token_is_not_an_id_token(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    access = {"iss": ISSUER, "sub": "user-1", "aud": API_AUDIENCE, "exp": now + 300, "iat": now, "client_id": CLIENT_ID}
    # RFC 9068 access token: typ at+jwt.
    assert await id_reason(client, sign(access, rsa_key, typ="at+jwt"), nonce=None) == "invalid_typ"
    # An untyped access token is still not for us (aud names the API, not the client).
    assert await id_reason(client, sign(access, rsa_key, typ=None), nonce=None) == "invalid_audience"
    # An access token that happens to name the client as audience is still refused when a nonce is expected.
    assert await id_reason(client, sign(access | {"aud": CLIENT_ID}, rsa_key, typ=None)) == "invalid_nonce"


@pytest.mark.anyio
async def test_logout_token_is_not_an_id_token(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(logout_claims(), rsa_key, typ="logout+jwt")
    assert await id_reason(client, token) == "invalid_typ"
    assert await id_reason(client, sign(logout_claims(), rsa_key, typ=None), nonce=None) == "invalid_claims"  # no exp


@pytest.mark.anyio
@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d.e",
        "eyJhbGciOiJSUzI1NiJ9..sig",
        "x" * 20_000,
    ],
)
async def test_id_token_malformed(client: OidcClient, token: str) -> None:
    assert await id_reason(client, token) in ("invalid_token", "token_too_large")


# --- logout token (Back-Channel Logout §2.4, §2.6) ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(logout_claims(), id="sid-and-sub"),
        pytest.param(logout_claims(sub=...), id="sid-only"),
        pytest.param(logout_claims(sid=...), id="sub-only"),
        pytest.param(logout_claims(aud=[CLIENT_ID, "other"]), id="aud-list"),
        # built at collection time: the whole suite (minutes of e2e tests first) must run before it expires
        pytest.param(logout_claims(exp=int(time.time()) + 3600), id="with-exp"),
    ],
)
async def test_logout_token_good(client: OidcClient, rsa_key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> None:
    verified = await client.verify_logout_token(sign(as_of_now(claims), rsa_key, typ="logout+jwt"))
    assert verified["jti"] == "jti-1"
    assert verified.get("sid") == claims.get("sid")
    assert verified.get("sub") == claims.get("sub")


@pytest.mark.anyio
@pytest.mark.parametrize("typ", [None, "logout+jwt", "LOGOUT+JWT"])
async def test_logout_token_typ_accepted(client: OidcClient, rsa_key: rsa.RSAPrivateKey, typ: str | None) -> None:
    await client.verify_logout_token(sign(logout_claims(), rsa_key, typ=typ))


@pytest.mark.anyio
@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "secevent+jwt"])
async def test_logout_token_other_typ_refused(client: OidcClient, rsa_key: rsa.RSAPrivateKey, typ: str) -> None:
    assert await logout_reason(client, sign(logout_claims(), rsa_key, typ=typ)) == "invalid_typ"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param(logout_claims(events=...), "invalid_claims", id="no-events"),
        pytest.param(logout_claims(events={}), "invalid_logout_token", id="events-empty"),
        pytest.param(
            logout_claims(events={"http://schemas.openid.net/event/other": {}}),
            "invalid_logout_token",
            id="other-event",
        ),
        pytest.param(logout_claims(events=[BACKCHANNEL_EVENT]), "invalid_logout_token", id="events-list"),
        pytest.param(logout_claims(events=BACKCHANNEL_EVENT), "invalid_logout_token", id="events-string"),
        pytest.param(logout_claims(nonce="n"), "invalid_logout_token", id="with-nonce"),
        pytest.param(logout_claims(sid=..., sub=...), "invalid_logout_token", id="neither-sid-nor-sub"),
        pytest.param(logout_claims(sid=1, sub=...), "invalid_claim_type", id="sid-not-string"),
        pytest.param(logout_claims(sid=..., sub=["user-1"]), "invalid_claim_type", id="sub-not-string"),
        pytest.param(logout_claims(aud="other"), "invalid_audience", id="wrong-aud"),
        pytest.param(logout_claims(aud=API_AUDIENCE), "invalid_audience", id="api-aud"),
        pytest.param(logout_claims(aud=...), "invalid_audience", id="no-aud"),
        pytest.param(logout_claims(iss=ISSUER + "/"), "invalid_issuer", id="iss-slash"),
        pytest.param(logout_claims(jti=...), "invalid_claims", id="no-jti"),
        pytest.param(logout_claims(iat=...), "invalid_claims", id="no-iat"),
        pytest.param(logout_claims(iat=int(time.time()) + 3600), "not_yet_valid", id="iat-future"),
        pytest.param(logout_claims(exp=int(time.time()) - 3600), "expired", id="expired"),
    ],
)
async def test_logout_token_refused(
    client: OidcClient, rsa_key: rsa.RSAPrivateKey, claims: dict[str, Any], reason: str
) -> None:
    assert await logout_reason(client, sign(as_of_now(claims), rsa_key, typ="logout+jwt")) == reason


@pytest.mark.anyio
@pytest.mark.parametrize("exp", [None, 3600], ids=["no-exp", "exp-in-an-hour"])
async def test_logout_token_a_day_old_is_refused(
    client: OidcClient, rsa_key: rsa.RSAPrivateKey, exp: int | None
) -> None:
    now = int(time.time())
    claims = logout_claims(iat=now - 86400, exp=now + exp if exp else ...)
    assert await logout_reason(client, sign(claims, rsa_key, typ="logout+jwt")) == "logout_token_too_old"


@pytest.mark.anyio
async def test_logout_token_age_window_is_max_age_plus_leeway(
    make_client: MakeClient, rsa_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    iat = int(time.time())
    clock.now = float(iat)
    client = make_client(clock=clock, leeway_seconds=10, login=login_config(logout_token_max_age_seconds=60))
    assert client.logout_token_window_seconds == 70
    token = sign(logout_claims(iat=iat), rsa_key, typ="logout+jwt")
    clock.advance(70)
    verified = await client.verify_logout_token(token)  # the last second of the window
    assert client.logout_replay_until(verified) == iat + 70
    clock.advance(0.5)
    assert await logout_reason(client, token) == "logout_token_too_old"


def test_logout_token_max_age_default_and_bounds() -> None:
    assert login_config().logout_token_max_age_seconds == 300
    for bad in (0, -1, 3601):
        with pytest.raises(ValueError, match="logout_token_max_age_seconds"):
            login_config(logout_token_max_age_seconds=bad)


@pytest.mark.anyio
async def test_id_token_is_not_a_logout_token(client: OidcClient, rsa_key: rsa.RSAPrivateKey) -> None:
    assert await logout_reason(client, sign(id_claims(), rsa_key, typ="JWT")) == "invalid_typ"
    assert await logout_reason(client, sign(id_claims(jti="j"), rsa_key, typ=None)) == "invalid_claims"  # no events
    token = sign(id_claims(jti="j", events={BACKCHANNEL_EVENT: {}}), rsa_key, typ=None)
    assert await logout_reason(client, token) == "invalid_logout_token"  # it carries a nonce


@pytest.mark.anyio
async def test_logout_token_wrong_key_or_alg(
    client: OidcClient, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    assert await logout_reason(client, sign(logout_claims(), rsa_key_2, typ="logout+jwt")) == "invalid_signature"
    token = sign(logout_claims(), b"k" * 64, alg="HS256", typ="logout+jwt")
    assert await logout_reason(client, token) == "alg_not_allowed"


# --- RP-initiated logout --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_end_session_url(client: OidcClient) -> None:
    url = await client.end_session_url(id_token_hint="h.p.s", state="st")
    assert url is not None
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == END_SESSION_URL
    assert urllib.parse.parse_qs(parts.query, strict_parsing=True) == {
        "client_id": [CLIENT_ID],
        "id_token_hint": ["h.p.s"],
        "post_logout_redirect_uri": [POST_LOGOUT],
        "state": ["st"],
    }


@pytest.mark.anyio
async def test_end_session_url_minimal(make_client: MakeClient) -> None:
    client = make_client(login=login_config(post_logout_redirect_uri=None))
    url = await client.end_session_url(id_token_hint=None)
    assert url == f"{END_SESSION_URL}?client_id={CLIENT_ID}"


@pytest.mark.anyio
async def test_end_session_url_keeps_an_existing_query(make_client: MakeClient, idp: TokenEndpoint) -> None:
    idp.idp.publish(DISCOVERY_URL, discovery(end_session_endpoint=f"{END_SESSION_URL}?tenant=a&x=1"))
    url = await make_client().end_session_url(id_token_hint="h.p.s")
    assert url is not None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["tenant"] == ["a"] and query["id_token_hint"] == ["h.p.s"] and query["client_id"] == [CLIENT_ID]


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", [None, "http://idp.test/logout", "javascript:alert(1)", 42])
async def test_end_session_url_none_without_a_usable_endpoint(
    make_client: MakeClient, idp: TokenEndpoint, endpoint: object
) -> None:
    idp.idp.publish(DISCOVERY_URL, discovery(end_session_endpoint=endpoint))
    assert await make_client().end_session_url(id_token_hint="h.p.s") is None


@pytest.mark.anyio
async def test_end_session_url_http_in_dev_mode(make_client: MakeClient, idp: TokenEndpoint) -> None:
    idp.idp.publish(DISCOVERY_URL, discovery(end_session_endpoint="http://idp.test/logout"))
    url = await make_client(dev_mode=True).end_session_url(id_token_hint=None)
    assert url is not None and url.startswith("http://idp.test/logout?")


@pytest.mark.anyio
async def test_keys_that_cannot_be_had_are_a_transient_provider_error_not_a_bad_token(
    client: OidcClient, fake_idp: FakeIdP, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The callback answers a transient ProviderError with 503, a refresh keeps the session within its grace, and
    back-channel logout answers 503: a TokenError would instead refuse a sign-in or end a session for an IdP
    outage."""
    fake_idp.down = True
    for verify in (
        client.verify_id_token(sign(id_claims(), rsa_key), nonce=NONCE, access_token=None),
        client.verify_logout_token(sign(logout_claims(), rsa_key, typ="logout+jwt")),
    ):
        with pytest.raises(ProviderError) as info:
            await verify
        assert (info.value.reason, info.value.transient) == ("keys_unavailable", True)
