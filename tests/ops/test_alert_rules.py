"""ops/prometheus: the rules load (`promtool check rules`), behave as their unit tests say (`promtool test rules`,
synthetic series), and every alert has the shape the end-to-end test relies on (tests/e2e/test_prometheus.py)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from ops_files import RULE_TESTS, RULES, alert_signals, alerts, recordings


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False, cwd=RULES.parent
    )


def test_promtool_checks_the_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts()) + len(recordings())} rules found" in checked.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_is_unit_tested_firing() -> None:
    """Each alert has at least one promtool case where it fires (a rule nobody saw fire may never fire)."""
    cases = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fired = {c["alertname"] for t in cases for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    assert {a["alert"] for a in alerts()} - fired == set()


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alerts_compare_signals_with_numbers_and_say_why(rule: dict[str, object]) -> None:
    assert alert_signals(str(rule["expr"]))
    labels, annotations = rule["labels"], rule["annotations"]
    assert isinstance(labels, dict) and labels["severity"] in ("critical", "warning")
    assert isinstance(annotations, dict) and annotations["summary"]


def test_signal_parser_refuses_other_shapes() -> None:
    assert alert_signals("a:b > 0.5 and on() c:d > 1") == ["a:b", "c:d"]
    assert alert_signals('up{job="x"} == 0') == ['up{job="x"}']
    with pytest.raises(ValueError, match="signal OP number"):
        alert_signals("rate(x[5m]) > rate(y[5m])")
