"""Reading an issuer's published keys: a JWKS document → the keys usable for signature checks (no I/O).

Rules (RFC 7517 §4-5, RFC 7518 §3, RFC 8725 §3.1):
- a key is usable when it is a public signing key (``use`` absent or ``sig``, no private member ``d``) of a known
  asymmetric type, whose algorithms — from its type and curve, narrowed by its ``alg`` — meet the issuer's pinned
  list; ``oct`` (symmetric) keys never are;
- an RSA modulus under 2048 bits is refused (RFC 7518 §3.3: "a key of size 2048 bits or larger MUST be used");
  note that a base64url decoder drops characters outside its alphabet, so a garbled modulus can load as a tiny key;
- a malformed, unusable or duplicated (same ``kid``, the first one wins) key is skipped and counted, never fatal;
- each usable key carries its RFC 7638 thumbprint, so a key replaced under the same ``kid`` is noticed.

``ttl_from_cache_control`` turns the response's ``Cache-Control`` into the key set's TTL (RFC 9111 §5.2.2.1).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from idgate.errors import KeySetError

MIN_RSA_BITS = 2048
_ALGS_BY_KEY = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("OKP", "Ed448"): frozenset({"EdDSA"}),
}
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
_MAX_AGE_RE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True, slots=True)
class VerificationKey:
    """One usable public key: the key object, the pinned algorithms it may verify, and its RFC 7638 thumbprint
    (base64url SHA-256 of the required members)."""

    kid: str | None
    key: object
    algorithms: frozenset[str]
    thumbprint: str = ""


def ttl_from_cache_control(value: str | None, *, min_ttl: float, max_ttl: float) -> float:
    """TTL in seconds from a Cache-Control header value, clamped to [min_ttl, max_ttl] (RFC 9111 §5.2.2.1)."""
    if not value or re.search(r"no-cache|no-store", value, re.IGNORECASE):
        return min_ttl
    match = _MAX_AGE_RE.search(value)
    if not match:
        return min_ttl
    return min(max(float(match.group(1)), min_ttl), max_ttl)


def parse_jwks(document: object, *, pinned: frozenset[str]) -> tuple[dict[str | None, VerificationKey], int]:
    """Parse a JWKS document into usable keys (by ``kid``) and a count of skipped ones. The result may be empty.

    Raises:
        KeySetError: the document is not a JSON object with a ``keys`` array.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySetError("JWKS is not an object with a 'keys' array")
    keys: dict[str | None, VerificationKey] = {}
    skipped = 0
    for jwk in document["keys"]:
        parsed = _parse_key(jwk, pinned)
        if parsed is None or parsed.kid in keys:
            skipped += 1  # malformed, unusable, or a duplicate kid (ambiguous: the first one wins)
            continue
        keys[parsed.kid] = parsed
    return keys, skipped


def _parse_key(jwk: object, pinned: frozenset[str]) -> VerificationKey | None:
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
        return None
    kid, kty, crv, alg = (jwk.get(k) for k in ("kid", "kty", "crv", "alg"))
    if not all(v is None or isinstance(v, str) for v in (kid, kty, crv, alg)):
        return None  # an array or object where a string belongs: malformed
    if kid is not None and len(kid) > 256:
        return None
    algs = _ALGS_BY_KEY.get((kty, None if kty == "RSA" else crv))  # type: ignore[arg-type]
    if algs is None:
        return None  # "oct" (symmetric) and unknown key types are never verification keys here
    if alg is not None:
        algs = algs & {alg}
    algs = algs & pinned
    if not algs:
        return None
    try:
        key = jwt.PyJWK(jwk, algorithm=next(iter(sorted(algs)))).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return None
    return VerificationKey(kid=kid, key=key, algorithms=frozenset(algs), thumbprint=thumbprint(jwk))


def thumbprint(jwk: dict[str, object]) -> str:
    """The RFC 7638 thumbprint of a public JWK (SHA-256, base64url without padding); "" for an unknown type."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        return ""
    canonical = json.dumps({m: jwk.get(m) for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
