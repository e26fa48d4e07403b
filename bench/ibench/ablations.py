"""What the (j) cache-hit path spends its time on: the shipped haproxy.cfg with one part taken out at a time.

Each ablation is a text transform of the shipped config (``haproxy/haproxy.cfg``); ``bench/ablate`` writes the result
to a copy of ``haproxy/`` and runs (a) and (j) against it in one bench run. They are measurements only: several leave
the config unsafe (no header stripping, no normalisation) or blind (no hit counters), and none is shipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_RESTORE = re.compile(
    r'\thttp-request set-var\(txn\.idgate\.(\w+)\) "var\(txn\.cache_hit\),field\(\d+,\|\),ub64dec" if cache_hit'
    r" \{[^}]*\}\n"
)
_KEPT = ("status", "decision", "upstream", "user")
_HIT_LINE = "\thttp-request set-var(txn.cache) str(hit) if cache_hit\n"
_PLAIN_LOG = (
    '\tlog-format "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %{+Q}r"'
)
_HARDENING = (
    "del-header ^",
    "normalize-uri",
    "obs_fold",
    "cookie_joined",
    "fhdr_cnt(cookie) gt 8",
    "hdr_cnt(host) gt 1",
    "grpc_",
    "set_cookie_",
    "http-request return status 40",
    "redirect location",
)


def _expect(count: int, what: str, wanted: int) -> None:
    if count != wanted:
        raise ValueError(f"the shipped config changed: {what} matched {count} times, expected {wanted}")


def shipped(cfg: str) -> str:
    """Nothing taken out: the shipped config."""
    return cfg


def no_restore(cfg: str) -> str:
    """Restore only status, decision, upstream and user from a hit (not the 12 other variables)."""

    def keep(match: re.Match[str]) -> str:
        return match.group(0) if match.group(1) in _KEPT else ""

    out, count = _RESTORE.subn(keep, cfg)
    _expect(count, "the restore rules", 16)
    return out


def dummy_rules(cfg: str) -> str:
    """:func:`no_restore` plus 12 trivial ``set-var(txn.dummyN) str(x) if cache_hit`` rules: what a rule costs."""
    out = no_restore(cfg)
    _expect(out.count(_HIT_LINE), "the hit line", 1)
    dummies = "".join(f"\thttp-request set-var(txn.dummy{n}) str(x) if cache_hit\n" for n in range(12))
    return out.replace(_HIT_LINE, _HIT_LINE + dummies)


def no_hardening(cfg: str) -> str:
    """Without the request hardening and refusal rules: identity-header stripping, normalisation, obs-fold, the
    Cookie join, the gRPC status mapping, the Set-Cookie relays and the 4xx/302 relays."""
    lines = cfg.split("\n")
    kept = [line for line in lines if not any(part in line for part in _HARDENING)]
    _expect(int(len(lines) - len(kept) > 30), "the hardening rules (more than 30 lines)", 1)
    return "\n".join(kept)


def no_counters(cfg: str) -> str:
    """Without the hit/miss counters (``track-sc2`` on one stick-table row, ``sc-inc-gpc0/1``)."""
    lines = cfg.split("\n")
    kept = [line for line in lines if "track-sc2 int(1)" not in line and "sc-inc-gpc" not in line]
    _expect(len(lines) - len(kept), "the counter rules", 3)
    return "\n".join(kept)


def raw_key(cfg: str) -> str:
    """The cache key over the raw parts (no base64 of each part; ambiguous, so never shipped)."""
    shipped = (
        '"%[method,base64]|%[req.fhdr(host),base64]|%[path,base64]|%[req.fhdr_cnt(authorization)]'
        '|%[req.fhdr(authorization),base64]|%[req.fhdr_cnt(cookie)]|%[req.fhdr(cookie),base64]"'
    )
    raw = (
        '"%[method]|%[req.fhdr(host)]|%[path]|%[req.fhdr_cnt(authorization)]|%[req.fhdr(authorization)]'
        '|%[req.fhdr_cnt(cookie)]|%[req.fhdr(cookie)]"'
    )
    _expect(cfg.count(shipped), "the cache key format", 1)
    return cfg.replace(shipped, raw)


def plain_log(cfg: str) -> str:
    """The text log line of bench/haproxy-noauth.cfg instead of the shipped one (no idgate fields, no redaction)."""
    out, count = re.subn(r'\n\tlog-format "%ci:%cp \[%tr\][^\n]*', "\n" + _PLAIN_LOG, cfg)
    _expect(count, "the text log-format", 1)
    return out


ABLATIONS: dict[str, Callable[[str], str]] = {
    "shipped": shipped,
    "no-restore": no_restore,
    "dummy-rules": dummy_rules,
    "no-hardening": no_hardening,
    "no-counters": no_counters,
    "raw-key": raw_key,
    "plain-log": plain_log,
}
"""Name → transform, in the order ``bench/ablate`` runs them by default."""


def run_ablations(names: list[str], *, bench_argv: list[str], say: Callable[[str], None]) -> list[str]:
    """Run (a) and (j) once per ablation in ``names`` (a fresh bench run each, ``bench_argv`` passed on); returns
    the table lines: the (j)/(a) ratio of each, and its change against ``shipped``."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parent.parent
    shipped_dir = bench_dir.parent / "haproxy"
    ratios: dict[str, float | None] = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"idgate-ablate-{name}-") as tmp:
            haproxy_dir = Path(tmp) / "haproxy"
            shutil.copytree(shipped_dir, haproxy_dir)
            config = haproxy_dir / "haproxy.cfg"
            config.write_text(ABLATIONS[name](config.read_text()))
            say(f"ablation {name}: (a) and (j) ...")
            argv = [sys.executable, str(bench_dir / "bench.py"), *bench_argv, "--only", "a,j", "--no-fixed-rate"]
            env = {**os.environ, "IDGATE_HAPROXY_DIR": str(haproxy_dir)}
            subprocess.run(argv, env=env, check=False, stdout=subprocess.DEVNULL)  # noqa: S603 - our own script
            result = json.loads((bench_dir / "results" / "latest.json").read_text())
            ratios[name] = result.get("median_ratio_to_a", {}).get("j")
    base = ratios.get("shipped")
    lines = ["ablation       (j)/(a)  change  what is taken out"]
    for name in names:
        ratio = ratios[name]
        doc = (ABLATIONS[name].__doc__ or "the shipped config").split("\n")[0]
        change = f"{ratio - base:+.2f}" if ratio is not None and base is not None else "   -"
        shown = f"{ratio:.2f}" if ratio is not None else "failed"
        lines.append(f"{name:<14} {shown:>7}  {change:>6}  {doc}")
    return lines
