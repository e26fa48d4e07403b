"""The composition root: every component of one configuration is built here, and nowhere else.

:func:`create_app` returns the ASGI app that ``idgate serve`` runs. Its lifespan builds, in order: one HTTP client
per CA file; the issuers' JWKS caches (fetched in the background until the first success: readiness); the
verified-token cache and the :class:`~idgate.verifier.Verifier`; the browser-login components when ``login`` and
``sessions`` are configured (:class:`~idgate.sso.manager.SessionManager` and the SSO endpoints); the assertion
signer; the metrics registry; the :class:`~idgate.decision.DecisionEngine`; with ``spoa`` configured, the SPOA
agent listening for HAProxy's SPOE; and with ``server.metrics_bind``, the metrics listener (prometheus-client's
exporter, a plain-HTTP server in a daemon thread, reading the same registry). On shutdown it closes them in reverse
order. Like uvicorn's ``Config.load()``,
nothing below this module builds another component.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from prometheus_client import start_http_server
from starlette.applications import Starlette
from starlette.requests import Request

from idgate.app import Services, http_routes
from idgate.assertion import AssertionSigner, split_pem
from idgate.audit import AuditLog
from idgate.authn import Authenticator
from idgate.config import Config
from idgate.decision import DecisionEngine
from idgate.fingerprint import policy_hash
from idgate.jwks import JwksCache
from idgate.metrics import Metrics
from idgate.peers import parse_networks
from idgate.spoe.adapter import (
    MESSAGE,
    REQUIRED_ARGS,
    spoe_deny_actions,
    spoe_handler,
    spoe_quick,
    spoe_untrusted_caller,
)
from idgate.spoe.agent import SpoaAgent
from idgate.sso.cookies import CookieJarSettings, KeyRing, SessionCookies
from idgate.sso.manager import SessionManager
from idgate.sso.oidc import OidcClient
from idgate.sso.routes import Sso
from idgate.store.base import RevocationStore
from idgate.store.memory import MemoryRevocationStore
from idgate.store.redis import RedisRevocationStore
from idgate.tls import server_context
from idgate.token_cache import TokenCache
from idgate.verifier import TrustedIssuer, Verifier

log = logging.getLogger("idgate.runtime")


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


def _store(config: Config) -> RevocationStore:
    """The shared store ``store.kind`` names: in memory (one process) or Redis (replicas)."""
    if config.store.kind == "redis":
        return RedisRevocationStore.from_config(config.store)
    return MemoryRevocationStore()


def _sso(config: Config, caches: tuple[JwksCache, ...], client: httpx.AsyncClient, metrics: Metrics) -> Sso | None:
    """The browser-login components, when ``login`` and ``sessions`` are configured."""
    if config.login is None or config.sessions is None or config.sessions.keys is None:
        return None
    cache = next(c for c in caches if c.config.name == config.login.issuer)
    ring = KeyRing.from_text(config.sessions.keys.get_secret_value())
    trusted = TrustedIssuer(config=cache.config, keys=cache)
    oidc = OidcClient(trusted=trusted, login=config.login, http=client, dev_mode=config.dev_mode)
    name = config.sessions.cookie_name
    store = _store(config)
    cookies = SessionCookies(
        ring=ring, settings=CookieJarSettings(name=name, max_chunks=config.sessions.max_chunks), purpose=b"session"
    )
    login_cookies = SessionCookies(
        ring=ring, settings=CookieJarSettings(name=f"{name}-login", max_chunks=1), purpose=b"login-state"
    )
    manager = SessionManager(
        config=config.sessions,
        cookies=cookies,
        oidc=oidc,
        store=store,
        claims=cache.config.claims,
        ring=ring,
        # a replica waiting for another's refresh gives up well inside the decision budget (keeps the session)
        refresh_wait_seconds=config.server.decision_timeout_seconds / 2,
    )
    return Sso(
        login=config.login,
        oidc=oidc,
        sessions=manager,
        login_cookies=login_cookies,
        ring=ring,
        store=store,
        absolute_timeout_seconds=config.sessions.absolute_timeout_seconds,
        metrics=metrics,
    )


def _installed_version() -> str:
    try:
        return importlib.metadata.version("idgate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _client_for(ca_file: str | None, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    return httpx.AsyncClient(verify=verify, follow_redirects=False, trust_env=False, transport=transport)


async def _warm(cache: JwksCache) -> None:
    """Fetch keys until the first success (readiness), backing off from 0.25 s to 5 s."""
    delay = 0.25
    while not await cache.refresh():
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def _warn_about_trust(config: Config) -> None:
    """One WARNING per issuer whose unverified ``email`` is trusted as an identity (``trust_unverified_email``)."""
    for issuer in config.issuers:
        if issuer.trust_unverified_email:
            log.warning(
                json.dumps(
                    {
                        "event": "config_warning",
                        "warning": "trust_unverified_email",
                        "issuer": issuer.name,
                        "detail": "an email without email_verified: true is used as an identity; safe only if "
                        "this IdP verifies every address and users cannot edit it",
                    }
                )
            )


def _withdrawn(
    purge: Callable[[str, frozenset[str | None]], int] | None, invalidate: Callable[[], None]
) -> Callable[[str, frozenset[str | None]], int]:
    """A JWKS cache's ``on_keys_withdrawn``: ``purge`` (the verified-token cache's, when on), then ``invalidate``."""

    def withdrawn(issuer: str, kids: frozenset[str | None]) -> int:
        purged = purge(issuer, kids) if purge is not None else 0
        invalidate()
        return purged

    return withdrawn


def _services(config: Config, clients: dict[str | None, httpx.AsyncClient]) -> Services:
    """Build every component of ``config`` (no I/O: keys are fetched later, by the lifespan)."""
    _warn_about_trust(config)
    caches = tuple(JwksCache(config=i, client=clients[i.ca_file], dev_mode=config.dev_mode) for i in config.issuers)
    entries = config.server.token_cache_entries
    token_cache = TokenCache(max_entries=entries) if entries else None
    if token_cache is not None:
        for cache in caches:  # a withdrawn key's tokens are refused at once, cached verifications included
            cache.on_keys_withdrawn = lambda issuer, kids: token_cache.purge(issuer=issuer, kids=kids)
    verifier = Verifier(
        issuers={c.config.issuer: TrustedIssuer(config=c.config, keys=c) for c in caches}, cache=token_cache
    )
    policy = policy_hash(config)
    metrics = Metrics(
        routes=(r.name for r in config.routes),
        upstreams=config.upstreams,
        policy=policy,
        version=_installed_version(),
    )
    login_issuer = next((i for i in config.issuers if config.login and i.name == config.login.issuer), None)
    sso = _sso(config, caches, clients[login_issuer.ca_file], metrics) if login_issuer else None
    sessions = sso.sessions if sso else None
    assertions = _assertion_signer(config)
    metrics.watch(tokens=token_cache, caches=caches, assertions=lambda: assertions, sessions=sessions)
    if sso is not None:
        metrics.watch_store(sso.store.health)
    engine = DecisionEngine(
        config=config,
        authenticator=Authenticator(verifier=verifier, sessions=sessions),
        audit=AuditLog(log_allows=config.audit.log_allows, policy=policy),
        assertions=assertions,
        metrics=metrics,
    )
    for cache in caches:  # a withdrawn key changes answers: the memo of finished allows is dropped too
        cache.on_keys_withdrawn = _withdrawn(cache.on_keys_withdrawn, lambda: engine.memo.invalidate())
    metrics.watch_memo(
        lambda: {"hits": engine.memo.hits, "misses": engine.memo.misses, "invalidations": engine.memo.invalidations},
        lambda: len(engine.memo),
    )
    return Services(
        engine=engine,
        caches=caches,
        trusted=parse_networks(config.server.trusted_callers),
        sso=sso,
        assertions=assertions,
        metrics=metrics,
        metrics_here=config.server.metrics_bind is None,
    )


@contextlib.asynccontextmanager
async def _metrics_listener(config: Config, metrics: Metrics | None) -> AsyncIterator[None]:
    """GET /metrics on ``server.metrics_bind`` while the block runs (nothing without it). Raises OSError when
    the address cannot be bound: idgate then refuses to start."""
    address = config.server.metrics_address
    if address is None or metrics is None:
        yield
        return
    httpd, thread = start_http_server(address[1], addr=address[0], registry=metrics.registry)
    try:
        yield
    finally:
        await asyncio.to_thread(httpd.shutdown)  # within serve_forever's 0.5 s poll interval, off the loop
        httpd.server_close()
        await asyncio.to_thread(thread.join, 5.0)


def _agent(config: Config, services: Services) -> SpoaAgent | None:
    """The SPOA agent answering HAProxy's SPOE (None without ``spoa`` in the config)."""
    if config.spoa is None:
        return None
    agent = SpoaAgent(
        handler=spoe_handler(services.engine),
        deny_actions=spoe_deny_actions(services.engine),
        max_in_flight=config.spoa.max_in_flight,
        idle_timeout=config.spoa.idle_timeout_seconds,
        read_timeout=config.spoa.read_timeout_seconds,
        # the engine answers 503 decision_timeout first; this is the agent's last-resort deny
        handler_timeout=config.server.decision_timeout_seconds + 1.0,
        messages={MESSAGE: REQUIRED_ARGS},
        trusted_callers=parse_networks(config.spoa.trusted_callers),
        on_untrusted=spoe_untrusted_caller(services.engine),
        ssl_context=server_context(config.spoa.tls) if config.spoa.tls is not None else None,
        quick=spoe_quick(services.engine),
    )
    if services.metrics is not None:
        services.metrics.watch_spoa(lambda: dataclasses.asdict(agent.stats))
    return agent


def preflight(config: Config) -> list[str]:
    """Build every component of ``config`` once, as the lifespan will, without serving or any network I/O.

    ``idgate check-config`` and ``idgate serve`` run it after :func:`idgate.config_load.load_config`: a component
    that refuses a setting the configuration checks let through is one problem line (exit 1), not a traceback from
    uvicorn's lifespan at startup. Returns the problems, empty when every component was built.
    """

    async def build() -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for ca in {i.ca_file for i in config.issuers}:
                clients[ca] = await stack.enter_async_context(_client_for(ca, None))
            _agent(config, _services(config, clients))

    try:
        asyncio.run(build())
    except Exception as exc:  # the boundary: whatever a component raises is reported, never a traceback
        return [f"the service cannot be built from this configuration: {type(exc).__name__}: {exc}"]
    return []


def create_app(config: Config, *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """Build the ASGI app for ``config``. Components, key caches and HTTP clients live in the lifespan.

    ``transport`` replaces the network for outbound calls to issuers (tests inject ``httpx.MockTransport``).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        clients = {ca: _client_for(ca, transport) for ca in {i.ca_file for i in config.issuers}}
        services = app.state.services = _services(config, clients)
        warmers = [asyncio.create_task(_warm(c), name=f"warm:{c.config.name}") for c in services.caches]
        store = services.sso.store if services.sso is not None else None
        if store is not None:
            await store.start()
        agent = _agent(config, services)
        if agent is not None:
            assert config.spoa is not None
            await agent.start(config.spoa.host, config.spoa.port)
        try:
            async with _metrics_listener(config, services.metrics):
                yield
        finally:
            if agent is not None:
                await agent.close()
            for task in warmers:
                task.cancel()
            await asyncio.gather(*warmers, return_exceptions=True)
            for client in clients.values():
                await client.aclose()
            if store is not None:
                await store.close()

    def services_of(request: Request) -> Services:
        services: Services = request.app.state.services
        return services

    return Starlette(routes=http_routes(services_of), lifespan=lifespan)
