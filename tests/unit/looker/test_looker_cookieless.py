"""The Looker API client of cookieless embedding: documented requests, token reuse, and every failure a
ProviderError with a reason code (never an exception escaping, never an allow)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from idgate.errors import ProviderError
from idgate.looker.cookieless import LookerApi
from idgate.looker.embed_url import EmbedUser

USER = EmbedUser(
    external_user_id="idgate-abc",
    first_name="Zoë",
    last_name="Lee",
    permissions=("access_data",),
    models=("sales",),
    group_ids=(4,),
)
TOKENS = {
    "authentication_token": "auth",
    "authentication_token_ttl": 30,
    "navigation_token": "nav",
    "navigation_token_ttl": 600,
    "api_token": "api",
    "api_token_ttl": 600,
    "session_reference_token": "ref",
    "session_reference_token_ttl": 3600,
}


def _api(handler: Callable[[httpx.Request], httpx.Response]) -> LookerApi:
    return LookerApi(
        api_url="https://looker.example.com:19999",
        client_id="id",
        client_secret="secret-value",
        timeout_seconds=1,
        transport=httpx.MockTransport(handler),
    )


@pytest.mark.anyio
async def test_acquire_logs_in_once_and_sends_the_documented_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/4.0/login":
            return httpx.Response(200, json={"access_token": "t0", "token_type": "Bearer", "expires_in": 3600})
        return httpx.Response(200, json=TOKENS)

    api = _api(handler)
    first = await api.acquire(USER, session_length=900, force_logout_login=True, reference=None)
    await api.acquire(USER, session_length=900, force_logout_login=True, reference="ref")
    await api.aclose()
    assert [r.url.path for r in seen] == [
        "/api/4.0/login",
        "/api/4.0/embed/cookieless_session/acquire",
        "/api/4.0/embed/cookieless_session/acquire",
    ]
    assert seen[0].content == b"client_id=id&client_secret=secret-value"
    assert seen[1].headers["authorization"] == "token t0"
    body = json.loads(seen[1].content)
    assert body["external_user_id"] == "idgate-abc" and body["group_ids"] == ["4"] and body["first_name"] == "Zoë"
    assert "session_reference_token" not in body
    assert json.loads(seen[2].content)["session_reference_token"] == "ref"
    assert first.reference == "ref"
    assert "session_reference_token" not in first.browser
    assert first.browser["navigation_token"] == "nav"


@pytest.mark.parametrize(
    ("response", "reason", "transient"),
    [
        (httpx.Response(503), "looker_unavailable", True),
        (httpx.Response(404, json={"message": "Not found"}), "looker_refused", False),
        (httpx.Response(200, content=b"<html>"), "looker_unavailable", True),
        (httpx.Response(200, json=["not", "an", "object"]), "looker_unavailable", True),
        (httpx.Response(200, json={"token_type": "Bearer"}), "looker_unavailable", True),
    ],
)
@pytest.mark.anyio
async def test_login_failures_are_provider_errors(response: httpx.Response, reason: str, transient: bool) -> None:
    api = _api(lambda request: response)
    with pytest.raises(ProviderError) as caught:
        await api.acquire(USER, session_length=900, force_logout_login=True, reference=None)
    await api.aclose()
    assert (caught.value.reason, caught.value.transient) == (reason, transient)


@pytest.mark.anyio
async def test_an_unreachable_looker_and_incomplete_answers_are_unavailable() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    api = _api(unreachable)
    with pytest.raises(ProviderError) as caught:
        await api.generate_tokens(reference="r", navigation_token="n", api_token="a")
    assert caught.value.reason == "looker_unavailable"
    await api.aclose()

    def incomplete(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/login"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(200, json={"navigation_token": "n", "api_token": "a"})  # no session reference

    api = _api(incomplete)
    with pytest.raises(ProviderError) as caught:
        await api.acquire(USER, session_length=900, force_logout_login=True, reference=None)
    assert caught.value.reason == "looker_unavailable"
    refreshed = await api.generate_tokens(reference="r", navigation_token="n", api_token="a")
    assert refreshed.browser == {"navigation_token": "n", "api_token": "a"}
    await api.aclose()
