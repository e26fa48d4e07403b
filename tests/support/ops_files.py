"""The shipped operations files (ops/prometheus, ops/grafana) as tests read them: the rule groups, each alert's
signals, and the dashboard's queries."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "ops" / "prometheus" / "idgate-rules.yml"
RULE_TESTS = REPO / "ops" / "prometheus" / "idgate-rules.test.yml"
DASHBOARD = REPO / "ops" / "grafana" / "idgate-haproxy.json"

_CONDITION = re.compile(r"^\s*(?P<signal>\S.*?)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+(?:e-?[0-9]+)?\s*$")
_GUARD = re.compile(r"\s+and\s+on\s*\([a-z_, ]*\)\s+")
_BY = re.compile(r"^\s*(?:topk\(\s*\d+\s*,\s*)?(?:sum|max|min|avg|count)\s+by\s*\(([a-z_, ]*)\)")


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recordings() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "record" in rule]


def alert_signals(expr: str) -> list[str]:
    """The signals an alert compares with numbers: ``signal OP number`` parts joined by ``and on(...)``.
    Raises ValueError for an expression of another shape."""
    signals = []
    for part in _GUARD.split(expr.strip()):
        match = _CONDITION.match(part)
        if match is None:
            raise ValueError(f"not `signal OP number`: {part!r}")
        signals.append(match.group("signal"))
    return signals


def grouped_by(expr: str) -> frozenset[str]:
    """The labels an aggregation's outer ``by (...)`` keeps (empty when the query does not start with one)."""
    match = _BY.match(expr)
    return frozenset(label.strip() for label in match.group(1).split(",") if label.strip()) if match else frozenset()


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    expr: str


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_queries(board: dict[str, Any] | None = None) -> list[PanelQuery]:
    """Every Prometheus query of every panel (rows' nested panels too)."""
    board = dashboard() if board is None else board
    found = []
    stack = list(board.get("panels", []))
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append(PanelQuery(panel=panel.get("title", ""), expr=target["expr"]))
    return found
