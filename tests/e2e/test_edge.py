"""HAProxy's edge rules with the real idgate, in both modes: one Cookie header holding every cookie, no obs-fold,
one authority. Requests are written byte for byte (tests/support/wire.py): ordinary clients never send these."""

from __future__ import annotations

import json
import time

import pytest
import wire
from stack import Stack, browser_login

pytestmark = pytest.mark.e2e
API = "Accept: application/json"


def session_cookie(stack: Stack, username: str) -> str:
    """A fresh ``__Host-idgate_0=...`` pair for ``username`` from a browser-like login through HAProxy."""
    with stack.client() as client:
        assert browser_login(stack, client, "/app/", username=username).response.status_code == 200
        values = {c.name: c.value for c in client.cookies.jar if c.name.startswith("__Host-idgate_")}
    assert set(values) == {"__Host-idgate_0"}, values
    return f"__Host-idgate_0={values['__Host-idgate_0']}"


def decisions(stack: Stack, path: str, count: int = 1) -> list[dict[str, object]]:
    """idgate's audit lines for ``path``, oldest first, once there are ``count`` of them (or after 3 s)."""
    deadline = time.monotonic() + 3
    while True:
        lines = [json.loads(line) for line in stack.idgate.log_text().splitlines() if '"event": "decision"' in line]
        found = [entry for entry in lines if entry.get("path") == path]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def audit_reasons(stack: Stack, path: str) -> list[object]:
    """The reason codes of idgate's (one expected) decisions on ``path``, oldest first."""
    return [entry["reasons"] for entry in decisions(stack, path)]


def hostport(stack: Stack) -> str:
    return stack.url.removeprefix("https://")


def test_two_users_sessions_on_two_cookie_lines_are_no_session(fresh: Stack) -> None:
    """The SPOE message reads one Cookie line and the Lua action read another: with two users' sessions on two
    lines, each mode let one of them in. Joined, they are one duplicated session cookie: no session, both modes."""
    alice, bob = session_cookie(fresh, "alice"), session_cookie(fresh, "bob")
    fresh.reset_upstreams()
    for index, (first, second) in enumerate([(alice, bob), (bob, alice)]):
        head = (
            f"GET /app/two-{index} HTTP/1.1\r\nHost: {hostport(fresh)}\r\n{API}\r\nCookie: {first}\r\nCookie: {second}"
        )
        answer = wire.http1(fresh.url, fresh.certs.ca, head)
        assert answer.status == 401, (index, answer)
        assert audit_reasons(fresh, f"/app/two-{index}") == [["missing_credentials", "duplicate_cookie"]]
    split = wire.http2(
        fresh.url,
        fresh.certs.ca,
        [*wire.pseudo(fresh.url, "/app/two-h2"), ("accept", "application/json"), ("cookie", alice), ("cookie", bob)],
    )
    assert split.status == 401
    assert audit_reasons(fresh, "/app/two-h2") == [["missing_credentials", "duplicate_cookie"]]
    assert fresh.upstream_hits() == 0


def test_a_session_on_one_cookie_line_and_the_apps_cookie_on_another(fresh: Stack) -> None:
    """Whichever line holds the session, both modes find it; the upstream gets the app's cookie only."""
    alice = session_cookie(fresh, "alice")
    fresh.reset_upstreams()
    for index, lines in enumerate([(alice, "theme=dark"), ("theme=dark", alice)]):
        cookies = "".join(f"\r\nCookie: {line}" for line in lines)
        head = f"GET /app/split-{index} HTTP/1.1\r\nHost: {hostport(fresh)}\r\n{API}{cookies}"
        assert wire.http1(fresh.url, fresh.certs.ca, head).status == 200, index
    records = fresh.upstreams["app"].requests()
    assert [r["path"] for r in records] == ["/app/split-0", "/app/split-1"]
    for record in records:
        assert [v for n, v in record["headers"] if n.lower() == "cookie"] == ["theme=dark"]
        assert [v for n, v in record["headers"] if n.lower() == "x-auth-user"] == ["alice"]


@pytest.mark.parametrize(
    ("name", "fold"), [pytest.param("space", "\r\n x", id="space"), pytest.param("tab", "\r\n\tx", id="tab")]
)
def test_obs_fold_is_400_and_never_reaches_idgate(fresh: Stack, name: str, fold: str) -> None:
    token = fresh.login("alice").access_token
    path = f"/app/fold-{name}"
    head = f"GET {path} HTTP/1.1\r\nHost: {hostport(fresh)}\r\nAuthorization: Bearer {token}\r\nX-Note: a{fold}"
    assert wire.http1(fresh.url, fresh.certs.ca, head).status == 400
    assert fresh.upstream_hits() == 0
    unfolded = head.replace(fold, " x")
    assert wire.http1(fresh.url, fresh.certs.ca, unfolded).status == 200  # the same request without the fold
    assert len(decisions(fresh, path)) == 1  # idgate decided the unfolded request only


def test_http2_host_field_never_overrides_authority(fresh: Stack) -> None:
    """HAProxy 2.8 builds Host from :authority and drops a differing host field: idgate judges, and the upstream
    receives, the authority; the other value reaches neither."""
    token = fresh.login("alice").access_token
    answer = wire.http2(
        fresh.url,
        fresh.certs.ca,
        [*wire.pseudo(fresh.url, "/app/authority"), ("host", "evil.example"), ("authorization", f"Bearer {token}")],
    )
    assert answer.status == 200
    assert [d["host"] for d in decisions(fresh, "/app/authority")] == [hostport(fresh)]
    (record,) = fresh.upstreams["app"].requests()
    assert [v for n, v in record["headers"] if n.lower() == "host"] == [hostport(fresh)]
    assert all("evil.example" not in v for _, v in record["headers"])
