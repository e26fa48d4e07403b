"""Prometheus metrics of one idgate process (text exposition at ``GET /metrics``).

Counted on the hot path (prometheus-client, one registry per app — no global registry):
    idgate_decisions_total{status}            decisions by answer status (200, 302, 400, 401, 403, 503)
    idgate_decision_seconds                   decision latency histogram (seconds)
Read at scrape time from the components' own counters (no work per request):
    idgate_token_cache_hits_total / _misses_total / _entries, idgate_token_cache_hit_ratio
    idgate_jwks_fetches_total{issuer}, idgate_jwks_fetch_failures_total{issuer}, idgate_jwks_keys_skipped_total{issuer},
    idgate_jwks_ready{issuer}
    idgate_assertions_minted_total, idgate_assertions_reused_total
    idgate_session_cache_hits_total / _misses_total (decoded session cookies)
    idgate_store_up (1: the shared store answers; memory: always), idgate_store_errors_total (failed or late store
    calls), idgate_store_pending_revocations (queued while Redis is down), idgate_store_dropped_revocations_total
    idgate_spoa_<counter>_total for each counter of the SPOA agent (connections, healthchecks, notifies, denies,
    handler_errors, handler_timeouts, protocol_errors)
Denies decided by the adapters (``untrusted_caller``, ``invalid_encoding``, the agent's ``handler_timeout`` …)
are in ``idgate_decisions_total`` too (:meth:`idgate.decision.DecisionEngine.refused`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from idgate.assertion import AssertionSigner
from idgate.jwks import JwksCache
from idgate.sso.manager import SessionManager
from idgate.store.base import StoreHealth
from idgate.token_cache import TokenCache

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _ComponentCollector(Collector):
    def __init__(
        self,
        *,
        tokens: TokenCache | None,
        caches: Sequence[JwksCache],
        assertions: Callable[[], AssertionSigner | None],
        sessions: SessionManager | None,
    ) -> None:
        self._sessions = sessions
        self._tokens = tokens
        self._caches = caches
        self._assertions = assertions

    def collect(self) -> Iterable[Metric]:
        if self._tokens is not None:
            hits, misses = self._tokens.hits, self._tokens.misses
            yield CounterMetricFamily("idgate_token_cache_hits", "Verified-token cache hits", value=hits)
            yield CounterMetricFamily("idgate_token_cache_misses", "Verified-token cache misses", value=misses)
            yield GaugeMetricFamily("idgate_token_cache_entries", "Tokens cached", value=len(self._tokens))
            ratio = hits / (hits + misses) if hits + misses else 0.0
            yield GaugeMetricFamily("idgate_token_cache_hit_ratio", "hits / (hits + misses) since start", value=ratio)
        fetches = CounterMetricFamily("idgate_jwks_fetches", "JWKS fetches", labels=["issuer"])
        failures = CounterMetricFamily("idgate_jwks_fetch_failures", "Failed JWKS fetches", labels=["issuer"])
        skipped = CounterMetricFamily(
            "idgate_jwks_keys_skipped", "Malformed or unusable JWKs skipped", labels=["issuer"]
        )
        ready = GaugeMetricFamily("idgate_jwks_ready", "1 once the issuer's keys were fetched", labels=["issuer"])
        for cache in self._caches:
            name = [cache.config.name]
            fetches.add_metric(name, cache.stats.fetches)
            failures.add_metric(name, cache.stats.failures)
            skipped.add_metric(name, cache.stats.skipped_keys)
            ready.add_metric(name, 1.0 if cache.ready else 0.0)
        yield from (fetches, failures, skipped, ready)
        if self._sessions is not None:
            yield CounterMetricFamily(
                "idgate_session_cache_hits", "Decoded-session cache hits", value=self._sessions.decoded_hits
            )
            yield CounterMetricFamily(
                "idgate_session_cache_misses", "Decoded-session cache misses", value=self._sessions.decoded_misses
            )
        signer = self._assertions()
        if signer is not None:
            stats = signer.stats
            yield CounterMetricFamily("idgate_assertions_minted", "Signed assertions minted", value=stats.minted)
            yield CounterMetricFamily("idgate_assertions_reused", "Signed assertions reused", value=stats.reused)


class _StoreCollector(Collector):
    def __init__(self, health: Callable[[], StoreHealth]) -> None:
        self._health = health

    def collect(self) -> Iterable[Metric]:
        h = self._health()
        yield GaugeMetricFamily("idgate_store_up", f"1 when the {h.kind} store answers", value=float(h.up and h.synced))
        yield CounterMetricFamily("idgate_store_errors", "Store calls that failed or timed out", value=h.errors)
        yield GaugeMetricFamily("idgate_store_pending_revocations", "Revocations queued for the store", value=h.pending)
        yield CounterMetricFamily(
            "idgate_store_dropped_revocations", "Queued revocations dropped (queue full)", value=h.dropped
        )


class _CountersCollector(Collector):
    def __init__(self, *, prefix: str, help_text: str, read: Callable[[], Mapping[str, int]]) -> None:
        self._prefix = prefix
        self._help = help_text
        self._read = read

    def collect(self) -> Iterable[Metric]:
        for name, value in self._read().items():
            yield CounterMetricFamily(f"{self._prefix}_{name}", f"{self._help}: {name}", value=value)


class Metrics:
    """The registry of one app; pass it to the decision engine and mount :meth:`exposition` at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._decisions = Counter("idgate_decisions", "Decisions by answer status", ["status"], registry=self.registry)
        self._by_status: dict[int, Any] = {}
        self._latency = Histogram(
            "idgate_decision_seconds", "Decision latency in seconds", buckets=LATENCY_BUCKETS, registry=self.registry
        )

    def observe(self, *, status: int, seconds: float) -> None:
        """Count one decision."""
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._decisions.labels(str(status))
        child.inc()
        self._latency.observe(seconds)

    def watch(
        self,
        *,
        tokens: TokenCache | None,
        caches: Sequence[JwksCache],
        assertions: Callable[[], AssertionSigner | None] = lambda: None,
        sessions: SessionManager | None = None,
    ) -> None:
        """Expose the components' own counters at scrape time."""
        self.registry.register(
            _ComponentCollector(tokens=tokens, caches=caches, assertions=assertions, sessions=sessions)
        )

    def watch_store(self, health: Callable[[], StoreHealth]) -> None:
        """Expose the shared store's health (``idgate_store_*``) at scrape time."""
        self.registry.register(_StoreCollector(health))

    def watch_spoa(self, read: Callable[[], Mapping[str, int]]) -> None:
        """Expose the SPOA agent's cumulative counters (``read()`` → name → count) as ``idgate_spoa_<name>_total``."""
        self.registry.register(_CountersCollector(prefix="idgate_spoa", help_text="SPOA agent counter", read=read))

    def exposition(self) -> bytes:
        """The text exposition format (``text/plain; version=0.0.4``)."""
        return generate_latest(self.registry)
