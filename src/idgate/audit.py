"""Structured JSON audit log: one line per decision on the ``idgate.audit`` logger.

Fields: ``ts`` (RFC 3339 UTC), ``event`` ("decision"), ``allow``, ``status``, ``reasons`` (reason codes),
``route``, ``upstream``, ``iss``, ``sub``, ``method``, ``host``, ``path``, ``source``, ``latency_ms``. A deny an
adapter decided before any facts were read (``untrusted_caller``, ``invalid_encoding``, the SPOA agent's
``handler_timeout`` …) has null ``method``/``host``/``path`` and the peer as ``source`` when known.
Credentials (tokens, cookies) are never logged; client-controlled strings are truncated to 512 characters.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from idgate.facts import Decision, RequestFacts

_MAX = 512


class AuditLog:
    """Writes decision lines. ``log_allows`` False keeps only denies (high-traffic deployments)."""

    def __init__(self, *, logger: logging.Logger | None = None, log_allows: bool = True) -> None:
        self._log = logger or logging.getLogger("idgate.audit")
        self._log_allows = log_allows

    def decision(
        self, facts: RequestFacts | None, decision: Decision, *, latency_seconds: float, source: str = ""
    ) -> None:
        """Log one decision as a single JSON line (level INFO for allows, WARNING for denies); ``source`` stands in
        for the facts' source when ``facts`` is None."""
        if decision.allow and not self._log_allows:
            return
        principal = decision.principal
        record = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "event": "decision",
            "allow": decision.allow,
            "status": decision.status,
            "reasons": list(decision.reasons),
            "route": decision.route,
            "upstream": decision.upstream,
            "iss": principal.issuer if principal else None,
            "sub": principal.subject if principal else None,
            "method": facts.method[:_MAX] if facts else None,
            "host": facts.host[:_MAX] if facts else None,
            "path": facts.path[:_MAX] if facts else None,
            "source": (facts.source if facts else source)[:_MAX],
            "latency_ms": round(latency_seconds * 1000, 3),
        }
        self._log.log(logging.INFO if decision.allow else logging.WARNING, json.dumps(record, ensure_ascii=True))
