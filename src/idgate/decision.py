"""The decision core: one function, :meth:`DecisionEngine.decide`, owns every allow/deny.

The walk of one request: canonical facts (:mod:`idgate.facts`) → route (:mod:`idgate.policy`) → principal
(:mod:`idgate.authn`) → the route's rule → identity slots for the upstream (:mod:`idgate.identity`) → signed
assertion (:mod:`idgate.assertion`); then one audit line (:mod:`idgate.audit`) and the metrics. Both wire adapters
(the SPOE agent, ``idgate.spoe.adapter``, and the ``/auth`` endpoint, ``idgate.app``) only translate
:class:`RequestFacts` in and :class:`Decision` out; the denies they decide themselves (an untrusted caller, a
malformed message, an agent timeout) are audited and counted here too, through :meth:`DecisionEngine.refused`.

The contract follows oauth2-proxy's ``AuthOnly`` and nginx ``auth_request``: 200 allow with identity, 401 no or
bad credentials, 403 authenticated but not allowed, 400 malformed request, 302 to login for a browser navigation,
503 + ``Retry-After`` when the issuer's keys cannot be had (``keys_unavailable``, ``unknown_kid_pending``);
anything else (including a decision slower than ``decision_timeout_seconds``: 503 ``decision_timeout``, or an
unexpected error: 503 ``internal_error``) is a deny.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from idgate import cache_entry
from idgate.assertion import AssertionSigner
from idgate.audit import AuditLog
from idgate.authn import Authenticator, Refused
from idgate.config import Config
from idgate.errors import RequestError
from idgate.facts import Decision, RequestFacts, canonical_host, canonical_path
from idgate.identity import render_identity, usable_email
from idgate.memo import DecisionMemo, MemoEntry
from idgate.metrics import Metrics
from idgate.policy import Policy

log = logging.getLogger("idgate.decision")


class DecisionEngine:
    """Holds the policy and authenticator of one configuration and decides requests."""

    def __init__(
        self,
        *,
        config: Config,
        authenticator: Authenticator,
        audit: AuditLog,
        assertions: AssertionSigner | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = Policy(config=config)
        self._clock = clock
        # the decision cache in HAProxy (idgate.cache_entry): only where idgate can purge it (a Runtime API listed)
        self._cache_ttl = config.cache.max_ttl_seconds if cache_active(config) else 0
        self._authn = authenticator
        self._audit = audit
        self._assertions = assertions
        self._metrics = metrics
        self._timeout = config.server.decision_timeout_seconds
        # issuers whose unverified `email` may still be used as an identity (trust_unverified_email, logged at start)
        self._email_trusted = frozenset(i.issuer for i in config.issuers if i.trust_unverified_email)
        self.memo = DecisionMemo(
            max_entries=config.decision_memo.max_entries, max_ttl_seconds=config.decision_memo.max_ttl_seconds
        )
        """Finished allows an adapter may answer again (:mod:`idgate.memo`); ``invalidate()`` it when answers
        change (the runtime does on a key withdrawal)."""

    async def decide(self, facts: RequestFacts, *, mode: str | None = None) -> Decision:
        """Decide ``facts``; never raises for bad input, and logs one audit line.

        ``mode`` names the adapter asking (``spoe`` or ``auth_request``): it only labels the metrics."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):  # no extra task, unlike wait_for
                decision = await self._decide(facts)
        except TimeoutError:
            decision = Decision(status=503, reasons=("decision_timeout",))
        except Exception:  # a bug must never become an allow or a bare 500: fail closed, loudly
            log.exception("decision failed")
            decision = Decision(status=503, reasons=("internal_error",))
        self._record(facts, decision, latency_seconds=time.perf_counter() - started, mode=mode)
        return decision

    def refused(
        self,
        decision: Decision,
        *,
        facts: RequestFacts | None = None,
        source: str = "",
        request_id: str = "",
        mode: str | None = None,
    ) -> Decision:
        """Audit and count a deny an adapter decided before the engine could (``untrusted_caller``,
        ``missing_facts``, ``invalid_encoding``, the SPOA agent's ``handler_timeout`` …); returns ``decision``.

        ``facts`` are what the adapter could read, if anything; ``source`` the peer address and ``request_id``
        HAProxy's request id (:func:`idgate.facts.clean_request_id`) when facts are None; ``mode`` the adapter (as
        for :meth:`decide`).
        """
        self._record(facts, decision, latency_seconds=0.0, source=source, request_id=request_id, mode=mode)
        return decision

    def remember(
        self,
        key: bytes,
        facts: RequestFacts,
        decision: Decision,
        rendered: object,
        *,
        generation: int,
        mode: str | None = None,
    ) -> bool:
        """Store ``decision`` (as the adapter ``rendered`` it) under ``key`` when it may be answered again (see
        :mod:`idgate.memo`): an allow without ``Set-Cookie`` and without a signed assertion, decided from one
        bearer token (until its ``exp``) or for a public route; never a session-cookie allow; never when the memo
        was invalidated since ``generation`` (read before deciding). True when stored."""
        memo = self.memo
        if not memo.enabled or not decision.allow or decision.set_cookies or "assertion" in decision.identity:
            return False
        principal = decision.principal
        if principal is None:
            if decision.reasons != ("public_route",):
                return False
            expires_at = float("inf")
        elif len(facts.authorization) == 1:
            expires_at = principal.expires_at  # the token's exp: the verified-token cache's own bound
        else:
            return False  # a session: its revocation is read from the store on every request
        entry = MemoEntry(
            decision=decision,
            rendered=rendered,
            audit=self._audit.template(decision, method=facts.method, host=facts.host, path=facts.path),
            expires_at=expires_at,
            observe=self._metrics.bound(decision, mode=mode) if self._metrics is not None else None,
        )
        return memo.put(key, entry, generation=generation)

    def replay(self, entry: MemoEntry, *, source: str, request_id: str, seconds: float) -> None:
        """Audit and count a memoised answer for one request (its own ``source``, ``request_id`` and ``seconds``
        spent), exactly as :meth:`decide` does for a decided one (the metrics under the ``mode`` it was stored with).
        """
        self._audit.write(entry.audit, request_id=request_id, source=source, latency_seconds=seconds)
        if entry.observe is not None:
            entry.observe(seconds)

    def _record(
        self,
        facts: RequestFacts | None,
        decision: Decision,
        *,
        latency_seconds: float,
        source: str = "",
        request_id: str = "",
        mode: str | None = None,
    ) -> None:
        self._audit.decision(facts, decision, latency_seconds=latency_seconds, source=source, request_id=request_id)
        if self._metrics is not None:
            self._metrics.observe(decision, mode=mode, seconds=latency_seconds)

    async def _decide(self, facts: RequestFacts) -> Decision:
        try:
            host, path = canonical_host(facts.host), canonical_path(facts.path)
        except RequestError as exc:
            return Decision(status=400, reasons=(exc.reason,))
        route = self._policy.match(host, path)
        if route is None:
            return Decision(status=403, reasons=("no_route",))
        if route.public:
            # never marked cacheable: its key would hold whatever credential the caller made up, so anyone could fill
            # HAProxy's cache with one entry per request (and a public answer costs idgate no verification anyway)
            return Decision(status=200, reasons=("public_route",), route=route.name, upstream=route.upstream)
        authn = await self._authn.authenticate(facts)

        def answer(status: int, *reasons: str, **extra: Any) -> Decision:
            return Decision(
                status=status,
                reasons=reasons,
                route=route.name,
                upstream=route.upstream,
                set_cookies=authn.set_cookies,
                **extra,
            )

        if isinstance(authn, Refused):
            return answer(
                authn.status,
                *authn.reasons,
                www_authenticate=authn.www_authenticate,
                location=authn.location,
                retry_after=authn.retry_after,
            )
        principal = authn.principal
        grant = self._policy.check(route, principal)
        if not grant.allowed:
            return answer(403, *grant.reasons, *principal.notes, principal=principal)
        upstream = self._policy.upstream(route)
        trust_email = principal.issuer in self._email_trusted
        identity = render_identity(principal, upstream, grant.roles, trust_unverified_email=trust_email)
        if identity.refused is not None:
            return answer(403, identity.refused, *identity.notes, principal=principal)
        slots = dict(identity.values)
        if upstream.assertion_audience and self._assertions is not None:
            slots["assertion"] = self._assertions.mint(
                cache_key=authn.cache_key,
                audience=upstream.assertion_audience,
                subject=principal.subject,
                claims={
                    "email": usable_email(principal, trust_unverified=trust_email),
                    "name": principal.name,
                    "preferred_username": principal.username,
                    "groups": list(principal.groups),
                    "role": grant.roles[-1] if grant.roles else None,
                },
            )
        if route.authorization == "strip":
            slots["strip_authorization"] = "1"  # HAProxy removes Authorization before the upstream
        if authn.upstream_cookie is not None:
            # idgate's own cookies never reach the upstream; HAProxy rewrites Cookie from these two values
            slots["cookie_rewrite"] = "1"
            if authn.upstream_cookie:
                slots["cookie"] = authn.upstream_cookie
        reasons = grant.reasons + principal.notes + identity.notes
        allow = answer(200, *reasons, principal=principal, identity=slots)
        return self._sealed(allow, reusable_until=authn.reusable_until, revocation_keys=authn.revocation_keys)

    def _sealed(self, decision: Decision, *, reusable_until: float, revocation_keys: tuple[str, ...]) -> Decision:
        """``decision``, marked for the decision cache in HAProxy when it is cacheable (:func:`cache_entry.seal`)."""
        if self._cache_ttl <= 0:
            return decision
        return cache_entry.seal(
            decision,
            reusable_until=reusable_until,
            revocation_keys=revocation_keys,
            now=self._clock(),
            max_ttl_seconds=self._cache_ttl,
        )


def cache_active(config: Config) -> bool:
    """Whether idgate marks allows cacheable: ``cache.enabled`` and at least one HAProxy Runtime API to purge
    entries through (``haproxy.runtime_api``); without one a sign-out could not reach HAProxy's entries."""
    return config.cache.enabled and bool(config.haproxy.runtime_api)
