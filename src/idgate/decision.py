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
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from idgate.assertion import AssertionSigner
from idgate.audit import AuditLog
from idgate.config import Config
from idgate.cookies import without_cookies
from idgate.errors import CredentialError, RequestError
from idgate.identity import render_identity
from idgate.metrics import Metrics
from idgate.policy import Policy, canonical_host, canonical_path
from idgate.principal import Principal
from idgate.sso import SessionManager
from idgate.verifier import Verifier

log = logging.getLogger("idgate.decision")
LOGIN_START = "/.idgate/start"
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
    query: str = ""
    source: str = ""
    authorization: tuple[str, ...] = ()
    cookie: str | None = None
    accept: str | None = None
    requested_with: str | None = None
    fetch_mode: str | None = None
    content_type: str | None = None

    def is_navigation(self) -> bool:
        """A browser page navigation (may be redirected to login); XHR, JSON, gRPC and API calls are not."""
        return (
            self.method in ("GET", "HEAD")
            and "text/html" in (self.accept or "")
            and self.requested_with is None
            and self.fetch_mode in (None, "navigate")
            and not (self.content_type or "").startswith("application/grpc")
        )


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
    location: str | None = None
    set_cookies: tuple[str, ...] = ()

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

    def __init__(
        self,
        *,
        config: Config,
        verifier: Verifier,
        audit: AuditLog,
        sessions: SessionManager | None = None,
        assertions: AssertionSigner | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._policy = Policy(config=config)
        self._verifier = verifier
        self._audit = audit
        self._sessions = sessions
        self._assertions = assertions
        self._metrics = metrics
        self._timeout = config.server.decision_timeout_seconds

    async def decide(self, facts: RequestFacts) -> Decision:
        """Decide ``facts``; never raises for bad input, and logs one audit line."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):  # no extra task, unlike wait_for
                decision = await self._decide(facts)
        except TimeoutError:
            decision = Decision(status=503, reasons=("decision_timeout",))
        except Exception:  # a bug must never become an allow or a bare 500: fail closed, loudly
            log.exception("decision failed")
            decision = Decision(status=503, reasons=("internal_error",))
        latency = time.perf_counter() - started
        self._audit.decision(facts, decision, latency_seconds=latency)
        if self._metrics is not None:
            self._metrics.observe(status=decision.status, seconds=latency)
        return decision

    async def _decide(self, facts: RequestFacts) -> Decision:
        try:
            host, path = canonical_host(facts.host), canonical_path(facts.path)
        except RequestError as exc:
            return Decision(status=400, reasons=(exc.reason,))
        route = self._policy.match(host, path)
        if route is None:
            return Decision(status=403, reasons=("no_route",))

        cookies: tuple[str, ...] = ()

        def answer(status: int, *reasons: str, **extra: Any) -> Decision:
            return Decision(
                status=status, reasons=reasons, route=route.name, upstream=route.upstream, set_cookies=cookies, **extra
            )

        if route.public:
            return answer(200, "public_route")
        if len(facts.authorization) > 1:
            return answer(400, "duplicate_authorization")
        cache_key: str
        if facts.authorization:
            match = _BEARER.match(facts.authorization[0])
            if match is None:
                scheme_ok = facts.authorization[0][:7].lower() == "bearer "
                reason = "malformed_authorization" if scheme_ok else "unsupported_scheme"
                return answer(401, reason, www_authenticate=_www_authenticate("invalid_request", reason))
            try:
                principal = await self._verifier.verify(match.group(1))
            except CredentialError as exc:
                return answer(401, exc.reason, www_authenticate=_www_authenticate("invalid_token", exc.reason))
            cache_key = f"bearer:{principal.issuer}|{principal.subject}"
        else:
            outcome = await self._sessions.resolve(facts.cookie) if self._sessions else None
            if outcome is None or outcome.session is None:
                cookies = outcome.set_cookies if outcome else ()
                why = (outcome.reason,) if outcome and outcome.reason not in (None, "no_cookie") else ()
                if self._sessions is not None and facts.is_navigation():
                    target = facts.path + (f"?{facts.query}" if facts.query else "")
                    location = LOGIN_START + "?rd=" + urllib.parse.quote(target, safe="")
                    return answer(302, "login_required", *why, location=location)
                return answer(401, "missing_credentials", *why, www_authenticate=_www_authenticate())
            cookies = outcome.set_cookies
            principal = outcome.session.principal()
            cache_key = f"session:{outcome.session.sid}"
        grant = self._policy.check(route, principal)
        if not grant.allowed:
            return answer(403, *grant.reasons, *principal.notes, principal=principal)
        upstream = self._policy.upstream(route)
        identity = render_identity(principal, upstream, grant.roles)
        if "user" not in identity.values:
            return answer(403, "unsafe_identity", *identity.notes, principal=principal)
        headers = identity.headers()
        if upstream.assertion_audience and self._assertions is not None:
            headers["x-idgate-assertion"] = self._assertions.mint(
                cache_key=cache_key,
                audience=upstream.assertion_audience,
                subject=principal.subject,
                claims={
                    "email": principal.email,
                    "name": principal.name,
                    "preferred_username": principal.username,
                    "groups": list(principal.groups),
                    "role": grant.roles[-1] if grant.roles else None,
                },
            )
        if route.authorization == "strip":
            headers["x-idgate-strip-authorization"] = "1"  # HAProxy removes Authorization before the upstream
        if self._sessions is not None:
            # idgate's own cookies never reach the upstream; HAProxy rewrites Cookie from these two values
            rest = without_cookies(facts.cookie, prefix=self._sessions.cookie_prefix)
            if rest is not None:
                headers["x-idgate-cookie-rewrite"] = "1"
                if rest:
                    headers["x-idgate-cookie"] = rest
        reasons = grant.reasons + principal.notes + identity.notes
        return answer(200, *reasons, principal=principal, headers=headers)
