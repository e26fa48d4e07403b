"""Structured JSON audit log: one line per decision on the ``idgate.audit`` logger.

Fields: ``event`` ("decision"), ``request_id`` (HAProxy's ``unique-id``, the key that joins this line to HAProxy's
log line; null when HAProxy sent none), ``allow``, ``status``, ``reasons`` (reason codes), ``route``, ``upstream``,
``iss``, ``sub``, ``user``, ``email``, ``roles`` (a list), ``method``, ``host``, ``path``, ``source``,
``latency_ms``, ``policy`` (``sha256:…``, :func:`idgate.fingerprint.policy_hash` of the configuration that decided;
null when not given). ``idgate serve``'s log formatter (:mod:`idgate.cli`) puts ``ts`` (RFC 3339 UTC), ``level``
and ``logger`` in front, as on every other idgate line.

``user``, ``email`` and ``roles`` are the identity values the upstream received on an allow; on a deny of a known
principal (403) ``user`` is its username and ``email`` its verified email, ``roles`` empty. A deny an adapter decided
before any facts were read (``untrusted_caller``, ``invalid_encoding``, the SPOA agent's ``handler_timeout`` …) has
null ``method``/``host``/``path`` and the peer as ``source`` when known.
Credentials (tokens, cookies, assertions) are never logged; client-controlled strings are truncated to 512
characters.
"""

from __future__ import annotations

import json
import logging

from idgate.facts import Decision, RequestFacts

_MAX = 512


def _cut(value: str | None) -> str | None:
    return value[:_MAX] if value else None


def _who(decision: Decision) -> tuple[str | None, str | None, list[str]]:
    """(user, email, roles) of ``decision``: the upstream's identity values on an allow, else the principal's."""
    identity = decision.identity
    if decision.allow and identity:
        roles = identity.get("roles") or ""
        return _cut(identity.get("user")), _cut(identity.get("email")), [r[:_MAX] for r in roles.split(",") if r]
    principal = decision.principal
    if principal is None:
        return None, None, []
    return _cut(principal.username), _cut(principal.email) if principal.email_verified else None, []


class AuditLog:
    """Writes decision lines. ``log_allows`` False keeps only denies (high-traffic deployments); ``policy`` is the
    policy hash written on every line."""

    def __init__(
        self, *, logger: logging.Logger | None = None, log_allows: bool = True, policy: str | None = None
    ) -> None:
        self._log = logger or logging.getLogger("idgate.audit")
        self._log_allows = log_allows
        self._policy = policy

    def decision(
        self,
        facts: RequestFacts | None,
        decision: Decision,
        *,
        latency_seconds: float,
        source: str = "",
        request_id: str = "",
    ) -> None:
        """Log one decision as a single JSON line (level INFO for allows, WARNING for denies); ``source`` and
        ``request_id`` stand in for the facts' when ``facts`` is None."""
        if decision.allow and not self._log_allows:
            return
        principal = decision.principal
        user, email, roles = _who(decision)
        record = {
            "event": "decision",
            "request_id": (facts.request_id if facts else request_id) or None,
            "allow": decision.allow,
            "status": decision.status,
            "reasons": list(decision.reasons),
            "route": decision.route,
            "upstream": decision.upstream,
            "iss": principal.issuer if principal else None,
            "sub": principal.subject if principal else None,
            "user": user,
            "email": email,
            "roles": roles,
            "method": facts.method[:_MAX] if facts else None,
            "host": facts.host[:_MAX] if facts else None,
            "path": facts.path[:_MAX] if facts else None,
            "source": (facts.source if facts else source)[:_MAX],
            "latency_ms": round(latency_seconds * 1000, 3),
            "policy": self._policy,
        }
        self._log.log(logging.INFO if decision.allow else logging.WARNING, json.dumps(record, ensure_ascii=True))
