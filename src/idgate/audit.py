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

Cost: a line is one ``json.dumps`` of the fields a decision fixes (:meth:`AuditLog.template`, reused as is for a
memoised answer, :mod:`idgate.memo`) spliced with the three that differ per request (``request_id``, ``source``,
``latency_ms``), handed to the logger's handlers as one ``LogRecord`` copied from one made once per level (no caller,
process or thread lookup per line).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

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


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditTemplate:
    """A decision's line without its per-request fields: ``middle`` is the JSON text from ``allow`` to ``path``
    (with a leading comma), ``level`` INFO for an allow and WARNING for a deny, ``write`` False when the line is not
    to be written (an allow with ``log_allows`` off)."""

    middle: str
    level: int
    write: bool


class AuditLog:
    """Writes decision lines. ``log_allows`` False keeps only denies (high-traffic deployments); ``policy`` is the
    policy hash written on every line."""

    def __init__(
        self, *, logger: logging.Logger | None = None, log_allows: bool = True, policy: str | None = None
    ) -> None:
        self._log = logger or logging.getLogger("idgate.audit")
        self._log_allows = log_allows
        self._tail = ', "policy": ' + json.dumps(policy) + "}"
        self._prototypes: dict[int, tuple[dict[str, object], float]] = {}

    def template(self, decision: Decision, *, method: str | None, host: str | None, path: str | None) -> AuditTemplate:
        """The fixed part of ``decision``'s line; ``method``/``host``/``path`` are the request's (None: unknown)."""
        principal = decision.principal
        user, email, roles = _who(decision)
        record = {
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
            "method": method[:_MAX] if method is not None else None,
            "host": host[:_MAX] if host is not None else None,
            "path": path[:_MAX] if path is not None else None,
        }
        level = logging.INFO if decision.allow else logging.WARNING
        middle = ", " + json.dumps(record, ensure_ascii=True)[1:-1]
        return AuditTemplate(middle=middle, level=level, write=self._log_allows or not decision.allow)

    def write(self, template: AuditTemplate, *, request_id: str, source: str, latency_seconds: float) -> None:
        """Log one line from ``template`` and the request's own fields (``request_id`` "" is written null)."""
        if not template.write:
            return
        logger = self._log
        if not logger.isEnabledFor(template.level):
            return
        line = (
            '{"event": "decision", "request_id": '
            + (encode_basestring_ascii(request_id) if request_id else "null")
            + template.middle
            + ', "source": '
            + encode_basestring_ascii(source[:_MAX])
            + ', "latency_ms": '
            + repr(round(latency_seconds * 1000, 3))
            + self._tail
        )
        logger.handle(self._record(template.level, line))

    def _record(self, level: int, line: str) -> logging.LogRecord:
        """A ``LogRecord`` for ``line``: a copy of one made once per level, with this line and this time (``Logger.
        makeRecord`` would look up the source file, process, thread and task of every line again)."""
        proto = self._prototypes.get(level)
        if proto is None:
            made = self._log.makeRecord(self._log.name, level, "", 0, "", (), None)
            proto = self._prototypes[level] = (made.__dict__.copy(), made.created - made.relativeCreated / 1000)
        fields, started = proto
        record = logging.LogRecord.__new__(logging.LogRecord)
        values = record.__dict__
        values.update(fields)
        created = time.time()
        values["created"] = created
        values["msecs"] = (created - int(created)) * 1000
        values["relativeCreated"] = (created - started) * 1000
        values["msg"] = line
        return record

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
        if facts is None:
            template = self.template(decision, method=None, host=None, path=None)
        else:
            template = self.template(decision, method=facts.method, host=facts.host, path=facts.path)
            source, request_id = facts.source, facts.request_id
        self.write(template, request_id=request_id, source=source, latency_seconds=latency_seconds)
