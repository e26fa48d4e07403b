"""Prometheus metrics of one idgate process (text exposition at ``GET /metrics``).

Counted on the hot path (prometheus-client, one registry per app — no global registry):
    idgate_decisions_total{status,reason,route,upstream,mode}
                                              decisions: answer status (200, 302, 400, 401, 403, 503), the first
                                              reason code (:data:`REASON_CODES`, anything else ``other``), the
                                              route and upstream names of the configuration (``none`` when no
                                              route matched, ``other`` for a name not in it), and the adapter that
                                              asked (``spoe``, ``auth_request``; ``none`` when not said)
    idgate_decision_seconds                   decision latency histogram (seconds)
    idgate_denials_last_minute{reason}        gauge: denies of the last 60 s by reason (:mod:`idgate.recent`), for
                                              ``idgate status``; a reason with none in the window is absent
    idgate_logins_started_total, idgate_logins_completed_total, idgate_logins_failed_total{reason}
    idgate_sign_outs_total, idgate_sign_outs_refused_total{reason}
    idgate_backchannel_logouts_total, idgate_backchannel_logouts_refused_total{reason}
                                              browser SSO endpoints (:mod:`idgate.sso.routes`, via :meth:`sso_event`)
Read at scrape time from the components' own counters (no work per request):
    idgate_config_info{policy,version}        1; ``policy`` is :func:`idgate.fingerprint.policy_hash` of the
                                              configuration in force (updated by a reload)
    idgate_policy_info{policy}                1; the same hash alone
    idgate_config_reloads_total, idgate_config_reload_failures_total,
    idgate_config_last_reload_success_timestamp_seconds
                                              hot reloads (:mod:`idgate.reload`): asked, refused, last applied
    idgate_token_cache_hits_total / _misses_total / _entries, idgate_token_cache_hit_ratio
    idgate_jwks_fetches_total{issuer}, idgate_jwks_fetch_failures_total{issuer}, idgate_jwks_keys_skipped_total{issuer},
    idgate_jwks_unusable_sets_total{issuer} (answers without one usable key, kept out like failures),
    idgate_jwks_withdrawn_keys_total{issuer}, idgate_jwks_ready{issuer}, idgate_jwks_degraded{issuer} (1 while the
    last fetch failed and the last good keys serve), idgate_jwks_keys{issuer} (keys held)
    idgate_jwks_age_seconds{issuer} (seconds since the newest good fetch; absent before the first)
    idgate_assertions_minted_total, idgate_assertions_reused_total
    idgate_session_cache_hits_total / _misses_total (decoded session cookies)
    idgate_session_refreshes_total{result}    ``ok``, ``transient_failure``, ``invalid_grant``, ``rejected``
    idgate_session_group_notes_total{reason}  a claim source gave no groups: ``groups_overage_unresolved``,
                                              ``userinfo_unavailable``, ``access_token_unverified`` … (fixed set)
    idgate_store_up (1: the shared store answers; memory: always), idgate_store_errors_total (failed or late store
    calls), idgate_store_pending_revocations (queued while Redis is down), idgate_store_dropped_revocations_total
    idgate_spoa_<counter>_total for each counter of the SPOA agent (connections, healthchecks, healthchecks_not_ready,
    notifies, denies, handler_errors, handler_timeouts, protocol_errors, untrusted_callers, tls_errors)
Decision cache in HAProxy (:mod:`idgate.cache_entry`, :mod:`idgate.cache_purge`):
    idgate_cache_fills_total                  allows sent with cache_ttl / cache_entry (counted on the hot path)
    idgate_cache_purges_total{cause}, idgate_cache_purge_failures_total, idgate_cache_sweep_failures_total,
    idgate_cache_evictions_total{reason}, and per Runtime API socket at the last sweep: idgate_cache_entries,
    idgate_cache_hits_total, idgate_cache_misses_total (HAProxy's counters), idgate_cache_socket_up
    idgate_decision_memo_hits_total / _misses_total / _invalidations_total / _entries (:mod:`idgate.memo`)
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
from idgate.recent import RecentDenials
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
        # several login IdPs (login.issuers)
        "unknown_idp", "unknown_issuer",
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
            notes = CounterMetricFamily(
                "idgate_session_group_notes",
                "Logins and refreshes where a claim source gave no groups, by reason (idgate.sso.claim_sources)",
                labels=["reason"],
            )
            for reason, count in getattr(self._sessions, "group_notes", {}).items():
                notes.add_metric([reason], count)
            yield notes
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
        self.exposed: CollectorRegistry = self.registry
        """What :meth:`exposition` and the ``metrics_bind`` listener serve: this registry, or in a worker of
        ``idgate serve --workers N`` the sum over all workers (:func:`idgate.metrics_workers.worker_registry`)."""
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
        self._recent = RecentDenials()
        self._memo_collectors: tuple[Collector, ...] = ()
        self.registry.register(_RecentCollector(self._recent))
        self._fills = Counter(
            "idgate_cache_fills", "Allows marked cacheable for the decision cache in HAProxy", registry=self.registry
        )
        self._version = version
        self._policy = policy
        self.registry.register(_PolicyCollector(lambda: (self._policy, self._version)))
        self._components: Collector | None = None
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

    def reconfigure(self, *, routes: Iterable[str], upstreams: Iterable[str], policy: str) -> None:
        """A reload applied a new configuration: its route and upstream names become the known label values and
        ``policy`` the hash in ``idgate_config_info`` / ``idgate_policy_info``; counters keep counting."""
        self._routes = frozenset(routes)
        self._upstreams = frozenset(upstreams)
        self._children = {}
        self._policy = policy

    def observe(self, decision: Decision, *, mode: str | None, seconds: float) -> None:
        """Count one decision (``mode``: the adapter that asked) and its latency in seconds."""
        self._child(decision, mode).inc()
        if decision.status != 200:
            reason = decision.reasons[0] if decision.reasons else ""
            self._recent.note(reason_label(reason) if reason else f"status_{decision.status}")
        self._latency.observe(seconds)
        if decision.cache_ttl > 0:
            self._fills.inc()

    def bound(self, decision: Decision, *, mode: str | None) -> Callable[[float], None]:
        """:meth:`observe` for ``decision`` with its labels resolved once: call it with the seconds of each
        request answered with that decision (a memoised answer, :mod:`idgate.memo`)."""
        inc, latency = self._child(decision, mode).inc, self._latency.observe
        fill = self._fills.inc if decision.cache_ttl > 0 else None

        def observe(seconds: float) -> None:
            inc()
            latency(seconds)
            if fill is not None:
                fill()

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
        """Expose the components' own counters at scrape time (a later call, after a reload, replaces them)."""
        if self._components is not None:
            self.registry.unregister(self._components)
        self._components = _ComponentCollector(tokens=tokens, caches=caches, assertions=assertions, sessions=sessions)
        self.registry.register(self._components)

    def watch_reloads(self, read: Callable[[], tuple[int, int, float]]) -> None:
        """Expose hot reloads at scrape time; ``read()`` → (attempts, refused, epoch seconds of the last applied
        reload or the start): ``idgate_config_reloads_total``, ``idgate_config_reload_failures_total``,
        ``idgate_config_last_reload_success_timestamp_seconds``."""
        self.registry.register(_ReloadCollector(read))

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
        for old in self._memo_collectors:  # a hot reload builds a new engine, and so a new memo
            self.registry.unregister(old)
        self._memo_collectors = (
            _CountersCollector(prefix="idgate_decision_memo", help_text="Decision memo counter", read=read),
            _GaugeCollector(name="idgate_decision_memo_entries", help_text="Allows memoised", read=entries),
        )
        for collector in self._memo_collectors:
            self.registry.register(collector)

    def exposition(self) -> bytes:
        """The text exposition format (``text/plain; version=0.0.4``)."""
        return generate_latest(self.exposed)


class _RecentCollector(Collector):
    def __init__(self, recent: RecentDenials) -> None:
        self._recent = recent

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "idgate_denials_last_minute",
            f"Denies of the last {self._recent.window_seconds} s by reason",
            labels=["reason"],
        )
        for reason, count in self._recent.totals().items():
            family.add_metric([reason], float(count))
        yield family


class _PolicyCollector(Collector):
    def __init__(self, read: Callable[[], tuple[str, str]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        policy, version = self._read()
        info = GaugeMetricFamily(
            "idgate_config_info", "The loaded configuration: policy hash, idgate version", labels=["policy", "version"]
        )
        info.add_metric([policy, version], 1.0)
        yield info
        policy_info = GaugeMetricFamily("idgate_policy_info", "The policy hash in force", labels=["policy"])
        policy_info.add_metric([policy], 1.0)
        yield policy_info


class _ReloadCollector(Collector):
    def __init__(self, read: Callable[[], tuple[int, int, float]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        attempts, failures, last = self._read()
        yield CounterMetricFamily("idgate_config_reloads", "Configuration reloads asked (applied or refused)", attempts)
        yield CounterMetricFamily("idgate_config_reload_failures", "Configuration reloads refused", value=failures)
        yield GaugeMetricFamily(
            "idgate_config_last_reload_success_timestamp_seconds",
            "Epoch seconds of the last applied configuration (reload or start)",
            value=last,
        )
