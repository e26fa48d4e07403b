"""The ``/.idgate/looker/`` endpoints: idgate as Looker's embedding application (HAProxy routes ``/.idgate/`` to
idgate in both modes, without an auth call; these endpoints read the session cookie themselves).

    GET  /.idgate/looker/embed?target=/embed/dashboards/42[&upstream=NAME]
         signed embedding: 302 to Looker's signed embed login URL for the signed-in user; no session → 401
         ``no_session`` (a page linking to sign-in: the embedding page is itself behind idgate, so its user is
         signed in, and login never returns into ``/.idgate/``); no Looker role → 403 ``no_looker_role``; a
         target that is not a Looker ``/embed/`` path → 400 ``bad_target``
    POST /.idgate/looker/cookieless/acquire[?upstream=NAME]
    POST /.idgate/looker/cookieless/generate_tokens[?upstream=NAME]   JSON {navigation_token, api_token}
         cookieless embedding: JSON tokens for the embedding page (Looker's acquire / generate_tokens answers
         without the session reference token, which idgate keeps per idgate session)

The POST endpoints are same-origin only: ``Origin`` must be this site and the request must carry
``X-Requested-With: idgate`` (a custom header a cross-site form cannot send without a CORS preflight, which idgate
never grants); otherwise 403 ``cross_site``. No session → 401 ``no_session``; no Looker role → 403
``no_looker_role``; Looker unreachable → 503 ``looker_unavailable`` (+ ``Retry-After``); Looker refusing → 502
``looker_refused``. ``upstream`` is needed only when several ``looker_embed`` upstreams exist (400
``unknown_upstream`` otherwise). Every answer is ``Cache-Control: no-store``; every outcome is one log line
(``looker_embed``, ``looker_refused``) with a reason code — never a 500, never an allow by default.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from idgate.config import UpstreamConfig
from idgate.config_looker import LookerEmbedConfig
from idgate.errors import ProviderError, RequestError
from idgate.looker.cookieless import LookerApi
from idgate.looker.embed_url import EmbedUser, as_json, check_target, signed_embed_url
from idgate.looker.mapping import embed_user
from idgate.looker.references import ReferenceStore
from idgate.policy import Policy
from idgate.sso.params import unique_params
from idgate.sso.routes import PREFIX, Sso, site_origin
from idgate.sso.session import Session

log = logging.getLogger("idgate.looker")
LOOKER_PREFIX = f"{PREFIX}/looker"
CSRF_HEADER = ("x-requested-with", "idgate")
MAX_BODY_BYTES = 16 * 1024
_NO_STORE = {"cache-control": "no-store"}


@dataclass(frozen=True, kw_only=True, slots=True)
class LookerUpstream:
    """One ``looker_embed`` upstream: its profile, Looker block, API client (None without cookieless)."""

    name: str
    upstream: UpstreamConfig
    config: LookerEmbedConfig
    api: LookerApi | None
    references: ReferenceStore = field(default_factory=ReferenceStore)


@dataclass(frozen=True, kw_only=True, slots=True)
class Looker:
    """What the Looker endpoints need: the upstreams and the policy that maps groups to roles."""

    upstreams: Mapping[str, LookerUpstream]
    policy: Policy
    clock: Callable[[], float] = time.time


def _event(event: str, **fields: object) -> None:
    log.info(json.dumps({"event": event, **fields}, ensure_ascii=True, default=str))


def _granted(
    response: Response,
    mode: str,
    upstream: str,
    session: Session,
    user: EmbedUser,
    roles: Iterable[str],
    cookies: Iterable[str],
) -> Response:
    """Audit one granted embedding (``looker_embed``: who, which roles, permissions and models) and return
    ``response`` with the session's ``Set-Cookie`` values."""
    _event(
        "looker_embed",
        mode=mode,
        upstream=upstream,
        iss=session.issuer,
        sub=session.subject,
        external_user_id=user.external_user_id,
        roles=list(roles),
        permissions=list(user.permissions),
        models=list(user.models),
    )
    for value in cookies:
        response.headers.append("set-cookie", value)
    return response


def _json(status: int, reason: str, *, cookies: tuple[str, ...] = (), **extra: object) -> JSONResponse:
    headers = dict(_NO_STORE)
    if status == 503:
        headers["retry-after"] = "5"
    response = JSONResponse({"error": reason, **extra}, status, headers=headers)
    for value in cookies:
        response.headers.append("set-cookie", value)
    return response


def _page(
    status: int, title: str, reason: str, *, cookies: tuple[str, ...] = (), sign_in: bool = False
) -> HTMLResponse:
    t = html.escape(title)
    body = f"<!doctype html><html><head><meta charset='utf-8'><title>{t}</title></head><body><h1>{t}</h1>"
    link = f"<p><a href='{PREFIX}/start?rd=/'>Sign in</a></p>" if sign_in else ""
    response = HTMLResponse(
        f"{body}<p>Reason: <code>{reason}</code></p>{link}</body></html>", status, headers=_NO_STORE
    )
    for value in cookies:
        response.headers.append("set-cookie", value)
    return response


def _pick(looker: Looker, name: str | None) -> LookerUpstream:
    """The upstream named ``name`` (or the only one). Raises RequestError ``unknown_upstream``."""
    if name is None and len(looker.upstreams) == 1:
        return next(iter(looker.upstreams.values()))
    found = looker.upstreams.get(name or "")
    if found is None:
        raise RequestError("unknown_upstream", "name a looker_embed upstream with ?upstream=")
    return found


def _user(looker: Looker, target: LookerUpstream, session: Session) -> tuple[EmbedUser | None, tuple[str, ...]]:
    roles = looker.policy.roles_for(target.upstream, session.groups)
    user = embed_user(
        target.config,
        roles=roles,
        issuer=session.issuer,
        subject=session.subject,
        name=session.name,
        username=session.username,
    )
    return user, roles


def looker_routes(get_sso: Callable[[Request], Sso | None], get: Callable[[Request], Looker | None]) -> list[Route]:
    """The Starlette routes; ``get`` returns the request's :class:`Looker` (None: no ``looker_embed`` upstream)."""

    async def embed(request: Request) -> Response:
        sso, looker = get_sso(request), get(request)
        if sso is None or looker is None:
            return _page(404, "Looker embedding is not configured", "not_configured")
        try:
            params = unique_params(request.query_params.multi_items())
            target = _pick(looker, params.get("upstream"))
            path = check_target(params.get("target"))
        except RequestError as exc:
            _event("looker_refused", reason=exc.reason)
            return _page(400, "Malformed Looker embed link", exc.reason)
        if target.config.embed_secret is None:
            _event("looker_refused", reason="signed_embed_off", upstream=target.name)
            return _page(404, "Signed embedding is not configured", "signed_embed_off")
        outcome = await sso.sessions.resolve(request.headers.get("cookie"))
        if outcome.session is None:
            _event("looker_refused", reason="no_session", upstream=target.name)
            return _page(401, "Sign in first", "no_session", cookies=outcome.set_cookies, sign_in=True)
        session = outcome.session
        user, roles = _user(looker, target, session)
        if user is None:
            _event(
                "looker_refused", reason="no_looker_role", upstream=target.name, iss=session.issuer, sub=session.subject
            )
            return _page(403, "You have no Looker role", "no_looker_role", cookies=outcome.set_cookies)
        url = signed_embed_url(
            url=target.config.url,
            host=target.config.host,
            secret=target.config.embed_secret.get_secret_value(),
            target=path,
            user=user,
            now=int(looker.clock()),
            session_length=target.config.session_length_seconds,
            force_logout_login=target.config.force_logout_login,
        )
        response = RedirectResponse(url, 302, headers=_NO_STORE)
        return _granted(response, "signed", target.name, session, user, roles, outcome.set_cookies)

    async def cookieless(request: Request, action: str) -> Response:
        sso, looker = get_sso(request), get(request)
        if sso is None or looker is None:
            return _json(404, "not_configured")
        origin = request.headers.get("origin", "").lower()
        if origin != site_origin(request) or request.headers.get(CSRF_HEADER[0], "").lower() != CSRF_HEADER[1]:
            _event("looker_refused", reason="cross_site", action=action)
            return _json(403, "cross_site")
        try:
            target = _pick(looker, unique_params(request.query_params.multi_items()).get("upstream"))
        except RequestError as exc:
            _event("looker_refused", reason=exc.reason, action=action)
            return _json(400, exc.reason)
        if target.api is None:
            return _json(404, "cookieless_off")
        outcome = await sso.sessions.resolve(request.headers.get("cookie"))
        if outcome.session is None:
            _event("looker_refused", reason="no_session", action=action)
            return _json(401, "no_session", cookies=outcome.set_cookies)
        session = outcome.session
        user, roles = _user(looker, target, session)
        if user is None:
            _event("looker_refused", reason="no_looker_role", action=action, iss=session.issuer, sub=session.subject)
            return _json(403, "no_looker_role", cookies=outcome.set_cookies)
        # one Looker session per idgate session and embed user: a role change starts a new Looker session
        key = hashlib.sha256(as_json([target.name, session.sid, repr(user)]).encode()).hexdigest()
        try:
            if action == "acquire":
                answer = await target.api.acquire(
                    user,
                    session_length=target.config.session_length_seconds,
                    force_logout_login=target.config.force_logout_login,
                    reference=target.references.get(key),
                )
            else:
                body = await _body(request)
                reference = target.references.get(key)
                if reference is None:
                    _event("looker_refused", reason="no_cookieless_session", action=action)
                    return _json(400, "no_cookieless_session", cookies=outcome.set_cookies)
                answer = await target.api.generate_tokens(
                    reference=reference, navigation_token=body["navigation_token"], api_token=body["api_token"]
                )
        except RequestError as exc:
            _event("looker_refused", reason=exc.reason, action=action)
            return _json(400, exc.reason, cookies=outcome.set_cookies)
        except ProviderError as exc:
            _event("looker_refused", reason=exc.reason, action=action, detail=exc.detail[:100])
            return _json(503 if exc.transient else 502, exc.reason, cookies=outcome.set_cookies)
        if answer.reference is not None:
            ttl = answer.browser.get("session_reference_token_ttl")
            seconds = float(ttl) if isinstance(ttl, int | float) else float(target.config.session_length_seconds)
            target.references.put(key, answer.reference, seconds)
        response = JSONResponse(dict(answer.browser), headers=_NO_STORE)
        return _granted(response, f"cookieless_{action}", target.name, session, user, roles, outcome.set_cookies)

    async def acquire(request: Request) -> Response:
        return await cookieless(request, "acquire")

    async def generate_tokens(request: Request) -> Response:
        return await cookieless(request, "generate_tokens")

    return [
        Route(f"{LOOKER_PREFIX}/embed", embed, methods=["GET"]),
        Route(f"{LOOKER_PREFIX}/cookieless/acquire", acquire, methods=["POST"]),
        Route(f"{LOOKER_PREFIX}/cookieless/generate_tokens", generate_tokens, methods=["POST"]),
    ]


async def _body(request: Request) -> dict[str, str]:
    """The generate_tokens JSON body: an object with string ``navigation_token`` and ``api_token``. Raises
    RequestError ``bad_body``."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise RequestError("bad_body", "body too large")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise RequestError("bad_body", "not JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) and data[k] for k in ("navigation_token", "api_token")
    ):
        raise RequestError("bad_body", "navigation_token and api_token must be strings")
    return {"navigation_token": data["navigation_token"], "api_token": data["api_token"]}
