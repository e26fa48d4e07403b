"""The decision core and the /auth HTTP contract, with an in-process IdP (httpx.MockTransport) and real RS256 keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from idgate.audit import AuditLog
from idgate.authn import Authenticator
from idgate.config import Config
from idgate.config_load import parse_config
from idgate.decision import DecisionEngine
from idgate.facts import Decision, RequestFacts
from idgate.jwks import JwksCache
from idgate.runtime import create_app
from idgate.verifier import TrustedIssuer, Verifier

ISS = "https://idp.test"
AUD = "https://api.test"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True) | {"kid": "k1", "use": "sig", "alg": "RS256"}


def config(**server: Any) -> Config:
    return parse_config(
        {
            "server": server,
            "issuers": [
                {
                    "name": "test",
                    "issuer": ISS,
                    "jwks_uri": f"{ISS}/jwks",
                    "discovery": False,
                    "audiences": [AUD],
                    "jwks": {"refetch_cooldown_seconds": 0},
                }
            ],
            "role_sets": {
                "grafana": {"roles": ["Viewer", "Admin"], "from_groups": {"staff": ["Viewer"], "ops": ["Admin"]}}
            },
            "upstreams": {"app": {}, "grafana": {"profile": "grafana", "role_set": "grafana"}},
            "routes": [
                {"name": "pub", "path": "/public", "upstream": "app", "public": True},
                {"name": "graf", "path": "/grafana", "upstream": "grafana", "allow": {"roles": ["Viewer", "Admin"]}},
                {"name": "admin", "path": "/admin", "upstream": "app", "allow": {"groups": ["ops"]}},
                {"name": "app", "path": "/app", "upstream": "app", "allow": {"authenticated": True}},
            ],
        },
        environ={},
    )


def token(**claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "exp": now + 300,
        "iat": now,
        "email": "alice@example.test",
        "preferred_username": "alice",
        "name": "Alice",
        "groups": ["staff"],
    } | claims
    return jwt.encode(body, KEY, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})


def idp(delay: float = 0.0) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay)
        return httpx.Response(200, json={"keys": [JWK]}, headers={"cache-control": "max-age=300"})

    return httpx.MockTransport(handler)


def engine(cfg: Config, transport: httpx.MockTransport, records: list[str] | None = None) -> DecisionEngine:
    cache = JwksCache(config=cfg.issuers[0], client=httpx.AsyncClient(transport=transport))
    verifier = Verifier(issuers={ISS: TrustedIssuer(config=cfg.issuers[0], keys=cache)})
    logger = logging.getLogger(f"test.audit.{id(records)}")
    if records is not None:

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record.getMessage())

        logger.addHandler(Collect())
        logger.setLevel(logging.INFO)
    return DecisionEngine(config=cfg, authenticator=Authenticator(verifier=verifier), audit=AuditLog(logger=logger))


def facts(path: str, *authorization: str, host: str = "gw.test", method: str = "GET") -> RequestFacts:
    return RequestFacts(method=method, host=host, path=path, source="192.0.2.7", authorization=authorization)


async def decide(f: RequestFacts, records: list[str] | None = None) -> Decision:
    return await engine(config(), idp(), records).decide(f)


@pytest.mark.anyio
async def test_valid_token_allows_with_identity_of_the_upstream_profile() -> None:
    d = await decide(facts("/grafana/d/x", f"Bearer {token()}"))
    assert d.status == 200 and d.allow and d.upstream == "grafana" and d.route == "graf"
    assert d.identity == {
        "user": "alice",
        "email": "alice@example.test",
        "name": "Alice",
        "groups": "staff",
        "roles": "Viewer",
        "role": "Viewer",
        "subject": "alice",
        "issuer": "https://idp.test",
    }
    assert d.principal is not None and d.principal.key == (ISS, "alice")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("f", "status", "reason"),
    [
        (facts("/public/x"), 200, "public_route"),
        (facts("/nowhere"), 403, "no_route"),
        (facts("/app"), 401, "missing_credentials"),
        (facts("/app", "Basic YWxpY2U6cHc="), 401, "unsupported_scheme"),
        (facts("/app", "Bearer "), 401, "malformed_authorization"),
        (facts("/app", "Bearer a b"), 401, "malformed_authorization"),
        (facts("/app", "Bearer x.y.z", "Bearer x.y.z"), 400, "duplicate_authorization"),
        (facts("/app", "Bearer not-a-jwt"), 401, "invalid_token"),
        (facts("/public/../admin"), 400, "invalid_path"),
        (facts("/app", host="evil.test/x"), 400, "invalid_host"),
    ],
)
async def test_request_outcomes(f: RequestFacts, status: int, reason: str) -> None:
    d = await decide(f)
    assert (d.status, d.reasons[0]) == (status, reason)
    if status != 200:
        assert d.identity == {} and not d.allow


@pytest.mark.anyio
async def test_grpc_method_policy_and_authorization_strip() -> None:
    doc = config().model_dump(mode="json")
    doc["issuers"][0].pop("client_secret")
    doc["routes"] = [
        {"name": "reset", "grpc": "/demo.Echo/Reset", "upstream": "app", "allow": {"groups": ["ops"]}},
        {
            "name": "echo",
            "grpc": "/demo.Echo/*",
            "upstream": "app",
            "allow": {"authenticated": True},
            "authorization": "strip",
        },
    ]
    gate = engine(parse_config(doc, environ={}), idp())
    bearer = f"Bearer {token()}"
    allowed = await gate.decide(facts("/demo.Echo/Whoami", bearer, method="POST"))
    assert allowed.status == 200 and allowed.route == "echo"
    assert allowed.identity["strip_authorization"] == "1"
    denied = await gate.decide(facts("/demo.Echo/Reset", bearer, method="POST"))
    assert (denied.status, denied.reasons, denied.route) == (403, ("missing_role_or_group",), "reset")
    admin = await gate.decide(facts("/demo.Echo/Reset", f"Bearer {token(groups=['ops'])}", method="POST"))
    assert admin.status == 200 and "strip_authorization" not in admin.identity
    anonymous = await gate.decide(facts("/demo.Echo/Whoami", method="POST"))
    assert (anonymous.status, anonymous.reasons) == (401, ("missing_credentials",))


def test_grpc_calls_are_never_navigations() -> None:
    page = {"method": "GET", "host": "h", "path": "/", "accept": "text/html"}
    assert RequestFacts(**page).is_navigation()
    for content_type in ("application/grpc", "application/grpc+proto", "application/grpc-web+proto"):
        assert not RequestFacts(**page, content_type=content_type).is_navigation()


@pytest.mark.anyio
async def test_public_route_passes_no_identity_even_with_a_token() -> None:
    d = await decide(facts("/public", f"Bearer {token()}"))
    assert d.allow and d.identity == {} and d.principal is None


@pytest.mark.anyio
async def test_401_carries_rfc6750_challenge() -> None:
    missing = await decide(facts("/app"))
    assert missing.www_authenticate == 'Bearer realm="idgate"'
    expired = await decide(facts("/app", f"Bearer {token(exp=int(time.time()) - 3600)}"))
    assert expired.status == 401 and expired.reasons == ("expired",)
    assert expired.www_authenticate == 'Bearer realm="idgate", error="invalid_token", error_description="expired"'


@pytest.mark.anyio
async def test_authenticated_without_group_is_403_with_reason() -> None:
    d = await decide(facts("/admin", f"Bearer {token(groups=['staff'])}"))
    assert d.status == 403 and d.reasons == ("missing_role_or_group",) and d.identity == {}
    ok = await decide(facts("/admin/x", f"Bearer {token(groups=['ops'])}"))
    assert ok.status == 200 and ok.reasons == ("group_granted",)


@pytest.mark.anyio
async def test_hostile_groups_are_dropped_not_split() -> None:
    hostile = token(groups=["viewers,admin", "a\r\nX-Auth-Roles: admin", "staff"])
    d = await decide(facts("/app", f"Bearer {hostile}"))
    assert d.allow and d.identity["groups"] == "staff"
    assert "groups_entry_dropped" in d.reasons
    string_groups = await decide(facts("/grafana", f"Bearer {token(groups='staff')}"))
    assert string_groups.status == 403 and "groups_not_a_list" in string_groups.reasons


@pytest.mark.anyio
async def test_user_with_control_characters_is_refused() -> None:
    unsafe = token(preferred_username="a\nb", sub="a\nb")
    d = await decide(facts("/app", f"Bearer {unsafe}"))
    assert d.status == 403 and d.reasons[0] == "unsafe_identity" and d.identity == {}


@pytest.mark.anyio
async def test_late_decision_is_a_503_deny() -> None:
    slow = engine(config(decision_timeout_seconds=0.2), idp(delay=2.0))
    started = time.perf_counter()
    d = await slow.decide(facts("/app", f"Bearer {token()}"))
    assert d.status == 503 and d.reasons == ("decision_timeout",) and not d.allow
    assert time.perf_counter() - started < 1.0


@pytest.mark.anyio
async def test_every_decision_is_one_json_audit_line_without_credentials() -> None:
    records: list[str] = []
    tok = token()
    one = engine(config(), idp(), records)
    await one.decide(facts("/app", f"Bearer {tok}"))
    await one.decide(facts("/admin", f"Bearer {tok}"))
    assert len(records) == 2
    allow, deny = (json.loads(r) for r in records)
    assert allow["allow"] is True and allow["sub"] == "alice" and allow["route"] == "app"
    assert deny["allow"] is False and deny["reasons"] == ["missing_role_or_group"] and deny["status"] == 403
    assert {"ts", "latency_ms", "method", "host", "path", "source", "iss", "upstream"} <= set(allow)
    assert all(tok not in r for r in records)


# --- the /auth HTTP contract ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(
    peer: str = "127.0.0.1", transport: httpx.MockTransport | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, reached through ASGITransport from ``peer``."""
    app = create_app(config(), transport=transport or idp())
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
    assert 'idgate_decisions_total{status="200"} 3.0' in text
    assert 'idgate_decisions_total{status="401"} 1.0' in text
    assert "idgate_token_cache_hits_total 2.0" in text and "idgate_token_cache_misses_total 1.0" in text
    assert "idgate_token_cache_hit_ratio 0.6666" in text
    assert 'idgate_jwks_ready{issuer="test"} 1.0' in text and "idgate_decision_seconds_bucket" in text


@pytest.mark.anyio
async def test_an_unexpected_error_is_a_503_deny_never_an_allow() -> None:
    class Broken(Verifier):
        async def verify(self, token: str) -> Any:
            raise RuntimeError("a bug")

    broken = DecisionEngine(config=config(), authenticator=Authenticator(verifier=Broken(issuers={})), audit=AuditLog())
    d = await broken.decide(facts("/app", f"Bearer {token()}"))
    assert (d.status, d.reasons, d.allow, d.identity) == (503, ("internal_error",), False, {})


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
