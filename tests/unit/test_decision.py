"""The decision core and the /auth HTTP contract, with an in-process IdP (httpx.MockTransport) and real RS256 keys."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

import httpx
import jwt
import pytest
from fake_issuer import ISS, config, idp, token

from idgate.assertion import AssertionSigner
from idgate.audit import AuditLog
from idgate.authn import Authenticator
from idgate.config import Config
from idgate.config_load import parse_config
from idgate.decision import DecisionEngine
from idgate.facts import Decision, RequestFacts
from idgate.jwks import JwksCache
from idgate.verifier import TrustedIssuer, Verifier


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


def email_config(*, trust: bool = False) -> Config:
    """The fake issuer's config with Grafana keyed by email and the app receiving a signed assertion."""
    doc = config().model_dump(mode="json")
    doc["issuers"][0].pop("client_secret")
    doc["issuers"][0]["trust_unverified_email"] = trust
    doc["upstreams"]["grafana"]["user_from"] = "email"
    doc["upstreams"]["app"]["assertion_audience"] = "app"
    doc["assertion"] = {"issuer": "https://idgate.test"}
    return parse_config(doc, environ={})


def email_engine(*, trust: bool = False) -> tuple[DecisionEngine, AssertionSigner]:
    cfg = email_config(trust=trust)
    cache = JwksCache(config=cfg.issuers[0], client=httpx.AsyncClient(transport=idp()))
    verifier = Verifier(issuers={ISS: TrustedIssuer(config=cfg.issuers[0], keys=cache)})
    signer = AssertionSigner(issuer="https://idgate.test")
    gate = DecisionEngine(
        config=cfg, authenticator=Authenticator(verifier=verifier), audit=AuditLog(), assertions=signer
    )
    return gate, signer


# Trudy's token: her own subject, and someone else's email that her IdP did not verify (the "nOAuth" class).
UNVERIFIED = [{"email_verified": False}, {"email_verified": None}, {"email_verified": "true"}, {"email_verified": 1}]


@pytest.mark.anyio
@pytest.mark.parametrize("verified", UNVERIFIED, ids=repr)
async def test_unverified_email_never_becomes_the_user(verified: dict[str, object]) -> None:
    gate, _ = email_engine()
    trudy = token(sub="trudy", preferred_username="trudy", **verified)
    d = await gate.decide(facts("/grafana/d/x", f"Bearer {trudy}"))
    assert (d.status, d.reasons[0], d.identity, d.allow) == (403, "unverified_email", {}, False)
    absent = token(sub="trudy", preferred_username="trudy", email=None, email_verified=None)
    assert (await gate.decide(facts("/grafana/d/x", f"Bearer {absent}"))).reasons[0] == "unverified_email"


@pytest.mark.anyio
async def test_unverified_email_is_not_passed_on_nor_asserted() -> None:
    gate, signer = email_engine()
    d = await gate.decide(
        facts("/app/x", f"Bearer {token(sub='trudy', preferred_username='trudy', email_verified=False)}")
    )
    assert d.status == 200 and d.identity["user"] == "trudy" and "email" not in d.identity
    assert "email_dropped_unverified" in d.reasons
    public = {k["kid"]: jwt.PyJWK(k) for k in signer.jwks()["keys"]}
    kid = jwt.get_unverified_header(d.identity["assertion"])["kid"]
    asserted = jwt.decode(d.identity["assertion"], public[kid], algorithms=["ES256"], audience="app")
    assert asserted["sub"] == "trudy" and asserted["email"] is None


@pytest.mark.anyio
async def test_verified_email_is_the_user() -> None:
    gate, _ = email_engine()
    d = await gate.decide(facts("/grafana/d/x", f"Bearer {token()}"))
    assert d.status == 200 and d.identity["user"] == d.identity["email"] == "alice@example.test"


@pytest.mark.anyio
async def test_issuer_opt_in_trusts_unverified_email() -> None:
    gate, _ = email_engine(trust=True)
    d = await gate.decide(facts("/grafana/d/x", f"Bearer {token(email_verified=False)}"))
    assert d.status == 200 and d.identity["user"] == "alice@example.test"
    app = await gate.decide(facts("/app/x", f"Bearer {token(email_verified=False)}"))
    assert app.identity["email"] == "alice@example.test" and "email_dropped_unverified" not in app.reasons


@pytest.mark.anyio
async def test_keys_unavailable_is_a_503_deny_with_retry_after_and_no_challenge() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    d = await engine(config(), httpx.MockTransport(down)).decide(facts("/app", f"Bearer {token()}"))
    assert (d.status, d.reasons, d.allow, d.www_authenticate, d.identity) == (
        503,
        ("keys_unavailable",),
        False,
        None,
        {},
    )
    assert d.retry_after in (1, 2) and d.route == "app"


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
    assert {"latency_ms", "method", "host", "path", "source", "iss", "upstream", "request_id"} <= set(allow)
    assert all(tok not in r for r in records)


@pytest.mark.anyio
async def test_the_audit_line_carries_the_request_id_user_email_and_roles_never_the_assertion() -> None:
    records: list[str] = []
    tok = token()
    gate = engine(config(), idp(), records)
    await gate.decide(replace(facts("/grafana/d", f"Bearer {tok}"), request_id="rid-1"))
    await gate.decide(replace(facts("/admin", f"Bearer {tok}"), request_id="rid-2"))
    await gate.decide(replace(facts("/app"), request_id=""))
    gate.refused(Decision(status=503, reasons=("handler_timeout",)), source="192.0.2.8", request_id="rid-4")
    allow, deny, anonymous, refused = (json.loads(r) for r in records)
    assert (allow["request_id"], allow["user"], allow["email"], allow["roles"]) == (
        "rid-1",
        "alice",
        "alice@example.test",
        ["Viewer"],
    )
    assert (deny["request_id"], deny["status"], deny["user"], deny["roles"]) == ("rid-2", 403, "alice", [])
    assert (anonymous["request_id"], anonymous["user"], anonymous["email"]) == (None, None, None)
    assert (refused["request_id"], refused["source"], refused["method"]) == ("rid-4", "192.0.2.8", None)
    assert all(tok not in r and "assertion" not in r and '"ts"' not in r for r in records)  # ts: the formatter's


@pytest.mark.anyio
async def test_an_unexpected_error_is_a_503_deny_never_an_allow() -> None:
    class Broken(Verifier):
        async def verify(self, token: str) -> Any:
            raise RuntimeError("a bug")

    broken = DecisionEngine(config=config(), authenticator=Authenticator(verifier=Broken(issuers={})), audit=AuditLog())
    d = await broken.decide(facts("/app", f"Bearer {token()}"))
    assert (d.status, d.reasons, d.allow, d.identity) == (503, ("internal_error",), False, {})
