"""The decision core: one function, :meth:`DecisionEngine.decide`, owns every allow/deny.

Wire adapters (the HTTP ``/auth`` endpoint now, the SPOE agent later) only translate :class:`RequestFacts` in and
:class:`Decision` out. The contract follows oauth2-proxy's ``AuthOnly`` and nginx ``auth_request``: 200 allow with
identity, 401 no or bad credentials, 403 authenticated but not allowed, 400 malformed request; anything else
(including a decision slower than ``decision_timeout_seconds``: 503 ``decision_timeout``) is a deny.
Every decision is logged as one JSON line by :mod:`idgate.audit`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from idgate.audit import AuditLog
from idgate.config import Config
from idgate.errors import CredentialError, RequestError
from idgate.identity import render_identity
from idgate.policy import Policy, canonical_host, canonical_path
from idgate.principal import Principal
from idgate.verifier import Verifier

log = logging.getLogger("idgate.decision")
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")  # RFC 6750 §2.1 b64token


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestFacts:
    """What HAProxy computed about the client request. Never re-derived from client-controlled headers.

    ``path`` is HAProxy's normalised path without the query; ``authorization`` holds every client copy of the
    Authorization header (more than one is a 400).
    """

    method: str
    host: str
    path: str
    source: str = ""
    authorization: tuple[str, ...] = ()
    cookie: str | None = None
    accept: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The answer. ``headers`` are ``x-idgate-*`` identity slots (allow only); ``reasons`` are reason codes."""

    status: int
    reasons: tuple[str, ...]
    route: str | None = None
    upstream: str | None = None
    principal: Principal | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    www_authenticate: str | None = None

    @property
    def allow(self) -> bool:
        """True only for an explicit 200."""
        return self.status == 200


def _www_authenticate(error: str | None = None, description: str | None = None) -> str:
    value = 'Bearer realm="idgate"'
    if error:
        value += f', error="{error}"'
    if description:
        value += f', error_description="{description}"'
    return value


class DecisionEngine:
    """Holds the policy and verifier of one configuration and decides requests."""

    def __init__(self, *, config: Config, verifier: Verifier, audit: AuditLog) -> None:
        self._policy = Policy(config=config)
        self._verifier = verifier
        self._audit = audit
        self._timeout = config.server.decision_timeout_seconds

    async def decide(self, facts: RequestFacts) -> Decision:
        """Decide ``facts``; never raises for bad input, and logs one audit line."""
        started = time.perf_counter()
        try:
            decision = await asyncio.wait_for(self._decide(facts), self._timeout)
        except TimeoutError:
            decision = Decision(status=503, reasons=("decision_timeout",))
        except Exception:  # a bug must never become an allow or a bare 500: fail closed, loudly
            log.exception("decision failed")
            decision = Decision(status=503, reasons=("internal_error",))
        self._audit.decision(facts, decision, latency_seconds=time.perf_counter() - started)
        return decision

    async def _decide(self, facts: RequestFacts) -> Decision:
        try:
            host, path = canonical_host(facts.host), canonical_path(facts.path)
        except RequestError as exc:
            return Decision(status=400, reasons=(exc.reason,))
        route = self._policy.match(host, path)
        if route is None:
            return Decision(status=403, reasons=("no_route",))

        def answer(status: int, *reasons: str, **extra: Any) -> Decision:
            return Decision(status=status, reasons=reasons, route=route.name, upstream=route.upstream, **extra)

        if route.public:
            return answer(200, "public_route")
        if len(facts.authorization) > 1:
            return answer(400, "duplicate_authorization")
        if not facts.authorization:
            return answer(401, "missing_credentials", www_authenticate=_www_authenticate())
        match = _BEARER.match(facts.authorization[0])
        if match is None:
            scheme_ok = facts.authorization[0][:7].lower() == "bearer "
            reason = "malformed_authorization" if scheme_ok else "unsupported_scheme"
            return answer(401, reason, www_authenticate=_www_authenticate("invalid_request", reason))
        try:
            principal = await self._verifier.verify(match.group(1))
        except CredentialError as exc:
            return answer(401, exc.reason, www_authenticate=_www_authenticate("invalid_token", exc.reason))
        grant = self._policy.check(route, principal)
        if not grant.allowed:
            return answer(403, *grant.reasons, *principal.notes, principal=principal)
        identity = render_identity(principal, self._policy.upstream(route), grant.roles)
        if "user" not in identity.values:
            return answer(403, "unsafe_identity", *identity.notes, principal=principal)
        reasons = grant.reasons + principal.notes + identity.notes
        return answer(200, *reasons, principal=principal, headers=identity.headers())
