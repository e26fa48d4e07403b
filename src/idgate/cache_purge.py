"""The decision cache in HAProxy, the purge side: idgate deletes entries through every HAProxy's Runtime API.

HAProxy keeps the entries in a map (``IDGATE_CACHE_MAP``; :mod:`idgate.cache_entry` for their content). This module
talks to each ``haproxy.runtime_api`` socket (HAProxy's doc/management.txt §9.3: ``show map``, ``del map``,
``clear map``, ``show table``):

- **Purges.** A revocation (sign-out ``sid:…``, back-channel logout ``sub:…`` / ``idp_sid:…``; written here, or read
  from the shared store's log when another replica wrote it) deletes every entry tagged with that key's
  :func:`~idgate.cache_entry.tag`, found with ``show map``; a second pass :data:`REPURGE_AFTER_SECONDS` later catches
  an allow that was in flight during the first (decided before the revocation, stored after the purge). A removed
  signing key (JWKS) or an operator's ``--all`` clears the map. Each socket is purged independently; a failure is
  counted (``idgate_cache_purge_failures_total``) and logged, and never delays a decision.
- **Sweeps.** Every ``cache.sweep_interval_seconds`` each map is read, expired entries deleted and, above
  ``cache.max_entries``, the soonest-expiring ones: HAProxy holds at most ``max_entries`` + (fills per second *
  interval) entries, where the interval stretches to twice the last sweep's duration when that is longer
  (:func:`sweep_pause`: ``show map`` of 100,000 entries is ~30 MB of text). The sweep also reads the hit and miss
  counters (``show table st_idgate_cache``).
- **Start.** The first time a socket answers, its map is cleared: entries written under an earlier configuration or
  policy (before this process started) must not outlive it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from idgate.cache_entry import TAG_KINDS, tag
from idgate.runtime_api import RuntimeApi, RuntimeApiError
from idgate.store.base import RevocationStore, StoreHealth

log = logging.getLogger("idgate.cache")

REPURGE_AFTER_SECONDS = 2.0
"""The second purge pass: longer than HAProxy's auth timeout plus idgate's decision budget."""
COMMAND_TIMEOUT_SECONDS = 2.0
"""One Runtime API command (a purge waits for the first pass at most this long)."""
MAX_BATCH_CHARS = 8000
"""``del map`` commands joined by ``;`` per Runtime API line (HAProxy reads one line into a ``tune.bufsize``
buffer, 16 KiB by default)."""
COUNTER_TABLE = "st_idgate_cache"
"""haproxy.cfg's stick table counting hits (gpc0) and misses (gpc1) under key 1."""


def sweep_pause(interval: float, last_sweep: float) -> float:
    """Seconds to wait before the next sweep: ``interval``, or twice the last sweep's duration when that is longer (a
    large map's ``show map`` takes seconds; the sweeper then takes at most a third of its time)."""
    return max(interval, 2 * last_sweep)


@dataclass(frozen=True, kw_only=True, slots=True)
class MapEntry:
    """One line of ``show map``: ``ref`` (HAProxy's pointer to the entry, ``0x…``), ``key`` (the request hash),
    ``expires_at`` (epoch seconds; 0 when unreadable) and the entry's tags (:data:`~idgate.cache_entry.TAG_KINDS`
    order, empty strings for none)."""

    key: str
    expires_at: int
    tags: tuple[str, ...]
    ref: str


_SHOW_MAP_LINE = re.compile(r"^(0x[0-9a-fA-F]+) (\S+) ([^|\n]*)" + r"(?:\|([^|\n]*))?" * len(TAG_KINDS), re.MULTILINE)
"""One ``show map`` line: the pointer, the key, then the value's expiry and tag fields (missing ones unmatched)."""


def parse_show_map(text: str) -> list[MapEntry]:
    """``show map <name>`` output (``0x55d0… <key> <value>`` per line) → entries; other lines are skipped. A value
    that is not an idgate entry reads as expiry 0 (the next sweep deletes it). One regular-expression pass: 100,000
    entries (~24 MB of text) parse in well under a second, where splitting each line took 0.35 s."""
    entries = []
    for match in _SHOW_MAP_LINE.finditer(text):
        ref, key, exp, *tags = match.groups()
        entries.append(
            MapEntry(ref=ref, key=key, expires_at=int(exp) if exp.isdigit() else 0, tags=tuple(t or "" for t in tags))
        )
    return entries


def find_tagged(text: str, tags: Collection[str]) -> list[MapEntry]:
    """The entries of ``show map`` output that carry one of ``tags`` (as :func:`parse_show_map` reads them), found
    by searching the text for each tag and parsing only the lines it occurs on: a purge among 100,000 entries reads
    a few lines instead of building 100,000 entries (0.4 s)."""
    found: dict[str, MapEntry] = {}
    for wanted in {t for t in tags if t}:
        at = text.find(wanted)
        while at >= 0:
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            end = len(text) if end < 0 else end
            for entry in parse_show_map(text[start:end]):
                if wanted in entry.tags:
                    found[entry.ref] = entry
            at = text.find(wanted, end)
    return list(found.values())


def parse_counters(text: str) -> tuple[int, int] | None:
    """``show table st_idgate_cache`` → (hits, misses) from the row of key 1; None when there is no row yet."""
    for line in text.splitlines():
        if " key=1 " in line + " ":
            values = dict(p.split("=", 1) for p in line.split() if "=" in p)
            try:
                return int(values.get("gpc0", "0")), int(values.get("gpc1", "0"))
            except ValueError:
                return None
    return None


@dataclass(kw_only=True)
class SocketState:
    """What the last sweep saw on one socket: entries left, hit and miss counters, and whether it was reached."""

    entries: int = 0
    hits: int = 0
    misses: int = 0
    up: bool = False
    cleared: bool = False
    warned: bool = False


@dataclass(kw_only=True)
class PurgeStats:
    """Counters for ``/metrics``: purges by cause, failed purges (one per socket and pass), evictions by reason
    (``expired``, ``over_cap``), failed sweeps, and each socket's :class:`SocketState`."""

    purges: dict[str, int] = field(default_factory=dict)
    purge_failures: int = 0
    evictions: dict[str, int] = field(default_factory=lambda: {"expired": 0, "over_cap": 0})
    sweep_failures: int = 0
    sockets: dict[str, SocketState] = field(default_factory=dict)


class CachePurger:
    """Purges and sweeps the decision cache on every HAProxy (module docstring). Start with :meth:`start`, stop with
    :meth:`close`; :meth:`revoked` is the hook the store calls (synchronous, never blocks)."""

    def __init__(
        self,
        *,
        apis: Sequence[RuntimeApi],
        map_name: str,
        max_entries: int,
        sweep_interval_seconds: float,
        issuers: Collection[str] = (),
        clock: Callable[[], float] = time.time,
        repurge_after_seconds: float = REPURGE_AFTER_SECONDS,
    ) -> None:
        self._apis = tuple(apis)
        self._map = map_name
        self._max_entries = max_entries
        self._interval = sweep_interval_seconds
        self._issuers = tuple(issuers)
        self._clock = clock
        self._repurge_after = repurge_after_seconds
        self.stats = PurgeStats(sockets={api.address: SocketState() for api in self._apis})
        self._tasks: set[asyncio.Task[Any]] = set()
        self._urgent: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def map_name(self) -> str:
        """The map's name as haproxy.cfg spells it."""
        return self._map

    def subject_tags(self, subject: str) -> set[str]:
        """Tags of ``subject`` under every configured issuer (an operator names a subject, not an issuer)."""
        return {tag(f"sub:{issuer}|{subject}") for issuer in self._issuers}

    def session_tags(self, sid: str) -> set[str]:
        """Tags of a session id: idgate's own (``sid:``) and the IdP's (``idp_sid:``) under every issuer."""
        return {tag(f"sid:{sid}")} | {tag(f"idp_sid:{issuer}|{sid}") for issuer in self._issuers}

    # -- purges ---------------------------------------------------------------------------------------------------

    def revoked(self, key: str, *, cause: str = "revocation") -> asyncio.Task[int] | None:
        """Hook for a revocation of ``key`` (``sid:…``, ``sub:…``, ``idp_sid:…``): purge its entries in the
        background (both passes). Returns the task of the first pass (None outside an event loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        task = loop.create_task(self.purge_tags({tag(key)}, cause=cause), name=f"cache-purge:{cause}")
        self._keep(task)
        return task

    async def purge_tags(self, tags: Collection[str], *, cause: str, again: bool = True) -> int:
        """Delete every entry carrying one of ``tags`` on every socket; returns how many were deleted. With
        ``again``, a second pass runs :data:`REPURGE_AFTER_SECONDS` later (in the background)."""
        wanted = {t for t in tags if t}
        self.stats.purges[cause] = self.stats.purges.get(cause, 0) + 1
        counts = await asyncio.gather(*(self._purge_socket(api, wanted, cause) for api in self._apis))
        if again and self._repurge_after > 0:
            self._keep(asyncio.get_running_loop().create_task(self._repurge(wanted, cause)))
        return sum(counts)

    async def _repurge(self, tags: set[str], cause: str) -> None:
        await asyncio.sleep(self._repurge_after)
        await asyncio.gather(*(self._purge_socket(api, tags, cause) for api in self._apis))

    async def _purge_socket(self, api: RuntimeApi, tags: set[str], cause: str) -> int:
        try:
            text = await api.command(f"show map {self._map}")
            doomed = find_tagged(text, tags)
            await self._delete(api, doomed)
        except RuntimeApiError as exc:
            self._failed(api, "cache_purge_failed", exc, cause=cause)
            return 0
        return len(doomed)

    async def _read_map(self, api: RuntimeApi) -> list[MapEntry]:
        """``show map`` of one socket, parsed in a worker thread: 100,000 entries are ~24 MB of text, and the event
        loop keeps deciding meanwhile."""
        text = await api.command(f"show map {self._map}")
        return await asyncio.to_thread(parse_show_map, text)

    async def purge_all(self, *, cause: str, again: bool = False) -> int:
        """``clear map`` on every socket; returns how many sockets were cleared. With ``again``, a second pass
        :data:`REPURGE_AFTER_SECONDS` later (in the background) clears an allow that was in flight."""
        self.stats.purges[cause] = self.stats.purges.get(cause, 0) + 1
        done = await asyncio.gather(*(self._clear(api, cause) for api in self._apis))
        if again and self._repurge_after > 0:
            self._keep(asyncio.get_running_loop().create_task(self._reclear(cause)))
        return sum(done)

    async def _reclear(self, cause: str) -> None:
        await asyncio.sleep(self._repurge_after)
        await asyncio.gather(*(self._clear(api, cause) for api in self._apis))

    def purge_all_soon(self, *, cause: str) -> None:
        """:meth:`purge_all` in the background (a synchronous hook: a JWKS key withdrawn); :meth:`settle` waits for
        it."""
        try:
            task = asyncio.get_running_loop().create_task(self.purge_all(cause=cause, again=True))
        except RuntimeError:
            return
        self._keep(task)
        self._urgent.add(task)
        task.add_done_callback(self._urgent.discard)

    async def settle(self) -> None:
        """Wait (at most :data:`COMMAND_TIMEOUT_SECONDS`) for the purges :meth:`purge_all_soon` started."""
        if self._urgent:
            await asyncio.wait(set(self._urgent), timeout=COMMAND_TIMEOUT_SECONDS)

    async def _clear(self, api: RuntimeApi, cause: str) -> bool:
        try:
            await api.admin(f"clear map {self._map}")
        except RuntimeApiError as exc:
            self._failed(api, "cache_purge_failed", exc, cause=cause)
            return False
        return True

    async def _delete(self, api: RuntimeApi, entries: Iterable[MapEntry]) -> None:
        """``del map <map> #<ref>`` for each entry, in batches. By reference, not by key: HAProxy 2.8 keeps a map's
        entries in one list, and deleting by key walks all of it (several entries may share a key: 1.8 ms per delete
        at 100,000 entries, so a sweep of 50,000 expired ones took 81 s), while a reference stops at its entry (7 us
        for the oldest, which is where expired entries sit). A reference whose entry is gone meanwhile deletes
        nothing, or at worst an entry that reused the memory: a miss, never an allow."""
        batch: list[str] = []
        size = 0
        for entry in entries:
            command = f"del map {self._map} #{entry.ref}"
            if batch and size + len(command) + 2 > MAX_BATCH_CHARS:
                await api.commands(batch)
                batch, size = [], 0
            batch.append(command)
            size += len(command) + 2
        if batch:
            await api.commands(batch)

    def _failed(self, api: RuntimeApi, event: str, exc: RuntimeApiError, **extra: str) -> None:
        state = self.stats.sockets[api.address]
        if event == "cache_purge_failed":
            self.stats.purge_failures += 1
        else:
            self.stats.sweep_failures += 1
            if not state.up and state.warned:
                return  # a socket that stays down is logged once, when it goes down
        state.up, state.warned = False, True
        log.warning(json.dumps({"event": event, "socket": api.address, "kind": exc.kind, "error": str(exc), **extra}))

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sweeps ---------------------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """One sweep of every socket (module docstring); clears a socket's map the first time it answers."""
        await asyncio.gather(*(self._sweep_socket(api) for api in self._apis))

    async def _sweep_socket(self, api: RuntimeApi) -> None:
        state = self.stats.sockets[api.address]
        try:
            if not state.cleared:
                await api.admin(f"clear map {self._map}")
                state.cleared = True
                log.info(json.dumps({"event": "cache_cleared_at_start", "socket": api.address}))
            entries = await self._read_map(api)
            now = self._clock()
            expired = [e for e in entries if e.expires_at <= now]
            live = sorted((e for e in entries if e.expires_at > now), key=lambda e: e.expires_at)
            over = live[: max(0, len(live) - self._max_entries)]
            await self._delete(api, expired + over)
            self.stats.evictions["expired"] += len(expired)
            self.stats.evictions["over_cap"] += len(over)
            state.entries = len(live) - len(over)
            counters = parse_counters(await api.command(f"show table {COUNTER_TABLE}"))
            if counters is not None:
                state.hits, state.misses = counters
            state.up = True
        except RuntimeApiError as exc:
            self._failed(api, "cache_sweep_failed", exc)

    async def _sweep_forever(self) -> None:
        while True:
            started = time.monotonic()
            await self.sweep()
            await asyncio.sleep(sweep_pause(self._interval, time.monotonic() - started))

    async def start(self) -> None:
        """Start sweeping (the first sweep clears each map)."""
        if self._sweeper is None and self._apis:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="cache-sweeper")

    async def close(self) -> None:
        """Stop sweeping and cancel purges in flight."""
        tasks = [*self._tasks, *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = None

    # -- the store hook and /metrics -----------------------------------------------------------------------------

    def watching(self, store: RevocationStore) -> RevocationStore:
        """``store``, purging the cache on each revocation written through it."""
        return PurgingStore(store=store, purger=self)

    def collector(self) -> Collector:
        """The ``idgate_cache_*`` metrics read at scrape time (:mod:`idgate.metrics` lists them)."""
        return _CacheCollector(self.stats)


class PurgingStore:
    """A :class:`~idgate.store.base.RevocationStore` that also purges the decision cache on :meth:`revoke`, waiting
    for the first pass at most :data:`COMMAND_TIMEOUT_SECONDS` (so the sign-out answer follows the purge)."""

    def __init__(self, *, store: RevocationStore, purger: CachePurger) -> None:
        self._store = store
        self._purger = purger
        self.inner = store

    async def revoke(self, key: str, *, at: float, until: float) -> None:
        await self._store.revoke(key, at=at, until=until)
        task = self._purger.revoked(key)
        if task is not None:
            await asyncio.wait({task}, timeout=COMMAND_TIMEOUT_SECONDS)

    async def revoked_at(self, key: str) -> float | None:
        return await self._store.revoked_at(key)

    async def remember_once(self, key: str, *, until: float) -> bool:
        return await self._store.remember_once(key, until=until)

    async def lock(self, key: str, *, ttl: float) -> str | None:
        return await self._store.lock(key, ttl=ttl)

    async def unlock(self, key: str, token: str) -> None:
        await self._store.unlock(key, token)

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        await self._store.put(key, value, ttl=ttl)

    async def get(self, key: str) -> str | None:
        return await self._store.get(key)

    def health(self) -> StoreHealth:
        return self._store.health()

    async def start(self) -> None:
        await self._store.start()

    async def close(self) -> None:
        await self._store.close()


class _CacheCollector(Collector):
    def __init__(self, stats: PurgeStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        s = self._stats
        purges = CounterMetricFamily(
            "idgate_cache_purges", "Decision-cache purges requested, by cause", labels=["cause"]
        )
        for cause, count in sorted(s.purges.items()):
            purges.add_metric([cause], count)
        yield purges
        yield CounterMetricFamily(
            "idgate_cache_purge_failures", "Decision-cache purges that failed on one socket", value=s.purge_failures
        )
        yield CounterMetricFamily(
            "idgate_cache_sweep_failures", "Decision-cache sweeps that failed on one socket", value=s.sweep_failures
        )
        evictions = CounterMetricFamily(
            "idgate_cache_evictions", "Entries the sweeper deleted, by reason", labels=["reason"]
        )
        for reason, count in sorted(s.evictions.items()):
            evictions.add_metric([reason], count)
        yield evictions
        entries = GaugeMetricFamily("idgate_cache_entries", "Live entries at the last sweep", labels=["socket"])
        hits = CounterMetricFamily("idgate_cache_hits", "Requests HAProxy answered from the cache", labels=["socket"])
        misses = CounterMetricFamily("idgate_cache_misses", "Requests HAProxy asked idgate about", labels=["socket"])
        up = GaugeMetricFamily("idgate_cache_socket_up", "1 when the last sweep reached the socket", labels=["socket"])
        for address, state in sorted(s.sockets.items()):
            entries.add_metric([address], state.entries)
            hits.add_metric([address], state.hits)
            misses.add_metric([address], state.misses)
            up.add_metric([address], float(state.up))
        yield from (entries, hits, misses, up)
