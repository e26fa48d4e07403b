"""Several IdPs for browser login (``login.issuers``), through the real HAProxy in both modes, with two real
oidc-provider instances that have the same users (so the same ``sub`` values): the chooser, ``?idp=``, the per-host
default, two users with one ``sub``, per-issuer back-channel logout, and the mix-up defence.

The stack (``multi_idp_stack``): ``login.issuers: [testidp, second]``; ``testidp`` answers on the site's shared
``/.idgate/callback``, ``second`` on its own ``/.idgate/callback/second``; ``localhost`` defaults to ``second``.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest
from stack import Stack, browser_login

from idgate_devstack.stack import login_user

pytestmark = pytest.mark.e2e
HTML = {"accept": "text/html", "sec-fetch-mode": "navigate"}
JSON = {"accept": "application/json"}
_FORM_ACTION = re.compile(r"<form[^>]*action=\"([^\"]+)\"", re.IGNORECASE)
_ADMIN_GROUPS = ["grafana-admins", "staff", "looker-analysts"]


@pytest.fixture
def multi(multi_idp_stack: Stack) -> Iterator[Stack]:
    """The stack with fresh upstream records; alice is only ``staff`` at the second IdP (an admin at the first)."""
    multi_idp_stack.reset_upstreams()
    second = multi_idp_stack.second_idp
    assert second is not None
    second.set_groups("alice", ["staff"])
    try:
        yield multi_idp_stack
    finally:
        second.set_groups("alice", _ADMIN_GROUPS)


def second_issuer(stack: Stack) -> str:
    assert stack.second_idp is not None
    return stack.second_idp.issuer


def events(stack: Stack, name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stack.idgate.log_text().splitlines() if f'"event": "{name}"' in line]


def session_cookies(client: httpx.Client) -> dict[str, str]:
    return {c.name: c.value for c in client.cookies.jar if c.name.startswith("__Host-idgate_")}


def login_at(stack: Stack, client: httpx.Client, idp: str, path: str = "/app/") -> httpx.Response:
    """A browser login at IdP ``idp`` (picked by ``?idp=``) that lands on ``path``."""
    rd = urllib.parse.quote(stack.url + path, safe="")
    result = browser_login(stack, client, f"/.idgate/start?idp={idp}&rd={rd}")
    assert result.saw_login_form and result.response.status_code == 200, result.hops
    return result.response


def app_identity(stack: Stack, client: httpx.Client) -> dict[str, str]:
    """The X-Auth-* headers the echo upstream received for one XHR to /app/ with the client's cookies."""
    stack.reset_upstreams()
    assert client.get(stack.url + "/app/whoami", headers=JSON).status_code == 200
    headers = stack.upstreams["app"].requests()[-1]["headers"]
    return {n.lower(): v for n, v in headers if n.lower().startswith("x-auth-")}


def test_a_navigation_without_a_session_gets_the_chooser_with_the_return_url(multi: Stack) -> None:
    with multi.client() as client:
        first = client.get(multi.url + "/app/page?x=1", headers=HTML)
        assert first.status_code == 302
        chooser = client.get(str(first.request.url.join(first.headers["location"])), headers=HTML)
    assert chooser.status_code == 200
    assert chooser.headers["content-security-policy"].startswith("default-src 'none'")
    assert chooser.headers["cache-control"] == "no-store"
    assert "<script" not in chooser.text.lower()
    links = re.findall(r"<a id='idp-([a-z_]+)' href='([^']+)'", chooser.text)
    assert [name for name, _ in links] == ["testidp", "second"]
    for name, href in links:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(href.replace("&amp;", "&")).query)
        assert query == {"idp": [name], "rd": ["/app/page?x=1"]}


def test_api_calls_get_401_never_the_chooser(multi: Stack) -> None:
    with multi.client() as client:
        response = client.get(multi.url + "/app/data", headers=JSON)
    assert response.status_code == 401
    assert "location" not in response.headers and "Choose your identity provider" not in response.text


def test_an_unknown_idp_is_400(multi: Stack) -> None:
    with multi.client() as client:
        response = client.get(multi.url + "/.idgate/start?idp=nowhere&rd=/app/", headers=HTML)
    assert response.status_code == 400
    assert not any(c.name.startswith("__Host-idgate-login") for c in client.cookies.jar)
    assert any(e.get("reason") == "unknown_idp" for e in events(multi, "login_refused"))


@pytest.mark.parametrize(
    ("idp", "callback"), [("testidp", "/.idgate/callback"), ("second", "/.idgate/callback/second")]
)
def test_idp_parameter_picks_that_idp_and_its_redirect_uri(multi: Stack, idp: str, callback: str) -> None:
    issuer = multi.idp.issuer if idp == "testidp" else second_issuer(multi)
    with multi.client() as client:
        response = client.get(multi.url + f"/.idgate/start?idp={idp}&rd=/app/", headers=HTML)
    assert response.status_code == 302
    location = urllib.parse.urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}" == issuer
    assert urllib.parse.parse_qs(location.query)["redirect_uri"] == [multi.url + callback]


def test_the_per_host_default_skips_the_chooser(multi: Stack) -> None:
    port = urllib.parse.urlsplit(multi.url).port
    with multi.client() as client:
        response = client.get(multi.url + "/.idgate/start?rd=/app/", headers=HTML | {"host": f"localhost:{port}"})
    assert response.status_code == 302, response.text
    location = urllib.parse.urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}" == second_issuer(multi)
    redirect_uri = urllib.parse.parse_qs(location.query)["redirect_uri"]
    assert redirect_uri == [f"https://localhost:{port}/.idgate/callback/second"]


def test_the_same_sub_at_two_idps_is_two_users(multi: Stack) -> None:
    with multi.client() as first, multi.client() as second:
        login_at(multi, first, "testidp")
        login_at(multi, second, "second")
        at_first, at_second = app_identity(multi, first), app_identity(multi, second)
        roles = [c.get(multi.url + "/grafana/api/user", headers=JSON).json()["role"] for c in (first, second)]
        admin = [c.get(multi.url + "/admin/", headers=JSON).status_code for c in (first, second)]
    assert at_first["x-auth-subject"] == at_second["x-auth-subject"] == "alice"
    assert at_first["x-auth-issuer"] == multi.idp.issuer
    assert at_second["x-auth-issuer"] == second_issuer(multi)
    assert at_first["x-auth-groups"] != at_second["x-auth-groups"]
    assert roles == ["Admin", "Viewer"]
    assert admin == [200, 403]


def test_sign_out_goes_to_the_sessions_own_idp(multi: Stack) -> None:
    with multi.client() as client:
        login_at(multi, client, "second")
        page = client.get(multi.url + "/.idgate/sign_out")
        csrf = re.search(r"name='csrf' value='([^']+)'", page.text)
        assert csrf, page.text
        out = client.post(multi.url + "/.idgate/sign_out", data={"csrf": csrf.group(1)}, headers={"origin": multi.url})
    assert out.status_code == 302
    assert out.headers["location"].startswith(second_issuer(multi) + "/session/end?")


def test_a_logout_token_from_one_idp_never_ends_the_other_idps_sessions(multi: Stack) -> None:
    second = multi.second_idp
    assert second is not None
    with multi.client() as at_first, multi.client() as at_second:
        login_at(multi, at_first, "testidp")
        login_at(multi, at_second, "second")
        now = int(time.time())
        # a logout token by subject alone (Back-Channel Logout 1.0 §2.4), signed with the second IdP's real key
        claims = {
            "iss": second.issuer,
            "aud": "idgate",
            "sub": "alice",
            "iat": now,
            "jti": f"multi-{now}-{time.monotonic_ns()}",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }
        token = second.sign({"typ": "logout+jwt"}, claims)
        answer = at_first.post(multi.url + "/.idgate/backchannel-logout", data={"logout_token": token})
        assert answer.status_code == 200, answer.text
        assert at_second.get(multi.url + "/app/", headers=JSON).status_code == 401
        assert at_first.get(multi.url + "/app/", headers=JSON).status_code == 200
        assert app_identity(multi, at_first)["x-auth-issuer"] == multi.idp.issuer


def test_the_second_idps_own_back_channel_logout_leaves_the_first_idps_session(multi: Stack) -> None:
    with multi.client() as at_first, multi.client() as at_second:
        login_at(multi, at_first, "testidp")
        login_at(multi, at_second, "second")
        idp_cookies = {c.name: c.value for c in at_second.cookies.jar if c.domain.startswith("localhost")}
        with multi.client(cookies=idp_cookies) as sso_second:  # a second browser tab on the second IdP's session
            rd = urllib.parse.quote(multi.url + "/app/", safe="")
            sso = browser_login(multi, sso_second, f"/.idgate/start?idp=second&rd={rd}")
            assert sso.response.status_code == 200 and not sso.saw_login_form
            page = at_second.get(multi.url + "/.idgate/sign_out")
            csrf = re.search(r"name='csrf' value='([^']+)'", page.text)
            assert csrf
            out = at_second.post(
                multi.url + "/.idgate/sign_out", data={"csrf": csrf.group(1)}, headers={"origin": multi.url}
            )
            confirm = at_second.get(out.headers["location"])
            form = _FORM_ACTION.search(confirm.text)
            fields = dict(re.findall(r"name=\"([^\"]+)\"[^>]*value=\"([^\"]*)\"", confirm.text))
            assert form, confirm.text
            at_second.post(str(confirm.url.join(form.group(1))), data=fields | {"logout": "yes"})
            deadline = time.monotonic() + 5
            while sso_second.get(multi.url + "/app/", headers=JSON).status_code != 401 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sso_second.get(multi.url + "/app/", headers=JSON).status_code == 401
        assert at_first.get(multi.url + "/app/", headers=JSON).status_code == 200
    logouts = [e for e in events(multi, "backchannel_logout") if e.get("iss") == second_issuer(multi)]
    assert logouts and logouts[-1]["has_sid"] is True


def code_from_second(stack: Stack) -> dict[str, str]:
    """A real login at the second IdP stopped at its redirect back: the callback's parameters (code, state, iss),
    the code not redeemed — what an attacker (or a mixed-up browser) holds."""
    with stack.client() as client:
        response = client.get(stack.url + "/.idgate/start?idp=second&rd=/app/", headers=HTML)
        for _ in range(20):
            if response.status_code in (302, 303):
                url = str(response.request.url.join(response.headers["location"]))
                if url.startswith(stack.url + "/.idgate/callback/second?"):
                    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
                response = client.get(url, headers=HTML)
                continue
            action = _FORM_ACTION.search(response.text)
            assert response.status_code == 200 and action, (response.status_code, response.text[:300])
            target = str(response.request.url.join(action.group(1)))
            response = client.post(target, data={"login": "alice", "password": "pw"}, headers=HTML)
    raise AssertionError("the second IdP never redirected back")


@pytest.mark.parametrize(
    ("path", "iss", "reason", "via"),
    [
        ("/.idgate/callback", "second", "issuer_mismatch", None),  # RFC 9207: the answer names the other IdP
        ("/.idgate/callback", None, "issuer_mismatch", None),  # iss stripped: the first IdP advertises it: required
        ("/.idgate/callback/second", "second", "issuer_mismatch", "redirect_uri"),  # the other IdP's redirect URI
        ("/.idgate/callback/second", None, "issuer_mismatch", "redirect_uri"),  # ... even without any iss
        ("/.idgate/callback", "first", "invalid_grant", None),  # iss forged: redeemed at the first IdP only
    ],
    ids=["iss_of_the_other_idp", "iss_stripped", "other_idps_callback", "other_idps_callback_no_iss", "iss_forged"],
)
def test_a_code_from_the_second_idp_replayed_into_a_login_begun_at_the_first_is_refused(
    multi: Stack, path: str, iss: str | None, reason: str, via: str | None
) -> None:
    stolen = code_from_second(multi)
    assert stolen["iss"] == second_issuer(multi)
    with multi.client() as victim:
        start = victim.get(multi.url + "/.idgate/start?idp=testidp&rd=/app/", headers=HTML)
        state = urllib.parse.parse_qs(urllib.parse.urlsplit(start.headers["location"]).query)["state"][0]
        params = {"code": stolen["code"], "state": state}
        if iss is not None:
            params["iss"] = second_issuer(multi) if iss == "second" else multi.idp.issuer
        answer = victim.get(multi.url + path, params=params, headers=HTML)
        assert answer.status_code == 400, answer.text
        assert not session_cookies(victim)
        assert victim.get(multi.url + "/app/", headers=JSON).status_code == 401
    failed = events(multi, "login_failed")[-1]
    assert (failed["reason"], failed.get("via")) == (reason, via)
    assert not [r for r in multi.upstreams["app"].requests() if r["path"] == "/app/"]


def test_bearer_tokens_of_both_idps_are_two_principals(multi: Stack) -> None:
    second = multi.second_idp
    assert second is not None
    tokens = [login_user(idp, "alice").access_token for idp in (multi.idp, second)]
    with multi.client() as client:
        issuers = []
        for token in tokens:
            multi.reset_upstreams()
            response = client.get(multi.url + "/app/", headers=JSON | {"authorization": f"Bearer {token}"})
            assert response.status_code == 200
            headers = dict((n.lower(), v) for n, v in multi.upstreams["app"].requests()[-1]["headers"])
            issuers.append(headers["x-auth-issuer"])
    assert issuers == [multi.idp.issuer, second.issuer]


@pytest.mark.parametrize("rd", ["https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)"])
def test_the_chooser_carries_only_a_validated_return_url(multi: Stack, rd: str) -> None:
    with multi.client() as client:
        chooser = client.get(multi.url + "/.idgate/start", params={"rd": rd}, headers=HTML)
    assert chooser.status_code == 200
    hrefs = re.findall(r"href='([^']+)'", chooser.text)
    assert len(hrefs) == 2
    for href in hrefs:
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(href.replace("&amp;", "&")).query)["rd"] == ["/"]
