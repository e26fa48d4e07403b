"""The Grafana dashboard for HAProxy + idgate, built with grafana-foundation-sdk (dashboard as code).

``python -m idgate_devstack.dashboard`` writes ``ops/grafana/idgate-haproxy.json`` (what Grafana imports and the
compose stack provisions); ``--check`` exits 1 when the committed file differs from what this module builds
(tests/ops/test_dashboard.py runs the same comparison). Every query reads metrics a real stack exports:
HAProxy 2.8's exporter (``haproxy_frontend_*``, ``haproxy_backend_*``, ``haproxy_server_*``) and idgate's
``/metrics`` (:mod:`idgate.metrics`); tests/e2e/test_prometheus.py runs each of them against a real Prometheus.
Grafana itself is not run by the tests. The data source is the ``${datasource}`` variable (type prometheus).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash
from grafana_foundation_sdk.models.dashboard import DataSourceRef

UID = "idgate-haproxy"
OUTPUT = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "idgate-haproxy.json"
RATE = "$__rate_interval"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _query(expr: str, legend: str, ref: str) -> prom_b.Dataquery:
    return prom_b.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def _series(title: str, unit: str, *queries: tuple[str, str], description: str = "") -> ts_b.Panel:
    panel = (
        ts_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(8)
        .fill_opacity(10)
        .legend(
            common_b.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
    )
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def _stat(title: str, unit: str, expr: str, legend: str, *, red_below: float | None = None) -> stat_b.Panel:
    steps = [dash.Threshold(value=None, color="green")]
    if red_below is not None:
        steps = [dash.Threshold(value=None, color="red"), dash.Threshold(value=red_below, color="green")]
    return (
        stat_b.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(6)
        .graph_mode(common.BigValueGraphMode.NONE)
        .thresholds(dash_b.ThresholdsConfig().mode(dash.ThresholdsMode.ABSOLUTE).steps(steps))
        .with_target(_query(expr, legend, "A"))
    )


def _ratio(metric: str, selector: str, by: str) -> str:
    """``sum by (by, code) (rate(metric{selector}))`` over ``sum by (by) (rate(metric))``: a share in 0..1."""
    return (
        f"sum by ({by}, code) (rate({metric}{{{selector}}}[{RATE}]))"
        f" / on({by}) group_left() sum by ({by}) (rate({metric}[{RATE}]))"
    )


def build() -> dash.Dashboard:
    """The dashboard model (SDK types)."""
    haproxy: list[ts_b.Panel | stat_b.Panel] = [
        _stat("Servers up", "none", 'sum(haproxy_server_status{state="UP"})', "up", red_below=1),
        _stat(
            "Backends with no server up", "none", 'count(haproxy_backend_status{state="UP"} == 0) or vector(0)', "down"
        ),
        _stat("idgate up (scraped)", "none", 'sum(up{job="idgate"})', "idgate", red_below=1),
        _stat(
            "SPOA agents up (HAProxy's view)",
            "none",
            'sum(haproxy_server_status{proxy="be_idgate_spoa",state="UP"})',
            "agents",
            red_below=1,
        ),
        _series(
            "Request rate by frontend",
            "reqps",
            (f"sum by (proxy) (rate(haproxy_frontend_http_requests_total[{RATE}]))", "{{proxy}}"),
        ),
        _series(
            "4xx / 5xx share of responses by frontend",
            "percentunit",
            (_ratio("haproxy_frontend_http_responses_total", 'code=~"4xx|5xx"', "proxy"), "{{proxy}} {{code}}"),
            description="idgate's denies are answered at the frontend (401/403/400; 503 when idgate is down or late).",
        ),
        _series(
            "4xx / 5xx share of responses by backend",
            "percentunit",
            (_ratio("haproxy_backend_http_responses_total", 'code=~"4xx|5xx"', "proxy"), "{{proxy}} {{code}}"),
        ),
        _series(
            "Response time by backend (average of the last 1024 requests)",
            "s",
            ("max by (proxy) (haproxy_backend_response_time_average_seconds)", "{{proxy}}"),
        ),
        _series(
            "Retries and redispatches by backend",
            "reqps",
            (f"sum by (proxy) (rate(haproxy_backend_retry_warnings_total[{RATE}]))", "{{proxy}} retries"),
            (f"sum by (proxy) (rate(haproxy_backend_redispatch_warnings_total[{RATE}]))", "{{proxy}} redispatches"),
        ),
        _series(
            "Queue by backend",
            "none",
            ("sum by (proxy) (haproxy_backend_current_queue)", "{{proxy}}"),
        ),
    ]
    idgate: list[ts_b.Panel | stat_b.Panel] = [
        _series(
            "Decisions by status",
            "reqps",
            (f"sum by (status) (rate(idgate_decisions_total[{RATE}]))", "{{status}}"),
        ),
        _series(
            "Top deny reasons",
            "reqps",
            (f'topk(10, sum by (reason) (rate(idgate_decisions_total{{status!="200"}}[{RATE}])))', "{{reason}}"),
            description="First reason code of each deny (302 login redirects included: login_required).",
        ),
        _series(
            "Decision latency",
            "s",
            (f"histogram_quantile(0.5, sum by (le) (rate(idgate_decision_seconds_bucket[{RATE}])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(idgate_decision_seconds_bucket[{RATE}])))", "p99"),
        ),
        _series(
            "Cache hit ratio",
            "percentunit",
            (
                f"sum(rate(idgate_token_cache_hits_total[{RATE}])) / (sum(rate(idgate_token_cache_hits_total[{RATE}]))"
                f" + sum(rate(idgate_token_cache_misses_total[{RATE}])))",
                "verified tokens",
            ),
            (
                f"sum(rate(idgate_session_cache_hits_total[{RATE}])) / (sum(rate(idgate_session_cache_hits_total"
                f"[{RATE}])) + sum(rate(idgate_session_cache_misses_total[{RATE}])))",
                "decoded sessions",
            ),
        ),
        _series(
            "JWKS age (newest good fetch)",
            "s",
            ("max by (issuer) (idgate_jwks_age_seconds)", "{{issuer}}"),
            (f"sum by (issuer) (increase(idgate_jwks_fetch_failures_total[{RATE}]))", "{{issuer}} failed fetches"),
        ),
        _series(
            "Logins and refreshes",
            "reqps",
            (f"sum(rate(idgate_logins_started_total[{RATE}]))", "logins started"),
            (f"sum(rate(idgate_logins_completed_total[{RATE}]))", "logins completed"),
            (f"sum by (reason) (rate(idgate_logins_failed_total[{RATE}]))", "login failed: {{reason}}"),
            (f"sum by (result) (rate(idgate_session_refreshes_total[{RATE}]))", "refresh {{result}}"),
        ),
        _series(
            "Sign-outs and back-channel logouts",
            "reqps",
            (f"sum(rate(idgate_sign_outs_total[{RATE}]))", "sign-outs"),
            (f"sum(rate(idgate_backchannel_logouts_total[{RATE}]))", "back-channel logouts"),
        ),
        _series(
            "SPOA agent errors",
            "reqps",
            (f"sum(rate(idgate_spoa_handler_errors_total[{RATE}]))", "handler errors"),
            (f"sum(rate(idgate_spoa_handler_timeouts_total[{RATE}]))", "handler timeouts"),
            (f"sum(rate(idgate_spoa_protocol_errors_total[{RATE}]))", "protocol errors"),
            # a 503 series exists only once idgate answered one: 0 until then
            (f'sum(rate(idgate_decisions_total{{status="503"}}[{RATE}])) or vector(0)', "503 decisions"),
        ),
        _series(
            "Decisions by mode and route",
            "reqps",
            (f"sum by (mode, route) (rate(idgate_decisions_total[{RATE}]))", "{{mode}} {{route}}"),
        ),
    ]
    board = (
        dash_b.Dashboard("idgate and HAProxy")
        .uid(UID)
        .tags(["idgate", "haproxy"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    ids = iter(range(1, 1000))  # stable panel ids, in layout order
    for row, panels in (("HAProxy", haproxy), ("idgate", idgate)):
        board = board.with_row(dash_b.Row(row).id(next(ids)))
        for panel in panels:
            board = board.with_panel(panel.id(next(ids)))
    return board.build()


def render() -> str:
    """The dashboard as Grafana's JSON model (sorted keys, two-space indent, final newline)."""
    return json.dumps(build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idgate_devstack.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed JSON is not what is built")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m idgate_devstack.dashboard", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
