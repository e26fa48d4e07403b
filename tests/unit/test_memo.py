"""The memo of finished allows: its key, its bounds (entries, time, invalidation) and what the engine stores."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import httpx
import pytest
from fake_issuer import ISS, config, idp, token

from idgate.audit import AuditLog, AuditTemplate
from idgate.authn import Authenticator
from idgate.decision import DecisionEngine
from idgate.facts import Decision, RequestFacts
from idgate.jwks import JwksCache
from idgate.memo import DecisionMemo, MemoEntry, memo_key
from idgate.principal import Principal
from idgate.verifier import TrustedIssuer, Verifier

TEMPLATE = AuditTemplate(middle="", level=logging.INFO, write=False)
ALLOW = Decision(status=200, reasons=("authenticated",), route="app", upstream="app")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def entry(expires_at: float, rendered: object = b"x") -> MemoEntry:
    return MemoEntry(decision=ALLOW, rendered=rendered, audit=TEMPLATE, expires_at=expires_at)


def test_the_key_separates_every_field_and_none_from_empty() -> None:
    base = memo_key("spoe", ("Bearer a",), None, "GET", "gw.test", "/app")
    variants = [
        memo_key("auth_request", ("Bearer a",), None, "GET", "gw.test", "/app"),
        memo_key("spoe", ("Bearer a", "Bearer a"), None, "GET", "gw.test", "/app"),
        memo_key("spoe", (), None, "GET", "gw.test", "/app"),
        memo_key("spoe", ("Bearer b",), None, "GET", "gw.test", "/app"),
        memo_key("spoe", ("Bearer a",), "", "GET", "gw.test", "/app"),
        memo_key("spoe", ("Bearer a",), "c=1", "GET", "gw.test", "/app"),
        memo_key("spoe", ("Bearer a",), None, "POST", "gw.test", "/app"),
        memo_key("spoe", ("Bearer a",), None, "GET", "GW.test", "/app"),
        memo_key("spoe", ("Bearer a",), None, "GET", "gw.test", "/app/"),
        # the same characters moved across a field boundary
        memo_key("spoe", ("Bearer a",), None, "GETg", "w.test", "/app"),
        memo_key("spoe", ("Bearer a",), None, "GET", "gw.test/", "app"),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert base == memo_key("spoe", ("Bearer a",), None, "GET", "gw.test", "/app") and len(base) == 32


def test_entries_are_served_until_they_expire_and_never_beyond_the_max_ttl() -> None:
    clock = Clock()
    memo = DecisionMemo(max_entries=10, max_ttl_seconds=5, clock=clock)
    assert memo.put(b"k", entry(clock.now + 3600), generation=0)
    assert memo.get(b"k") is not None
    clock.now += 4.9
    assert memo.get(b"k") is not None
    clock.now += 0.1
    assert memo.get(b"k") is None and len(memo) == 0  # cut to now + 5 s, then dropped
    assert memo.put(b"t", entry(clock.now + 1), generation=0)
    clock.now += 1
    assert memo.get(b"t") is None  # the entry's own expiry (the token's exp) comes first
    assert not memo.put(b"old", entry(clock.now), generation=0)  # already expired: not stored
    assert (memo.hits, memo.misses) == (2, 2)


def test_least_recently_used_entries_go_first_beyond_max_entries() -> None:
    memo = DecisionMemo(max_entries=2, max_ttl_seconds=30, clock=Clock())
    for key in (b"a", b"b"):
        memo.put(key, entry(2_000), generation=0)
    assert memo.get(b"a") is not None
    memo.put(b"c", entry(2_000), generation=0)
    assert len(memo) == 2 and memo.get(b"b") is None and memo.get(b"a") is not None


def test_invalidate_forgets_everything_and_refuses_answers_decided_before_it() -> None:
    memo = DecisionMemo(max_entries=10, max_ttl_seconds=30, clock=Clock())
    generation = memo.generation
    memo.put(b"a", entry(2_000), generation=generation)
    memo.invalidate()
    assert memo.get(b"a") is None and memo.invalidations == 1
    assert not memo.put(b"b", entry(2_000), generation=generation)  # decided under the dropped keys or policy
    assert memo.put(b"b", entry(2_000), generation=memo.generation)


def test_zero_entries_turns_the_memo_off_and_bad_bounds_are_refused() -> None:
    memo = DecisionMemo(max_entries=0, max_ttl_seconds=30)
    assert not memo.enabled and not memo.put(b"a", entry(time.time() + 60), generation=0) and len(memo) == 0
    with pytest.raises(ValueError, match="max_entries"):
        DecisionMemo(max_entries=-1, max_ttl_seconds=30)
    for ttl in (0, 31):
        with pytest.raises(ValueError, match="max_ttl_seconds"):
            DecisionMemo(max_entries=1, max_ttl_seconds=ttl)


# --- what the engine stores ---------------------------------------------------------------------------------------


def make_engine() -> DecisionEngine:
    cfg = config()
    cache = JwksCache(config=cfg.issuers[0], client=httpx.AsyncClient(transport=idp()))
    verifier = Verifier(issuers={ISS: TrustedIssuer(config=cfg.issuers[0], keys=cache)})
    return DecisionEngine(config=cfg, authenticator=Authenticator(verifier=verifier), audit=AuditLog())


def facts(path: str, *authorization: str, cookie: str | None = None) -> RequestFacts:
    return RequestFacts(method="GET", host="gw.test", path=path, authorization=authorization, cookie=cookie)


@pytest.mark.anyio
async def test_the_engine_stores_a_bearer_allow_until_the_token_expires() -> None:
    engine = make_engine()
    exp = int(time.time()) + 20
    request = facts("/app", f"Bearer {token(exp=exp)}")
    decision = await engine.decide(request)
    assert decision.allow
    assert engine.remember(b"k", request, decision, b"rendered", generation=0)
    stored = engine.memo.get(b"k")
    assert stored is not None and stored.rendered == b"rendered" and stored.decision is decision
    assert stored.expires_at <= exp  # never past the token's exp (and never past now + max_ttl_seconds)


@pytest.mark.anyio
async def test_the_engine_never_stores_denies_set_cookie_answers_assertions_or_sessions() -> None:
    engine = make_engine()
    denied = facts("/admin", f"Bearer {token()}")  # staff, not ops
    deny = await engine.decide(denied)
    assert deny.status == 403 and not engine.remember(b"d", denied, deny, b"", generation=0)
    allowed = facts("/app", f"Bearer {token()}")
    allow = await engine.decide(allowed)
    with_cookie = replace(allow, set_cookies=("s=1",))
    assert not engine.remember(b"c", allowed, with_cookie, b"", generation=0)
    with_assertion = replace(allow, identity={**allow.identity, "assertion": "a.b.c"})
    assert not engine.remember(b"a", allowed, with_assertion, b"", generation=0)
    session = facts("/app", cookie="idgate=sealed")  # a session allow: no Authorization
    principal = Principal(issuer=ISS, subject="s", username=None, email=None, name=None, groups=(), expires_at=9e9)
    session_allow = Decision(status=200, reasons=("authenticated",), route="app", upstream="app", principal=principal)
    assert not engine.remember(b"s", session, session_allow, b"", generation=0)
    public = facts("/public")
    public_allow = await engine.decide(public)
    assert public_allow.reasons == ("public_route",) and engine.remember(b"p", public, public_allow, b"", generation=0)
    assert len(engine.memo) == 1


# --- what invalidates it in a running idgate ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_withdrawn_key_empties_the_memo_and_the_token_cache_with_the_cache_on_or_off() -> None:
    from idgate import runtime

    for entries in (10, 0):
        cfg = config(token_cache_entries=entries)
        async with httpx.AsyncClient(transport=idp()) as client:
            services = runtime._services(cfg, runtime._Shared(clients={None: client})).services
            engine = services.engine
            request = facts("/app", f"Bearer {token()}")
            assert await services.caches[0].refresh()
            decision = await engine.decide(request)
            assert engine.remember(b"k", request, decision, b"x", generation=engine.memo.generation)
            hook = services.caches[0].on_keys_withdrawn
            assert hook is not None
            purged = hook(ISS, frozenset({"k1"}))
            assert engine.memo.get(b"k") is None and engine.memo.invalidations == 1
            assert purged == (1 if entries else 0)  # the verified-token cache's purge still runs and counts


def test_the_config_keys_default_on_and_bad_bounds_are_problems() -> None:
    from idgate.config_load import parse_config
    from idgate.errors import ConfigError

    raw: dict[str, object] = {
        "issuers": [{"name": "t", "issuer": ISS, "jwks_uri": f"{ISS}/jwks", "discovery": False, "audiences": ["a"]}],
        "upstreams": {"app": {}},
        "routes": [{"name": "app", "path": "/", "upstream": "app", "allow": {"authenticated": True}}],
    }
    assert config().decision_memo.max_entries == 10_000 and config().decision_memo.max_ttl_seconds == 10
    for bad in ({"max_ttl_seconds": 31}, {"max_ttl_seconds": 0}, {"max_entries": -1}, {"max_entries": "many"}):
        with pytest.raises(ConfigError) as caught:
            parse_config(raw | {"decision_memo": bad}, environ={})
        assert any("decision_memo" in problem for problem in caught.value.problems), caught.value.problems
    off = parse_config(raw | {"decision_memo": {"max_entries": 0}}, environ={})
    assert off.decision_memo.max_entries == 0
