"""``bench/run --memory N``: idgate's resident memory with N distinct verified tokens cached (the issue's "idgate RSS
<= 100 MB with 100k cached tokens").

One ``idgate serve`` with the bench's config and ``server.token_cache_entries: N`` (the decision memo keeps its
default bound, 10,000 answers of at most 10 s), then N distinct access tokens (one user each, signed by the test
IdP's real key, valid 1 h, the shape of the bench token) sent once each to ``/auth`` (auth_request mode, the request
facts HAProxy would send), every answer checked to be an allow; then a sample sent again must be answered from a
cache. RSS is the process's ``VmRSS`` (KiB) when ready and after.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import httpx

from ibench.procs import rss_kib
from ibench.stack import Env, IdgateHandle, idgate_config, member_token, service_pid
from idgate_devstack.process import free_tcp_port
from idgate_devstack.stack import start_idgate

CONCURRENCY = 16
RECHECK = 1000
"""Tokens sent a second time: each must be answered from a cache, never verified again (the cache really holds
them)."""


@dataclass(frozen=True, kw_only=True)
class MemoryResult:
    """``tokens`` sent; ``allowed`` of them; ``cached``: idgate's ``idgate_token_cache_entries`` after; ``rechecked``
    / ``recheck_hits``: the second pass; RSS in KiB; ``sign_s`` / ``send_s``: seconds spent signing and sending."""

    tokens: int
    allowed: int
    cached: int
    rechecked: int
    recheck_hits: int
    rss_ready_kib: int
    rss_after_kib: int
    sign_s: float
    send_s: float

    @property
    def ok(self) -> bool:
        """Every token was allowed."""
        return self.allowed == self.tokens

    def lines(self) -> list[str]:
        per_token = (self.rss_after_kib - self.rss_ready_kib) * 1024 / max(1, self.cached)
        verdict = "PASS" if self.rss_after_kib <= 100 * 1024 and self.allowed == self.tokens else "FAIL"
        return [
            f"idgate with {self.cached:,} cached tokens ({self.allowed:,} of {self.tokens:,} allowed, "
            f"{self.recheck_hits:,} of {self.rechecked:,} resent answered from a cache):",
            f"  RSS {self.rss_ready_kib / 1024:.1f} MiB when ready, {self.rss_after_kib / 1024:.1f} MiB after "
            f"({per_token:,.0f} bytes per cached token); signing {self.sign_s:.0f} s, sending {self.send_s:.0f} s",
            f"{verdict}  idgate RSS <= 100 MB with {self.tokens:,} cached tokens: {self.rss_after_kib / 1024:.1f} MiB",
        ]


def _tokens(env: Env, count: int) -> list[str]:
    now = int(time.time())
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda n: member_token(env, f"member{n}", now=now), range(count)))


async def _send(url: str, tokens: list[str]) -> int:
    """Each token once to ``url`` (``/auth``); returns how many were allowed (200)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for token in tokens:
        queue.put_nowait(token)
    allowed = 0
    facts = {"X-Idgate-Method": "GET", "X-Idgate-Host": "bench.test", "X-Idgate-Path": "/", "X-Idgate-Proto": "https"}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal allowed
        while not queue.empty():
            token = queue.get_nowait()
            answer = await client.get(url, headers={**facts, "X-Idgate-Source": "127.0.0.1", "Authorization": token})
            allowed += answer.status_code == 200

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return allowed


def measure_memory(stack: ExitStack, env: Env, *, tokens: int) -> MemoryResult:
    """Start the ``memory`` idgate, fill it with ``tokens`` distinct tokens, measure (module docstring)."""
    config = idgate_config(env, spoa_port=free_tcp_port(), cache_entries=tokens)
    service = start_idgate(stack, env.root, config, port=free_tcp_port(), name="idgate-memory")
    pid = service_pid(service)
    ready = rss_kib(pid)
    handle = IdgateHandle(name="memory", service=service, spoa_addr="", rss_at_start_kib=ready)
    started = time.monotonic()
    signed = [f"Bearer {t}" for t in _tokens(env, tokens)]
    sign_s = time.monotonic() - started
    started = time.monotonic()
    allowed = asyncio.run(_send(f"{service.url}/auth", signed))
    send_s = time.monotonic() - started
    after = rss_kib(pid)
    before_hits = _hits(handle.metrics())
    sample = signed[:: max(1, len(signed) // RECHECK)][:RECHECK]
    asyncio.run(_send(f"{service.url}/auth", sample))
    return MemoryResult(
        tokens=tokens,
        allowed=allowed,
        cached=int(handle.metrics().get("idgate_token_cache_entries", 0)),
        rechecked=len(sample),
        recheck_hits=int(_hits(handle.metrics()) - before_hits),
        rss_ready_kib=ready,
        rss_after_kib=after,
        sign_s=sign_s,
        send_s=send_s,
    )


def _hits(metrics: dict[str, float]) -> float:
    """Requests answered without verifying the token again: token-cache hits plus decision-memo hits (a recent token
    may still be in the memo, which answers before the token cache is asked)."""
    return metrics.get("idgate_token_cache_hits_total", 0) + metrics.get("idgate_decision_memo_hits_total", 0)
