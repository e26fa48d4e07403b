"""The decision cache's rules (idgate.cache_entry): what is cacheable, for how long, and the entry's encoding."""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
from fake_issuer import ISS, config, idp, token
from hypothesis import given
from hypothesis import strategies as st

from idgate.audit import AuditLog
from idgate.authn import Authenticator
from idgate.cache_entry import (
    CACHED_VARIABLES,
    HEAD_FIELDS,
    TAG_KINDS,
    answer_variables,
    cache_ttl,
    decode_entry,
    encode_entry,
    seal,
    tag,
)
from idgate.config import Config
from idgate.config_load import parse_config
from idgate.decision import DecisionEngine, cache_active
from idgate.facts import ALLOW_SLOTS, ANSWER_HEADERS, ANSWER_VARIABLES, Decision, RequestFacts
from idgate.jwks import JwksCache
from idgate.verifier import TrustedIssuer, Verifier

NOW = 1_800_000_000.5
ALLOW = Decision(status=200, reasons=("ok",), route="app", upstream="app", identity={"user": "alice"})


def ttl(decision: Decision = ALLOW, *, until: float = NOW + 300, max_ttl: int = 30) -> int:
    return cache_ttl(decision, reusable_until=until, now=NOW, max_ttl_seconds=max_ttl)


def jwt_with_exp(exp: float) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256'})}.{part({'exp': exp})}.sig"


def test_only_a_plain_allow_is_cacheable() -> None:
    assert ttl() == 30
    assert ttl(replace(ALLOW, status=403, identity={})) == 0
    assert ttl(Decision(status=401, reasons=("missing_credentials",))) == 0
    assert ttl(Decision(status=302, reasons=("login_required",), location="/.idgate/start")) == 0
    assert ttl(replace(ALLOW, set_cookies=("__Host-idgate_0=new",))) == 0  # touched, refreshed or re-issued
    assert ttl(replace(ALLOW, www_authenticate="Bearer")) == 0
    assert ttl(replace(ALLOW, retry_after=5)) == 0


def test_the_ttl_is_the_smallest_bound_in_whole_seconds() -> None:
    assert ttl(max_ttl=30, until=NOW + 12.9) == 12  # token exp / session refresh point
    assert ttl(max_ttl=5, until=NOW + 300) == 5
    assert ttl(until=NOW + 0.9) == 0  # under a second: not worth an entry
    assert ttl(until=NOW - 1) == 0  # already past (idgate's leeway allowed it): never cached
    assert ttl(until=0.0) == 0  # a credential that must not be reused
    assert ttl(until=math.inf) == 30  # a public route: only the maximum
    signed = replace(ALLOW, identity={"user": "a", "assertion": jwt_with_exp(NOW + 7.5)})
    assert ttl(signed) == 7
    assert ttl(replace(ALLOW, identity={"assertion": "not-a-jwt"})) == 0  # an unreadable assertion: not cached


@given(
    now=st.floats(min_value=1e9, max_value=4e9),
    until=st.floats(min_value=0, max_value=5e9) | st.just(math.inf),
    max_ttl=st.integers(min_value=1, max_value=3600),
)
def test_an_entry_never_expires_after_any_bound(now: float, until: float, max_ttl: int) -> None:
    sealed = seal(ALLOW, reusable_until=until, revocation_keys=(), now=now, max_ttl_seconds=max_ttl)
    if sealed.cache_ttl == 0:
        assert sealed == ALLOW
        return
    entry = decode_entry(sealed.cache_entry)
    assert entry is not None
    assert 1 <= sealed.cache_ttl <= max_ttl
    assert entry.expires_at <= now + max_ttl and entry.expires_at <= until and entry.expires_at > now - 1


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@given(
    expires_at=st.integers(min_value=0, max_value=10**12 - 1),
    variables=st.dictionaries(st.sampled_from(CACHED_VARIABLES), text),
    keys=st.lists(st.sampled_from(["sid:", "sub:", "idp_sid:", "other:"]).flatmap(lambda p: text.map(p.__add__))),
)
def test_the_entry_round_trips_whatever_the_values(expires_at: int, variables: dict[str, str], keys: list[str]) -> None:
    """Values with ``|``, non-ASCII and empty ones: every field is base64url, so ``field(N,|),ub64dec`` in HAProxy
    gets each back; empty means "not set"."""
    value = encode_entry(expires_at=expires_at, revocation_keys=tuple(keys), variables=variables)
    assert value.count("|") == HEAD_FIELDS + len(CACHED_VARIABLES) - 1
    assert all(c.isalnum() or c in "-_|" for c in value) and value.isascii()
    entry = decode_entry(value)
    assert entry is not None and entry.expires_at == expires_at
    assert entry.variables == {k: v for k, v in variables.items() if v}
    for kind in TAG_KINDS:
        mine = [k for k in keys if k.partition(":")[0] == kind]
        assert entry.tags.get(kind) == (tag(mine[-1]) if mine else None)


def test_garbage_is_no_entry() -> None:
    assert decode_entry("") is None
    assert decode_entry("x|a|b|c") is None
    good = encode_entry(expires_at=5, revocation_keys=(), variables={"status": "200"})
    assert decode_entry(good) is not None
    assert decode_entry(good.replace("|", "|!", 5)) is None
    assert decode_entry("-1" + good[1:]) is None


def test_the_variables_are_the_answer_ones_and_haproxy_restores_each_from_its_field() -> None:
    assert set(CACHED_VARIABLES) <= set(ANSWER_VARIABLES) and {"cache_ttl", "cache_entry"} <= set(ANSWER_HEADERS)
    assert answer_variables(replace(ALLOW, identity=dict.fromkeys(ALLOW_SLOTS, "v"))) == {
        "status": "200",
        "decision": "allow",
        "reason": "ok",
        "upstream": "app",
        **dict.fromkeys(ALLOW_SLOTS, "v"),
    }
    from pathlib import Path

    cfg = (Path(__file__).resolve().parents[2] / "haproxy" / "haproxy.cfg").read_text()
    restored = dict(
        (name, int(n))
        for name, n, again in __import__("re").findall(
            r"set-var\(txn\.idgate\.(\w+)\) \"var\(txn\.cache_hit\),field\((\d+),\|\),ub64dec\" if cache_hit "
            r"\{ var\(txn\.cache_hit\),field\((\d+),\|\) -m len gt 0 \}",
            cfg,
        )
        if n == again
    )
    assert restored == {name: HEAD_FIELDS + 1 + i for i, name in enumerate(CACHED_VARIABLES)}


# -- the engine seals allows ------------------------------------------------------------------------------------


def cache_config(**cache: Any) -> Config:
    raw = config().model_dump(mode="json", exclude_none=True)
    return parse_config(raw | {"cache": cache, "haproxy": {"runtime_api": ["unix:/run/haproxy.sock"]}}, environ={})


def engine(cfg: Config) -> DecisionEngine:
    cache = JwksCache(config=cfg.issuers[0], client=httpx.AsyncClient(transport=idp()))
    verifier = Verifier(issuers={ISS: TrustedIssuer(config=cfg.issuers[0], keys=cache)})
    return DecisionEngine(config=cfg, authenticator=Authenticator(verifier=verifier), audit=AuditLog())


def facts(path: str, authorization: str | None = None) -> RequestFacts:
    return RequestFacts(
        method="GET", host="gw.test", path=path, authorization=(authorization,) if authorization else ()
    )


@pytest.mark.anyio
async def test_the_engine_marks_a_bearer_allow_bounded_by_the_token_and_tags_its_subject() -> None:
    exp = int(time.time()) + 10
    d = await engine(cache_config()).decide(facts("/app/x", f"Bearer {token(exp=exp)}"))
    assert d.allow and 8 <= d.cache_ttl <= 10
    entry = decode_entry(d.cache_entry)
    assert entry is not None and entry.expires_at <= exp
    assert entry.tags == {"sub": tag(f"sub:{ISS}|alice")}
    assert entry.variables["user"] == "alice" and entry.variables["upstream"] == "app"


@pytest.mark.anyio
async def test_the_engine_marks_nothing_when_the_cache_is_off_or_cannot_be_purged() -> None:
    good = f"Bearer {token()}"
    assert (await engine(cache_config(max_ttl_seconds=7)).decide(facts("/app/x", good))).cache_ttl == 7
    off = await engine(cache_config(enabled=False)).decide(facts("/app/x", good))
    assert off.allow and off.cache_ttl == 0 and off.cache_entry == ""
    no_socket = await engine(config()).decide(facts("/app/x", good))  # cache enabled, no haproxy.runtime_api
    assert no_socket.allow and no_socket.cache_ttl == 0 and not cache_active(config())
    for denied in (facts("/admin/x", good), facts("/app/x"), facts("/app/x", "Bearer x.y.z"), facts("/a/../b")):
        d = await engine(cache_config()).decide(denied)
        assert not d.allow and d.cache_ttl == 0 and d.cache_entry == ""
    for credential in (None, "Bearer made.up.token"):  # a public route: anyone could fill the cache, so never
        public = await engine(cache_config()).decide(facts("/public/x", credential))
        assert public.allow and public.cache_ttl == 0 and public.cache_entry == ""


@pytest.mark.parametrize(
    ("cache", "haproxy", "problem"),
    [
        ({"max_ttl_seconds": 0}, {}, "max_ttl_seconds"),
        ({"max_entries": 0}, {}, "max_entries"),
        ({"sweep_interval_seconds": 0}, {}, "sweep_interval_seconds"),
        ({"enabled": "maybe"}, {}, "enabled"),
        ({"ttl": 5}, {}, "ttl"),
        ({}, {"runtime_api": ["http://x"]}, "runtime_api"),
        ({}, {"runtime_api": ["unix:/a; clear map x"]}, "runtime_api"),
        ({}, {"runtime_api": ["tcp:h:1", "tcp:h:1"]}, "runtime_api"),
        ({}, {"cache_map": "a map"}, "cache_map"),
    ],
)
def test_bad_cache_settings_are_refused(cache: dict[str, Any], haproxy: dict[str, Any], problem: str) -> None:
    from idgate.errors import ConfigError

    raw = config().model_dump(mode="json", exclude_none=True)
    with pytest.raises(ConfigError) as caught:
        parse_config(raw | {"cache": cache, "haproxy": haproxy}, environ={})
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_every_cache_problem_is_listed_at_once() -> None:
    from idgate.errors import ConfigError

    raw = config().model_dump(mode="json", exclude_none=True)
    bad = {"cache": {"max_ttl_seconds": -1, "max_entries": 0}, "haproxy": {"runtime_api": ["nope"]}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw | bad, environ={})
    text = "\n".join(caught.value.problems)
    assert "max_ttl_seconds" in text and "max_entries" in text and "runtime_api" in text
