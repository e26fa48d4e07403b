"""Three ``idgate serve`` replicas behind one HAProxy, sharing a real Redis (store: {kind: redis}), in both modes.

Real parts: HAProxy with the shipped config (replicas 2 and 3 through IDGATE_SERVICE_ADDR_2/3 and
IDGATE_SPOA_ADDR_2/3; auth_request mode through the local /auth listener), Debian's redis-server, the test IdP
(4 s tokens, refreshed 2 s before expiry), idgate. A replica is asked directly through its own ``/auth`` (what
HAProxy's Lua action sends) to know what *that* replica decides; users always go through HAProxy.
Measured figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from stack import Stack, access_claims, browser_login, run_stack

from idgate_devstack.service import IdgateService

pytestmark = pytest.mark.e2e
HTML = {"accept": "text/html", "sec-fetch-mode": "navigate"}
API = {"accept": "application/json"}


@pytest.fixture(scope="module", params=("spoe", "auth_request"))
def replicas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(
        tmp_path_factory.mktemp(f"replicas-{request.param}"),
        mode=request.param,
        replicas=3,
        token_ttl=4,
        refresh_before=2,
    ) as running:
        yield running


def decide(replica: IdgateService, cookies: dict[str, str], path: str = "/app/") -> int:
    """What ``replica`` answers HAProxy for a browser request to ``path`` with ``cookies`` (its /auth)."""
    headers = {"x-idgate-method": "GET", "x-idgate-host": "127.0.0.1", "x-idgate-path": path, **API}
    if cookies:
        headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return httpx.get(f"{replica.url}/auth", headers=headers, timeout=5).status_code


def session_cookies(client: httpx.Client) -> dict[str, str]:
    return {c.name: c.value for c in client.cookies.jar if c.name.startswith("__Host-idgate_")}


def logged_in(stack: Stack) -> tuple[httpx.Client, dict[str, str]]:
    client = stack.client()
    assert browser_login(stack, client, "/app/").response.status_code == 200
    return client, session_cookies(client)


def sign_out(stack: Stack, client: httpx.Client) -> None:
    page = client.get(stack.url + "/.idgate/sign_out")
    csrf = re.search(r"name='csrf' value='([^']+)'", page.text)
    assert csrf, page.text
    out = client.post(stack.url + "/.idgate/sign_out", data={"csrf": csrf.group(1)}, headers={"origin": stack.url})
    assert out.status_code == 302


def wait_ready(replica: IdgateService, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{replica.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{replica.url} not ready")


def test_sign_out_through_haproxy_is_refused_by_every_replica_within_1s(replicas: Stack) -> None:
    stack, trials, rounds = replicas, 20, 0
    propagation: list[float] = []
    for _ in range(trials):
        client, cookies = logged_in(stack)
        with contextlib.closing(client):
            assert [decide(r, cookies) for r in stack.replicas] == [200, 200, 200]
            sign_out(stack, client)  # through HAProxy: whichever replica be_idgate picked
            signed_out = time.monotonic()
            refused = [False] * len(stack.replicas)
            while not all(refused) and time.monotonic() - signed_out < 2:
                rounds += 1
                refused = [refused[i] or decide(r, cookies) == 401 for i, r in enumerate(stack.replicas)]
            propagation.append(time.monotonic() - signed_out)
            assert all(refused)
        with stack.client(cookies=cookies) as replay:
            assert replay.get(stack.url + "/app/", headers=API).status_code == 401
    print(
        f"\n[{stack.mode}] sign-out -> refused by all {len(stack.replicas)} replicas: "
        f"p100 {max(propagation) * 1000:.1f} ms, median {statistics.median(propagation) * 1000:.1f} ms, "
        f"{trials} trials; {rounds} rounds of one /auth call per replica ({rounds - trials} needed a second)"
    )
    assert max(propagation) < 1.0


def test_backchannel_logout_at_one_replica_is_refused_by_every_replica(replicas: Stack) -> None:
    stack = replicas
    client, cookies = logged_in(stack)
    client.close()
    now = int(time.time())
    token = stack.idp.sign(
        {"typ": "logout+jwt"},
        {
            "iss": stack.idp.issuer,
            "aud": "idgate",
            "iat": now,
            "jti": f"jti-{now}-{stack.mode}",
            "sub": "alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        },
    )
    second = stack.replicas[1]
    answer = httpx.post(f"{second.url}/.idgate/backchannel-logout", data={"logout_token": token}, timeout=5)
    assert answer.status_code == 200, answer.text
    assert [decide(r, cookies) for r in stack.replicas] == [401, 401, 401]
    # the same logout token again, at another replica: a replay (the jti cache is shared)
    third = stack.replicas[2]
    replay = httpx.post(f"{third.url}/.idgate/backchannel-logout", data={"logout_token": token}, timeout=5)
    assert replay.status_code == 400


def test_revocations_survive_a_restart_of_every_replica(replicas: Stack) -> None:
    stack = replicas
    client, cookies = logged_in(stack)
    with contextlib.closing(client):
        sign_out(stack, client)
    for replica in stack.replicas:
        replica.stop()
    for replica in stack.replicas:
        replica.start()
    assert [decide(r, cookies) for r in stack.replicas] == [401, 401, 401]
    time.sleep(1.5)  # HAProxy's checks (inter 1 s) see the replicas again
    with stack.client(cookies=cookies) as replay:
        assert replay.get(stack.url + "/app/", headers=API).status_code == 401
    with stack.client() as fresh:  # and a new login works through the restarted replicas
        assert browser_login(stack, fresh, "/app/").response.status_code == 200


def refresh_events(stack: Stack) -> int:
    return sum(r.log_text().count('"session_refreshed"') for r in stack.replicas)


def test_two_replicas_refreshing_one_session_at_once_refresh_it_once(replicas: Stack) -> None:
    stack = replicas
    client, cookies = logged_in(stack)
    client.close()
    time.sleep(2.5)  # the 4 s tokens are now inside idgate's 2 s refresh window
    before = refresh_events(stack)
    answers: list[int] = []
    start = threading.Barrier(2)

    def ask(replica: IdgateService) -> None:
        start.wait()
        answers.append(decide(replica, cookies))

    threads = [threading.Thread(target=ask, args=(r,)) for r in stack.replicas[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200, 200]
    assert refresh_events(stack) - before == 1  # one refresh at the IdP, whichever replica won the lock
    assert decide(stack.replicas[2], cookies) == 200  # a late request with the old cookie: the shared session


class Load:
    """Requests through HAProxy from a few threads: a valid bearer token (must be allowed) and a signed-out
    session (must be refused); records (time, kind, status)."""

    def __init__(self, stack: Stack, revoked: dict[str, str], threads: int = 4) -> None:
        self.stack = stack
        self.revoked = revoked
        self.token = stack.idp.sign({"typ": "at+jwt"}, access_claims(stack))
        self.results: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with self.stack.client() as valid, self.stack.client(cookies=self.revoked) as revoked:
            while not self._stop.is_set():
                for kind, client, headers in (
                    ("valid", valid, {"authorization": f"Bearer {self.token}"}),
                    ("revoked", revoked, API),
                ):
                    try:
                        status = client.get(self.stack.url + "/app/", headers=headers).status_code
                    except httpx.TransportError:
                        status = 0
                    self.results.append((time.monotonic(), kind, status))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wrong_allows(self) -> int:
        return sum(1 for _, kind, status in self.results if kind == "revoked" and status == 200)

    def denied_valid(self, since: float = 0.0) -> int:
        return sum(1 for t, kind, status in self.results if kind == "valid" and status != 200 and t >= since)


def signed_out_cookies(stack: Stack) -> dict[str, str]:
    client, cookies = logged_in(stack)
    with contextlib.closing(client):
        sign_out(stack, client)
    return cookies


def test_killing_a_replica_under_load_allows_nothing_wrong_and_denies_no_valid_user_once_it_is_down(
    replicas: Stack,
) -> None:
    stack = replicas
    victim = stack.replicas[1]
    with Load(stack, signed_out_cookies(stack)) as load:
        time.sleep(1.0)
        killed = time.monotonic()
        victim.kill()
        time.sleep(3.0)
    marked_down = killed + 2.5  # inter 1 s; fall 1 (SPOA agents), fall 2 (li_idgate_auth): down within ~2 s
    total = len(load.results)
    print(
        f"\n[{stack.mode}] replica killed under load: {total} requests, wrong allows {load.wrong_allows()}, "
        f"valid users denied {load.denied_valid()} in all, {load.denied_valid(marked_down)} after it was marked down"
    )
    victim.start()
    wait_ready(victim)
    time.sleep(1.5)
    assert total >= 200
    assert load.wrong_allows() == 0
    assert load.denied_valid(marked_down) == 0


def test_redis_stopped_under_load_keeps_revocations_and_recovers(replicas: Stack) -> None:
    stack = replicas
    assert stack.redis is not None
    revoked = signed_out_cookies(stack)
    time.sleep(0.5)  # every replica's mirror has read the revocation log (every 0.25 s)
    live_client, live = logged_in(stack)
    live_client.close()
    with Load(stack, revoked) as load:
        time.sleep(0.5)
        stack.redis.stop()
        stopped = time.monotonic()
        time.sleep(1.0)
        degraded = [httpx.get(f"{r.url}/readyz", timeout=2) for r in stack.replicas]
        metrics = httpx.get(f"{stack.replicas[0].url}/metrics", timeout=2).text
        during = [decide(r, live) for r in stack.replicas]  # a session nobody revoked keeps working
        stack.redis.start()
        restarted = time.monotonic()
        time.sleep(1.0)
    print(
        f"\n[{stack.mode}] Redis stopped {restarted - stopped:.1f} s under load: {len(load.results)} requests, "
        f"wrong allows {load.wrong_allows()}, valid bearer users denied {load.denied_valid()}; "
        f"/readyz during: {sorted({d.status_code for d in degraded})}"
    )
    assert load.wrong_allows() == 0
    assert load.denied_valid() == 0
    assert all(d.status_code == 200 and "degraded" in d.text for d in degraded), [d.text for d in degraded]
    assert re.search(r"^idgate_store_up 0\.0$", metrics, re.M)
    assert during == [200, 200, 200]
    logs = "".join(r.log_text() for r in stack.replicas)
    assert '"store_down"' in logs and '"store_up"' in logs
    for replica in stack.replicas:
        ready = httpx.get(f"{replica.url}/readyz", timeout=2)
        assert ready.text == "ready\n"
    assert re.search(r"^idgate_store_up 1\.0$", httpx.get(f"{stack.replicas[0].url}/metrics").text, re.M)
    # the revocation made before the outage still holds everywhere (Redis came back empty: the mirrors keep it)
    assert [decide(r, revoked) for r in stack.replicas] == [401, 401, 401]


def test_a_sign_out_during_a_redis_outage_reaches_every_replica_when_redis_returns(replicas: Stack) -> None:
    stack = replicas
    assert stack.redis is not None
    client, cookies = logged_in(stack)
    stack.redis.stop()
    try:
        with contextlib.closing(client):
            sign_out(stack, client)  # one replica queues it
        logs = [json.loads(line) for r in stack.replicas for line in r.log_text().splitlines() if line.startswith("{")]
        assert any(e.get("event") == "store_down" for e in logs)
    finally:
        stack.redis.start()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and [decide(r, cookies) for r in stack.replicas] != [401, 401, 401]:
        time.sleep(0.1)
    assert [decide(r, cookies) for r in stack.replicas] == [401, 401, 401]
