"""``idgate serve --workers 2`` with a shared Redis store behind the shipped HAProxy config, in both modes.

Real parts: HAProxy 2.8 (the shipped config, unchanged: one ``be_idgate`` server, one ``be_idgate_spoa`` server),
Debian's redis-server, the test IdP, ``idgate serve --workers 2`` (a supervisor and two worker processes sharing the
HTTP and SPOA listening sockets). Which worker decided what is read from each worker's own prometheus-client
multiprocess file (``counter_<pid>.db`` in its ``PROMETHEUS_MULTIPROC_DIR``), not from idgate's answers.
Measured figures are printed (run with ``-s``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from stack import Stack, access_claims, browser_login, run_stack

pytestmark = pytest.mark.e2e
API = {"accept": "application/json"}
Counts = collections.Counter[tuple[str, str]]


@pytest.fixture(scope="module", params=("spoe", "auth_request"))
def workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with run_stack(
        tmp_path_factory.mktemp(f"workers-{request.param}"), mode=request.param, workers=2, cache=False
    ) as running:  # cache off: every request must reach a worker (a cache hit is answered by HAProxy alone)
        yield running


def metrics_dir(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(found[0].decode())


def decided_by(stack: Stack, sample: str = "idgate_decisions_total") -> dict[int, Counts]:
    """Worker PID -> (status, reason) -> count of ``sample``, for the live workers, from their own multiprocess
    files (``status`` and ``reason`` empty for a sample without those labels)."""
    found: dict[int, Counts] = {}
    for pid in stack.idgate.worker_pids().values():
        counts: Counts = collections.Counter()
        path = metrics_dir(pid) / f"counter_{pid}.db"
        if path.exists():
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
                _, name, label, _ = json.loads(key)  # prometheus_client.mmap_dict.mmap_key
                if name == sample and value:
                    counts[(label.get("status", ""), label.get("reason", ""))] += int(value)
        found[pid] = counts
    return found


def delta(after: dict[int, Counts], before: dict[int, Counts]) -> dict[int, Counts]:
    return {pid: counts - before.get(pid, collections.Counter()) for pid, counts in after.items()}


def session_cookies(client: httpx.Client) -> dict[str, str]:
    return {c.name: c.value for c in client.cookies.jar if c.name.startswith("__Host-idgate_")}


def sign_out(stack: Stack, client: httpx.Client) -> None:
    page = client.get(stack.url + "/.idgate/sign_out")
    csrf = re.search(r"name='csrf' value='([^']+)'", page.text)
    assert csrf, page.text
    out = client.post(stack.url + "/.idgate/sign_out", data={"csrf": csrf.group(1)}, headers={"origin": stack.url})
    assert out.status_code == 302


def signed_out_cookies(stack: Stack) -> dict[str, str]:
    client = stack.client()
    with contextlib.closing(client):
        assert browser_login(stack, client, "/app/").response.status_code == 200
        cookies = session_cookies(client)
        sign_out(stack, client)
    return cookies


def burst(stack: Stack, headers: dict[str, str], cookies: dict[str, str] | None, n: int, threads: int) -> list[int]:
    """``n`` requests to /app/ through HAProxy from ``threads`` clients at once; their statuses."""

    def one(_: int) -> int:
        with stack.client(cookies=cookies) as client:
            return client.get(stack.url + "/app/", headers=headers).status_code

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def test_both_workers_decide_requests_under_load_through_the_unchanged_haproxy_config(workers: Stack) -> None:
    stack = workers
    token = stack.idp.sign({"typ": "at+jwt"}, access_claims(stack))
    before = decided_by(stack)
    statuses = burst(stack, {"authorization": f"Bearer {token}"}, None, 400, 16)
    after = delta(decided_by(stack), before)
    share = {pid: sum(c.values()) for pid, c in after.items()}
    print(f"\n[{stack.mode}] 400 requests, 16 clients: decisions per worker {sorted(share.values())}")
    assert statuses == [200] * 400
    assert len(share) == 2 and all(n > 0 for n in share.values()), share
    assert sum(share.values()) == 400
    text = stack.idgate_metrics()  # through whichever worker answers: the sum over both
    decisions = sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "idgate_decisions_total" and s.labels["status"] == "200" and s.labels["mode"] == stack.mode
    )
    assert decisions >= 400


def decide(stack: Stack, cookies: dict[str, str]) -> int:
    """idgate's own /auth for a browser request to /app/ with ``cookies``, on a new connection: whichever worker
    accepts it answers (what HAProxy's Lua action sends in auth_request mode)."""
    headers = {"x-idgate-method": "GET", "x-idgate-host": "127.0.0.1", "x-idgate-path": "/app/", **API}
    headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return httpx.get(f"{stack.idgate.url}/auth", headers=headers, timeout=5).status_code


def test_a_sign_out_decided_by_one_worker_is_refused_by_the_other(workers: Stack) -> None:
    stack = workers
    client = stack.client()
    with contextlib.closing(client):
        assert browser_login(stack, client, "/app/").response.status_code == 200
        cookies = session_cookies(client)
        before = decided_by(stack, "idgate_sign_outs_total")
        sign_out(stack, client)  # through HAProxy: one worker takes the sign-out
    signed_out_by = [pid for pid, c in delta(decided_by(stack, "idgate_sign_outs_total"), before).items() if c]
    before = decided_by(stack)
    statuses: list[int] = []
    while len(statuses) < 200 and (len(statuses) < 20 or not all(delta(decided_by(stack), before).values())):
        statuses.append(decide(stack, cookies))
    after = delta(decided_by(stack), before)
    print(
        f"\n[{stack.mode}] sign-out through HAProxy, then {len(statuses)} direct /auth calls: refused per worker "
        f"{sorted(sum(c.values()) for c in after.values())}"
    )
    assert statuses and set(statuses) == {401}
    assert len(after) == 2 and all(after.values()), after  # both workers refused it, the one that signed it out too
    assert all(status == "401" for c in after.values() for status, _ in c)
    assert len(signed_out_by) == 1  # one worker signed it out; the other refuses it all the same (shared store)
    assert burst(stack, API, cookies, 100, 16) == [401] * 100  # and through HAProxy, whichever worker decides


class Load:
    """Requests through HAProxy from a few threads: a valid bearer token and a signed-out session; records
    (time, kind, status), status 0 for a transport error."""

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

    def valid(self, since: float = 0.0, until: float = float("inf")) -> list[int]:
        return [status for t, kind, status in self.results if kind == "valid" and since <= t < until]


def test_a_killed_worker_is_restarted_and_requests_keep_being_answered_with_no_wrong_allow(workers: Stack) -> None:
    stack = workers
    revoked = signed_out_cookies(stack)
    victim = stack.idgate.worker_pids()[0]
    with Load(stack, revoked) as load:
        time.sleep(1.0)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and stack.idgate.worker_pids()[0] == victim:
            time.sleep(0.05)
        replacement = stack.idgate.worker_pids()[0]
        while time.monotonic() < deadline and not [
            e for e in stack.idgate.log_events("worker_ready") if e["pid"] == replacement
        ]:
            time.sleep(0.05)
        ready = time.monotonic()
        time.sleep(2.0)
    during = load.valid(killed, ready)
    after = load.valid(ready)
    print(
        f"\n[{stack.mode}] worker killed under load: {len(load.results)} requests, wrong allows "
        f"{load.wrong_allows()}, valid requests denied while it restarted {sum(s != 200 for s in during)}/"
        f"{len(during)} (restart took {ready - killed:.2f} s), after {sum(s != 200 for s in after)}/{len(after)}"
    )
    assert replacement != victim
    exited = [e for e in stack.idgate.log_events("worker_exited") if e["pid"] == victim]
    assert exited and exited[0]["returncode"] == -signal.SIGKILL
    assert load.wrong_allows() == 0
    assert 0 not in {status for _, _, status in load.results}  # HAProxy answered every request
    assert after and set(after) == {200}
    assert re.search(r"^idgate_worker_restarts_total [1-9]", stack.idgate_metrics(), re.M)
    # the new worker decides too: new connections reach it (HAProxy's SPOE connections opened while it was down
    # stay on the other worker until HAProxy closes them; docs/workers.md)
    before, answers = decided_by(stack), list[int]()
    while len(answers) < 200 and not delta(decided_by(stack), before)[replacement]:
        answers.append(decide(stack, revoked))
    assert set(answers) == {401} and delta(decided_by(stack), before)[replacement]


def test_sigterm_stops_both_workers_gracefully_failing_closed_meanwhile(workers: Stack) -> None:
    stack = workers
    revoked = signed_out_cookies(stack)
    with Load(stack, revoked) as load:
        time.sleep(1.0)
        stopped = time.monotonic()
        stack.idgate.stop()  # SIGTERM to the supervisor
        took = time.monotonic() - stopped
        deadline = time.monotonic() + 8  # a few requests while idgate is down (SPOE: each waits the agent timeout)
        while len(load.valid(stopped + took + 0.1)) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
    down = load.valid(stopped + took + 0.1)
    print(
        f"\n[{stack.mode}] SIGTERM under load: stopped in {took:.2f} s; {len(load.results)} requests, wrong allows "
        f"{load.wrong_allows()}; valid requests while idgate is down: {collections.Counter(down)}"
    )
    try:
        assert stack.idgate.returncode == 0
        assert took < 5.0
        assert stack.idgate.log_events("worker_killed") == []  # every worker ended on its own, in time
        assert stack.idgate.log_events("supervisor_stopped")
        assert load.wrong_allows() == 0
        assert down and 200 not in down  # nothing answers: HAProxy fails closed
        assert 0 not in {status for _, _, status in load.results}
    finally:
        stack.idgate.start()
    token = stack.idp.sign({"typ": "at+jwt"}, access_claims(stack))
    time.sleep(1.5)  # HAProxy's checks see idgate again
    assert burst(stack, {"authorization": f"Bearer {token}"}, None, 20, 4) == [200] * 20


def test_an_emergency_key_refetch_asked_of_one_worker_reaches_every_worker(workers: Stack) -> None:
    stack = workers
    before = len(stack.idgate.log_events("worker_jwks_refresh"))
    answer = httpx.post(f"{stack.idgate.url}/admin/jwks/refresh", timeout=10)  # what `idgate jwks refresh` sends
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 5
    events: list[dict[str, object]] = []
    while time.monotonic() < deadline and len({e["worker"] for e in events}) < 2:
        events = stack.idgate.log_events("worker_jwks_refresh")[before:]
        time.sleep(0.05)
    assert {e["worker"] for e in events} == {0, 1}  # every worker refetched, not only the one asked
    reports = [report for e in events for report in json.loads(json.dumps(e["issuers"]))]
    assert reports and all(report["ok"] for report in reports)
