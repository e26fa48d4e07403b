"""idgate.metrics: bounded labels on decisions, SSO event counters, the config info metric, JWKS age, and a
``/metrics`` text that ``promtool check metrics`` finds clean."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from fake_issuer import config, idp

from idgate.facts import Decision
from idgate.fingerprint import policy_hash
from idgate.jwks import JwksCache
from idgate.metrics import REASON_CODES, Metrics, reason_label


def metrics() -> Metrics:
    return Metrics(routes=["app", "pub"], upstreams=["app"], policy="sha256:abc", version="1.2.3")


def decisions(m: Metrics, **labels: str) -> float | None:
    return m.registry.get_sample_value("idgate_decisions_total", labels)


def test_decisions_are_labelled_by_status_first_reason_route_upstream_and_mode() -> None:
    m = metrics()
    allow = Decision(status=200, reasons=("authenticated", "email_dropped_unverified"), route="app", upstream="app")
    m.observe(allow, mode="spoe", seconds=0.001)
    m.observe(allow, mode="spoe", seconds=0.001)
    m.observe(allow, mode="auth_request", seconds=0.001)
    assert decisions(m, status="200", reason="authenticated", route="app", upstream="app", mode="spoe") == 2
    assert decisions(m, status="200", reason="authenticated", route="app", upstream="app", mode="auth_request") == 1
    assert m.registry.get_sample_value("idgate_decision_seconds_count") == 3


def test_label_values_stay_bounded() -> None:
    """A reason outside the vocabulary, a name outside the config and an unknown mode never become label values."""
    m = metrics()
    odd = Decision(status=403, reasons=("x" * 300,), route="not-a-route", upstream="elsewhere")
    m.observe(odd, mode="carrier-pigeon", seconds=0.0)
    m.observe(Decision(status=403, reasons=("no_route",)), mode=None, seconds=0.0)
    m.observe(Decision(status=503, reasons=()), mode="spoe", seconds=0.0)
    assert decisions(m, status="403", reason="other", route="other", upstream="other", mode="none") == 1
    assert decisions(m, status="403", reason="no_route", route="none", upstream="none", mode="none") == 1
    assert decisions(m, status="503", reason="none", route="none", upstream="none", mode="spoe") == 1
    assert reason_label("invalid_signature") == "invalid_signature" and reason_label("Bearer abc") == "other"


def test_every_reason_code_is_short_ascii_snake_case() -> None:
    assert all(code.isascii() and code.replace("_", "").isalpha() and code.islower() for code in REASON_CODES)
    assert "other" not in REASON_CODES and "none" not in REASON_CODES


def test_sso_events_are_counted_by_their_log_names() -> None:
    m = metrics()
    for event, reason in [
        ("login_start", None),
        ("login_start", None),
        ("login", None),
        ("login_failed", "state_mismatch"),
        ("login_refused", "site_not_configured"),
        ("login_failed", "<script>"),
        ("sign_out", None),
        ("sign_out_refused", "csrf"),
        ("backchannel_logout", None),
        ("backchannel_logout_refused", "jti_replayed"),
        ("something_else", "x"),
    ]:
        m.sso_event(event, reason)
    value = m.registry.get_sample_value
    assert value("idgate_logins_started_total") == 2 and value("idgate_logins_completed_total") == 1
    for reason in ("state_mismatch", "site_not_configured", "other"):
        assert value("idgate_logins_failed_total", {"reason": reason}) == 1
    assert value("idgate_sign_outs_total") == 1 and value("idgate_sign_outs_refused_total", {"reason": "csrf"}) == 1
    assert value("idgate_backchannel_logouts_total") == 1
    assert value("idgate_backchannel_logouts_refused_total", {"reason": "jti_replayed"}) == 1


def test_config_info_carries_the_policy_hash_and_version() -> None:
    m = metrics()
    assert m.registry.get_sample_value("idgate_config_info", {"policy": "sha256:abc", "version": "1.2.3"}) == 1


@pytest.mark.anyio
async def test_jwks_age_is_the_time_since_the_newest_good_fetch() -> None:
    now = [1000.0]
    async with httpx.AsyncClient(transport=idp()) as client:
        cache = JwksCache(config=config().issuers[0], client=client, clock=lambda: now[0])
        m = metrics()
        m.watch(tokens=None, caches=[cache])
        assert m.registry.get_sample_value("idgate_jwks_age_seconds", {"issuer": "test"}) is None  # never fetched
        assert await cache.refresh()
        now[0] += 42.5
        assert m.registry.get_sample_value("idgate_jwks_age_seconds", {"issuer": "test"}) == 42.5
        assert m.registry.get_sample_value("idgate_jwks_ready", {"issuer": "test"}) == 1


def test_promtool_finds_the_exposition_clean() -> None:
    """Prometheus' own linter (naming, units, HELP, counters ending in _total) on every family idgate can export."""
    assert shutil.which("promtool"), "promtool is installed by scripts/setup (Debian's prometheus package)"
    m = Metrics(routes=["app"], upstreams=["app"], policy=policy_hash(config()), version="0")
    m.observe(Decision(status=200, reasons=("authenticated",), route="app", upstream="app"), mode="spoe", seconds=0)
    for event in ("login_start", "login", "login_failed", "sign_out", "sign_out_refused"):
        m.sso_event(event, "csrf")
    m.sso_event("backchannel_logout")
    m.sso_event("backchannel_logout_refused", "jti_replayed")
    m.watch_spoa(lambda: {"connections": 1, "handler_errors": 0})
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=m.exposition(), capture_output=True, timeout=60, check=False
    )
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked


class _Refreshes:
    def as_dict(self) -> dict[str, int]:
        return {"ok": 1}


class _Sessions:
    def __init__(self) -> None:
        self.decoded_hits = 0
        self.decoded_misses = 0
        self.refresh_stats = _Refreshes()
        self.group_notes = {"groups_overage_unresolved": 3, "userinfo_unavailable": 1}


def test_session_group_notes_are_counted_by_reason_and_lint_clean() -> None:
    m = metrics()
    m.watch(tokens=None, caches=[], sessions=_Sessions())
    sample = m.registry.get_sample_value
    assert sample("idgate_session_group_notes_total", {"reason": "groups_overage_unresolved"}) == 3
    assert sample("idgate_session_group_notes_total", {"reason": "userinfo_unavailable"}) == 1
    assert shutil.which("promtool")
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=m.exposition(), capture_output=True, timeout=60, check=False
    )
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked
