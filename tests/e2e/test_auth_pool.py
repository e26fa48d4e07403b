"""Many multiplexed requests at once (HTTP/2, as gRPC clients send them), in both modes: every one decided, none
refused for lack of an answer; in auth_request mode HAProxy carries the Lua /auth calls to idgate over its local
listener's bounded pool of reused connections (``IDGATE_AUTH_LB_BIND``, ``IDGATE_AUTH_MAXCONN``), never one new
connection per call in flight (haproxy/README.md "Traps": idgate's event loop took new connections up late under
load, and the calls failed closed after the 1 s budget). Figures are printed (``-s``)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
import time

import httpx
import pytest
from stack import Stack, access_claims

pytestmark = pytest.mark.e2e
MAXCONN = 32  # haproxy.cfg's IDGATE_AUTH_MAXCONN default
STREAMS = 200


def idgate_connections(port: int) -> int:
    """Established TCP connections to ``port`` (idgate's HTTP listener), from ``ss``."""
    out = subprocess.run(
        ["ss", "-tanH", "state", "established", f"( dport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return len(out.splitlines())


async def multiplexed(stack: Stack, token: str, rounds: int) -> list[int]:
    """``rounds`` bursts of :data:`STREAMS` requests at once on ONE HTTP/2 connection; their statuses."""
    context = ssl.create_default_context(cafile=str(stack.certs.ca))
    limits = httpx.Limits(max_connections=1)
    headers = {"authorization": f"Bearer {token}"}
    statuses: list[int] = []
    async with httpx.AsyncClient(http2=True, verify=context, limits=limits, timeout=10) as client:
        for _ in range(rounds):
            answers = await asyncio.gather(*(client.get(stack.url + "/app/", headers=headers) for _ in range(STREAMS)))
            statuses += [a.status_code for a in answers]
            assert {a.http_version for a in answers} == {"HTTP/2"}
    return statuses


def test_many_multiplexed_requests_are_all_decided_over_a_bounded_pool(stack: Stack) -> None:
    token = stack.idp.sign({"typ": "at+jwt"}, access_claims(stack))
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], idgate_connections(stack.idgate.port))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        statuses = asyncio.run(multiplexed(stack, token, rounds=5))
    finally:
        stop.set()
        sampler.join()
    took = time.monotonic() - started
    print(
        f"\n[{stack.mode}] {len(statuses)} requests, {STREAMS} at once on one HTTP/2 connection, in {took:.1f} s: "
        f"statuses {sorted(set(statuses))}; peak connections to idgate's HTTP port {peak[0]}"
    )
    assert statuses == [200] * (5 * STREAMS)
    if stack.mode == "auth_request":
        assert stack.settings.auth_lb_bind is not None
        assert 0 < peak[0] <= MAXCONN + 2  # the pool (+ the listener's health checks)
