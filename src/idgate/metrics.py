"""Prometheus metrics of one idgate process (text exposition at ``GET /metrics``).

Counted on the hot path (prometheus-client, one registry per app — no global registry):
    idgate_decisions_total{status}            decisions by answer status (200, 302, 400, 401, 403, 503)
    idgate_decision_seconds                   decision latency histogram (seconds)
Read at scrape time from the components' own counters (no work per request):
    idgate_token_cache_hits_total / _misses_total / _entries, idgate_token_cache_hit_ratio
    idgate_jwks_fetches_total{issuer}, idgate_jwks_fetch_failures_total{issuer}, idgate_jwks_keys_skipped_total{issuer},
    idgate_jwks_unusable_sets_total{issuer} (answers without one usable key, kept out like failures),
    idgate_jwks_withdrawn_keys_total{issuer}, idgate_jwks_ready{issuer}, idgate_jwks_degraded{issuer} (1 while the
    last fetch failed and the last good keys serve), idgate_jwks_keys{issuer} (keys held)
    idgate_assertions_minted_total, idgate_assertions_reused_total
    idgate_session_cache_hits_total / _misses_total (decoded session cookies)
    idgate_spoa_<counter>_total for each counter of the SPOA agent (connections, healthchecks, notifies, denies,
    handler_errors, handler_timeouts, protocol_errors, untrusted_callers, tls_errors)
Denies decided by the adapters (``untrusted_caller`` at /auth and at the SPOA port, ``invalid_encoding``, the
agent's ``handler_timeout`` …) are in ``idgate_decisions_total`` too (:meth:`idgate.decision.DecisionEngine.refused`).
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
        unusable = CounterMetricFamily(
            "idgate_jwks_unusable_sets", "JWKS answers without one usable key (kept out)", labels=["issuer"]
        )
        withdrawn = CounterMetricFamily("idgate_jwks_withdrawn_keys", "Keys withdrawn by the issuer", labels=["issuer"])
        ready = GaugeMetricFamily("idgate_jwks_ready", "1 once the issuer's keys were fetched", labels=["issuer"])
        degraded = GaugeMetricFamily(
            "idgate_jwks_degraded", "1 while the last fetch failed and the last good keys serve", labels=["issuer"]
        )
        held = GaugeMetricFamily("idgate_jwks_keys", "Usable keys held", labels=["issuer"])
        for cache in self._caches:
            name = [cache.config.name]
            health = cache.health()
            fetches.add_metric(name, cache.stats.fetches)
            failures.add_metric(name, cache.stats.failures)
            skipped.add_metric(name, cache.stats.skipped_keys)
            unusable.add_metric(name, cache.stats.unusable_sets)
            withdrawn.add_metric(name, cache.stats.withdrawn_keys)
            ready.add_metric(name, 1.0 if health.ready else 0.0)
            degraded.add_metric(name, 1.0 if health.degraded else 0.0)
            held.add_metric(name, health.keys)
        yield from (fetches, failures, skipped, unusable, withdrawn, ready, degraded, held)
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

    def watch_spoa(self, read: Callable[[], Mapping[str, int]]) -> None:
        """Expose the SPOA agent's cumulative counters (``read()`` → name → count) as ``idgate_spoa_<name>_total``."""
        self.registry.register(_CountersCollector(prefix="idgate_spoa", help_text="SPOA agent counter", read=read))

    def exposition(self) -> bytes:
        """The text exposition format (``text/plain; version=0.0.4``)."""
        return generate_latest(self.registry)
