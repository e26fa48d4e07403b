"""Groups of a browser session, from where the issuer puts them (``issuers[].claims.sources``).

At login and at every refresh, for each source in the configured order:

``id_token``
    the verified ID token's claims;
``access_token``
    the access token of the same token response, when it is a JWS verified with the issuer's pinned algorithms
    and keys (:func:`idgate.verifier.verify_jws`; ``typ`` per ``require_at_jwt_typ``, ``iss``, ``exp``). Its
    ``aud`` is not ours to check: it names the resource server (Keycloak: ``account``); idgate got it straight
    from the token endpoint. Its ``sub`` must be the ID token's;
``userinfo``
    the JSON answer of the issuer's ``userinfo_endpoint`` (OIDC Core §5.3) to that access token, within the
    issuer's JWKS ``timeout_seconds`` and :data:`USERINFO_MAX_BYTES`; its ``sub`` must be the ID token's
    (§5.3.2). A signed (``application/jwt``) answer is not used.

Merge: the groups (``claims.groups`` then ``claims.roles`` paths, :func:`idgate.principal.groups_at`) of every
source are joined in that order, de-duplicated, at most :data:`idgate.principal.MAX_GROUPS`; the identity (sub,
username, email, name) comes from the ID token only. A source that cannot be used adds no groups and a note:
``access_token_not_jwt``, ``access_token_unverified``, ``userinfo_unavailable``, ``userinfo_sub_mismatch``,
``groups_overage_unresolved``. Only the resulting groups are kept in the session cookie, never claim sets.

Entra ID groups overage (:mod:`idgate.sso.graph`): a source whose claims say the groups were left out gets them
from Microsoft Graph, when ``entra`` is configured — only those the policy names (``role_sets.*.from_groups``,
``routes[].allow.groups``), so a user in a thousand groups still fits the session cookie; otherwise, or when
Graph fails, no groups from Graph and the note ``groups_overage_unresolved`` (logged, counted in
``idgate_session_group_notes_total{reason}``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from idgate.config import Config, IssuerConfig
from idgate.errors import KeysUnavailable, ProviderError, TokenError
from idgate.principal import MAX_GROUPS, groups_at, has_overage
from idgate.sso.fetch import bounded_json
from idgate.sso.graph import REASON as OVERAGE_REASON
from idgate.sso.graph import GraphGroups
from idgate.sso.oidc import OidcClient, TokenSet
from idgate.verifier import TrustedIssuer, split_compact_jws, verify_jws

log = logging.getLogger("idgate.sessions")
USERINFO_MAX_BYTES = 64 * 1024
NOTES = (
    "access_token_not_jwt",
    "access_token_unverified",
    "userinfo_unavailable",
    "userinfo_sub_mismatch",
    OVERAGE_REASON,
    "groups_not_a_list",
    "group_not_a_string",
    "groups_truncated",
)
"""Every reason code a session's groups can be noted with (the ``reason`` label of the metric: a fixed set)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionGroups:
    """The joined groups of every source (in order, de-duplicated) and the notes of sources that gave none."""

    groups: tuple[str, ...]
    notes: tuple[str, ...] = ()


class ClaimSources:
    """Reads a session's groups from the issuer's configured sources. One per login issuer."""

    def __init__(
        self,
        *,
        trusted: TrustedIssuer,
        oidc: OidcClient,
        http: httpx.AsyncClient,
        graph: GraphGroups | None = None,
        policy_groups: frozenset[str] | None = None,
    ) -> None:
        """``policy_groups``: the groups the policy names (``from_groups``, ``allow.groups``); the groups Graph
        answers are kept only when named there (a user in 1000 groups must still fit the session cookie). None:
        every group Graph answers is kept."""
        self._policy_groups = policy_groups
        self._trusted = trusted
        self._config: IssuerConfig = trusted.config
        self._oidc = oidc
        self._http = http
        self._graph = graph
        self.note_counts: Counter[str] = Counter()

    async def groups(self, *, tokens: TokenSet, id_claims: Mapping[str, Any]) -> SessionGroups:
        """Groups from every configured source for one token response and its verified ID token claims.

        Never raises for what a source answers, nor when it cannot be reached: an unusable source is a note (see
        the module doc).
        """
        notes: list[str] = []
        joined: list[str] = []
        subject = id_claims.get("sub")
        for source in self._config.claims.sources:
            if source == "id_token":
                claims: Mapping[str, Any] | None = id_claims
            elif source == "access_token":
                claims = await self._access_token_claims(tokens.access_token, subject, notes)
            else:
                claims = await self._userinfo(tokens.access_token, subject, notes)
            if claims is not None:
                for group in await self._groups_of(claims, id_claims, notes):
                    if group not in joined:
                        joined.append(group)
        if len(joined) > MAX_GROUPS:
            joined, notes = joined[:MAX_GROUPS], [*notes, "groups_truncated"]
        found = tuple(dict.fromkeys(notes))
        for note in found:
            self.note_counts[note] += 1
            log.warning(json.dumps({"event": "session_groups", "reason": note, "issuer": self._config.name}))
        return SessionGroups(groups=tuple(joined), notes=found)

    async def _groups_of(
        self, claims: Mapping[str, Any], id_claims: Mapping[str, Any], notes: list[str]
    ) -> tuple[str, ...]:
        found: list[str] = []
        groups = groups_at(claims, self._config.claims, found)
        notes += [n for n in found if n != OVERAGE_REASON]  # an overage is resolved below, or noted there
        if not has_overage(claims):
            return groups
        oid = claims.get("oid", id_claims.get("oid"))
        if self._graph is None or not isinstance(oid, str):
            notes.append(OVERAGE_REASON)
            return groups
        try:
            resolved = await self._graph.groups_of(oid)
        except ProviderError as exc:
            notes.append(OVERAGE_REASON)
            log.warning(json.dumps({"event": "groups_overage_unresolved", "detail": exc.detail[:200]}))
            return groups
        wanted = self._policy_groups
        return groups + tuple(g for g in resolved if wanted is None or g in wanted)

    async def _access_token_claims(self, token: str, subject: object, notes: list[str]) -> Mapping[str, Any] | None:
        try:
            _, payload, _ = split_compact_jws(token, max_bytes=self._config.max_token_bytes)
        except TokenError:
            notes.append("access_token_not_jwt")
            return None
        aud = payload.get("aud")
        audiences = (
            [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
        )
        try:
            claims = await verify_jws(
                token, self._trusted, kind="access", audiences=audiences or [""], require=("iss", "exp", "sub")
            )
        except (TokenError, KeysUnavailable):
            notes.append("access_token_unverified")
            return None
        if claims.get("sub") != subject:
            notes.append("access_token_unverified")
            return None
        return claims

    async def _userinfo(self, access_token: str, subject: object, notes: list[str]) -> Mapping[str, Any] | None:
        try:
            meta = await self._oidc.metadata()
            endpoint = meta.get("userinfo_endpoint")
            if not isinstance(endpoint, str) or not self._oidc.url_ok(endpoint):
                raise ProviderError("userinfo_unavailable", "no usable userinfo_endpoint", transient=False)
            doc = await bounded_json(
                self._http,
                "GET",
                endpoint,
                reason="userinfo_unavailable",
                timeout_seconds=self._config.jwks.timeout_seconds,
                max_bytes=USERINFO_MAX_BYTES,
                headers={"authorization": f"Bearer {access_token}", "accept": "application/json"},
            )
        except ProviderError:
            notes.append("userinfo_unavailable")
            return None
        if not isinstance(doc, dict):
            notes.append("userinfo_unavailable")
            return None
        if doc.get("sub") != subject:
            notes.append("userinfo_sub_mismatch")
            return None
        return doc


def claim_sources(
    trusted: TrustedIssuer,
    oidc: OidcClient,
    http: httpx.AsyncClient,
    *,
    policy_groups: frozenset[str] | None = None,
) -> ClaimSources | None:
    """The claim sources of the login issuer, None when it reads the ID token alone and resolves no overage."""
    cfg = trusted.config
    graph = None
    if cfg.entra is not None and cfg.client_id is not None and cfg.client_secret is not None:

        async def token_endpoint() -> str:
            return str((await oidc.metadata())["token_endpoint"])

        graph = GraphGroups(
            settings=cfg.entra,
            client_id=cfg.client_id,
            client_secret=cfg.client_secret.get_secret_value(),
            token_endpoint=token_endpoint,
            http=http,
        )
    if cfg.claims.sources == ("id_token",) and graph is None:
        return None
    return ClaimSources(trusted=trusted, oidc=oidc, http=http, graph=graph, policy_groups=policy_groups)


def policy_groups(config: Config) -> frozenset[str]:
    """Every group the policy names: the keys of ``role_sets.*.from_groups`` and ``routes[].allow.groups``."""
    named = {g for rs in config.role_sets.values() for g in rs.from_groups}
    named |= {g for r in config.routes if r.allow is not None for g in r.allow.groups}
    return frozenset(named)
