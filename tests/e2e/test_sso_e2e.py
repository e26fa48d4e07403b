"""Browser SSO through HAProxy, driven by httpx (bulk and negative cases; tests/browser drives Chromium).

Real parts: oidc-provider (code + PKCE, login form, RP-initiated and back-channel logout), HAProxy with the shipped
config, idgate, and the Grafana-contract stub that verifies idgate's signed assertion against /.idgate/jwks.json.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse

import httpx
import pytest
from stack import Stack, browser_login

pytestmark = pytest.mark.e2e
HTML = {"accept": "text/html", "sec-fetch-mode": "navigate"}


def session_cookies(client: httpx.Client) -> dict[str, str]:
    return {c.name: c.value for c in client.cookies.jar if c.name.startswith("__Host-idgate_")}


def api_user(stack: Stack, client: httpx.Client) -> httpx.Response:
    """Grafana's /api/user through HAProxy with the client's cookies (an XHR: never redirected)."""
    return client.get(stack.url + "/grafana/api/user", headers={"accept": "application/json"})


def test_first_visit_logs_in_and_lands_on_the_page_with_user_and_role(fresh: Stack) -> None:
    with fresh.client() as client:
        result = browser_login(fresh, client, "/grafana/d/home?orgId=1")
        assert result.saw_login_form
        assert result.response.status_code == 200, result.hops
        assert str(result.response.request.url) == fresh.url + "/grafana/d/home?orgId=1"
        assert [h.split()[0] for h in result.hops[:3]] == ["302", "302", "303"]
        assert set(session_cookies(client)) == {"__Host-idgate_0"}
        user = api_user(fresh, client).json()
    assert user == {
        "login": "alice@example.test",
        "email": "alice@example.test",
        "name": "Alice Admin",
        "role": "Admin",
        "groups": ["grafana-admins", "staff", "looker-analysts"],
        "authMode": "jwt",
    }
    print(
        f"\nlogin round trip: total {result.total_seconds * 1000:.0f} ms, idgate+HAProxy hops "
        f"{result.idgate_seconds * 1000:.1f} ms"
    )


def test_session_cookie_attributes(fresh: Stack) -> None:
    with fresh.client() as client:
        client.get(fresh.url + "/.idgate/start?rd=/app/", headers=HTML)
        login_cookie = next(c for c in client.cookies.jar if c.name.startswith("__Host-idgate-login"))
        assert login_cookie.secure and login_cookie.path == "/" and not login_cookie.domain_specified
        result = browser_login(fresh, client, "/app/")
        assert result.response.status_code == 200
    set_cookie = [h for h in result.hops if "callback" in h]
    assert set_cookie, result.hops


def test_api_calls_get_401_never_a_redirect(fresh: Stack) -> None:
    with fresh.client() as client:
        for headers in (
            {"accept": "application/json"},
            {"accept": "text/html", "x-requested-with": "XMLHttpRequest"},
            {"accept": "text/html", "sec-fetch-mode": "cors"},
            {},
        ):
            response = client.get(fresh.url + "/grafana/api/dashboards", headers=headers)
            assert response.status_code == 401, headers
        # a gRPC call gets its refusal as a gRPC status (HTTP 200, trailers-only), never a login redirect
        grpc = client.get(
            fresh.url + "/grafana/d/x", headers={"accept": "text/html", "content-type": "application/grpc"}
        )
        assert (grpc.status_code, grpc.headers["grpc-status"]) == (200, "16") and "location" not in grpc.headers
        post = client.post(fresh.url + "/grafana/d/x", headers=HTML)
        assert post.status_code == 401
        nav = client.get(fresh.url + "/grafana/d/x?a=1&b=2", headers=HTML)
        assert nav.status_code == 302
        assert nav.headers["location"] == "/.idgate/start?rd=" + urllib.parse.quote("/grafana/d/x?a=1&b=2", safe="")
    assert fresh.upstream_hits() == 0


def test_second_visit_without_the_idgate_cookie_needs_no_login_form(fresh: Stack) -> None:
    with fresh.client() as client:
        assert browser_login(fresh, client, "/app/one").saw_login_form
        for name in list(session_cookies(client)):
            client.cookies.delete(name)
        again = browser_login(fresh, client, "/app/two")
        assert again.response.status_code == 200 and not again.saw_login_form
        assert str(again.response.request.url).endswith("/app/two")


def sign_out(stack: Stack, client: httpx.Client) -> httpx.Response:
    page = client.get(stack.url + "/.idgate/sign_out")
    csrf = re.search(r"name='csrf' value='([^']+)'", page.text)
    assert csrf, page.text
    return client.post(stack.url + "/.idgate/sign_out", data={"csrf": csrf.group(1)}, headers={"origin": stack.url})


def test_logout_then_replaying_the_old_cookie_means_login_again(fresh: Stack) -> None:
    with fresh.client() as client:
        assert browser_login(fresh, client, "/app/").response.status_code == 200
        old = session_cookies(client)
        out = sign_out(fresh, client)
        assert out.status_code == 302
        end_session = urllib.parse.urlsplit(out.headers["location"])
        assert end_session.path == "/session/end"
        query = urllib.parse.parse_qs(end_session.query)
        assert query["post_logout_redirect_uri"] == [fresh.url + "/"] and query["id_token_hint"][0].count(".") == 2
        assert session_cookies(client) == {}
    with fresh.client(cookies=old) as replay:
        assert replay.get(fresh.url + "/app/", headers=HTML).status_code == 302
        assert replay.get(fresh.url + "/app/", headers={"accept": "application/json"}).status_code == 401
    assert [r["path"] for r in fresh.upstreams["app"].requests()] == ["/app/"]


def test_cross_site_sign_out_is_refused(fresh: Stack) -> None:
    with fresh.client() as client:
        assert browser_login(fresh, client, "/app/").response.status_code == 200
        forged = client.post(
            fresh.url + "/.idgate/sign_out", data={"csrf": "x"}, headers={"origin": "https://evil.test"}
        )
        assert forged.status_code == 403
        no_token = client.post(fresh.url + "/.idgate/sign_out", data={}, headers={"origin": fresh.url})
        assert no_token.status_code == 403
        assert api_user(fresh, client).status_code == 200  # still signed in


@pytest.mark.parametrize(
    "rd",
    [
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "/%09/evil.example",
        "https://127.0.0.1@evil.example",
        "javascript:alert(1)",
        "/ok\r\nSet-Cookie: x=1",
        "/" + "a" * 10_000,
    ],
)
def test_hostile_return_urls_fall_back_to_root(fresh: Stack, rd: str) -> None:
    with fresh.client() as client:
        start = client.get(fresh.url + "/.idgate/start", params={"rd": rd}, headers=HTML)
        assert start.status_code == 302
        result = browser_login(fresh, client, start.headers["location"])
        callback_hop = [h for h in result.hops if "/.idgate/callback" in h]
        assert callback_hop, result.hops
        assert str(result.response.request.url) == fresh.url + "/"


@pytest.mark.parametrize(
    "rd",
    [
        "/.idgate/start?rd=/app/",
        "/.idgate/sign_out",
        "/%2eidgate/sign_out",
        "/.IDGATE/start?rd=/app/",
        "/a/%2e%2e/.idgate/sign_out",
        "{site}/.idgate/start?rd=/app/",
    ],
)
def test_a_return_url_into_idgates_own_endpoints_lands_on_root(fresh: Stack, rd: str) -> None:
    """No login loops: after the login the browser lands on / (not on the sign-out page, not in another login)."""
    with fresh.client() as client:
        start = client.get(fresh.url + "/.idgate/start", params={"rd": rd.format(site=fresh.url)}, headers=HTML)
        assert start.status_code == 302
        result = browser_login(fresh, client, start.headers["location"])
        assert sum("/.idgate/callback" in hop for hop in result.hops) == 1, result.hops
        assert str(result.response.request.url) == fresh.url + "/", result.hops


@pytest.mark.parametrize("damage", ["flip", "truncate", "two_copies", "garbage", "other_key"])
def test_tampered_cookies_are_no_session(fresh: Stack, damage: str) -> None:
    with fresh.client() as client:
        assert browser_login(fresh, client, "/app/").response.status_code == 200
        value = session_cookies(client)["__Host-idgate_0"]
    middle = len(value) // 2
    forged = {
        "flip": value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :],
        "truncate": value[: len(value) - 10],
        "garbage": "v1.AAAA",
        "other_key": "v1." + "A" * len(value),
    }.get(damage)
    cookie = f"__Host-idgate_0={forged}" if forged else f"__Host-idgate_0={value}; __Host-idgate_0={value}"
    with fresh.client() as other:
        nav = other.get(fresh.url + "/app/", headers=HTML | {"cookie": cookie})
        api = other.get(fresh.url + "/app/", headers={"accept": "application/json", "cookie": cookie})
    assert nav.status_code == 302 and nav.headers["location"].startswith("/.idgate/start")
    assert api.status_code == 401
    assert any("__Host-idgate_0=;" in c and "Max-Age=0" in c for c in nav.headers.get_list("set-cookie"))
    assert [r["path"] for r in fresh.upstreams["app"].requests()] == ["/app/"]  # only the genuine login


def test_callback_errors_are_escaped_pages_never_500(fresh: Stack) -> None:
    with fresh.client() as client:
        error = client.get(
            fresh.url + "/.idgate/callback",
            params={"error": "access_denied", "error_description": "<script>alert(1)</script>"},
        )
        assert error.status_code == 400 and "<script>" not in error.text and "&lt;script&gt;" in error.text
        no_state = client.get(fresh.url + "/.idgate/callback", params={"code": "x", "state": "y"})
        assert no_state.status_code == 400
        client.get(fresh.url + "/.idgate/start?rd=/", headers=HTML)
        mismatch = client.get(fresh.url + "/.idgate/callback", params={"code": "x", "state": "not-the-state"})
        assert mismatch.status_code == 400 and "mismatch" in mismatch.text
        client.get(fresh.url + "/.idgate/start?rd=/", headers=HTML)
        non_ascii = client.get(fresh.url + "/.idgate/callback", params={"code": "x", "state": "zürich"})
        assert non_ascii.status_code == 400 and "mismatch" in non_ascii.text
    log = [json.loads(line) for line in fresh.idgate.log_text().splitlines() if '"login_failed"' in line]
    assert {e["reason"] for e in log} >= {"idp_error", "login_state_missing", "state_mismatch"}


def test_backchannel_logout_ends_every_session_of_the_idp_session(fresh: Stack) -> None:
    with fresh.client() as first:
        assert browser_login(fresh, first, "/app/").response.status_code == 200
        idp_cookies = {c.name: c.value for c in first.cookies.jar if c.domain.startswith("localhost")}
        with fresh.client(cookies=idp_cookies) as second:
            sso = browser_login(fresh, second, "/app/")
            assert sso.response.status_code == 200 and not sso.saw_login_form
            out = sign_out(fresh, first)
            # At the IdP: confirm the logout form, which makes the IdP call every client's back-channel endpoint.
            page = first.get(out.headers["location"])
            form = re.search(r"<form[^>]*action=\"([^\"]+)\"", page.text)
            fields = dict(re.findall(r"name=\"([^\"]+)\"[^>]*value=\"([^\"]*)\"", page.text))
            assert form, page.text
            first.post(str(page.url.join(form.group(1))), data=fields | {"logout": "yes"})
            deadline = time.monotonic() + 5
            while api_user(fresh, second).status_code != 401 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert api_user(fresh, second).status_code == 401
    events = [json.loads(line) for line in fresh.idgate.log_text().splitlines() if '"backchannel_logout"' in line]
    assert events and events[-1]["has_sid"] is True


def test_refresh_keeps_the_user_in_and_group_changes_reach_the_upstream(short_stack: Stack) -> None:
    stack = short_stack
    with stack.client() as client:
        assert browser_login(stack, client, "/grafana/").response.status_code == 200
        assert api_user(stack, client).json()["role"] == "Admin"
        before = session_cookies(client)
        stack.idp.set_groups("alice", ["staff"])
        try:
            time.sleep(2.5)  # the 4 s tokens are now within idgate's 2 s refresh window
            after = api_user(stack, client)
            assert after.status_code == 200 and after.json()["role"] == "Viewer"
            assert after.json()["groups"] == ["staff"]
            assert session_cookies(client) != before  # the refreshed session came back as a new cookie
        finally:
            stack.idp.set_groups("alice", ["grafana-admins", "staff", "looker-analysts"])
    assert any('"decision"' in line for line in stack.idgate.log_text().splitlines())


def test_upstream_never_receives_idgates_cookies_but_keeps_the_apps(fresh: Stack) -> None:
    with fresh.client() as client:
        assert browser_login(fresh, client, "/app/").response.status_code == 200
        client.cookies.set("theme", "dark", domain="127.0.0.1")
        assert client.get(fresh.url + "/app/with-cookies", headers={"accept": "application/json"}).status_code == 200
    record = fresh.upstreams["app"].requests()[-1]
    cookies = [v for n, v in record["headers"] if n.lower() == "cookie"]
    assert cookies == ["theme=dark"]
    assert all("__Host-idgate" not in v for _, v in record["headers"])


_FORM_ACTION = re.compile(r"<form[^>]*action=\"([^\"]+)\"", re.IGNORECASE)


def callback_url(stack: Stack, client: httpx.Client, rd: str = "/app/") -> str:
    """Start a login at idgate and sign in at the IdP like a browser, stopping at the IdP's redirect back: the
    callback URL (code, state, iss) as the browser would request it, not yet requested."""
    response = client.get(stack.url + "/.idgate/start", params={"rd": rd}, headers=HTML)
    for _ in range(20):
        if response.status_code in (302, 303):
            url = str(response.request.url.join(response.headers["location"]))
            if url.startswith(stack.url + "/.idgate/callback?"):
                return url
            response = client.get(url, headers=HTML)
            continue
        action = _FORM_ACTION.search(response.text)
        assert response.status_code == 200 and action, (response.status_code, response.text[:300])
        target = str(response.request.url.join(action.group(1)))
        response = client.post(target, data={"login": "alice", "password": "pw"}, headers=HTML)
    raise AssertionError("the IdP never redirected back to the callback")


def with_copy(url: str, name: str, value: str, *, first: bool) -> str:
    """``url`` with one more ``name=value`` pair, before or after the existing ones."""
    base, _, query = url.partition("?")
    extra = urllib.parse.urlencode({name: value})
    return f"{base}?{extra}&{query}" if first else f"{base}?{query}&{extra}"


@pytest.mark.parametrize("first", [True, False], ids=["copy_first", "copy_last"])
@pytest.mark.parametrize(
    ("name", "value"),
    [("state", "attacker-state"), ("code", "attacker-code"), ("iss", "https://evil.example")],
)
def test_a_callback_with_a_repeated_parameter_is_refused_whatever_the_order(
    fresh: Stack, name: str, value: str, first: bool
) -> None:
    with fresh.client() as client:
        genuine = callback_url(fresh, client)
        assert {"code", "state", "iss"} <= set(urllib.parse.parse_qs(urllib.parse.urlsplit(genuine).query))
        refused = client.get(with_copy(genuine, name, value, first=first), headers=HTML)
        assert refused.status_code == 400, (refused.status_code, refused.headers.get("location"))
        assert "Malformed sign-in response" in refused.text
        assert not session_cookies(client)
        # the refusal also ended this sign-in attempt: the untouched callback cannot complete it any more
        assert client.get(genuine, headers=HTML).status_code == 400
        assert not session_cookies(client)
    assert fresh.upstream_hits() == 0
    events = [json.loads(line) for line in fresh.idgate.log_text().splitlines() if '"login_failed"' in line]
    assert {"reason": "duplicate_parameter", "parameter": name} in [
        {k: e.get(k) for k in ("reason", "parameter")} for e in events
    ]


def test_a_callback_with_two_idp_errors_is_refused_as_malformed(fresh: Stack) -> None:
    with fresh.client() as client:
        genuine = callback_url(fresh, client)
        twice = with_copy(with_copy(genuine, "error", "access_denied", first=True), "error", "x", first=False)
        refused = client.get(twice, headers=HTML)
        assert refused.status_code == 400 and "Malformed sign-in response" in refused.text
        assert not session_cookies(client)


@pytest.mark.parametrize("rd", ["rd=/app/&rd=//evil.example", "rd=//evil.example&rd=/app/", "rd=/app/&rd=/app/"])
def test_a_login_link_with_a_repeated_return_url_is_refused(fresh: Stack, rd: str) -> None:
    with fresh.client() as client:
        start = client.get(f"{fresh.url}/.idgate/start?{rd}", headers=HTML)
        assert start.status_code == 400 and "location" not in start.headers
        assert not any(c.name.startswith("__Host-idgate-login") for c in client.cookies.jar)


def test_sign_out_with_a_repeated_csrf_field_is_refused_and_keeps_the_session(fresh: Stack) -> None:
    with fresh.client() as client:
        assert browser_login(fresh, client, "/app/").response.status_code == 200
        page = client.get(fresh.url + "/.idgate/sign_out")
        csrf = re.search(r"name='csrf' value='([^']+)'", page.text)
        assert csrf, page.text
        body = urllib.parse.urlencode([("csrf", csrf.group(1)), ("csrf", "forged")])
        form = {"origin": fresh.url, "content-type": "application/x-www-form-urlencoded"}
        refused = client.post(fresh.url + "/.idgate/sign_out", content=body, headers=form)
        assert refused.status_code == 400
        assert api_user(fresh, client).status_code == 200  # still signed in: nothing was revoked


def test_backchannel_logout_with_a_repeated_logout_token_is_refused(fresh: Stack) -> None:
    with fresh.client() as client:
        body = "logout_token=a.b.c&logout_token=d.e.f"
        form = {"content-type": "application/x-www-form-urlencoded"}
        refused = client.post(fresh.url + "/.idgate/backchannel-logout", content=body, headers=form)
    assert (refused.status_code, refused.json()) == (400, {"error": "invalid_request"})
    events = [json.loads(line) for line in fresh.idgate.log_text().splitlines() if "backchannel_logout_refused" in line]
    assert events and events[-1]["reason"] == "duplicate_parameter"
