"""SPOE mode: translate the ``idgate-check`` SPOP message into :class:`RequestFacts`, and a :class:`Decision` into
set-var actions. The decision itself is :meth:`DecisionEngine.decide`, exactly as for the HTTP ``/auth`` endpoint.

The message (``haproxy/spoe-idgate.conf``) carries: ``method``, ``host``, ``path`` (HAProxy's normalised path),
``query``, ``src`` (IPv4/IPv6), ``authorization`` (the last copy) and ``authorization_count``, ``cookie``,
``accept``, ``requested_with``, ``fetch_mode``, ``content_type``, ``request_id`` (HAProxy's ``unique-id``, only
logged: :func:`idgate.facts.clean_request_id`); absent headers arrive as NULL.
The answer sets, in scope ``txn`` with prefix ``idgate`` (HAProxy: ``txn.idgate.<name>``): ``status``,
``decision`` (``allow``/``deny``), ``reason``, ``upstream``, the identity slots (``user`` … ``issuer``,
``assertion``), ``www_authenticate``, ``location``, ``retry_after`` (a 503's seconds), ``cookie_rewrite`` /
``cookie``, ``strip_authorization``, ``cache_ttl`` / ``cache_entry`` (a cacheable allow: :mod:`idgate.cache_entry`)
and ``set_cookie_0..7`` — the variables the auth_request mode's Lua action sets
from the ``/auth`` answer.
The variable names are :data:`idgate.facts.ANSWER_VARIABLES`. A value that is not valid UTF-8 is answered 400
``invalid_encoding``; every other failure path (unknown message, missing or duplicated argument, handler error or
timeout) is the agent's deny (:func:`spoe_deny_actions`), which HAProxy turns into 503. Both are audited and counted
through :meth:`DecisionEngine.refused`, like every decision.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence

from idgate.decision import DecisionEngine
from idgate.facts import MAX_SET_COOKIES, Decision, RequestFacts, clean_request_id
from idgate.memo import memo_key
from idgate.spoe.agent import DenyActions, Handler, QuickHandler, default_deny_actions
from idgate.spoe.spop import Action, InvalidString, Scope, SetVar, Value, encode_actions

MESSAGE = "idgate-check"
MODE = "spoe"
"""This adapter's name in the metrics' ``mode`` label."""
REQUIRED_ARGS = ("method", "host", "path", "src")
_TEXT = (str, type(None))
"""An argument an allow depends on (method, host, path, authorization, cookie: :mod:`idgate.memo`) is one of these;
the other arguments only shape refusals or are only logged."""
_TEXT_ARGS = (
    "method",
    "host",
    "path",
    "query",
    "authorization",
    "cookie",
    "accept",
    "requested_with",
    "fetch_mode",
    "content_type",
)


def _var(name: str, value: str) -> SetVar:
    return SetVar(scope=Scope.TRANSACTION, name=name, value=value)


def decision_actions(decision: Decision) -> list[Action]:
    """The set-var actions for ``decision`` (identity only on an allow)."""
    actions: list[Action] = [
        _var("status", str(decision.status)),
        _var("decision", "allow" if decision.allow else "deny"),
        _var("reason", ",".join(decision.reasons)),
    ]
    if decision.upstream:
        actions.append(_var("upstream", decision.upstream))
    if decision.allow:
        for slot, value in decision.identity.items():
            if value:  # an empty value is "absent", as in the auth_request mode's Lua action
                actions.append(_var(slot, value))
    if decision.www_authenticate:
        actions.append(_var("www_authenticate", decision.www_authenticate))
    if decision.location:
        actions.append(_var("location", decision.location))
    if decision.retry_after is not None:
        actions.append(_var("retry_after", str(decision.retry_after)))
    if decision.allow and decision.cache_ttl > 0:  # HAProxy may keep this allow (idgate.cache_entry)
        actions.append(_var("cache_ttl", str(decision.cache_ttl)))
        actions.append(_var("cache_entry", decision.cache_entry))
    for index, cookie in enumerate(decision.set_cookies[:MAX_SET_COOKIES]):
        actions.append(_var(f"set_cookie_{index}", cookie))
    return actions


def facts_from_args(args: Mapping[str, Value]) -> RequestFacts | None:
    """Request facts from the message's arguments; None when a text argument is not valid UTF-8."""
    text: dict[str, str | None] = {}
    for name in _TEXT_ARGS:
        value = args.get(name)
        if isinstance(value, InvalidString):
            return None
        text[name] = value if isinstance(value, str) and value else None
    source = _source(args.get("src"))
    count = args.get("authorization_count")
    copies = count if isinstance(count, int) and not isinstance(count, bool) else 0
    authorization: tuple[str, ...] = ()
    if text["authorization"] is not None:
        authorization = (text["authorization"],) * max(1, min(copies, 2))  # two copies are enough to refuse
    return RequestFacts(
        method=text["method"] or "",
        host=text["host"] or "",
        path=text["path"] or "",
        query=text["query"] or "",
        source=source,
        authorization=authorization,
        cookie=text["cookie"],
        accept=text["accept"],
        requested_with=text["requested_with"],
        fetch_mode=text["fetch_mode"],
        content_type=text["content_type"],
        request_id=_request_id(args),
    )


def _memo_key(args: Mapping[str, Value]) -> bytes | None:
    """:func:`idgate.memo.memo_key` of the fields as :func:`facts_from_args` reads them; None when one of them is
    neither a string nor absent (``InvalidString``: the handler refuses it)."""
    get = args.get
    method, host, path, authorization, cookie = (
        get("method"),
        get("host"),
        get("path"),
        get("authorization"),
        get("cookie"),
    )
    if not (
        isinstance(method, _TEXT)
        and isinstance(host, _TEXT)
        and isinstance(path, _TEXT)
        and isinstance(authorization, _TEXT)
        and isinstance(cookie, _TEXT)
    ):
        return None
    copies: tuple[str, ...] = ()
    if authorization:
        count = get("authorization_count")
        number = count if isinstance(count, int) and not isinstance(count, bool) else 0
        copies = (authorization,) * max(1, min(number, 2))
    return memo_key(MODE, copies, cookie or None, method or "", host or "", path or "")


def _request_id(args: Mapping[str, Value]) -> str:
    value = args.get("request_id")
    return clean_request_id(value) if isinstance(value, str) else ""


def _source(src: Value | None) -> str:
    return str(src) if isinstance(src, ipaddress.IPv4Address | ipaddress.IPv6Address | str) else ""


def spoe_handler(engine: DecisionEngine) -> Handler:
    """The agent's handler: message → facts → ``engine.decide`` → actions."""

    async def handle(message: str, args: Mapping[str, Value]) -> Sequence[Action]:
        facts = facts_from_args(args)
        if facts is None:
            refused = Decision(status=400, reasons=("invalid_encoding",))
            source, request_id = _source(args.get("src")), _request_id(args)
            return decision_actions(engine.refused(refused, source=source, request_id=request_id, mode=MODE))
        memo = engine.memo
        generation = memo.generation
        decision = await engine.decide(facts, mode=MODE)
        actions = decision_actions(decision)
        if decision.allow and memo.enabled:
            key = _memo_key(args)
            if key is not None:
                engine.remember(key, facts, decision, encode_actions(actions), generation=generation, mode=MODE)
        return actions

    return handle


def spoe_quick(engine: DecisionEngine) -> QuickHandler:
    """The agent's ``quick``: a memoised allow for this request (:mod:`idgate.memo`), audited and counted like a
    decision, as its encoded actions; None on a miss (the handler then decides)."""

    def quick(message: str, args: Mapping[str, Value], max_bytes: int) -> bytes | None:
        started = time.perf_counter()
        if message != MESSAGE:
            return None
        key = _memo_key(args)
        if key is None:
            return None
        entry = engine.memo.get(key)
        if entry is None or not isinstance(entry.rendered, bytes) or len(entry.rendered) > max_bytes:
            return None
        source, request_id = _source(args.get("src")), _request_id(args)
        engine.replay(entry, source=source, request_id=request_id, seconds=time.perf_counter() - started)
        return entry.rendered

    return quick


def spoe_deny_actions(engine: DecisionEngine) -> DenyActions:
    """The agent's last-resort deny (unknown message, missing argument, handler error or timeout): audited and
    counted as a 503 with the agent's reason, answered with :func:`~idgate.spoe.agent.default_deny_actions`."""

    def deny(reason: str) -> Sequence[Action]:
        engine.refused(Decision(status=503, reasons=(reason,)), mode=MODE)
        return default_deny_actions(reason)

    return deny


def spoe_untrusted_caller(engine: DecisionEngine) -> Callable[[str], None]:
    """The agent's ``on_untrusted(peer)``: a peer outside ``spoa.trusted_callers`` was closed at accept; audited and
    counted like ``/auth``'s 403 ``untrusted_caller``."""

    def untrusted(peer: str) -> None:
        engine.refused(Decision(status=403, reasons=("untrusted_caller",)), source=peer, mode=MODE)

    return untrusted
