"""The issuer's keys under faults and rotations, end to end: real HAProxy (both modes), real ``idgate serve``, the
real test IdP, and a fault proxy (idgate_devstack.faultproxy) between idgate and the IdP's JWKS.

The stack here runs idgate with the shipped JWKS defaults (no test-only cooldowns): what an operator gets.

- an IdP answering ``{"keys": []}``, a wholly unusable set, a 500 or nothing at all keeps the last good keys, is
  counted, and ``/readyz`` stays 200 but says ``degraded``;
- no key at all (cold start, IdP down): 503 + ``Retry-After`` and the reason (gRPC: UNAVAILABLE), never 401;
- a key published and signed with at once is accepted within 5 s while a flood of random kids costs at most one
  fetch per unknown-kid window;
- ``idgate jwks refresh`` withdraws a dropped key at once (cached verifications of its tokens included), and its
  admin endpoint cannot be reached through HAProxy.
"""

from __future__ import annotations

import base64
import json
import random
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from stack import Stack, access_claims, browser_login, run_stack

from idgate.config import JwksSettings
from idgate_devstack.faultproxy import FaultProxy
from idgate_devstack.grpc_client import echo_stub, open_channel

pytestmark = pytest.mark.e2e
MODES = ("spoe", "auth_request")
DEFAULTS = JwksSettings()
WINDOW = DEFAULTS.unknown_kid_cooldown_seconds  # the shipped unknown-kid refetch window (seconds)
AT = {"typ": "at+jwt"}
ROTATIONS = 5  # new keys published (and signed with at once) during the random-kid flood


@pytest.fixture(scope="module", params=MODES)
def keys(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with the shipped JWKS settings and a fault proxy in front of the IdP's JWKS, once per mode."""
    root = tmp_path_factory.mktemp(f"keys-{request.param}")
    with run_stack(root, mode=request.param, jwks={}, fault_proxy=True) as running:
        yield running


@pytest.fixture
def faults(keys: Stack) -> Iterator[FaultProxy]:
    assert keys.faults is not None
    keys.reset_upstreams()
    yield keys.faults
    keys.faults.set_mode("pass")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fresh_token(stack: Stack) -> str:
    """A valid access token signed now by the IdP's current key; unique, so idgate's token cache never has it."""
    return stack.idp.sign(AT, access_claims(stack, jti=secrets.token_hex(8)))


def random_kid_token(stack: Stack, kid: str | None = None) -> str:
    """A token from the IdP's issuer with a kid nobody published (the signature is junk: it never gets that far)."""
    header = {"alg": "RS256", "typ": "at+jwt", "kid": kid or f"forged-{secrets.token_hex(6)}"}
    body = b64(json.dumps(access_claims(stack)).encode())
    return f"{b64(json.dumps(header).encode())}.{body}.{b64(b'junk' * 64)}"


def logout_claims(stack: Stack) -> dict[str, Any]:
    """A back-channel logout token's claims (OIDC Back-Channel Logout §2.4) for alice, from the stack's IdP."""
    now = int(time.time())
    return {
        "iss": stack.idp.issuer,
        "aud": "idgate",
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_hex(8),
        "sub": "alice",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    }


def kid_of(token: str) -> str:
    kid: str = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]
    return kid


def get(client: httpx.Client, stack: Stack, path: str, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return client.get(stack.url + path, headers=headers)


def metric(stack: Stack, name: str) -> float:
    text = httpx.get(stack.idgate.url + "/metrics", timeout=5).text
    match = re.search(rf'^{re.escape(name)}{{issuer="testidp"}} (\S+)$', text, re.MULTILINE)
    assert match is not None, (name, text[-3000:])
    return float(match.group(1))


def readyz(stack: Stack) -> httpx.Response:
    return httpx.get(stack.idgate.url + "/readyz", timeout=5)


def force_fetch(client: httpx.Client, stack: Stack, faults: FaultProxy) -> httpx.Response:
    """Make idgate fetch its keys now: an unknown kid once the unknown-kid window is open (retried until a fetch is
    seen). Returns the answer to the request that caused the fetch."""
    before = faults.fetches
    deadline = time.monotonic() + WINDOW + 5
    while True:
        response = get(client, stack, "/app/force-fetch", random_kid_token(stack))
        if faults.fetches > before or time.monotonic() > deadline:
            assert faults.fetches > before, "idgate never refetched"
            return response
        time.sleep(0.1)


def assert_keys_unavailable_503(response: httpx.Response, reason: str = "keys_unavailable") -> None:
    assert response.status_code == 503, (response.status_code, response.headers, response.text)
    assert re.fullmatch(r"[1-9][0-9]*", response.headers.get("retry-after", "")), response.headers
    assert reason in response.text and "www-authenticate" not in response.headers


# --- 1. an empty, unusable, failing or silent key set keeps the last good keys ----------------------------------


@pytest.mark.parametrize("fault", ["empty", "unusable", "error", "hang"])
def test_a_bad_key_set_answer_keeps_the_last_good_keys_and_degrades_readiness(
    keys: Stack, faults: FaultProxy, fault: str
) -> None:
    with keys.client() as client:
        assert get(client, keys, "/app/before", fresh_token(keys)).status_code == 200
        unusable_before = metric(keys, "idgate_jwks_unusable_sets_total")
        faults.set_mode(fault)  # type: ignore[arg-type]
        refused = force_fetch(client, keys, faults)
        if fault != "hang":  # a hung fetch outlives HAProxy's 500 ms auth budget: HAProxy's own 503 answers
            assert_keys_unavailable_503(refused)
        # a token signed with the same, still published key: verified against the keys kept
        assert get(client, keys, "/app/kept", fresh_token(keys)).status_code == 200
        if fault == "hang":
            faults.set_mode("pass")  # the hung fetch now fails (connection closed without an answer)
            deadline = time.monotonic() + 5
            while metric(keys, "idgate_jwks_degraded") != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        ready = readyz(keys)
        assert ready.status_code == 200 and "degraded: testidp" in ready.text, ready.text
        assert metric(keys, "idgate_jwks_degraded") == 1
        assert metric(keys, "idgate_jwks_keys") >= 1
        expected_unusable = unusable_before + (1 if fault in ("empty", "unusable") else 0)
        assert metric(keys, "idgate_jwks_unusable_sets_total") == expected_unusable
        faults.set_mode("pass")
        force_fetch(client, keys, faults)
        assert readyz(keys).text == "ready\n"
        assert metric(keys, "idgate_jwks_degraded") == 0
        assert get(client, keys, "/app/after", fresh_token(keys)).status_code == 200
    assert [r["path"] for r in keys.upstreams["app"].requests()] == ["/app/before", "/app/kept", "/app/after"]


# --- 2. no usable key at all: a server-side outage, 503 + Retry-After -------------------------------------------


def test_cold_start_with_the_idp_down_is_503_with_retry_after_never_401(keys: Stack, faults: FaultProxy) -> None:
    token = fresh_token(keys)
    faults.set_mode("error")
    keys.idgate.stop()
    keys.idgate.start(wait_for="healthz")
    try:
        assert readyz(keys).status_code == 503
        with keys.client() as client:
            deadline = time.monotonic() + 3  # SPOE: until `option spop-check` has seen the new agent
            while "keys_unavailable" not in (response := get(client, keys, "/app/x", token)).text:
                assert response.status_code == 503 and time.monotonic() < deadline, response.text
                time.sleep(0.1)
        assert_keys_unavailable_503(response)
        with (
            open_channel(keys.url.removeprefix("https://"), ca_file=keys.certs.ca) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            echo_stub(channel).whoami({}, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        error: Any = info.value
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "keys_unavailable")
        pushback = dict(error.trailing_metadata() or ())
        assert re.fullmatch(r"[1-9][0-9]*000", pushback.get("grpc-retry-pushback-ms", "")), pushback
        # a browser sign-in: the IdP is up, but its ID token cannot be checked yet: 503, not "answer refused" (400)
        with keys.client() as browser:
            signin = browser_login(keys, browser, "/app/page")
        assert signin.saw_login_form and signin.hops[-1] == "503 /.idgate/callback", signin.hops
        assert "Sign-in failed at the identity provider" in signin.response.text
        events = [json.loads(line) for line in keys.idgate.log_text().splitlines() if '"login_failed"' in line]
        assert events[-1]["reason"] == "keys_unavailable"
        # the IdP's back-channel logout: "try again later" (it may retry), not "your token is bad" (400)
        logout = keys.idp.sign({"typ": "logout+jwt"}, logout_claims(keys))
        with keys.client() as client:
            deferred = client.post(keys.url + "/.idgate/backchannel-logout", data={"logout_token": logout})
        assert (deferred.status_code, deferred.headers.get("retry-after")) == (503, "5"), deferred.text
        assert keys.upstream_hits() == 0
    finally:
        faults.set_mode("pass")
    deadline = time.monotonic() + 10  # idgate keeps trying in the background (0.25 s doubling up to 5 s)
    while readyz(keys).status_code != 200:
        assert time.monotonic() < deadline, "idgate never got the keys once the IdP was back"
        time.sleep(0.1)
    with keys.client() as client:
        assert get(client, keys, "/app/back", token).status_code == 200


# --- 3. a new kid within 5 s, while a random-kid flood costs at most one fetch per window ------------------------


def test_a_new_kid_is_accepted_within_5s_while_a_random_kid_flood_costs_one_fetch_per_window(
    keys: Stack, faults: FaultProxy
) -> None:
    stop = threading.Event()
    flood: Counter[int] = Counter()
    lock = threading.Lock()

    def attacker() -> None:
        with keys.client() as client:
            while not stop.is_set():
                status = get(client, keys, "/app/flood", random_kid_token(keys)).status_code
                with lock:
                    flood[status] += 1

    threads = [threading.Thread(target=attacker) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    accept_seconds: list[float] = []
    seen: Counter[int] = Counter()
    try:
        time.sleep(1.0)
        with keys.client() as client:
            for _ in range(ROTATIONS):
                rotation = keys.idp.rotate_keys()  # Keycloak-style: published and signing at once
                rotated = time.monotonic()
                while True:
                    token = fresh_token(keys)
                    assert kid_of(token) == rotation.kid
                    status = get(client, keys, "/app/new-kid", token).status_code
                    seen[status] += 1
                    if status == 200:
                        accept_seconds.append(time.monotonic() - rotated)
                        break
                    assert time.monotonic() - rotated < 5, f"new kid refused for 5 s ({seen})"
                    time.sleep(0.05)
                time.sleep(random.uniform(0.1, WINDOW + 0.5))  # the next rotation lands anywhere in a window
            login = keys.login("bob").access_token  # a real login: signed by the newest key
            assert get(client, keys, "/app/login", login).status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    elapsed = time.monotonic() - started
    fetches = faults.fetches_since(started)
    print(
        f"\n[{keys.mode}] new kid accepted after {', '.join(f'{s:.3f}' for s in accept_seconds)} s "
        f"(max {max(accept_seconds):.3f} s); new-kid answers {dict(seen)}; flood {sum(flood.values())} requests "
        f"in {elapsed:.1f} s ({sum(flood.values()) / elapsed:.0f}/s) {dict(flood)}; JWKS fetches {fetches} "
        f"(window {WINDOW} s: at most {int(elapsed / WINDOW) + 1})"
    )
    assert max(accept_seconds) < 5
    assert set(seen) <= {200, 503}  # a valid token is never told to go away (401) while its key is being fetched
    assert flood[200] == 0 and set(flood) <= {401, 503} and sum(flood.values()) > 100
    assert fetches <= int(elapsed / WINDOW) + 1


# --- 4. emergency withdrawal -----------------------------------------------------------------------------------


def test_jwks_refresh_withdraws_a_dropped_key_at_once(keys: Stack, faults: FaultProxy) -> None:
    old = fresh_token(keys)
    with keys.client() as client:
        assert get(client, keys, "/app/old", old).status_code == 200
        assert get(client, keys, "/app/old-cached", old).status_code == 200  # verified once, now cached
        rotation = keys.idp.rotate_keys(drop_old=True)
        assert kid_of(old) not in rotation.published
        assert get(client, keys, "/app/old-not-yet-refetched", old).status_code == 200  # idgate cannot know yet
        command = [sys.executable, "-m", "idgate.cli", "jwks", "refresh", "--url", keys.idgate.url]
        done = subprocess.run([*command, "--issuer", "testidp"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        withdrawn = re.search(r"; withdrawn ([^;]+); ([1-9][0-9]*) cached verification\(s\) dropped$", done.stdout)
        assert withdrawn is not None and kid_of(old) in withdrawn.group(1).split(", "), done.stdout
        refused = get(client, keys, "/app/old-withdrawn", old)
        assert refused.status_code == 401
        assert 'error_description="unknown_kid"' in refused.headers["www-authenticate"]
        assert get(client, keys, "/app/new", fresh_token(keys)).status_code == 200
        unknown = subprocess.run([*command, "--issuer", "nosuch"], capture_output=True, text=True, timeout=30)
        assert unknown.returncode == 1 and "nosuch" in unknown.stderr
    paths = [r["path"] for r in keys.upstreams["app"].requests()]
    assert paths == ["/app/old", "/app/old-cached", "/app/old-not-yet-refetched", "/app/new"]


def test_the_admin_endpoint_answers_only_direct_callers_never_through_haproxy(keys: Stack, faults: FaultProxy) -> None:
    before = faults.fetches
    token = keys.login("alice").access_token  # alice may use /admin: the route's upstream is the app, not idgate
    with keys.client() as client:
        through = client.post(keys.url + "/admin/jwks/refresh", headers={"authorization": f"Bearer {token}"})
        assert through.status_code == 200 and through.json()["upstream"] == "app"
        for path in ("/.idgate/admin/jwks/refresh", "/.idgate/../admin/jwks/refresh", "/.idgate//admin/jwks/refresh"):
            assert client.post(keys.url + path).status_code in (401, 404), path
    proxied = httpx.post(keys.idgate.url + "/admin/jwks/refresh", headers={"x-forwarded-for": "203.0.113.9"})
    assert proxied.status_code == 403
    assert faults.fetches == before  # nothing above made idgate refetch
    direct = httpx.post(keys.idgate.url + "/admin/jwks/refresh", timeout=10)
    assert direct.status_code == 200 and direct.json()["issuers"][0]["issuer"] == "testidp"
    assert faults.fetches == before + 1
