"""Short-lived signed identity assertions for upstreams, and the JWKS that verifies them.

This is what Pomerium's ``X-Pomerium-Jwt-Assertion`` and Google IAP's ``x-goog-iap-jwt-assertion`` are: a JWT the
proxy signs per user, which the upstream verifies against the proxy's published key set (Grafana ``[auth.jwt]``
with ``jwk_set_url``). A request that reaches the upstream directly, without a valid signature, is useless.

Rules:
- Claims: ``iss`` (the signer's issuer), ``aud`` (one audience per upstream), ``sub``, ``iat``, ``nbf`` (= iat),
  ``exp`` (= iat + lifetime), ``jti`` (random, 128 bits), plus the caller's claims (``email``, ``name``, ``groups``,
  ``role`` …). A caller claim with a registered name is refused (RFC 7519 §4.1). Times are integer NumericDate
  seconds (RFC 7519 §2). Header: ``alg``, ``kid``, ``typ: JWT`` (RFC 7515 §4.1).
- Lifetime 30..300 s: an upstream such as Grafana never refreshes these tokens, so short is the only revocation.
- Reuse: the token minted for (cache key, audience, fingerprint of subject + claims) is handed out again until
  ``exp - reuse_margin``; any change of claims (a group or role change) fingerprints differently and mints at once.
  The cache holds at most ``max_cached`` entries (oldest dropped) and stale entries are pruned on every mint.
- Keys: ES256 (P-256) or RS256 (RSA ≥ 2048 bits). ``kid`` = base64url(SHA-256(DER SubjectPublicKeyInfo))[:16],
  so the same key always gets the same kid across restarts and replicas (not the RFC 7638 thumbprint). Replicas
  behind one HAProxy must share their keys (``private_keys_pem``), or tokens minted by one fail at another's JWKS.
- Rotation never breaks an in-flight token: a key that stops signing stays in ``jwks()`` until every token it
  signed has expired (retire time = rotation time + lifetime), then drops out. Extra PEM keys given at start are
  treated as rotated out at start (published for one lifetime, never signing).
- Pre-publication: the key that will sign after the next :meth:`~AssertionSigner.rotate` is generated ahead and
  published from the start, so an upstream that caches the JWKS without refetching on an unknown kid (Grafana:
  ``cache_ttl``, default 60 min, capped by the response's ``Cache-Control: max-age``) already holds it when it
  starts signing. Keep rotations further apart than the upstream's cache TTL.
- The JWKS holds public keys only, each with ``kid``, ``use: sig`` and ``alg`` (RFC 7517 §4; ``key_ops`` is left
  out, §4.3 says not to combine it with ``use``).

Sources: RFC 7519 (JWT), RFC 7517 (JWK), RFC 7515 (JWS), RFC 7518 §3.1 (ES256, RS256),
Grafana docs "Configure JWT authentication" (``[auth.jwt]``: jwk_set_url, expect_claims, role_attribute_path).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["RESERVED_CLAIMS", "AssertionSigner", "AssertionStats", "generate_pem", "key_id", "pem_kid", "split_pem"]

RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
"""Registered claim names (RFC 7519 §4.1) the signer sets itself; callers may not pass them."""
MIN_LIFETIME_SECONDS = 30
MAX_LIFETIME_SECONDS = 300
RSA_KEY_BITS = 2048

Algorithm: TypeAlias = Literal["ES256", "RS256"]
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_PEM_END = b"-----END "


@dataclass(frozen=True, kw_only=True, slots=True)
class AssertionStats:
    """Counters for metrics: tokens minted and cached tokens handed out again (cumulative); ``cached`` is the
    current number of cache entries (a gauge)."""

    minted: int
    reused: int
    cached: int


@dataclass(frozen=True, kw_only=True, slots=True)
class _Key:
    """One key pair. ``retire_at`` (signer clock, seconds) is when it leaves the JWKS; None while it signs."""

    kid: str
    private_key: PrivateKey
    public_jwk: Mapping[str, str]
    retire_at: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class _Cached:
    """A minted token and the time (signer clock, seconds) until which it may be handed out again."""

    token: str
    reuse_until: float


def key_id(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    """The kid of a public key: base64url (unpadded) of SHA-256 over its DER SubjectPublicKeyInfo, first 16 chars."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")[:16]


def split_pem(data: bytes) -> tuple[bytes, ...]:
    """Split a file holding several PEM blocks (e.g. ``assertion.keys_file``) into one bytes value per block."""
    blocks: list[bytes] = []
    current: list[bytes] = []
    for line in data.splitlines(keepends=True):
        if line.strip() or current:
            current.append(line)
        if line.startswith(_PEM_END):
            blocks.append(b"".join(current))
            current = []
    return tuple(blocks)


def generate_key_pem(algorithm: Algorithm) -> bytes:
    """A new private key for ``algorithm`` (ES256: P-256; RS256: RSA, :data:`RSA_KEY_BITS` bits) as unencrypted
    PKCS#8 PEM, the form ``assertion.keys_file`` takes (``idgate init`` writes one)."""
    return _generate(algorithm).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _generate(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def generate_pem(algorithm: Algorithm) -> bytes:
    """A fresh private key for ``algorithm`` (EC P-256 or RSA 2048) as unencrypted PKCS#8 PEM — the format
    ``assertion.keys_file`` reads. Secret: write it to a 0600 file, never print it."""
    return _generate(algorithm).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_kid(pem: bytes, algorithm: Algorithm) -> str:
    """The kid (:func:`key_id`) of a PEM private key.

    Raises:
        ValueError: not an unencrypted PEM private key fitting ``algorithm``.
    """
    return key_id(_load(pem, algorithm).public_key())


def _load(pem: bytes, algorithm: Algorithm) -> PrivateKey:
    """Load an unencrypted PEM private key that fits ``algorithm``.

    Raises:
        ValueError: not a PEM private key, encrypted, or the wrong type or size for ``algorithm``.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"assertion key is not an unencrypted PEM private key ({type(exc).__name__})") from None
    if algorithm == "ES256":
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("ES256 needs an EC P-256 private key")
    elif not isinstance(key, rsa.RSAPrivateKey) or key.key_size < RSA_KEY_BITS:
        raise ValueError(f"RS256 needs an RSA private key of at least {RSA_KEY_BITS} bits")
    return key


def _make_key(private_key: PrivateKey, algorithm: Algorithm, retire_at: float | None = None) -> _Key:
    public = private_key.public_key()
    kid = key_id(public)
    if isinstance(public, ec.EllipticCurvePublicKey):
        fields = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        fields = RSAAlgorithm.to_jwk(public, as_dict=True)
    jwk: dict[str, str] = {k: str(fields[k]) for k in ("kty", "crv", "x", "y", "n", "e") if k in fields}
    jwk.update(kid=kid, use="sig", alg=algorithm)
    return _Key(kid=kid, private_key=private_key, public_jwk=jwk, retire_at=retire_at)


def _kid_of(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


def _fingerprint(subject: str, claims: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of subject and claims (sorted keys), so equal content → equal key."""
    canonical = json.dumps([subject, claims], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class AssertionSigner:
    """Mints identity assertions and publishes the key set that verifies them. Safe to share between threads.

    Args:
        issuer: the ``iss`` of every token (e.g. ``https://idgate.example.com``); Grafana's ``expect_claims.iss``.
        lifetime_seconds: ``exp - iat``, 30..300 s.
        reuse_margin_seconds: a cached token is handed out again until ``exp - reuse_margin`` (0 ≤ margin < lifetime),
            so an upstream never receives a token with less than this many seconds left.
        algorithm: ``ES256`` (P-256, default) or ``RS256`` (RSA 2048).
        clock: wall clock in epoch seconds (``time.time``; inject a fake one in tests).
        max_cached: most cache entries kept (0 disables reuse); beyond it the oldest is dropped.
        private_keys_pem: PEM private keys; the first signs, the others stay published for one lifetime.
            None given: a fresh key is generated, so every restart changes the key and an upstream that caches
            the JWKS (Grafana) refuses the new tokens until its copy expires; give keys in production.

    Raises:
        ValueError: a bound above is violated, or a PEM key is unusable for ``algorithm``.
    """

    def __init__(
        self,
        *,
        issuer: str,
        lifetime_seconds: int = 300,
        reuse_margin_seconds: int = 60,
        algorithm: Algorithm = "ES256",
        clock: Callable[[], float] = time.time,
        max_cached: int = 10_000,
        private_keys_pem: Sequence[bytes] = (),
    ) -> None:
        if not issuer:
            raise ValueError("issuer must not be empty")
        if not MIN_LIFETIME_SECONDS <= lifetime_seconds <= MAX_LIFETIME_SECONDS:
            raise ValueError(f"lifetime_seconds must be {MIN_LIFETIME_SECONDS}..{MAX_LIFETIME_SECONDS}")
        if not 0 <= reuse_margin_seconds < lifetime_seconds:
            raise ValueError("reuse_margin_seconds must be at least 0 and less than lifetime_seconds")
        if algorithm not in ("ES256", "RS256"):
            raise ValueError("algorithm must be ES256 or RS256")
        if max_cached < 0:
            raise ValueError("max_cached must not be negative")
        self.issuer = issuer
        self.lifetime_seconds = lifetime_seconds
        self.reuse_margin_seconds = reuse_margin_seconds
        self.algorithm: Algorithm = algorithm
        self.max_cached = max_cached
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str, str], _Cached] = OrderedDict()
        self._minted = 0
        self._reused = 0
        loaded = [_load(pem, algorithm) for pem in private_keys_pem]
        current = loaded[0] if loaded else _generate(algorithm)
        retire_at = clock() + lifetime_seconds
        self._current = _make_key(current, algorithm)
        self._next = _make_key(_generate(algorithm), algorithm)  # published now, signs after the next rotate()
        self._previous: list[_Key] = []
        self._ring: tuple[_Key, ...] | None = None  # set by use_ring(): the shared ring decides the keys
        self._loaded: dict[bytes, _Key] = {}
        for extra in loaded[1:]:
            key = _make_key(extra, algorithm, retire_at)
            if key.kid != self._current.kid and all(p.kid != key.kid for p in self._previous):
                self._previous.append(key)

    @property
    def kid(self) -> str:
        """The kid of the key that signs now."""
        return self._current.kid

    @property
    def stats(self) -> AssertionStats:
        """A snapshot of the counters."""
        with self._lock:
            return AssertionStats(minted=self._minted, reused=self._reused, cached=len(self._cache))

    @property
    def next_kid(self) -> str:
        """The kid of the pre-published key that signs after the next :meth:`rotate`."""
        return self._next.kid

    def rotate(self) -> str:
        """Promote the pre-published key to signer and pre-publish a fresh one; the old signer stays published for
        one lifetime (seconds). Returns the new signing kid.

        Cached tokens keep being handed out: they verify against the still-published old key until they expire.
        """
        upcoming = _make_key(_generate(self.algorithm), self.algorithm)
        with self._lock:
            now = self._clock()
            self._previous.append(replace(self._current, retire_at=now + self.lifetime_seconds))
            self._current, self._next = self._next, upcoming
            self._drop_retired(now)
        return self._current.kid

    def use_ring(self, *, signing_pem: bytes, published_pems: Sequence[bytes]) -> None:
        """Sign with ``signing_pem`` and publish exactly it plus ``published_pems`` from now on: the shared key ring
        (:mod:`idgate.assertion_ring`) decides the keys, so every replica signs and publishes the same ones (the
        signer's own pre-published key and :meth:`rotate` are then unused). Cached tokens signed by a key that
        is no longer published are dropped.

        Raises:
            ValueError: a PEM key is unusable for ``algorithm``.
        """
        signing = self._key_of(signing_pem)
        ring = (signing, *(self._key_of(pem) for pem in published_pems))
        with self._lock:
            changed = signing.kid != self._current.kid
            self._current, self._ring = signing, tuple({k.kid: k for k in ring}.values())
            if changed:  # from the switch on, every upstream gets tokens of the new key (one mint per identity)
                for entry, cached in list(self._cache.items()):
                    if _kid_of(cached.token) != signing.kid:
                        del self._cache[entry]
            self._loaded = {pem: key for pem, key in self._loaded.items() if key in ring}

    def _key_of(self, pem: bytes) -> _Key:
        key = self._loaded.get(pem)
        if key is None:
            key = self._loaded[pem] = _make_key(_load(pem, self.algorithm), self.algorithm)
        return key

    def mint(self, *, cache_key: str, audience: str, subject: str, claims: Mapping[str, Any]) -> str:
        """A signed assertion for ``subject`` at ``audience``, reused from the cache while it has more than
        ``reuse_margin_seconds`` left.

        ``cache_key`` identifies the session or token the identity came from (the cache never mixes two of them).
        ``claims`` must be JSON-serialisable.

        Raises:
            ValueError: empty audience or subject, a registered claim name in ``claims``, or unserialisable claims.
        """
        if not audience or not subject:
            raise ValueError("audience and subject must not be empty")
        reserved = RESERVED_CLAIMS.intersection(claims)
        if reserved:
            raise ValueError(f"claims may not set registered names: {', '.join(sorted(reserved))}")
        try:
            entry_key = (cache_key, audience, _fingerprint(subject, claims))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"claims are not JSON-serialisable: {exc}") from None
        with self._lock:
            now = self._clock()
            self._prune(now)
            cached = self._cache.get(entry_key)
            if cached is not None and now < cached.reuse_until:
                self._reused += 1
                return cached.token
            token, exp = self._sign(now, audience, subject, claims)
            self._minted += 1
            if self.max_cached:
                self._cache.pop(entry_key, None)
                self._cache[entry_key] = _Cached(token=token, reuse_until=exp - self.reuse_margin_seconds)
                while len(self._cache) > self.max_cached:
                    self._cache.popitem(last=False)
            return token

    def jwks(self) -> dict[str, Any]:
        """``{"keys": [...]}``: the signing key, the pre-published next key, and the not yet retired previous ones."""
        with self._lock:
            if self._ring is not None:
                return {"keys": [dict(key.public_jwk) for key in self._ring]}
            self._drop_retired(self._clock())
            keys = [self._current, self._next, *reversed(self._previous)]
            return {"keys": [dict(key.public_jwk) for key in keys]}

    def _sign(self, now: float, audience: str, subject: str, claims: Mapping[str, Any]) -> tuple[str, int]:
        iat = int(now)
        exp = iat + self.lifetime_seconds
        payload: dict[str, Any] = dict(claims)
        payload.update(
            iss=self.issuer, aud=audience, sub=subject, iat=iat, nbf=iat, exp=exp, jti=secrets.token_urlsafe(16)
        )
        key = self._current
        token = jwt.encode(payload, key.private_key, algorithm=self.algorithm, headers={"kid": key.kid, "typ": "JWT"})
        return token, exp

    def _prune(self, now: float) -> None:
        """Drop stale entries from the front (entries are in mint order, so the stale ones come first)."""
        while self._cache:
            oldest = next(iter(self._cache.values()))
            if now < oldest.reuse_until:
                return
            self._cache.popitem(last=False)

    def _drop_retired(self, now: float) -> None:
        self._previous = [key for key in self._previous if key.retire_at is not None and now < key.retire_at]
