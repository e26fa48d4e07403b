"""Entra ID groups overage, resolved through Microsoft Graph.

When a user is in more groups than fit a token (200 in a JWT), Entra ID leaves ``groups`` out and says so:
``"_claim_names": {"groups": "src1"}`` with ``"_claim_sources": {"src1": {"endpoint": ...}}`` (OIDC Core §5.6.2,
distributed claims), or ``"hasgroups": true`` (implicit flow). idgate never calls the endpoint named in the token
(a token must not choose where idgate sends credentials); it asks the configured ``entra.graph_url`` instead:

1. an app-only token by client credentials at the issuer's token endpoint (RFC 6749 §4.4, Microsoft identity
   platform "client credentials flow"; ``scope=https://graph.microsoft.com/.default``), kept until 60 s before
   its ``expires_in``;
2. ``GET {graph_url}/users/{oid}/transitiveMemberOf?$select=id`` (Graph v1.0 "List a user's memberships
   (direct and transitive)"), following ``@odata.nextLink`` on the same origin only; entries whose
   ``@odata.type`` is ``#microsoft.graph.group`` give their ``id`` (group object IDs: what Entra puts in
   ``groups`` by default).

Bounded: the whole resolution by ``entra.timeout_seconds``, at most ``entra.max_pages`` pages of at most
``entra.max_bytes`` each, at most ``entra.max_groups`` groups. Beyond any bound, or on any failure:
:class:`~idgate.errors.ProviderError` ``groups_overage_unresolved`` (the caller then gives no groups).
The app needs the Graph application permission ``GroupMember.Read.All`` (or ``Directory.Read.All``).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import httpx

from idgate.config import EntraSettings
from idgate.errors import ProviderError
from idgate.sso.fetch import bounded_json

REASON = "groups_overage_unresolved"
_GROUP_TYPE = "#microsoft.graph.group"


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc.lower()


class GraphGroups:
    """Group object IDs of Entra ID users, from Microsoft Graph with the app's client credentials."""

    def __init__(
        self,
        *,
        settings: EntraSettings,
        client_id: str,
        client_secret: str,
        token_endpoint: Callable[[], Awaitable[str]],
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``token_endpoint`` returns the issuer's token endpoint URL (from discovery)."""
        self._settings = settings
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_endpoint = token_endpoint
        self._http = http
        self._clock = clock
        self._app_token: tuple[str, float] | None = None

    async def groups_of(self, user_id: str) -> tuple[str, ...]:
        """The IDs of the groups ``user_id`` (the token's ``oid``) belongs to, directly or transitively.

        Raises:
            ProviderError: ``groups_overage_unresolved`` for any failure or bound exceeded.
        """
        s = self._settings
        if not user_id or len(user_id) > 128:
            raise ProviderError(REASON, "no usable oid claim", transient=False)
        try:
            async with asyncio.timeout(s.timeout_seconds):
                token = await self._token()
                return await self._pages(user_id, token)
        except TimeoutError:
            raise ProviderError(
                REASON, f"Graph did not answer within {s.timeout_seconds:g} s", transient=True
            ) from None
        except ProviderError as exc:
            raise ProviderError(REASON, exc.detail or exc.reason, transient=exc.transient) from None

    async def _token(self) -> str:
        now = self._clock()
        if self._app_token is not None and now < self._app_token[1]:
            return self._app_token[0]
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "scope": self._settings.scope,
        }
        doc = await bounded_json(
            self._http,
            "POST",
            await self._token_endpoint(),
            reason=REASON,
            timeout_seconds=self._settings.timeout_seconds,
            max_bytes=64 * 1024,
            data=form,
        )
        if not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
            raise ProviderError(REASON, "client credentials answer has no access_token", transient=False)
        expires_in = doc.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) else 0
        self._app_token = (doc["access_token"], now + max(0.0, lifetime - 60))
        return str(doc["access_token"])

    async def _pages(self, user_id: str, token: str) -> tuple[str, ...]:
        s = self._settings
        url: str | None = f"{s.graph_url}/users/{urllib.parse.quote(user_id, safe='')}/transitiveMemberOf?$select=id"
        origin = _origin(s.graph_url)
        groups: list[str] = []
        for _ in range(s.max_pages):
            if url is None:
                return tuple(groups)
            if _origin(url) != origin:
                raise ProviderError(REASON, "@odata.nextLink leaves the Graph origin", transient=False)
            page = await bounded_json(
                self._http,
                "GET",
                url,
                reason=REASON,
                timeout_seconds=s.timeout_seconds,
                max_bytes=s.max_bytes,
                headers={"authorization": f"Bearer {token}", "accept": "application/json"},
            )
            groups += _group_ids(page)
            if len(groups) > s.max_groups:
                raise ProviderError(REASON, f"more than {s.max_groups} groups", transient=False)
            next_link = page.get("@odata.nextLink")
            url = next_link if isinstance(next_link, str) else None
        if url is not None:
            raise ProviderError(REASON, f"more than {s.max_pages} pages", transient=False)
        return tuple(groups)


def _group_ids(page: object) -> list[str]:
    """The ``id`` of every group entry of one page; ProviderError when the page is not the documented shape."""
    if not isinstance(page, dict) or not isinstance(page.get("value"), list):
        raise ProviderError(REASON, "Graph answer has no value array", transient=False)
    ids = []
    for entry in page["value"]:
        if not isinstance(entry, dict):
            raise ProviderError(REASON, "Graph answer entry is not an object", transient=False)
        if entry.get("@odata.type") == _GROUP_TYPE and isinstance(entry.get("id"), str) and entry["id"]:
            ids.append(entry["id"])
    return ids
