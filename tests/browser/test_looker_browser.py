"""Signed Looker embedding in the real Chromium: sign in on the embedding app (behind idgate), open idgate's
embed link, and land on the embedded dashboard at the Looker contract stub (NOT Looker), which verified the signed
URL by Looker's documented algorithm and shows the embed user it would create."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from looker_stack import VIEWER, LookerStack, run_looker_stack
from playwright.sync_api import Browser, Page, expect

STEP_TIMEOUT_MS = 10_000
EMBED = "/.idgate/looker/embed?target=" + quote("/embed/dashboards/42", safe="")


@pytest.fixture(scope="module")
def looker_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LookerStack]:
    with run_looker_stack(Path(tmp_path_factory.mktemp("looker-browser")), mode="spoe") as running:
        yield running


def sign_in(page: Page, ls: LookerStack, username: str) -> None:
    """Open the embedding app (/app/, behind idgate), sign in on the IdP's form, wait until back."""
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.goto(ls.stack.url + "/app/")
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("#login", username)
    page.fill("#password", "any password works")
    page.click("#sign-in")
    page.wait_for_url(ls.stack.url + "/app/")


def test_an_analyst_lands_in_the_embedded_dashboard_and_others_are_refused(
    page: Page, browser: Browser, looker_stack: LookerStack
) -> None:
    ls = looker_stack
    sign_in(page, ls, "alice")
    page.goto(ls.stack.url + EMBED)
    page.wait_for_url(ls.looker.url + "/embed/dashboards/42")
    expect(page.locator("h1")).to_have_text("Looker (contract stub)")
    assert json.loads(page.locator("#permissions").inner_text()) == VIEWER["permissions"]
    assert json.loads(page.locator("#models").inner_text()) == VIEWER["models"]
    assert page.locator("#first-name").inner_text() == "Alice"
    assert page.locator("#external-user-id").inner_text().startswith("idgate-")
    # the hop through Looker's embed login was a signed URL on the stub's host
    logins = ls.looker.requests()
    assert logins and logins[-1]["via"] == "signed"

    other = browser.new_context(ignore_https_errors=True)
    try:
        bob = other.new_page()
        sign_in(bob, ls, "bob")
        before = len(ls.looker.requests())
        response = bob.goto(ls.stack.url + EMBED)
        assert response is not None and response.status == 403
        assert urlsplit(bob.url).netloc == urlsplit(ls.stack.url).netloc  # never sent to Looker
        expect(bob.locator("code")).to_have_text("no_looker_role")
        assert len(ls.looker.requests()) == before
    finally:
        other.close()
