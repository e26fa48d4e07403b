"""Results of one bench/run: per-variant outcomes, the fixed-rate comparison, the target checks, table and JSON."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ibench.load import RunResult, ms_or_none


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Median and spread over the successful repeats of one variant (latencies: medians of each run's value)."""

    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    others_pct: float
    """Largest share of the machine's CPU used by other processes during any of the runs (%)."""


def summarize(runs: list[RunResult]) -> Summary | None:
    good = [r for r in runs if not r.failure]
    if not good:
        return None
    rps = [r.rps for r in good]
    return Summary(
        rps=statistics.median(rps),
        rps_min=min(rps),
        rps_max=max(rps),
        p50_ms=statistics.median(r.p50_ms for r in good),
        p99_ms=statistics.median(r.p99_ms for r in good),
        mean_ms=statistics.median(r.mean_ms for r in good),
        runs=len(good),
        others_pct=max(r.others_pct + r.steal_pct for r in runs),
    )


@dataclass(kw_only=True)
class Outcome:
    """One variant in this run. ``failure``: it could not be started or the real token was not answered 200 (gRPC:
    a grpcio call with it did not come back OK). ``grpc``: measured in gRPC calls (h2load), not HTTP requests (wrk);
    its ``probes`` are grpc-status codes, not HTTP statuses."""

    key: str
    label: str
    auth: bool
    grpc: bool = False
    url: str = ""
    failure: str = ""
    runs: list[RunResult] = field(default_factory=list)
    probes: dict[str, int] = field(default_factory=dict)
    wrk_script: Path | None = None
    """wrk's request script when it is not the one-token count.lua (the decision cache's mix, ibench/mix.lua)."""

    @property
    def failure_reason(self) -> str:
        """Why this variant counts as FAILED (empty when every run succeeded)."""
        if self.failure:
            return self.failure
        bad = [r.failure for r in self.runs if r.failure]
        if bad:
            return f"{len(bad)} of {len(self.runs)} runs failed: {bad[0]}"
        return "" if self.runs else "not run"

    @property
    def summary(self) -> Summary | None:
        return None if self.failure_reason else summarize(self.runs)

    def to_json(self) -> dict[str, object]:
        s = self.summary
        return {
            "label": self.label,
            "auth": self.auth,
            "grpc": self.grpc,
            "failure": self.failure_reason,
            "rps_median": round(s.rps, 1) if s else None,
            "rps_min": round(s.rps_min, 1) if s else None,
            "rps_max": round(s.rps_max, 1) if s else None,
            "p50_ms": ms_or_none(s.p50_ms) if s else None,
            "p99_ms": ms_or_none(s.p99_ms) if s else None,
            "mean_ms": ms_or_none(s.mean_ms) if s else None,
            "runs": [r.to_json() for r in self.runs],
            "refusals": self.probes,
        }


@dataclass(kw_only=True)
class FixedRate:
    """h2load --rps at ``rate`` req/s against (a) and ``subject`` (and whatever else ``runs`` names); ``basis`` says
    where the rate comes from; the target: ``subject``'s p99 within ``budget_ms`` of (a)'s. ``note`` explains a
    skip."""

    subject: str = "b_warm"
    basis: str = ""
    budget_ms: float = 1.0
    rate: float = 0.0
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def summary(self, key: str) -> Summary | None:
        runs = self.runs.get(key, [])
        return None if not runs or any(r.failure for r in runs) else summarize(runs)

    def failure(self, key: str) -> str:
        bad = [r.failure for r in self.runs.get(key, []) if r.failure]
        return bad[0] if bad else (self.note or "not run")


@dataclass(frozen=True, kw_only=True)
class IdgateStats:
    name: str
    rss_start_kib: int
    rss_end_kib: int
    hit_ratio: float | None
    hits: int
    misses: int


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    passed: bool
    detail: str


def _rps(outcomes: dict[str, Outcome], key: str) -> float | None:
    outcome = outcomes.get(key)
    s = outcome.summary if outcome else None
    return s.rps if s else None


def _missing(outcomes: dict[str, Outcome], *keys: str) -> str:
    reasons = []
    for key in keys:
        outcome = outcomes.get(key)
        if outcome is None:
            reasons.append(f"{key} not selected")
        elif outcome.summary is None:
            reasons.append(f"{outcome.label} FAILED")
    return "not measured: " + ", ".join(reasons)


def ratio_target(outcomes: dict[str, Outcome], name: str, left: str, right: str, factor: float) -> Target:
    """``left`` req/s >= ``factor`` x ``right`` req/s."""
    lhs, rhs = _rps(outcomes, left), _rps(outcomes, right)
    if lhs is None or rhs is None:
        return Target(name=name, passed=False, detail=_missing(outcomes, left, right))
    need = factor * rhs
    detail = f"{lhs:,.0f} vs {factor:g} x {rhs:,.0f} = {need:,.0f} req/s ({lhs / rhs:.2f} x)"
    return Target(name=name, passed=lhs >= need, detail=detail)


def latency_target(fixed: FixedRate) -> Target:
    short = fixed.labels.get(fixed.subject, fixed.subject).split(" ", 1)[0]
    name = f"p99 of {short} at {fixed.basis or 'a fixed rate'} within {fixed.budget_ms:g} ms of (a)'s p99 at that rate"
    a, b = fixed.summary("a"), fixed.summary(fixed.subject)
    if a is None or b is None:
        why = fixed.failure("a") if a is None else fixed.failure(fixed.subject)
        return Target(name=name, passed=False, detail=f"not measured: {why}")
    diff = b.p99_ms - a.p99_ms
    detail = f"at {fixed.rate:,.0f} req/s: {short} p99 {b.p99_ms:.2f} ms - (a) p99 {a.p99_ms:.2f} ms = {diff:+.2f} ms"
    return Target(name=name, passed=diff <= fixed.budget_ms, detail=detail)


def targets(outcomes: dict[str, Outcome], fixed: list[FixedRate]) -> list[Target]:
    return [
        ratio_target(outcomes, "(b) warm >= 0.9 x (f)", "b_warm", "f", 0.9),
        ratio_target(outcomes, "(b) warm >= (e)", "b_warm", "e", 1.0),
        ratio_target(outcomes, "(b) cold >= 0.12 x (a)", "b_cold", "a", 0.12),
        ratio_target(outcomes, "(j) cache >= 0.80 x (a)", "j", "a", 0.80),
        ratio_target(outcomes, "(j) cache >= 1.5 x (d)", "j", "d", 1.5),
        ratio_target(outcomes, "(j-mix) >= 0.60 x (a)", "j_mix", "a", 0.60),
        ratio_target(outcomes, "(k) gRPC cache >= 0.60 x (g)", "k", "g", 0.60),
        *(latency_target(f) for f in fixed),
    ]


# -- rendering -----------------------------------------------------------------------------------------------------

LABEL_WIDTH = 34


def variant_row(outcome: Outcome, base: float | None) -> str:
    """One table row: req/s (or calls/s), spread, latency (HTTP: p50 and p99; gRPC: h2load's mean), ratio, noise."""
    s = outcome.summary
    if s is None:
        return f"{outcome.label:<{LABEL_WIDTH}} FAILED: {outcome.failure_reason}"
    spread = f"{s.rps_min:,.0f}-{s.rps_max:,.0f}"
    ratio = f"{s.rps / base:6.2f}" if base else "     -"
    latency = f"{s.mean_ms:>7.2f}" if outcome.grpc else f"{s.p50_ms:>7.2f}  {s.p99_ms:>7.2f}"
    return f"{outcome.label:<{LABEL_WIDTH}} {s.rps:>8,.0f}  {spread:>15}  {latency}  {ratio}  {s.others_pct:>7.0f}"


def variant_table(outcomes: dict[str, Outcome]) -> list[str]:
    base = _rps(outcomes, "a")
    head = f"{'variant':<{LABEL_WIDTH}} {'req/s':>8}  {'min-max':>15}  {'p50 ms':>7}  {'p99 ms':>7}  vs (a)  noise %"
    rows = [variant_row(o, base) for o in outcomes.values() if not o.grpc]
    return [head, "-" * len(head), *rows] if rows else []


GRPC_RATIOS = {"h_warm": "(h) idgate SPOE warm", "i_warm": "(i) idgate auth_request warm"}
"""The gRPC overhead ratios reported: variant key -> its name in the ratio's label; each over (g)."""


def grpc_overhead(outcomes: dict[str, Outcome]) -> dict[str, float | None]:
    """Variant key -> its median calls/s over (g)'s median calls/s, for each selected one (None: not measured)."""
    base = _rps(outcomes, "g")
    ratios: dict[str, float | None] = {}
    for key in GRPC_RATIOS:
        if key in outcomes:
            rps = _rps(outcomes, key)
            ratios[key] = rps / base if rps is not None and base else None
    return ratios


def grpc_table(outcomes: dict[str, Outcome], title: str) -> list[str]:
    """The gRPC variants' rows, then the gRPC overhead ratios; nothing when none was selected."""
    selected = [o for o in outcomes.values() if o.grpc]
    if not selected:
        return []
    base = _rps(outcomes, "g")
    head = f"{'gRPC variant':<{LABEL_WIDTH}} {'calls/s':>8}  {'min-max':>15}  {'mean ms':>7}  vs (g)  noise %"
    lines = [title, head, "-" * len(head), *(variant_row(o, base) for o in selected)]
    for key, ratio in grpc_overhead(outcomes).items():
        name = f"gRPC overhead ratio {GRPC_RATIOS[key]} / (g) no auth"
        if ratio is None:
            lines.append(f"{name}: {_missing(outcomes, key, 'g')}")
        else:
            lines.append(f"{name}: {ratio:.3f} ({_rps(outcomes, key):,.0f} / {base:,.0f} calls/s, medians)")
    return lines


def fixed_rate_lines(fixed: FixedRate) -> list[str]:
    if not fixed.rate:
        return [f"fixed rate ({fixed.labels.get(fixed.subject, fixed.subject)}): not run ({fixed.note})"]
    lines = [f"fixed rate {fixed.rate:,.0f} req/s ({fixed.basis}), h2load --h1 --rps, median of runs:"]
    for key in fixed.runs:
        label = fixed.labels.get(key, key)
        s = fixed.summary(key)
        if s is None:
            lines.append(f"  {label:<{LABEL_WIDTH - 2}} FAILED: {fixed.failure(key)}")
        else:
            latency = f"p50 {s.p50_ms:.2f} ms  p99 {s.p99_ms:.2f} ms"
            extra = f"achieved {s.rps:,.0f} req/s, noise <= {s.others_pct:.0f} %"
            lines.append(f"  {label:<{LABEL_WIDTH - 2}} {latency}  ({extra})")
    return lines


def idgate_lines(stats: list[IdgateStats]) -> list[str]:
    lines = []
    for s in stats:
        if s.hit_ratio is None:
            cache = "token cache off"
        else:
            cache = f"token-cache hit ratio {s.hit_ratio:.4f} ({s.hits:,} hits, {s.misses:,} misses)"
        lines.append(
            f"idgate {s.name}: RSS {s.rss_end_kib / 1024:.0f} MiB after its runs "
            f"({s.rss_start_kib / 1024:.0f} MiB when ready); {cache}"
        )
    return lines


def target_lines(checks: list[Target]) -> list[str]:
    return [f"{'PASS' if t.passed else 'FAIL'}  {t.name}: {t.detail}" for t in checks]


def render(
    outcomes: dict[str, Outcome],
    fixed: list[FixedRate],
    stats: list[IdgateStats],
    checks: list[Target],
    header: str,
    grpc_title: str,
) -> str:
    legend = (
        "noise %: the most CPU (of all cores) that processes outside this benchmark, plus hypervisor steal, "
        "took during any one of the variant's runs"
    )
    http, grpc = variant_table(outcomes), grpc_table(outcomes, grpc_title)
    tables = [*http, *([""] if http and grpc else []), *grpc]
    lines = [
        header,
        "",
        *tables,
        legend,
        "",
        *(line for f in fixed for line in fixed_rate_lines(f)),
        *idgate_lines(stats),
        "",
    ]
    lines += ["targets:", *target_lines(checks)]
    return "\n".join(lines)


def refusal_lines(outcomes: dict[str, Outcome]) -> list[str]:
    """Which hostile tokens each variant let through (should be none for auth variants): HTTP 200, or for a gRPC
    variant grpc-status 0."""
    lines = []
    for o in outcomes.values():
        if not o.probes:
            continue
        let_through = [name for name, code in o.probes.items() if code == (0 if o.grpc else 200)]
        verdict = "refuses all" if not let_through else "lets through: " + ", ".join(let_through)
        codes = " ".join(f"{name}={code}" for name, code in o.probes.items())
        lines.append(f"{o.label:<{LABEL_WIDTH}} {verdict}  [{codes}]")
    return lines
