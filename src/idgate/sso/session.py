"""Browser sessions: the value kept (encrypted) in the session cookie, and the revocation store.

A session holds what the decision needs (iss, sub, username, email and whether the IdP verified it, name, groups),
its timestamps (seconds since the epoch), the refresh token and the ID token (the ``id_token_hint`` of RP-initiated
logout), and the IdP's session id ``sid`` (back-channel logout). It is serialised as compact JSON and sealed by
:mod:`idgate.sso.cookies`. A cookie written before ``email_verified`` was kept does not parse: that browser logs in
again (never a session whose email counts as verified by default).

Revocation (OIDC RP-Initiated Logout, Back-Channel Logout 1.0 §2.7): signing out remembers the session id until
the session's absolute expiry, so a replayed cookie is refused; a back-channel logout token revokes by the IdP's
``sid`` or by subject (every session of that subject created before the logout). ``jti`` values of logout tokens
are remembered to refuse replays, for the tokens' acceptance window only (:mod:`idgate.sso.routes`): an older
token is refused by its ``iat`` anyway. The store is :class:`idgate.store.base.RevocationStore`:
:class:`~idgate.store.memory.MemoryRevocationStore` serves one process, :mod:`idgate.store.redis` many replicas.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from idgate.principal import Principal
from idgate.store.base import RevocationStore
from idgate.store.memory import MemoryRevocationStore

__all__ = ["MemoryRevocationStore", "RevocationStore", "Session", "is_revoked", "session_keys"]

_STR_FIELDS = ("sid", "issuer", "subject", "id_token")
_OPT_STR_FIELDS = ("username", "email", "name", "refresh_token", "idp_sid")
_TIME_FIELDS = ("created_at", "last_seen", "expires_at", "token_expires_at")


@dataclass(frozen=True, kw_only=True, slots=True)
class Session:
    """One browser session. Times are seconds since the epoch."""

    sid: str
    issuer: str
    subject: str
    username: str | None
    email: str | None
    name: str | None
    groups: tuple[str, ...]
    created_at: float
    last_seen: float
    expires_at: float  # absolute expiry
    token_expires_at: float  # when the IdP's tokens expire: refresh before this
    refresh_token: str | None
    id_token: str
    idp_sid: str | None = None
    email_verified: bool = False  # the ID token's email_verified was the JSON boolean true

    def to_bytes(self) -> bytes:
        """Compact JSON."""
        data = asdict(self)
        data["groups"] = list(self.groups)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session | None:
        """Parse :meth:`to_bytes` output; None for anything else (never raises)."""
        try:
            data: Any = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            return None
        if not all(isinstance(data[k], str) for k in _STR_FIELDS):
            return None
        if not all(data[k] is None or isinstance(data[k], str) for k in _OPT_STR_FIELDS):
            return None
        if not all(isinstance(data[k], int | float) and not isinstance(data[k], bool) for k in _TIME_FIELDS):
            return None
        if not isinstance(data["email_verified"], bool):
            return None
        groups = data["groups"]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            return None
        return cls(**{**data, "groups": tuple(groups)})

    def principal(self) -> Principal:
        """The principal this session stands for."""
        return Principal(
            issuer=self.issuer,
            subject=self.subject,
            username=self.username,
            email=self.email,
            name=self.name,
            groups=self.groups,
            expires_at=self.expires_at,
            email_verified=self.email_verified,
        )

    def touched(self, now: float) -> Session:
        """The same session seen at ``now``."""
        return replace(self, last_seen=now)


def session_keys(session: Session) -> tuple[str, ...]:
    """Revocation keys that end ``session``: its own id, the IdP session id, and its subject."""
    keys = [f"sid:{session.sid}", f"sub:{session.issuer}|{session.subject}"]
    if session.idp_sid:
        keys.append(f"idp_sid:{session.issuer}|{session.idp_sid}")
    return tuple(keys)


async def is_revoked(store: RevocationStore, session: Session) -> bool:
    """True when the session was signed out, or its IdP session or subject was logged out after it began."""
    for key in session_keys(session):
        at = await store.revoked_at(key)
        if at is not None and (key.startswith("sid:") or at >= session.created_at):
            return True
    return False
