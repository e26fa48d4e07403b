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
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import start_http_server
from starlette.applications import Starlette
from starlette.requests import Request

from idgate.app import Services, http_routes, not_ready, refresh_report
from idgate.assertion import AssertionSigner, split_pem
from idgate.assertion_ring import RingState
from idgate.assertion_store import RedisAssertionRing, RingFollower, first_ring
from idgate.audit import AuditLog
from idgate.authn import Authenticator
from idgate.cache_purge import COMMAND_TIMEOUT_SECONDS, CachePurger
from idgate.config import AssertionConfig, Config
from idgate.decision import DecisionEngine, cache_active
from idgate.fingerprint import policy_hash
from idgate.jwks import JwksCache, Kid
from idgate.looker.cookieless import LookerApi
from idgate.looker.routes import Looker, LookerUpstream
from idgate.metrics import Metrics
from idgate.metrics_workers import PUBLISH_INTERVAL_SECONDS, worker_registry
from idgate.peers import parse_networks
from idgate.policy import Policy
from idgate.reload import Reloader, ReloadResult
from idgate.runtime_api import RuntimeApi
from idgate.spoe.adapter import (
    MESSAGE,
    REQUIRED_ARGS,
    spoe_deny_actions,
    spoe_handler,
    spoe_quick,
    spoe_untrusted_caller,
)
from idgate.spoe.agent import DenyActions, Handler, QuickHandler, SpoaAgent
from idgate.spoe.spop import Action, Value
from idgate.sso.claim_sources import claim_sources, policy_groups
from idgate.sso.cookies import CookieJarSettings, KeyRing, SessionCookies
from idgate.sso.manager import SessionManager
from idgate.sso.oidc import OidcClient
from idgate.sso.routes import Sso
from idgate.store.base import RevocationStore
from idgate.store.memory import MemoryRevocationStore
from idgate.store.redis import RedisRevocationStore, client_from_config
from idgate.supervisor import WorkerContext
from idgate.tls import server_context
from idgate.token_cache import TokenCache
from idgate.verifier import TrustedIssuer, Verifier

log = logging.getLogger("idgate.runtime")
RELOAD_KEYS_WAIT_SECONDS = 5.0
"""A reload that adds or changes an issuer waits up to this long for its first JWKS fetch before the swap."""


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


def _sso(
    config: Config,
    caches: tuple[JwksCache, ...],
    clients: dict[str | None, httpx.AsyncClient],
    metrics: Metrics,
    shared: _Shared,
) -> Sso | None:
    """The browser-login components, when ``login`` and ``sessions`` are configured: one OIDC client per login IdP
    (``login.issuer`` or ``login.issuers``), each with its issuer's HTTP client (CA) and keys; with the decision
    cache's purger (``shared.purger``), every revocation also purges HAProxy's cache (written here, or read from the
    shared store's log). The store is ``shared``'s, made on first need and kept across reloads."""
    if config.login is None or config.sessions is None or config.sessions.keys is None:
        return None
    login = config.login
    by_name = {c.config.name: c for c in caches}
    trusted = {n: TrustedIssuer(config=by_name[n].config, keys=by_name[n]) for n in login.issuer_names}
    idps = tuple(
        OidcClient(
            trusted=trusted[n],
            login=login,
            http=clients[by_name[n].config.ca_file],
            dev_mode=config.dev_mode,
        )
        for n in login.issuer_names
    )
    named = policy_groups(config)
    sources = {
        c.issuer: claim_sources(trusted[c.name], c, clients[by_name[c.name].config.ca_file], policy_groups=named)
        for c in idps
    }
    oidc, cache = idps[0], by_name[login.issuer_names[0]]
    ring = KeyRing.from_text(config.sessions.keys.get_secret_value())
    name = config.sessions.cookie_name
    if shared.store is None:
        store = _store(config)
        metrics.watch_store(store.health)
        if shared.purger is not None:
            if isinstance(store, RedisRevocationStore):
                store.on_remote_revoke = shared.purger.revoked
            store = shared.purger.watching(store)
        shared.store = store
    store = shared.store
    cookies = SessionCookies(
        ring=ring, settings=CookieJarSettings(name=name, max_chunks=config.sessions.max_chunks), purpose=b"session"
    )
    login_cookies = SessionCookies(
        ring=ring, settings=CookieJarSettings(name=f"{name}-login", max_chunks=1), purpose=b"login-state"
    )
    manager = SessionManager(
        sources=sources[oidc.issuer],
        sources_by_issuer=sources if len(idps) > 1 else None,
        config=config.sessions,
        cookies=cookies,
        oidc=oidc,
        store=store,
        claims=cache.config.claims,
        ring=ring,
        idps={c.issuer: (c, by_name[c.name].config.claims) for c in idps},
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
        clients=idps,
    )


def _looker(config: Config) -> Looker | None:
    """The ``looker_embed`` upstreams (None without any): their Looker blocks and API clients."""
    upstreams = {}
    for name, upstream in config.upstreams.items():
        looker = upstream.looker
        if looker is None:
            continue
        api = None
        if looker.api_url is not None and looker.client_id is not None and looker.client_secret is not None:
            api = LookerApi(
                api_url=looker.api_url,
                client_id=looker.client_id,
                client_secret=looker.client_secret.get_secret_value(),
                timeout_seconds=looker.api_timeout_seconds,
                ca_file=looker.ca_file,
            )
        upstreams[name] = LookerUpstream(name=name, upstream=upstream, config=looker, api=api)
    return Looker(upstreams=upstreams, policy=Policy(config=config)) if upstreams else None


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


@dataclass(frozen=True, kw_only=True, slots=True)
class Generation:
    """Every component of one configuration, swapped in whole by a reload (:class:`idgate.reload.Reloader`).

    ``services``: what the HTTP face serves from; ``spoe_*``: the SPOA agent's handler, last-resort deny and
    untrusted-peer hook bound to this generation's engine; ``assertion_source``: the ``assertion`` section and the
    bytes of its keys file (a reload keeps the signer, and so its keys, while both are unchanged).
    """

    services: Services
    spoe_handle: Handler
    spoe_deny: DenyActions
    spoe_untrusted: Callable[[str], None]
    spoe_quick: QuickHandler
    assertion_source: tuple[AssertionConfig | None, bytes]


@dataclass(kw_only=True, slots=True)
class _Shared:
    """What outlives a reload: the HTTP clients (one per CA file), the metrics registry and the shared store."""

    clients: dict[str | None, httpx.AsyncClient]
    transport: httpx.AsyncBaseTransport | None = None
    metrics: Metrics | None = None
    store: RevocationStore | None = None
    store_started: bool = False
    purger: CachePurger | None = None  # the decision cache in HAProxy (restart-only settings: one for the process)


def _assertion_source(config: Config) -> tuple[AssertionConfig | None, bytes]:
    section = config.assertion
    if section is None or not section.keys_file:
        return section, b""
    return section, Path(section.keys_file).read_bytes()


def _withdrawn(
    purge: Callable[[str, frozenset[str | None]], int] | None, invalidate: Callable[[], None]
) -> Callable[[str, frozenset[str | None]], int]:
    """A JWKS cache's ``on_keys_withdrawn``: ``purge`` (the verified-token cache's, when on), then ``invalidate``."""

    def withdrawn(issuer: str, kids: frozenset[str | None]) -> int:
        purged = purge(issuer, kids) if purge is not None else 0
        invalidate()
        return purged

    return withdrawn


def _services(config: Config, shared: _Shared, previous: Generation | None = None) -> Generation:
    """Build every component of ``config`` (no I/O: keys are fetched later, by the lifespan). With ``previous`` (a
    reload), the JWKS caches of unchanged issuers, the assertion signer of an unchanged ``assertion`` section and
    keys file, the metrics registry and the shared store are kept; everything else is new."""
    _warn_about_trust(config)
    for ca in {i.ca_file for i in config.issuers} - set(shared.clients):
        shared.clients[ca] = _client_for(ca, shared.transport)
    clients = shared.clients
    kept = {c.config: c for c in previous.services.caches} if previous is not None else {}
    caches = tuple(
        kept.get(i) or JwksCache(config=i, client=clients[i.ca_file], dev_mode=config.dev_mode) for i in config.issuers
    )
    entries = config.server.token_cache_entries
    token_cache = TokenCache(max_entries=entries) if entries else None
    for cache in caches:  # a withdrawn key's tokens are refused at once, cached verifications included
        cache.on_keys_withdrawn = (
            (lambda issuer, kids: token_cache.purge(issuer=issuer, kids=kids)) if token_cache is not None else None
        )
    verifier = Verifier(
        issuers={c.config.issuer: TrustedIssuer(config=c.config, keys=c) for c in caches}, cache=token_cache
    )
    policy = policy_hash(config)
    metrics = shared.metrics
    if metrics is None:
        metrics = shared.metrics = Metrics(
            routes=(r.name for r in config.routes),
            upstreams=config.upstreams,
            policy=policy,
            version=_installed_version(),
        )
    purger = shared.purger
    if purger is not None:
        for cache in caches:  # a withdrawn signing key: its tokens' entries go (all of them: entries carry no kid)
            previous_hook = cache.on_keys_withdrawn

            def withdrawn(issuer: str, kids: frozenset[Kid], previous_hook: Any = previous_hook) -> int:
                purger.purge_all_soon(cause="key_removed")
                return int(previous_hook(issuer, kids)) if previous_hook is not None else 0

            cache.on_keys_withdrawn = withdrawn
    sso = _sso(config, caches, clients, metrics, shared)
    sessions = sso.sessions if sso else None
    source = _assertion_source(config)
    if previous is not None and previous.assertion_source == source:
        assertions = previous.services.assertions
    else:
        assertions = _assertion_signer(config)
    metrics.watch(tokens=token_cache, caches=caches, assertions=lambda: assertions, sessions=sessions)
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
    services = Services(
        looker=_looker(config),
        engine=engine,
        caches=caches,
        trusted=parse_networks(config.server.trusted_callers),
        sso=sso,
        assertions=assertions,
        metrics=metrics,
        metrics_here=config.server.metrics_bind is None,
        cache=purger,
    )
    return Generation(
        services=services,
        spoe_handle=spoe_handler(engine),
        spoe_deny=spoe_deny_actions(engine),
        spoe_untrusted=spoe_untrusted_caller(engine),
        spoe_quick=spoe_quick(engine),
        assertion_source=source,
    )


def _cache_purger(config: Config) -> CachePurger | None:
    """The decision cache's purger and sweeper (None when idgate marks nothing cacheable)."""
    if not cache_active(config):
        return None
    return CachePurger(
        apis=[RuntimeApi(address=a, timeout=COMMAND_TIMEOUT_SECONDS) for a in config.haproxy.runtime_api],
        map_name=config.haproxy.cache_map,
        max_entries=config.cache.max_entries,
        sweep_interval_seconds=config.cache.sweep_interval_seconds,
        issuers=[i.issuer for i in config.issuers],
    )


@contextlib.asynccontextmanager
async def _metrics_listener(config: Config | None, metrics: Metrics | None) -> AsyncIterator[None]:
    """GET /metrics on ``server.metrics_bind`` while the block runs (nothing without it, nor with ``config`` None:
    a worker other than the first). Raises OSError when the address cannot be bound: idgate then refuses to start."""
    address = config.server.metrics_address if config is not None else None
    if address is None or metrics is None:
        yield
        return
    httpd, thread = start_http_server(address[1], addr=address[0], registry=metrics.exposed)
    try:
        yield
    finally:
        await asyncio.to_thread(httpd.shutdown)  # within serve_forever's 0.5 s poll interval, off the loop
        httpd.server_close()
        await asyncio.to_thread(thread.join, 5.0)


def _worker_tasks(
    worker: WorkerContext, services: Services, warmers: list[asyncio.Task[None]]
) -> list[asyncio.Task[None]]:
    """A worker's chores: ``/metrics`` reports the sum over all workers (:mod:`idgate.metrics_workers`, this worker's
    scrape-time values published every second); one ``worker_ready`` log line once this worker is ready (every
    issuer's keys, and the shared store read once); and a stop (SIGTERM to itself) when the supervisor is gone."""
    publish: Callable[[], None] | None = None
    if services.metrics is not None:
        services.metrics.exposed, publish = worker_registry(services.metrics.registry, worker.metrics_dir)
    store = services.sso.store if services.sso is not None else None

    async def ready() -> None:
        await asyncio.gather(*warmers, return_exceptions=True)
        while store is not None:  # the store has no event to wait on
            if store.health().synced:
                break
            await asyncio.sleep(0.05)
        if publish is not None:
            publish()  # the other workers' /metrics see this worker ready as soon as it says so
        log.info(json.dumps({"event": "worker_ready", "worker": worker.index, "pid": os.getpid()}))

    async def refetch() -> None:  # another worker was asked POST /admin/jwks/refresh (forwarded as SIGUSR1)
        outcomes = await asyncio.gather(*(cache.refresh_now() for cache in services.caches))
        reports = [refresh_report(c.config.name, o) for c, o in zip(services.caches, outcomes, strict=True)]
        log.warning(json.dumps({"event": "worker_jwks_refresh", "worker": worker.index, "issuers": reports}))

    refetches: set[asyncio.Task[None]] = set()

    def on_refresh_signal() -> None:
        task = asyncio.create_task(refetch(), name="worker:refetch")
        refetches.add(task)
        task.add_done_callback(refetches.discard)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, on_refresh_signal)

    async def chores() -> None:
        while True:
            if publish is not None:
                publish()
            if worker.orphaned():
                log.error(json.dumps({"event": "worker_orphaned", "worker": worker.index, "pid": os.getpid()}))
                os.kill(os.getpid(), signal.SIGTERM)
                return
            await asyncio.sleep(PUBLISH_INTERVAL_SECONDS)

    return [asyncio.create_task(ready(), name="worker:ready"), asyncio.create_task(chores(), name="worker:chores")]


def _agent(config: Config, live: Callable[[], Generation]) -> SpoaAgent | None:
    """The SPOA agent answering HAProxy's SPOE (None without ``spoa`` in the config). Each message is decided by
    the generation ``live()`` returns when it arrives (read once: a reload never changes a decision under way)."""
    if config.spoa is None:
        return None

    async def handle(message: str, args: Mapping[str, Value]) -> Sequence[Action]:
        return await live().spoe_handle(message, args)

    agent = SpoaAgent(
        handler=handle,
        deny_actions=lambda reason: live().spoe_deny(reason),
        max_in_flight=config.spoa.max_in_flight,
        idle_timeout=config.spoa.idle_timeout_seconds,
        read_timeout=config.spoa.read_timeout_seconds,
        # the engine answers 503 decision_timeout first; this is the agent's last-resort deny
        handler_timeout=config.server.decision_timeout_seconds + 1.0,
        messages={MESSAGE: REQUIRED_ARGS},
        trusted_callers=parse_networks(config.spoa.trusted_callers),
        on_untrusted=lambda peer: live().spoe_untrusted(peer),
        ssl_context=server_context(config.spoa.tls) if config.spoa.tls is not None else None,
        # replicas (a shared store): spop-check sees the agent up only once /readyz would be 200 (keys fetched, store
        # read), so HAProxy sends a restarting replica nothing while another can decide. One process (memory store):
        # there is nowhere else to go, and its own answer (503 keys_unavailable + Retry-After) beats HAProxy's 503
        ready=(lambda: not_ready(live().services) is None) if config.store.kind == "redis" else (lambda: True),
        quick=lambda message, args, max_bytes: live().spoe_quick(message, args, max_bytes),
    )
    metrics = live().services.metrics
    if metrics is not None:
        metrics.watch_spoa(lambda: dataclasses.asdict(agent.stats))
    return agent


def preflight(config: Config) -> list[str]:
    """Build every component of ``config`` once, as the lifespan will, without serving or any network I/O.

    ``idgate check-config`` and ``idgate serve`` run it after :func:`idgate.config_load.load_config`: a component
    that refuses a setting the configuration checks let through is one problem line (exit 1), not a traceback from
    uvicorn's lifespan at startup. Returns the problems, empty when every component was built.
    """

    async def build() -> None:
        shared = _Shared(clients={})
        try:
            generation = _services(config, shared)
            _agent(config, lambda: generation)
        finally:
            for client in shared.clients.values():
                await client.aclose()

    try:
        asyncio.run(build())
    except Exception as exc:  # the boundary: whatever a component raises is reported, never a traceback
        return [f"the service cannot be built from this configuration: {type(exc).__name__}: {exc}"]
    return []


ConfigChange = Callable[[Config, Config], object]
"""An "on config change" callback (:meth:`idgate.reload.Reloader.subscribe`)."""


def create_app(
    config: Config,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    config_path: str | None = None,
    reload_on_sighup: bool = False,
    on_config_change: Sequence[ConfigChange] = (),
    worker: WorkerContext | None = None,
) -> Starlette:
    """Build the ASGI app for ``config``. Components, key caches and HTTP clients live in the lifespan.

    ``transport`` replaces the network for outbound calls to issuers (tests inject ``httpx.MockTransport``).
    ``config_path``: the file a hot reload re-reads (``POST /admin/reload``; with ``reload_on_sighup``, also
    ``SIGHUP``, which needs the main thread: ``idgate serve``); without it a reload is refused.

    **On config change**: every callable of ``on_config_change`` — and whatever is later given to
    ``app.state.reloader.subscribe`` — is called ``(old_config, new_config)`` after each applied reload, once the new
    components are in force (the HAProxy decision-cache purger and a decision memo subscribe here). A callback must
    be quick and not block (schedule I/O as a task); one that raises is logged and never undoes the reload. The
    decision cache in HAProxy is cleared after every applied reload (entries judged under the old policy).

    ``worker``: this process is a worker of ``idgate serve --workers N`` (:func:`_worker_tasks`).
    """

    def as_worker(generation: Generation) -> Generation:
        if worker is None:
            return generation
        services = dataclasses.replace(generation.services, peers_refresh=worker.ask_peers_to_refresh)
        return dataclasses.replace(generation, services=services)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        shared = _Shared(clients={}, transport=transport, purger=_cache_purger(config))
        warmers: dict[int, asyncio.Task[None]] = {}

        def warm(generation: Generation) -> None:
            for cache in generation.services.caches:
                if id(cache) not in warmers:
                    warmers[id(cache)] = asyncio.create_task(_warm(cache), name=f"warm:{cache.config.name}")

        async def build(new: Config) -> Generation:
            if follower is None and new.assertion is not None and new.store.kind == "redis":
                raise ValueError("assertion: adding signed assertions with a shared store needs a restart")
            generation = as_worker(_services(new, shared, reloader.current))
            if follower is not None:
                follower.apply(generation.services.assertions)  # the shared ring's keys before it serves
            await _start_store(shared)
            cold = [c for c in generation.services.caches if id(c) not in warmers]
            if cold:  # a new or changed issuer: fetch its keys before it decides (bounded; then in the background)
                await asyncio.wait([asyncio.create_task(c.refresh()) for c in cold], timeout=RELOAD_KEYS_WAIT_SECONDS)
            warm(generation)
            return generation

        first = as_worker(_services(config, shared))
        purger = shared.purger
        if purger is not None and shared.metrics is not None:
            shared.metrics.registry.register(purger.collector())
        reloader: Reloader[Generation] = Reloader(path=config_path, config=config, current=first, build=build)
        if shared.metrics is not None:  # after the swap: a refused reload never touches the metrics
            reloader.subscribe(lambda old, new: _reconfigure(shared.metrics, new))
        if purger is not None:  # answers judged under the old policy must not outlive it in HAProxy
            reloader.subscribe(lambda old, new: purger.purge_all_soon(cause="policy_change"))
        for callback in on_config_change:
            reloader.subscribe(callback)
        app.state.reloader = reloader
        if shared.metrics is not None:
            shared.metrics.watch_reloads(lambda: _reload_counts(reloader))
        warm(first)
        await _start_store(shared)
        if purger is not None:
            await purger.start()
        follower = await _follow_ring(config, lambda: reloader.current.services.assertions)
        agent = _agent(config, lambda: reloader.current)
        if agent is not None:
            assert config.spoa is not None
            await agent.start(config.spoa.host, config.spoa.port, sock=worker.spoa_socket if worker else None)
        chores = _worker_tasks(worker, first.services, list(warmers.values())) if worker is not None else []
        background: set[asyncio.Task[object]] = set()
        hangup = reload_on_sighup and _on_sighup(lambda: _spawn(background, reloader.reload(source="sighup")))
        try:
            async with _metrics_listener(config if worker is None or worker.index == 0 else None, shared.metrics):
                yield
        finally:
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)
            if agent is not None:
                await agent.close()
            if purger is not None:
                await purger.close()
            for task in (*warmers.values(), *background):
                task.cancel()
            await asyncio.gather(*warmers.values(), *background, return_exceptions=True)
            for client in shared.clients.values():
                await client.aclose()
            looker = reloader.current.services.looker
            for upstream in looker.upstreams.values() if looker is not None else ():
                if upstream.api is not None:
                    await upstream.api.aclose()
            if shared.store is not None:
                await shared.store.close()
            if follower is not None:
                await follower.close()

    def services_of(request: Request) -> Services:
        reloader: Reloader[Generation] = request.app.state.reloader
        return reloader.current.services

    async def reload_of(request: Request) -> ReloadResult:
        reloader: Reloader[Generation] = request.app.state.reloader
        return await reloader.reload(source="admin")

    return Starlette(routes=http_routes(services_of, reload=reload_of), lifespan=lifespan)


async def _follow_ring(config: Config, signer: Callable[[], AssertionSigner | None]) -> RingFollower | None:
    """With ``store.kind: redis`` and ``assertion``: the shared assertion key ring (:mod:`idgate.assertion_store`), read
    or created, installed into the signer and followed. None otherwise (the signer keeps its own keys).

    Raises:
        RingError: no ring could be read within 10 s, or the session keys cannot open it (idgate refuses to start).
    """
    section = config.assertion
    if section is None or config.store.kind != "redis" or config.sessions is None or config.sessions.keys is None:
        return None
    seal = KeyRing.from_text(config.sessions.keys.get_secret_value())
    ring = RedisAssertionRing(
        client=client_from_config(config.store),
        seal=seal,
        prefix=config.store.key_prefix,
        timeout=max(config.store.timeout_seconds, 1.0),
    )
    source = _assertion_source(config)[1]
    pem = split_pem(source)[0] if source else None

    def first() -> RingState:
        return first_ring(pem, section.algorithm, lifetime_seconds=section.lifetime_seconds, now=time.time())

    follower = RingFollower(ring=ring, signer=signer, poll_seconds=section.rotation.poll_seconds)
    try:
        await follower.start(first)
    except BaseException:
        await ring.close()
        raise
    current = signer()
    log.info(json.dumps({"event": "assertion_ring_followed", "kid": current.kid if current else None}))
    return follower


def _reconfigure(metrics: Metrics | None, config: Config) -> None:
    if metrics is not None:
        metrics.reconfigure(
            routes=(r.name for r in config.routes), upstreams=config.upstreams, policy=policy_hash(config)
        )


async def _start_store(shared: _Shared) -> None:
    if shared.store is not None and not shared.store_started:
        shared.store_started = True
        await shared.store.start()


def _reload_counts(reloader: Reloader[Generation]) -> tuple[int, int, float]:
    stats = reloader.stats
    return stats.attempts, stats.failures, stats.last_success


def _spawn(tasks: set[asyncio.Task[object]], work: Coroutine[object, object, object]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def _on_sighup(handler: Callable[[], None]) -> bool:
    """Run ``handler`` on the event loop at each ``SIGHUP`` (POSIX; main thread only). False where it cannot be."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, handler)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
        log.warning(json.dumps({"event": "sighup_unavailable", "error": type(exc).__name__}))
        return False
    return True
