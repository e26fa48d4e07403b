"""The idgate config and secrets of a generated stack (the e2e tests' stack; the demo runs config/demo.yaml)."""

from __future__ import annotations

import base64
import json
import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from idgate_devstack.certs import DevCerts
from idgate_devstack.idp import IdpConfig

AUDIENCE: Final = "https://api.idgate.test"
"""The IdP's resource indicator: the ``aud`` of its access tokens, the audience idgate accepts."""
CLIENT_SECRET: Final = IdpConfig.client_secret
"""The test IdP's one static client (``idgate``) secret."""
ASSERTION_ISSUER: Final = "https://idgate.test"
GRPC_AUDIENCE: Final = "demo-echo"


def write_secrets(secrets_dir: Path) -> None:
    """``client_secret`` (:data:`CLIENT_SECRET`) and, unless there already, ``session_keys`` (one random 32-byte
    key, base64: kept so browser sessions survive a restart), mode 0600, in ``secrets_dir`` (created)."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    (secrets_dir / "client_secret").write_text(CLIENT_SECRET)
    keys = secrets_dir / "session_keys"
    if not keys.exists():
        keys.write_text(base64.b64encode(os.urandom(32)).decode())
    for path in (secrets_dir / "client_secret", keys):
        path.chmod(0o600)


LOOKER_SECRET_FILES: Final = ("looker_embed_secret", "looker_client_secret")
"""config/demo.yaml's ``analytics`` (looker_embed) upstream secrets: the embed secret and the API3 client secret."""


def write_looker_secrets(secrets_dir: Path) -> dict[str, str]:
    """Fresh random :data:`LOOKER_SECRET_FILES` (mode 0600) in ``secrets_dir``; returns file name → value, for the
    Looker contract stub that must share them."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    values = {name: base64.urlsafe_b64encode(os.urandom(32)).decode() for name in LOOKER_SECRET_FILES}
    for name, value in values.items():
        (secrets_dir / name).write_text(value)
        (secrets_dir / name).chmod(0o600)
    return values


_GENERATED_CONFIG = string.Template("""\
server: {host: 127.0.0.1}
spoa: {host: 127.0.0.1, port: $spoa_port}
issuers:
  - {name: testidp, issuer: $issuer, ca_file: $ca_file, audiences: [$audience], algorithms: [RS256], leeway_seconds: 2,
     client_id: idgate, client_secret_file: $client_secret_file}
login: {issuer: testidp, redirect_uris: [$redirect_uri], post_logout_redirect_uri: $site_root, resource: $audience}
sessions: {keys_file: $keys_file, idle_timeout_seconds: 3600, refresh_before_seconds: $refresh_before}
assertion: {issuer: $assertion_issuer, lifetime_seconds: 120}
role_sets:
  grafana: {roles: [Viewer, Editor, Admin], from_groups: {staff: [Viewer], grafana-admins: [Admin]}}
  looker: {roles: [looker_viewer, looker_admin], from_groups: {looker-analysts: [looker_viewer]}}
  echo: {roles: [echo_user, echo_admin], from_groups: {staff: [echo_user], grafana-admins: [echo_admin]}}
upstreams:
  app: {profile: generic}
  grafana: {profile: grafana, role_set: grafana, user_from: email, assertion_audience: grafana}
  looker: {profile: gate, role_set: looker}
  grpc: {profile: generic, role_set: echo, assertion_audience: $grpc_audience}
routes:
  - {name: echo-admin, grpc: /demo.Echo/Admin, upstream: grpc, allow: {roles: [echo_admin]}}
  - {name: echo-stream, grpc: /demo.Echo/Ticks, upstream: grpc, allow: {authenticated: true}, authorization: strip}
  - {name: echo, grpc: "/demo.Echo/*", upstream: grpc, allow: {roles: [echo_user]}}
  - {name: public, path: /public, upstream: app, public: true}
  - {name: grafana, path: /grafana, upstream: grafana, allow: {roles: [Viewer, Editor, Admin]}}
  - {name: looker, path: /looker, upstream: looker, allow: {groups: [looker-analysts]}}
  - {name: admin, path: /admin, upstream: app, allow: {groups: [grafana-admins]}}
  - {name: app, path: /app, upstream: app, allow: {authenticated: true}}
""")
"""The generated config, flow-style like config/demo.yaml; every ``$name`` stands for one JSON scalar (the issuer's
``jwks`` and ``jwks_uri`` are set after parsing)."""


def stack_config(
    issuer: str,
    ca_file: Path,
    *,
    site: str,
    secrets_dir: Path,
    refresh_before: float = 60,
    spoa_port: int = 9181,
    jwks: Mapping[str, Any] | None = None,
    jwks_uri: str | None = None,
) -> dict[str, Any]:
    """The idgate config of a generated stack (mirrors config/demo.yaml, with 0 s refetch cooldowns and 2 s leeway).

    ``site`` is HAProxy's https origin; the secrets (:func:`write_secrets`) are written to ``secrets_dir``;
    ``refresh_before``: ``sessions.refresh_before_seconds``; ``spoa_port``: idgate's SPOA listener; ``jwks``: the
    issuer's ``jwks`` settings (None: both refetch cooldowns 0 s); ``jwks_uri``: fetch its keys there, not from
    discovery.
    """
    write_secrets(secrets_dir)
    values: dict[str, object] = {
        "spoa_port": spoa_port,
        "issuer": issuer,
        "ca_file": str(ca_file),
        "audience": AUDIENCE,
        "client_secret_file": str(secrets_dir / "client_secret"),
        "redirect_uri": f"{site}/.idgate/callback",
        "site_root": f"{site}/",
        "keys_file": str(secrets_dir / "session_keys"),
        "refresh_before": refresh_before,
        "assertion_issuer": ASSERTION_ISSUER,
        "grpc_audience": GRPC_AUDIENCE,
    }
    config: dict[str, Any] = yaml.safe_load(_GENERATED_CONFIG.substitute({k: json.dumps(v) for k, v in values.items()}))
    issuer_config = config["issuers"][0]
    issuer_config["jwks"] = (
        dict(jwks) if jwks is not None else {"refetch_cooldown_seconds": 0, "unknown_kid_cooldown_seconds": 0}
    )
    if jwks_uri:  # pinned on purpose (a fault proxy on 127.0.0.1 for the IdP at localhost)
        issuer_config |= {"jwks_uri": jwks_uri, "jwks_uri_host_mismatch_ok": True}
    return config


def second_idp_redirect_uris(site: str, https_port: int) -> tuple[str, str]:
    """The second login IdP's redirect URIs: its own callback on ``site`` and on ``https://localhost:<port>``."""
    return (f"{site}/.idgate/callback/second", f"https://localhost:{https_port}/.idgate/callback/second")


def with_second_idp(config: Mapping[str, Any], issuer: str, *, site: str, https_port: int) -> dict[str, Any]:
    """``config`` (:func:`stack_config`) with a second login IdP ``second`` at ``issuer`` (a copy of the first
    issuer's settings): ``login.issuers: [testidp, second]``, its per-IdP redirect URIs
    (:func:`second_idp_redirect_uris`) and ``default_issuer_by_host: {localhost: second}``."""
    first = config["issuers"][0]
    login = {k: v for k, v in config["login"].items() if k != "issuer"}
    login |= {
        "issuers": [first["name"], "second"],
        "redirect_uris": [*login["redirect_uris"], *second_idp_redirect_uris(site, https_port)],
        "default_issuer_by_host": {"localhost": "second"},
    }
    second = {k: v for k, v in first.items() if k not in ("jwks_uri", "jwks_uri_host_mismatch_ok")}
    return dict(config) | {
        "issuers": [*config["issuers"], second | {"name": "second", "issuer": issuer}],
        "login": login,
    }


def cache_config(*, enabled: bool, runtime_api: Path) -> dict[str, Any]:
    """The decision cache's sections: ``cache.enabled`` and HAProxy's Runtime API socket (purges and sweeps)."""
    return {"cache": {"enabled": enabled}, "haproxy": {"runtime_api": [f"unix:{runtime_api}"]}}


def tls_config(certs: DevCerts, *, mode: str, metrics_port: int) -> dict[str, Any]:
    """The idgate config sections of the TLS variant: HTTPS (mutual in SPOE mode: HAProxy's Lua httpclient, the
    auth_request mode's caller, cannot present a client certificate in 2.8), SPOP over mutual TLS, /metrics on its
    own plain-HTTP bind (``metrics_port``)."""
    tls = {"cert_file": str(certs.cert), "key_file": str(certs.key)}
    return {
        "server": {"tls": tls | ({"ca_file": str(certs.ca)} if mode == "spoe" else {})}
        | {"metrics_bind": f"127.0.0.1:{metrics_port}"},
        "spoa": {"tls": tls | {"ca_file": str(certs.ca)}},
    }


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s sections merged in, one level deep."""
    return dict(base) | {k: (base.get(k) or {}) | v if isinstance(v, dict) else v for k, v in extra.items()}
