"""The reserved ``/.idgate/`` endpoints HAProxy routes to idgate without auth.

    GET  /.idgate/start?rd=URL        begin a login: one-time state, nonce and PKCE verifier (and the IdP's name)
                                      in a short-lived ``__Host-`` login-state cookie, then 302 to the IdP. With
         [&idp=NAME]                  several IdPs (``login.issuers``): ``idp`` picks one (unknown: 400
                                      ``unknown_idp``); without it the host's default, ``login.default_issuer``,
                                      or the chooser page (:mod:`idgate.sso.chooser`)
    GET  /.idgate/callback[/NAME]     finish it: IdP error → escaped error page; state (constant-time); the
                                      callback URL must be the login's redirect URI and RFC 9207 ``iss`` the
                                      login's IdP (else ``issuer_mismatch``: the mix-up defence); code exchange
                                      and ID token checks at THAT IdP; a NEW session id; 302 to the return URL
    GET  /.idgate/sign_out            a confirmation page whose form POSTs a CSRF token bound to the session
    POST /.idgate/sign_out            same-origin only (``Origin`` must be this site) and the CSRF token must open to
                                      the session id: revoke, clear cookies, 302 to the IdP's end_session_endpoint
    POST /.idgate/backchannel-logout  OIDC Back-Channel Logout: a logout+jwt ends sessions by ``sid`` or ``sub``;
                                      its ``iat`` must be recent (``login.logout_token_max_age_seconds``
                                      + leeway), and a replayed ``jti`` is refused within that window; every
                                      refusal is 400 with the reason code in the log; 503 + ``Retry-After``
                                      while the issuer's keys cannot be had (the IdP may retry)

Every failure is a clear 4xx/5xx page or JSON with a reason code in the log — never a stack trace or a 500.
Return URLs go through :func:`idgate.sso.redirects.safe_return_to` (exact origins, WHATWG-style parsing). A
parameter given twice (query or form, any order) is refused with 400 ``duplicate_parameter`` before anything else
is read (:mod:`idgate.sso.params`, RFC 6749 §3.1).
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from idgate.config import LoginConfig
from idgate.errors import CredentialError, ProviderError, RequestError
from idgate.metrics import Metrics
from idgate.sso.chooser import chooser_page
from idgate.sso.cookies import KeyRing, SessionCookies
from idgate.sso.manager import SessionManager
from idgate.sso.oidc import LoginState, OidcClient, same_text, unverified_issuer
from idgate.sso.params import MAX_FORM_BYTES, form_params, unique_params
from idgate.sso.redirects import safe_return_to
from idgate.sso.session import RevocationStore

log = logging.getLogger("idgate.sso")
PREFIX = "/.idgate"
_CSRF_AAD = b"idgate-csrf"


@dataclass(frozen=True, kw_only=True, slots=True)
class Sso:
    """What the SSO endpoints need."""

    login: LoginConfig
    oidc: OidcClient
    sessions: SessionManager
    login_cookies: SessionCookies
    ring: KeyRing
    store: RevocationStore
    absolute_timeout_seconds: float
    clock: Callable[[], float] = time.time
    metrics: Metrics | None = None
    clients: tuple[OidcClient, ...] = ()  # every login IdP (``login.issuers``); empty: ``oidc`` alone

    @property
    def idps(self) -> tuple[OidcClient, ...]:
        """The login IdPs in config order."""
        return self.clients or (self.oidc,)

    def client(self, name: str) -> OidcClient | None:
        """The login IdP with issuers[] name ``name``."""
        return next((c for c in self.idps if c.name == name), None)

    def client_for_issuer(self, issuer: str) -> OidcClient | None:
        """The login IdP whose issuer URL is exactly ``issuer``."""
        return next((c for c in self.idps if c.issuer == issuer), None)

    def default_idp(self, host: str) -> str | None:
        """The IdP ``/.idgate/start`` uses without ``?idp=`` on ``host`` (Host header, lowercase; matched as
        ``host:port`` then ``host``), else ``login.default_issuer``, else the only one; None: the chooser."""
        by_host = self.login.default_issuer_by_host
        hostname = host if host.endswith("]") else host.rsplit(":", 1)[0]  # never raises on a hostile Host
        names = [c.name for c in self.idps]
        return (
            by_host.get(host)
            or by_host.get(hostname)
            or self.login.default_issuer
            or (names[0] if len(names) == 1 else None)
        )


def _page(status: int, title: str, body: str, *, cookies: tuple[str, ...] = ()) -> HTMLResponse:
    t = html.escape(title)
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>{t}</title></head>"
    doc = f"{head}<body><h1>{t}</h1>{body}</body></html>"
    response = HTMLResponse(doc, status, headers={"cache-control": "no-store"})
    for value in cookies:
        response.headers.append("set-cookie", value)
    return response


def _redirect(location: str, *, cookies: tuple[str, ...] = ()) -> Response:
    response = RedirectResponse(location, 302, headers={"cache-control": "no-store"})
    for value in cookies:
        response.headers.append("set-cookie", value)
    return response


def _event(sso: Sso, event: str, **fields: object) -> None:
    """Log one SSO event line and count it (:meth:`idgate.metrics.Metrics.sso_event`)."""
    log.info(json.dumps({"event": event, **fields}, ensure_ascii=True, default=str))
    if sso.metrics is not None:
        reason = fields.get("reason")
        sso.metrics.sso_event(event, reason if isinstance(reason, str) else None)


def site_origin(request: Request) -> str:
    """``https://<Host>`` of the request as HAProxy received it (TLS is terminated there)."""
    return "https://" + request.headers.get("host", "").strip().lower()


async def _form(request: Request) -> dict[str, str]:
    """The url-encoded form of ``request``, each field once. Raises RequestError (:func:`form_params`)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break  # form_params refuses it; the rest is never read
    return form_params(body)


def _query(request: Request) -> dict[str, str]:
    """The query parameters of ``request``, each once. Raises RequestError ``duplicate_parameter``."""
    return unique_params(request.query_params.multi_items())


def sso_routes(get: Callable[[Request], Sso | None]) -> list[Route]:
    """The Starlette routes; ``get`` returns the request's :class:`Sso` (None when login is not configured)."""

    def unavailable() -> Response:
        return _page(404, "Login is not configured", "<p>This idgate has no browser login.</p>")

    async def start(request: Request) -> Response:
        sso = get(request)
        if sso is None:
            return unavailable()
        try:
            params = _query(request)
        except RequestError as exc:
            _event(sso, "login_refused", reason=exc.reason, parameter=exc.detail)
            return _page(400, "Malformed sign-in link", "<p><a href='/.idgate/start?rd=/'>Sign in</a></p>")
        origin = site_origin(request)
        if not any(u.startswith(origin + "/") for u in sso.login.redirect_uris):
            _event(sso, "login_refused", reason="site_not_configured", origin=origin[:200])
            return _page(400, "This site is not configured for login", "<p>No redirect URI matches this host.</p>")
        return_to = safe_return_to(
            params.get("rd"), allowed_origins=frozenset({origin, *sso.login.allowed_return_origins})
        )
        name = params.get("idp")
        if name is None:
            name = sso.default_idp(request.headers.get("host", "").strip().lower())
            if name is None:
                _event(sso, "login_chooser")
                return chooser_page(prefix=PREFIX, names=[c.name for c in sso.idps], return_to=return_to)
        client = sso.client(name)
        if client is None:
            _event(sso, "login_refused", reason="unknown_idp", idp=name[:64])
            return _page(400, "Unknown identity provider", f"<p><a href='{PREFIX}/start?rd=/'>Sign in</a></p>")
        # per-IdP redirect URI first (the callback then also tells which IdP answered), else the site's shared one
        redirect_uri = next(
            (
                u
                for u in (f"{origin}{PREFIX}/callback/{name}", f"{origin}{PREFIX}/callback")
                if u in sso.login.redirect_uris
            ),
            None,
        )
        if redirect_uri is None:
            _event(sso, "login_refused", reason="site_not_configured", origin=origin[:200], idp=name)
            return _page(400, "This site is not configured for login", "<p>No redirect URI matches this host.</p>")
        started = time.perf_counter()
        login = client.new_login(return_to=return_to, redirect_uri=redirect_uri, now=sso.clock())
        try:
            url = await client.authorization_url(login)
        except ProviderError as exc:
            _event(sso, "login_failed", reason=exc.reason)
            return _page(503, "The identity provider is unavailable", "<p>Please try again shortly.</p>")
        cookie = sso.login_cookies.encode(login.to_bytes(), max_age=int(sso.login.login_timeout_seconds))
        response = _redirect(url, cookies=tuple(cookie))
        _event(sso, "login_start", idp=name, start_ms=round((time.perf_counter() - started) * 1000, 3))
        return response

    async def callback(request: Request) -> Response:
        sso = get(request)
        if sso is None:
            return unavailable()
        clear_login = tuple(sso.login_cookies.clear())
        retry = "<p><a href='/.idgate/start?rd=/'>Sign in again</a></p>"

        def fail(status: int, title: str, reason: str, **fields: object) -> Response:
            _event(sso, "login_failed", reason=reason, **fields)
            return _page(status, title, retry, cookies=clear_login)

        try:
            params = _query(request)  # before anything is read: a repeated state, code, iss or error is ambiguous
        except RequestError as exc:
            return fail(400, "Malformed sign-in response", exc.reason, parameter=exc.detail)

        if "error" in params:
            _event(sso, "login_failed", reason="idp_error", error=params["error"][:100])
            detail = html.escape(params.get("error_description", "")[:300])
            body = f"<p>The identity provider answered: <code>{html.escape(params['error'][:100])}</code></p>"
            return _page(
                400,
                "Sign-in was not completed",
                body + (f"<p>{detail}</p>" if detail else "") + retry,
                cookies=clear_login,
            )
        payload, _ = sso.login_cookies.decode(request.headers.get("cookie"))
        login = LoginState.from_bytes(payload) if payload is not None else None
        if login is None or sso.clock() - login.created_at > sso.login.login_timeout_seconds:
            return fail(400, "Your sign-in attempt expired or began in another browser", "login_state_missing")
        if not same_text(params.get("state", ""), login.state):
            return fail(400, "Sign-in state mismatch", "state_mismatch")
        if not login.redirect_uri.startswith(site_origin(request) + "/") or "code" not in params:
            return fail(400, "Malformed sign-in response", "bad_callback")
        client = sso.client(login.idp)
        if client is None:  # a login begun at an IdP no longer configured (or before the IdP was recorded)
            return fail(400, "Your sign-in attempt expired or began in another browser", "login_state_missing")
        # Mix-up defence (RFC 9700 §4.4): the answer must come back on the login's own redirect URI (per-IdP
        # /.idgate/callback/<name> when configured) and, when the IdP sends or advertises it, with the login's
        # IdP as RFC 9207 iss; the code is then redeemed at that IdP only.
        if login.redirect_uri != site_origin(request) + request.url.path:
            return fail(400, "Sign-in answer from another identity provider", "issuer_mismatch", via="redirect_uri")
        started = time.perf_counter()
        try:
            await client.check_response_issuer(params.get("iss"))
            exchange_started = time.perf_counter()
            tokens = await client.exchange_code(code=params["code"], login=login)
            idp_seconds = time.perf_counter() - exchange_started
            if tokens.id_token is None:
                return fail(400, "The identity provider sent no ID token", "no_id_token")
            claims = await client.verify_id_token(tokens.id_token, nonce=login.nonce, access_token=tokens.access_token)
            groups = await sso.sessions.session_groups(tokens=tokens, id_claims=claims)
            session = sso.sessions.new_session(tokens=tokens, id_claims=claims, groups=groups)
            session_cookies = sso.sessions.issue(session)
        except ProviderError as exc:
            status = 503 if exc.transient else 400
            return fail(status, "Sign-in failed at the identity provider", exc.reason)
        except CredentialError as exc:
            return fail(400, "The identity provider's answer was refused", exc.reason)
        return_to = safe_return_to(
            login.return_to, allowed_origins=frozenset({site_origin(request), *sso.login.allowed_return_origins})
        )
        response = _redirect(return_to, cookies=clear_login + session_cookies)
        total = time.perf_counter() - started
        _event(
            sso,
            "login",
            idp=client.name,
            iss=session.issuer,
            sub=session.subject,
            sid=session.sid[:8],
            callback_ms=round(total * 1000, 3),
            idp_token_ms=round(idp_seconds * 1000, 3),
        )
        return response

    async def sign_out_page(request: Request) -> Response:
        sso = get(request)
        if sso is None:
            return unavailable()
        session = await sso.sessions.read(request.headers.get("cookie"))
        if session is None:
            return _page(200, "You are signed out", "<p><a href='/'>Continue</a></p>")
        token = html.escape(sso.ring.seal(session.sid.encode(), aad=_CSRF_AAD))
        form = (
            f"<form method='post' action='{PREFIX}/sign_out'><input type='hidden' name='csrf' value='{token}'>"
            "<button type='submit' id='sign-out'>Sign out</button></form>"
        )
        return _page(200, "Sign out", f"<p>Signed in as {html.escape(session.email or session.subject)}.</p>{form}")

    async def sign_out(request: Request) -> Response:
        sso = get(request)
        if sso is None:
            return unavailable()
        if request.headers.get("origin", "").lower() != site_origin(request):
            _event(sso, "sign_out_refused", reason="cross_site")
            return _page(403, "Cross-site sign-out refused", "<p>Use the sign-out page.</p>")
        try:
            form = await _form(request)
        except RequestError as exc:
            _event(sso, "sign_out_refused", reason=exc.reason, detail=exc.detail)
            return _page(400, "Malformed sign-out form", "<p><a href='/.idgate/sign_out'>Retry</a></p>")
        session = await sso.sessions.read(request.headers.get("cookie"))
        clear = sso.sessions.clear()
        if session is None:
            return _redirect(sso.login.post_logout_redirect_uri or "/", cookies=clear)
        opened = sso.ring.open(form.get("csrf", ""), aad=_CSRF_AAD)
        if opened is None or not hmac.compare_digest(opened, session.sid.encode()):
            _event(sso, "sign_out_refused", reason="csrf")
            return _page(403, "Sign-out refused", "<p>The form expired. <a href='/.idgate/sign_out'>Retry</a></p>")
        await sso.sessions.sign_out(session)
        _event(sso, "sign_out", iss=session.issuer, sub=session.subject, sid=session.sid[:8])
        client = sso.client_for_issuer(session.issuer)  # RP-initiated logout at the session's own IdP
        try:
            target = await client.end_session_url(id_token_hint=session.id_token or None) if client else None
        except ProviderError:
            target = None
        return _redirect(target or sso.login.post_logout_redirect_uri or "/", cookies=clear)

    async def backchannel_logout(request: Request) -> Response:
        sso = get(request)
        headers = {"cache-control": "no-store"}
        if sso is None:
            return JSONResponse({"error": "invalid_request"}, 400, headers=headers)
        try:
            token = (await _form(request)).get("logout_token", "")
            # the issuer named in the token picks the keys that must verify it; an unknown one is refused
            client = sso.client_for_issuer(unverified_issuer(token) or "")
            if client is None:
                raise CredentialError("unknown_issuer", "the logout token names no login issuer")
            claims = await client.verify_logout_token(token)
        except (RequestError, CredentialError) as exc:
            _event(sso, "backchannel_logout_refused", reason=exc.reason)
            return JSONResponse({"error": "invalid_request"}, 400, headers=headers)
        except ProviderError as exc:  # the issuer's keys cannot be had now: the token is not at fault, retry later
            _event(sso, "backchannel_logout_deferred", reason=exc.reason)
            return JSONResponse({"error": "temporarily_unavailable"}, 503, headers=headers | {"retry-after": "5"})
        now = sso.clock()
        until = now + sso.absolute_timeout_seconds  # sessions created before now stay revoked for their lifetime
        # the jti only for the token's acceptance window: after it, the token is refused by its iat
        replay_until = client.logout_replay_until(claims)
        if not await sso.store.remember_once(f"jti:{claims['iss']}|{claims['jti']}", until=replay_until):
            _event(sso, "backchannel_logout_refused", reason="jti_replayed")
            return JSONResponse({"error": "invalid_request"}, 400, headers=headers)
        if isinstance(claims.get("sid"), str):
            await sso.store.revoke(f"idp_sid:{claims['iss']}|{claims['sid']}", at=now, until=until)
        else:
            await sso.store.revoke(f"sub:{claims['iss']}|{claims['sub']}", at=now, until=until)
        _event(sso, "backchannel_logout", iss=claims["iss"], sub=claims.get("sub"), has_sid="sid" in claims)
        return Response(status_code=200, headers=headers)

    return [
        Route(f"{PREFIX}/start", start, methods=["GET"]),
        Route(f"{PREFIX}/callback", callback, methods=["GET"]),
        Route(f"{PREFIX}/callback/{{idp}}", callback, methods=["GET"]),
        Route(f"{PREFIX}/sign_out", sign_out_page, methods=["GET"]),
        Route(f"{PREFIX}/sign_out", sign_out, methods=["POST"]),
        Route(f"{PREFIX}/backchannel-logout", backchannel_logout, methods=["POST"]),
    ]
