"""What a hot reload may change: the settings a running idgate cannot take without a restart.

A reload (``SIGHUP``, ``POST /admin/reload``, ``idgate reload``; :mod:`idgate.reload`) builds every component of the
new file and swaps them in at once. Some settings belong to things that live for the whole process — bound sockets,
the TLS files of the listeners, the shared store's connection — and a reload that changes one of them is **refused**
whole (nothing applied, the last good configuration stays), naming each setting, so an operator never believes a
change is live when it is not. Restart the process to apply them.

Restart-only (:data:`RESTART_ONLY`): ``server.host``, ``server.port``, ``server.tls``, ``server.metrics_bind``,
``server.decision_timeout_seconds`` (the SPOA agent's last-resort timeout is derived from it at start), every key of
``spoa`` (its listener and per-connection limits), every key of ``store`` (kind, url, credentials, TLS, prefix) and
``assertion.rotation.poll_seconds`` (the key-ring follower's period), every key of ``cache`` and ``haproxy`` (the
decision cache's purger and sweeper, and the Runtime API sockets they hold, are built once; every applied reload
clears HAProxy's decision cache). ``server.workers`` is read once, by the supervisor at start (``--workers`` may
override it), and a reload never changes the number of processes. With ``store.kind: redis``, adding an
``assertion`` section where there was none is refused too (the shared key ring is
followed from the start).
Everything else — issuers, routes, role sets, upstreams, audit, sessions (keys included: a reload is how session
keys rotate), login, assertion — is applied by a reload.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from idgate.config import Config

RESTART_ONLY: tuple[str, ...] = (
    "server.host",
    "server.port",
    "server.tls",
    "server.metrics_bind",
    "server.decision_timeout_seconds",
    "spoa",
    "store",
    "assertion.rotation.poll_seconds",
    "cache",
    "haproxy",
)
"""Dotted paths of the settings a reload refuses to change (a section name covers every key under it)."""


def _at(config: Config, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part) if value is not None else None
    return value


def _changed_keys(path: str, old: Any, new: Any) -> list[str]:
    """The dotted keys under ``path`` whose values differ (one level into a section, never a value itself)."""
    if old == new:
        return []
    if not isinstance(old, BaseModel) or not isinstance(new, BaseModel):
        return [path]
    keys = [f"{path}.{name}" for name in type(old).model_fields if getattr(old, name) != getattr(new, name)]
    return keys or [path]


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The restart-only settings (:data:`RESTART_ONLY`) that differ between ``old`` and ``new``, as dotted keys
    (``server.port``, ``spoa.max_in_flight``, ``store.url``); empty when a reload may apply ``new``. Secrets are
    compared, never named with their values."""
    changed: list[str] = []
    for path in RESTART_ONLY:
        changed += _changed_keys(path, _at(old, path), _at(new, path))
    return changed
