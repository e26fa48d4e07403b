"""The dashboard and the alert rules against real data: a real Prometheus (Debian's package) scrapes the real
stack's HAProxy exporter and idgate's ``/metrics`` every second while the test drives allows, denies, a browser
login, a failed login and an agent kill, in both modes. Every dashboard query and every signal an alert compares
returns series of the expected shape, the shipped alerts fire when idgate is killed, and ``promtool check metrics``
finds idgate's real exposition clean. The shipped rules are loaded with every ``for:`` set to 0 s (the
expressions are unchanged: waiting minutes for a pending alert proves nothing more). Grafana does not run here."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ops_files import RULES, alert_signals, alerts, dashboard_queries, grouped_by, recordings
from prometheus_server import Prometheus, run_prometheus
from stack import Stack, browser_login, suite_cache_on

pytestmark = pytest.mark.e2e

RATE_WINDOW = "30s"  # what Grafana's $__rate_interval stands for here (30 scrapes)


def _spoe_only(expr: str) -> bool:
    return "be_idgate_spoa" in expr or expr.startswith("haproxy:spoa_agents_up")


def _rules_without_waiting(tmp: Path) -> Path:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    path = tmp / "rules.yml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _drive_traffic(stack: Stack) -> None:
    """Allows (bearer, public), denies (401, 403, 400, no route), a browser login with a few session requests, and
    a login that fails (a callback without its login state)."""
    token = stack.login("alice").access_token
    bearer = {"authorization": f"Bearer {token}"}
    outsider = {"authorization": f"Bearer {stack.login('mallory').access_token}"}  # in none of the policy's groups
    with stack.client() as client:
        for _ in range(5):
            assert client.get(f"{stack.url}/app/ok", headers=bearer).status_code == 200
            assert client.get(f"{stack.url}/public/x").status_code == 200
            assert client.get(f"{stack.url}/app/anonymous").status_code == 401
            assert client.get(f"{stack.url}/app/x", headers={"authorization": "Bearer not.a.jwt"}).status_code == 401
        assert client.get(f"{stack.url}/looker/x", headers=outsider).status_code == 403
        assert client.get(f"{stack.url}/nowhere", headers=bearer).status_code in (403, 404)
        failed = client.get(f"{stack.url}/.idgate/callback", params={"state": "x", "code": "y"})
        assert failed.status_code == 400
    with stack.client() as browser:
        login = browser_login(stack, browser, "/app/after-login")
        assert login.response.status_code == 200
        for _ in range(5):
            assert browser.get(f"{stack.url}/app/again", headers={"accept": "text/html"}).status_code == 200


def _assert_shape(server: Prometheus, name: str, expr: str, mode: str) -> list[dict[str, Any]]:
    result = server.query(expr)
    if _spoe_only(expr) and mode != "spoe":
        assert result == [], (name, expr)  # no be_idgate_spoa backend in auth_request mode
        return result
    assert result, f"{name}: no data for {expr}"
    for series in result:
        assert grouped_by(expr) <= set(series["metric"]), (name, expr, series["metric"])
    return result


def _firing(server: Prometheus, name: str) -> list[dict[str, Any]]:
    return [a for a in server.alerts() if a["labels"]["alertname"] == name and a["state"] == "firing"]


def _measured(expr: str) -> bool:
    """False for the decision cache's series when this run has the cache off (``IDGATE_TEST_CACHE=off``): without it
    idgate has no Runtime API to read and exports none of them."""
    return suite_cache_on() or not any(name in expr for name in ("idgate_cache_", "idgate:cache_"))


def test_every_panel_and_alert_has_data_and_the_agent_down_alerts_fire(fresh: Stack, tmp_path: Path) -> None:
    idgate_target = fresh.idgate.url.removeprefix("http://")
    targets = {"haproxy": fresh.settings.stats_bind, "idgate": idgate_target}
    with run_prometheus(tmp_path / "prom", targets=targets, rule_files=[_rules_without_waiting(tmp_path)]) as prom:
        prom.wait_for("both targets scraped", lambda: len([s for s in prom.query("up") if s["value"][1] == "1"]) == 2)
        _drive_traffic(fresh)
        time.sleep(3)  # a few scrapes and rule evaluations after the traffic

        # idgate's real exposition passes Prometheus' own linter
        exposition = httpx.get(f"{fresh.idgate.url}/metrics", timeout=10).content
        lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, timeout=60)
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint

        # every dashboard query returns series grouped as the query says
        for query in dashboard_queries():
            if _measured(query.expr):
                _assert_shape(prom, query.panel, query.expr.replace("$__rate_interval", RATE_WINDOW), fresh.mode)
        modes = {s["metric"]["mode"] for s in prom.query("sum by (mode) (idgate_decisions_total)")}
        assert fresh.mode in modes and modes <= {"spoe", "auth_request"}  # the adapter labelled its decisions
        p99 = prom.query(f"histogram_quantile(0.99, sum by (le) (rate(idgate_decision_seconds_bucket[{RATE_WINDOW}])))")
        assert math.isfinite(float(p99[0]["value"][1]))
        reasons = {s["metric"]["reason"] for s in prom.query("sum by (reason) (idgate_decisions_total)")}
        assert {"authenticated", "public_route", "missing_credentials", "invalid_token"} <= reasons
        failed = prom.query('idgate_logins_failed_total{reason="login_state_missing"}')
        assert failed and float(failed[0]["value"][1]) >= 1
        assert float(prom.query("sum(idgate_logins_completed_total)")[0]["value"][1]) >= 1

        # every recorded signal, and every signal an alert compares, returns data
        for rule in recordings():
            if _measured(rule["record"] + rule["expr"]):
                _assert_shape(prom, rule["record"], rule["record"], fresh.mode)
        for rule in alerts():
            for signal in alert_signals(rule["expr"]):
                if _measured(signal):
                    _assert_shape(prom, rule["alert"], signal, fresh.mode)
        assert not _firing(prom, "IdgateDown")

        # the agent dies: Prometheus sees idgate down, and in SPOE mode HAProxy's spop-check does too
        fresh.idgate.kill()
        try:
            down = prom.wait_for("IdgateDown firing", lambda: _firing(prom, "IdgateDown"))
            assert down[0]["labels"]["instance"] == idgate_target and down[0]["labels"]["severity"] == "critical"
            if fresh.mode == "spoe":
                prom.wait_for("IdgateSpoaAgentDown firing", lambda: _firing(prom, "IdgateSpoaAgentDown"))
        finally:
            fresh.idgate.start()
        prom.wait_for("IdgateDown resolved", lambda: not _firing(prom, "IdgateDown"))
    token = fresh.login("alice").access_token
    deadline = time.monotonic() + 5.0
    with fresh.client() as client:
        while client.get(f"{fresh.url}/app/back", headers={"authorization": f"Bearer {token}"}).status_code != 200:
            assert time.monotonic() < deadline, "the stack did not recover after idgate came back"
            time.sleep(0.1)
