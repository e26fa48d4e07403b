"""An async two-tier JWKS cache for one issuer (RFC 7517 §5, OIDC Discovery §4, RFC 8725 §3.1).

Behaviour:
- The key set's TTL is the response's ``Cache-Control: max-age`` clamped to [min_ttl, max_ttl] seconds (no
  max-age, ``no-cache`` or ``no-store`` → min_ttl).
- An expired key set keeps serving while one background refetch runs (stale-while-revalidate); a failed fetch keeps
  the last good keys (stale-if-error) and is retried no sooner than the refetch cooldown.
- An unknown ``kid`` triggers one forced refetch, single-flight (concurrent callers share it), at most once per
  refetch cooldown (seconds; 0 in tests).
- A malformed, symmetric, private or non-signing key is skipped and counted, never fatal.
- Every fetch is an ``httpx.AsyncClient`` call with a timeout and a body-size cap: nothing blocks the event loop.
- With discovery, ``jwks_uri`` comes from ``{issuer}/.well-known/openid-configuration`` whose ``issuer`` must equal
  the configured issuer exactly (OIDC Discovery §4.3).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import jwt

from idgate.config import IssuerConfig
from idgate.errors import KeySetError, TokenError

log = logging.getLogger("idgate.jwks")

_ALGS_BY_KEY = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("OKP", "Ed448"): frozenset({"EdDSA"}),
}
_MAX_AGE_RE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True, slots=True)
class VerificationKey:
    """One usable public key: the key object and the pinned algorithms it may verify."""

    kid: str | None
    key: object
    algorithms: frozenset[str]


@dataclass(frozen=True, kw_only=True, slots=True)
class KeySet:
    """A parsed JWKS. ``expires_at`` is on the cache's monotonic clock (seconds)."""

    keys: Mapping[str | None, VerificationKey]
    expires_at: float
    skipped: int = 0


@dataclass(kw_only=True, slots=True)
class JwksStats:
    """Counters for metrics: fetches done, fetches failed, keys skipped as malformed (cumulative); ``last_success``
    is when the newest good key set was fetched, on the cache's clock (seconds; None before the first)."""

    fetches: int = 0
    failures: int = 0
    skipped_keys: int = 0
    last_error: str = ""
    last_success: float | None = None


def ttl_from_cache_control(value: str | None, *, min_ttl: float, max_ttl: float) -> float:
    """TTL in seconds from a Cache-Control header value, clamped to [min_ttl, max_ttl] (RFC 9111 §5.2.2.1)."""
    if not value or re.search(r"no-cache|no-store", value, re.IGNORECASE):
        return min_ttl
    match = _MAX_AGE_RE.search(value)
    if not match:
        return min_ttl
    return min(max(float(match.group(1)), min_ttl), max_ttl)


def parse_jwks(document: object, *, pinned: frozenset[str]) -> tuple[dict[str | None, VerificationKey], int]:
    """Parse a JWKS document into usable keys and a count of skipped ones.

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
    return VerificationKey(kid=kid, key=key, algorithms=frozenset(algs))


@dataclass(kw_only=True)
class JwksCache:
    """The key cache of one issuer. Create one per issuer; share the ``httpx.AsyncClient``."""

    config: IssuerConfig
    client: httpx.AsyncClient
    dev_mode: bool = False
    clock: Callable[[], float] = time.monotonic
    stats: JwksStats = field(default_factory=JwksStats)
    # Called when a fetched key set no longer holds a kid the previous one had (verified-token caches drop then).
    on_keys_removed: Callable[[], None] | None = None
    _keyset: KeySet | None = None
    _jwks_uri: str | None = None
    _last_attempt: float = float("-inf")
    _inflight: asyncio.Task[KeySet | None] | None = None

    @property
    def ready(self) -> bool:
        """True once a key set has been fetched at least once."""
        return self._keyset is not None

    @property
    def kids(self) -> frozenset[str | None]:
        """The kids currently published (empty before the first fetch)."""
        return frozenset(self._keyset.keys) if self._keyset else frozenset()

    async def get_key(self, kid: str | None) -> VerificationKey:
        """The verification key for ``kid``.

        Raises:
            TokenError: ``unknown_kid`` when no published key matches after the allowed refetch;
                ``keys_unavailable`` when no key set was ever fetched.
        """
        keyset = self._keyset
        now = self.clock()
        # A fetch may start only once per cooldown; joining one already under way is always allowed.
        may_fetch = now - self._last_attempt >= self.config.jwks.refetch_cooldown_seconds or self._fetching
        if keyset is None:
            keyset = await self._refetch() if may_fetch else None
            if keyset is None:
                raise TokenError("keys_unavailable", f"no JWKS fetched yet for {self.config.issuer}")
            may_fetch = False  # that fetch was this cooldown's one
        elif now >= keyset.expires_at and may_fetch:
            self._start_refetch()  # stale-while-revalidate: this request uses the keys we have
        key = self._lookup(keyset, kid)
        if key is None and may_fetch:
            keyset = await self._refetch() or keyset
            key = self._lookup(keyset, kid)
        if key is None:
            raise TokenError("unknown_kid", "no published key matches the token's kid")
        return key

    @staticmethod
    def _lookup(keyset: KeySet, kid: str | None) -> VerificationKey | None:
        if kid is None:
            # A token without kid is accepted only when the set holds exactly one key (RFC 7517 §4.5).
            return next(iter(keyset.keys.values())) if len(keyset.keys) == 1 else None
        return keyset.keys.get(kid)

    async def refresh(self) -> bool:
        """Fetch now (single-flight). Returns True when a key set is available afterwards."""
        return await self._refetch() is not None or self._keyset is not None

    @property
    def _fetching(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    def _start_refetch(self) -> asyncio.Task[KeySet | None]:
        if self._inflight is None or not self._fetching:
            self._last_attempt = self.clock()
            self._inflight = asyncio.create_task(self._fetch_and_store(), name=f"jwks:{self.config.name}")
        return self._inflight

    async def _refetch(self) -> KeySet | None:
        return await asyncio.shield(self._start_refetch())

    async def _fetch_and_store(self) -> KeySet | None:
        self.stats.fetches += 1
        try:
            keyset = await self._fetch()
        except (KeySetError, httpx.HTTPError, ValueError, TypeError) as exc:
            self.stats.failures += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning(
                json.dumps(
                    {
                        "event": "jwks_fetch_failed",
                        "issuer": self.config.issuer,
                        "error": self.stats.last_error,
                    }
                )
            )
            return None
        self.stats.skipped_keys += keyset.skipped
        self.stats.last_success = self.clock()
        removed = self._keyset is not None and not set(self._keyset.keys) <= set(keyset.keys)
        self._keyset = keyset
        if removed and self.on_keys_removed is not None:
            self.on_keys_removed()
        return keyset

    async def _fetch(self) -> KeySet:
        uri = self._jwks_uri or self.config.jwks_uri or await self._discover()
        self._jwks_uri = uri
        response, document = await self._get_json(uri)
        keys, skipped = parse_jwks(document, pinned=frozenset(self.config.algorithms))
        if skipped:
            log.warning(json.dumps({"event": "jwks_keys_skipped", "issuer": self.config.issuer, "count": skipped}))
        ttl = ttl_from_cache_control(
            response.headers.get("cache-control"),
            min_ttl=self.config.jwks.min_ttl_seconds,
            max_ttl=self.config.jwks.max_ttl_seconds,
        )
        return KeySet(keys=keys, expires_at=self.clock() + ttl, skipped=skipped)

    async def _discover(self) -> str:
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        _, document = await self._get_json(url)
        if not isinstance(document, dict) or document.get("issuer") != self.config.issuer:
            raise KeySetError(f"discovery document at {url} does not name issuer {self.config.issuer!r} exactly")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not (
            uri.startswith("https://") or (self.dev_mode and uri.startswith("http://"))
        ):
            raise KeySetError(f"discovery document at {url} has no usable https jwks_uri")
        return uri

    async def _get_json(self, url: str) -> tuple[httpx.Response, object]:
        cap = self.config.jwks.max_bytes
        async with self.client.stream(
            "GET", url, timeout=self.config.jwks.timeout_seconds, headers={"accept": "application/json"}
        ) as response:
            if response.status_code != 200:
                raise KeySetError(f"GET {url} answered {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > cap:
                    raise KeySetError(f"GET {url}: body exceeds {cap} bytes")
        try:
            return response, json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise KeySetError(f"GET {url}: not JSON ({type(exc).__name__})") from None
