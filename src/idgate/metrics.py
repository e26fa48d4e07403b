"""Prometheus metrics of one idgate process (text exposition at ``GET /metrics``).

Counted on the hot path (prometheus-client, one registry per app — no global registry):
    idgate_decisions_total{status,reason,route,upstream,mode}
                                              decisions: answer status (200, 302, 400, 401, 403, 503), the first
                                              reason code (:data:`REASON_CODES`, anything else ``other``), the
                                              route and upstream names of the configuration (``none`` when no
                                              route matched, ``other`` for a name not in it), and the adapter that
                                              asked (``spoe``, ``auth_request``; ``none`` when not said)
    idgate_decision_seconds                   decision latency histogram (seconds)
    idgate_logins_started_total, idgate_logins_completed_total, idgate_logins_failed_total{reason}
    idgate_sign_outs_total, idgate_sign_outs_refused_total{reason}
    idgate_backchannel_logouts_total, idgate_backchannel_logouts_refused_total{reason}
                                              browser SSO endpoints (:mod:`idgate.sso.routes`, via :meth:`sso_event`)
Read at scrape time from the components' own counters (no work per request):
    idgate_config_info{policy,version}        1; ``policy`` is :func:`idgate.fingerprint.policy_hash` (at startup)
    idgate_token_cache_hits_total / _misses_total / _entries, idgate_token_cache_hit_ratio
    idgate_jwks_fetches_total{issuer}, idgate_jwks_fetch_failures_total{issuer}, idgate_jwks_keys_skipped_total{issuer},
    idgate_jwks_unusable_sets_total{issuer} (answers without one usable key, kept out like failures),
    idgate_jwks_withdrawn_keys_total{issuer}, idgate_jwks_ready{issuer}, idgate_jwks_degraded{issuer} (1 while the
    last fetch failed and the last good keys serve), idgate_jwks_keys{issuer} (keys held)
    idgate_jwks_age_seconds{issuer} (seconds since the newest good fetch; absent before the first)
    idgate_assertions_minted_total, idgate_assertions_reused_total
    idgate_session_cache_hits_total / _misses_total (decoded session cookies)
    idgate_session_refreshes_total{result}    ``ok``, ``transient_failure``, ``invalid_grant``, ``rejected``
    idgate_store_up (1: the shared store answers; memory: always), idgate_store_errors_total (failed or late store
    calls), idgate_store_pending_revocations (queued while Redis is down), idgate_store_dropped_revocations_total
    idgate_decision_memo_hits_total / _misses_total / _invalidations_total / _entries (:mod:`idgate.memo`)
    idgate_spoa_<counter>_total for each counter of the SPOA agent (connections, healthchecks, notifies, denies,
    handler_errors, handler_timeouts, protocol_errors, untrusted_callers, tls_errors)
Denies decided by the adapters (``untrusted_caller`` at /auth and at the SPOA port, ``invalid_encoding``, the
agent's ``handler_timeout`` …) are in ``idgate_decisions_total`` too (:meth:`idgate.decision.DecisionEngine.refused`).
Every label has a bounded set of values (Prometheus "Instrumentation" guide: no unbounded cardinality): reason
codes are a fixed vocabulary, route and upstream names come from the configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from idgate.assertion import AssertionSigner
from idgate.facts import Decision
from idgate.jwks import JwksCache
from idgate.store.base import StoreHealth
from idgate.token_cache import TokenCache

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MODES = frozenset({"spoe", "auth_request"})
"""The adapters that ask for decisions (the ``mode`` label)."""


class _RefreshCounts(Protocol):
    def as_dict(self) -> Mapping[str, int]: ...


class SessionCounters(Protocol):
    """What the metrics read from the session manager (:class:`idgate.sso.manager.SessionManager`) at scrape time;
    a protocol, so this module needs no import of the SSO wing."""

    @property
    def decoded_hits(self) -> int: ...

    @property
    def decoded_misses(self) -> int: ...

    @property
    def refresh_stats(self) -> _RefreshCounts: ...


REASON_CODES = frozenset(
    {
        # allows
        "public_route", "authenticated", "role_granted", "group_granted",
        # 302 / 401: no or unusable credential (README "The decision"; idgate.errors.TokenError)
        "login_required", "missing_credentials", "unsupported_scheme", "malformed_authorization", "invalid_token",
        "invalid_signature", "expired", "not_yet_valid", "invalid_audience", "invalid_issuer", "unknown_kid",
        "alg_not_allowed", "forbidden_header", "unsupported_crit", "invalid_typ", "invalid_claims",
        "invalid_claim_type", "token_too_large", "keys_unavailable", "unknown_kid_pending",
        # 403
        "missing_role_or_group", "no_route", "unsafe_identity", "unverified_email", "untrusted_caller",
        # 400
        "invalid_path", "invalid_host", "duplicate_authorization", "missing_facts", "invalid_encoding",
        # 503: late or failed decisions, the SPOA agent's own denies
        "decision_timeout", "internal_error", "handler_timeout", "handler_error", "unknown_message",
        "missing_argument", "duplicate_argument", "ack_too_large",
        # browser SSO: logins, sign-outs, back-channel logouts (idgate.sso.routes, idgate.sso.oidc)
        "site_not_configured", "idp_error", "idp_unavailable", "login_state_missing", "state_mismatch",
        "bad_callback", "no_id_token", "bad_metadata", "bad_response", "bad_token_response", "invalid_grant",
        "invalid_client", "invalid_request", "subject_changed",
        "issuer_mismatch", "invalid_nonce", "invalid_at_hash", "session_too_large", "cross_site", "csrf",
        "invalid_logout_token", "logout_token_too_old", "jti_replayed", "duplicate_parameter",
    }
)  # fmt: skip
"""The reason codes a ``reason`` label may carry; any other value is counted as ``other`` (bounded labels)."""
_SSO_EVENTS = {
    "login_start": ("logins_started", False),
    "login": ("logins_completed", False),
    "login_failed": ("logins_failed", True),
    "login_refused": ("logins_failed", True),
    "sign_out": ("sign_outs", False),
    "sign_out_refused": ("sign_outs_refused", True),
    "backchannel_logout": ("backchannel_logouts", False),
    "backchannel_logout_refused": ("backchannel_logouts_refused", True),
}


def reason_label(reason: str | None) -> str:
    """``reason`` when it is one of :data:`REASON_CODES`, else ``other`` (``none`` when there is no reason)."""
    if not reason:
        return "none"
    return reason if reason in REASON_CODES else "other"


class _ComponentCollector(Collector):
    def __init__(
        self,
        *,
        tokens: TokenCache | None,
        caches: Sequence[JwksCache],
        assertions: Callable[[], AssertionSigner | None],
        sessions: SessionCounters | None,
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
        yield from self._jwks()
        if self._sessions is not None:
            yield CounterMetricFamily(
                "idgate_session_cache_hits", "Decoded-session cache hits", value=self._sessions.decoded_hits
            )
            yield CounterMetricFamily(
                "idgate_session_cache_misses", "Decoded-session cache misses", value=self._sessions.decoded_misses
            )
            refreshes = CounterMetricFamily(
                "idgate_session_refreshes", "Session refreshes at the IdP by result", labels=["result"]
            )
            for result, count in self._sessions.refresh_stats.as_dict().items():
                refreshes.add_metric([result], count)
            yield refreshes
        signer = self._assertions()
        if signer is not None:
            stats = signer.stats
            yield CounterMetricFamily("idgate_assertions_minted", "Signed assertions minted", value=stats.minted)
            yield CounterMetricFamily("idgate_assertions_reused", "Signed assertions reused", value=stats.reused)

    def _jwks(self) -> Iterable[Metric]:
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
        age = GaugeMetricFamily(
            "idgate_jwks_age_seconds", "Seconds since the newest good JWKS fetch", labels=["issuer"]
        )
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
            if cache.stats.last_success is not None:
                age.add_metric(name, max(0.0, cache.clock() - cache.stats.last_success))
        yield from (fetches, failures, skipped, unusable, withdrawn, ready, degraded, held, age)


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


class _GaugeCollector(Collector):
    def __init__(self, *, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._name = name
        self._help = help_text
        self._read = read

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self._name, self._help, value=self._read())


class Metrics:
    """The registry of one app; pass it to the decision engine and mount :meth:`exposition` at ``/metrics``.

    ``routes`` and ``upstreams`` are the configuration's names (the only values of those labels, plus ``none``
    and ``other``); ``policy`` is the configuration's :func:`~idgate.fingerprint.policy_hash`, ``version`` idgate's.
    """

    def __init__(
        self,
        *,
        routes: Iterable[str] = (),
        upstreams: Iterable[str] = (),
        policy: str = "",
        version: str = "",
    ) -> None:
        self.registry = CollectorRegistry()
        self._routes = frozenset(routes)
        self._upstreams = frozenset(upstreams)
        self._decisions = Counter(
            "idgate_decisions",
            "Decisions by answer status, first reason code, route, upstream and adapter mode",
            ["status", "reason", "route", "upstream", "mode"],
            registry=self.registry,
        )
        self._children: dict[tuple[int, str, str | None, str | None, str | None], Any] = {}
        self._latency = Histogram(
            "idgate_decision_seconds", "Decision latency in seconds", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        info = GaugeMetricFamily(
            "idgate_config_info", "The loaded configuration: policy hash, idgate version", labels=["policy", "version"]
        )
        info.add_metric([policy, version], 1.0)
        self.registry.register(_Static(info))
        sso = {
            "logins_started": ("Browser logins started (redirects to the IdP)", ()),
            "logins_completed": ("Browser logins completed (a new session)", ()),
            "logins_failed": ("Browser logins failed or refused, by reason", ("reason",)),
            "sign_outs": ("Sign-outs completed", ()),
            "sign_outs_refused": ("Sign-outs refused, by reason", ("reason",)),
            "backchannel_logouts": ("Back-channel logouts accepted", ()),
            "backchannel_logouts_refused": ("Back-channel logout tokens refused, by reason", ("reason",)),
        }
        self._sso = {
            name: Counter(f"idgate_{name}", help_text, labels, registry=self.registry)
            for name, (help_text, labels) in sso.items()
        }

    def observe(self, decision: Decision, *, mode: str | None, seconds: float) -> None:
        """Count one decision (``mode``: the adapter that asked) and its latency in seconds."""
        self._child(decision, mode).inc()
        self._latency.observe(seconds)

    def bound(self, decision: Decision, *, mode: str | None) -> Callable[[float], None]:
        """:meth:`observe` for ``decision`` with its labels resolved once: call it with the seconds of each
        request answered with that decision (a memoised answer, :mod:`idgate.memo`)."""
        inc, latency = self._child(decision, mode).inc, self._latency.observe

        def observe(seconds: float) -> None:
            inc()
            latency(seconds)

        return observe

    def _child(self, decision: Decision, mode: str | None) -> Any:
        route, upstream = decision.route, decision.upstream
        key = (decision.status, decision.reasons[0] if decision.reasons else "", route, upstream, mode)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._decisions.labels(
                str(decision.status),
                reason_label(key[1]),
                self._name(route, self._routes),
                self._name(upstream, self._upstreams),
                mode if mode in MODES else "none",
            )
        return child

    @staticmethod
    def _name(name: str | None, known: frozenset[str]) -> str:
        if not name:
            return "none"
        return name if name in known else "other"

    def sso_event(self, event: str, reason: str | None = None) -> None:
        """Count one browser-SSO event by its log name (``login_start``, ``login``, ``login_failed``,
        ``login_refused``, ``sign_out``, ``sign_out_refused``, ``backchannel_logout``,
        ``backchannel_logout_refused``); other events are not counted."""
        found = _SSO_EVENTS.get(event)
        if found is None:
            return
        name, by_reason = found
        counter = self._sso[name]
        (counter.labels(reason_label(reason)) if by_reason else counter).inc()

    def watch(
        self,
        *,
        tokens: TokenCache | None,
        caches: Sequence[JwksCache],
        assertions: Callable[[], AssertionSigner | None] = lambda: None,
        sessions: SessionCounters | None = None,
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

    def watch_memo(self, read: Callable[[], Mapping[str, int]], entries: Callable[[], int]) -> None:
        """Expose the memo of finished allows (:mod:`idgate.memo`): ``read()`` → ``hits``/``misses``/
        ``invalidations`` as ``idgate_decision_memo_<name>_total``, ``entries()`` as ``idgate_decision_memo_entries``.
        """
        self.registry.register(
            _CountersCollector(prefix="idgate_decision_memo", help_text="Decision memo counter", read=read)
        )
        self.registry.register(
            _GaugeCollector(name="idgate_decision_memo_entries", help_text="Allows memoised", read=entries)
        )

    def exposition(self) -> bytes:
        """The text exposition format (``text/plain; version=0.0.4``)."""
        return generate_latest(self.registry)


class _Static(Collector):
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        yield self._metric
