"""``/metrics`` of a multi-worker idgate reports the sum over the workers: prometheus-client's multiprocess files for
the hot-path counters and histograms, the workers' published snapshots for the scrape-time families. The library
picks its multiprocess value class when it is imported, so the workers here are real child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from idgate.metrics_workers import MULTIPROC_ENV, merge, retire_worker, write_snapshot

WORKER = """
import json, os, sys
from idgate.facts import Decision
from idgate.metrics import Metrics
from idgate.metrics_workers import worker_registry
from pathlib import Path
decisions, connections, entries = (int(v) for v in sys.argv[1:4])
metrics = Metrics(routes=["app"], upstreams=["app"], policy="p", version="v")
metrics.watch_spoa(lambda: {"connections": connections})
metrics.registry.register(type("C", (), {"collect": lambda self: [
    __import__("prometheus_client.core").core.GaugeMetricFamily("idgate_token_cache_entries", "x", value=entries)]})())
for _ in range(decisions):
    metrics.observe(Decision(status=200, reasons=("authenticated",), route="app", upstream="app"), mode="spoe",
                    seconds=0.001)
metrics.exposed, publish = worker_registry(metrics.registry, Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
publish()
if sys.argv[4] == "scrape":
    sys.stdout.write(metrics.exposition().decode())
print(json.dumps({"pid": os.getpid()}), file=sys.stderr)
"""


def run_worker(
    directory: Path, decisions: int, connections: int, entries: int, scrape: bool = False
) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(decisions), str(connections), str(entries), "scrape" if scrape else "-"],
        env=os.environ | {MULTIPROC_ENV: str(directory)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(json.loads(result.stderr.strip().splitlines()[-1])["pid"]), result.stdout


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


DECISIONS = ("idgate_decisions_total", (("mode", "spoe"), ("reason", "authenticated"), ("route", "app"),
             ("status", "200"), ("upstream", "app")))  # fmt: skip


def test_metrics_through_any_worker_report_the_sum_over_all_workers(tmp_path: Path) -> None:
    first, _ = run_worker(tmp_path, decisions=3, connections=2, entries=10)
    second, _ = run_worker(tmp_path, decisions=5, connections=1, entries=7)
    _, text = run_worker(tmp_path, decisions=1, connections=4, entries=1, scrape=True)
    found = samples(text)
    assert found[DECISIONS] == 9.0  # library multiprocess mode: 3 + 5 + 1
    assert found[("idgate_decision_seconds_count", ())] == 9.0
    assert found[("idgate_spoa_connections_total", ())] == 7.0  # published snapshots: 2 + 1 + 4
    assert found[("idgate_token_cache_entries", ())] == 18.0  # a gauge summed over live workers
    assert found[("idgate_config_info", (("policy", "p"), ("version", "v")))] == 1.0  # max, not a sum
    assert (
        text.count("# TYPE idgate_spoa_connections_total counter")
        + text.count("# TYPE idgate_spoa_connections counter")
        == 1
    )  # one family, not one per worker

    retire_worker(tmp_path, first)  # the supervisor, after the first worker died
    _, text = run_worker(tmp_path, decisions=0, connections=0, entries=0, scrape=True)
    found = samples(text)
    assert found[DECISIONS] == 9.0  # a dead worker's counts stay: no counter goes backwards
    assert found[("idgate_spoa_connections_total", ())] == 7.0
    assert found[("idgate_token_cache_entries", ())] == 8.0  # its gauge left: 7 + 1 (+ 0)
    assert second != first


def test_merge_sums_counters_everywhere_and_merges_gauges_of_live_workers_only() -> None:
    def families(ready: float, age: float, up: float, count: float) -> list[dict[str, object]]:
        metrics = [
            GaugeMetricFamily("idgate_jwks_ready", "r", value=ready),
            GaugeMetricFamily("idgate_jwks_age_seconds", "a", value=age),
            GaugeMetricFamily("idgate_store_up", "u", value=up),
            CounterMetricFamily("idgate_store_errors", "e", value=count),
        ]
        return [
            {"name": m.name, "type": m.type, "help": m.documentation, "samples": [[s.name, s.labels, s.value]
                                                                                 for s in m.samples]}
            for m in metrics
        ]  # fmt: skip

    merged = {
        m.name: m.samples[0].value
        for m in merge([(families(1, 5, 1, 2), True), (families(0, 30, 1, 3), True), (families(0, 99, 0, 4), False)])
    }
    assert merged == {
        "idgate_jwks_ready": 0.0,  # ready only when every live worker is
        "idgate_jwks_age_seconds": 30.0,  # the oldest keys of a live worker
        "idgate_store_up": 1.0,  # the dead worker's 0 is not a live view
        "idgate_store_errors": 9.0,  # counters: every worker, dead ones included
    }


def test_a_snapshot_is_replaced_atomically_and_a_broken_one_is_ignored(tmp_path: Path) -> None:
    write_snapshot(tmp_path, "w-1.json", [CounterMetricFamily("idgate_x", "x", value=1)])
    write_snapshot(tmp_path, "w-1.json", [CounterMetricFamily("idgate_x", "x", value=2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-1.json"]
    (tmp_path / "w-2.json").write_text("{not json")
    _, text = run_worker(tmp_path, decisions=0, connections=0, entries=0, scrape=True)
    assert samples(text)[("idgate_x_total", ())] == 2.0
