"""``idgate status``: one screen from HAProxy's Runtime API (``show info``, ``show stat``) and idgate's ``/metrics``.

Per HAProxy: frontends (status, request rate, 4xx, 5xx), backends and their servers (status, weight, session rate,
4xx, 5xx, average response time over the last 1024 requests in ms, retries, queue). idgate: its HTTP replicas (the
servers of ``be_idgate``) and SPOA agents (``be_idgate_spoa``) up or down as HAProxy sees them, and per ``/metrics``
URL whether it answered, the decisions by status and the top deny reasons **of the last minute**
(``idgate_denials_last_minute{reason}``; from an idgate without that gauge, since it started: the totals of
``idgate_decisions_total`` by ``reason`` when it has that label, else by ``status``).
:func:`collect` returns the ``--json`` document; :func:`render` the screen.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from idgate.runtime_api import RuntimeApi, RuntimeApiError

IDGATE_BACKENDS = {"be_idgate": "replicas", "be_idgate_spoa": "agents"}
TOP_REASONS = 5


def _int(row: dict[str, str], key: str) -> int | None:
    value = row.get(key) or ""
    return int(value) if value.lstrip("-").isdigit() else None


def _proxies(rows: list[dict[str, str]]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    frontends: list[dict[str, object]] = []
    backends: dict[str, dict[str, object]] = {}
    servers: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        name, kind = row.get("pxname", ""), row.get("svname", "")
        common = {"status": row.get("status", ""), "hrsp_4xx": _int(row, "hrsp_4xx"), "hrsp_5xx": _int(row, "hrsp_5xx")}
        if kind == "FRONTEND":
            frontends.append(
                {"name": name, **common, "req_rate": _int(row, "req_rate"), "req_tot": _int(row, "req_tot")}
            )
            continue
        detail = {
            **common,
            "rate": _int(row, "rate"),
            "rtime_ms": _int(row, "rtime"),
            "retries": _int(row, "wretr"),
            "queue": _int(row, "qcur"),
            "weight": _int(row, "weight"),
        }
        if kind == "BACKEND":
            backends[name] = {"name": name, **detail, "servers": servers.setdefault(name, [])}
        else:
            servers.setdefault(name, []).append({"name": kind, **detail, "check": row.get("check_status", "")})
    return frontends, list(backends.values())


async def _haproxy(api: RuntimeApi) -> dict[str, object]:
    try:
        info, rows = await api.show_info(), await api.show_stat()
    except RuntimeApiError as exc:
        return {"address": api.address, "error": str(exc), "error_kind": exc.kind}
    frontends, backends = _proxies(rows)
    return {
        "address": api.address,
        "version": info.get("Version"),
        "pid": info.get("Pid"),
        "uptime_seconds": int(info.get("Uptime_sec", "0") or 0),
        "frontends": frontends,
        "backends": backends,
    }


async def _metrics(client: httpx.AsyncClient, url: str) -> dict[str, object]:
    try:
        response = await client.get(url)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return {"url": url, "up": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    by_status: Counter[str] = Counter()
    denies: Counter[str] = Counter()
    recent: Counter[str] | None = None
    for family in text_string_to_metric_families(response.text):
        if family.name == "idgate_denials_last_minute":
            recent = Counter()
            for sample in family.samples:
                recent[sample.labels.get("reason", "?")] += int(sample.value)
            continue
        if family.name != "idgate_decisions":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            status = sample.labels.get("status", "?")
            by_status[status] += int(sample.value)
            if status != "200":
                reason = sample.labels.get("reason")
                denies[reason if reason else f"status {status}"] += int(sample.value)
    window = "since start" if recent is None else "last minute"
    top = denies if recent is None else recent
    return {
        "url": url,
        "up": True,
        "decisions_by_status": dict(sorted(by_status.items())),
        "top_deny_reasons": [[reason, count] for reason, count in top.most_common(TOP_REASONS) if count],
        "deny_reasons_window": window,
    }


async def collect(apis: Sequence[RuntimeApi], metrics_urls: Sequence[str]) -> dict[str, object]:
    """The status document (``--json``): ``haproxy`` (one entry per Runtime API address, ``error`` when it could not
        be read), ``idgate`` (``replicas``, ``agents``: ``{server, status, check}`` per HAProxy row; ``metrics``: one
        entry per URL, each with its ``deny_reasons_window``: ``"last minute"``, or ``"since start"`` for an idgate
    without the last-minute gauge)."""
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        results = await asyncio.gather(*(_haproxy(api) for api in apis), *(_metrics(client, u) for u in metrics_urls))
    haproxies, metrics = list(results[: len(apis)]), list(results[len(apis) :])
    members: dict[str, list[dict[str, object]]] = {"replicas": [], "agents": []}
    for hap in haproxies:
        for backend in hap.get("backends", []) or []:  # type: ignore[attr-defined]
            role = IDGATE_BACKENDS.get(str(backend["name"]))
            for server in backend["servers"] if role else []:
                members[role].append(  # type: ignore[index]
                    {"server": f"{backend['name']}/{server['name']}", "status": server["status"]}
                )
    return {"haproxy": haproxies, "idgate": {**members, "metrics": metrics}}


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def render(doc: dict[str, object]) -> str:
    """The screen for a :func:`collect` document."""
    out: list[str] = []
    for hap in doc["haproxy"]:  # type: ignore[attr-defined]
        if "error" in hap:
            out.append(f"HAProxy {hap['address']}: UNREACHABLE: {hap['error']}")
            continue
        uptime = int(hap["uptime_seconds"])
        up = f"{uptime // 3600}h{uptime // 60 % 60:02d}m"
        out.append(f"HAProxy {hap['address']}  {hap['version']}  pid {hap['pid']}  up {up}")
        out.append(f"  {'FRONTEND':<22}{'STATUS':<10}{'REQ/S':>7}{'REQS':>9}{'4XX':>7}{'5XX':>7}")
        for f in hap["frontends"]:
            out.append(
                f"  {f['name']:<22}{f['status']:<10}{_cell(f['req_rate']):>7}{_cell(f['req_tot']):>9}"
                f"{_cell(f['hrsp_4xx']):>7}{_cell(f['hrsp_5xx']):>7}"
            )
        header = f"{'STATUS':<10}{'WEIGHT':>7}{'SESS/S':>7}{'4XX':>7}{'5XX':>7}{'RTIME':>7}{'RETRY':>7}{'QUEUE':>7}"
        out.append(f"  {'BACKEND / SERVER':<22}{header}")
        for b in hap["backends"]:
            for name, row in [(b["name"], b), *((f"  {s['name']}", s) for s in b["servers"])]:
                out.append(
                    f"  {name:<22}{row['status']:<10}{_cell(row['weight']):>7}{_cell(row['rate']):>7}"
                    f"{_cell(row['hrsp_4xx']):>7}{_cell(row['hrsp_5xx']):>7}{_cell(row['rtime_ms']):>7}"
                    f"{_cell(row['retries']):>7}{_cell(row['queue']):>7}"
                )
    idgate = doc["idgate"]
    out.append("idgate")
    for role in ("replicas", "agents"):
        members = idgate[role] or [{"server": "none in HAProxy's config", "status": ""}]  # type: ignore[index]
        out.append(f"  {role:<9} " + ", ".join(f"{m['server']} {m['status']}".strip() for m in members))
    for m in idgate["metrics"]:  # type: ignore[index]
        if not m["up"]:
            out.append(f"  metrics   {m['url']} DOWN ({m['error']})")
            continue
        statuses = " ".join(f"{k}={v}" for k, v in m["decisions_by_status"].items()) or "none yet"
        out.append(f"  metrics   {m['url']} up; decisions {statuses}")
        reasons = ", ".join(f"{r} {n}" for r, n in m["top_deny_reasons"]) or "none"
        out.append(f"  top deny reasons ({m['deny_reasons_window']}): {reasons}")
    return "\n".join(out) + "\n"
