"""The real stack on loopback: what it runs, handles on it, and a browser-like login (fixtures: tests/conftest.py).

client (httpx, real TLS) → HAProxy 2.8 (shipped haproxy.cfg + idgate-auth.lua) → idgate (``idgate serve``,
a child process) → echo upstreams (app, grafana, looker), with tokens from the real OpenID Provider
(npm ``oidc-provider``, HTTPS) obtained by a real authorization code + PKCE login.
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from idgate_devstack import navigate
from idgate_devstack.certs import DevCerts, generate_dev_certs
from idgate_devstack.echo import EchoUpstream
from idgate_devstack.grafana_stub import GrafanaStub
from idgate_devstack.grpc_echo import GrpcUpstream
from idgate_devstack.haproxy import Haproxy, HaproxySettings, free_tcp_port
from idgate_devstack.idp import IdpConfig, TestIdp
from idgate_devstack.login import Tokens, login
from idgate_devstack.navigate import BrowserLogin
from idgate_devstack.service import IdgateService

Mode = Literal["spoe", "auth_request"]
AUDIENCE = "https://api.idgate.test"
AUTH_TIMEOUT_MS = 500
HTTP_TIMEOUT_SECONDS = 3  # HAProxy's plain HTTP inactivity timeout in the test stack (IDGATE_TIMEOUT)
STREAM_TIMEOUT_SECONDS = 6  # its gRPC stream inactivity timeout (IDGATE_STREAM_TIMEOUT)


ASSERTION_ISSUER = "https://idgate.test"
GRPC_AUDIENCE = "demo-echo"
CLIENT_SECRET = "idgate-test-secret-0123456789abcdef"


def stack_config(
    issuer: str, ca_file: Path, *, site: str, secrets_dir: Path, refresh_before: float = 60, spoa_port: int = 9181
) -> dict[str, Any]:
    """The idgate config the e2e stack runs with (mirrors config/demo.yaml, with a 0 s refetch cooldown).

    ``site`` is HAProxy's https origin; secrets (client secret, cookie keys) are written to ``secrets_dir``.
    """
    (secrets_dir / "client_secret").write_text(CLIENT_SECRET)
    (secrets_dir / "session_keys").write_text(base64.b64encode(os.urandom(32)).decode())
    return {
        "spoa": {"host": "127.0.0.1", "port": spoa_port},
        "sessions": {
            "keys_file": str(secrets_dir / "session_keys"),
            "idle_timeout_seconds": 3600,
            "refresh_before_seconds": refresh_before,
        },
        "login": {
            "issuer": "testidp",
            "redirect_uris": [f"{site}/.idgate/callback"],
            "post_logout_redirect_uri": f"{site}/",
            "resource": AUDIENCE,
        },
        "assertion": {"issuer": ASSERTION_ISSUER, "lifetime_seconds": 120},
        "server": {"host": "127.0.0.1"},
        "issuers": [
            {
                "name": "testidp",
                "issuer": issuer,
                "ca_file": str(ca_file),
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
                "leeway_seconds": 2,
                "jwks": {"refetch_cooldown_seconds": 0},
                "client_id": "idgate",
                "client_secret_file": str(secrets_dir / "client_secret"),
            }
        ],
        "role_sets": {
            "grafana": {
                "roles": ["Viewer", "Editor", "Admin"],
                "from_groups": {"staff": ["Viewer"], "grafana-admins": ["Admin"]},
            },
            "looker": {
                "roles": ["looker_viewer", "looker_admin"],
                "from_groups": {"looker-analysts": ["looker_viewer"]},
            },
            "echo": {
                "roles": ["echo_user", "echo_admin"],
                "from_groups": {"staff": ["echo_user"], "grafana-admins": ["echo_admin"]},
            },
        },
        "upstreams": {
            "app": {"profile": "generic"},
            "grafana": {
                "profile": "grafana",
                "role_set": "grafana",
                "user_from": "email",
                "assertion_audience": "grafana",
            },
            "looker": {"profile": "looker", "role_set": "looker"},
            "grpc": {"profile": "generic", "role_set": "echo", "assertion_audience": GRPC_AUDIENCE},
        },
        "routes": [
            {"name": "echo-admin", "grpc": "/demo.Echo/Admin", "upstream": "grpc", "allow": {"roles": ["echo_admin"]}},
            {
                "name": "echo-stream",
                "grpc": "/demo.Echo/Ticks",
                "upstream": "grpc",
                "allow": {"authenticated": True},
                "authorization": "strip",
            },
            {"name": "echo", "grpc": "/demo.Echo/*", "upstream": "grpc", "allow": {"roles": ["echo_user"]}},
            {"name": "public", "path": "/public", "upstream": "app", "public": True},
            {
                "name": "grafana",
                "path": "/grafana",
                "upstream": "grafana",
                "allow": {"roles": ["Viewer", "Editor", "Admin"]},
            },
            {"name": "looker", "path": "/looker", "upstream": "looker", "allow": {"groups": ["looker-analysts"]}},
            {"name": "admin", "path": "/admin", "upstream": "app", "allow": {"groups": ["grafana-admins"]}},
            {"name": "app", "path": "/app", "upstream": "app", "allow": {"authenticated": True}},
        ],
    }


@dataclass(frozen=True, kw_only=True)
class Stack:
    """Handles on the running stack."""

    certs: DevCerts
    idp: TestIdp
    idgate: IdgateService
    haproxy: Haproxy
    settings: HaproxySettings
    upstreams: dict[str, EchoUpstream | GrafanaStub | GrpcUpstream]
    redirect_uri: str
    metrics_url: str  # idgate's /metrics: on its HTTP port, or on server.metrics_bind (the TLS variant)

    @property
    def mode(self) -> Mode:
        return self.settings.mode

    @property
    def url(self) -> str:
        return self.settings.https_url

    @property
    def grpc(self) -> GrpcUpstream:
        upstream = self.upstreams["grpc"]
        assert isinstance(upstream, GrpcUpstream)
        return upstream

    def client(self, **kw: Any) -> httpx.Client:
        """An httpx client that trusts the dev CA and never follows redirects."""
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.certs.ca)), timeout=10.0, **kw)

    def login(self, username: str) -> Tokens:
        """A real code + PKCE login at the IdP for ``username``."""
        return login(
            issuer=self.idp.issuer,
            client_id="idgate",
            client_secret="idgate-test-secret-0123456789abcdef",
            redirect_uri=self.redirect_uri,
            username=username,
            resource=AUDIENCE,
            verify=ssl.create_default_context(cafile=str(self.certs.ca)),
        )

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
        return sum(len(u.requests()) for u in self.upstreams.values())


def tls_config(certs: DevCerts, *, mode: Mode, metrics_port: int) -> dict[str, Any]:
    """The idgate config of the TLS variant: HTTPS (mutual in SPOE mode: HAProxy's Lua httpclient, the auth_request
    mode's caller, cannot present a client certificate in 2.8), SPOP over mutual TLS, /metrics on its own bind."""
    tls = {"cert_file": str(certs.cert), "key_file": str(certs.key)}
    return {
        "server": {"tls": tls | ({"ca_file": str(certs.ca)} if mode == "spoe" else {})}
        | {"metrics_bind": f"127.0.0.1:{metrics_port}"},
        "spoa": {"tls": tls | {"ca_file": str(certs.ca)}},
    }


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s sections merged in, one level deep."""
    return base | {k: (base.get(k) or {}) | v if isinstance(v, dict) else v for k, v in extra.items()}


@contextlib.contextmanager
def run_stack(
    root: Path,
    *,
    mode: Mode = "spoe",
    token_ttl: int = 300,
    refresh_before: float = 60,
    tls: bool = False,
    idgate_extra: dict[str, Any] | None = None,
) -> Iterator[Stack]:
    """Start the whole stack under ``root``; ``mode`` is how HAProxy asks idgate (``spoe`` or ``auth_request``),
    ``token_ttl`` the IdP's access/ID token lifetime (seconds), ``refresh_before`` idgate's
    ``sessions.refresh_before_seconds``. ``tls``: HAProxy speaks TLS to idgate's HTTP server and SPOA agent
    (:func:`tls_config`, ``IDGATE_SPOA_TLS`` / ``IDGATE_SERVICE_TLS``); ``idgate_extra`` is merged into idgate's
    config sections."""
    certs = generate_dev_certs(root / "tls")
    https_port, spoa_port, metrics_port = free_tcp_port(), free_tcp_port(), free_tcp_port()
    site = f"https://127.0.0.1:{https_port}"
    redirect_uri = f"{site}/.idgate/callback"
    idp_config = IdpConfig(
        port=free_tcp_port(),
        tls_cert=certs.cert,
        tls_key=certs.key,
        ca_file=certs.ca,
        redirect_uris=(redirect_uri,),
        post_logout_redirect_uris=(f"{site}/",),
        backchannel_logout_uri=f"{site}/.idgate/backchannel-logout",
        resources=(AUDIENCE,),
        access_token_ttl=token_ttl,
        id_token_ttl=token_ttl,
        test_endpoints=True,
        log_file=root / "idp.log",
    )
    with TestIdp(idp_config) as idp:
        config_path = root / "idgate.yaml"
        idgate_config = stack_config(
            idp.issuer, certs.ca, site=site, secrets_dir=root, refresh_before=refresh_before, spoa_port=spoa_port
        )
        if tls:
            idgate_config = _merged(idgate_config, tls_config(certs, mode=mode, metrics_port=metrics_port))
        config_path.write_text(yaml.safe_dump(_merged(idgate_config, idgate_extra or {})))
        upstreams: dict[str, EchoUpstream | GrafanaStub | GrpcUpstream] = {
            "app": EchoUpstream("app"),
            "looker": EchoUpstream("looker"),
            "grafana": GrafanaStub(
                jwks_url=f"{site}/.idgate/jwks.json",
                ca_file=str(certs.ca),
                expect_iss=ASSERTION_ISSUER,
                expect_aud="grafana",
                headers_encoded=True,
            ),
            # TLS from HAProxy to the gRPC service (IDGATE_UPSTREAM_GRPC_TLS=on), verified against the dev CA
            "grpc": GrpcUpstream("grpc", tls_cert=certs.cert, tls_key=certs.key, ca_file=certs.ca),
        }
        for upstream in upstreams.values():
            upstream.start()
        idgate = IdgateService(
            config=config_path,
            port=free_tcp_port(),
            log_path=root / "idgate.log",
            tls_ca=certs.ca if tls else None,
            tls_client=(certs.cert, certs.key) if tls else None,
        )
        # HAProxy presents the dev certificate (clientAuth too) where idgate asks for one: both SPOA and HTTP in
        # SPOE mode; in auth_request mode the HTTP server takes no client certificate (Lua's httpclient has none)
        client_cert = certs.pem if mode == "spoe" else None
        settings = HaproxySettings(
            tls_pem=certs.pem,
            mode=mode,
            spoa_addr=f"127.0.0.1:{spoa_port}",
            https_bind=f"127.0.0.1:{https_port}",
            http_bind=f"127.0.0.1:{free_tcp_port()}",
            stats_bind=f"127.0.0.1:{free_tcp_port()}",
            auth_url=f"{idgate.url}/auth",
            auth_timeout_ms=AUTH_TIMEOUT_MS,
            upstream_app=upstreams["app"].address,
            upstream_grafana=upstreams["grafana"].address,
            upstream_looker=upstreams["looker"].address,
            upstream_grpc=upstreams["grpc"].address,
            upstream_grpc_ca=certs.ca,
            h2c_bind=f"127.0.0.1:{free_tcp_port()}",
            timeout=f"{HTTP_TIMEOUT_SECONDS}s",
            stream_timeout=f"{STREAM_TIMEOUT_SECONDS}s",
            stats_socket=root / "haproxy.sock",
            spoa_tls_ca=certs.ca if tls else None,
            spoa_tls_client_cert=certs.pem if tls else None,
            service_tls_ca=certs.ca if tls else None,
            service_tls_client_cert=client_cert if tls else None,
        )
        try:
            idgate.start()
            with Haproxy(settings, log_path=root / "haproxy.log") as haproxy:
                yield Stack(
                    certs=certs,
                    idp=idp,
                    idgate=idgate,
                    haproxy=haproxy,
                    settings=settings,
                    upstreams=upstreams,
                    redirect_uri=redirect_uri,
                    metrics_url=f"http://127.0.0.1:{metrics_port}/metrics" if tls else f"{idgate.url}/metrics",
                )
        finally:
            idgate.stop()
            for upstream in upstreams.values():
                upstream.stop()


def access_claims(stack: Stack, **overrides: Any) -> dict[str, Any]:
    """Claims of a valid RFC 9068 access token for alice from the stack's IdP (5 min), with ``overrides``; sign them
    with ``stack.idp.sign({"typ": "at+jwt"}, ...)`` to forge expired, wrong-audience, ... tokens with the real key."""
    now = int(time.time())
    return {
        "iss": stack.idp.issuer,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "email": "alice@example.test",
        "groups": ["staff"],
        "client_id": "idgate",
    } | overrides


def browser_login(stack: Stack, client: httpx.Client, path: str, *, username: str = "alice") -> BrowserLogin:
    """Navigate to ``path`` (or an absolute https URL) on the stack like a browser; see
    :func:`idgate_devstack.navigate.browser_login`."""
    return navigate.browser_login(client, path, site=stack.url, username=username)
