"""Several IdPs for browser login, in the real Chromium: the chooser page, clicked (httpx versions:
tests/e2e/test_multi_idp.py). Two real IdPs with the same users; alice is an admin at the first and only ``staff``
at the second, so the role Grafana's stub shows tells which IdP signed her in."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Browser, Page, expect
from stack import Stack
from test_sso_browser import grafana_facts, new_page, submit_login

ALICE_GROUPS = ["grafana-admins", "staff", "looker-analysts"]


def test_the_chooser_is_clicked_and_each_idp_signs_in_its_own_alice(
    page: Page, browser: Browser, multi_idp_stack: Stack
) -> None:
    stack = multi_idp_stack
    second = stack.second_idp
    assert second is not None
    second.set_groups("alice", ["staff"])
    try:
        roles = {}
        for idp, tab in (("second", new_page(page)), ("testidp", new_page(browser.new_page(ignore_https_errors=True)))):
            target = stack.url + "/grafana/d/home"
            tab.goto(target)
            expect(tab.locator("h1")).to_have_text("Sign in")
            assert urlsplit(tab.url).path == "/.idgate/start"
            expect(tab.locator("a")).to_have_count(2)
            expect(tab.locator("script")).to_have_count(0)
            tab.click(f"#idp-{idp}")
            issuer = second.issuer if idp == "second" else stack.idp.issuer
            assert tab.url.startswith(issuer + "/interaction/"), tab.url
            submit_login(tab, "alice")
            tab.wait_for_url(target)
            facts = grafana_facts(tab)
            roles[idp] = facts["role"]
            assert facts["user"] == "alice@example.test"
        assert roles == {"second": "Viewer", "testidp": "Admin"}
    finally:
        second.set_groups("alice", ALICE_GROUPS)
