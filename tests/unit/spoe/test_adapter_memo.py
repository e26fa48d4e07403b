"""The SPOE adapter's memo path: a repeat request is answered by ``quick`` with the handler's very bytes, audited
and counted once per request with its own request id, and dropped when the memo is invalidated."""

from __future__ import annotations

import ipaddress
import json
import logging
import time

import httpx
import pytest
from fake_issuer import ISS, config, idp, token

from idgate.audit import AuditLog
from idgate.authn import Authenticator
from idgate.decision import DecisionEngine
from idgate.jwks import JwksCache
from idgate.memo import DecisionMemo
from idgate.metrics import Metrics
from idgate.spoe.adapter import spoe_handler, spoe_quick
from idgate.spoe.spop import InvalidString, Value, encode_actions
from idgate.verifier import TrustedIssuer, Verifier

BIG = 16_000


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


def build() -> tuple[DecisionEngine, Lines, Metrics]:
    cfg = config()
    cache = JwksCache(config=cfg.issuers[0], client=httpx.AsyncClient(transport=idp()))
    verifier = Verifier(issuers={ISS: TrustedIssuer(config=cfg.issuers[0], keys=cache)})
    logger = logging.getLogger(f"test.memo.audit.{time.monotonic_ns()}")
    lines = Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    metrics = Metrics(routes=(r.name for r in cfg.routes), upstreams=cfg.upstreams, policy="p", version="v")
    engine = DecisionEngine(
        config=cfg, authenticator=Authenticator(verifier=verifier), audit=AuditLog(logger=logger), metrics=metrics
    )
    return engine, lines, metrics


def args(tok: str, *, path: str = "/app", request_id: str = "r1", **extra: Value) -> dict[str, Value]:
    return {
        "method": "GET",
        "host": "gw.test",
        "path": path,
        "src": ipaddress.ip_address("192.0.2.9"),
        "authorization": f"Bearer {tok}",
        "authorization_count": 1,
        "cookie": None,
        "request_id": request_id,
    } | extra


def decisions(metrics: Metrics) -> float:
    return sum(
        s.value
        for m in metrics.registry.collect()
        if m.name == "idgate_decisions"
        for s in m.samples
        if s.name == "idgate_decisions_total"
    )


@pytest.mark.anyio
async def test_a_repeat_is_answered_with_the_handlers_bytes_and_audited_with_its_own_request_id() -> None:
    engine, lines, metrics = build()
    handle, quick = spoe_handler(engine), spoe_quick(engine)
    tok = token()
    assert quick("idgate-check", args(tok), BIG) is None  # nothing decided yet
    first = encode_actions(await handle("idgate-check", args(tok, request_id="r1")))
    second = quick("idgate-check", args(tok, request_id="r2", src=ipaddress.ip_address("192.0.2.10")), BIG)
    assert second == first
    assert [line["request_id"] for line in lines.lines] == ["r1", "r2"]
    one, two = lines.lines
    assert two["source"] == "192.0.2.10" and one["source"] == "192.0.2.9"
    same = ("allow", "status", "reasons", "route", "upstream", "iss", "sub", "user", "email", "roles", "path")
    assert {k: one[k] for k in same} == {k: two[k] for k in same} and two["allow"] is True
    assert decisions(metrics) == 2  # one count per request, hit or not
    assert engine.memo.hits == 1


@pytest.mark.anyio
async def test_anything_the_answer_depends_on_misses_and_invalidation_drops_it() -> None:
    engine, _, _ = build()
    handle, quick = spoe_handler(engine), spoe_quick(engine)
    tok = token()
    await handle("idgate-check", args(tok))
    assert quick("idgate-check", args(tok), BIG) is not None
    for changed in (
        args(tok, path="/app/x"),
        args(tok, host="other.test"),
        args(tok, method="POST"),
        args(tok, cookie="a=1"),
        args(tok, authorization_count=2),
        args(token(sub="bob")),
        args(tok, path=InvalidString(b"/\xff")),
    ):
        assert quick("idgate-check", changed, BIG) is None
    assert quick("other-message", args(tok), BIG) is None
    assert quick("idgate-check", args(tok), 10) is None  # would not fit the frame: the handler answers
    engine.memo.invalidate()
    assert quick("idgate-check", args(tok), BIG) is None


@pytest.mark.anyio
async def test_a_deny_is_never_memoised_and_an_expired_token_is_not_served() -> None:
    engine, _, _ = build()
    handle, quick = spoe_handler(engine), spoe_quick(engine)
    denied = token()  # staff, not ops: 403 on /admin
    await handle("idgate-check", args(denied, path="/admin"))
    assert quick("idgate-check", args(denied, path="/admin"), BIG) is None and len(engine.memo) == 0
    clock = [time.time()]
    engine.memo = DecisionMemo(max_entries=10, max_ttl_seconds=30, clock=lambda: clock[0])
    exp = int(clock[0]) + 10
    short = token(exp=exp)
    await handle("idgate-check", args(short))
    assert quick("idgate-check", args(short), BIG) is not None
    clock[0] = exp
    assert quick("idgate-check", args(short), BIG) is None  # never at or past exp
