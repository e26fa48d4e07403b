"""The HTTP face of idgate: ``GET /auth`` (auth_request mode), ``GET /healthz``, ``GET /readyz``.

``/auth`` takes the request facts HAProxy computed from ``X-Idgate-*`` headers (contract in ``haproxy/README.md``)
and answers the decision: 200 + ``X-Idgate-*`` identity headers, 401 + ``WWW-Authenticate: Bearer error=...``
(RFC 6750 §3), 403, 400, or 503. Only callers from ``server.trusted_callers`` may ask (others get 403
``untrusted_caller``): like uvicorn's ProxyHeadersMiddleware, facts are trusted only from known hops.
``/healthz`` is 200 while the process serves; ``/readyz`` is 200 once the config is loaded and every issuer's keys
were fetched at least once, else 503 listing the issuers still waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from idgate.audit import AuditLog
from idgate.config import Config
from idgate.decision import Decision, DecisionEngine, RequestFacts
from idgate.jwks import JwksCache
from idgate.verifier import TrustedIssuer, Verifier

log = logging.getLogger("idgate")
FACT_HEADERS = ("x-idgate-method", "x-idgate-host", "x-idgate-path")


@dataclass(frozen=True, kw_only=True, slots=True)
class Runtime:
    """Everything the app holds while serving one configuration."""

    config: Config
    engine: DecisionEngine
    caches: tuple[JwksCache, ...]
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _client_for(ca_file: str | None, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    return httpx.AsyncClient(verify=verify, follow_redirects=False, trust_env=False, transport=transport)


async def _warm(cache: JwksCache) -> None:
    """Fetch keys until the first success (readiness), backing off from 0.25 s to 5 s."""
    delay = 0.25
    while not await cache.refresh():
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


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
        authorization=tuple(h.getlist("authorization")),
        cookie=h.get("cookie") or None,  # HAProxy sends an empty value for "absent"
        accept=h.get("accept") or None,
    )


def decision_response(decision: Decision) -> Response:
    """Translate a Decision into the ``/auth`` HTTP answer."""
    headers = {
        "x-idgate-decision": "allow" if decision.allow else "deny",
        "x-idgate-reason": ",".join(decision.reasons),
        "cache-control": "no-store",
    }
    if decision.upstream:
        headers["x-idgate-upstream"] = decision.upstream
    if decision.allow:
        headers.update(decision.headers)
    if decision.www_authenticate:
        headers["www-authenticate"] = decision.www_authenticate
    return PlainTextResponse(f"{decision.status} {','.join(decision.reasons)}\n", decision.status, headers)


def create_app(config: Config, *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """Build the ASGI app for ``config``. Key caches and HTTP clients live in the lifespan.

    ``transport`` replaces the network for outbound calls to issuers (tests inject ``httpx.MockTransport``).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        clients = {ca: _client_for(ca, transport) for ca in {i.ca_file for i in config.issuers}}
        caches = tuple(JwksCache(config=i, client=clients[i.ca_file], dev_mode=config.dev_mode) for i in config.issuers)
        verifier = Verifier(issuers={c.config.issuer: TrustedIssuer(config=c.config, keys=c) for c in caches})
        audit = AuditLog(log_allows=config.audit.log_allows)
        app.state.runtime = Runtime(
            config=config,
            engine=DecisionEngine(config=config, verifier=verifier, audit=audit),
            caches=caches,
            trusted=tuple(ipaddress.ip_network(n, strict=False) for n in config.server.trusted_callers),
        )
        warmers = [asyncio.create_task(_warm(c), name=f"warm:{c.config.name}") for c in caches]
        try:
            yield
        finally:
            for task in warmers:
                task.cancel()
            await asyncio.gather(*warmers, return_exceptions=True)
            for client in clients.values():
                await client.aclose()

    async def auth(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        peer = request.client.host if request.client else ""
        try:
            trusted = any(ipaddress.ip_address(peer) in net for net in runtime.trusted)
        except ValueError:
            trusted = False
        if not trusted:
            log.warning(json.dumps({"event": "untrusted_caller", "peer": peer[:64]}))
            return decision_response(Decision(status=403, reasons=("untrusted_caller",)))
        facts = facts_from_request(request)
        if facts is None:
            return decision_response(Decision(status=400, reasons=("missing_facts",)))
        return decision_response(await runtime.engine.decide(facts))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        waiting = [c.config.name for c in runtime.caches if not c.ready]
        if waiting:
            return PlainTextResponse(f"waiting for keys: {', '.join(waiting)}\n", 503)
        return PlainTextResponse("ready\n")

    return Starlette(
        routes=[
            Route("/auth", auth, methods=["GET", "HEAD"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
        ],
        lifespan=lifespan,
    )
