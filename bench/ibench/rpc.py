"""The gRPC variants' load and checks: h2load unary calls, the proof that every call was allowed, grpcio sanity calls.

A gRPC refusal is HTTP 200 too (trailers-only, ``grpc-status`` 16/7/14), so h2load's 2xx count proves nothing. A run
therefore passes only when, for the ``n`` calls h2load made, all of these hold:

- h2load negotiated h2 and reports ``n`` succeeded, 0 failed / errored / timeout, ``n`` 2xx;
- the upstream's gRPC request counter grew by exactly ``n``: every call reached the upstream (a refusal is answered by
  the front proxy and never gets there);
- h2load received exactly ``n`` x the upstream's reply message in DATA bytes: every answer carried the upstream's
  message (a refusal from the front proxy has no body, so it cannot hide among them).

h2load cannot show response headers, so a non-zero ``grpc-status`` is caught through those two counts, not read.
Before a variant is measured, a real grpcio call with the real token must come back OK (``check_valid``): it goes
through the variant and the upstream HAProxy to the grpcio echo service, which also reports the identity metadata
it received.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

# grpcio ships no type information: everything taken from it is ``Any`` here.
import grpc  # type: ignore[import-untyped,unused-ignore]

from ibench.load import RunResult, failed
from ibench.procs import CpuMeter
from ibench.stack import Env, grpc_message
from idgate_devstack.grpc_client import WHOAMI, echo_stub, open_channel

METHOD = "/bench.Echo/Unary"
"""The method every load call goes to (idgate route ``/bench.Echo/*``; the upstream HAProxy answers it itself)."""
REQUEST_PAYLOAD = b'{"say":"bench"}'
VALID_RETRY_S = 10.0
CALL_TIMEOUT_S = 5.0
SETTLE_S = 0.5
SETTLE_MAX_S = 5.0
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True, kw_only=True)
class GrpcLoad:
    """h2load ``-c connections -m streams`` (concurrent calls per connection); ``duration`` s per measured run."""

    connections: int
    streams: int
    duration: int


def request_file(env: Env) -> str:
    """The request body file for ``h2load -d``: one length-prefixed gRPC message."""
    path = env.root / "grpc-request.bin"
    if not path.exists():
        path.write_bytes(grpc_message(REQUEST_PAYLOAD))
    return str(path)


def h2load_argv(base_url: str, env: Env, load: GrpcLoad, *, calls: int = 0, seconds: int = 0) -> list[str]:
    """h2load over TLS (ALPN h2): POST ``METHOD`` with gRPC headers and one message; ``-n calls`` or ``-D seconds``."""
    length = [f"-n{calls}"] if calls else [f"-D{seconds}"]
    return [
        "h2load",
        "-t1",
        f"-c{load.connections}",
        f"-m{load.streams}",
        *length,
        "-d",
        request_file(env),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        f"authorization: Bearer {env.token}",
        base_url.rstrip("/") + METHOD,
    ]


def _count(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match[1]) if match else None


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(match[1]) * _UNITS[match[2]] if match else math.nan


@dataclass(frozen=True, kw_only=True)
class H2loadReport:
    """The numbers bench/run needs from h2load's summary."""

    h2: bool
    rps: float
    started: int
    succeeded: int
    bad: int
    """failed + errored + timeout"""
    ok_2xx: int
    data_bytes: int
    mean_ms: float


def parse(stdout: str) -> H2loadReport | None:
    """h2load's summary; None when it has none (it did not run to the end)."""
    rps = re.search(r"^finished in [\d.]+s, ([\d.]+) req/s", stdout, re.M)
    started, succeeded = _count(r"(\d+) started", stdout), _count(r"(\d+) succeeded", stdout)
    data = _count(r"\((\d+)\) data", stdout)
    if rps is None or started is None or succeeded is None or data is None:
        return None
    bad = sum(_count(rf"(\d+) {word}", stdout) or 0 for word in ("failed", "errored", "timeout"))
    latency = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", stdout, re.M)
    return H2loadReport(
        h2="Application protocol: h2" in stdout,
        rps=float(rps[1]),
        started=started,
        succeeded=succeeded,
        bad=bad,
        ok_2xx=_count(r"(\d+) 2xx", stdout) or 0,
        data_bytes=data,
        mean_ms=_duration_ms(latency[3]) if latency else math.nan,
    )


def verdict(report: H2loadReport, *, calls: int, reached: int, reply_bytes: int) -> RunResult:
    """The run's result with every check applied. ``calls``: what ``-n`` asked for (0: a ``-D`` run, where up to
    ``-c x -m`` calls in flight at the end are dropped by h2load, so the upstream may have seen up to ``started``)."""
    problems = []
    if not report.h2:
        problems.append("h2load did not negotiate h2")
    if report.succeeded == 0 or (calls and report.succeeded != calls):
        problems.append(f"{report.succeeded:,} of {calls or report.started:,} calls succeeded")
    if report.bad or report.ok_2xx != report.succeeded:
        problems.append(f"h2load: {report.bad:,} failed/errored/timed out, {report.ok_2xx:,} 2xx")
    if (calls and reached != calls) or not report.succeeded <= reached <= report.started:
        problems.append(f"the upstream saw {reached:,} calls for {report.succeeded:,} succeeded")
    expected = report.succeeded * reply_bytes
    if report.data_bytes < expected and report.data_bytes % reply_bytes == 0:
        missing = report.succeeded - report.data_bytes // reply_bytes
        problems.append(
            f"{missing:,} of {report.succeeded:,} calls came back without the upstream's message "
            "(answered by the front proxy itself: a gRPC refusal)"
        )
    elif report.data_bytes != expected:
        problems.append(f"{report.data_bytes:,} DATA bytes received, {expected:,} expected (upstream replies only)")
    return RunResult(
        rps=report.rps,
        requests=report.succeeded,
        ok=report.succeeded,
        p50_ms=math.nan,
        p99_ms=math.nan,
        mean_ms=report.mean_ms,
        upstream_hits=reached,
        failure="; ".join(problems),
    )


def settled(upstream_count: Callable[[], int]) -> int:
    """The upstream's counter once quiet for ``SETTLE_S``. A ``-D`` run ends with up to ``-c x -m`` calls in flight,
    which h2load abandons but the front proxy may still forward (after its auth answer): they must not be counted
    in the next run."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last = upstream_count()
    while time.monotonic() < deadline:
        time.sleep(SETTLE_S)
        now = upstream_count()
        if now == last:
            break
        last = now
    return last


def run_h2load(
    base_url: str, env: Env, load: GrpcLoad, upstream_count: Callable[[], int], *, calls: int = 0, seconds: int = 0
) -> RunResult:
    """One h2load run (``-n calls`` or ``-D seconds``), CPU noise measured, checked against the upstream's counter."""
    argv = h2load_argv(base_url, env, load, calls=calls, seconds=seconds)
    limit = (seconds or load.duration) * 5 + 60
    before = upstream_count()
    with CpuMeter() as meter:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)  # noqa: S603
    reached = (settled(upstream_count) if seconds else upstream_count()) - before
    report = parse(proc.stdout)
    if proc.returncode != 0 or report is None:
        return failed(f"h2load exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    result = verdict(report, calls=calls, reached=reached, reply_bytes=len(env.grpc_reply))
    return replace(result, others_pct=meter.share.others_pct, steal_pct=meter.share.steal_pct)


def measure_once(base_url: str, env: Env, load: GrpcLoad, upstream_count: Callable[[], int], warmup: int) -> RunResult:
    """An unmeasured ``-D`` run of ``max(warmup, 1)`` s, which also sizes the measured run: ``-n`` = its rate x
    ``load.duration`` (a whole number of rounds of ``-c x -m`` calls), so every call h2load counts must have reached
    the upstream, exactly."""
    probe = run_h2load(base_url, env, load, upstream_count, seconds=max(warmup, 1))
    if probe.failure:
        return replace(probe, failure=f"warm-up: {probe.failure}")
    batch = load.connections * load.streams
    calls = max(1, round(probe.rps * load.duration / batch)) * batch
    return run_h2load(base_url, env, load, upstream_count, calls=calls)


# -- grpcio sanity calls -------------------------------------------------------------------------------------------


def _target(base_url: str) -> str:
    return urllib.parse.urlsplit(base_url).netloc


def _call(stub: Any, token: str | None) -> tuple[int, str, Any]:
    """(status code, details, response) of one Whoami call through the variant."""
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    try:
        record = stub.whoami({"bench": "sanity"}, metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return int(exc.code().value[0]), f"{exc.code().name} {exc.details()}", None
    return 0, "OK", record


def check_valid(env: Env, base_url: str, *, auth: bool) -> str:
    """Empty when a grpcio call to ``demo.Echo/Whoami`` with the real token returns OK through the variant (retried
    for ``VALID_RETRY_S``: a first JWKS fetch) and, for an auth variant, the echo service received ``x-auth-user``."""
    deadline = time.monotonic() + VALID_RETRY_S
    last = ""
    with open_channel(_target(base_url), ca_file=env.certs.ca) as channel:
        stub = echo_stub(channel)
        while time.monotonic() < deadline:
            code, details, record = _call(stub, env.token)
            if code == 0:
                users = [value for key, value in record["metadata"] if key == "x-auth-user"]
                if auth and not users:
                    return f"grpcio {WHOAMI}: OK, but the upstream got no x-auth-user metadata"
                return ""
            last = f"grpcio {WHOAMI} with the real token: {details}"
            time.sleep(0.2)
    with open_channel(env.grpc_upstream_addr) as channel:  # which hop is wrong: the variant or the upstream?
        direct = _call(echo_stub(channel), env.token)[1]
    return f"{last} (the same call straight to the upstream's h2c listener: {direct})"


def refusals(env: Env, base_url: str, tokens: dict[str, str | None]) -> dict[str, int]:
    """Hostile token name -> the grpc-status the variant answered a grpcio call with (0: let through)."""
    with open_channel(_target(base_url), ca_file=env.certs.ca) as channel:
        stub = echo_stub(channel)
        return {name: _call(stub, token)[0] for name, token in tokens.items()}
