"""The policy → Looker: the roles a principal holds on a ``looker_embed`` upstream become the embed user's
permissions, models, group ids, external group id, user attributes and access filters (pure).

Roles come in ascending privilege (the role set's order). Lists are unions in first-seen order; maps merge in
role order, so the more privileged role wins a key; ``external_group_id`` is the most privileged role's that sets
one. No role with a Looker grant → None: the caller refuses with 403 ``no_looker_role`` before Looker is asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from idgate.config_looker import LookerEmbedConfig
from idgate.looker.embed_url import EmbedUser, external_user_id

T = TypeVar("T")


def _union(lists: Iterable[tuple[T, ...]]) -> tuple[T, ...]:
    return tuple(dict.fromkeys(item for items in lists for item in items))


def split_name(name: str | None, fallback: str) -> tuple[str, str]:
    """``("Zoë", "Müller-Lüdenscheidt")`` from ``"Zoë Müller-Lüdenscheidt"``: first word / the rest; a one-word
    or missing name gives ``(name or fallback, "")`` (Looker keeps its default ``Embed``/``User`` for empty)."""
    parts = (name or "").split(None, 1)
    if not parts:
        return fallback, ""
    return parts[0], parts[1] if len(parts) > 1 else ""


def embed_user(
    config: LookerEmbedConfig,
    *,
    roles: tuple[str, ...],
    issuer: str,
    subject: str,
    name: str | None,
    username: str | None,
) -> EmbedUser | None:
    """The embed user for a principal holding ``roles`` (ascending privilege); None when no role maps."""
    grants = [config.roles[r] for r in roles if r in config.roles]
    if not grants:
        return None

    attributes: dict[str, str] = {}
    filters: dict[str, dict[str, str]] = {}
    external_group: str | None = None
    for grant in grants:
        attributes.update(grant.user_attributes)
        for model, fields in grant.access_filters.items():
            filters.setdefault(model, {}).update(fields)
        external_group = grant.external_group_id or external_group
    first, last = split_name(name, username or "Embed")
    return EmbedUser(
        external_user_id=external_user_id(issuer, subject),
        first_name=first,
        last_name=last,
        permissions=_union(g.permissions for g in grants),
        models=_union(g.models for g in grants),
        group_ids=_union(g.group_ids for g in grants),
        external_group_id=external_group,
        user_attributes=attributes,
        access_filters=filters,
    )
