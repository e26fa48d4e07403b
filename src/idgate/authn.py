"""Authentication: the request's credential → a :class:`~idgate.principal.Principal`, or the refusal to answer.

A request carries a bearer token (RFC 6750 §2.1, checked by :class:`~idgate.verifier.Verifier`) or else, when
browser login is configured, idgate's session cookie (:class:`~idgate.sso.manager.SessionManager`). Refusals:

- two ``Authorization`` headers: 400 ``duplicate_authorization``;
- a non-Bearer scheme or a malformed b64token: 401 ``unsupported_scheme`` / ``malformed_authorization`` with
  ``WWW-Authenticate: Bearer error="invalid_request"`` (RFC 6750 §3.1);
- a token that fails verification: 401 with its reason code and ``error="invalid_token"``;
- a token whose issuer's keys cannot be had now (:class:`~idgate.errors.KeysUnavailable`): 503 with
  ``Retry-After`` and ``keys_unavailable`` / ``unknown_kid_pending`` — a server-side outage, not a verdict on the
  token (a 401 would tell the client to throw a possibly valid token away);
- no usable credential: a page navigation (:meth:`~idgate.facts.RequestFacts.is_navigation`) is redirected (302)
  to ``/.idgate/start?rd=<path>`` when login is configured; anything else is 401 ``missing_credentials`` with a
  bare ``Bearer realm="idgate"`` challenge. A bad session cookie adds its reason (``session_expired`` …) and its
  deletion (``Set-Cookie``).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from idgate.errors import CredentialError, KeysUnavailable
from idgate.facts import RequestFacts
from idgate.principal import Principal
from idgate.sso.cookies import without_cookies
from idgate.sso.manager import SessionManager
from idgate.sso.session import session_keys
from idgate.verifier import Verifier

LOGIN_START = "/.idgate/start"
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")  # RFC 6750 §2.1 b64token


@dataclass(frozen=True, kw_only=True, slots=True)
class Authenticated:
    """The caller, the key its assertions are cached under, the Set-Cookie values of a touched session, and the
    ``Cookie`` header the upstream may see (idgate's own cookies removed; None when nothing is to be removed).

    For the decision cache in HAProxy (:mod:`idgate.cache_entry`): ``reusable_until``, epoch seconds until which the
    same credential yields the same principal without idgate (token ``exp``; a session's next refresh, touch, idle or
    absolute deadline; 0: never), and ``revocation_keys``, the keys whose revocation ends it
    (:func:`idgate.sso.session.session_keys`; a bearer token: its ``sub:<iss>|<sub>``)."""

    principal: Principal
    cache_key: str
    set_cookies: tuple[str, ...] = ()
    upstream_cookie: str | None = None
    reusable_until: float = 0.0
    revocation_keys: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Refused:
    """No principal: the status (400, 401, 302 or 503) and reason codes, with the challenge, the login redirect or
    (503) the seconds after which to retry."""

    status: int
    reasons: tuple[str, ...]
    www_authenticate: str | None = None
    location: str | None = None
    set_cookies: tuple[str, ...] = ()
    retry_after: int | None = None


def www_authenticate(error: str | None = None, description: str | None = None) -> str:
    """An RFC 6750 §3 ``Bearer`` challenge with ``realm="idgate"``."""
    value = 'Bearer realm="idgate"'
    if error:
        value += f', error="{error}"'
    if description:
        value += f', error_description="{description}"'
    return value


class Authenticator:
    """Finds the principal of a request: the bearer token first, else the session cookie."""

    def __init__(self, *, verifier: Verifier, sessions: SessionManager | None = None) -> None:
        self._verifier = verifier
        self._sessions = sessions

    async def authenticate(self, facts: RequestFacts) -> Authenticated | Refused:
        """The principal behind ``facts``; never raises for bad input."""
        rest = without_cookies(facts.cookie, prefix=self._sessions.cookie_prefix) if self._sessions else None
        if len(facts.authorization) > 1:
            return Refused(status=400, reasons=("duplicate_authorization",))
        if facts.authorization:
            match = _BEARER.match(facts.authorization[0])
            if match is None:
                scheme_ok = facts.authorization[0][:7].lower() == "bearer "
                reason = "malformed_authorization" if scheme_ok else "unsupported_scheme"
                return Refused(
                    status=401, reasons=(reason,), www_authenticate=www_authenticate("invalid_request", reason)
                )
            try:
                principal = await self._verifier.verify(match.group(1))
            except CredentialError as exc:
                return Refused(
                    status=401, reasons=(exc.reason,), www_authenticate=www_authenticate("invalid_token", exc.reason)
                )
            except KeysUnavailable as exc:
                return Refused(status=503, reasons=(exc.reason,), retry_after=exc.retry_after)
            key = f"bearer:{principal.issuer}|{principal.subject}"
            return Authenticated(
                principal=principal,
                cache_key=key,
                upstream_cookie=rest,
                reusable_until=principal.expires_at,
                revocation_keys=(f"sub:{principal.issuer}|{principal.subject}",),
            )
        outcome = await self._sessions.resolve(facts.cookie) if self._sessions else None
        if outcome is not None and outcome.session is not None:
            return Authenticated(
                principal=outcome.session.principal(),
                cache_key=f"session:{outcome.session.sid}",
                set_cookies=outcome.set_cookies,
                upstream_cookie=rest,
                reusable_until=self._sessions.reusable_until(outcome) if self._sessions else 0.0,
                revocation_keys=session_keys(outcome.session),
            )
        cookies = outcome.set_cookies if outcome else ()
        why = (outcome.reason,) if outcome and outcome.reason not in (None, "no_cookie") else ()
        if self._sessions is not None and facts.is_navigation():
            target = facts.path + (f"?{facts.query}" if facts.query else "")
            location = LOGIN_START + "?rd=" + urllib.parse.quote(target, safe="")
            return Refused(status=302, reasons=("login_required", *why), location=location, set_cookies=cookies)
        return Refused(
            status=401, reasons=("missing_credentials", *why), www_authenticate=www_authenticate(), set_cookies=cookies
        )
