"""Session groups from the issuer's claim sources (idgate.sso.claim_sources) and Entra ID groups overage through
Microsoft Graph (idgate.sso.graph): merge order, sub binding, bounds, and failing closed to "no groups" with a
reason code. The IdP and Graph are an ``httpx.MockTransport`` routing table; tokens are signed with the test key."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import SecretStr

from idgate.config import ClaimPaths, EntraSettings, IssuerConfig, JwksSettings, LoginConfig
from idgate.config_load import parse_config
from idgate.errors import ProviderError
from idgate.jwks import JwksCache
from idgate.principal import principal_from_claims
from idgate.sso.claim_sources import ClaimSources, claim_sources, policy_groups
from idgate.sso.graph import GraphGroups
from idgate.sso.oidc import OidcClient, TokenSet
from idgate.verifier import TrustedIssuer

ISSUER = "https://idp.test"
GRAPH = "https://graph.test/v1.0"
USER_PATH = f"{GRAPH}/users/oid-1/transitiveMemberOf"
Handler = Callable[[httpx.Request], httpx.Response]

pytestmark = pytest.mark.anyio


class Routes:
    """URL (without query) → handler; records every request."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k1", "alg": "RS256"}
        self.requests: list[httpx.Request] = []
        self.delays: dict[str, float] = {}
        self.table: dict[str, Handler] = {
            f"{ISSUER}/.well-known/openid-configuration": lambda r: httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "authorization_endpoint": f"{ISSUER}/auth",
                    "token_endpoint": f"{ISSUER}/token",
                    "jwks_uri": f"{ISSUER}/jwks",
                    "userinfo_endpoint": f"{ISSUER}/me",
                },
            ),
            f"{ISSUER}/jwks": lambda r: httpx.Response(200, json={"keys": [jwk]}),
            f"{ISSUER}/token": lambda r: httpx.Response(200, json={"access_token": "app-token", "expires_in": 3600}),
        }

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = str(request.url).split("?")[0]
        await asyncio.sleep(self.delays.get(url, 0))
        found = self.table.get(url)
        return found(request) if found else httpx.Response(404, json={"error": "not found"})

    def hits(self, url: str) -> int:
        return sum(1 for r in self.requests if str(r.url).split("?")[0] == url)


@pytest.fixture
def routes(rsa_key: rsa.RSAPrivateKey) -> Routes:
    return Routes(rsa_key)


def sign(key: rsa.RSAPrivateKey, typ: str = "at+jwt", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "user-1", "aud": "account", "exp": now + 300, "iat": now} | claims
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1", "typ": typ})


def build(
    routes: Routes, *, entra: EntraSettings | None = None, policy_groups: frozenset[str] | None = None, **claims: Any
) -> ClaimSources:
    config = IssuerConfig(
        name="idp",
        issuer=ISSUER,
        audiences=("api",),
        client_id="idgate",
        client_secret=SecretStr("c" * 32),
        require_at_jwt_typ=False,
        claims=ClaimPaths(**claims),
        jwks=JwksSettings(refetch_cooldown_seconds=0, unknown_kid_cooldown_seconds=0, timeout_seconds=1),
        entra=entra,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(routes.handler))
    trusted = TrustedIssuer(config=config, keys=JwksCache(config=config, client=http, dev_mode=False))
    login = LoginConfig(issuer="idp", redirect_uris=("https://app.test/.idgate/callback",))
    oidc = OidcClient(trusted=trusted, login=login, http=http, dev_mode=False)
    sources = claim_sources(trusted, oidc, http, policy_groups=policy_groups)
    assert sources is not None
    return sources


def tokens(access_token: str = "opaque") -> TokenSet:  # noqa: S107 - a test token value
    return TokenSet(access_token=access_token, id_token="unused", refresh_token=None, expires_in=300)


ID = {"iss": ISSUER, "sub": "user-1", "groups": ["from-id"]}


async def test_keycloak_realm_roles_come_from_the_access_token(routes: Routes, rsa_key: rsa.RSAPrivateKey) -> None:
    sources = build(routes, roles="realm_access.roles", sources=("id_token", "access_token"))
    at = sign(rsa_key, typ="JWT", realm_access={"roles": ["grafana-admin", "from-id"]}, azp="idgate")
    found = await sources.groups(tokens=tokens(at), id_claims=ID)
    assert found.groups == ("from-id", "grafana-admin")  # joined in source order, de-duplicated
    assert found.notes == ()


@pytest.mark.parametrize(
    ("make", "note"),
    [
        (lambda key: "opaque-token", "access_token_not_jwt"),
        (lambda key: sign(key, sub="someone-else", groups=["admins"]), "access_token_unverified"),
        (lambda key: sign(key, iss="https://evil.test", groups=["admins"]), "access_token_unverified"),
        (lambda key: sign(key, exp=int(time.time()) - 3600, groups=["admins"]), "access_token_unverified"),
        (
            lambda key: sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), groups=["admins"]),
            "access_token_unverified",
        ),
    ],
    ids=["opaque", "other-sub", "other-iss", "expired", "other-key"],
)
async def test_an_unusable_access_token_adds_no_groups(
    routes: Routes, rsa_key: rsa.RSAPrivateKey, make: Callable[[rsa.RSAPrivateKey], str], note: str
) -> None:
    sources = build(routes, sources=("id_token", "access_token"))
    found = await sources.groups(tokens=tokens(make(rsa_key)), id_claims=ID)
    assert found.groups == ("from-id",)
    assert found.notes == (note,)
    assert sources.note_counts[note] == 1


async def test_userinfo_groups_are_read_and_bound_to_the_subject(routes: Routes) -> None:
    seen: list[str | None] = []

    def me(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"sub": "user-1", "groups": ["from-userinfo"]})

    routes.table[f"{ISSUER}/me"] = me
    sources = build(routes, sources=("userinfo", "id_token"))
    found = await sources.groups(tokens=tokens("at-1"), id_claims=ID)
    assert found.groups == ("from-userinfo", "from-id")
    assert seen == ["Bearer at-1"]


@pytest.mark.parametrize(
    ("reply", "note"),
    [
        (httpx.Response(200, json={"sub": "user-2", "groups": ["admins"]}), "userinfo_sub_mismatch"),
        (httpx.Response(401, json={"error": "invalid_token"}), "userinfo_unavailable"),
        (httpx.Response(200, content=b"<html>"), "userinfo_unavailable"),
        (httpx.Response(200, json={"sub": "user-1", "pad": "x" * 70_000}), "userinfo_unavailable"),
        (httpx.Response(200, json=["not", "an", "object"]), "userinfo_unavailable"),
    ],
    ids=["other-sub", "401", "not-json", "too-large", "not-object"],
)
async def test_a_bad_userinfo_answer_adds_no_groups(routes: Routes, reply: httpx.Response, note: str) -> None:
    routes.table[f"{ISSUER}/me"] = lambda r: reply
    found = await build(routes, sources=("id_token", "userinfo")).groups(tokens=tokens(), id_claims=ID)
    assert (found.groups, found.notes) == (("from-id",), (note,))


async def test_a_late_userinfo_answer_is_cut_at_the_timeout(routes: Routes) -> None:
    routes.delays[f"{ISSUER}/me"] = 30.0  # far beyond the issuer's 1 s timeout
    routes.table[f"{ISSUER}/me"] = lambda r: httpx.Response(200, json={"sub": "user-1", "groups": ["admins"]})
    found = await build(routes, sources=("id_token", "userinfo")).groups(tokens=tokens(), id_claims=ID)
    assert found.notes == ("userinfo_unavailable",)  # had it waited, the answer would have given "admins"


OVERAGE = {
    "iss": ISSUER,
    "sub": "user-1",
    "oid": "oid-1",
    "roles": ["app-role"],
    "_claim_names": {"groups": "src1"},
    "_claim_sources": {"src1": {"endpoint": "https://evil.test/steal"}},
}
ENTRA = EntraSettings(graph_url=GRAPH, timeout_seconds=1, max_pages=2, max_groups=5)


def page(ids: list[str], next_link: str | None = None, kind: str = "#microsoft.graph.group") -> httpx.Response:
    body: dict[str, Any] = {"value": [{"@odata.type": kind, "id": i} for i in ids]}
    if next_link:
        body["@odata.nextLink"] = next_link
    return httpx.Response(200, json=body)


async def test_overage_is_resolved_through_graph_with_an_app_token(routes: Routes) -> None:
    calls: list[httpx.Request] = []

    def members(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if "skiptoken" in str(request.url):
            return page(["g-3"]) if len(calls) == 2 else page([])
        return httpx.Response(
            200,
            json={
                "value": [
                    {"@odata.type": "#microsoft.graph.group", "id": "g-1"},
                    {"@odata.type": "#microsoft.graph.directoryRole", "id": "role-x"},
                    {"@odata.type": "#microsoft.graph.group", "id": "g-2"},
                ],
                "@odata.nextLink": f"{USER_PATH}?$skiptoken=abc",
            },
        )

    routes.table[USER_PATH] = members
    sources = build(routes, roles="roles", entra=ENTRA)
    found = await sources.groups(tokens=tokens(), id_claims=OVERAGE)
    assert found.groups == ("app-role", "g-1", "g-2", "g-3")
    assert found.notes == ()
    assert all(r.headers["authorization"] == "Bearer app-token" for r in calls)
    token_form = dict(
        urllib.parse.parse_qsl(next(r for r in routes.requests if r.url.path == "/token").content.decode())
    )
    assert token_form["grant_type"] == "client_credentials"
    assert token_form["scope"] == "https://graph.microsoft.com/.default"
    assert not any(r.url.host == "evil.test" for r in routes.requests)  # never the endpoint the token names
    await sources.groups(tokens=tokens(), id_claims=OVERAGE)
    assert routes.hits(f"{ISSUER}/token") == 1  # the app token is reused until near its expiry


@pytest.mark.parametrize(
    "answer",
    [
        lambda r: httpx.Response(403, json={"error": {"code": "Authorization_RequestDenied"}}),
        lambda r: httpx.Response(503, json={}),
        lambda r: page(["a", "b", "c", "d", "e", "f"]),  # more than max_groups
        lambda r: page(["a"], f"{USER_PATH}?$skiptoken=again"),  # more than max_pages
        lambda r: page(["a"], "https://evil.test/next"),  # nextLink off the Graph origin
        lambda r: httpx.Response(200, json={"value": "nope"}),
        lambda r: page(["a"], "https://graph.test/v1.0/next\x00"),  # on Graph's origin, a URL httpx refuses
    ],
    ids=["403", "503", "too-many-groups", "too-many-pages", "foreign-next-link", "bad-shape", "unusable-next-link"],
)
async def test_overage_fails_closed_to_no_groups(routes: Routes, answer: Handler) -> None:
    routes.table[USER_PATH] = answer
    sources = build(routes, roles="roles", entra=ENTRA)
    found = await sources.groups(tokens=tokens(), id_claims=OVERAGE)
    assert found.groups == ("app-role",)  # what the token itself carried, nothing from Graph
    assert found.notes == ("groups_overage_unresolved",)
    assert sources.note_counts["groups_overage_unresolved"] == 1
    assert not any(r.url.host == "evil.test" for r in routes.requests)


async def test_overage_without_graph_settings_is_noted(routes: Routes) -> None:
    sources = build(routes, sources=("id_token", "userinfo"))
    routes.table[f"{ISSUER}/me"] = lambda r: httpx.Response(200, json={"sub": "user-1"})
    found = await sources.groups(tokens=tokens(), id_claims=OVERAGE | {"hasgroups": True})
    assert found.groups == ()
    assert found.notes == ("groups_overage_unresolved",)


async def test_graph_time_bound_covers_the_whole_resolution(routes: Routes) -> None:
    async def slow_token() -> str:
        await asyncio.sleep(30)
        return f"{ISSUER}/token"

    http = httpx.AsyncClient(transport=httpx.MockTransport(routes.handler))
    graph = GraphGroups(
        settings=EntraSettings(graph_url=GRAPH, timeout_seconds=0.2),
        client_id="idgate",
        client_secret="c" * 32,
        token_endpoint=slow_token,
        http=http,
    )
    with pytest.raises(ProviderError) as caught:
        await graph.groups_of("oid-1")
    assert caught.value.reason == "groups_overage_unresolved"


def test_a_bearer_token_with_overage_gets_no_groups_and_a_note() -> None:
    principal = principal_from_claims(
        {"iss": ISSUER, "sub": "u", "_claim_names": {"groups": "src1"}}, paths=ClaimPaths()
    )
    assert principal.groups == ()
    assert principal.notes == ("groups_overage_unresolved",)


def test_id_token_only_needs_no_sources_object(routes: Routes) -> None:
    config = IssuerConfig(
        name="idp", issuer=ISSUER, audiences=("api",), client_id="c", client_secret=SecretStr("c" * 32)
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(routes.handler))
    trusted = TrustedIssuer(config=config, keys=JwksCache(config=config, client=http, dev_mode=False))
    login = LoginConfig(issuer="idp", redirect_uris=("https://app.test/.idgate/callback",))
    assert claim_sources(trusted, OidcClient(trusted=trusted, login=login, http=http, dev_mode=False), http) is None
    assert json.dumps(ID)  # the module's fixtures are plain JSON


async def test_graph_groups_are_kept_only_when_the_policy_names_them(routes: Routes) -> None:
    routes.table[USER_PATH] = lambda r: page(["g-1", "g-unused", "g-2"])
    sources = build(routes, roles="roles", entra=ENTRA, policy_groups=frozenset({"g-1", "g-2", "app-role"}))
    found = await sources.groups(tokens=tokens(), id_claims=OVERAGE)
    assert found.groups == ("app-role", "g-1", "g-2")


def test_policy_groups_are_those_role_sets_and_routes_name() -> None:
    config = parse_config(
        {
            "issuers": [{"name": "i", "issuer": ISSUER, "audiences": ["a"]}],
            "role_sets": {"r": {"roles": ["x"], "from_groups": {"staff": ["x"]}}},
            "upstreams": {"app": {"role_set": "r"}},
            "routes": [
                {"name": "admin", "path": "/admin", "upstream": "app", "allow": {"groups": ["admins"]}},
                {"name": "pub", "path": "/", "upstream": "app", "public": True},
            ],
        },
        environ={},
    )
    assert policy_groups(config) == {"staff", "admins"}
