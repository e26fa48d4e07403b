"""Bearer JWT verification (RFC 9068 §4, RFC 8725, RFC 7515) on ``cryptography``, with keys from :mod:`idgate.jwks`.

Order of checks, cheapest first, each failure a :class:`~idgate.errors.TokenError` with a reason code:

1. size (``token_too_large``) and compact-JWS shape: three base64url segments, JSON object header and payload
   (``invalid_token``; JWE and JSON serialisation are refused);
2. the unverified ``iss`` selects a configured issuer by exact string equality (``invalid_issuer``);
3. header: ``alg`` in the issuer's pinned list — never from the token or discovery (``alg_not_allowed``);
   ``jku``/``x5u``/``jwk``/``x5c`` present (``forbidden_header``: never honoured, so refused); any ``crit``
   (``unsupported_crit``: we implement no extension, RFC 7515 §4.1.11); ``typ`` ``at+jwt`` when the issuer
   requires it (``invalid_typ``);
4. claims: required ones present, and every registered claim idgate relies on of its JSON type —
   ``exp``/``nbf``/``iat`` numbers, ``iss``/``sub``/``jti``/``azp``/``sid``/``client_id`` strings, ``aud`` a string
   or an array of strings (``invalid_claim_type``; :mod:`idgate.claims`), before any of them is read as a
   number (``int("9999999999")`` would be one);
5. the key for ``kid`` (``unknown_kid``), and ``alg`` usable with that key's type; when the issuer's keys cannot
   be had, :class:`~idgate.errors.KeysUnavailable` (503, not a verdict on the token: see :mod:`idgate.jwks`);
6. :mod:`idgate.jws` (the rules PyJWT's ``jwt.decode`` applied, in its order): canonical base64url, signature
   (``invalid_signature``), ``nbf``/``iat`` (``not_yet_valid``) and ``exp`` (``expired``) with the leeway, exact
   ``iss``, ``aud`` containing a configured audience (``invalid_audience``);
7. not an ID token or logout token (``nonce``, ``at_hash``, ``c_hash``, ``events``; Keycloak ``typ`` ID/Logout):
   ``invalid_typ`` (RFC 8725 §3.11).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from idgate.claims import check_claims
from idgate.config import IssuerConfig
from idgate.errors import TokenError
from idgate.jwks import JwksCache, VerificationKey
from idgate.jws import check_registered_claims, verify_signature
from idgate.principal import Principal, principal_from_claims
from idgate.token_cache import TokenCache

_B64URL = re.compile(r"[A-Za-z0-9_-]*")  # used with fullmatch: "$" would accept a trailing newline
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")
_AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_ACCESS_REQUIRED = ("exp", "iss", "aud", "sub")
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash", "events")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrustedIssuer:
    """An issuer's settings paired with its key cache."""

    config: IssuerConfig
    keys: JwksCache


def _b64json(segment: str, what: str) -> dict[str, Any]:
    if not segment or not _B64URL.fullmatch(segment):
        raise TokenError("invalid_token", f"{what} is not base64url")
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise TokenError("invalid_token", f"{what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise TokenError("invalid_token", f"{what} is not a JSON object")
    return value


def split_compact_jws(token: str, *, max_bytes: int) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Unverified header, payload and (unchecked) signature segment of a compact JWS.

    Raises:
        TokenError: ``token_too_large`` or ``invalid_token``.
    """
    if len(token) > max_bytes:
        raise TokenError("token_too_large", f"token exceeds {max_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("invalid_token", "not a compact JWS (JWE and JSON serialisation are refused)")
    return _b64json(parts[0], "header"), _b64json(parts[1], "payload"), parts[2]


TokenKind = Literal["access", "id", "logout"]


async def verify_jws(
    token: str, trusted: TrustedIssuer, *, kind: TokenKind, audiences: Sequence[str], require: Sequence[str]
) -> dict[str, Any]:
    """Verify a compact JWS from ``trusted``'s issuer and return its claims (steps 1 and 3-6 of the module doc).

    The claim presence and types (step 4, :func:`idgate.claims.check_claims`) are checked for every kind.
    ``kind`` selects the ``typ`` rule: ``access`` — ``at+jwt`` when the issuer requires it; ``id`` — absent or
    ``JWT`` (OIDC Core §2); ``logout`` — absent or ``logout+jwt`` (OIDC Back-Channel Logout §2.4).
    ``audiences``: ``aud`` must contain one of them. ``require``: claims that must be present.

    Raises:
        TokenError: with a reason code.
        KeysUnavailable: the issuer's keys cannot be had now.
    """
    header, payload, signature = split_compact_jws(token, max_bytes=trusted.config.max_token_bytes)
    claims, _ = await _verify_parts(
        token, header, payload, signature, trusted, kind=kind, audiences=audiences, require=require
    )
    return claims


async def _verify_parts(
    token: str,
    header: Mapping[str, Any],
    payload: Mapping[str, Any],
    signature: str,
    trusted: TrustedIssuer,
    *,
    kind: TokenKind,
    audiences: Sequence[str],
    require: Sequence[str],
) -> tuple[dict[str, Any], VerificationKey]:
    """The verified claims and the key that verified them."""
    cfg = trusted.config
    if len(token) > cfg.max_token_bytes:
        raise TokenError("token_too_large", f"token exceeds {cfg.max_token_bytes} bytes")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in cfg.algorithms:
        raise TokenError("alg_not_allowed", f"alg {str(alg)[:20]!r} is not pinned for this issuer")
    if not signature or not _B64URL.fullmatch(signature):
        raise TokenError("invalid_token", "signature segment missing or not base64url")
    if any(h in header for h in _FORBIDDEN_HEADERS):
        raise TokenError("forbidden_header", "jku, x5u, jwk and x5c are never honoured")
    if "crit" in header:
        raise TokenError("unsupported_crit", "no JWS extension is supported")
    raw_typ = header.get("typ")
    if raw_typ is not None and not isinstance(raw_typ, str):
        raise TokenError("invalid_typ", "typ is not a string")
    typ = raw_typ.lower() if raw_typ is not None else None
    if kind == "access" and cfg.require_at_jwt_typ and typ not in _AT_JWT_TYPES:
        raise TokenError("invalid_typ", "typ must be at+jwt (RFC 9068 §2.1)")
    if (kind == "id" and typ not in (None, "jwt")) or (kind == "logout" and typ not in (None, "logout+jwt")):
        raise TokenError("invalid_typ", f"typ {str(typ)[:20]!r} is not allowed for an {kind} token")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
        raise TokenError("invalid_token", "kid is not a short string")
    check_claims(payload, require=require)
    key = await trusted.keys.get_key(kid)
    if alg not in key.algorithms:
        raise TokenError("alg_not_allowed", f"alg {alg} does not fit the key's type")
    verify_signature(token, header, alg, key.key)
    claims = dict(payload)
    check_registered_claims(claims, issuer=cfg.issuer, audiences=audiences, leeway=cfg.leeway_seconds, require=require)
    return claims, key


class Verifier:
    """Verifies bearer JWTs against the configured issuers. Stateless apart from the key caches it holds."""

    def __init__(self, *, issuers: Mapping[str, TrustedIssuer], cache: TokenCache | None = None) -> None:
        """``issuers`` maps the exact ``iss`` string to its :class:`TrustedIssuer`; ``cache`` remembers verified
        tokens until their ``exp`` with the kid of the key that verified them, so that withdrawing a key drops them
        (see :mod:`idgate.token_cache`)."""
        self._issuers = dict(issuers)
        self._cache = cache
        self._max_bytes = max((t.config.max_token_bytes for t in self._issuers.values()), default=16384)

    def issuer(self, iss: str) -> TrustedIssuer | None:
        """The trusted issuer whose ``issuer`` equals ``iss`` exactly."""
        return self._issuers.get(iss)

    async def verify(self, token: str) -> Principal:
        """Verify bearer ``token`` and return its principal.

        Raises:
            TokenError: with one of the reason codes listed in the module docstring.
            KeysUnavailable: the issuer's keys cannot be had now (answered 503, never 401).
        """
        if self._cache is not None:
            cached = self._cache.get(token)
            if cached is not None:
                return cached
        principal, kid = await self._verify(token)
        if self._cache is not None:
            self._cache.put(token, principal, kid=kid)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, str | None]:
        header, payload, signature = split_compact_jws(token, max_bytes=self._max_bytes)
        iss = payload.get("iss")
        trusted = self._issuers.get(iss) if isinstance(iss, str) else None
        if trusted is None:
            raise TokenError("invalid_issuer", "iss is not a configured issuer")
        cfg = trusted.config
        claims, key = await _verify_parts(
            token,
            header,
            payload,
            signature,
            trusted,
            kind="access",
            audiences=cfg.audiences,
            require=_ACCESS_REQUIRED,
        )
        if any(c in claims for c in _ID_TOKEN_CLAIMS) or claims.get("typ") in ("ID", "Logout"):
            raise TokenError("invalid_typ", "an ID or logout token is not a bearer token (RFC 8725 §3.11)")
        return principal_from_claims(claims, paths=cfg.claims), key.kid
