"""The /.idgate/looker/ endpoints with a stand-in session manager (the real one is exercised end to end in
tests/e2e/test_looker_embed.py): who gets a signed URL or tokens, and every refusal's status and reason code."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette

from idgate.config import AllowRule, Config, RoleSet, RouteConfig, UpstreamConfig
from idgate.config_looker import LookerEmbedConfig, LookerRoleGrant
from idgate.looker.cookieless import LookerApi
from idgate.looker.routes import Looker, LookerUpstream, looker_routes
from idgate.policy import Policy
from idgate.sso.manager import SessionOutcome
from idgate.sso.routes import Sso
from idgate.sso.session import Session
from idgate_devstack.looker_stub import verify_signed_url

SITE = "https://app.test"
SECRET = "looker-embed-secret-for-route-tests-0123456789"
CSRF = {"origin": SITE, "x-requested-with": "idgate"}


def _session(groups: tuple[str, ...]) -> Session:
    now = time.time()
    return Session(
        sid=f"sid-{'-'.join(groups) or 'none'}",
        issuer="https://idp.test",
        subject="alice",
        username="alice",
        email="alice@example.test",
        name="Alice Admin",
        groups=groups,
        created_at=now,
        last_seen=now,
        expires_at=now + 3600,
        token_expires_at=now + 300,
        refresh_token=None,
        id_token="",
    )


@dataclass
class FakeSessions:
    """Cookie header → session, like SessionManager.resolve (which is tested on its own)."""

    by_cookie: dict[str, Session] = field(default_factory=dict)

    async def resolve(self, cookie_header: str | None) -> SessionOutcome:
        session = self.by_cookie.get(cookie_header or "")
        if session is None:
            return SessionOutcome(session=None, reason="no_cookie")
        return SessionOutcome(session=session, set_cookies=("__Host-idgate_0=touched; Path=/",))


@dataclass
class FakeLooker:
    """The Looker API: records calls; ``down`` answers 503."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    down: bool = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503)
        if request.url.path.endswith("/login"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        body = json.loads(request.content)
        self.calls.append((request.url.path.rsplit("/", 1)[-1], body))
        n = len(self.calls)
        answer = {"navigation_token": f"nav{n}", "api_token": f"api{n}", "session_reference_token_ttl": 600}
        if request.url.path.endswith("/acquire"):
            answer |= {"authentication_token": f"auth{n}", "session_reference_token": f"ref{n}"}
        return httpx.Response(200, json=answer)


def _app(looker_api: FakeLooker) -> tuple[Starlette, FakeSessions]:
    looker = LookerEmbedConfig(
        url="https://looker.test",
        embed_secret=SecretStr(SECRET),
        api_url="https://looker.test:19999",
        client_id="id",
        client_secret=SecretStr("x" * 32),
        roles={
            "looker_viewer": LookerRoleGrant(permissions=("access_data", "see_user_dashboards"), models=("sales",)),
            "looker_developer": LookerRoleGrant(permissions=("access_data", "explore"), models=("sales", "finance")),
        },
    )
    upstream = UpstreamConfig(profile="looker_embed", role_set="analytics", looker=looker)
    config = Config.model_construct(
        issuers=(),
        role_sets={
            "analytics": RoleSet(
                roles=("looker_viewer", "looker_developer"),
                from_groups={"analysts": ("looker_viewer",), "developers": ("looker_developer",)},
            )
        },
        upstreams={"analytics": upstream},
        routes=(RouteConfig(name="r", upstream="analytics", allow=AllowRule(authenticated=True)),),
    )
    api = LookerApi(
        api_url="https://looker.test:19999",
        client_id="id",
        client_secret="x" * 32,
        timeout_seconds=1,
        transport=httpx.MockTransport(looker_api.handler),
    )
    state = Looker(
        upstreams={"analytics": LookerUpstream(name="analytics", upstream=upstream, config=looker, api=api)},
        policy=Policy(config=config),
    )
    sessions = FakeSessions()
    sso = cast(Sso, type("FakeSso", (), {"sessions": sessions})())
    return Starlette(routes=looker_routes(lambda _: sso, lambda _: state)), sessions


async def _call(app: Starlette, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SITE) as client:
        return await client.request(method, path, **kw)


@pytest.mark.anyio
async def test_signed_embed_for_an_analyst_carries_the_mapped_access_and_verifies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, sessions = _app(FakeLooker())
    sessions.by_cookie["a"] = _session(("analysts", "staff"))
    with caplog.at_level(logging.INFO, logger="idgate"):
        answer = await _call(app, "GET", "/.idgate/looker/embed?target=/embed/dashboards/42", headers={"cookie": "a"})
    assert answer.status_code == 302
    granted = [json.loads(r.getMessage()) for r in caplog.records if '"looker_embed"' in r.getMessage()]
    assert len(granted) == 1 and granted[0]["mode"] == "signed"  # the grant is audited: who, roles, access
    assert granted[0]["permissions"] == ["access_data", "see_user_dashboards"] and granted[0]["models"] == ["sales"]
    assert granted[0]["roles"] and granted[0]["sub"]
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["set-cookie"] == "__Host-idgate_0=touched; Path=/"
    url = urlsplit(answer.headers["location"])
    assert (url.scheme, url.netloc) == ("https", "looker.test")
    fields = verify_signed_url(
        raw_path=url.path, raw_query=url.query, host="looker.test", secret=SECRET, now=time.time(), nonces=set()
    )
    assert fields["permissions"] == ["access_data", "see_user_dashboards"] and fields["models"] == ["sales"]
    assert (fields["first_name"], fields["last_name"]) == ("Alice", "Admin")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("cookie", "query", "status", "reason"),
    [
        (None, "target=/embed/dashboards/42", 401, "no_session"),
        ("b", "target=/embed/dashboards/42", 403, "no_looker_role"),
        ("a", "target=/admin", 400, "bad_target"),
        ("a", "", 400, "bad_target"),
        ("a", "target=/embed/x&target=/embed/y", 400, "duplicate_parameter"),
        ("a", "target=/embed/x&upstream=other", 400, "unknown_upstream"),
    ],
)
async def test_signed_embed_refusals(cookie: str | None, query: str, status: int, reason: str) -> None:
    app, sessions = _app(FakeLooker())
    sessions.by_cookie |= {"a": _session(("analysts",)), "b": _session(("staff",))}
    headers = {"cookie": cookie} if cookie else {}
    answer = await _call(app, "GET", f"/.idgate/looker/embed?{query}", headers=headers)
    assert answer.status_code == status
    assert f"<code>{reason}</code>" in answer.text
    assert "location" not in answer.headers


@pytest.mark.anyio
async def test_cookieless_acquire_keeps_the_reference_and_a_role_change_starts_a_new_looker_session() -> None:
    looker = FakeLooker()
    app, sessions = _app(looker)
    sessions.by_cookie["a"] = _session(("analysts",))
    first = await _call(app, "POST", "/.idgate/looker/cookieless/acquire", headers=CSRF | {"cookie": "a"})
    assert first.status_code == 200
    assert first.json() == {
        "authentication_token": "auth1",
        "navigation_token": "nav1",
        "api_token": "api1",
        "session_reference_token_ttl": 600,
    }
    again = await _call(app, "POST", "/.idgate/looker/cookieless/acquire", headers=CSRF | {"cookie": "a"})
    assert again.status_code == 200
    assert looker.calls[1][1]["session_reference_token"] == "ref1"  # joins the Looker session
    tokens = await _call(
        app,
        "POST",
        "/.idgate/looker/cookieless/generate_tokens",
        headers=CSRF | {"cookie": "a"},
        json={"navigation_token": "nav2", "api_token": "api2"},
    )
    assert tokens.status_code == 200 and looker.calls[2][1]["session_reference_token"] == "ref2"
    sessions.by_cookie["a"] = _session(("analysts", "developers"))  # same session id, another embed user
    changed = await _call(app, "POST", "/.idgate/looker/cookieless/acquire", headers=CSRF | {"cookie": "a"})
    assert changed.status_code == 200
    assert "session_reference_token" not in looker.calls[3][1]
    assert looker.calls[3][1]["permissions"] == ["access_data", "see_user_dashboards", "explore"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "body", "action", "status", "reason"),
    [
        ({"origin": "https://evil.test", "x-requested-with": "idgate"}, None, "acquire", 403, "cross_site"),
        ({"origin": SITE}, None, "acquire", 403, "cross_site"),
        ({}, None, "acquire", 403, "cross_site"),
        (CSRF, None, "acquire", 401, "no_session"),
        (CSRF | {"cookie": "b"}, None, "acquire", 403, "no_looker_role"),
        (CSRF | {"cookie": "a"}, b"{}", "generate_tokens", 400, "bad_body"),
        (CSRF | {"cookie": "a"}, b"not json", "generate_tokens", 400, "bad_body"),
        (CSRF | {"cookie": "a"}, b"x" * 20000, "generate_tokens", 400, "bad_body"),
        (
            CSRF | {"cookie": "a"},
            b'{"navigation_token": "n", "api_token": "a"}',
            "generate_tokens",
            400,
            "no_cookieless_session",
        ),
    ],
)
async def test_cookieless_refusals(
    headers: dict[str, str], body: bytes | None, action: str, status: int, reason: str
) -> None:
    looker = FakeLooker()
    app, sessions = _app(looker)
    sessions.by_cookie |= {"a": _session(("analysts",)), "b": _session(("staff",))}
    answer = await _call(app, "POST", f"/.idgate/looker/cookieless/{action}", headers=headers, content=body)
    assert (answer.status_code, answer.json()) == (status, {"error": reason})
    assert answer.headers["cache-control"] == "no-store"
    assert looker.calls == []


@pytest.mark.anyio
async def test_a_looker_outage_is_503_with_retry_after() -> None:
    app, sessions = _app(FakeLooker(down=True))
    sessions.by_cookie["a"] = _session(("analysts",))
    answer = await _call(app, "POST", "/.idgate/looker/cookieless/acquire", headers=CSRF | {"cookie": "a"})
    assert (answer.status_code, answer.json()) == (503, {"error": "looker_unavailable"})
    assert answer.headers["retry-after"] == "5"
