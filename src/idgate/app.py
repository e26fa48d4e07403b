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
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from idgate.assertion import AssertionSigner, split_pem
from idgate.audit import AuditLog
from idgate.config import Config
from idgate.cookies import CookieJarSettings, KeyRing, SessionCookies
from idgate.decision import Decision, DecisionEngine, RequestFacts
from idgate.jwks import JwksCache
from idgate.metrics import Metrics
from idgate.oidc import OidcClient
from idgate.session import MemoryRevocationStore
from idgate.spoa import SpoaAgent
from idgate.spoe import MESSAGE, REQUIRED_ARGS, spoe_handler
from idgate.sso import SessionManager
from idgate.sso_routes import Sso, jwks_route, sso_routes
from idgate.token_cache import TokenCache
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
    sso: Sso | None = None
    assertions: AssertionSigner | None = None
    metrics: Metrics | None = None


def _assertion_signer(config: Config) -> AssertionSigner | None:
    if config.assertion is None:
        return None
    pems: tuple[bytes, ...] = ()
    if config.assertion.keys_file:
        pems = tuple(split_pem(Path(config.assertion.keys_file).read_bytes()))
    return AssertionSigner(
        issuer=config.assertion.issuer,
        lifetime_seconds=config.assertion.lifetime_seconds,
        reuse_margin_seconds=max(5, config.assertion.lifetime_seconds // 4),
        algorithm=config.assertion.algorithm,
        private_keys_pem=pems,
    )


def _sso(config: Config, caches: tuple[JwksCache, ...], client: httpx.AsyncClient) -> Sso | None:
    """The browser-login components, when ``login`` and ``sessions`` are configured."""
    if config.login is None or config.sessions is None or config.sessions.keys is None:
        return None
    cache = next(c for c in caches if c.config.name == config.login.issuer)
    ring = KeyRing.from_text(config.sessions.keys.get_secret_value())
    trusted = TrustedIssuer(config=cache.config, keys=cache)
    oidc = OidcClient(trusted=trusted, login=config.login, http=client, dev_mode=config.dev_mode)
    name = config.sessions.cookie_name
    store = MemoryRevocationStore()
    cookies = SessionCookies(
        ring=ring, settings=CookieJarSettings(name=name, max_chunks=config.sessions.max_chunks), purpose=b"session"
    )
    login_cookies = SessionCookies(
        ring=ring, settings=CookieJarSettings(name=f"{name}-login", max_chunks=1), purpose=b"login-state"
    )
    manager = SessionManager(
        config=config.sessions, cookies=cookies, oidc=oidc, store=store, claims=cache.config.claims
    )
    return Sso(
        login=config.login,
        oidc=oidc,
        sessions=manager,
        login_cookies=login_cookies,
        ring=ring,
        store=store,
        absolute_timeout_seconds=config.sessions.absolute_timeout_seconds,
    )


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
        query=h.get("x-idgate-query", ""),
        authorization=tuple(h.getlist("authorization")),
        cookie=h.get("cookie") or None,  # HAProxy sends an empty value for "absent"
        accept=h.get("accept") or None,
        requested_with=h.get("x-requested-with") or None,
        fetch_mode=h.get("sec-fetch-mode") or None,
        content_type=h.get("content-type") or None,
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
    if decision.location:
        headers["location"] = decision.location
    response = PlainTextResponse(f"{decision.status} {','.join(decision.reasons)}\n", decision.status, headers)
    for value in decision.set_cookies:
        response.headers.append("set-cookie", value)
    return response


def create_app(config: Config, *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """Build the ASGI app for ``config``. Key caches and HTTP clients live in the lifespan.

    ``transport`` replaces the network for outbound calls to issuers (tests inject ``httpx.MockTransport``).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        clients = {ca: _client_for(ca, transport) for ca in {i.ca_file for i in config.issuers}}
        caches = tuple(JwksCache(config=i, client=clients[i.ca_file], dev_mode=config.dev_mode) for i in config.issuers)
        entries = config.server.token_cache_entries
        token_cache = TokenCache(max_entries=entries) if entries else None
        for cache in caches:
            cache.on_keys_removed = token_cache.clear if token_cache is not None else None
        verifier = Verifier(
            issuers={c.config.issuer: TrustedIssuer(config=c.config, keys=c) for c in caches}, cache=token_cache
        )
        audit = AuditLog(log_allows=config.audit.log_allows)
        login_issuer = next((i for i in config.issuers if config.login and i.name == config.login.issuer), None)
        sso = _sso(config, caches, clients[login_issuer.ca_file]) if login_issuer else None
        assertions = _assertion_signer(config)
        metrics = Metrics()
        metrics.watch(
            tokens=token_cache, caches=caches, assertions=lambda: assertions, sessions=sso.sessions if sso else None
        )
        app.state.runtime = Runtime(
            config=config,
            engine=DecisionEngine(
                config=config,
                verifier=verifier,
                audit=audit,
                sessions=sso.sessions if sso else None,
                assertions=assertions,
                metrics=metrics,
            ),
            caches=caches,
            trusted=tuple(ipaddress.ip_network(n, strict=False) for n in config.server.trusted_callers),
            sso=sso,
            assertions=assertions,
            metrics=metrics,
        )
        warmers = [asyncio.create_task(_warm(c), name=f"warm:{c.config.name}") for c in caches]
        agent: SpoaAgent | None = None
        if config.spoa is not None:
            agent = SpoaAgent(
                handler=spoe_handler(app.state.runtime.engine),
                max_in_flight=config.spoa.max_in_flight,
                idle_timeout=config.spoa.idle_timeout_seconds,
                read_timeout=config.spoa.read_timeout_seconds,
                # the engine answers 503 decision_timeout first; this is the agent's last-resort deny
                handler_timeout=config.server.decision_timeout_seconds + 1.0,
                messages={MESSAGE: REQUIRED_ARGS},
            )
            await agent.start(config.spoa.host, config.spoa.port)
        try:
            yield
        finally:
            if agent is not None:
                await agent.close()
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

    async def metrics_endpoint(request: Request) -> Response:
        registry = runtime_of(request).metrics
        if registry is None:
            return PlainTextResponse("no metrics\n", 404)
        return Response(registry.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def readyz(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        waiting = [c.config.name for c in runtime.caches if not c.ready]
        if waiting:
            return PlainTextResponse(f"waiting for keys: {', '.join(waiting)}\n", 503)
        return PlainTextResponse("ready\n")

    def runtime_of(request: Request) -> Runtime:
        runtime: Runtime = request.app.state.runtime
        return runtime

    return Starlette(
        routes=[
            Route("/auth", auth, methods=["GET", "HEAD"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *sso_routes(lambda request: runtime_of(request).sso),
            jwks_route(lambda request: runtime_of(request).assertions),
        ],
        lifespan=lifespan,
    )
