"""Structured JSON audit log: one line per decision on the ``idgate.audit`` logger.

Fields: ``ts`` (RFC 3339 UTC), ``event`` ("decision"), ``allow``, ``status``, ``reasons`` (reason codes),
``route``, ``upstream``, ``iss``, ``sub``, ``method``, ``host``, ``path``, ``source``, ``latency_ms``.
Credentials (tokens, cookies) are never logged; client-controlled strings are truncated to 512 characters.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from idgate.decision import Decision, RequestFacts

_MAX = 512


class AuditLog:
    """Writes decision lines. ``log_allows`` False keeps only denies (high-traffic deployments)."""

    def __init__(self, *, logger: logging.Logger | None = None, log_allows: bool = True) -> None:
        self._log = logger or logging.getLogger("idgate.audit")
        self._log_allows = log_allows

    def decision(self, facts: RequestFacts, decision: Decision, *, latency_seconds: float) -> None:
        """Log one decision as a single JSON line (level INFO for allows, WARNING for denies)."""
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
            "method": facts.method[:_MAX],
            "host": facts.host[:_MAX],
            "path": facts.path[:_MAX],
            "source": facts.source[:_MAX],
            "latency_ms": round(latency_seconds * 1000, 3),
        }
        self._log.log(logging.INFO if decision.allow else logging.WARNING, json.dumps(record, ensure_ascii=True))
