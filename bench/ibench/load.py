"""Load generators: wrk (closed loop, peak throughput) and h2load --rps (fixed rate, latency at a given load); the
gRPC load (h2load, HTTP/2) is in ``ibench.rpc``.

Both results carry their own success check: every response must be 200 and no socket error may occur, otherwise
``failure`` says why (a variant that answers 401 quickly must not look fast).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRK_SCRIPT = Path(__file__).with_name("count.lua")
WRK_MARK = "WRK_JSON "


@dataclass(frozen=True, kw_only=True)
class Load:
    """Shape of the closed-loop load: wrk ``-t threads -c connections -d duration``."""

    threads: int
    connections: int
    duration: int


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """One measured run. Latencies in milliseconds; ``failure`` is empty when every request succeeded."""

    rps: float
    requests: int
    ok: int
    p50_ms: float
    p99_ms: float
    failure: str = ""
    mean_ms: float = math.nan
    """Mean latency (gRPC runs: h2load reports no percentiles without a per-request log, so p50/p99 are NaN)."""
    upstream_hits: int | None = None
    """How many requests the upstream's counter grew by during the run (None: not read)."""
    others_pct: float = 0.0
    """CPU used by processes outside this benchmark during the run, in % of all cores (noise indicator)."""
    steal_pct: float = 0.0
    """CPU stolen by the hypervisor during the run, in % of all cores."""

    def to_json(self) -> dict[str, object]:
        return {
            "rps": round(self.rps, 1),
            "requests": self.requests,
            "ok": self.ok,
            "p50_ms": ms_or_none(self.p50_ms),
            "p99_ms": ms_or_none(self.p99_ms),
            "mean_ms": ms_or_none(self.mean_ms),
            "upstream_hits": self.upstream_hits,
            "failure": self.failure,
            "others_cpu_pct": round(self.others_pct, 1),
            "steal_cpu_pct": round(self.steal_pct, 1),
        }


def ms_or_none(value: float) -> float | None:
    """A latency for JSON: rounded, None when not measured (NaN)."""
    return None if math.isnan(value) else round(value, 3)


def failed(reason: str) -> RunResult:
    return RunResult(rps=0.0, requests=0, ok=0, p50_ms=0.0, p99_ms=0.0, failure=reason)


def wrk_argv(url: str, token: str, load: Load, duration: int, script: Path = WRK_SCRIPT) -> list[str]:
    return [
        "wrk",
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        "-H",
        f"Authorization: Bearer {token}",
        url,
    ]


def run_wrk(url: str, token: str, load: Load, *, duration: int | None = None, script: Path | None = None) -> RunResult:
    """Run wrk against ``url`` with the bearer ``token`` (or the requests ``script`` makes: ibench/mix.lua);
    check every response was a 200."""
    seconds = duration if duration is not None else load.duration
    argv = wrk_argv(url, token, load, seconds, script or WRK_SCRIPT)
    env = {**os.environ, "BENCH_COUNT_LUA": str(WRK_SCRIPT)}
    proc = subprocess.run(  # noqa: S603 - fixed argv
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False, env=env
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(WRK_MARK)), None)
    if proc.returncode != 0 or line is None:
        return failed(f"wrk exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return wrk_result(json.loads(line.removeprefix(WRK_MARK)))


def wrk_result(data: dict[str, Any]) -> RunResult:
    """A ``RunResult`` from count.lua's JSON line, with the success check applied."""
    requests, ok, bad = int(data["requests"]), int(data["ok"]), int(data["bad"])
    errors = {name: int(count) for name, count in data["errors"].items() if int(count)}
    seconds = int(data["duration_us"]) / 1e6
    problems = []
    if requests == 0:
        problems.append("no response at all")
    if bad or ok != requests:
        problems.append(f"{bad} of {requests} responses not 200 (first: {data['first_bad_status']})")
    if errors:
        problems.append(f"socket errors {errors}")
    return RunResult(
        rps=requests / seconds if seconds else 0.0,
        requests=requests,
        ok=ok,
        p50_ms=int(data["p50_us"]) / 1000,
        p99_ms=int(data["p99_us"]) / 1000,
        mean_ms=float(data["mean_us"]) / 1000,
        failure="; ".join(problems),
    )


def per_client_rate(rate: float, connections: int) -> int:
    """h2load's ``--rps`` is per client and whole: the per-connection share of ``rate``, at least 1."""
    return max(1, round(rate / connections))


def h2load_argv(url: str, token: str, *, rate: float, connections: int, duration: int, log: Path) -> list[str]:
    """Fixed-rate h2load. ``--rps`` alone starts every client at once and their timers stay in phase (bursts of
    ``connections`` requests each period); ``-r``/``--rate-period`` staggers the connection starts over about one
    period so arrivals spread out. ``-n`` (not ``-D``, which excludes ``-r``) sets the length."""
    per_client = per_client_rate(rate, connections)
    period_ms = 1000 / per_client
    per_ms = max(1, math.ceil(connections / period_ms))
    return [
        "h2load",
        "--h1",
        "-t1",
        f"-c{connections}",
        f"-r{per_ms}",
        "--rate-period=1ms",
        f"--rps={per_client}",
        f"-n{per_client * connections * duration}",
        "-H",
        f"authorization: Bearer {token}",
        f"--log-file={log}",
        url,
    ]


def run_fixed_rate(url: str, token: str, *, rate: float, connections: int, duration: int, log: Path) -> RunResult:
    """h2load at a fixed ``rate`` (HTTP/1.1, ``connections`` clients sharing it) with per-request logging; p50 and
    p99 come from the log (h2load itself prints only mean and sd)."""
    log.unlink(missing_ok=True)
    argv = h2load_argv(url, token, rate=rate, connections=connections, duration=duration, log=log)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)  # noqa: S603
    if proc.returncode != 0 or not log.exists():
        return failed(f"h2load exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return h2load_result(log.read_text(), proc.stdout)


def h2load_result(log_text: str, summary: str) -> RunResult:
    """Parse h2load's ``--log-file`` (start µs, status, elapsed µs per request) and check its summary."""
    starts: list[int] = []
    statuses: list[int] = []
    elapsed_ms: list[float] = []
    for line in log_text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3:
            starts.append(int(fields[0]))
            statuses.append(int(fields[1]))
            elapsed_ms.append(int(fields[2]) / 1000)
    ok = statuses.count(200)
    problems = []
    if len(statuses) < 2:
        problems.append(f"{len(statuses)} request(s) logged")
    if ok != len(statuses):
        problems.append(f"{len(statuses) - ok} of {len(statuses)} responses not 200")
    counts = next((ln for ln in summary.splitlines() if ln.startswith("requests:")), "")
    if " 0 failed" not in counts or " 0 errored" not in counts or " 0 timeout" not in counts:
        problems.append(f"h2load reports {counts.strip() or 'no summary'}")
    if problems:
        return failed("; ".join(problems))
    span_s = (max(starts) - min(starts)) / 1e6
    quantiles = statistics.quantiles(elapsed_ms, n=100, method="inclusive")
    return RunResult(
        rps=len(statuses) / span_s if span_s else 0.0,
        requests=len(statuses),
        ok=ok,
        p50_ms=quantiles[49],
        p99_ms=quantiles[98],
        mean_ms=statistics.fmean(elapsed_ms),
    )
