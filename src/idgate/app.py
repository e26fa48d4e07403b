"""The HTTP face of idgate: ``GET /auth`` (auth_request mode), ``/healthz``, ``/readyz``, ``/metrics``,
``POST /admin/jwks/refresh`` and ``/.idgate/jwks.json``, with the SSO endpoints of :mod:`idgate.sso.routes`
mounted beside them, and the Looker embedding endpoints of :mod:`idgate.looker.routes`.

``/auth`` takes the request facts HAProxy computed from ``X-Idgate-*`` headers (contract in ``haproxy/README.md``;
``X-Idgate-Request-Id`` is HAProxy's request id, logged only)
and answers the decision: 200 + the ``X-Idgate-*`` headers of :data:`idgate.facts.ANSWER_HEADERS`, 401 +
``WWW-Authenticate: Bearer error=...`` (RFC 6750 §3), 403, 400, 302 or 503 (+ ``Retry-After`` when the issuer's
keys cannot be had). Only callers from ``server.trusted_callers`` may ask (others get 403 ``untrusted_caller``):
like uvicorn's ProxyHeadersMiddleware, facts are trusted only from known hops. Both of this adapter's own denies
(``untrusted_caller``, ``missing_facts``) are audited and counted through :meth:`DecisionEngine.refused`.
A repeat allow (same credential, cookies, method, host and path) is answered from the engine's memo of finished
allows (:mod:`idgate.memo`) with the answer it rendered before, audited and counted for this request.

``/healthz`` is 200 while the process serves. ``/readyz`` is 503 (``waiting for keys: NAME, …``) until every
issuer's keys were fetched once, then 200: ``ready``, plus one ``degraded: NAME (…)`` line per issuer whose last
fetch failed. A degraded issuer still verifies with its last good keys, and every replica shares its IdP: taking
replicas out of rotation for an IdP fault would turn a glitch that cached keys ride out into a full outage.

``POST /admin/jwks/refresh[?issuer=NAME]`` (emergency key withdrawal; ``idgate jwks refresh`` calls it) refetches
the keys of every issuer (or NAME) at once, whatever the cooldowns, drops withdrawn keys and every cached
verification of their tokens, and answers JSON ``{"issuers": [{"issuer", "ok", "kids", "withdrawn",
"purged_tokens", "error"}]}``: 200, or 502 when a refetch failed (the last good keys stay), 404 for an unknown NAME.
Only ``server.trusted_callers`` may call it, and never through a proxy: a request carrying ``Forwarded`` or
``X-Forwarded-*`` (HAProxy's frontend adds ``X-Forwarded-For`` to everything it forwards) gets 403. HAProxy only
ever routes ``/.idgate/`` paths to idgate, so the endpoint lives outside them.
``POST /admin/reload`` (``idgate reload``; same callers, same refusal of proxied requests) re-reads the
configuration file (:mod:`idgate.reload`) and answers JSON ``{"applied", "policy", "previous_policy", "problems",
"restart_required"}``: 200 when the new file is in force, 400 when it was refused (the last good one stays).
``/metrics`` (Prometheus text) is served only to ``server.trusted_callers`` (others: 403, logged
``metrics_untrusted_caller``), and not at all (404) when ``server.metrics_bind`` gives it a listener of its own
(:mod:`idgate.runtime` runs that one).
With a shared store (Redis) ``/readyz`` is also 503 until the store was read once (a replica that knows no
revocation refuses every session), and 200 with ``ready (degraded: store …)`` while the store is down afterwards:
every replica shares one Redis, so a 503 would take them all out at once and turn a Redis outage into an outage of
every decision (bearer tokens included), while each replica still refuses the revocations it has seen
(:mod:`idgate.store.redis`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from idgate.assertion import AssertionSigner
from idgate.cache_purge import CachePurger
from idgate.decision import DecisionEngine
from idgate.facts import ANSWER_HEADERS, Decision, RequestFacts, clean_request_id
from idgate.jwks import FetchOutcome, JwksCache
from idgate.looker.routes import Looker, looker_routes
from idgate.memo import memo_key
from idgate.metrics import Metrics
from idgate.peers import Network, is_trusted
from idgate.reload import ReloadResult
from idgate.sso.routes import PREFIX, Sso, sso_routes

log = logging.getLogger("idgate")
FACT_HEADERS = ("x-idgate-method", "x-idgate-host", "x-idgate-path")
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip")
ADMIN_JWKS_REFRESH = "/admin/jwks/refresh"
ADMIN_RELOAD = "/admin/reload"
NO_STORE = {"cache-control": "no-store"}
REQUEST_ID_HEADER = "x-idgate-request-id"
"""HAProxy's request id (``unique-id``), set by ``haproxy/idgate-auth.lua``; only logged, never decided on."""
MODE = "auth_request"
"""This adapter's name in the metrics' ``mode`` label."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Services:
    """What the HTTP face serves from; built by :mod:`idgate.runtime` for one configuration."""

    engine: DecisionEngine
    caches: tuple[JwksCache, ...]
    trusted: tuple[Network, ...]
    sso: Sso | None = None
    assertions: AssertionSigner | None = None
    metrics: Metrics | None = None
    metrics_here: bool = True  # False: /metrics lives on server.metrics_bind, this listener answers 404
    looker: Looker | None = None  # the looker_embed upstreams (/.idgate/looker/*, idgate.looker.routes)
    cache: CachePurger | None = None  # the decision cache in HAProxy: purges and sweeps (idgate.cache_purge)
    # called after POST /admin/jwks/refresh: a worker of `idgate serve --workers N` has every other worker refetch
    # too (idgate.supervisor), so that a withdrawn key is refused by all of them, not by the one that was asked
    peers_refresh: Callable[[], None] | None = None


def facts_from_request(request: Request) -> RequestFacts | None:
    """Request facts from the ``X-Idgate-*`` headers; None when a required fact is missing."""
    h = request.headers
    if any(name not in h for name in FACT_HEADERS):
        return None
    return RequestFacts(
        method=h["x-idgate-method"],
        host=h["x-idgate-host"],
        path=h["x-idgate-path"],
        source=h.get("x-idgate-source", ""),
        query=h.get("x-idgate-query", ""),
        authorization=tuple(h.getlist("authorization")),
        # every Cookie field joined with "; " (RFC 9113 §8.2.3), never only one; HAProxy sends "" for "absent"
        cookie="; ".join(h.getlist("cookie")) or None,
        accept=h.get("accept") or None,
        requested_with=h.get("x-requested-with") or None,
        fetch_mode=h.get("sec-fetch-mode") or None,
        content_type=h.get("content-type") or None,
        request_id=clean_request_id(h.get(REQUEST_ID_HEADER)),
    )


def decision_response(decision: Decision) -> Response:
    """Translate a Decision into the ``/auth`` HTTP answer."""
    headers = _answer_headers(decision)
    response = PlainTextResponse(f"{decision.status} {','.join(decision.reasons)}\n", decision.status, headers)
    for value in decision.set_cookies:
        response.headers.append("set-cookie", value)
    return response


def _kids(kids: frozenset[str | None]) -> list[str | None]:
    return sorted(kids, key=lambda kid: (kid is None, kid or ""))


def refresh_report(name: str, outcome: FetchOutcome) -> dict[str, object]:
    """One issuer's entry in the ``/admin/jwks/refresh`` answer."""
    return {
        "issuer": name,
        "ok": outcome.ok,
        "kids": _kids(outcome.kids),
        "withdrawn": _kids(outcome.withdrawn),
        "purged_tokens": outcome.purged,
        "error": outcome.error,
    }


def not_ready(services: Services) -> str | None:
    """Why ``/readyz`` is 503 (``waiting for keys: NAME, …`` or ``waiting for the redis store: …``), or None when
    the service can decide. The SPOA agent's health checks answer by the same rule (``SpoaAgent(ready=…)``)."""
    waiting = [h.name for h in (cache.health() for cache in services.caches) if not h.ready]
    if waiting:
        return f"waiting for keys: {', '.join(waiting)}"
    if services.sso is not None:
        store = services.sso.store.health()
        if not store.synced:
            return f"waiting for the {store.kind} store: {store.detail}"
    return None


async def _decide(engine: DecisionEngine, facts: RequestFacts) -> Response:
    """The ``/auth`` answer for ``facts``: a memoised allow (:mod:`idgate.memo`, its answer headers kept), audited
    and counted for this request, or a decision (kept in the memo when it may be)."""
    started = time.perf_counter()
    memo = engine.memo
    key = memo_key(MODE, facts.authorization, facts.cookie, facts.method, facts.host, facts.path)
    entry = memo.get(key) if memo.enabled else None
    if entry is not None and isinstance(entry.rendered, tuple):
        engine.replay(entry, source=facts.source, request_id=facts.request_id, seconds=time.perf_counter() - started)
        body, status, headers = entry.rendered
        return PlainTextResponse(body, status, dict(headers))
    generation = memo.generation
    decision = await engine.decide(facts, mode=MODE)
    response = decision_response(decision)
    if decision.allow and memo.enabled:
        rendered = (response.body, response.status_code, tuple(_answer_headers(decision).items()))
        engine.remember(key, facts, decision, rendered, generation=generation, mode=MODE)
    return response


def _answer_headers(decision: Decision) -> dict[str, str]:
    headers = {
        ANSWER_HEADERS["decision"]: "allow" if decision.allow else "deny",
        ANSWER_HEADERS["reason"]: ",".join(decision.reasons),
        "cache-control": "no-store",
    }
    if decision.upstream:
        headers[ANSWER_HEADERS["upstream"]] = decision.upstream
    if decision.allow:
        headers.update((ANSWER_HEADERS[slot], value) for slot, value in decision.identity.items())
    if decision.www_authenticate:
        headers[ANSWER_HEADERS["www_authenticate"]] = decision.www_authenticate
    if decision.location:
        headers[ANSWER_HEADERS["location"]] = decision.location
    if decision.retry_after is not None:
        headers[ANSWER_HEADERS["retry_after"]] = str(decision.retry_after)
    if decision.allow and decision.cache_ttl > 0:  # HAProxy may keep this allow (idgate.cache_entry)
        headers[ANSWER_HEADERS["cache_ttl"]] = str(decision.cache_ttl)
        headers[ANSWER_HEADERS["cache_entry"]] = decision.cache_entry
    return headers


def http_routes(
    get: Callable[[Request], Services], *, reload: Callable[[Request], Awaitable[ReloadResult]] | None = None
) -> list[BaseRoute]:
    """Every HTTP route; ``get`` finds the :class:`Services` of the app serving a request, ``reload`` reloads the
    configuration file of that app (``POST /admin/reload``; None: the route answers 404)."""

    def admin_refused(request: Request, services: Services) -> Response | None:
        """403 unless the caller is in ``server.trusted_callers`` and came through no proxy (logged)."""
        peer = request.client.host if request.client else ""
        proxied = [name for name in PROXY_HEADERS if name in request.headers]
        if not is_trusted(peer, services.trusted) or proxied:
            log.warning(json.dumps({"event": "admin_refused", "peer": peer[:64], "proxied": proxied}))
            return JSONResponse({"error": "forbidden"}, 403, headers=NO_STORE)
        return None

    async def auth(request: Request) -> Response:
        services = get(request)
        peer = request.client.host if request.client else ""
        if not is_trusted(peer, services.trusted):
            log.warning(json.dumps({"event": "untrusted_caller", "peer": peer[:64]}))
            refused = Decision(status=403, reasons=("untrusted_caller",))
            return decision_response(services.engine.refused(refused, source=peer, mode=MODE))
        facts = facts_from_request(request)
        if facts is None:
            refused = Decision(status=400, reasons=("missing_facts",))
            request_id = clean_request_id(request.headers.get(REQUEST_ID_HEADER))
            refused_decision = services.engine.refused(refused, source=peer, request_id=request_id, mode=MODE)
            return decision_response(refused_decision)
        return await _decide(services.engine, facts)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def metrics_endpoint(request: Request) -> Response:
        services = get(request)
        registry = services.metrics
        if registry is None or not services.metrics_here:
            return PlainTextResponse("not found\n", 404)
        peer = request.client.host if request.client else ""
        if not is_trusted(peer, services.trusted):
            log.warning(json.dumps({"event": "metrics_untrusted_caller", "peer": peer[:64]}))
            return PlainTextResponse("forbidden\n", 403, headers={"cache-control": "no-store"})
        return Response(registry.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def readyz(request: Request) -> Response:
        services = get(request)
        waiting = not_ready(services)
        if waiting is not None:
            return PlainTextResponse(f"{waiting}\n", 503)
        health = [cache.health() for cache in services.caches]
        first = "ready"
        if services.sso is not None:
            store = services.sso.store.health()
            if not store.up:
                first = (
                    f"ready (degraded: {store.kind} store down: {store.detail}, {store.pending} revocation(s) pending)"
                )
        lines = [first] + [
            f"degraded: {h.name} (serving {h.keys} key(s) fetched {h.age_seconds or 0:.0f} s ago; "
            f"last fetch failed: {h.last_error})"
            for h in health
            if h.degraded
        ]
        return PlainTextResponse("\n".join(lines) + "\n", headers=NO_STORE)

    async def config_reload(request: Request) -> Response:
        refused = admin_refused(request, get(request))
        if refused is not None:
            return refused
        if reload is None:
            return JSONResponse({"error": "not_found"}, 404, headers=NO_STORE)
        result = await reload(request)
        return JSONResponse(result.as_json(), 200 if result.applied else 400, headers=NO_STORE)

    async def jwks_refresh(request: Request) -> Response:
        services = get(request)
        peer = request.client.host if request.client else ""
        refused = admin_refused(request, services)
        if refused is not None:
            return refused
        name = request.query_params.get("issuer")
        caches = [c for c in services.caches if name is None or c.config.name == name]
        if not caches:
            return JSONResponse({"error": "unknown_issuer", "issuer": (name or "")[:64]}, 404, headers=NO_STORE)
        outcomes = await asyncio.gather(*(cache.refresh_now() for cache in caches))
        if services.cache is not None:  # a withdrawn key's entries are gone from HAProxy before this answers
            await services.cache.settle()
        if services.peers_refresh is not None:
            services.peers_refresh()
        reports = [refresh_report(c.config.name, o) for c, o in zip(caches, outcomes, strict=True)]
        log.warning(json.dumps({"event": "admin_jwks_refresh", "peer": peer[:64], "issuers": reports}))
        status = 200 if all(o.ok for o in outcomes) else 502
        return JSONResponse({"issuers": reports}, status, headers=NO_STORE)

    async def jwks(request: Request) -> Response:
        """``GET /.idgate/jwks.json``: the assertion signer's public keys (404 without assertions configured)."""
        signer = get(request).assertions
        if signer is None:
            return JSONResponse({"error": "not_found"}, 404)
        return JSONResponse(signer.jwks(), headers={"cache-control": "public, max-age=60"})

    return [
        Route("/auth", auth, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route(ADMIN_JWKS_REFRESH, jwks_refresh, methods=["POST"]),
        Route(ADMIN_RELOAD, config_reload, methods=["POST"]),
        *sso_routes(lambda request: get(request).sso),
        *looker_routes(lambda request: get(request).sso, lambda request: get(request).looker),
        Route(f"{PREFIX}/jwks.json", jwks, methods=["GET"]),
    ]
