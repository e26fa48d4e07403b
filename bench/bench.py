"""idgate's benchmark: every variant in one run, same token, same upstream, same load; one table. See bench/README.md.

Usage: bench/run [--quick] [--duration S] [--connections N] [--threads N] [--streams M] [--repeats R] [--only a,g,...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Protocol

from ibench import checks, rpc
from ibench.ablations import ABLATIONS, run_ablations
from ibench.info import versions
from ibench.load import Load, RunResult, per_client_rate, run_fixed_rate, run_wrk
from ibench.memory import measure_memory
from ibench.procs import CpuMeter, haproxy_frontend_requests, rss_kib
from ibench.purge_scale import measure_purge_scale
from ibench.report import FixedRate, IdgateStats, Outcome, grpc_overhead, refusal_lines, render, targets
from ibench.stack import BENCH_DIR, GRPC_UPSTREAM_FRONTEND, UPSTREAM_FRONTEND, Env, Services, start_env
from ibench.variants import CACHE_VARIANTS, VARIANTS, Variant, read_cache

RESULTS = BENCH_DIR / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--streams", type=int, default=10, help="gRPC: concurrent calls per connection (h2load -m, 10)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds over all variants (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each run (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s per run, 1 round")
    parser.add_argument("--only", default="", help="comma-separated variant keys: " + ",".join(v.key for v in VARIANTS))
    parser.add_argument("--no-fixed-rate", action="store_true", help="skip the h2load fixed-rate latency comparison")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    parser.add_argument(
        "--ablate",
        nargs="?",
        const=",".join(ABLATIONS),
        default="",
        metavar="NAMES",
        help="instead of the variants: (a) and (j) with parts of the shipped config taken out (default: every one: "
        + ",".join(ABLATIONS)
        + ")",
    )
    parser.add_argument(
        "--purge-at",
        type=int,
        default=0,
        metavar="N",
        help="instead of the variants: purge and sweep times with N entries in HAProxy's decision cache",
    )
    parser.add_argument(
        "--memory", type=int, default=0, metavar="N", help="instead of the variants: idgate's RSS with N cached tokens"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeats = 3, 1
    args.ablate = [n for n in args.ablate.split(",") if n]
    if unknown_ablations := set(args.ablate) - set(ABLATIONS):
        parser.error(f"unknown ablation(s) {sorted(unknown_ablations)}; known: {sorted(ABLATIONS)}")
    keys = {v.key for v in VARIANTS}
    args.only = [k for k in args.only.split(",") if k]
    if unknown := set(args.only) - keys:
        parser.error(f"unknown variant(s) {sorted(unknown)}; known: {sorted(keys)}")
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: every child is stopped


# -- start-up ------------------------------------------------------------------------------------------------------


def selected_variants(only: list[str]) -> list[Variant]:
    return [v for v in VARIANTS if not only or v.key in only]


def launch_all(stack: ExitStack, env: Env, services: Services, only: list[str]) -> dict[str, Outcome]:
    """Start every selected variant; one that fails to start or to answer the real token is marked FAILED."""
    selected = selected_variants(only)
    hostile = checks.hostile_tokens(env) if any(v.auth for v in selected) else {}
    outcomes: dict[str, Outcome] = {}
    for variant in selected:
        outcome = Outcome(
            key=variant.key, label=variant.label, auth=variant.auth, grpc=variant.grpc, wrk_script=variant.wrk_script
        )
        outcomes[variant.key] = outcome
        try:
            outcome.url = variant.launch(stack, env, services)
            if variant.grpc:
                outcome.failure = rpc.check_valid(env, outcome.url, auth=variant.auth)
            else:
                outcome.failure = checks.check_valid(env, outcome.url)
            if variant.auth and not outcome.failure:
                probe = rpc.refusals if variant.grpc else checks.refusals
                outcome.probes = probe(env, outcome.url, hostile)
        except Exception as exc:
            outcome.failure = f"start-up failed: {str(exc).strip()[:400]}"
        say(f"{variant.label}: {'FAILED: ' + outcome.failure if outcome.failure else 'up at ' + outcome.url}")
    return outcomes


# -- measuring -----------------------------------------------------------------------------------------------------


def upstream_count(env: Env) -> int:
    return haproxy_frontend_requests(env.upstream_socket, UPSTREAM_FRONTEND)


def grpc_upstream_count(env: Env) -> int:
    return haproxy_frontend_requests(env.upstream_socket, GRPC_UPSTREAM_FRONTEND)


def measure_once(env: Env, outcome: Outcome, load: Load, warmup: int) -> RunResult:
    """Warm up, then one measured wrk run; the upstream must have seen at least every 200 wrk counted."""
    if warmup:
        run_wrk(outcome.url, env.token, load, duration=warmup, script=outcome.wrk_script)
    before = upstream_count(env)
    with CpuMeter() as meter:
        result = run_wrk(outcome.url, env.token, load, script=outcome.wrk_script)
    reached = upstream_count(env) - before
    result = replace(result, others_pct=meter.share.others_pct, steal_pct=meter.share.steal_pct, upstream_hits=reached)
    if not result.failure and reached < result.ok:
        detail = f"the upstream saw {reached:,} requests for {result.ok:,} 200s"
        return replace(result, failure=detail)
    return result


def measure(env: Env, outcomes: dict[str, Outcome], load: Load, args: argparse.Namespace) -> None:
    """``args.repeats`` rounds, each over every variant that is up, in the same order (HTTP ones, then gRPC ones)."""
    grpc_load = rpc.GrpcLoad(connections=args.connections, streams=args.streams, duration=args.duration)
    for round_no in range(1, args.repeats + 1):
        for outcome in outcomes.values():
            if outcome.failure:
                continue
            if outcome.grpc:
                count = functools.partial(grpc_upstream_count, env)
                result = rpc.measure_once(outcome.url, env, grpc_load, count, args.warmup)
                latency, unit = f"mean {result.mean_ms:.2f} ms", "calls/s"
            else:
                result = measure_once(env, outcome, load, args.warmup)
                latency, unit = f"p99 {result.p99_ms:.2f} ms", "req/s"
            outcome.runs.append(result)
            status = f"FAILED: {result.failure}" if result.failure else f"{result.rps:,.0f} {unit}"
            noise = f"others {result.others_pct:.0f} % CPU, steal {result.steal_pct:.0f} %"
            say(f"round {round_no}/{args.repeats} {outcome.label}: {status}, {latency} ({noise})")


FIXED_RATE_PLANS = (
    # (subject, whose peak sets the rate, variants run, p99 budget in ms): the two latency targets
    ("b_warm", "b_warm", ("a", "b_warm", "f"), 1.0),
    ("j", "a", ("a", "j"), 0.5),
)


def fixed_rate(env: Env, outcomes: dict[str, Outcome], load: Load, args: argparse.Namespace) -> list[FixedRate]:
    """h2load at 50 % of a peak, interleaved, ``args.repeats`` times: (a), (b) warm and (f) at half (b) warm's median;
    (a) and (j) at half (a)'s median (:data:`FIXED_RATE_PLANS`). A plan whose variants were not measured is skipped."""
    plans = []
    for subject, peak_key, keys, budget in FIXED_RATE_PLANS:
        labels = {k: outcomes[k].label for k in keys if k in outcomes}
        basis = f"50 % of {labels.get(peak_key, peak_key).split(' ', 1)[0]}'s median"
        plan = FixedRate(subject=subject, basis=basis, budget_ms=budget, labels=labels)
        if args.no_fixed_rate:
            plan.note = "--no-fixed-rate"
        elif any((o := outcomes.get(k)) is None or o.summary is None for k in ("a", subject, peak_key)):
            plan.note = f"needs (a) and {subject} measured successfully"
        else:
            peak = outcomes[peak_key].summary
            assert peak is not None
            plan.rate = per_client_rate(peak.rps / 2, load.connections) * load.connections  # what h2load really sends
            plan.runs = {k: [] for k in keys if (o := outcomes.get(k)) and o.summary}
        plans.append(plan)
    for round_no in range(1, args.repeats + 1):
        for plan in plans:
            for key in plan.runs:
                log = env.root / f"h2load-{plan.subject}-{key}-{round_no}.log"
                with CpuMeter() as meter:
                    result = run_fixed_rate(
                        outcomes[key].url,
                        env.token,
                        rate=plan.rate,
                        connections=load.connections,
                        duration=load.duration,
                        log=log,
                    )
                result = replace(result, others_pct=meter.share.others_pct, steal_pct=meter.share.steal_pct)
                plan.runs[key].append(result)
                status = f"FAILED: {result.failure}" if result.failure else f"p99 {result.p99_ms:.2f} ms"
                say(f"fixed rate {plan.rate:,.0f} req/s round {round_no} {outcomes[key].label}: {status}")
    return plans


def idgate_stats(services: Services) -> list[IdgateStats]:
    stats = []
    for name, handle in services.idgates.items():
        metrics = handle.metrics()
        stats.append(
            IdgateStats(
                name=name,
                rss_start_kib=handle.rss_at_start_kib,
                rss_end_kib=rss_kib(handle.pid),
                hit_ratio=metrics.get("idgate_token_cache_hit_ratio"),
                hits=int(metrics.get("idgate_token_cache_hits_total", 0)),
                misses=int(metrics.get("idgate_token_cache_misses_total", 0)),
            )
        )
    return stats


# -- report --------------------------------------------------------------------------------------------------------


def cache_stats(env: Env, outcomes: dict[str, Outcome]) -> dict[str, dict[str, float]]:
    """Each cache variant's HAProxy counters (hits, misses, hit ratio) and live entries (its Runtime API)."""
    found: dict[str, dict[str, float]] = {}
    for key in CACHE_VARIANTS:
        if key not in outcomes or outcomes[key].failure:
            continue
        try:
            found[key] = read_cache(env, key)
        except OSError as exc:
            say(f"{key}: could not read the cache counters: {exc}")
    return found


def cache_lines(cache: dict[str, dict[str, float]]) -> list[str]:
    return [
        f"{key}: hit ratio {c['hit_ratio']:.1%} ({c['hits']:,.0f} hits, {c['misses']:,.0f} misses), "
        f"{c['entries']:,.0f} entries, HAProxy RSS {c['haproxy_rss_kib'] / 1024:,.1f} MiB"
        for key, c in cache.items()
    ]


def grpc_title(args: argparse.Namespace) -> str:
    return (
        f"gRPC unary calls: h2load -t1 -c{args.connections} -m{args.streams} -n <{args.duration} s at the warm-up's "
        f"rate>, TLS, HTTP/2, POST {rpc.METHOD} (one message each way); every call must reach the upstream"
    )


def header(args: argparse.Namespace, info: dict[str, str]) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, HTTPS keep-alive, HTTP/1.1"
    return (
        f"idgate bench, {when}; {load}; {args.repeats} interleaved round(s), {args.warmup} s warm-up each; "
        f"median (min-max) of the rounds; one RS256 token from a real login\n"
        f"{info['idgate']} | {info['haproxy']} | {info['apache']} | {info['wrk']} | {info['h2load']}\n"
        f"Python {info['python']} | {info['cpu']} | load average at start {info['loadavg']}"
    )


def write_results(args: argparse.Namespace, info: dict[str, str], text: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "latest.json"
    document = {"args": {k: v for k, v in vars(args).items()}, "versions": info, "table": text, **payload}
    path.write_text(json.dumps(document, indent=2) + "\n")
    (RESULTS / "latest.txt").write_text(text + "\n")
    return path


class Measurement(Protocol):
    """What ``--memory`` and ``--purge-at`` print (ibench/memory.py, ibench/purge_scale.py)."""

    @property
    def ok(self) -> bool: ...

    def lines(self) -> list[str]: ...


def run_measurement(root: Path, what: str, measure: Callable[[ExitStack, Env], Measurement]) -> int:
    """Start the shared environment, ``measure`` in it, print; 0 when the measurement says ``ok``."""
    with ExitStack() as stack:
        say(f"starting the IdP and {what} (logs in {root}) ...")
        env = start_env(stack, root, grpc_echo=False)
        result = measure(stack, env)
    print("\n".join(result.lines()), flush=True)
    return 0 if result.ok else 1


def run(args: argparse.Namespace, root: Path) -> int:
    info = versions()  # before starting anything: the load average says whether something else is running
    load = Load(threads=args.threads, connections=args.connections, duration=args.duration)
    with ExitStack() as stack:
        say(f"starting the IdP, the upstream and every variant (logs in {root}) ...")
        env = start_env(stack, root, grpc_echo=any(v.grpc for v in selected_variants(args.only)))
        services = Services(stack, env)
        outcomes = launch_all(stack, env, services, args.only)
        measure(env, outcomes, load, args)
        fixed = fixed_rate(env, outcomes, load, args)
        stats = idgate_stats(services)
        cache = cache_stats(env, outcomes)
    checked = targets(outcomes, fixed)
    text = render(outcomes, fixed, stats, checked, header(args, info), grpc_title(args))
    text += (
        "\n\nhostile tokens (signed with the IdP's real key unless noted), HTTP status per variant "
        "(gRPC variants: grpc-status of a grpcio call, 0 OK, 16 UNAUTHENTICATED, 7 PERMISSION_DENIED):\n"
    )
    text += "\n".join(refusal_lines(outcomes))
    text += "\n\ndecision cache in HAProxy (counters over the whole run, warm-ups included):\n"
    text += "\n".join(f"  {line}" for line in cache_lines(cache)) if cache else "  (no cache variant ran)"
    print(text, flush=True)
    payload: dict[str, object] = {
        "variants": {k: o.to_json() for k, o in outcomes.items()},
        "fixed_rate": [
            {
                "subject": f.subject,
                "basis": f.basis,
                "rate": round(f.rate, 1),
                "note": f.note,
                "runs": {k: [r.to_json() for r in runs] for k, runs in f.runs.items()},
                "p99_ms": {k: (s.p99_ms if (s := f.summary(k)) else None) for k in f.runs},
            }
            for f in fixed
        ],
        "idgate": [s.__dict__ for s in stats],
        "decision_cache": cache,
        "targets": [t.__dict__ for t in checked],
        "median_ratio_to_a": _ratios(outcomes, "a", grpc=False),
        "median_ratio_to_g": _ratios(outcomes, "g", grpc=True),
        "grpc_overhead_ratio": {f"{k} / g": (round(r, 3) if r else None) for k, r in grpc_overhead(outcomes).items()},
    }
    say(f"\nwrote {write_results(args, info, text, payload)}")
    return 0 if all(not o.failure_reason for o in outcomes.values()) else 1


def _ratios(outcomes: dict[str, Outcome], base_key: str, *, grpc: bool) -> dict[str, float | None]:
    """Median req/s (calls/s) over ``base_key``'s, for the HTTP variants or the gRPC ones."""
    base = outcomes.get(base_key)
    base_rps = base.summary.rps if base and base.summary else None
    same = {k: o for k, o in outcomes.items() if o.grpc == grpc}
    return {k: (round(s.rps / base_rps, 3) if base_rps and (s := o.summary) else None) for k, o in same.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ablate:
        passed = ["--duration", str(args.duration), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        print("\n".join(run_ablations(args.ablate, bench_argv=passed, say=say)), flush=True)
        return 0
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    root = Path(tempfile.mkdtemp(prefix="idgate-bench-"))
    try:
        if args.purge_at:
            what = f"the shipped HAProxy, adding {args.purge_at:,} cache entries"
            return run_measurement(root, what, lambda st, env: measure_purge_scale(st, env, entries=args.purge_at))
        if args.memory:
            what = f"idgate, signing {args.memory:,} tokens"
            return run_measurement(root, what, lambda st, env: measure_memory(st, env, tokens=args.memory))
        return run(args, root)
    except KeyboardInterrupt:
        say("interrupted: every process was stopped")
        return 130
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
