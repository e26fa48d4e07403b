"""Differential test of the decision cache in HAProxy (both modes): a generated corpus of requests (credentials x
hosts x paths, encoded and dot paths included, x methods; allows and denies) is sent twice. The first pass is all
misses, so every answer is idgate's own (``DecisionEngine.decide``); the second is answered from the cache wherever
idgate allowed. For every request the second answer equals the first: the status, the refusal's headers, and every
header the upstream received (identity, assertion, Authorization, Cookie) apart from HAProxy's request id."""

from __future__ import annotations

import itertools
import random
import re
import time
from typing import Any

import pytest
from stack import Stack, access_claims, browser_login, suite_cache_on

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not suite_cache_on(), reason="IDGATE_TEST_CACHE=off: this run checks everything else without the cache"
    ),
]
PATHS = (
    "/app/x",
    "/app/./y",
    "/app/%2e%2e/admin/z",
    "//app//w",
    "/app/%61bc",
    "/app/a%2Fb",
    "/grafana/d/1",
    "/looker/q",
    "/admin/a",
    "/public/p",
    "/nowhere",
)
METHODS = ("GET", "POST", "DELETE")
UPSTREAMS = ("app", "grafana", "looker")


def credentials(stack: Stack) -> dict[str, dict[str, str]]:
    """Name → the credential headers of one caller."""
    now = int(time.time())
    alice, bob = stack.login("alice").access_token, stack.login("bob").access_token
    expired = stack.idp.sign({"typ": "at+jwt"}, access_claims(stack, iat=now - 600, exp=now - 300))
    foreign = stack.idp.sign({"typ": "at+jwt"}, access_claims(stack, aud="https://elsewhere.test"))
    with stack.client() as browser:
        assert browser_login(stack, browser, "/app/").response.status_code == 200
        session = "; ".join(f"{c.name}={c.value}" for c in browser.cookies.jar if c.name.startswith("__Host-idgate"))
    return {
        "alice": {"authorization": f"Bearer {alice}"},
        "bob": {"authorization": f"Bearer {bob}"},
        "expired": {"authorization": f"Bearer {expired}"},
        "foreign_audience": {"authorization": f"Bearer {foreign}"},
        "garbage": {"authorization": "Bearer abc.def.ghi"},
        "basic": {"authorization": "Basic YWxpY2U6cHc="},
        "session": {"cookie": f"theme=dark; {session}"},
        "none": {},
    }


def corpus(stack: Stack) -> list[tuple[str, str, str, dict[str, str]]]:
    """(method, host, path, headers) for every combination, shuffled once (fixed seed)."""
    hosts = (f"127.0.0.1:{stack.url.rsplit(':', 1)[1]}", "localhost")
    rows = [
        (method, path, host, {"host": host, "accept": "application/json", **creds})
        for (_, creds), host, path, method in itertools.product(credentials(stack).items(), hosts, PATHS, METHODS)
    ]
    random.Random(12).shuffle(rows)
    return [(m, h, p, hdrs) for m, p, h, hdrs in rows]


def send_pass(stack: Stack, rows: list[tuple[str, str, str, dict[str, str]]], tag: str) -> list[dict[str, Any]]:
    """Send every row once (the query carries ``d=<tag>-<i>``, which no decision depends on); the answers."""
    answers = []
    with stack.client() as client:
        for i, (method, _host, path, headers) in enumerate(rows):
            r = client.request(method, f"{stack.url}{path}?d={tag}-{i}", headers=headers)
            answers.append(
                {
                    "status": r.status_code,
                    "location": r.headers.get("location"),
                    "www_authenticate": r.headers.get("www-authenticate"),
                }
            )
    seen: dict[str, list[list[str]]] = {}
    for name in UPSTREAMS:
        for record in stack.upstreams[name].requests():
            marker = re.search(rf"d={tag}-(\d+)", record["query"])
            if marker:
                headers = [[n.lower(), v] for n, v in record["headers"] if n.lower() != "x-request-id"]
                seen[marker.group(1)] = [[name, record["method"], record["path"]], *sorted(headers)]
    for i, answer in enumerate(answers):
        answer["upstream_saw"] = seen.get(str(i))
    return answers


def outcomes(stack: Stack, tag: str) -> dict[int, str]:
    found = re.findall(rf"\?d={tag}-(\d+) .* cache=(\S+)", stack.haproxy.log_text())
    return {int(i): outcome for i, outcome in found}


def test_answers_from_the_cache_equal_idgates_over_a_generated_corpus(fresh: Stack) -> None:
    deadline = time.monotonic() + 10
    while not re.search(r"^idgate_cache_socket_up\{[^}]*\} 1\.0$", fresh.idgate_metrics(), re.M):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    rows = corpus(fresh)
    assert len(rows) >= 500
    cold = send_pass(fresh, rows, "cold")
    warm = send_pass(fresh, rows, "warm")
    time.sleep(0.5)  # the last log lines
    cold_cache, warm_cache = outcomes(fresh, "cold"), outcomes(fresh, "warm")
    assert set(cold_cache.values()) == {"miss"} and len(cold_cache) == len(rows)
    differences = [
        (rows[i][0], rows[i][2], rows[i][3].get("authorization", rows[i][3].get("cookie", ""))[:16], c, w)
        for i, (c, w) in enumerate(zip(cold, warm, strict=True))
        if c != w
    ]
    assert differences == [], differences[:5]
    allowed = [i for i, a in enumerate(cold) if a["status"] == 200 and not rows[i][2].startswith("/public/")]
    hits = [i for i, outcome in warm_cache.items() if outcome == "hit"]
    statuses = {a["status"] for a in cold}
    assert {200, 400, 401, 403} <= statuses, statuses  # allows and every kind of refusal are in the corpus
    assert all(cold[i]["status"] == 200 for i in hits)  # a hit is only ever an allow
    assert not [i for i in hits if rows[i][2].startswith("/public/")]  # a public route is never kept
    assert len(hits) == len(allowed) > 100, (len(hits), len(allowed))
    print(
        f"\ndifferential ({fresh.mode}): {len(rows)} requests, {len(allowed)} allows, {len(hits)} warm hits, "
        f"statuses {sorted(statuses)}"
    )
