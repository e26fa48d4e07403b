"""Checks of secret values, key files and CA bundles named by the configuration; each returns problem lines.

Every problem names the key's position, never its value. The rules:

- a client secret: at least :data:`MIN_SECRET_CHARS` characters, not one repeated character, not a placeholder
  (:data:`PLACEHOLDER_RE`: ``changeme``, ``replace-me``, ``<secret>``, an unexpanded ``${VAR}`` …);
- session keys (``sessions.keys_env`` / ``keys_file``): base64 or base64url of exactly 32 bytes each (AES-256-GCM),
  separated by whitespace or commas, no key twice (what :class:`idgate.sso.cookies.KeyRing` accepts), and no weak
  key: all one byte value, fewer than :data:`MIN_DISTINCT_KEY_BYTES` distinct bytes, 0x00..0x1f, or only printable
  ASCII (a base64-encoded passphrase). 32 random bytes fail these with odds below 1e-13;
- assertion keys (``assertion.keys_file``): PEM blocks, each an unencrypted private key that fits the algorithm
  (ES256: EC P-256; RS256: RSA of :data:`MIN_RSA_BITS`+ bits), no key twice, and none of the private keys published
  in RFC 7515 and RFC 7517 (copied from examples, they sign for anyone);
- a CA bundle (``issuers[].ca_file``): loads with :func:`ssl.create_default_context`, as the runtime loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

MIN_SECRET_CHARS = 16
SESSION_KEY_BYTES = 32
MIN_DISTINCT_KEY_BYTES = 16
MIN_RSA_BITS = 2048
PLACEHOLDER_RE = re.compile(
    r"change[-_ ]?(me|it|this)|replace[-_ ]?(me|this)|your[-_ ]?(secret|key)|placeholder|example|<[^>]*>|\$\{"
    r"|^(secret|password|passwd|test|default|dummy|todo|tbd|none|null|x+|0+|1234.*)$",
    re.IGNORECASE,
)
"""Placeholder markers; short words only as the whole value, so that random text cannot match by chance."""
_KEY_SEPARATORS = re.compile(r"[\s,]+")
_KEY_TEXT = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
# Private scalars ``d`` of EC keys printed in RFCs (base64url): RFC 7515 A.3, RFC 7517 A.2 and RFC 7518 C.
_PUBLISHED_EC_KEYS = frozenset(
    {
        "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI",
        "870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE",
        "0_NxaRPUMQoAJt50Gz8YiTr8gRTwyEaCumd-MToTmIo",
        "VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw",
    }
)


def secret_problems(value: str) -> list[str]:
    """Why ``value`` is a weak client secret (empty when it is not)."""
    if PLACEHOLDER_RE.search(value):
        return ["a placeholder, not a secret"]
    if len(value) < MIN_SECRET_CHARS:
        return [f"too short (need {MIN_SECRET_CHARS}+ characters)"]
    if len(set(value)) == 1:
        return ["one character repeated"]
    return []


def weak_key_bytes(key: bytes) -> str | None:
    """Why 32 (or so) key bytes cannot be random, or None."""
    if len(set(key)) == 1:
        return "all one byte value"
    if key == bytes(range(len(key))):
        return "the bytes 0x00, 0x01, 0x02, … (a test vector)"
    if all(0x20 <= b < 0x7F for b in key):
        return "printable text (a passphrase), not random bytes"
    if len(set(key)) < MIN_DISTINCT_KEY_BYTES:
        return f"fewer than {MIN_DISTINCT_KEY_BYTES} distinct byte values (a pattern, not random bytes)"
    return None


def _decode_key(item: str) -> bytes | None:
    """base64 or base64url, padding optional, as :class:`idgate.sso.cookies.KeyRing` reads it; None otherwise."""
    body = item.rstrip("=").replace("-", "+").replace("_", "/")
    if not _KEY_TEXT.fullmatch(item) or len(body) % 4 == 1:
        return None
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def key_ring_problems(text: str) -> list[str]:
    """Problems of a session key ring written as text (``keys_env`` / ``keys_file``)."""
    items = [item for item in _KEY_SEPARATORS.split(text) if item]
    if not items:
        return ["no keys: expected one or more base64 keys of 32 random bytes (openssl rand -base64 32)"]
    problems: list[str] = []
    seen: dict[bytes, int] = {}
    for position, item in enumerate(items, 1):
        where = f"key {position} of {len(items)}"
        key = _decode_key(item)
        if PLACEHOLDER_RE.search(item):
            problems.append(f"{where} is a placeholder, not a key")
        elif key is None:
            problems.append(f"{where} is not base64 or base64url text")
        elif len(key) != SESSION_KEY_BYTES:
            hint = " (hex is not accepted: write the bytes as base64)" if len(item) == 2 * SESSION_KEY_BYTES else ""
            problems.append(f"{where} is {len(key)} bytes, need exactly {SESSION_KEY_BYTES} random bytes{hint}")
        elif (weakness := weak_key_bytes(key)) is not None:
            problems.append(f"{where} is weak: {weakness}")
        elif key in seen:
            problems.append(f"{where} repeats key {seen[key]}")
        else:
            seen[key] = position
    return problems


def assertion_key_problems(text: str, algorithm: object) -> list[str]:
    """Problems of an ``assertion.keys_file``'s PEM text for ``algorithm`` (``ES256`` or ``RS256``)."""
    blocks = [match.group(0) for match in _PEM_BLOCK.finditer(text)]
    if not blocks:
        return ["holds no PEM private key (-----BEGIN PRIVATE KEY----- … -----END PRIVATE KEY-----)"]
    problems: list[str] = []
    seen: dict[bytes, int] = {}
    for position, block in enumerate(blocks, 1):
        where = f"key {position} of {len(blocks)}"
        try:
            key = serialization.load_pem_private_key(block.encode("ascii", "replace"), password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            problems.append(f"{where} is not an unencrypted PEM private key")
            continue
        problem = _assertion_key_problem(key, algorithm)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        fingerprint = hashlib.sha256(public).digest()
        if problem is not None:
            problems.append(f"{where} {problem}")
        elif fingerprint in seen:
            problems.append(f"{where} repeats key {seen[fingerprint]}")
        seen.setdefault(fingerprint, position)
    return problems


def _assertion_key_problem(key: object, algorithm: object) -> str | None:
    if algorithm == "ES256":
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            return "does not fit ES256: it needs an EC P-256 private key"
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        if base64.urlsafe_b64encode(scalar).rstrip(b"=").decode() in _PUBLISHED_EC_KEYS:
            return "is an example key published in an RFC: anyone can sign with it"
        weakness = weak_key_bytes(scalar)
        return None if weakness is None else f"is weak: its private value is {weakness}"
    if algorithm == "RS256" and not (isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS):
        return f"does not fit RS256: it needs an RSA private key of {MIN_RSA_BITS}+ bits"
    return None


def ca_bundle_problems(path: Path) -> list[str]:
    """Problems loading ``path`` as the trust anchors of TLS to an issuer (PEM certificates)."""
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return [f"{path} holds no usable PEM CA certificate ({reason})"]
    return []
