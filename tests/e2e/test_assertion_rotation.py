"""The shared assertion key ring across three replicas (real Redis, real HAProxy, both modes), checked by the
Grafana-contract stub configured like a real Grafana (JWKS fetched through HAProxy from any replica, cached for
``cache_ttl``, no refetch on an unknown kid).

``idgate keys rotate-assertion`` pre-publishes the next key: within one poll every replica publishes it; during the
pre-publication window every replica still signs with the current key (the stub verifies); after
``assertion.rotation.publish_seconds`` every replica signs with the new key, which the stub already holds from its
cache, and assertions minted before the switch still verify. A second rotation during the window is refused.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from stack import ASSERTION_ISSUER, Stack, access_claims, run_stack

from idgate.facts import ANSWER_HEADERS
from idgate_devstack.grafana_stub import GrafanaStub
from idgate_devstack.service import IdgateService

pytestmark = pytest.mark.e2e
PUBLISH_SECONDS = 6.0
POLL_SECONDS = 0.25
GRAFANA_CACHE_TTL = 3.0  # below PUBLISH_SECONDS - POLL_SECONDS, as the docs ask of cache_ttl


@pytest.fixture(scope="module", params=("spoe", "auth_request"))
def replicas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    rotation = {"publish_seconds": PUBLISH_SECONDS, "poll_seconds": POLL_SECONDS}
    with run_stack(
        tmp_path_factory.mktemp(f"ring-{request.param}"),
        mode=request.param,
        replicas=3,
        idgate_extra={"assertion": {"rotation": rotation}},
    ) as running:
        yield running


def jwks_kids(replica: IdgateService) -> list[str]:
    keys = httpx.get(f"{replica.url}/.idgate/jwks.json", timeout=5).json()["keys"]
    return [k["kid"] for k in keys]


def assertion_from(stack: Stack, replica: IdgateService) -> str:
    """A fresh assertion for alice's Grafana request, minted by ``replica`` (its own /auth, as HAProxy asks it)."""
    token = stack.idp.sign({"typ": "at+jwt"}, access_claims(stack, jti=str(time.monotonic_ns()), email_verified=True))
    headers = {
        "x-idgate-method": "GET",
        "x-idgate-host": "127.0.0.1",
        "x-idgate-path": "/grafana/",
        "authorization": f"Bearer {token}",
    }
    answer = httpx.get(f"{replica.url}/auth", headers=headers, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.headers[ANSWER_HEADERS["assertion"]]


def kid(assertion: str) -> str:
    return str(jwt.get_unverified_header(assertion)["kid"])


def grafana_login(grafana: GrafanaStub, assertion: str) -> tuple[int, str]:
    answer = httpx.get(f"http://{grafana.address}/api/user", headers={"x-jwt-assertion": assertion}, timeout=10)
    return answer.status_code, answer.text


def rotate(stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idgate.cli", "keys", "rotate-assertion", "--config", str(stack.replicas[0].config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_grafana_verifies_assertions_from_every_replica_through_a_rotation(replicas: Stack) -> None:
    stack = replicas
    with GrafanaStub(
        "grafana-real",
        jwks_url=f"{stack.url}/.idgate/jwks.json",
        ca_file=str(stack.certs.ca),
        expect_iss=ASSERTION_ISSUER,
        expect_aud="grafana",
        cache_ttl=GRAFANA_CACHE_TTL,
        refetch_on_unknown_kid=False,
    ) as grafana:
        published = [jwks_kids(r) for r in stack.replicas]
        assert all(p == published[0] for p in published) and len(published[0]) == 1, published
        old = published[0][0]
        for replica in stack.replicas:
            assertion = assertion_from(stack, replica)
            assert kid(assertion) == old
            assert grafana_login(grafana, assertion)[0] == 200
        before_switch = assertion_from(stack, stack.replicas[1])

        done = rotate(stack)
        rotated_at = time.monotonic()
        assert done.returncode == 0, done.stderr
        assert "PRIVATE" not in done.stdout + done.stderr
        new = done.stdout.split("published next key ", 1)[1].split()[0]
        # every replica publishes the next key within a poll (plus the call's own time)
        deadline = time.monotonic() + 2.0
        while any(jwks_kids(r) != [old, new] for r in stack.replicas):
            assert time.monotonic() < deadline, [jwks_kids(r) for r in stack.replicas]
            time.sleep(0.05)
        seen = time.monotonic() - rotated_at
        # the pre-publication window: every replica still signs with the old key, Grafana verifies
        for replica in stack.replicas:
            assertion = assertion_from(stack, replica)
            assert kid(assertion) == old
            assert grafana_login(grafana, assertion)[0] == 200
        second = rotate(stack)
        assert second.returncode == 1 and "rotation is under way" in second.stderr
        # after publish_seconds every replica signs with the new key, which Grafana's cache already holds
        time.sleep(max(0.0, PUBLISH_SECONDS + 2 * POLL_SECONDS - (time.monotonic() - rotated_at)))
        for replica in stack.replicas:
            assert jwks_kids(replica) == [new, old]
            assertion = assertion_from(stack, replica)
            assert kid(assertion) == new
            status, body = grafana_login(grafana, assertion)
            assert status == 200, body
        assert grafana_login(grafana, before_switch)[0] == 200  # minted before the switch: still verifies
        denied = [r for r in grafana.requests() if r["status"] != 200]
        assert denied == [], denied
    print(f"\n[{stack.mode}] next key published on all 3 replicas {seen * 1000:.0f} ms after the rotate command")
