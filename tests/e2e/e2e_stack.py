"""The real stack on loopback: what it runs and handles on it (fixtures are in conftest.py).

client (httpx, real TLS) → HAProxy 2.8 (shipped haproxy.cfg + idgate-auth.lua) → idgate (``idgate serve``,
a child process) → echo upstreams (app, grafana, looker), with tokens from the real OpenID Provider
(npm ``oidc-provider``, HTTPS) obtained by a real authorization code + PKCE login.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from idgate.devstack.certs import DevCerts
from idgate.devstack.echo import EchoUpstream
from idgate.devstack.haproxy import Haproxy, HaproxySettings
from idgate.devstack.idp import TestIdp
from idgate.devstack.login import Tokens, login
from idgate.devstack.service import IdgateService

AUDIENCE = "https://api.idgate.test"
AUTH_TIMEOUT_MS = 500


def stack_config(issuer: str, ca_file: Path) -> dict[str, Any]:
    """The idgate config the e2e stack runs with (mirrors config/demo.yaml, with a 0 s refetch cooldown)."""
    return {
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
        },
        "upstreams": {
            "app": {"profile": "generic"},
            "grafana": {"profile": "grafana", "role_set": "grafana", "user_from": "email"},
            "looker": {"profile": "looker", "role_set": "looker"},
        },
        "routes": [
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
    upstreams: dict[str, EchoUpstream]
    redirect_uri: str

    @property
    def url(self) -> str:
        return self.settings.https_url

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

    def reset_upstreams(self) -> None:
        for upstream in self.upstreams.values():
            upstream.reset()

    def upstream_hits(self) -> int:
        return sum(len(u.requests()) for u in self.upstreams.values())
