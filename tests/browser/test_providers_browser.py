"""Provider presets in the real Chromium: a Keycloak-shaped IdP (realm roles only in the access token) and an
Entra-ID-shaped one (groups overage resolved through the Microsoft Graph contract stub), in both modes. The httpx
versions of every profile: tests/e2e/test_providers.py."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect
from stack import Stack, run_stack

MODES = ("spoe", "auth_request")
GRAPH_USERS = {"oid-alice": ["grafana-admins", "staff", "looker-analysts"], "oid-bob": ["staff"]}


@pytest.fixture(scope="module", params=[(p, m) for p in ("keycloak", "entra") for m in MODES], ids="-".join)
def provider(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    profile, mode = request.param
    with run_stack(
        tmp_path_factory.mktemp(f"browser-{profile}-{mode}"),
        mode=mode,
        idp_profile=profile,
        graph_users=GRAPH_USERS if profile == "entra" else None,
    ) as running:
        yield running


@pytest.mark.parametrize(("username", "role"), [("alice", "Admin"), ("bob", "Viewer")])
def test_login_in_chromium_gives_the_role_from_where_the_provider_puts_it(
    page: Page, provider: Stack, username: str, role: str
) -> None:
    page.set_default_timeout(10_000)
    target = provider.url + "/grafana/d/home"
    page.goto(target)
    expect(page.locator("#login-form")).to_be_visible()
    assert urlsplit(page.url).hostname == "localhost" and "/interaction/" in page.url
    page.fill("#login", username)
    page.fill("#password", "any password works")
    page.click("#sign-in")
    page.wait_for_url(target)
    expect(page.locator("h1")).to_have_text("Grafana (contract stub)")
    assert page.inner_text("#role") == role
    assert page.inner_text("#user") == f"{username}@example.test"
