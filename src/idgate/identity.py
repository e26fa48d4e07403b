"""Identity values for the upstream, rendered so they can never split a header or forge a role.

The decision answers fixed slots (:data:`idgate.facts.IDENTITY_SLOTS`: ``user`` … ``issuer``); each adapter puts
them on its wire (``txn.idgate.user`` …) and HAProxy copies each into the upstream's own header names
(``X-WEBAUTH-USER`` for Grafana, ``X-Auth-User`` for a generic app).

Rules (docs: ../shared notes "security" rule 11; Grafana ``[auth.proxy] headers_encoded``):
- a value with a control character (CR, LF, NUL, …) is dropped and noted, never passed;
- a group or role containing the list delimiter ``,`` or a control character is dropped and noted, so a group
  named ``viewers,admin`` cannot add ``admin``;
- non-ASCII is encoded per profile: ``percent`` (RFC 3986 percent-encoding of UTF-8; ``%`` itself encoded) for
  generic/looker, ``quoted-printable`` (RFC 2045 §6.7 without soft line breaks) for Grafana's headers_encoded;
- an email is passed on only when it is usable as an identity (:func:`usable_email`: ``email_verified: true``, or
  the issuer's ``trust_unverified_email`` opt-in); otherwise the ``email`` slot is left out (note
  ``email_dropped_unverified``) and an upstream whose user comes from the email (``user_from: email``, Grafana's
  ``header_property = email``) is refused, 403 ``unverified_email`` — never served as someone else, and never
  silently given another attribute in the user slot.

Safe identity keys (OIDC Core §5.7): only ``iss`` + ``sub`` is stable and unique. ``user_from: subject`` is the
safe choice; ``email`` (when verified) and ``username`` (``preferred_username``, which OIDC Core says not to rely
on as unique) are conveniences for upstreams that key users by them, and are only as trustworthy as the IdP's
control over those attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from idgate.config import UpstreamConfig
from idgate.principal import Principal

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN_PERCENT = frozenset(
    b"!#$&'()*+-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~ ,"
)
_PLAIN_QP = frozenset(range(33, 127)) - {ord("=")}


def percent_encode(value: str) -> str:
    """UTF-8 percent-encoding of every byte outside printable ASCII, and of ``%`` and ``"``."""
    if value.isascii() and value.isprintable() and "%" not in value and '"' not in value:
        return value  # the common case, without a per-byte loop
    return "".join(chr(b) if b in _PLAIN_PERCENT else f"%{b:02X}" for b in value.encode("utf-8"))


def quoted_printable(value: str) -> str:
    """Quoted-printable of UTF-8 without soft line breaks (what Go's quotedprintable reader decodes).

    Spaces stay literal except a trailing one (RFC 2045 §6.7 rule 3), so plain ASCII names without ``=`` read
    the same whether or not Grafana's ``headers_encoded`` is on.
    """
    if value.isascii() and value.isprintable() and "=" not in value and not value.endswith(" "):
        return value  # the common case, without a per-byte loop
    data = value.encode("utf-8")
    last = len(data) - 1
    return "".join(chr(b) if b in _PLAIN_QP or (b == 0x20 and i != last) else f"={b:02X}" for i, b in enumerate(data))


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    """Rendered slot values (header-safe ASCII), the notes (reason codes) of anything dropped, and ``refused``: the
    reason code when the user slot cannot be filled safely (``unsafe_identity``, ``unverified_email``), else None."""

    values: dict[str, str]
    notes: tuple[str, ...]
    refused: str | None = None


def usable_email(principal: Principal, *, trust_unverified: bool) -> str | None:
    """The principal's email when it may stand for the person: ``email_verified`` was the JSON boolean ``true``, or
    the issuer opted in (``trust_unverified_email``, ``trust_unverified``); None otherwise (OIDC Core §5.7)."""
    return principal.email if principal.email_verified or trust_unverified else None


def render_identity(
    principal: Principal, upstream: UpstreamConfig, roles: tuple[str, ...], *, trust_unverified_email: bool = False
) -> Identity:
    """Render ``principal`` for ``upstream``; ``roles`` are in ascending privilege order (last = highest).

    ``trust_unverified_email`` is the principal's issuer's opt-in (see :func:`usable_email`).
    """
    encode = quoted_printable if upstream.profile == "grafana" else percent_encode
    notes: list[str] = []
    email = usable_email(principal, trust_unverified=trust_unverified_email)
    if principal.email is not None and email is None:
        notes.append("email_dropped_unverified")

    def single(slot: str, value: str | None) -> str | None:
        if value is None:
            return None
        if _CONTROL.search(value):
            notes.append(f"{slot}_dropped_control_char")
            return None
        return encode(value)

    def listed(slot: str, items: tuple[str, ...]) -> str:
        kept = []
        for item in items:
            if "," in item or _CONTROL.search(item):
                notes.append(f"{slot}_entry_dropped")
                continue
            kept.append(encode(item))
        return ",".join(kept)

    # user_from: email takes the usable email or nothing: another attribute in its place would be another identity
    user_source = {"username": principal.username or principal.subject, "email": email, "subject": principal.subject}
    raw: dict[str, str | None] = {
        "user": single("user", user_source[upstream.user_from]),
        "email": single("email", email),
        "name": single("name", principal.name),
        "groups": listed("groups", principal.groups),
        "roles": listed("roles", roles),
        "role": single("role", roles[-1]) if roles else None,
        "subject": single("subject", principal.subject),
        "issuer": single("issuer", principal.issuer),
    }
    values = {slot: value for slot, value in raw.items() if value is not None}
    refused = None
    if "user" not in values:
        refused = "unverified_email" if upstream.user_from == "email" and email is None else "unsafe_identity"
    return Identity(values=values, notes=tuple(dict.fromkeys(notes)), refused=refused)
