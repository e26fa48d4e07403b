"""The HTTP face of idgate: ``GET /auth`` (auth_request mode), ``/healthz``, ``/readyz``, ``/metrics`` and
``/.idgate/jwks.json``, with the SSO endpoints of :mod:`idgate.sso.routes` mounted beside them.

``/auth`` takes the request facts HAProxy computed from ``X-Idgate-*`` headers (contract in ``haproxy/README.md``)
and answers the decision: 200 + the ``X-Idgate-*`` headers of :data:`idgate.facts.ANSWER_HEADERS`, 401 +
``WWW-Authenticate: Bearer error=...`` (RFC 6750 §3), 403, 400, 302 or 503. Only callers from
``server.trusted_callers`` may ask (others get 403 ``untrusted_caller``): like uvicorn's ProxyHeadersMiddleware,
facts are trusted only from known hops. Both of this adapter's own denies (``untrusted_caller``,
``missing_facts``) are audited and counted through :meth:`DecisionEngine.refused`.
``/healthz`` is 200 while the process serves; ``/readyz`` is 200 once the config is loaded and every issuer's keys
were fetched at least once, else 503 listing the issuers still waiting. With a shared store (Redis) it is also 503
until the store was read once (a replica that knows no revocation refuses every session), and 200 with the body
``ready (degraded: store …)`` while the store is down afterwards: every replica shares one Redis, so a 503 would
take them all out at once and turn a Redis outage into an outage of every decision (bearer tokens included), while
each replica still refuses the revocations it has seen (:mod:`idgate.store.redis`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from idgate.assertion import AssertionSigner
from idgate.decision import DecisionEngine
from idgate.facts import ANSWER_HEADERS, Decision, RequestFacts
from idgate.jwks import JwksCache
from idgate.metrics import Metrics
from idgate.sso.routes import PREFIX, Sso, sso_routes

log = logging.getLogger("idgate")
FACT_HEADERS = ("x-idgate-method", "x-idgate-host", "x-idgate-path")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, kw_only=True, slots=True)
class Services:
    """What the HTTP face serves from; built by :mod:`idgate.runtime` for one configuration."""

    engine: DecisionEngine
    caches: tuple[JwksCache, ...]
    trusted: tuple[Network, ...]
    sso: Sso | None = None
    assertions: AssertionSigner | None = None
    metrics: Metrics | None = None


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
    )


def decision_response(decision: Decision) -> Response:
    """Translate a Decision into the ``/auth`` HTTP answer."""
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
    response = PlainTextResponse(f"{decision.status} {','.join(decision.reasons)}\n", decision.status, headers)
    for value in decision.set_cookies:
        response.headers.append("set-cookie", value)
    return response


def _trusted(peer: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in networks)


def http_routes(get: Callable[[Request], Services]) -> list[BaseRoute]:
    """Every HTTP route; ``get`` finds the :class:`Services` of the app serving a request."""

    async def auth(request: Request) -> Response:
        services = get(request)
        peer = request.client.host if request.client else ""
        if not _trusted(peer, services.trusted):
            log.warning(json.dumps({"event": "untrusted_caller", "peer": peer[:64]}))
            refused = Decision(status=403, reasons=("untrusted_caller",))
            return decision_response(services.engine.refused(refused, source=peer))
        facts = facts_from_request(request)
        if facts is None:
            refused = Decision(status=400, reasons=("missing_facts",))
            return decision_response(services.engine.refused(refused, source=peer))
        return decision_response(await services.engine.decide(facts))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def metrics_endpoint(request: Request) -> Response:
        registry = get(request).metrics
        if registry is None:
            return PlainTextResponse("no metrics\n", 404)
        return Response(registry.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def readyz(request: Request) -> Response:
        services = get(request)
        waiting = [c.config.name for c in services.caches if not c.ready]
        if waiting:
            return PlainTextResponse(f"waiting for keys: {', '.join(waiting)}\n", 503)
        if services.sso is not None:
            health = services.sso.store.health()
            if not health.synced:
                return PlainTextResponse(f"waiting for the {health.kind} store: {health.detail}\n", 503)
            if not health.up:
                detail = f"{health.detail}, {health.pending} revocation(s) pending"
                return PlainTextResponse(f"ready (degraded: {health.kind} store down: {detail})\n")
        return PlainTextResponse("ready\n")

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
        *sso_routes(lambda request: get(request).sso),
        Route(f"{PREFIX}/jwks.json", jwks, methods=["GET"]),
    ]
