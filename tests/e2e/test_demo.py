"""The README's first command: `idgate demo` serves requests authenticated by real IdP tokens through HAProxy."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", ["spoe", "auth_request"])
def test_demo_check_serves_authenticated_requests_and_stops_cleanly(mode: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "idgate.cli", "demo", "--check", "--mode", mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("  ok  ") == 16 and "BAD" not in run.stdout
    for call in (
        "alice     gRPC Whoami  (TLS) → OK",
        "alice     gRPC Admin   (TLS) → OK",
        "bob       gRPC Admin   (TLS) → PERMISSION_DENIED",
        "anonymous gRPC Whoami  (TLS) → UNAUTHENTICATED",
        "bob       gRPC Ticks   (h2c) → OK",
    ):
        assert f"ok  {call}" in run.stdout
    assert "upstream grpc got /demo.Echo/Admin with {'x-auth-user': 'alice'" in run.stdout
    assert "ok  browser login as alice" in run.stdout  # ok requires authMode jwt: the stub verified the assertion
    assert "'x-webauth-role': 'Admin'" in run.stdout and "'x-webauth-role': 'Viewer'" in run.stdout
    # both Looker paths: the gate by group, and idgate as the embedding application in front of the Looker stub
    assert "ok  alice     GET /looker/" in run.stdout and "ok  bob       GET /looker/   → 403" in run.stdout
    assert "ok  alice     Looker signed embed /embed/dashboards/1 → 200" in run.stdout
    assert "ok  bob       Looker signed embed /embed/dashboards/1 → 403" in run.stdout
    assert "ok  alice     Looker cookieless acquire → 200" in run.stdout
    assert '"permissions": ["access_data", "see_user_dashboards", "see_looks"]' in run.stdout
