"""An async JWKS cache for one issuer (RFC 7517 §5, OIDC Discovery §4, RFC 8725 §3.1); keys are read by
:mod:`idgate.jwk`.

Behaviour (settings: :class:`idgate.config.JwksSettings`, all in seconds):
- The key set's TTL is the response's ``Cache-Control: max-age`` clamped to [min_ttl, max_ttl] (no max-age,
  ``no-cache`` or ``no-store`` → min_ttl).
- Stale-while-revalidate: an expired set keeps serving while one background refetch runs; such refetches start at
  most once per ``refetch_cooldown_seconds``.
- Stale-if-error: a failed fetch keeps the last good keys. A fetch fails when the IdP cannot be reached, answers
  anything but 200 with a JWKS, or answers a set without one usable key (``{"keys": []}``, only symmetric, private
  or broken keys): an IdP glitch never wipes the keys. Such sets are counted (``unusable_sets``); while the last
  fetch failed, the issuer is *degraded* (:meth:`JwksCache.health`).
- A kid not in the set forces a refetch, single-flight (concurrent callers share it), at most once per
  ``unknown_kid_cooldown_seconds``: a key the IdP publishes and signs with at once is accepted within that window
  plus one fetch, and a flood of random kids costs one fetch per window. A kid that a fetch begun after the
  token arrived did not hold is *known absent* for ``negative_kid_ttl_seconds`` (refused at once, no fetch); so is
  a withdrawn kid. At most :data:`NEGATIVE_KIDS_MAX` absent kids are remembered (oldest dropped).
- When a token's key cannot be known, :class:`~idgate.errors.KeysUnavailable` (503 + ``Retry-After``) is raised,
  never a verdict: ``keys_unavailable`` (no key set ever fetched, or the last fetch failed) or
  ``unknown_kid_pending`` (the kid is not held, and the window is closed or the only refetch began before the
  token arrived). ``unknown_kid`` (401) only after a fetch begun after the token arrived confirmed the kid absent.
- Withdrawal: a kid that leaves the set, or whose key changes (RFC 7638 thumbprint), is withdrawn: known absent,
  counted, and ``on_keys_withdrawn(issuer, kids)`` drops every verified token of those keys (the token cache).
  :meth:`JwksCache.refresh_now` refetches at once, whatever the cooldowns (the admin endpoint).
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
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from idgate.config import IssuerConfig
from idgate.errors import KeySetError, KeysUnavailable, TokenError
from idgate.jwk import VerificationKey, parse_jwks, ttl_from_cache_control

__all__ = [
    "NEGATIVE_KIDS_MAX",
    "FetchOutcome",
    "JwksCache",
    "JwksStats",
    "KeyHealth",
    "KeySet",
    "VerificationKey",
    "parse_jwks",
    "ttl_from_cache_control",
]

log = logging.getLogger("idgate.jwks")
NEGATIVE_KIDS_MAX = 4096
Kid = str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class KeySet:
    """A parsed JWKS. ``fetched_at`` and ``expires_at`` are on the cache's monotonic clock (seconds)."""

    keys: Mapping[Kid, VerificationKey]
    expires_at: float
    fetched_at: float = 0.0
    skipped: int = 0


@dataclass(kw_only=True, slots=True)
class JwksStats:
    """Counters for metrics: fetches started, failed, keys skipped as unusable, sets without one usable key, keys
    withdrawn (cumulative); the last fetch error; ``last_success``: when the newest good key set was fetched, on the
    cache's clock (seconds; None before the first)."""

    fetches: int = 0
    failures: int = 0
    skipped_keys: int = 0
    unusable_sets: int = 0
    withdrawn_keys: int = 0
    last_error: str = ""
    last_success: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchOutcome:
    """One fetch: ``ok`` False when it failed (the previous keys stay). ``started_at`` on the cache's clock;
    ``kids`` published afterwards; ``withdrawn`` by this fetch; ``purged`` verified tokens dropped with them."""

    ok: bool
    started_at: float
    kids: frozenset[Kid] = frozenset()
    withdrawn: frozenset[Kid] = frozenset()
    purged: int = 0
    error: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyHealth:
    """An issuer's keys at a glance (readiness, metrics): ``ready`` once a key set was fetched; ``degraded`` when
    the last fetch failed and the last good keys are in use; ``keys`` held; ``age_seconds`` since they were
    fetched; ``last_error`` of the failing fetch (empty unless degraded or not ready)."""

    name: str
    ready: bool
    degraded: bool
    keys: int
    age_seconds: float | None
    last_error: str


@dataclass(kw_only=True)
class JwksCache:
    """The key cache of one issuer. Create one per issuer; share the ``httpx.AsyncClient``."""

    config: IssuerConfig
    client: httpx.AsyncClient
    dev_mode: bool = False
    clock: Callable[[], float] = time.monotonic
    stats: JwksStats = field(default_factory=JwksStats)
    # Called with (issuer, withdrawn kids) when keys are withdrawn; returns how many verified tokens it dropped.
    on_keys_withdrawn: Callable[[str, frozenset[Kid]], int] | None = None
    _keyset: KeySet | None = None
    _jwks_uri: str | None = None
    _last_attempt: float = float("-inf")
    _failing: bool = False
    _inflight: asyncio.Task[FetchOutcome] | None = None
    _absent: OrderedDict[Kid, float] = field(default_factory=OrderedDict)

    @property
    def ready(self) -> bool:
        """True once a key set has been fetched at least once."""
        return self._keyset is not None

    @property
    def kids(self) -> frozenset[Kid]:
        """The kids currently published (empty before the first fetch)."""
        return frozenset(self._keyset.keys) if self._keyset else frozenset()

    def health(self) -> KeyHealth:
        """Readiness and degradation of this issuer's keys."""
        keyset = self._keyset
        return KeyHealth(
            name=self.config.name,
            ready=keyset is not None,
            degraded=keyset is not None and self._failing,
            keys=len(keyset.keys) if keyset else 0,
            age_seconds=self.clock() - keyset.fetched_at if keyset else None,
            last_error=self.stats.last_error if self._failing else "",
        )

    async def get_key(self, kid: Kid) -> VerificationKey:
        """The verification key for ``kid``.

        Raises:
            TokenError: ``unknown_kid`` when a fetch begun after this call does not publish ``kid`` (or it is
                known absent).
            KeysUnavailable: ``keys_unavailable`` or ``unknown_kid_pending`` when that cannot be known now.
        """
        arrived = self.clock()
        settings = self.config.jwks
        keyset = self._keyset
        if keyset is not None:
            if arrived >= keyset.expires_at and arrived - self._last_attempt >= settings.refetch_cooldown_seconds:
                self._start_refetch()  # stale-while-revalidate: this request uses the keys we have
            key = self._lookup(keyset, kid)
            if key is not None:
                return key
            if self._known_absent(kid, arrived):
                raise TokenError("unknown_kid", "no published key matches the token's kid")
        if not self._fetching and arrived - self._last_attempt < settings.unknown_kid_cooldown_seconds:
            reason = "keys_unavailable" if keyset is None or self._failing else "unknown_kid_pending"
            raise KeysUnavailable(reason, "the next key refetch may not start yet", retry_after=self._retry_after())
        outcome = await asyncio.shield(self._start_refetch())
        if not outcome.ok:
            raise KeysUnavailable("keys_unavailable", outcome.error, retry_after=self._retry_after())
        key = self._lookup(self._keyset, kid) if self._keyset else None
        if key is not None:
            return key
        if outcome.started_at < arrived:  # that fetch may predate the key: it proves nothing about this kid
            raise KeysUnavailable("unknown_kid_pending", "refetching keys", retry_after=self._retry_after())
        self._remember_absent(kid)
        raise TokenError("unknown_kid", "no published key matches the token's kid")

    @staticmethod
    def _lookup(keyset: KeySet, kid: Kid) -> VerificationKey | None:
        if kid is None:
            # A token without kid is accepted only when the set holds exactly one key (RFC 7517 §4.5).
            return next(iter(keyset.keys.values())) if len(keyset.keys) == 1 else None
        return keyset.keys.get(kid)

    def _known_absent(self, kid: Kid, now: float) -> bool:
        until = self._absent.get(kid)
        if until is None:
            return False
        if now < until:
            return True
        del self._absent[kid]
        return False

    def _remember_absent(self, kid: Kid) -> None:
        ttl = self.config.jwks.negative_kid_ttl_seconds
        if ttl <= 0:
            return
        self._absent[kid] = self.clock() + ttl
        self._absent.move_to_end(kid)
        while len(self._absent) > NEGATIVE_KIDS_MAX:
            self._absent.popitem(last=False)

    def _retry_after(self) -> int:
        """Whole seconds until a refetch may start again (at least 1)."""
        wait = self._last_attempt + self.config.jwks.unknown_kid_cooldown_seconds - self.clock()
        return max(1, math.ceil(wait))

    async def refresh(self) -> bool:
        """Fetch now (single-flight: joins a fetch under way). True when a key set is available afterwards."""
        outcome = await asyncio.shield(self._start_refetch())
        return outcome.ok or self._keyset is not None

    async def refresh_now(self) -> FetchOutcome:
        """Refetch at once, whatever the cooldowns, and return the outcome of a fetch begun after this call (a
        fetch under way, which may predate it, is waited for first). Withdrawn keys are dropped by then."""
        called = self.clock()
        while True:
            outcome = await asyncio.shield(self._start_refetch())
            if outcome.started_at >= called:
                return outcome

    @property
    def _fetching(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    def _start_refetch(self) -> asyncio.Task[FetchOutcome]:
        if self._inflight is None or not self._fetching:
            started = self._last_attempt = self.clock()
            self._inflight = asyncio.create_task(self._fetch_and_store(started), name=f"jwks:{self.config.name}")
        return self._inflight

    async def _fetch_and_store(self, started: float) -> FetchOutcome:
        self.stats.fetches += 1
        try:
            keyset = await self._fetch()
        except (KeySetError, httpx.HTTPError, ValueError, TypeError) as exc:
            self.stats.failures += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self._failing = True
            log.warning(
                json.dumps({"event": "jwks_fetch_failed", "issuer": self.config.issuer, "error": self.stats.last_error})
            )
            return FetchOutcome(ok=False, started_at=started, kids=self.kids, error=self.stats.last_error)
        previous = self._keyset.keys if self._keyset else {}
        withdrawn = frozenset(
            kid
            for kid, old in previous.items()
            if kid not in keyset.keys or keyset.keys[kid].thumbprint != old.thumbprint
        )
        self._keyset = keyset
        self._failing = False
        self.stats.last_success = self.clock()
        for kid in keyset.keys:
            self._absent.pop(kid, None)
        purged = 0
        if withdrawn:
            self.stats.withdrawn_keys += len(withdrawn)
            for kid in withdrawn:
                if kid not in keyset.keys:
                    self._remember_absent(kid)
            if self.on_keys_withdrawn is not None:
                purged = self.on_keys_withdrawn(self.config.issuer, withdrawn)
            log.warning(
                json.dumps(
                    {
                        "event": "jwks_keys_withdrawn",
                        "issuer": self.config.issuer,
                        "kids": sorted(str(k) for k in withdrawn),
                        "purged_tokens": purged,
                    }
                )
            )
        return FetchOutcome(
            ok=True, started_at=started, kids=frozenset(keyset.keys), withdrawn=withdrawn, purged=purged
        )

    async def _fetch(self) -> KeySet:
        uri = self._jwks_uri or self.config.jwks_uri or await self._discover()
        self._jwks_uri = uri
        response, document = await self._get_json(uri)
        keys, skipped = parse_jwks(document, pinned=frozenset(self.config.algorithms))
        self.stats.skipped_keys += skipped
        if skipped:
            log.warning(json.dumps({"event": "jwks_keys_skipped", "issuer": self.config.issuer, "count": skipped}))
        if not keys:
            self.stats.unusable_sets += 1
            raise KeySetError(f"GET {uri}: no usable key in the set ({skipped} skipped)")
        ttl = ttl_from_cache_control(
            response.headers.get("cache-control"),
            min_ttl=self.config.jwks.min_ttl_seconds,
            max_ttl=self.config.jwks.max_ttl_seconds,
        )
        now = self.clock()
        return KeySet(keys=keys, expires_at=now + ttl, fetched_at=now, skipped=skipped)

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
