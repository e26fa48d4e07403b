"""The Looker API calls of cookieless embedding (Looker "Cookieless embedding"; API 4.0 ``login``,
``acquire_embed_cookieless_session``, ``generate_tokens_for_cookieless_session``), over httpx.

Why not ``looker-sdk``: it is synchronous (requests) and would hold an event-loop thread per call; these are three
documented JSON endpoints, and httpx (already idgate's HTTP client) gives async calls with one bounded timeout
(``api_timeout_seconds``) each. Every failure is a :class:`~idgate.errors.ProviderError`: ``looker_unavailable``
(transient: unreachable, timeout, 5xx, garbled answer) or ``looker_refused`` (a 4xx), never an exception escaping.

    POST /api/4.0/login                                 client_id + client_secret (form) → access_token, expires_in
    POST /api/4.0/embed/cookieless_session/acquire      EmbedCookielessSessionAcquire → the session's tokens
    PUT  /api/4.0/embed/cookieless_session/generate_tokens   {session_reference_token, navigation_token,
                                                         api_token} → fresh navigation and API tokens

The ``session_reference_token`` never leaves idgate (Looker: keep it on the server); the browser gets the
authentication, navigation and API tokens and their TTLs (seconds).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from idgate.errors import ProviderError
from idgate.looker.embed_url import EmbedUser

TOKEN_FIELDS = (
    "authentication_token",
    "authentication_token_ttl",
    "navigation_token",
    "navigation_token_ttl",
    "api_token",
    "api_token_ttl",
    "session_reference_token_ttl",
)
"""What the embedding page receives (the documented response fields, ``session_reference_token`` excepted)."""
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class CookielessSession:
    """Looker's answer to acquire / generate_tokens: ``reference`` (kept by idgate) and ``browser`` (the fields of
    :data:`TOKEN_FIELDS` present, for the embedding page)."""

    reference: str | None
    browser: Mapping[str, object]


def acquire_body(
    user: EmbedUser, *, session_length: int, force_logout_login: bool, reference: str | None
) -> dict[str, Any]:
    """The ``EmbedCookielessSessionAcquire`` body (API 4.0: group ids are strings)."""
    body: dict[str, Any] = {
        "session_length": session_length,
        "force_logout_login": force_logout_login,
        "external_user_id": user.external_user_id,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "permissions": list(user.permissions),
        "models": list(user.models),
        "group_ids": [str(g) for g in user.group_ids],
        "user_attributes": dict(user.user_attributes),
    }
    if user.external_group_id is not None:
        body["external_group_id"] = user.external_group_id
    if reference is not None:
        body["session_reference_token"] = reference
    return body


class LookerApi:
    """One Looker instance's API with API3 credentials; the access token is reused until 60 s before it expires.
    ``ca_file``: a PEM CA bundle to verify ``api_url``'s certificate (default: the system store); redirects are
    never followed."""

    def __init__(
        self,
        *,
        api_url: str,
        client_id: str,
        client_secret: str,
        timeout_seconds: float,
        ca_file: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = api_url.rstrip("/") + "/api/4.0"
        self._credentials = {"client_id": client_id, "client_secret": client_secret}
        self._timeout = timeout_seconds
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._client = httpx.AsyncClient(
            timeout=timeout_seconds, transport=transport, follow_redirects=False, verify=verify
        )
        self._clock = clock
        self._token: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await asyncio.wait_for(self._client.request(method, self._base + path, **kwargs), self._timeout)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise ProviderError("looker_unavailable", type(exc).__name__, transient=True) from None
        if response.status_code >= 500:
            raise ProviderError("looker_unavailable", f"HTTP {response.status_code}", transient=True)
        if response.status_code >= 400:
            raise ProviderError("looker_refused", f"HTTP {response.status_code} on {path}", transient=False)
        try:
            if len(response.content) > _MAX_BYTES:
                raise ValueError("too large")
            data = response.json()
        except ValueError:
            raise ProviderError("looker_unavailable", "not JSON", transient=True) from None
        if not isinstance(data, dict):
            raise ProviderError("looker_unavailable", "not a JSON object", transient=True)
        return data

    async def _access_token(self) -> str:
        async with self._lock:
            if self._token is not None and self._clock() < self._token[1]:
                return self._token[0]
            data = await self._call("POST", "/login", data=self._credentials)
            token, expires_in = data.get("access_token"), data.get("expires_in", 0)
            if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
                raise ProviderError("looker_unavailable", "login answer without access_token", transient=True)
            self._token = (token, self._clock() + max(0.0, float(expires_in) - 60))
            return token

    async def _authorized(self, method: str, path: str, body: Mapping[str, Any]) -> CookielessSession:
        token = await self._access_token()
        data = await self._call(method, path, json=dict(body), headers={"authorization": f"token {token}"})
        reference = data.get("session_reference_token")
        browser = {k: data[k] for k in TOKEN_FIELDS if k in data and isinstance(data[k], str | int | float)}
        if not isinstance(browser.get("navigation_token"), str) or not isinstance(browser.get("api_token"), str):
            raise ProviderError("looker_unavailable", "answer without navigation_token/api_token", transient=True)
        return CookielessSession(reference=reference if isinstance(reference, str) else None, browser=browser)

    async def acquire(
        self, user: EmbedUser, *, session_length: int, force_logout_login: bool, reference: str | None
    ) -> CookielessSession:
        """``acquire_embed_cookieless_session`` for ``user``; ``reference`` joins an existing Looker session.
        Raises ProviderError."""
        body = acquire_body(
            user, session_length=session_length, force_logout_login=force_logout_login, reference=reference
        )
        session = await self._authorized("POST", "/embed/cookieless_session/acquire", body)
        if session.reference is None or not isinstance(session.browser.get("authentication_token"), str):
            raise ProviderError("looker_unavailable", "acquire answer incomplete", transient=True)
        return session

    async def generate_tokens(self, *, reference: str, navigation_token: str, api_token: str) -> CookielessSession:
        """``generate_tokens_for_cookieless_session``. Raises ProviderError."""
        body = {"session_reference_token": reference, "navigation_token": navigation_token, "api_token": api_token}
        return await self._authorized("PUT", "/embed/cookieless_session/generate_tokens", body)
