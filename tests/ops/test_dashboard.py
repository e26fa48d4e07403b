"""ops/grafana: the committed dashboard is exactly what idgate_devstack.dashboard builds with grafana-foundation-sdk,
it survives the SDK's own model (nothing Grafana's schema does not know), and its panels are well formed.
Grafana itself does not run here; tests/e2e/test_prometheus.py runs every query against a real Prometheus."""

from __future__ import annotations

import json
import subprocess
import sys

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from ops_files import DASHBOARD, dashboard, dashboard_queries

from idgate_devstack.dashboard import render


def test_the_committed_json_is_what_the_generator_builds() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == render(), "run: .venv/bin/python -m idgate_devstack.dashboard"


def test_the_generators_check_mode_agrees() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "idgate_devstack.dashboard", "--check"], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr


def test_the_json_round_trips_through_the_sdks_dashboard_model() -> None:
    """Decoding into the SDK's typed model and encoding again loses nothing: every key is one the model knows."""
    board = dashboard()
    decoded = model.Dashboard.from_json(board)
    assert json.loads(json.dumps(decoded, cls=JSONEncoder)) == board
    assert decoded.uid == "idgate-haproxy" and decoded.title
    for panel in decoded.panels or []:
        assert isinstance(panel, model.Panel | model.RowPanel)
        assert panel.grid_pos is not None
        assert all(isinstance(v, int) for v in (panel.grid_pos.h, panel.grid_pos.w, panel.grid_pos.x, panel.grid_pos.y))


def test_a_key_the_model_does_not_know_is_caught() -> None:
    board = dashboard()
    board["panels"][1]["gridPosition"] = {"h": 1}
    assert json.loads(json.dumps(model.Dashboard.from_json(board), cls=JSONEncoder)) != board


def test_panels_are_well_formed() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat") and panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["refId"] and t["expr"] for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    titles = {q.panel for q in dashboard_queries()}
    for needed in ("Request rate by frontend", "Queue by backend", "Top deny reasons", "Decision latency"):
        assert needed in titles
