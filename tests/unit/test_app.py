"""The HTTP face (idgate.app) through the composition root (idgate.runtime): the ``/auth`` contract, readiness,
metrics, the assertion keys, and the adapter's own denies being audited and counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
from fake_issuer import config, idp, token
from starlette.requests import Request

from idgate.app import facts_from_request
from idgate.config import Config
from idgate.config_load import parse_config
from idgate.runtime import create_app


@contextlib.asynccontextmanager
async def serve(
    peer: str = "127.0.0.1", transport: httpx.MockTransport | None = None, cfg: Config | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, reached through ASGITransport from ``peer``."""
    app = create_app(cfg or config(), transport=transport or idp())
    async with app.router.lifespan_context(app):
        asgi = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=asgi, base_url="http://idgate.test") as c:
            yield c


async def ready(c: httpx.AsyncClient) -> None:
    for _ in range(100):
        if (await c.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never ready")


FACTS = {"x-idgate-method": "GET", "x-idgate-host": "gw.test", "x-idgate-source": "192.0.2.1"}


@pytest.mark.anyio
async def test_auth_endpoint_allow_deny_and_headers() -> None:
    async with serve() as c:
        await ready(c)
        assert (await c.get("/healthz")).status_code == 200
        ok = await c.get("/auth", headers=FACTS | {"x-idgate-path": "/grafana", "authorization": f"Bearer {token()}"})
        assert ok.status_code == 200
        assert ok.headers["x-idgate-decision"] == "allow" and ok.headers["x-idgate-upstream"] == "grafana"
        assert ok.headers["x-idgate-role"] == "Viewer" and ok.headers["cache-control"] == "no-store"
        unauth = await c.get("/auth", headers=FACTS | {"x-idgate-path": "/app"})
        assert unauth.status_code == 401 and unauth.headers["x-idgate-decision"] == "deny"
        assert unauth.headers["www-authenticate"] == 'Bearer realm="idgate"'
        assert "x-idgate-user" not in unauth.headers
        forbidden = await c.get(
            "/auth", headers=FACTS | {"x-idgate-path": "/admin", "authorization": f"Bearer {token()}"}
        )
        assert forbidden.status_code == 403 and forbidden.headers["x-idgate-reason"] == "missing_role_or_group"
        assert "x-idgate-user" not in forbidden.headers


@pytest.mark.anyio
async def test_auth_endpoint_missing_facts_and_duplicate_authorization() -> None:
    async with serve() as c:
        await ready(c)
        assert (await c.get("/auth", headers={"x-idgate-method": "GET"})).status_code == 400
        tok = f"Bearer {token()}"
        headers = httpx.Headers(
            [*FACTS.items(), ("x-idgate-path", "/app"), ("authorization", tok), ("authorization", tok)]
        )
        dup = await c.get("/auth", headers=headers)
        assert dup.status_code == 400 and dup.headers["x-idgate-reason"] == "duplicate_authorization"


@pytest.mark.anyio
async def test_auth_endpoint_refuses_untrusted_callers() -> None:
    async with serve(peer="203.0.113.9") as c:
        r = await c.get("/auth", headers=FACTS | {"x-idgate-path": "/public"})
        assert r.status_code == 403 and r.headers["x-idgate-reason"] == "untrusted_caller"


@pytest.mark.anyio
async def test_readyz_waits_for_keys_and_auth_fails_closed() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async with serve(transport=httpx.MockTransport(down)) as c:
        r = await c.get("/readyz")
        assert r.status_code == 503 and "test" in r.text
        assert (await c.get("/healthz")).status_code == 200
        denied = await c.get("/auth", headers=FACTS | {"x-idgate-path": "/app", "authorization": f"Bearer {token()}"})
        assert denied.status_code == 401 and denied.headers["x-idgate-reason"] == "keys_unavailable"


@pytest.mark.anyio
async def test_metrics_count_decisions_and_cache_hits() -> None:
    async with serve() as c:
        await ready(c)
        tok = f"Bearer {token()}"
        for _ in range(3):
            assert (
                await c.get("/auth", headers=FACTS | {"x-idgate-path": "/app", "authorization": tok})
            ).status_code == 200
        assert (await c.get("/auth", headers=FACTS | {"x-idgate-path": "/app"})).status_code == 401
        text = (await c.get("/metrics")).text
    labels = 'mode="auth_request",reason="{}",route="app",status="{}",upstream="app"'
    assert f"idgate_decisions_total{{{labels.format('authenticated', 200)}}} 3.0" in text
    assert f"idgate_decisions_total{{{labels.format('missing_credentials', 401)}}} 1.0" in text
    assert "idgate_token_cache_hits_total 2.0" in text and "idgate_token_cache_misses_total 1.0" in text
    assert "idgate_token_cache_hit_ratio 0.6666" in text
    assert 'idgate_jwks_ready{issuer="test"} 1.0' in text and "idgate_decision_seconds_bucket" in text


@pytest.mark.anyio
async def test_assertion_keys_file_signs_and_is_published(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from idgate.assertion import key_id

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "assertion.pem").write_bytes(pem)
    raw = config().model_dump(mode="json", exclude_none=True)
    raw["assertion"] = {"issuer": "https://idgate.test", "keys_file": str(tmp_path / "assertion.pem")}
    raw["upstreams"]["grafana"]["assertion_audience"] = "grafana"
    app = create_app(parse_config(raw, environ={}), transport=idp())
    async with app.router.lifespan_context(app):
        asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=asgi, base_url="http://idgate.test") as c:
            await ready(c)
            jwks = (await c.get("/.idgate/jwks.json")).json()
            ok = await c.get(
                "/auth", headers=FACTS | {"x-idgate-path": "/grafana", "authorization": f"Bearer {token()}"}
            )
    assert jwks["keys"][0]["kid"] == key_id(key.public_key())
    assertion = ok.headers["x-idgate-assertion"]
    assert jwt.get_unverified_header(assertion)["kid"] == key_id(key.public_key())
    claims = jwt.decode(assertion, key.public_key(), algorithms=["ES256"], audience="grafana")
    assert (claims["iss"], claims["sub"], claims["role"]) == ("https://idgate.test", "alice", "Viewer")


@pytest.mark.anyio
async def test_the_adapters_own_denies_are_audited_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """untrusted_caller and missing_facts never reach the engine's policy, yet each is one audit line and one count."""
    with caplog.at_level("INFO", logger="idgate.audit"):
        async with serve(peer="203.0.113.9") as outsider:
            assert (await outsider.get("/auth", headers=FACTS | {"x-idgate-path": "/app"})).status_code == 403
            text = (await outsider.get("/metrics")).text
        async with serve() as c:
            assert (await c.get("/auth", headers={"x-idgate-method": "GET"})).status_code == 400
            counted = (await c.get("/metrics")).text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.audit"]
    assert [(line["status"], line["reasons"], line["source"]) for line in lines] == [
        (403, ["untrusted_caller"], "203.0.113.9"),
        (400, ["missing_facts"], "127.0.0.1"),
    ]
    assert all(line["allow"] is False and line["path"] is None for line in lines)
    unrouted = 'mode="auth_request",reason="{}",route="none",status="{}",upstream="none"'
    assert f"idgate_decisions_total{{{unrouted.format('untrusted_caller', 403)}}} 1.0" in text
    assert f"idgate_decisions_total{{{unrouted.format('missing_facts', 400)}}} 1.0" in counted


HEALTHCHECK_HELLO = (Path(__file__).resolve().parents[1] / "data/spop/haproxy-2.8-healthcheck-hello.bin").read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.anyio
async def test_the_spoa_agents_counters_are_exported() -> None:
    port = _free_port()
    raw = config().model_dump(mode="json", exclude_none=True) | {"spoa": {"host": "127.0.0.1", "port": port}}
    async with serve(cfg=parse_config(raw, environ={})) as c:
        before = (await c.get("/metrics")).text
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEALTHCHECK_HELLO)  # what HAProxy 2.8's spop-check sends (recorded)
        assert await reader.read(4096)  # AGENT-HELLO, then the agent closes
        writer.close()
        await writer.wait_closed()
        after = (await c.get("/metrics")).text
    for name in ("connections", "healthchecks", "notifies", "denies", "handler_errors", "handler_timeouts"):
        assert f"idgate_spoa_{name}_total 0.0" in before
    assert "idgate_spoa_healthchecks_total 1.0" in after


@pytest.mark.anyio
@pytest.mark.parametrize("trust", [True, False])
async def test_trusting_unverified_email_is_a_warning_at_startup(caplog: pytest.LogCaptureFixture, trust: bool) -> None:
    doc = config().model_dump(mode="json")
    doc["issuers"][0].pop("client_secret")
    doc["issuers"][0]["trust_unverified_email"] = trust
    with caplog.at_level("INFO", logger="idgate.runtime"):
        async with serve(cfg=parse_config(doc, environ={})):
            pass
    warnings = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.runtime"]
    assert all(r.levelname == "WARNING" for r in caplog.records if r.name == "idgate.runtime")
    if trust:
        assert [(w["warning"], w["issuer"]) for w in warnings] == [("trust_unverified_email", "test")]
    else:
        assert warnings == []


def test_auth_facts_join_every_cookie_field() -> None:
    """Several Cookie fields (HTTP/2 splits them, RFC 9113 §8.2.3) are judged together, never only the first: a
    second copy of a session cookie on another line makes a duplicate, not a different user's session."""
    base = [(k.encode(), v.encode()) for k, v in FACTS.items()] + [(b"x-idgate-path", b"/app")]
    split = Request({"type": "http", "headers": [*base, (b"cookie", b"__Host-idgate_0=a"), (b"cookie", b"t=1")]})
    one = Request({"type": "http", "headers": [*base, (b"cookie", b"__Host-idgate_0=a")]})
    empty = Request({"type": "http", "headers": [*base, (b"cookie", b"")]})
    none = Request({"type": "http", "headers": base})
    assert [facts_from_request(r).cookie for r in (split, one, empty, none)] == [  # type: ignore[union-attr]
        "__Host-idgate_0=a; t=1",
        "__Host-idgate_0=a",
        None,
        None,
    ]
