"""The SPOE adapter: SPOP message args → RequestFacts, Decision → set-var actions (same variables as the Lua mode)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from idgate.facts import ALLOW_SLOTS, ANSWER_HEADERS, ANSWER_VARIABLES, MAX_SET_COOKIES, Decision
from idgate.spoe.adapter import decision_actions, facts_from_args, spoe_deny_actions, spoe_handler
from idgate.spoe.spop import InvalidString, Scope, SetVar

ARGS = {
    "method": "GET",
    "host": "gw.test",
    "path": "/app",
    "query": "a=1",
    "src": ipaddress.ip_address("192.0.2.9"),
    "authorization": "Bearer x.y.z",
    "authorization_count": 1,
    "cookie": None,
    "accept": "text/html",
    "requested_with": None,
    "fetch_mode": "navigate",
    "content_type": None,
}


def as_vars(actions: object) -> dict[str, object]:
    assert isinstance(actions, list)
    assert all(isinstance(a, SetVar) and a.scope == Scope.TRANSACTION for a in actions)
    return {a.name: a.value for a in actions}


def test_facts_from_args() -> None:
    facts = facts_from_args(ARGS)
    assert facts is not None
    assert (facts.method, facts.host, facts.path, facts.query, facts.source) == (
        "GET",
        "gw.test",
        "/app",
        "a=1",
        "192.0.2.9",
    )
    assert facts.authorization == ("Bearer x.y.z",) and facts.cookie is None and facts.is_navigation()


def test_two_authorization_headers_become_two_copies_and_absent_ones_none() -> None:
    facts = facts_from_args(ARGS | {"authorization_count": 3})
    assert facts is not None and facts.authorization == ("Bearer x.y.z", "Bearer x.y.z")
    none = facts_from_args(ARGS | {"authorization": None, "authorization_count": 0})
    assert none is not None and none.authorization == ()


def test_non_utf8_argument_is_refused() -> None:
    assert facts_from_args(ARGS | {"authorization": InvalidString(b"Bearer \xff")}) is None


class RecordingEngine:
    """Stands in for the DecisionEngine: must not decide, records what the adapter refused itself."""

    def __init__(self) -> None:
        self.refusals: list[tuple[Decision, str]] = []
        self.request_ids: list[str] = []
        self.modes: list[str | None] = []

    async def decide(self, facts: object, *, mode: str | None = None) -> Decision:
        raise AssertionError("must not be called")

    def refused(
        self,
        decision: Decision,
        *,
        facts: object = None,
        source: str = "",
        request_id: str = "",
        mode: str | None = None,
    ) -> Decision:
        self.refusals.append((decision, source))
        self.request_ids.append(request_id)
        self.modes.append(mode)
        return decision


@pytest.mark.anyio
async def test_handler_answers_400_invalid_encoding_without_deciding_and_has_it_audited() -> None:
    engine = RecordingEngine()
    handle = spoe_handler(engine)  # type: ignore[arg-type]
    bad = ARGS | {"path": InvalidString(b"/\xfe"), "request_id": "rid-9"}
    variables = as_vars(list(await handle("idgate-check", bad)))
    assert variables == {"status": "400", "decision": "deny", "reason": "invalid_encoding"}
    assert [(d.status, d.reasons, source) for d, source in engine.refusals] == [
        (400, ("invalid_encoding",), "192.0.2.9")
    ]
    assert engine.request_ids == ["rid-9"]
    assert engine.modes == ["spoe"]  # counted under the SPOE adapter's mode


def test_agent_denies_are_audited_as_503_and_answered_with_the_default_deny() -> None:
    engine = RecordingEngine()
    deny = spoe_deny_actions(engine)  # type: ignore[arg-type]
    assert as_vars(list(deny("handler_timeout"))) == {"decision": "deny", "reason": "handler_timeout"}
    assert [(d.status, d.reasons) for d, _ in engine.refusals] == [(503, ("handler_timeout",))]
    assert engine.modes == ["spoe"]


def test_decision_actions_allow_skips_empty_values_and_carries_cookies() -> None:
    allow = Decision(
        status=200,
        reasons=("authenticated",),
        upstream="app",
        identity={"user": "alice", "roles": "", "cookie_rewrite": "1"},
        set_cookies=("a=1", "b=2"),
    )
    assert as_vars(decision_actions(allow)) == {
        "status": "200",
        "decision": "allow",
        "reason": "authenticated",
        "upstream": "app",
        "user": "alice",
        "cookie_rewrite": "1",
        "set_cookie_0": "a=1",
        "set_cookie_1": "b=2",
    }


def test_decision_actions_deny_never_carries_identity() -> None:
    deny = Decision(
        status=401,
        reasons=("expired",),
        upstream="app",
        identity={"user": "alice"},
        www_authenticate='Bearer error="invalid_token"',
    )
    variables = as_vars(decision_actions(deny))
    assert variables == {
        "status": "401",
        "decision": "deny",
        "reason": "expired",
        "upstream": "app",
        "www_authenticate": 'Bearer error="invalid_token"',
    }


def test_decision_actions_503_carries_retry_after() -> None:
    unavailable = Decision(status=503, reasons=("keys_unavailable",), upstream="app", retry_after=2)
    assert as_vars(decision_actions(unavailable)) == {
        "status": "503",
        "decision": "deny",
        "reason": "keys_unavailable",
        "upstream": "app",
        "retry_after": "2",
    }
    assert "retry_after" not in as_vars(decision_actions(Decision(status=503, reasons=("decision_timeout",))))


def test_every_variable_the_agent_or_the_lua_action_sets_is_in_the_one_table_and_the_same_in_both_modes() -> None:
    """SPOE drops a variable not listed in register-var-names; the Lua action sets only its ANSWER_VARS. A name
    missing on either side would silently change what HAProxy does in one mode only. Both files are held against
    the one Python table (idgate.facts.ANSWER_VARIABLES / ANSWER_HEADERS)."""
    haproxy = Path(__file__).resolve().parents[3] / "haproxy"
    conf = (haproxy / "spoe-idgate.conf").read_text()
    registered = [n for line in re.findall(r"register-var-names (.+)", conf) for n in line.split()]
    assert sorted(registered) == sorted(ANSWER_VARIABLES)
    lua = (haproxy / "idgate-auth.lua").read_text()
    lua_pairs = dict(re.findall(r'\{ "([\w-]+)", "txn\.idgate\.(\w+)" \}', lua))
    assert {var: header for header, var in lua_pairs.items()} == dict(ANSWER_HEADERS)
    assert f"MAX_SET_COOKIES = {MAX_SET_COOKIES}" in lua
    cfg = (haproxy / "haproxy.cfg").read_text()
    read_by_haproxy = set(re.findall(r"txn\.idgate\.(\w+)", cfg)) - {"error", "total_time"}  # set by SPOE itself
    assert read_by_haproxy <= set(ANSWER_VARIABLES), sorted(read_by_haproxy - set(ANSWER_VARIABLES))
    every_slot = dict.fromkeys(ALLOW_SLOTS, "v")
    decisions = [
        Decision(
            status=302,
            reasons=("r",),
            upstream="app",
            www_authenticate="Bearer",
            location="/x",
            set_cookies=tuple(f"c{i}=v" for i in range(MAX_SET_COOKIES + 2)),
            retry_after=5,
        ),
        Decision(status=200, reasons=("r",), identity=every_slot, cache_ttl=5, cache_entry="1|||"),
    ]
    sent = {name for d in decisions for name in as_vars(decision_actions(d))}
    assert sent == set(ANSWER_VARIABLES)


def test_the_request_id_argument_is_carried_and_an_unusable_one_dropped() -> None:
    rid = "7F000001:B3A2_7F000001:20FB_6650A1B2_0003:1C2D"
    assert (facts := facts_from_args(ARGS | {"request_id": rid})) is not None and facts.request_id == rid
    for bad in (None, "", "has space", "x" * 129, "a\nb", 7):
        facts = facts_from_args(ARGS | {"request_id": bad})
        assert facts is not None and facts.request_id == "", bad
