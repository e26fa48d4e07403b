"""Browser SSO sessions at decision time: read the session cookie, expire, revoke, refresh, re-issue.

:meth:`SessionManager.resolve` turns a ``Cookie`` header into a :class:`SessionOutcome`: the live session (or
None and a reason code) plus the ``Set-Cookie`` values the response must carry (a refreshed or touched session,
or the deletion of a bad one). A tampered, truncated, wrong-key, expired, idle, revoked or refresh-rejected cookie
is simply "no session" — the caller answers a login redirect or 401, never an allow.

Refresh (RFC 6749 §6, OIDC Core §12): when the IdP's tokens expire within ``refresh_before_seconds``, the refresh
token is redeemed once per session (single-flight); a late request still carrying the pre-refresh cookie gets the
refreshed session from a short-lived cache instead of replaying a rotated refresh token. Across replicas the
store's lock (``lock:refresh:…``) lets one replica redeem the token; it leaves the refreshed session, sealed
with the session key ring (it holds a refresh token), in the store for 60 s, where a late request on any replica
finds it. A replica that finds the lock taken waits for that value at most ``refresh_wait_seconds``, then keeps
the current session (``refresh_deferred``). ``invalid_grant`` ends the session at once; a transient IdP failure
keeps it until the tokens' expiry plus ``refresh_grace_seconds``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from idgate.config import ClaimPaths, SessionConfig
from idgate.errors import CookieTooLarge, CredentialError, ProviderError
from idgate.principal import principal_from_claims
from idgate.sso.claim_sources import ClaimSources
from idgate.sso.cookies import KeyRing, SessionCookies
from idgate.sso.oidc import OidcClient, TokenSet
from idgate.sso.session import RevocationStore, Session, is_revoked, session_keys

log = logging.getLogger("idgate.sessions")
_RECENT_SECONDS = 60.0
_DECODED_SECONDS = 60.0
_DECODED_MAX = 10_000
_LOCK_SECONDS = 15.0  # the refresh lock outlives one IdP call (the OIDC client's timeout)
_POLL_SECONDS = 0.05
_SHARED_AAD = b"idgate-refreshed-session-v1"


@dataclass(kw_only=True, slots=True)
class RefreshStats:
    """Refreshes at the IdP by result (cumulative, one per redemption, not per waiting request): ``ok``,
    ``transient_failure`` (IdP unreachable or garbled: the session is kept within the grace), ``invalid_grant``
    (the IdP refused the refresh token: the session ends) and ``rejected`` (any other refusal, e.g. an ID token
    naming another subject)."""

    ok: int = 0
    transient_failure: int = 0
    invalid_grant: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        """Result → count."""
        return {
            "ok": self.ok,
            "transient_failure": self.transient_failure,
            "invalid_grant": self.invalid_grant,
            "rejected": self.rejected,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionOutcome:
    """The session (or None with ``reason``) and the Set-Cookie header values to send back."""

    session: Session | None
    set_cookies: tuple[str, ...] = ()
    reason: str | None = None
    refreshed: bool = False


class SessionManager:
    """Owns the session cookie format, lifetimes, refresh and revocation for one configuration."""

    def __init__(
        self,
        *,
        config: SessionConfig,
        cookies: SessionCookies,
        oidc: OidcClient,
        store: RevocationStore,
        claims: ClaimPaths,
        clock: Callable[[], float] = time.time,
        ring: KeyRing | None = None,
        refresh_wait_seconds: float = 1.0,
        sources: ClaimSources | None = None,
        idps: Mapping[str, tuple[OidcClient, ClaimPaths]] | None = None,
        sources_by_issuer: Mapping[str, ClaimSources | None] | None = None,
    ) -> None:
        """``sources``: read the session's groups from the issuer's ``claims.sources`` at login and at refreshes
        that bring a new ID token (:mod:`idgate.sso.claim_sources`); None: from the ID token alone.
        ``idps``: issuer URL → (its OIDC client, its claim paths) for every login IdP (``login.issuers``); None:
        ``oidc`` and ``claims`` alone. A session is refreshed at its own issuer's IdP and read with its paths; a
        session whose issuer is not among them is no session (``unknown_issuer``). ``sources_by_issuer``: with
        several login IdPs, each issuer's own claim sources (``sources`` is then unused)."""
        self._sources = sources
        self._sources_by_issuer = dict(sources_by_issuer) if sources_by_issuer is not None else None
        self._idps = dict(idps) if idps is not None else None
        self._config = config
        self._ring = ring  # seals refreshed sessions shared through the store; None: shared within this process only
        self._refresh_wait = refresh_wait_seconds
        self._cookies = cookies
        self._oidc = oidc
        self._store = store
        self._claims = claims
        self._clock = clock
        self._touch_interval = min(60.0, config.idle_timeout_seconds / 10)
        self._refreshing: dict[str, asyncio.Task[Session]] = {}
        self._recent: dict[str, tuple[Session, float]] = {}
        # Decoded-session cache: Cookie header hash → (session, cached until). Skips the AEAD open and JSON parse
        # only; lifetimes, revocation and refresh are checked on every request.
        self._decoded: OrderedDict[bytes, tuple[Session, float]] = OrderedDict()
        self.decoded_hits = 0
        self.decoded_misses = 0
        self.refresh_stats = RefreshStats()

    @property
    def cookie_prefix(self) -> str:
        """The name prefix shared by every cookie idgate sets (session chunks and the login-state cookie)."""
        return self._config.cookie_name

    def issue(self, session: Session) -> tuple[str, ...]:
        """Set-Cookie values carrying ``session`` until its absolute expiry.

        A session too large for the cookie cap drops its ID token (only the logout hint) first.

        Raises:
            CredentialError: ``session_too_large`` when even that does not fit (e.g. hundreds of groups).
        """
        max_age = max(1, int(session.expires_at - self._clock()))
        for candidate in (session, replace(session, id_token="")):
            try:
                return tuple(self._cookies.encode(candidate.to_bytes(), max_age=max_age))
            except CookieTooLarge:
                continue
        raise CredentialError("session_too_large", "the session does not fit the cookie size cap")

    def clear(self) -> tuple[str, ...]:
        """Set-Cookie values deleting every session cookie chunk."""
        return tuple(self._cookies.clear())

    async def read(self, cookie_header: str | None) -> Session | None:
        """The session in the cookie if it decrypts and parses (no lifetime or revocation checks)."""
        payload, _ = self._cookies.decode(cookie_header)
        return Session.from_bytes(payload) if payload is not None else None

    @property
    def group_notes(self) -> dict[str, int]:
        """Reason code → how many logins and refreshes met it while reading groups (``access_token_unverified``,
        ``userinfo_unavailable``, ``groups_overage_unresolved`` …; :mod:`idgate.sso.claim_sources`)."""
        counts: Counter[str] = Counter()
        for source in self._all_sources():
            counts.update(source.note_counts)
        return dict(counts)

    def _all_sources(self) -> list[ClaimSources]:
        if self._sources_by_issuer is not None:
            return [s for s in self._sources_by_issuer.values() if s is not None]
        return [self._sources] if self._sources is not None else []

    def _sources_for(self, issuer: object) -> ClaimSources | None:
        if self._sources_by_issuer is not None:
            return self._sources_by_issuer.get(str(issuer))
        return self._sources

    async def session_groups(self, *, tokens: TokenSet, id_claims: dict[str, Any]) -> tuple[str, ...] | None:
        """The groups of every configured claim source, or None when only the ID token is read (no sources)."""
        sources = self._sources_for(id_claims.get("iss"))
        if sources is None:
            return None
        return (await sources.groups(tokens=tokens, id_claims=id_claims)).groups

    def new_session(
        self, *, tokens: TokenSet, id_claims: dict[str, Any], groups: tuple[str, ...] | None = None
    ) -> Session:
        """A fresh session (new random id: no fixation) from a completed login; ``groups`` (from
        :meth:`session_groups`) replaces the ID token's when given.

        Raises:
            CredentialError: ``invalid_claims`` when the ID token lacks a usable subject.
        """
        now = self._clock()
        principal = principal_from_claims(id_claims, paths=self._claims_for(id_claims.get("iss")))
        if groups is not None:
            principal = replace(principal, groups=groups)
        expires_at = now + self._config.absolute_timeout_seconds
        return Session(
            sid=secrets.token_urlsafe(24),
            issuer=principal.issuer,
            subject=principal.subject,
            username=principal.username,
            email=principal.email,
            email_verified=principal.email_verified,
            name=principal.name,
            groups=principal.groups,
            created_at=now,
            last_seen=now,
            expires_at=expires_at,
            token_expires_at=min(self._token_expiry(tokens, id_claims, now), expires_at),
            refresh_token=tokens.refresh_token,
            id_token=tokens.id_token or "",
            idp_sid=id_claims.get("sid") if isinstance(id_claims.get("sid"), str) else None,
        )

    def _claims_for(self, issuer: object) -> ClaimPaths:
        """The claim paths of ``issuer``'s login IdP (the single IdP's when there is one)."""
        idp = self._idps.get(issuer) if self._idps is not None and isinstance(issuer, str) else None
        return idp[1] if idp is not None else self._claims

    def _oidc_for(self, session: Session) -> OidcClient:
        """The OIDC client of the session's own issuer (refresh goes there)."""
        idp = self._idps.get(session.issuer) if self._idps is not None else None
        return idp[0] if idp is not None else self._oidc

    @staticmethod
    def _token_expiry(tokens: TokenSet, id_claims: dict[str, Any], now: float) -> float:
        if tokens.expires_in is not None:
            return now + tokens.expires_in
        exp = id_claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else now

    async def sign_out(self, session: Session) -> None:
        """Remember the session id as revoked until its absolute expiry."""
        await self._store.revoke(f"sid:{session.sid}", at=self._clock(), until=session.expires_at)

    def _decode(self, cookie_header: str | None, now: float) -> tuple[Session | None, str | None]:
        """The session sealed in ``cookie_header`` (cached briefly by header hash) or (None, reason)."""
        key = hashlib.sha256(cookie_header.encode("utf-8", "surrogatepass")).digest() if cookie_header else b""
        cached = self._decoded.get(key) if key else None
        if cached is not None and now < cached[1]:
            self.decoded_hits += 1
            return cached[0], None
        self.decoded_misses += 1
        payload, reason = self._cookies.decode(cookie_header)
        if payload is None:
            return None, reason
        session = Session.from_bytes(payload)
        if session is None:
            return None, "invalid_cookie"
        self._decoded[key] = (session, now + _DECODED_SECONDS)
        self._decoded.move_to_end(key)
        while len(self._decoded) > _DECODED_MAX:
            self._decoded.popitem(last=False)
        return session, None

    async def resolve(self, cookie_header: str | None) -> SessionOutcome:
        """The live session behind ``cookie_header``; never raises for bad input."""
        now = self._clock()
        session, reason = self._decode(cookie_header, now)
        if session is None:
            clear = () if reason == "no_cookie" else self.clear()
            return SessionOutcome(session=None, reason=reason, set_cookies=clear)
        if now >= session.expires_at:
            reason = "session_expired"
        elif now - session.last_seen > self._config.idle_timeout_seconds:
            reason = "idle_timeout"
        elif self._idps is not None and session.issuer not in self._idps:
            reason = "unknown_issuer"  # its IdP was removed from login.issuers: it cannot be refreshed or trusted
        elif await is_revoked(self._store, session):
            reason = "session_revoked"
        if reason is not None:
            return SessionOutcome(session=None, reason=reason, set_cookies=self.clear())
        try:
            if now >= session.token_expires_at - self._config.refresh_before_seconds:
                return await self._refresh(session, now)
            if now - session.last_seen >= self._touch_interval:
                touched = session.touched(now)
                return SessionOutcome(session=touched, set_cookies=self.issue(touched))
        except CredentialError as exc:  # session_too_large
            await self._end(session)
            return SessionOutcome(session=None, reason=exc.reason, set_cookies=self.clear())
        return SessionOutcome(session=session)

    def reusable_until(self, outcome: SessionOutcome) -> float:
        """Epoch seconds until which an answer for ``outcome``'s session may be reused without asking idgate (the
        decision cache in HAProxy): its next refresh point, touch, idle timeout or absolute expiry, whichever comes
        first; 0 for no session or one that was just refreshed, touched or kept past a failed refresh."""
        session = outcome.session
        if session is None or outcome.set_cookies or outcome.refreshed or outcome.reason is not None:
            return 0.0
        return min(
            session.expires_at,
            session.token_expires_at - self._config.refresh_before_seconds,
            session.last_seen + self._config.idle_timeout_seconds,
            session.last_seen + self._touch_interval,
        )

    async def _refresh(self, session: Session, now: float) -> SessionOutcome:
        if session.refresh_token is None:
            if now < session.token_expires_at:
                return SessionOutcome(session=session)
            return SessionOutcome(session=None, reason="token_expired", set_cookies=self.clear())
        key = f"{session.sid}:{hashlib.sha256(session.refresh_token.encode()).hexdigest()}"
        recent = self._recent.get(key)
        if recent is not None and recent[1] > now:
            return SessionOutcome(session=recent[0], set_cookies=self.issue(recent[0]), refreshed=True)
        task = self._refreshing.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh_and_remember(session, key), name=f"refresh:{session.sid[:8]}")
            self._refreshing[key] = task
            task.add_done_callback(lambda _: self._refreshing.pop(key, None))
        try:
            refreshed = await asyncio.shield(task)
        except ProviderError as exc:
            if exc.transient and now < session.token_expires_at + self._config.refresh_grace_seconds:
                return SessionOutcome(session=session, reason="refresh_deferred")
            await self._end(session)
            return SessionOutcome(session=None, reason="refresh_rejected", set_cookies=self.clear())
        except CredentialError:
            await self._end(session)
            return SessionOutcome(session=None, reason="refresh_rejected", set_cookies=self.clear())
        return SessionOutcome(session=refreshed, set_cookies=self.issue(refreshed), refreshed=True)

    async def _refresh_and_remember(self, session: Session, key: str) -> Session:
        """Refresh and remember the result even when every waiting request has given up (timed out), so the
        rotated refresh token is never lost."""
        refreshed = await self._refresh_once(session, key)
        self._remember(key, refreshed, self._clock())
        return refreshed

    async def _refresh_once(self, session: Session, key: str) -> Session:
        """One refresh per session across replicas: the store's lock, and the refreshed session it keeps.

        Raises:
            ProviderError: ``refresh_busy`` (transient) when another replica held the lock longer than
                ``refresh_wait_seconds``; and whatever the refresh raises.
        """
        deadline = time.monotonic() + self._refresh_wait  # a real wait, whatever the session clock says
        while (token := await self._store.lock(f"refresh:{key}", ttl=_LOCK_SECONDS)) is None:
            shared = await self._shared(key)
            if shared is not None:
                return shared
            if time.monotonic() >= deadline:
                raise ProviderError("refresh_busy", "another replica is refreshing this session", transient=True)
            await asyncio.sleep(_POLL_SECONDS)
        try:
            shared = await self._shared(key)  # refreshed by another replica between its unlock and our lock
            if shared is not None:
                return shared
            refreshed = await self._counted_refresh(session)
            session_hash = hashlib.sha256(session.sid.encode()).hexdigest()[:16]
            log.info(json.dumps({"event": "session_refreshed", "session": session_hash}))
            if self._ring is not None:
                sealed = self._ring.seal(refreshed.to_bytes(), aad=_SHARED_AAD + self._config.cookie_name.encode())
                await self._store.put(f"refreshed:{key}", sealed, ttl=_RECENT_SECONDS)
            return refreshed
        finally:
            await self._store.unlock(f"refresh:{key}", token)

    async def _shared(self, key: str) -> Session | None:
        """The refreshed session another replica left in the store for ``key``, if any."""
        if self._ring is None:
            return None
        sealed = await self._store.get(f"refreshed:{key}")
        if sealed is None:
            return None
        payload = self._ring.open(sealed, aad=_SHARED_AAD + self._config.cookie_name.encode())
        return Session.from_bytes(payload) if payload is not None else None

    async def _counted_refresh(self, session: Session) -> Session:
        """:meth:`_do_refresh`, counted in :attr:`refresh_stats` (one count per redemption at the IdP)."""
        try:
            refreshed = await self._do_refresh(session)
        except ProviderError as exc:
            if exc.transient:
                self.refresh_stats.transient_failure += 1
            elif exc.reason == "invalid_grant":
                self.refresh_stats.invalid_grant += 1
            else:
                self.refresh_stats.rejected += 1
            raise
        except CredentialError:
            self.refresh_stats.rejected += 1
            raise
        self.refresh_stats.ok += 1
        return refreshed

    async def _do_refresh(self, session: Session) -> Session:
        assert session.refresh_token is not None
        oidc = self._oidc_for(session)
        tokens = await oidc.refresh(session.refresh_token)
        now = self._clock()
        changes: dict[str, Any] = {
            "last_seen": now,
            "refresh_token": tokens.refresh_token or session.refresh_token,
            "token_expires_at": min(now + (tokens.expires_in or 0), session.expires_at),
        }
        if tokens.id_token:
            claims = await oidc.verify_id_token(tokens.id_token, nonce=None, access_token=tokens.access_token)
            principal = principal_from_claims(claims, paths=self._claims_for(session.issuer))
            if (principal.issuer, principal.subject) != (session.issuer, session.subject):
                raise CredentialError("subject_changed", "refreshed ID token names another principal")
            groups = await self.session_groups(tokens=tokens, id_claims=claims)
            changes |= {
                "groups": principal.groups if groups is None else groups,
                "email": principal.email,
                "email_verified": principal.email_verified,
                "name": principal.name,
                "username": principal.username,
                "id_token": tokens.id_token,
                "token_expires_at": min(self._token_expiry(tokens, claims, now), session.expires_at),
            }
        return replace(session, **changes)

    def _remember(self, key: str, session: Session, now: float) -> None:
        for old in [k for k, (_, until) in self._recent.items() if until <= now]:
            del self._recent[old]
        self._recent[key] = (session, now + _RECENT_SECONDS)

    async def _end(self, session: Session) -> None:
        await self._store.revoke(session_keys(session)[0], at=self._clock(), until=session.expires_at)
