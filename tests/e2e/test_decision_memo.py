"""The agent's memo of finished allows (idgate.memo), end to end in both modes: repeat requests with one token get
the same identity, each its own audit line (its own request id); a spoofed identity header never survives; another
path, another user or the same user without the credential is decided afresh."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from stack import Stack, run_stack

pytestmark = pytest.mark.e2e
API = {"accept": "application/json"}


def _identity(record: dict[str, object]) -> dict[str, str]:
    headers = record["headers"]
    assert isinstance(headers, list)
    return {n.lower(): v for n, v in headers if n.lower().startswith("x-auth-")}


@pytest.fixture(scope="module", params=("spoe", "auth_request"))
def fresh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with HAProxy's decision cache off: every repeat must reach idgate (a cache hit is answered by HAProxy
    alone, before the memo), so the memo is what answers it."""
    with run_stack(tmp_path_factory.mktemp(f"memo-{request.param}"), mode=request.param, cache=False) as running:
        yield running


def _memo_hits(stack: Stack) -> float:
    text = httpx.get(f"{stack.idgate.url}/metrics", timeout=10).text
    match = re.search(r"^idgate_decision_memo_hits_total (\S+)$", text, re.MULTILINE)
    assert match is not None, text[-2000:]
    return float(match.group(1))


def test_repeats_get_the_same_identity_and_one_audit_line_each(fresh: Stack) -> None:
    start = len(fresh.idgate.log_text())
    hits = _memo_hits(fresh)
    alice, bob = fresh.login("alice").access_token, fresh.login("bob").access_token
    with fresh.client() as client:
        for _ in range(5):
            spoofed = API | {"authorization": f"Bearer {alice}", "x-auth-user": "mallory"}
            assert client.get(fresh.url + "/app/memo", headers=spoofed).status_code == 200
        assert client.get(fresh.url + "/app/memo", headers=API | {"authorization": f"Bearer {bob}"}).status_code == 200
        assert client.get(fresh.url + "/app/memo", headers=API).status_code == 401  # no credential: no memo
        assert (
            client.get(fresh.url + "/admin/memo", headers=API | {"authorization": f"Bearer {bob}"}).status_code == 403
        )
    records = fresh.upstreams["app"].requests()
    users = [_identity(r).get("x-auth-user") for r in records]
    assert users == ["alice"] * 5 + ["bob"], users
    assert all(_identity(r) == _identity(records[0]) for r in records[:5])
    deadline = time.monotonic() + 3
    decisions: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in fresh.idgate.log_text()[start:].splitlines()]
        decisions = [d for d in lines if d.get("event") == "decision" and str(d.get("path", "")).endswith("/memo")]
        if len(decisions) >= 8:
            break
        time.sleep(0.05)
    assert [(d["status"], d["user"]) for d in decisions] == [(200, "alice")] * 5 + [
        (200, "bob"),
        (401, None),
        (403, "bob"),
    ]
    assert _memo_hits(fresh) - hits == 4  # the four repeats, in both modes
    rids = [d["request_id"] for d in decisions]
    assert all(isinstance(r, str) and r for r in rids) and len(set(rids)) == len(rids)
