"""The settings a hot reload may not change (idgate.config_reload)."""

from __future__ import annotations

from typing import Any

from fake_issuer import config

from idgate.config import Config, SpoaConfig
from idgate.config_reload import restart_only_changes


def changed(base: Config, **updates: Any) -> Config:
    return base.model_copy(update=updates)


def test_same_config_and_policy_changes_need_no_restart() -> None:
    base = config()
    assert restart_only_changes(base, config()) == []
    routes = base.routes[:1]
    assert restart_only_changes(base, changed(base, routes=routes)) == []
    trusted = base.server.model_copy(update={"trusted_callers": ("10.0.0.0/8",), "token_cache_entries": 0})
    assert restart_only_changes(base, changed(base, server=trusted)) == []


def test_listener_and_store_changes_are_named_key_by_key() -> None:
    base = config()
    server = base.server.model_copy(update={"port": base.server.port + 1, "metrics_bind": "127.0.0.1:9999"})
    store = base.store.model_copy(update={"key_prefix": "other:"})
    assert restart_only_changes(base, changed(base, server=server, store=store)) == [
        "server.port",
        "server.metrics_bind",
        "store.key_prefix",
    ]


def test_adding_or_removing_the_spoa_section_needs_a_restart() -> None:
    base = config()
    with_spoa = changed(base, spoa=SpoaConfig())
    assert restart_only_changes(base, with_spoa) == ["spoa"]
    assert restart_only_changes(with_spoa, base) == ["spoa"]
    agent = SpoaConfig().model_copy(update={"max_in_flight": 8})
    assert restart_only_changes(with_spoa, changed(with_spoa, spoa=agent)) == ["spoa.max_in_flight"]


def test_the_decision_cache_and_runtime_api_need_a_restart_and_workers_are_not_compared() -> None:
    base = config()
    cache = base.cache.model_copy(update={"max_ttl_seconds": base.cache.max_ttl_seconds + 5})
    haproxy = base.haproxy.model_copy(update={"runtime_api": ("tcp:127.0.0.1:9999",)})
    server = base.server.model_copy(update={"workers": 3})
    assert restart_only_changes(base, changed(base, cache=cache, haproxy=haproxy, server=server)) == [
        "cache.max_ttl_seconds",
        "haproxy.runtime_api",
    ]  # server.workers: read by the supervisor at start only (the CLI may override it), never by a reload
