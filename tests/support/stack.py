"""The real stack on loopback for the e2e and browser tests (fixtures: tests/conftest.py), built by
:mod:`idgate_devstack.stack` on free ports with a generated config, plus helpers to forge tokens and log in.

client (httpx, real TLS) → HAProxy 2.8 (shipped haproxy.cfg + idgate-auth.lua) → idgate (``idgate serve``,
a child process) → echo upstreams (app, grafana, looker) and the gRPC echo (over TLS), with tokens from the real
OpenID Provider (npm ``oidc-provider``, HTTPS) obtained by a real authorization code + PKCE login.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import httpx

from idgate_devstack import navigate
from idgate_devstack.navigate import BrowserLogin
from idgate_devstack.stack import Mode, Stack, StackPlan, start_stack
from idgate_devstack.stack_config import ASSERTION_ISSUER, AUDIENCE, CLIENT_SECRET, GRPC_AUDIENCE, stack_config

__all__ = [
    "ASSERTION_ISSUER",
    "AUDIENCE",
    "AUTH_TIMEOUT_MS",
    "CLIENT_SECRET",
    "GRPC_AUDIENCE",
    "HTTP_TIMEOUT_SECONDS",
    "STREAM_TIMEOUT_SECONDS",
    "Mode",
    "Stack",
    "access_claims",
    "browser_login",
    "run_stack",
    "stack_config",
]

AUTH_TIMEOUT_MS = 500
HTTP_TIMEOUT_SECONDS = 3  # HAProxy's plain HTTP inactivity timeout in the test stack (IDGATE_TIMEOUT)
STREAM_TIMEOUT_SECONDS = 6  # its gRPC stream inactivity timeout (IDGATE_STREAM_TIMEOUT)


def suite_cache_on() -> bool:
    """Whether this test run keeps the decision cache in HAProxy on for the shared stacks: ``IDGATE_TEST_CACHE=off``
    runs the end-to-end suite without it (the cache's own tests then skip: they need it on)."""
    return os.environ.get("IDGATE_TEST_CACHE", "on") != "off"


def purge_trials() -> int:
    """Sign-outs timed by the purge test: ``IDGATE_PURGE_TRIALS`` (default 30; the issue's figure is over 100)."""
    return int(os.environ.get("IDGATE_PURGE_TRIALS", "30"))


def run_stack(
    root: Path,
    *,
    mode: Mode = "spoe",
    token_ttl: int = 300,
    refresh_before: float = 60,
    jwks: dict[str, Any] | None = None,
    fault_proxy: bool = False,
    tls: bool = False,
    idgate_extra: dict[str, Any] | None = None,
    replicas: int = 1,
    idp_profile: str = "generic",
    graph_users: dict[str, list[str]] | None = None,
    issuer_extra: dict[str, Any] | None = None,
    second_idp: bool = False,
    cache: bool = True,
    auth_timeout_ms: int | None = None,
    workers: int | None = 1,
) -> contextlib.AbstractContextManager[Stack]:
    """Start the whole stack under ``root``; ``mode`` is how HAProxy asks idgate (``spoe`` or ``auth_request``),
    ``token_ttl`` the IdP's access/ID token lifetime (seconds), ``refresh_before`` idgate's
    ``sessions.refresh_before_seconds``, ``jwks`` the issuer's ``jwks`` settings (default: 0 s cooldowns);
    ``fault_proxy``: idgate fetches the IdP's keys through a FaultProxy (``Stack.faults``); ``tls``: HAProxy speaks
    TLS to idgate's HTTP server and SPOA agent (``IDGATE_SPOA_TLS`` / ``IDGATE_SERVICE_TLS``); ``idgate_extra`` is
    merged into idgate's config sections; ``replicas`` the number of idgate processes (more than one share a real
    Redis); ``idp_profile`` the test IdP's provider profile (and the issuer's ``provider``); ``graph_users`` starts
    the Microsoft Graph contract stub with those users (oid → groups) for Entra ID overage; ``issuer_extra`` keys
    merged into the issuer's entry; ``second_idp``: a second login IdP (``Stack.second_idp``,
    ``StackPlan.second_idp``); ``cache``: the decision cache in HAProxy (on in the shipped config); ``auth_timeout_ms``
    HAProxy's auth budget (None: :data:`AUTH_TIMEOUT_MS`); ``workers`` idgate's ``--workers`` (more than one: a
    real Redis too). Free ports, the IdP's
    ``/test/*`` and logout URIs on, TLS to the gRPC upstream, HAProxy's auth timeout :data:`AUTH_TIMEOUT_MS` and
    short inactivity timeouts."""
    plan = StackPlan(
        run_dir=root,
        mode=mode,
        ports="free",
        token_ttl=token_ttl,
        refresh_before=refresh_before,
        idp_test_endpoints=True,
        idp_logout=True,
        grpc_tls=True,
        auth_timeout_ms=AUTH_TIMEOUT_MS if auth_timeout_ms is None else auth_timeout_ms,
        http_timeout=f"{HTTP_TIMEOUT_SECONDS}s",
        stream_timeout=f"{STREAM_TIMEOUT_SECONDS}s",
        jwks=jwks,
        fault_proxy=fault_proxy,
        tls=tls,
        idgate_extra=idgate_extra,
        cache=cache,
        replicas=replicas,
        idp_profile=idp_profile,
        graph_users=graph_users,
        issuer_extra=issuer_extra,
        second_idp=second_idp,
        workers=workers,
    )
    return start_stack(plan)


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
