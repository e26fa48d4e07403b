"""HAProxy's and idgate's logs join by request id, in both modes: HAProxy's ``unique-id`` is logged on its request
line (``rid=``) and sent to idgate (SPOE argument ``request_id`` / ``X-Idgate-Request-Id``), whose audit line carries
it as ``request_id`` next to the user, email and roles. A run of allows, denies and a browser login; then every
idgate decision line of the run has exactly one HAProxy line with its id, and the two agree on the status."""

from __future__ import annotations

import json
import re
import time

import pytest
from stack import Stack, browser_login

pytestmark = pytest.mark.e2e
API = {"accept": "application/json"}
HAPROXY_LINE = re.compile(
    r"^\S+ \[[^\]]+\] fe_https\S* \S+ \S+ (?P<status>\d+) .* idgate=(?P<idgate>\S+) decision=(?P<decision>\S+) "
    r"reason=\S* user=\S* upstream=\S* spoe_err=\S* cache=\S* rid=(?P<rid>\S+)$"
)
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _haproxy_lines(text: str) -> list[dict[str, str]]:
    return [m.groupdict() for line in text.splitlines() if (m := HAPROXY_LINE.match(line))]


def test_every_decision_line_joins_exactly_one_haproxy_line_by_request_id(fresh: Stack) -> None:
    idgate_start, haproxy_start = len(fresh.idgate.log_text()), len(fresh.haproxy.log_text())
    token = fresh.login("bob").access_token
    bearer = API | {"authorization": f"Bearer {token}"}
    with fresh.client() as client:
        assert client.get(fresh.url + "/app/join", headers=bearer).status_code == 200
        assert client.get(fresh.url + "/public/join", headers={"x-request-id": "spoofed-rid"}).status_code == 200
        assert client.get(fresh.url + "/app/join", headers=API).status_code == 401
        assert client.get(fresh.url + "/admin/join", headers=bearer).status_code == 403
        assert client.get(fresh.url + "/nowhere/join", headers=bearer).status_code == 403
        login = browser_login(fresh, client, "/grafana/join", username="alice")
        assert login.response.status_code == 200 and login.saw_login_form
        assert client.get(fresh.url + "/app/join-end", headers=bearer).status_code == 200
    deadline = time.monotonic() + 3  # HAProxy logs a request once its response is sent
    while "/app/join-end" not in fresh.haproxy.log_text()[haproxy_start:] and time.monotonic() < deadline:
        time.sleep(0.05)
    haproxy = _haproxy_lines(fresh.haproxy.log_text()[haproxy_start:])
    entries = [json.loads(line) for line in fresh.idgate.log_text()[idgate_start:].splitlines()]
    decisions = [entry for entry in entries if entry.get("event") == "decision"]
    assert len(decisions) >= 8, decisions  # the 6 requests, the login's first navigation and its return
    by_rid: dict[str, list[dict[str, str]]] = {}
    for line in haproxy:
        by_rid.setdefault(line["rid"], []).append(line)
    for decision in decisions:
        rid = decision["request_id"]
        assert isinstance(rid, str) and rid != "spoofed-rid", decision
        (line,) = by_rid.get(rid, [])  # exactly one HAProxy line
        assert line["idgate"] == str(decision["status"]), (decision, line)
        assert line["decision"] == ("allow" if decision["allow"] else "deny"), (decision, line)
        # what the client got: the upstream's answer on an allow (the echoes answer 200), idgate's status otherwise
        assert line["status"] == "200" if decision["allow"] else line["status"] == str(decision["status"])
    assert len({d["request_id"] for d in decisions}) == len(decisions)
    # the run's users, emails and roles are on the lines; every idgate line has the one timestamp format and a level
    allowed = {(d["path"], d["user"], d["email"]) for d in decisions if d["allow"]}
    assert ("/app/join", "bob", "bob@example.test") in allowed, allowed
    grafana = [d for d in decisions if d["allow"] and d["path"] == "/grafana/join"]
    assert grafana and grafana[0]["user"] == "alice@example.test" and grafana[0]["roles"], grafana
    assert all(RFC3339_UTC.fullmatch(entry["ts"]) and entry["level"] for entry in entries), entries
    assert any(entry.get("event") == "login_start" for entry in entries)
    assert "spoofed-rid" not in fresh.haproxy.log_text()[haproxy_start:]
