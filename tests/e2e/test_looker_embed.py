"""idgate as Looker's embedding application, through the real HAProxy (both modes), the real IdP and the Looker
contract stub (NOT Looker: it checks Looker's documented signed-URL algorithm and cookieless API shapes)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest
from looker_stack import DEVELOPER, EMBED_SECRET, VIEWER, LookerStack, run_looker_stack
from stack import browser_login

from idgate.looker.embed_url import EmbedUser, external_user_id, signed_embed_url

pytestmark = pytest.mark.e2e
MODES = ("spoe", "auth_request")
HTML = {"accept": "text/html", "sec-fetch-mode": "navigate"}
EMBED = "/.idgate/looker/embed?target=" + quote("/embed/dashboards/42", safe="")


@pytest.fixture(scope="module", params=MODES)
def looker_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LookerStack]:
    with run_looker_stack(tmp_path_factory.mktemp(f"looker-{request.param}"), mode=request.param) as running:
        yield running


@contextlib.contextmanager
def signed_in(ls: LookerStack, username: str) -> Iterator[httpx.Client]:
    """A browser-like client signed in as ``username`` through an authenticated page (the embedding app)."""
    with ls.stack.client() as client:
        result = browser_login(ls.stack, client, "/app/", username=username)
        assert result.response.status_code == 200, result.hops
        yield client


def embed(ls: LookerStack, client: httpx.Client) -> httpx.Response:
    return client.get(ls.stack.url + EMBED, headers=HTML)


def follow_to_looker(client: httpx.Client, location: str) -> httpx.Response:
    """Follow Looker's embed login (stub) and its redirect to the target."""
    response = client.get(location, headers=HTML)
    if response.status_code == 302:
        response = client.get(str(response.request.url.join(response.headers["location"])), headers=HTML)
    return response


def user_of(ls: LookerStack, username: str) -> dict[str, object]:
    users = ls.looker.users()["users"]
    user: dict[str, object] = users[external_user_id(ls.stack.idp.issuer, username)]
    return user


def test_an_analyst_lands_in_the_embedded_dashboard_with_the_mapped_permissions(looker_stack: LookerStack) -> None:
    ls = looker_stack
    with signed_in(ls, "alice") as client:
        answer = embed(ls, client)
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert location.startswith(ls.looker.url + "/login/embed/%2Fembed%2Fdashboards%2F42?")
        assert answer.headers["cache-control"] == "no-store"
        page = follow_to_looker(client, location)
    assert page.status_code == 200, page.text
    assert "Looker (contract stub)" in page.text
    assert "/embed/dashboards/42" in page.text
    user = user_of(ls, "alice")
    assert user["permissions"] == VIEWER["permissions"]
    assert user["models"] == VIEWER["models"]
    assert (user["first_name"], user["last_name"]) == ("Alice", "Admin")
    assert user["via"] == "signed"


def test_a_user_without_the_group_is_refused_before_looker(looker_stack: LookerStack) -> None:
    ls = looker_stack
    before = len(ls.looker.requests())
    with signed_in(ls, "bob") as client:
        answer = embed(ls, client)
    assert answer.status_code == 403
    assert "no_looker_role" in answer.text
    assert "location" not in answer.headers
    assert len(ls.looker.requests()) == before


def test_no_session_and_bad_targets_are_refused_with_reason_codes(looker_stack: LookerStack) -> None:
    ls = looker_stack
    with ls.stack.client() as anonymous:
        answer = embed(ls, anonymous)
        assert answer.status_code == 401 and "no_session" in answer.text
    with signed_in(ls, "alice") as client:
        for target in ("https://evil.example/embed/x", "/admin", "/embed/../admin", "//evil/embed/x"):
            answer = client.get(f"{ls.stack.url}/.idgate/looker/embed?target={quote(target, safe='')}", headers=HTML)
            assert answer.status_code == 400 and "bad_target" in answer.text, target
        twice = client.get(f"{ls.stack.url}{EMBED}&target=%2Fembed%2Flooks%2F1", headers=HTML)
        assert twice.status_code == 400 and "duplicate_parameter" in twice.text


def test_a_tampered_replayed_or_stale_embed_url_is_refused_by_the_stub(looker_stack: LookerStack) -> None:
    ls = looker_stack
    with signed_in(ls, "alice") as client:
        location = embed(ls, client).headers["location"]
        parts = urlsplit(location)
        tampered = location.replace(quote('"see_looks"', safe=""), quote('"see_sql"', safe=""))
        assert tampered != location
        refused = client.get(tampered, headers=HTML)
        assert refused.status_code == 401 and refused.json() == {"error": "bad_signature"}
        other_target = location.replace("dashboards%2F42", "dashboards%2F43")
        assert client.get(other_target, headers=HTML).json() == {"error": "bad_signature"}
        assert client.get(location, headers=HTML).status_code == 302  # the genuine URL, once
        replayed = client.get(location, headers=HTML)
        assert replayed.status_code == 401 and replayed.json() == {"error": "nonce_replayed"}
        # a URL signed 6 minutes ago with the right secret (Looker's window is 5 minutes)
        query = dict(parse_qsl(parts.query))
        stale = signed_embed_url(
            url=ls.looker.url,
            host=urlsplit(ls.looker.url).netloc,
            secret=EMBED_SECRET,
            target="/embed/dashboards/42",
            user=EmbedUser(
                external_user_id=query["external_user_id"].strip('"'),
                first_name="Alice",
                last_name="Admin",
                permissions=tuple(VIEWER["permissions"]),
                models=tuple(VIEWER["models"]),
            ),
            now=int(time.time()) - 360,
            session_length=900,
        )
        refused = client.get(stale, headers=HTML)
        assert refused.status_code == 401 and refused.json() == {"error": "time_out_of_window"}


def test_a_group_change_at_the_idp_changes_the_looker_permissions_on_the_next_login(
    looker_stack: LookerStack,
) -> None:
    ls = looker_stack
    try:
        with signed_in(ls, "carol") as client:
            assert embed(ls, client).status_code == 403
        ls.stack.idp.set_groups("carol", ["looker-developers"])
        with signed_in(ls, "carol") as client:
            assert follow_to_looker(client, embed(ls, client).headers["location"]).status_code == 200
        user = user_of(ls, "carol")
        assert user["permissions"] == DEVELOPER["permissions"]
        assert user["models"] == DEVELOPER["models"]
        assert user["group_ids"] == DEVELOPER["group_ids"]
        assert user["user_attributes"] == DEVELOPER["user_attributes"]  # non-ASCII value, signed
        ls.stack.idp.set_groups("carol", ["looker-analysts"])
        with signed_in(ls, "carol") as client:
            assert follow_to_looker(client, embed(ls, client).headers["location"]).status_code == 200
        user = user_of(ls, "carol")
        assert user["permissions"] == VIEWER["permissions"] and user["models"] == VIEWER["models"]
        assert user["group_ids"] == [] and user["user_attributes"] == {}
    finally:
        ls.stack.idp.set_groups("carol", [])


def _post(
    ls: LookerStack,
    client: httpx.Client,
    action: str,
    *,
    headers: dict[str, str] | None = None,
    json: object = None,
    content: bytes | None = None,
) -> httpx.Response:
    sent = {"origin": ls.stack.url, "x-requested-with": "idgate", "accept": "application/json"} | (headers or {})
    url = f"{ls.stack.url}/.idgate/looker/cookieless/{action}"
    return client.post(url, headers=sent, json=json, content=content)


def test_cookieless_tokens_are_served_to_the_signed_in_page(looker_stack: LookerStack) -> None:
    ls = looker_stack
    with signed_in(ls, "alice") as client:
        acquired = _post(ls, client, "acquire")
        assert acquired.status_code == 200, acquired.text
        tokens = acquired.json()
        assert {"authentication_token", "navigation_token", "api_token", "api_token_ttl"} <= set(tokens)
        assert "session_reference_token" not in tokens  # kept by idgate
        fresh = _post(
            ls,
            client,
            "generate_tokens",
            json={"navigation_token": tokens["navigation_token"], "api_token": tokens["api_token"]},
        )
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["api_token"] != tokens["api_token"]
        stale = _post(
            ls,
            client,
            "generate_tokens",
            json={"navigation_token": tokens["navigation_token"], "api_token": tokens["api_token"]},
        )
        assert stale.status_code == 502 and stale.json() == {"error": "looker_refused"}
        assert _post(ls, client, "generate_tokens", content=b"[]").json() == {"error": "bad_body"}
        assert _post(ls, client, "acquire", headers={"x-requested-with": ""}).status_code == 403
        cross = _post(ls, client, "acquire", headers={"origin": "https://evil.example"})
        assert cross.status_code == 403 and cross.json() == {"error": "cross_site"}
    user = user_of(ls, "alice")
    assert user["via"] == "cookieless" and user["permissions"] == VIEWER["permissions"]
    with ls.stack.client() as anonymous:
        assert _post(ls, anonymous, "acquire").json() == {"error": "no_session"}
    with signed_in(ls, "bob") as client:
        refused = _post(ls, client, "acquire")
        assert refused.status_code == 403 and refused.json() == {"error": "no_looker_role"}
