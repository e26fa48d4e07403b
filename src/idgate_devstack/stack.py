"""One builder for "the stack" on loopback, used by ``idgate demo``, the e2e tests (tests/support) and bench/.

client → HAProxy (shipped haproxy.cfg + idgate-auth.lua) → idgate (``idgate serve``, a child process) → upstreams
``app`` and ``looker`` (echo), ``grafana`` (the Grafana-contract stub) and ``grpc`` (demo.Echo), with tokens from the
test IdP (npm ``oidc-provider``, HTTPS) by a real authorization code + PKCE login::

    plan = StackPlan(run_dir=root, ports="free")        # ports="fixed": the demo's 8443, 9180, 9443, ...
    with start_stack(plan) as stack:                    # every process in one ExitStack, stopped in reverse
        token = stack.login("alice").access_token
        stack.client().get(f"{stack.url}/app/", headers={"authorization": f"Bearer {token}"})

Under ``run_dir``: ``tls/`` (fresh dev certificates), ``idp.log``, ``idgate.log``, ``haproxy.log``,
``haproxy.sock`` and, for a generated config, ``idgate.yaml``; the secrets (``client_secret``, ``session_keys``) in
``StackPlan.secrets_dir``. bench/ shares the parts :func:`start_idp`, :func:`login_user` and :func:`start_idgate`.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import yaml

from idgate.presets import LOGIN_SCOPES
from idgate_devstack.certs import DevCerts, generate_dev_certs
from idgate_devstack.echo import EchoUpstream
from idgate_devstack.faultproxy import FaultProxy
from idgate_devstack.grafana_stub import GrafanaStub
from idgate_devstack.graph_stub import GraphStub
from idgate_devstack.grpc_echo import GrpcUpstream
from idgate_devstack.haproxy import Haproxy, HaproxySettings, free_tcp_port
from idgate_devstack.idp import IdpConfig, TestIdp
from idgate_devstack.login import Tokens, login
from idgate_devstack.redis_server import RedisServer
from idgate_devstack.service import IdgateService
from idgate_devstack.stack_config import (
    AUDIENCE,
    cache_config,
    merged,
    second_idp_redirect_uris,
    stack_config,
    tls_config,
    with_second_idp,
    write_secrets,
)

Mode = Literal["spoe", "auth_request"]
UpstreamName = Literal["app", "looker", "grafana", "grpc"]
Upstream = EchoUpstream | GrafanaStub | GrpcUpstream

ALL_UPSTREAMS: Final[tuple[UpstreamName, ...]] = ("app", "looker", "grafana", "grpc")
DEMO_UPSTREAM_PORTS: Final[Mapping[str, int]] = {"app": 9101, "looker": 9102, "grafana": 9103, "grpc": 9104}
HAPROXY_PORTS: Final[Mapping[str, int]] = {"https": 8443, "http": 8080, "h2c": 8081, "stats": 8404}
FIXED_PORTS: Final = {**HAPROXY_PORTS, "idgate": 9180, "spoa": 9181, "idp": 9443, **DEMO_UPSTREAM_PORTS}
"""``ports="fixed"``: TCP port of each listener (the ones config/demo.yaml names); HAProxy's ``http`` is its
redirecting clear-HTTP frontend, ``h2c`` its cleartext HTTP/2 (gRPC) one, ``stats`` its ``/stats`` + ``/metrics``."""


@dataclass(frozen=True, kw_only=True)
class StackPlan:
    """What :func:`start_stack` starts. Times in seconds unless the name says otherwise.

    ``ports``: ``"fixed"`` (:data:`FIXED_PORTS`, HTTPS on ``https_port`` when set) or ``"free"`` (picked on
    loopback; the upstream children pick their own). ``config``: idgate's config file, which must agree with the
    ports, the IdP and ``secrets_dir``; None: :func:`stack_config` (with ``refresh_before`` as
    ``sessions.refresh_before_seconds``) written to ``run_dir/idgate.yaml``. ``secrets_dir``: None means ``run_dir``.
    ``token_ttl``/``id_token_ttl``: the IdP's access/ID token lifetimes (``id_token_ttl`` None: ``token_ttl``).
    ``idp_test_endpoints``: the IdP's ``/test/*``; ``idp_logout``: idgate's post-logout and back-channel logout URIs
    registered at the IdP. ``grpc_tls``: TLS from HAProxy to the gRPC upstream, verified against the dev CA.
    ``auth_timeout_ms``, ``http_timeout``, ``stream_timeout`` (HAProxy time format): the ``HaproxySettings`` values.
    ``jwks``: the generated config's issuer ``jwks`` settings (None: 0 s cooldowns); ``fault_proxy``: idgate fetches
    the IdP's keys through a :class:`~idgate_devstack.faultproxy.FaultProxy` (``Stack.faults``; generated config only).
    ``tls``: HAProxy speaks TLS to idgate's HTTP server and SPOA agent
    (:func:`~idgate_devstack.stack_config.tls_config`; free ports only); ``idgate_extra``: sections merged into the
    generated config.
    ``cache``: the decision cache in HAProxy (``IDGATE_CACHE`` and, generated config only, idgate's ``cache.enabled``
    with ``haproxy.runtime_api`` pointing at this HAProxy's stats socket).
    ``replicas``: how many ``idgate serve`` processes (1-4) behind HAProxy; more than one also starts a
    ``redis-server`` on a free port and gives every replica ``store: {kind: redis}`` (generated config only), and in
    auth_request mode HAProxy's local /auth listener (``IDGATE_AUTH_LB_BIND``).
    ``workers``: ``idgate serve --workers N`` for every replica (None: the config's default, the cores with a Redis
    store); more than one also
    starts the ``redis-server`` and gives idgate ``store: {kind: redis}`` (generated config only).
    """

    run_dir: Path
    mode: Mode = "spoe"
    ports: Literal["fixed", "free"] = "free"
    https_port: int | None = None
    config: Path | None = None
    secrets_dir: Path | None = None
    refresh_before: float = 60
    token_ttl: int = 300
    id_token_ttl: int | None = None
    idp_test_endpoints: bool = False
    idp_logout: bool = False
    upstreams: tuple[UpstreamName, ...] = ALL_UPSTREAMS
    grpc_tls: bool = False
    auth_timeout_ms: int = HaproxySettings.auth_timeout_ms
    http_timeout: str = HaproxySettings.timeout
    stream_timeout: str = HaproxySettings.stream_timeout
    jwks: Mapping[str, Any] | None = None
    fault_proxy: bool = False
    tls: bool = False
    idgate_extra: Mapping[str, Any] | None = None
    replicas: int = 1
    idp_profile: str = "generic"
    """The test IdP's provider profile (``IDP_PROFILE``); the generated config's issuer gets ``provider:`` the same
    (generic: none), so idgate's preset meets the shapes it was made for."""
    issuer_extra: Mapping[str, Any] | None = None
    """Keys merged into the generated config's issuer entry (after ``provider``; e.g. ``claims``)."""
    graph_users: Mapping[str, list[str]] | None = None
    """Start the Microsoft Graph contract stub (HTTPS, dev CA) with these users (oid → group ids) and point the
    generated config's ``entra.graph_url`` at it (``Stack.graph``)."""
    second_idp: bool = False
    """A second test IdP (``Stack.second_idp``, the same built-in users, hence the same ``sub`` values) for browser
    login next to the first (generated config only): ``login.issuers: [testidp, second]``, the second with its
    own redirect URI ``{site}/.idgate/callback/second``, and ``localhost`` defaulting to it
    (``login.default_issuer_by_host``); its redirect URIs include ``https://localhost:<https port>/...``."""
    cache: bool = True
    workers: int | None = 1

    def port(self, name: str) -> int:
        """The port for listener ``name`` (a :data:`FIXED_PORTS` key); ``"free"``: one free a moment ago, 0 (the
        child picks) for an upstream."""
        if self.ports == "fixed":
            return self.https_port if name == "https" and self.https_port is not None else FIXED_PORTS[name]
        return 0 if name in ALL_UPSTREAMS else free_tcp_port()


@dataclass(frozen=True, kw_only=True)
class Stack:
    """Handles on the running stack; ``upstreams`` maps name (``app``, ``looker``, ``grafana``, ``grpc``) -> handle."""

    plan: StackPlan
    certs: DevCerts
    idp: TestIdp
    idgate: IdgateService
    haproxy: Haproxy
    settings: HaproxySettings
    upstreams: dict[str, Upstream]
    redirect_uri: str
    metrics_url: str
    """idgate's ``/metrics``: on its HTTP port, or on ``server.metrics_bind`` (the TLS variant)."""
    faults: FaultProxy | None = None
    replicas: tuple[IdgateService, ...] = ()
    """Every ``idgate serve`` process, ``idgate`` first."""
    redis: RedisServer | None = None
    graph: GraphStub | None = None
    """The Microsoft Graph contract stub (``StackPlan.graph_users``)."""
    second_idp: TestIdp | None = None
    """The second login IdP (``StackPlan.second_idp``), issuers[] name ``second``."""

    @property
    def mode(self) -> Mode:
        return self.settings.mode

    @property
    def url(self) -> str:
        """HAProxy's ``https://127.0.0.1:port``."""
        return self.settings.https_url

    @property
    def grpc(self) -> GrpcUpstream:
        upstream = self.upstreams["grpc"]
        assert isinstance(upstream, GrpcUpstream)
        return upstream

    def client(self, **kw: Any) -> httpx.Client:
        """An httpx client that trusts the dev CA, times out after 10 s and never follows redirects."""
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.certs.ca)), timeout=10.0, **kw)

    def login(self, username: str) -> Tokens:
        """A real code + PKCE login at the IdP for ``username``, with the scopes idgate's preset for the IdP's
        profile asks for (Keycloak, Entra ID and Google refuse ``groups``)."""
        return login_user(self.idp, username)

    def idgate_metrics(self) -> str:
        """idgate's Prometheus text, read from idgate directly (from 127.0.0.1, a trusted caller)."""
        with self.idgate.client(timeout=5.0) as client:
            response = client.get(self.metrics_url)
        response.raise_for_status()
        return response.text

    def reset_upstreams(self) -> None:
        for upstream in self.upstreams.values():
            upstream.reset()

    def upstream_hits(self) -> int:
        """Requests (gRPC calls) the upstreams recorded since the last reset, all together."""
        return sum(len(u.requests()) for u in self.upstreams.values())


def start_idp(
    stack: contextlib.ExitStack,
    certs: DevCerts,
    run_dir: Path,
    *,
    port: int,
    site: str,
    token_ttl: int,
    id_token_ttl: int | None = None,
    test_endpoints: bool,
    logout: bool = False,
    profile: str = "generic",
    name: str = "idp",
    redirect_uris: tuple[str, ...] | None = None,
) -> TestIdp:
    """The test IdP on HTTPS ``port`` (entered into ``stack``), log ``run_dir/idp.log``. Its one client (``idgate``)
    redirects to ``{site}/.idgate/callback``; ``logout``: also ``{site}/`` after logout and back-channel logout to
    ``{site}/.idgate/backchannel-logout``. Access tokens for :data:`AUDIENCE`, valid ``token_ttl`` s; ID tokens
    ``id_token_ttl`` s (None: ``token_ttl``). ``name``: the log's name (``run_dir/{name}.log``); ``redirect_uris``:
    the client's redirect URIs instead of ``{site}/.idgate/callback``."""
    config = IdpConfig(
        port=port,
        tls_cert=certs.cert,
        tls_key=certs.key,
        ca_file=certs.ca,
        redirect_uris=redirect_uris or (f"{site}/.idgate/callback",),
        post_logout_redirect_uris=(f"{site}/",) if logout else (),
        backchannel_logout_uri=f"{site}/.idgate/backchannel-logout" if logout else None,
        resources=(AUDIENCE,),
        access_token_ttl=token_ttl,
        id_token_ttl=token_ttl if id_token_ttl is None else id_token_ttl,
        test_endpoints=test_endpoints,
        log_file=run_dir / f"{name}.log",
        profile=profile,
    )
    return stack.enter_context(TestIdp(config))


def login_user(idp: TestIdp, username: str) -> Tokens:
    """A real code + PKCE login of ``username`` with the IdP's client and first redirect URI, for :data:`AUDIENCE`."""
    config = idp.config
    return login(
        issuer=idp.issuer,
        client_id=config.client_id,
        client_secret=config.client_secret,
        redirect_uri=config.redirect_uris[0],
        username=username,
        resource=AUDIENCE,
        scope=" ".join(LOGIN_SCOPES.get(config.profile, LOGIN_SCOPES["generic"])),
        verify=config.verify(),
    )


def start_idgate(
    stack: contextlib.ExitStack,
    run_dir: Path,
    config: Path | Mapping[str, Any],
    *,
    port: int,
    name: str = "idgate",
    tls_ca: Path | None = None,
    tls_client: tuple[Path, Path] | None = None,
    workers: int | None = None,
) -> IdgateService:
    """``idgate serve`` on ``port`` (entered into ``stack``, ready once it answers ``/readyz``), log
    ``run_dir/{name}.log``; a ``config`` mapping is written to ``run_dir/{name}.yaml`` first. ``tls_ca``: the service
    speaks HTTPS (readiness asked over TLS trusting that CA, presenting ``tls_client`` (certificate, key))."""
    if not isinstance(config, Path):
        path = run_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(dict(config)))
        config = path
    service = IdgateService(
        config=config,
        port=port,
        log_path=run_dir / f"{name}.log",
        tls_ca=tls_ca,
        tls_client=tls_client,
        workers=workers,
    )
    return stack.enter_context(service)


@contextlib.contextmanager
def start_stack(plan: StackPlan) -> Iterator[Stack]:
    """Start certificates, IdP, upstreams, idgate and HAProxy as ``plan`` says, in that order; yield the handles;
    stop everything (in reverse) on leaving, on an exception and on Ctrl-C."""
    run_dir, secrets_dir = plan.run_dir, plan.secrets_dir or plan.run_dir
    certs = generate_dev_certs(run_dir / "tls")
    https_port, spoa_port = plan.port("https"), plan.port("spoa")
    site = f"https://127.0.0.1:{https_port}"
    with contextlib.ExitStack() as stack:
        idp = start_idp(
            stack,
            certs,
            run_dir,
            port=plan.port("idp"),
            site=site,
            token_ttl=plan.token_ttl,
            id_token_ttl=plan.id_token_ttl,
            test_endpoints=plan.idp_test_endpoints,
            logout=plan.idp_logout,
            profile=plan.idp_profile,
        )
        graph = None
        if plan.graph_users is not None:
            stub = GraphStub(
                dict(plan.graph_users),
                users_file=run_dir / "graph-users.json",
                tls=(certs.cert, certs.key),
                ca_file=certs.ca,
            )
            graph = stack.enter_context(stub)
        metrics_port = free_tcp_port() if plan.tls else 0
        faults = None
        if plan.fault_proxy:
            proxy = FaultProxy(upstream=idp.jwks_uri, tls_cert=certs.cert, tls_key=certs.key, ca_file=certs.ca)
            faults = stack.enter_context(proxy)
        if plan.config is None:
            config = stack_config(
                idp.issuer,
                certs.ca,
                site=site,
                secrets_dir=secrets_dir,
                refresh_before=plan.refresh_before,
                spoa_port=spoa_port,
                jwks=plan.jwks,
                jwks_uri=faults.url if faults else None,
            )
            if plan.tls:
                config = merged(config, tls_config(certs, mode=plan.mode, metrics_port=metrics_port))
            config = merged(config, cache_config(enabled=plan.cache, runtime_api=run_dir / "haproxy.sock"))
            config = merged(config, plan.idgate_extra or {})
            if plan.idp_profile != "generic":
                config["issuers"][0]["provider"] = plan.idp_profile
            config["issuers"][0] |= dict(plan.issuer_extra or {})
            if graph is not None:
                config["issuers"][0]["entra"] = {"graph_url": graph.graph_url, "timeout_seconds": 2}
            if plan.second_idp:
                second = start_idp(
                    stack,
                    certs,
                    run_dir,
                    port=free_tcp_port(),
                    site=site,
                    token_ttl=plan.token_ttl,
                    id_token_ttl=plan.id_token_ttl,
                    test_endpoints=plan.idp_test_endpoints,
                    logout=plan.idp_logout,
                    name="idp2",
                    redirect_uris=second_idp_redirect_uris(site, https_port),
                )
                config = with_second_idp(config, second.issuer, site=site, https_port=https_port)
        else:
            if plan.second_idp:
                raise ValueError("second_idp needs the generated config")
            write_secrets(secrets_dir)
            config = yaml.safe_load(plan.config.read_text(encoding="utf-8"))
        upstreams: dict[str, Upstream] = {name: _upstream(name, plan, certs, site, config) for name in plan.upstreams}
        for upstream in upstreams.values():
            stack.enter_context(upstream)
        redis = None
        if plan.replicas > 1 or (plan.workers or 1) > 1:
            if plan.config is not None:
                raise ValueError("replicas or workers > 1 need the generated config (a shared store)")
            redis = stack.enter_context(RedisServer(port=free_tcp_port(), log_path=run_dir / "redis.log"))
            config["store"] = {"kind": "redis", "url": redis.url, "timeout_seconds": 0.2}
        tls_ca, tls_client = (certs.ca, (certs.cert, certs.key)) if plan.tls else (None, None)
        replicas = [
            start_idgate(
                stack,
                run_dir,
                plan.config or config,
                port=plan.port("idgate"),
                tls_ca=tls_ca,
                tls_client=tls_client,
                workers=plan.workers,
            )
        ]
        spoa_addrs = [f"127.0.0.1:{spoa_port}"]
        for n in range(2, plan.replicas + 1):
            port = free_tcp_port()
            replica_config = config | {"spoa": config["spoa"] | {"port": port}}
            replicas.append(
                start_idgate(
                    stack,
                    run_dir,
                    replica_config,
                    port=free_tcp_port(),
                    name=f"idgate{n}",
                    tls_ca=tls_ca,
                    tls_client=tls_client,
                    workers=plan.workers,
                )
            )
            spoa_addrs.append(f"127.0.0.1:{port}")
        idgate = replicas[0]
        address = {name: upstream.address for name, upstream in upstreams.items()}
        settings = HaproxySettings(
            tls_pem=certs.pem,
            mode=plan.mode,
            spoa_addr=spoa_addrs[0],
            more_spoa_addrs=tuple(spoa_addrs[1:]),
            more_service_addrs=tuple(f"127.0.0.1:{r.port}" for r in replicas[1:]),
            # auth_request mode: the Lua calls /auth through HAProxy's local listener (a bounded pool of reused
            # connections; haproxy/README.md "Traps"), except over TLS, which that listener does not speak
            auth_lb_bind=(
                f"127.0.0.1:{free_tcp_port()}"
                if plan.replicas > 1 or (plan.mode == "auth_request" and not plan.tls)
                else None
            ),
            https_bind=f"127.0.0.1:{https_port}",
            http_bind=f"127.0.0.1:{plan.port('http')}",
            stats_bind=f"127.0.0.1:{plan.port('stats')}",
            auth_url=f"{idgate.url}/auth",
            auth_timeout_ms=plan.auth_timeout_ms,
            upstream_app=address.get("app", HaproxySettings.upstream_app),
            upstream_grafana=address.get("grafana", HaproxySettings.upstream_grafana),
            upstream_looker=address.get("looker", HaproxySettings.upstream_looker),
            upstream_grpc=address.get("grpc", HaproxySettings.upstream_grpc),
            upstream_grpc_ca=certs.ca if plan.grpc_tls else None,
            h2c_bind=f"127.0.0.1:{plan.port('h2c')}",
            timeout=plan.http_timeout,
            stream_timeout=plan.stream_timeout,
            stats_socket=run_dir / "haproxy.sock",
            cache=plan.cache,
            # HAProxy presents the dev certificate where idgate asks for one: SPOA, and HTTP in SPOE mode (in
            # auth_request mode the Lua httpclient, idgate's HTTP caller, cannot present one in 2.8)
            spoa_tls_ca=certs.ca if plan.tls else None,
            spoa_tls_client_cert=certs.pem if plan.tls else None,
            service_tls_ca=certs.ca if plan.tls else None,
            service_tls_client_cert=certs.pem if plan.tls and plan.mode == "spoe" else None,
        )
        haproxy = stack.enter_context(Haproxy(settings, log_path=run_dir / "haproxy.log"))
        yield Stack(
            plan=plan,
            certs=certs,
            idp=idp,
            idgate=idgate,
            haproxy=haproxy,
            settings=settings,
            upstreams=upstreams,
            redirect_uri=idp.config.redirect_uris[0],
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics" if plan.tls else f"{idgate.url}/metrics",
            faults=faults,
            replicas=tuple(replicas),
            redis=redis,
            graph=graph,
            second_idp=second if plan.second_idp else None,
        )


def _upstream(name: UpstreamName, plan: StackPlan, certs: DevCerts, site: str, config: Mapping[str, Any]) -> Upstream:
    """The (not yet started) upstream ``name``; the Grafana stub verifies the assertions ``config`` makes idgate
    sign (its ``assertion.issuer``, audience ``grafana``, keys at ``{site}/.idgate/jwks.json``)."""
    port = plan.port(name)
    if name == "grafana":
        return GrafanaStub(
            port=port,
            jwks_url=f"{site}/.idgate/jwks.json",
            ca_file=str(certs.ca),
            expect_iss=config["assertion"]["issuer"],
            expect_aud="grafana",
            headers_encoded=True,
        )
    if name == "grpc" and plan.grpc_tls:
        return GrpcUpstream("grpc", port=port, tls_cert=certs.cert, tls_key=certs.key, ca_file=certs.ca)
    if name == "grpc":
        return GrpcUpstream("grpc", port=port)
    return EchoUpstream(name, port=port)
