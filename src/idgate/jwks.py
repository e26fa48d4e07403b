"""An async two-tier JWKS cache for one issuer (RFC 7517 §5, OIDC Discovery §4, RFC 8725 §3.1); keys are read by
:mod:`idgate.jwk`.

Behaviour:
- The key set's TTL is the response's ``Cache-Control: max-age`` clamped to [min_ttl, max_ttl] seconds (no
  max-age, ``no-cache`` or ``no-store`` → min_ttl).
- An expired key set keeps serving while one background refetch runs (stale-while-revalidate); a failed fetch keeps
  the last good keys (stale-if-error) and is retried no sooner than the refetch cooldown.
- An unknown ``kid`` triggers one forced refetch, single-flight (concurrent callers share it), at most once per
  refetch cooldown (seconds; 0 in tests).
- No key set at all (never fetched): :class:`~idgate.errors.KeysUnavailable` ``keys_unavailable`` with the seconds
  until the next fetch may start (503 + ``Retry-After``), never a verdict on the token.
- A malformed, symmetric, private, non-signing or sub-2048-bit RSA key is skipped and counted, never fatal.
- Every fetch is an ``httpx.AsyncClient`` call with a timeout and a body-size cap: nothing blocks the event loop.
- With discovery, ``jwks_uri`` comes from ``{issuer}/.well-known/openid-configuration`` whose ``issuer`` must equal
  the configured issuer exactly (OIDC Discovery §4.3).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from idgate.config import IssuerConfig
from idgate.errors import KeySetError, KeysUnavailable, TokenError
from idgate.jwk import VerificationKey, parse_jwks, ttl_from_cache_control

__all__ = ["JwksCache", "JwksStats", "KeySet", "VerificationKey", "parse_jwks", "ttl_from_cache_control"]

log = logging.getLogger("idgate.jwks")


@dataclass(frozen=True, kw_only=True, slots=True)
class KeySet:
    """A parsed JWKS. ``expires_at`` is on the cache's monotonic clock (seconds)."""

    keys: Mapping[str | None, VerificationKey]
    expires_at: float
    skipped: int = 0


@dataclass(kw_only=True, slots=True)
class JwksStats:
    """Counters for metrics: fetches done, fetches failed, keys skipped as malformed (cumulative)."""

    fetches: int = 0
    failures: int = 0
    skipped_keys: int = 0
    last_error: str = ""


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
            TokenError: ``unknown_kid`` when no published key matches after the allowed refetch.
            KeysUnavailable: ``keys_unavailable`` when no key set was ever fetched.
        """
        keyset = self._keyset
        now = self.clock()
        # A fetch may start only once per cooldown; joining one already under way is always allowed.
        may_fetch = now - self._last_attempt >= self.config.jwks.refetch_cooldown_seconds or self._fetching
        if keyset is None:
            keyset = await self._refetch() if may_fetch else None
            if keyset is None:
                detail = f"no JWKS fetched yet for {self.config.issuer}"
                raise KeysUnavailable("keys_unavailable", detail, retry_after=self._retry_after())
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

    def _retry_after(self) -> int:
        """Whole seconds until a fetch may start again (at least 1)."""
        wait = self._last_attempt + self.config.jwks.refetch_cooldown_seconds - self.clock()
        return max(1, math.ceil(wait))

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
