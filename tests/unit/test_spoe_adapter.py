"""The SPOE adapter: SPOP message args → RequestFacts, Decision → set-var actions (same variables as the Lua mode)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from idgate.decision import Decision
from idgate.identity import HEADER_OF_SLOT
from idgate.spoe import decision_actions, facts_from_args, spoe_handler
from idgate.spop import InvalidString, Scope, SetVar

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


@pytest.mark.anyio
async def test_handler_answers_400_invalid_encoding_without_deciding() -> None:
    class NoEngine:
        async def decide(self, facts: object) -> Decision:
            raise AssertionError("must not be called")

    handle = spoe_handler(NoEngine())  # type: ignore[arg-type]
    variables = as_vars(list(await handle("idgate-check", ARGS | {"path": InvalidString(b"/\xfe")})))
    assert variables == {"status": "400", "decision": "deny", "reason": "invalid_encoding"}


def test_decision_actions_allow_skips_empty_values_and_carries_cookies() -> None:
    allow = Decision(
        status=200,
        reasons=("authenticated",),
        upstream="app",
        headers={"x-idgate-user": "alice", "x-idgate-roles": "", "x-idgate-cookie-rewrite": "1"},
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
        headers={"x-idgate-user": "alice"},
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


def test_every_variable_the_agent_or_the_lua_action_sets_is_registered_and_the_same_in_both_modes() -> None:
    """SPOE drops a variable not listed in register-var-names; the Lua action sets only its ANSWER_VARS. A name
    missing on either side would silently change what HAProxy does in one mode only."""
    haproxy = Path(__file__).resolve().parents[2] / "haproxy"
    conf = (haproxy / "spoe-idgate.conf").read_text()
    registered = {n for line in re.findall(r"register-var-names (.+)", conf) for n in line.split()}
    lua = (haproxy / "idgate-auth.lua").read_text()
    lua_vars = set(re.findall(r'"txn\.idgate\.(\w+)"', lua))
    headers = {
        **HEADER_OF_SLOT,
        "assertion": "x-idgate-assertion",
        "cookie_rewrite": "x-idgate-cookie-rewrite",
        "cookie": "x-idgate-cookie",
        "strip_authorization": "x-idgate-strip-authorization",
    }
    decision = Decision(
        status=302,
        reasons=("r",),
        upstream="app",
        headers=dict.fromkeys(headers.values(), "v"),
        www_authenticate="Bearer",
        location="/x",
        set_cookies=tuple(f"c{i}=v" for i in range(8)),
    )
    sent = set(as_vars(decision_actions(decision))) | set(
        as_vars(decision_actions(Decision(status=200, reasons=("r",), headers=dict.fromkeys(headers.values(), "v"))))
    )
    assert sent <= registered, sorted(sent - registered)
    assert registered - {f"set_cookie_{i}" for i in range(8)} <= lua_vars | {"status"}
    assert set(headers) <= lua_vars
