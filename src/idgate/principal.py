"""The principal: who the caller is, built from verified claims through the issuer's claim paths.

The principal's key is ``(issuer, subject)`` — never the email or username (Grafana CVE-2022-31107). OIDC Core
§5.7: ``iss`` + ``sub`` is the only pair guaranteed stable and unique; ``email`` and ``preferred_username`` can
change and are not unique across an IdP's users or tenants. An ``email`` is an identity only when the IdP says it
verified it (``email_verified`` is the JSON boolean ``true``) or the issuer opts in with ``trust_unverified_email``
(:func:`idgate.identity.usable_email`): Entra ID's ``email`` is user-editable ("nOAuth").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from idgate.config import ClaimPaths
from idgate.errors import TokenError

MAX_GROUPS = 256


@dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """An authenticated caller.

    ``groups`` holds only string entries of a list-valued groups claim, in token order, de-duplicated.
    ``notes`` carries non-fatal reason codes met while reading claims (e.g. ``groups_not_a_list``).
    ``email_verified`` is True only when the ``email_verified`` claim is the JSON boolean ``true`` (OIDC Core §5.1);
    absent, ``false``, ``"true"`` (a string) or anything else is False.
    """

    issuer: str
    subject: str
    username: str | None
    email: str | None
    name: str | None
    groups: tuple[str, ...]
    expires_at: float
    notes: tuple[str, ...] = ()
    email_verified: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """The stable identity key (iss, sub)."""
        return (self.issuer, self.subject)


def claim_at(claims: Mapping[str, object], path: str) -> object:
    """Return the value at a dotted ``path`` (``realm_access.roles``) or None when any step is missing.

    A claim whose own name contains a dot is matched first as a whole (``https://example.com/groups``-style names
    without dots are the norm; this keeps ``a.b`` literal names usable).
    """
    if path in claims:
        return claims[path]
    node: object = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _string(claims: Mapping[str, object], path: str) -> str | None:
    value = claim_at(claims, path)
    return value if isinstance(value, str) and value else None


def has_overage(claims: Mapping[str, object]) -> bool:
    """True when the claims say the groups were left out: Entra ID's groups overage, ``_claim_names.groups``
    (OIDC Core §5.6.2 distributed claims) or ``hasgroups: true``."""
    names = claims.get("_claim_names")
    return (isinstance(names, Mapping) and "groups" in names) or claims.get("hasgroups") is True


def groups_at(claims: Mapping[str, object], paths: ClaimPaths, notes: list[str]) -> tuple[str, ...]:
    """The string entries of the list at ``paths.groups``, then of the list at ``paths.roles`` (when set),
    de-duplicated in order, at most :data:`MAX_GROUPS`; reason codes of what was dropped are appended to ``notes``
    (``groups_not_a_list``, ``group_not_a_string``, ``groups_truncated``)."""
    groups: list[str] = []
    for path in (paths.groups, paths.roles):
        raw = claim_at(claims, path) if path is not None else None
        if raw is None:
            continue
        if not isinstance(raw, list):
            # A string is not iterated into characters; it is refused (the principal gets no groups from it).
            notes.append("groups_not_a_list")
            continue
        for g in raw:
            if isinstance(g, str) and g and g not in groups:
                groups.append(g)
            elif not isinstance(g, str):
                notes.append("group_not_a_string")
    if len(groups) > MAX_GROUPS:
        groups = groups[:MAX_GROUPS]
        notes.append("groups_truncated")
    if has_overage(claims):
        notes.append("groups_overage_unresolved")  # a bearer token's own claims: no groups (sessions ask Graph)
    return tuple(groups)


def principal_from_claims(claims: Mapping[str, object], *, paths: ClaimPaths) -> Principal:
    """Build a :class:`Principal` from verified claims (their types already checked by :mod:`idgate.claims`).

    ``groups`` of the wrong shape is not an error: a non-array adds no groups (note ``groups_not_a_list``), a
    non-string entry is dropped (note ``group_not_a_string``) — the caller keeps the key ``(iss, sub)`` and gets no
    privilege from a claim idgate cannot read. ``email_verified`` is read from the top-level claim whatever the
    configured email path.

    Raises:
        TokenError: ``invalid_claims`` when the subject is missing, not a string, or longer than 255 characters, or
            when a numeric ``exp`` is beyond a float (``10**400``: PyJWT accepts any int, ``float()`` overflows).
    """
    subject = claim_at(claims, paths.subject)
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise TokenError("invalid_claims", "subject claim missing or not a short string")
    notes: list[str] = []
    groups = list(groups_at(claims, paths, notes))
    exp = claims.get("exp")
    expires_at = 0.0
    if isinstance(exp, int | float):
        try:
            expires_at = float(exp)
        except OverflowError:
            raise TokenError("invalid_claims", "exp is out of range") from None
    return Principal(
        issuer=str(claims.get("iss", "")),
        subject=subject,
        username=_string(claims, paths.username),
        email=_string(claims, paths.email),
        name=_string(claims, paths.name),
        groups=tuple(groups),
        expires_at=expires_at,
        notes=tuple(dict.fromkeys(notes)),
        email_verified=claims.get("email_verified") is True,
    )
