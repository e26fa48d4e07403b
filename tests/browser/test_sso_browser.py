"""Browser SSO through HAProxy and idgate, driven by the real Chromium (the httpx versions: tests/e2e/test_sso.py).

Everything is real: Chromium follows every redirect, keeps its own cookie jar (idgate's ``__Host-`` cookies on
127.0.0.1, the IdP's on localhost), fills the IdP's login form and runs the IdP's auto-submitting logout page; the
Grafana-contract stub verifies idgate's signed assertion. Timings are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Frame, Page, Request, expect
from stack import Stack

STEP_TIMEOUT_MS = 10_000
SESSION_COOKIE = "__Host-idgate_0"
ALICE_GROUPS = ["grafana-admins", "staff", "looker-analysts"]
GRAFANA_FACTS = ("user", "email", "name", "role", "groups", "auth-mode", "path")


# ------------------------------------------------------------------------------------------------ helpers


@dataclass
class Traffic:
    """What a browser context did: every request URL, every navigation request (redirect hops included), every
    URL committed in a main frame, and the finished requests (with Playwright's resource timing)."""

    requests: list[str] = field(default_factory=list)
    navigations: list[str] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)

    def visited(self, fragment: str) -> list[str]:
        """Navigation requests or committed main-frame URLs that contain ``fragment``."""
        return [url for url in self.navigations + self.committed if fragment in url]


def watch(page: Page) -> Traffic:
    """Record ``page``'s traffic (the context's requests, so a popup could not hide one)."""
    traffic = Traffic()

    def on_request(request: Request) -> None:
        traffic.requests.append(request.url)
        if request.is_navigation_request():
            traffic.navigations.append(request.url)

    def on_frame(frame: Frame) -> None:
        if frame.parent_frame is None:
            traffic.committed.append(frame.url)

    def on_finished(request: Request) -> None:
        traffic.finished.append(request)

    page.context.on("request", on_request)
    page.context.on("requestfinished", on_finished)
    page.on("framenavigated", on_frame)
    return traffic


def new_page(page: Page) -> Page:
    page.set_default_timeout(STEP_TIMEOUT_MS)
    return page


def submit_login(page: Page, username: str) -> None:
    """On the IdP's login form (asserted): sign in as ``username`` (any password is accepted)."""
    expect(page.locator("#login-form")).to_be_visible()
    assert urlsplit(page.url).hostname == "localhost", page.url
    assert "/interaction/" in urlsplit(page.url).path, page.url
    page.fill("#login", username)
    page.fill("#password", "any password works")
    page.click("#sign-in")


def log_in(page: Page, stack: Stack, path: str, username: str = "alice") -> None:
    """Visit ``path`` signed out, sign in on the IdP's form, and wait until the browser is back on ``path``."""
    target = stack.url + path
    page.goto(target)
    submit_login(page, username)
    page.wait_for_url(target)


def grafana_facts(page: Page) -> dict[str, str]:
    """What the Grafana stub's page shows (asserting it is that page)."""
    expect(page.locator("h1")).to_have_text("Grafana (contract stub)")
    return {name: page.inner_text(f"#{name}") for name in GRAFANA_FACTS}


def idgate_cookies(context: BrowserContext, stack: Stack) -> dict[str, str]:
    return {c["name"]: c["value"] for c in context.cookies(stack.url) if c["name"].startswith("__Host-idgate")}


def localhost_cookies(context: BrowserContext) -> list[Any]:
    return [c for c in context.cookies() if c["domain"].lstrip(".") == "localhost"]


def audit_lines(stack: Stack, since: int) -> list[dict[str, Any]]:
    """idgate's audit (decision) lines logged after character ``since`` of its log."""
    text = stack.idgate.log_text()[since:]
    return [json.loads(line) for line in text.splitlines() if line.startswith("{") and '"event": "decision"' in line]


def flip_bit(value: str) -> str:
    """``v1.<base64url>`` with one bit of the middle byte (inside the ciphertext) flipped, still canonical."""
    prefix, _, data = value.partition(".")
    raw = bytearray(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return prefix + "." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


def duration_ms(request: Request) -> float:
    """Start of one hop (a redirect is its own request) to the end of its response, from Chromium's resource
    timing (connection setup included)."""
    return max(request.timing["responseEnd"], 0.0)


# -------------------------------------------------------------------------------------------------- tests


def test_first_visit_logs_in_and_lands_on_the_page(page: Page, fresh: Stack) -> None:
    page = new_page(page)
    traffic = watch(page)
    log_offset = len(fresh.idgate.log_text())
    target = fresh.url + "/grafana/d/home?orgId=1"

    started = time.perf_counter()
    page.goto(target)
    on_form = time.perf_counter()
    submit_login(page, "alice")
    submitted = time.perf_counter()
    page.wait_for_url(target)
    total_s = time.perf_counter() - started

    assert page.url == target
    assert grafana_facts(page) == {
        "user": "alice@example.test",
        "email": "alice@example.test",
        "name": "Alice Admin",
        "role": "Admin",
        "groups": ", ".join(ALICE_GROUPS),
        "auth-mode": "jwt",  # the stub verified idgate's signed assertion against /.idgate/jwks.json
        "path": "/grafana/d/home",
    }
    assert set(idgate_cookies(page.context, fresh)) == {SESSION_COOKIE}
    # The hops: the gated page → /.idgate/start → the IdP's form → the IdP → /.idgate/callback → the page.
    hosts = [urlsplit(url).hostname for url in traffic.navigations]
    assert hosts[0] == "127.0.0.1" and "localhost" in hosts and hosts[-1] == "127.0.0.1", traffic.navigations
    assert traffic.visited("/.idgate/start?rd=") and traffic.visited("/.idgate/callback?")
    records = fresh.upstreams["grafana"].requests()
    assert [(r["path"], r["query"], r["status"], r["auth_mode"], r["login"]) for r in records] == [
        ("/grafana/d/home", "orgId=1", 200, "jwt", "alice@example.test")
    ]

    # Where the time went, from Chromium's resource timing of each navigation hop: the hops through HAProxy to idgate
    # (the gated page's 302, /.idgate/start, /.idgate/callback), the final page (idgate's /auth decision + the stub),
    # and the IdP's hops; plus idgate's own in-process decision latency from its audit log.
    hops = [r for r in traffic.finished if r.is_navigation_request()]
    ours = [r for r in hops if r.url.startswith(fresh.url + "/")]
    idp = [r for r in hops if urlsplit(r.url).hostname == "localhost"]
    assert len(ours) == 4 and ours[-1].url == target and len(idp) >= 2, [r.url for r in hops]
    gate_ms = sum(duration_ms(r) for r in ours[:-1])
    page_ms = duration_ms(ours[-1])
    idp_ms = sum(duration_ms(r) for r in idp)
    decisions = [d for d in audit_lines(fresh, log_offset) if d["path"].startswith("/grafana/")]
    assert [(d["status"], d["allow"]) for d in decisions] == [(302, False), (200, True)], decisions
    decide_ms = sum(d["latency_ms"] for d in decisions)
    total_ms = total_s * 1000
    form_ms, submit_ms = (on_form - started) * 1000, (time.perf_counter() - submitted) * 1000
    gate_hops = " + ".join(f"{urlsplit(r.url).path} {duration_ms(r):.1f}" for r in ours[:-1])
    print(
        f"\n[browser] login round trip (goto → Grafana page, form filled by Playwright) {total_ms:.0f} ms: "
        f"goto → form {form_ms:.0f} ms, submit → page {submit_ms:.0f} ms"
        f"\n[browser]   via HAProxy to idgate: {gate_hops} = {gate_ms:.1f} ms; "
        f"final page (auth + stub) {page_ms:.1f} ms; IdP {len(idp)} hops {idp_ms:.1f} ms"
        f"\n[browser]   idgate's share: {gate_ms + page_ms:.1f} ms of {total_ms:.0f} ms "
        f"({(gate_ms + page_ms) / total_ms:.0%}) incl. HAProxy, TLS and the stub; "
        f"idgate's own /auth decision time {decide_ms:.2f} ms over {len(decisions)} decisions"
    )


def test_second_visit_without_the_idgate_cookie_needs_no_login_form(page: Page, fresh: Stack) -> None:
    page = new_page(page)
    log_in(page, fresh, "/grafana/d/home?orgId=1")
    context = page.context
    idp_session = localhost_cookies(context)
    assert idp_session, "the IdP set no session cookie"

    context.clear_cookies(domain="127.0.0.1")
    assert idgate_cookies(context, fresh) == {}
    assert localhost_cookies(context) == idp_session

    traffic = watch(page)
    response = page.goto(fresh.url + "/app/x")
    assert response is not None
    page.wait_for_url(fresh.url + "/app/x")
    assert response.status == 200
    assert traffic.visited("/interaction/") == [], traffic.navigations
    assert page.locator("#login-form").count() == 0
    # It really went back through the IdP (single sign-on), and idgate issued a new session cookie.
    assert traffic.visited("/.idgate/start") and traffic.visited("/.idgate/callback")
    assert any(urlsplit(url).hostname == "localhost" for url in traffic.navigations)
    assert set(idgate_cookies(context, fresh)) == {SESSION_COOKIE}
    echoed = json.loads(page.inner_text("body"))
    assert echoed["path"] == "/app/x"
    headers = {n.lower(): v for n, v in echoed["headers"]}
    assert (headers["x-auth-user"], headers["x-auth-email"]) == ("alice", "alice@example.test")
    assert [r["path"] for r in fresh.upstreams["app"].requests()] == ["/app/x"]


def test_logout_then_replaying_the_old_cookie_means_login_again(page: Page, browser: Browser, fresh: Stack) -> None:
    page = new_page(page)
    log_in(page, fresh, "/grafana/")
    assert grafana_facts(page)["user"] == "alice@example.test"
    saved = [c for c in page.context.cookies() if c["domain"] == "127.0.0.1"]
    assert SESSION_COOKIE in {c["name"] for c in saved}

    traffic = watch(page)
    page.goto(fresh.url + "/.idgate/sign_out")
    expect(page.locator("h1")).to_have_text("Sign out")
    page.click("#sign-out")
    # idgate → the IdP's end_session page (auto-submitted) → post_logout_redirect_uri
    page.wait_for_url(fresh.url + "/")
    assert traffic.visited("/session/end"), traffic.navigations
    assert idgate_cookies(page.context, fresh) == {}

    other = browser.new_context(ignore_https_errors=True)
    try:
        other.add_cookies(saved)
        assert idgate_cookies(other, fresh)[SESSION_COOKIE] == next(
            c["value"] for c in saved if c["name"] == SESSION_COOKIE
        )
        replay = new_page(other.new_page())
        replay.goto(fresh.url + "/grafana/")
        expect(replay.locator("#login-form")).to_be_visible()
        assert urlsplit(replay.url).hostname == "localhost"
        assert replay.locator("#user").count() == 0
    finally:
        other.close()
    assert [r["path"] for r in fresh.upstreams["grafana"].requests()] == ["/grafana/"]  # the login only


def test_refresh_keeps_the_user_in_and_a_removed_group_removes_the_role(page: Page, short_stack: Stack) -> None:
    stack = short_stack
    page = new_page(page)
    log_in(page, stack, "/grafana/")
    assert grafana_facts(page)["role"] == "Admin"
    before = idgate_cookies(page.context, stack)
    stack.idp.set_groups("alice", ["staff"])
    try:
        time.sleep(2.5)  # the 4 s tokens are now within idgate's 2 s refresh window
        traffic = watch(page)
        response = page.reload()
        assert response is not None and response.status == 200
        assert page.url == stack.url + "/grafana/"
        assert traffic.visited("/interaction/") == [] and traffic.visited("/.idgate/") == [], traffic.navigations
        assert page.locator("#login-form").count() == 0
        facts = grafana_facts(page)
        assert (facts["user"], facts["role"], facts["groups"], facts["auth-mode"]) == (
            "alice@example.test",
            "Viewer",
            "staff",
            "jwt",
        )
        assert idgate_cookies(page.context, stack) != before  # the refreshed session came back as a new cookie
    finally:
        stack.idp.set_groups("alice", ALICE_GROUPS)


def test_a_user_without_a_grafana_role_gets_haproxys_403(page: Page, fresh: Stack) -> None:
    page = new_page(page)
    target = fresh.url + "/grafana/"
    page.goto(target)
    with page.expect_response(lambda r: r.url == target and r.request.is_navigation_request()) as final:
        submit_login(page, "carol")
    page.wait_for_url(target)
    assert final.value.status == 403
    assert page.inner_text("body").strip() == "403 Forbidden"
    assert page.locator("#user").count() == 0
    assert set(idgate_cookies(page.context, fresh)) == {SESSION_COOKIE}  # signed in, just not allowed
    assert fresh.upstreams["grafana"].requests() == []


def test_hostile_return_url_falls_back_to_root(page: Page, fresh: Stack) -> None:
    page = new_page(page)
    traffic = watch(page)
    page.goto(fresh.url + "/.idgate/start?rd=https://evil.example/")
    submit_login(page, "alice")
    page.wait_for_url(fresh.url + "/")
    page.wait_for_load_state("load")
    assert page.url == fresh.url + "/"
    assert traffic.visited("/.idgate/callback?")
    assert [url for url in traffic.requests if "evil.example" in (urlsplit(url).hostname or "")] == []
    assert all("evil.example" not in (urlsplit(url).hostname or "") for url in traffic.committed)
    assert set(idgate_cookies(page.context, fresh)) == {SESSION_COOKIE}


def test_tampered_cookie_is_no_session_and_never_an_error(page: Page, fresh: Stack) -> None:
    page = new_page(page)
    log_in(page, fresh, "/grafana/")
    context = page.context
    original = idgate_cookies(context, fresh)[SESSION_COOKIE]
    tampered = flip_bit(original)
    assert tampered != original and len(tampered) == len(original)
    context.add_cookies(
        [
            {
                "name": SESSION_COOKIE,
                "value": tampered,
                "domain": "127.0.0.1",
                "path": "/",
                "secure": True,
                "httpOnly": True,
                "sameSite": "Lax",
            }
        ]
    )
    jar = [c for c in context.cookies(fresh.url) if c["name"] == SESSION_COOKIE]
    assert [c["value"] for c in jar] == [tampered]  # replaced, not a second copy

    traffic = watch(page)
    log_offset = len(fresh.idgate.log_text())
    response = page.goto(fresh.url + "/grafana/")
    assert response is not None
    page.wait_for_url(fresh.url + "/grafana/")
    # Back through idgate's login and the IdP (whose session answers without a form), never an error page.
    assert traffic.visited("/.idgate/start") and traffic.visited("/.idgate/callback")
    assert any(urlsplit(url).hostname == "localhost" for url in traffic.navigations)
    assert traffic.visited("/interaction/") == []
    assert response.status == 200
    facts = grafana_facts(page)
    assert (facts["user"], facts["role"]) == ("alice@example.test", "Admin")
    renewed = idgate_cookies(context, fresh)[SESSION_COOKIE]
    assert renewed not in (tampered, original)
    first = next(d for d in audit_lines(fresh, log_offset) if d["path"] == "/grafana/")
    assert (first["path"], first["status"], first["allow"]) == ("/grafana/", 302, False)
    assert "invalid_cookie" in first["reasons"], first
    # The stub saw the first login and the new one, never a request on the tampered cookie.
    assert [r["status"] for r in fresh.upstreams["grafana"].requests()] == [200, 200]
