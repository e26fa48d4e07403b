"""Provider presets against the test IdP's provider profiles, through real HAProxy in both modes.

The test IdP (npm ``oidc-provider``) reproduces each provider's documented token shapes (``IDP_PROFILE``,
testidp/server.mjs); the stack's issuer has ``provider:`` set to the same, so the preset alone must make it work:

- Keycloak: realm roles only in the access token (``realm_access.roles``, read through ``claims.sources``), access
  tokens with ``aud: account`` and ``typ: JWT``, ``invalid_scope`` for a ``groups`` scope;
- Entra ID: groups overage (``_claim_names``) resolved through the Microsoft Graph contract stub with an app-only
  token; Graph down → no groups, ``groups_overage_unresolved``, never a login loop;
- Okta: ``groups`` through the ``groups`` scope, access tokens without ``typ``;
- Google: no groups and ``hd``; a role only through ``role_sets.grafana.default``; opaque access tokens.

Roles are read at the Grafana-contract stub (``/grafana/api/user``), which verifies idgate's signed assertion.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from stack import AUDIENCE, Stack, browser_login, run_stack

pytestmark = pytest.mark.e2e
MODES = ("spoe", "auth_request")
PROFILES = ("keycloak", "entra", "okta", "google")
GRAPH_USERS = {"oid-alice": ["grafana-admins", "staff", "looker-analysts"], "oid-bob": ["staff"]}
GOOGLE_DEFAULT_ROLE: dict[str, Any] = {
    "role_sets": {
        "grafana": {
            "roles": ["Viewer", "Editor", "Admin"],
            "from_groups": {"staff": ["Viewer"], "grafana-admins": ["Admin"]},
            "default": "Viewer",
        }
    }
}
EXPECTED_ROLES = {  # profile → user → Grafana role after a browser login
    "keycloak": {"alice": "Admin", "bob": "Viewer"},
    "entra": {"alice": "Admin", "bob": "Viewer"},
    "okta": {"alice": "Admin", "bob": "Viewer"},
    "google": {"alice": "Viewer", "bob": "Viewer"},
}


@pytest.fixture(scope="module", params=[(p, m) for p in PROFILES for m in MODES], ids=lambda pm: f"{pm[0]}-{pm[1]}")
def provider(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with the test IdP in one provider profile and idgate's issuer on that provider's preset."""
    profile, mode = request.param
    with run_stack(
        tmp_path_factory.mktemp(f"{profile}-{mode}"),
        mode=mode,
        idp_profile=profile,
        graph_users=GRAPH_USERS if profile == "entra" else None,
        idgate_extra=GOOGLE_DEFAULT_ROLE if profile == "google" else None,
    ) as running:
        yield running


def profile_of(stack: Stack) -> str:
    return stack.plan.idp_profile


def grafana_user(stack: Stack, username: str) -> dict[str, Any]:
    with stack.client() as client:
        result = browser_login(stack, client, "/grafana/d/home", username=username)
        assert result.saw_login_form and result.response.status_code == 200, result.hops
        response = client.get(stack.url + "/grafana/api/user", headers={"accept": "application/json"})
    assert response.status_code == 200, response.text
    user: dict[str, Any] = response.json()
    return user


def bearer(stack: Stack, path: str, token: str) -> httpx.Response:
    with stack.client() as client:
        return client.get(stack.url + path, headers={"authorization": f"Bearer {token}"})


@pytest.mark.parametrize("username", ["alice", "bob"])
def test_login_gives_the_role_the_preset_reads(provider: Stack, username: str) -> None:
    user = grafana_user(provider, username)
    assert user["role"] == EXPECTED_ROLES[profile_of(provider)][username]
    assert user["login"] == f"{username}@example.test"


def test_bearer_tokens_of_the_provider_shape(provider: Stack) -> None:
    """Each provider's own access tokens: accepted or refused as its docs page says."""
    profile = profile_of(provider)
    alice = provider.login("alice").access_token
    response = bearer(provider, "/admin/", alice)
    if profile == "keycloak":  # aud: account, no Audience mapper: not for this API
        assert response.status_code == 401
        assert 'error_description="invalid_audience"' in response.headers["www-authenticate"]
    elif profile == "google":  # opaque access tokens cannot be verified
        assert response.status_code == 401
        assert 'error_description="invalid_token"' in response.headers["www-authenticate"]
    elif profile == "entra":  # overage: a bearer token carries no groups (Graph is for browser sessions)
        assert response.status_code == 403
        assert bearer(provider, "/app/", alice).status_code == 200
        assert bearer(provider, "/admin/", provider.login("bob").access_token).status_code == 403
    else:  # okta: no typ, groups in the access token
        assert response.status_code == 200, response.text


def shaped_claims(stack: Stack, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": stack.idp.issuer, "sub": "dave", "iat": now, "exp": now + 300, "preferred_username": "dave"} | extra


# profile → (JWS header, claims) of an access token in the provider's documented shape naming grafana-admins
SHAPED: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    # what Keycloak's "Audience" mapper adds to aud; realm roles in realm_access
    "keycloak": (
        {"typ": "JWT"},
        {"aud": [AUDIENCE, "account"], "azp": "idgate", "realm_access": {"roles": ["grafana-admins"]}},
    ),
    # an app role assigned in Entra ID (no overage for roles)
    "entra": ({"typ": "JWT"}, {"aud": AUDIENCE, "oid": "oid-dave", "roles": ["grafana-admins"]}),
    "okta": ({}, {"aud": AUDIENCE, "groups": ["grafana-admins"]}),
    # Google puts no groups in tokens: hd names the domain and grants nothing
    "google": ({"typ": "at+jwt"}, {"aud": AUDIENCE, "hd": "example.test"}),
}


def test_a_token_of_the_provider_shape_gets_what_its_groups_give(provider: Stack) -> None:
    header, claims = SHAPED[profile_of(provider)]
    token = provider.idp.sign(header, shaped_claims(provider, **claims))
    admin = bearer(provider, "/admin/", token)
    assert bearer(provider, "/app/", token).status_code == 200
    assert admin.status_code == (403 if profile_of(provider) == "google" else 200), admin.text


def test_an_audience_that_is_not_this_api_is_refused(provider: Stack) -> None:
    """Keycloak's default ``aud: account`` (no Audience mapper) — or any other API's — never passes, whatever the
    groups or roles the token carries."""
    header, claims = SHAPED[profile_of(provider)]
    token = provider.idp.sign(header, shaped_claims(provider, **(claims | {"aud": "account"})))
    response = bearer(provider, "/app/", token)
    assert response.status_code == 401
    assert 'error_description="invalid_audience"' in response.headers["www-authenticate"]


def test_the_groups_scope_is_refused_where_the_provider_refuses_it(provider: Stack) -> None:
    """Why the Keycloak, Entra ID and Google presets leave ``groups`` out of login.scopes: invalid_scope."""
    from idgate_devstack.login import login

    config = provider.idp.config

    def sign_in() -> object:
        return login(
            issuer=provider.idp.issuer,
            client_id=config.client_id,
            client_secret=config.client_secret,
            redirect_uri=config.redirect_uris[0],
            username="alice",
            scope="openid groups",
            resource=AUDIENCE,
            verify=config.verify(),
        )

    if profile_of(provider) == "okta":
        assert sign_in()
    else:
        with pytest.raises(RuntimeError, match="invalid_scope"):
            sign_in()


ENTRA = pytest.mark.parametrize(
    "provider", [("entra", m) for m in MODES], indirect=True, ids=lambda pm: f"entra-{pm[1]}"
)


@ENTRA
def test_entra_overage_went_through_graph(provider: Stack) -> None:
    assert provider.graph is not None
    provider.graph.reset()
    user = grafana_user(provider, "alice")
    assert user["role"] == "Admin"
    assert set(user["groups"]) == set(GRAPH_USERS["oid-alice"])
    calls = provider.graph.requests()
    assert [c["path"] for c in calls] == ["/v1.0/users/oid-alice/transitiveMemberOf"] * 2  # two pages


@ENTRA
def test_entra_graph_down_means_no_groups_not_a_login_loop(provider: Stack) -> None:
    assert provider.graph is not None
    provider.graph.fail(503)
    try:
        with provider.client() as client:
            result = browser_login(provider, client, "/app/", username="alice")
            assert result.response.status_code == 200, result.hops  # signed in, without groups
            html = {"accept": "text/html", "sec-fetch-mode": "navigate"}
            denied = client.get(provider.url + "/grafana/d/home", headers=html)
            assert denied.status_code == 403  # no role: refused, not sent back to the IdP
            assert "location" not in denied.headers
    finally:
        provider.graph.fail(0)
    assert 'idgate_session_group_notes_total{reason="groups_overage_unresolved"}' in provider.idgate_metrics()


@pytest.fixture(scope="module", params=MODES)
def keycloak_userinfo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Keycloak-shaped IdP, idgate reading groups from the ID token and userinfo only (not the access token)."""
    with run_stack(
        tmp_path_factory.mktemp(f"keycloak-userinfo-{request.param}"),
        mode=request.param,
        idp_profile="keycloak",
        issuer_extra={"claims": {"sources": ["id_token", "userinfo"], "roles": None}},
    ) as running:
        yield running


@pytest.mark.parametrize(("username", "role"), [("alice", "Admin"), ("bob", "Viewer")])
def test_groups_from_userinfo(keycloak_userinfo: Stack, username: str, role: str) -> None:
    """The ID token has no groups and realm roles are not read: the role can only come from userinfo."""
    assert grafana_user(keycloak_userinfo, username)["role"] == role


@pytest.fixture(scope="module", params=MODES)
def keycloak_short(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Keycloak-shaped IdP with 4 s tokens; idgate refreshes 2 s before expiry."""
    with run_stack(
        tmp_path_factory.mktemp(f"keycloak-short-{request.param}"),
        mode=request.param,
        idp_profile="keycloak",
        token_ttl=4,
        refresh_before=2,
    ) as running:
        yield running


def test_realm_roles_are_read_again_from_the_refreshed_access_token(keycloak_short: Stack) -> None:
    stack = keycloak_short
    with stack.client() as client:
        assert browser_login(stack, client, "/grafana/d/home").response.status_code == 200
        api = {"accept": "application/json"}
        assert client.get(stack.url + "/grafana/api/user", headers=api).json()["role"] == "Admin"
        stack.idp.set_groups("alice", ["staff"])  # her realm roles in the next access token
        try:
            time.sleep(2.5)  # the 4 s tokens are now within idgate's 2 s refresh window
            after = client.get(stack.url + "/grafana/api/user", headers=api)
            assert after.status_code == 200 and after.json()["role"] == "Viewer", after.text
            assert after.json()["groups"] == ["staff"]
        finally:
            stack.idp.set_groups("alice", ["grafana-admins", "staff", "looker-analysts"])
