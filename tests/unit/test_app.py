"""The HTTP face (idgate.app) through the composition root (idgate.runtime): the ``/auth`` contract, readiness,
metrics, the assertion keys, and the adapter's own denies being audited and counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
from fake_issuer import AUD, ISS, JWK, KEY, config, idp, token
from starlette.requests import Request

from idgate.app import facts_from_request
from idgate.config import Config
from idgate.config_load import parse_config
from idgate.runtime import create_app
from idgate_devstack.process import free_tcp_port


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
async def test_readyz_waits_for_keys_and_auth_answers_503_with_retry_after() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async with serve(transport=httpx.MockTransport(down)) as c:
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.text == "waiting for keys: test\n"
        assert (await c.get("/healthz")).status_code == 200
        denied = await c.get("/auth", headers=FACTS | {"x-idgate-path": "/app", "authorization": f"Bearer {token()}"})
        # a server-side outage, not a verdict on the token: no 401, no challenge telling the client to drop it
        assert denied.status_code == 503 and denied.headers["x-idgate-reason"] == "keys_unavailable"
        assert denied.headers["x-idgate-decision"] == "deny" and "www-authenticate" not in denied.headers
        assert denied.headers["retry-after"] in ("1", "2")
        assert 'idgate_jwks_ready{issuer="test"} 0.0' in (await c.get("/metrics")).text


class Switchable:
    """The fake issuer's JWKS endpoint, answering whatever ``document`` is now (``None``: connection refused)."""

    def __init__(self) -> None:
        self.document: object = {"keys": [JWK]}
        self.fetches = 0

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            self.fetches += 1
            if self.document is None:
                raise httpx.ConnectError("refused")
            return httpx.Response(200, json=self.document, headers={"cache-control": "max-age=300"})

        return httpx.MockTransport(handler)


AUTH_APP = FACTS | {"x-idgate-path": "/app"}


def no_window() -> Config:
    """The fake issuer's config with a 0 s unknown-kid window: every unknown kid refetches at once."""
    raw = config().model_dump(mode="json", exclude_none=True)
    raw["issuers"][0]["jwks"]["unknown_kid_cooldown_seconds"] = 0
    return parse_config(raw, environ={})


def unknown_kid_token(kid: str) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 300, "iat": now}
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})


@pytest.mark.anyio
async def test_readyz_stays_200_but_says_degraded_while_the_issuer_answers_no_usable_key() -> None:
    issuer = Switchable()
    async with serve(transport=issuer.transport(), cfg=no_window()) as c:
        await ready(c)
        issuer.document = {"keys": []}
        forced = await c.get("/auth", headers=AUTH_APP | {"authorization": f"Bearer {unknown_kid_token('k9')}"})
        assert forced.status_code == 503 and forced.headers["x-idgate-reason"] == "keys_unavailable"
        r = await c.get("/readyz")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert r.text.startswith("ready\ndegraded: test (serving 1 key(s) fetched ")
        assert "last fetch failed: KeySetError" in r.text and "no usable key in the set (0 skipped)" in r.text
        text = (await c.get("/metrics")).text
        assert 'idgate_jwks_degraded{issuer="test"} 1.0' in text and 'idgate_jwks_keys{issuer="test"} 1.0' in text
        assert 'idgate_jwks_unusable_sets_total{issuer="test"} 1.0' in text
        ok = await c.get("/auth", headers=AUTH_APP | {"authorization": f"Bearer {token()}"})
        assert ok.status_code == 200  # the last good keys still verify
        issuer.document = {"keys": [JWK]}
        again = await c.get("/auth", headers=AUTH_APP | {"authorization": f"Bearer {unknown_kid_token('k8')}"})
        assert again.status_code == 401 and again.headers["x-idgate-reason"] == "unknown_kid"
        assert (await c.get("/readyz")).text == "ready\n"
        assert 'idgate_jwks_degraded{issuer="test"} 0.0' in (await c.get("/metrics")).text
        assert issuer.fetches == 3


REFRESH = "/admin/jwks/refresh"


@pytest.mark.anyio
async def test_admin_refresh_reports_a_failed_refetch_with_502_and_keeps_the_keys() -> None:
    issuer = Switchable()
    async with serve(transport=issuer.transport()) as c:
        await ready(c)
        issuer.document = {"keys": []}
        failed = await c.post(REFRESH)
        assert failed.status_code == 502 and failed.headers["cache-control"] == "no-store"
        [report] = failed.json()["issuers"]
        assert report["ok"] is False and report["kids"] == ["k1"] and report["withdrawn"] == []
        assert "no usable key" in report["error"]
        assert (await c.get("/auth", headers=AUTH_APP | {"authorization": f"Bearer {token()}"})).status_code == 200
        assert (await c.get("/readyz")).text.startswith("ready\ndegraded: test")


@pytest.mark.anyio
async def test_admin_refresh_withdraws_a_key_and_its_cached_tokens_at_once() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    issuer = Switchable()
    async with serve(transport=issuer.transport()) as c:
        await ready(c)
        bearer = {"authorization": f"Bearer {token()}"}
        assert (await c.get("/auth", headers=AUTH_APP | bearer)).status_code == 200
        assert (await c.get("/auth", headers=AUTH_APP | bearer)).status_code == 200  # from the token cache
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        issuer.document = {
            "keys": [jwt.algorithms.RSAAlgorithm.to_jwk(other.public_key(), as_dict=True) | {"kid": "k2"}]
        }
        assert (await c.get("/auth", headers=AUTH_APP | bearer)).status_code == 200  # idgate cannot know yet
        refreshed = await c.post(REFRESH, params={"issuer": "test"})
        assert refreshed.status_code == 200
        assert refreshed.json() == {
            "issuers": [
                {"issuer": "test", "ok": True, "kids": ["k2"], "withdrawn": ["k1"], "purged_tokens": 1, "error": ""}
            ]
        }
        refused = await c.get("/auth", headers=AUTH_APP | bearer)
        assert refused.status_code == 401 and refused.headers["x-idgate-reason"] == "unknown_kid"
        text = (await c.get("/metrics")).text
    assert 'idgate_jwks_withdrawn_keys_total{issuer="test"} 1.0' in text


@pytest.mark.anyio
@pytest.mark.parametrize(
    "header", ["forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"]
)
async def test_admin_refresh_refuses_anything_that_came_through_a_proxy(header: str) -> None:
    issuer = Switchable()
    async with serve(transport=issuer.transport()) as c:
        await ready(c)
        before = issuer.fetches
        refused = await c.post(REFRESH, headers={header: "203.0.113.9"})
        assert refused.status_code == 403 and refused.json() == {"error": "forbidden"}
        assert issuer.fetches == before


@pytest.mark.anyio
async def test_admin_refresh_refuses_untrusted_peers_unknown_issuers_and_other_methods() -> None:
    issuer = Switchable()
    async with serve(peer="203.0.113.9", transport=issuer.transport()) as outsider:
        await asyncio.sleep(0.05)
        before = issuer.fetches
        assert (await outsider.post(REFRESH)).status_code == 403
        assert issuer.fetches == before
    async with serve(transport=issuer.transport()) as c:
        await ready(c)
        before = issuer.fetches
        unknown = await c.post(REFRESH, params={"issuer": "nosuch"})
        assert unknown.status_code == 404 and unknown.json() == {"error": "unknown_issuer", "issuer": "nosuch"}
        assert (await c.get(REFRESH)).status_code == 405
        assert issuer.fetches == before


@pytest.mark.anyio
async def test_metrics_count_decisions_and_cache_hits() -> None:
    async with serve() as c:
        await ready(c)
        tok = f"Bearer {token()}"
        for n in range(3):  # three paths: three decisions (a repeat of one would be a memo hit, not a token hit)
            assert (
                await c.get("/auth", headers=FACTS | {"x-idgate-path": f"/app/{n}", "authorization": tok})
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
        app = create_app(config(), transport=idp())
        async with app.router.lifespan_context(app):
            outsider = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 40000)))
            local = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40000)))
            async with outsider, local:
                assert (
                    await outsider.get("http://i/auth", headers=FACTS | {"x-idgate-path": "/app"})
                ).status_code == 403
                assert (await outsider.get("http://i/metrics")).status_code == 403  # nor may it read the metrics
                text = (await local.get("http://i/metrics")).text
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


@pytest.mark.anyio
async def test_the_spoa_agents_counters_are_exported() -> None:
    port = free_tcp_port()
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


def test_the_request_id_header_is_carried_and_an_unusable_one_dropped() -> None:
    base = [(b"x-idgate-method", b"GET"), (b"x-idgate-host", b"gw.test"), (b"x-idgate-path", b"/app")]

    def rid(*value: bytes) -> str:
        headers = [*base, *((b"x-idgate-request-id", v) for v in value)]
        facts = facts_from_request(Request({"type": "http", "headers": headers}))
        assert facts is not None
        return facts.request_id

    assert rid(b"7F000001:B3A2_0003:1C2D") == "7F000001:B3A2_0003:1C2D"
    assert [rid(), rid(b""), rid(b"a b"), rid(b"x" * 200)] == ["", "", "", ""]


@pytest.mark.anyio
async def test_every_audit_line_names_the_policy_that_decided(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="idgate.audit"):
        async with serve() as c:
            await ready(c)
            await c.get("/auth", headers=FACTS | {"x-idgate-path": "/app", "authorization": f"Bearer {token()}"})
            await c.get("/auth", headers=FACTS | {"x-idgate-path": "/app"})
            text = (await c.get("/metrics")).text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.audit"]
    policies = {line["policy"] for line in lines}
    assert len(lines) == 2 and len(policies) == 1
    (policy,) = policies
    assert policy.startswith("sha256:") and f'policy="{policy}"' in text


@pytest.mark.anyio
async def test_a_repeat_auth_is_answered_from_the_memo_with_the_same_headers_and_its_own_audit_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bearer = {"authorization": f"Bearer {token()}"}
    with caplog.at_level("INFO", logger="idgate.audit"):
        async with serve() as c:
            await ready(c)
            answers = [
                await c.get("/auth", headers=AUTH_APP | bearer | {"x-idgate-request-id": f"rid-{n}"}) for n in range(3)
            ]
            text = (await c.get("/metrics")).text
    first = answers[0]
    assert first.status_code == 200 and first.headers["x-idgate-decision"] == "allow"
    for other in answers[1:]:
        assert other.status_code == 200 and other.content == first.content
        assert sorted(other.headers.items()) == sorted(first.headers.items())
    assert "idgate_decision_memo_hits_total 2.0" in text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.audit"]
    assert [line["request_id"] for line in lines] == ["rid-0", "rid-1", "rid-2"]
    assert {line["user"] for line in lines} == {"alice"}
