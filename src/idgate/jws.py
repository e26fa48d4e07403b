"""Compact JWS signature verification (RFC 7515 §5.2) on ``cryptography``, and the registered-claim checks of
RFC 7519 §4.1, in the order and with the outcomes PyJWT 2.x's ``jwt.decode`` had, without its per-character work.

:func:`idgate.verifier.verify_jws` parses the token strictly first (three non-empty segments of the base64url
alphabet without padding, JSON object header and payload, the size limit) and checks the header; this module is
its last step (what ``jwt.decode(token, key, algorithms=[alg], audience=…, issuer=…, leeway=…,
options={"require": …, "verify_iat": True})`` did):

1. every segment is canonical base64url (re-encoding its bytes gives it back; RFC 7515 §2 and RFC 4648 §3.5: no
   stray bits), a header ``"b64": false`` (RFC 7797: only with a detached payload) is refused — ``invalid_token``;
2. the signature of ``header.payload`` (ASCII) with the key for ``alg`` (``invalid_signature``; a key whose type
   does not fit ``alg``, or an EC key of another curve, ``invalid_token``): RS256/384/512 RSASSA-PKCS1-v1_5,
   PS256/384/512 RSASSA-PSS with MGF1 of the same hash and a salt of the hash's size, ES256/384/512 the raw
   ``r || s`` (each half the curve's byte size; RFC 7518 §3.4) on P-256/384/521, EdDSA Ed25519/Ed448 (RFC 8037);
3. the claims (:func:`check_registered_claims`): required ones not null, ``iat`` and ``nbf`` not after
   ``now + leeway`` (``not_yet_valid``), ``exp`` after ``now - leeway`` (``expired``), each read with ``int()``
   as PyJWT did (``invalid_token`` when that fails); ``iss`` a string equal to the issuer (``invalid_issuer``);
   ``aud`` present and non-empty, a string or array of strings containing one of the audiences
   (``invalid_audience``); ``sub`` and ``jti``, when present, strings (``invalid_token``).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from idgate.errors import TokenError

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_MISSING_REASON = {"aud": "invalid_audience", "iss": "invalid_issuer"}


def _canonical(segment: str) -> bytes:
    """The bytes of a base64url segment that only uses the alphabet; ``invalid_token`` unless canonical."""
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("invalid_token", "segment is not base64url") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=") != segment.encode("ascii"):
        raise TokenError("invalid_token", "segment is not canonical base64url")
    return data


def verify_signature(token: str, header: Mapping[str, Any], alg: str, key: object) -> None:
    """Check steps 1 and 2 of the module docstring for ``token`` (already parsed into ``header``; ``alg`` its
    pinned ``alg``, ``key`` the public key object from :mod:`idgate.jwk`).

    Raises:
        TokenError: ``invalid_token`` or ``invalid_signature``.
    """
    signing_input, _, signature_segment = token.rpartition(".")
    header_segment, _, payload_segment = signing_input.partition(".")
    _canonical(header_segment)
    if header.get("b64", True) is False:
        raise TokenError("invalid_token", "b64 false (RFC 7797) needs a detached payload")
    _canonical(payload_segment)
    signature = _canonical(signature_segment)
    message = signing_input.encode("ascii")
    family, size = alg[:2], alg[2:]
    try:
        if family in ("RS", "PS") and size in _HASHES:
            if not isinstance(key, rsa.RSAPublicKey):
                raise TokenError("invalid_token", f"{alg} needs an RSA key")
            digest = _HASHES[size]()
            if family == "RS":
                key.verify(signature, message, padding.PKCS1v15(), digest)
            else:
                pss = padding.PSS(mgf=padding.MGF1(_HASHES[size]()), salt_length=digest.digest_size)
                key.verify(signature, message, pss, digest)
        elif alg in _CURVES:
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CURVES[alg]):
                raise TokenError("invalid_token", f"{alg} needs an EC key on its own curve")
            half = (key.curve.key_size + 7) // 8
            if len(signature) != 2 * half:
                raise InvalidSignature
            r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            key.verify(encode_dss_signature(r, s), message, ec.ECDSA(_HASHES[size]()))
        elif alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                raise TokenError("invalid_token", "EdDSA needs an Ed25519 or Ed448 key")
            key.verify(signature, message)
        else:
            raise TokenError("invalid_token", f"alg {alg[:20]!r} is not supported")
    except InvalidSignature:
        raise TokenError("invalid_signature", "signature does not verify") from None
    except (ValueError, TypeError) as exc:
        raise TokenError("invalid_token", type(exc).__name__) from None


def _numeric(claims: Mapping[str, Any], name: str) -> int:
    try:
        return int(claims[name])
    except (ValueError, TypeError, OverflowError):
        raise TokenError("invalid_token", f"{name} is not an integer") from None


def check_registered_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audiences: Sequence[str],
    leeway: float,
    require: Sequence[str],
    now: float | None = None,
) -> None:
    """Step 3 of the module docstring; ``now`` in seconds since the epoch (default: the clock), ``leeway`` in
    seconds.

    Raises:
        TokenError: ``invalid_claims``, ``invalid_audience``, ``invalid_issuer``, ``not_yet_valid``, ``expired``
            or ``invalid_token``.
    """
    for name in require:
        if claims.get(name) is None:
            raise TokenError(_MISSING_REASON.get(name, "invalid_claims"), f"missing claim {name}")
    if now is None:
        now = time.time()
    if "iat" in claims and _numeric(claims, "iat") > now + leeway:
        raise TokenError("not_yet_valid", "iat is in the future")
    if "nbf" in claims and _numeric(claims, "nbf") > now + leeway:
        raise TokenError("not_yet_valid", "nbf is in the future")
    if "exp" in claims and _numeric(claims, "exp") <= now - leeway:
        raise TokenError("expired", "exp is in the past")
    if "iss" not in claims:
        raise TokenError("invalid_issuer", "missing claim iss")
    if not isinstance(claims["iss"], str) or claims["iss"] != issuer:
        raise TokenError("invalid_issuer", "iss mismatch")
    audience = claims.get("aud")
    if not audience:
        raise TokenError("invalid_audience", "missing claim aud")
    if isinstance(audience, str):
        audience = [audience]
    if not isinstance(audience, list) or any(not isinstance(a, str) for a in audience):
        raise TokenError("invalid_audience", "aud is neither a string nor an array of strings")
    if all(a not in audience for a in audiences):
        raise TokenError("invalid_audience", "aud names none of the configured audiences")
    if "sub" in claims and not isinstance(claims["sub"], str):
        raise TokenError("invalid_token", "sub is not a string")
    if "jti" in claims and not isinstance(claims["jti"], str):
        raise TokenError("invalid_token", "jti is not a string")
