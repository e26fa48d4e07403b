"""``bench/run --purge-at N``: how long a purge and a sweep take when the HAProxy decision cache holds N entries.

The shipped haproxy.cfg (SPOE mode, cache on) gets N entries through its Runtime API (``add map``, in batches), each
shaped like a bearer allow (:func:`idgate.cache_entry.encode_entry`: expiry, three purge tags, the identity fields;
the first half of them already expired). Then idgate's own :class:`~idgate.cache_purge.CachePurger`:
:data:`TRIALS` purges of one session each (``show map``, parse, ``del map``) are timed (the time a sign-out waits
for; p100 must stay under 1 s), and one sweep (expired entries deleted) is timed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass

from ibench.stack import Env, cache_socket, shipped_haproxy
from idgate.cache_entry import encode_entry, tag
from idgate.cache_purge import CachePurger
from idgate.runtime_api import RuntimeApi

MAP = "idgate-cache.map"
TRIALS = 20
BATCH = 40


@dataclass(frozen=True, kw_only=True)
class PurgeScale:
    """Entries filled; purge times (seconds) and entries each deleted; the sweep's seconds and evictions."""

    entries: int
    fill_s: float
    purge_s: tuple[float, ...]
    purged: tuple[int, ...]
    sweep_s: float
    swept: int

    @property
    def ok(self) -> bool:
        """Every purge deleted its one entry."""
        return all(n == 1 for n in self.purged)

    def lines(self) -> list[str]:
        p100 = max(self.purge_s)
        verdict = "PASS" if p100 <= 1.0 and all(n == 1 for n in self.purged) else "FAIL"
        return [
            f"decision cache with {self.entries:,} entries in HAProxy (filled in {self.fill_s:.0f} s):",
            f"  purge of one session: p50 {statistics.median(self.purge_s) * 1000:.0f} ms, "
            f"p100 {p100 * 1000:.0f} ms over {len(self.purge_s)} trials (each deleted {set(self.purged)} entry)",
            f"  sweep: {self.sweep_s * 1000:.0f} ms, {self.swept:,} expired entries deleted",
            f"{verdict}  purge p100 <= 1 s with {self.entries:,} entries: {p100 * 1000:.0f} ms",
        ]


def _value(n: int, now: int, total: int) -> str:
    return encode_entry(
        expires_at=now - 5 if n < total // 2 else now + 600,
        revocation_keys=(f"sid:bench-{n}", f"sub:https://idp.bench|member{n % 1000}"),
        variables={
            "status": "200",
            "decision": "allow",
            "upstream": "app",
            "user": f"member{n}",
            "email": f"member{n}@example.test",
            "groups": "staff",
            "subject": f"member{n}",
            "issuer": "https://idp.bench",
        },
    )


async def _measure(socket: str, entries: int) -> PurgeScale:
    api = RuntimeApi(address=f"unix:{socket}", timeout=60.0)
    now = int(time.time())
    started = time.monotonic()
    batch: list[str] = []
    for n in range(entries):
        batch.append(f"add map {MAP} {n:064x} {_value(n, now, entries)}")
        if len(batch) == BATCH:
            await api.commands(batch)
            batch = []
    if batch:
        await api.commands(batch)
    fill_s = time.monotonic() - started
    purger = CachePurger(apis=[api], map_name=MAP, max_entries=10 * entries, sweep_interval_seconds=3600.0)
    times, purged = [], []
    for trial in range(TRIALS):
        victim = entries // 2 + trial * (entries // 2) // TRIALS  # a live entry
        started = time.monotonic()
        purged.append(await purger.purge_tags({tag(f"sid:bench-{victim}")}, cause="bench", again=False))
        times.append(time.monotonic() - started)
    purger.stats.sockets[api.address].cleared = True  # keep the entries: a sweep, not the start-up clear
    started = time.monotonic()
    await purger.sweep()
    sweep_s = time.monotonic() - started
    return PurgeScale(
        entries=entries,
        fill_s=fill_s,
        purge_s=tuple(times),
        purged=tuple(purged),
        sweep_s=sweep_s,
        swept=purger.stats.evictions["expired"],
    )


def measure_purge_scale(stack: ExitStack, env: Env, *, entries: int) -> PurgeScale:
    """Start the shipped HAProxy with the cache on, fill it, time purges and a sweep (module docstring)."""
    shipped_haproxy(stack, env, "j-cache", mode="spoe", cache=True)
    return asyncio.run(_measure(str(cache_socket(env, "j-cache")), entries))
