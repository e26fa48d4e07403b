"""``/metrics`` of a multi-worker ``idgate serve``: whichever worker answers reports the sum over all workers.

Two sources, merged at scrape time into one registry (:func:`worker_registry`):

- the hot-path metrics (``prometheus_client.Counter`` / ``Histogram``: ``idgate_decisions_total``,
  ``idgate_decision_seconds``, the SSO event counters) use prometheus-client's documented multiprocess mode: with
  ``PROMETHEUS_MULTIPROC_DIR`` set before the library is imported (the supervisor sets it for every worker), each
  value lives in a memory-mapped file per process, and :class:`prometheus_client.multiprocess.MultiProcessCollector`
  sums them (prometheus-client docs, "Multiprocess Mode (E.g. Gunicorn)"). Exact at every scrape; the counts of a
  worker that died stay in the sum.
- the library's multiprocess mode does not run custom collectors, and idgate's scrape-time collectors read the
  components' own counters (token cache, JWKS, store, SPOA agent, config info). Every worker publishes those
  families (everything its registry yields that the multiprocess files do not hold) to ``w-<pid>.json`` in the same
  directory, every :data:`PUBLISH_INTERVAL_SECONDS` and at each scrape it answers; the answering worker merges its
  live values with the other workers' files: counters are summed, gauges merged per :data:`GAUGE_MERGE` (default
  sum). A dead worker's file is renamed ``d-<pid>.json`` by the supervisor (:func:`retire_worker`): its counters
  stay in the sums (no counter goes backwards), its gauges leave. The supervisor's own counters (worker restarts)
  are published the same way (``s-supervisor.json``).

Other workers' scrape-time values are at most :data:`PUBLISH_INTERVAL_SECONDS` old.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's environment variable naming the multiprocess directory (read when the library is imported)."""
PUBLISH_INTERVAL_SECONDS = 1.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


GAUGE_MERGE: dict[str, Callable[[Sequence[float]], float]] = {
    "idgate_jwks_ready": min,  # ready only when every worker has the keys
    "idgate_store_up": min,
    "idgate_jwks_keys": min,
    "idgate_jwks_degraded": max,
    "idgate_jwks_age_seconds": max,
    "idgate_config_info": max,
    "idgate_token_cache_hit_ratio": _mean,
}
"""How the workers' values of one gauge sample become one value; any other gauge is summed (entries, pending …)."""

_Family = dict[str, Any]  # {"name", "type", "help", "samples": [[sample name, {label: value}, value], ...]}


def _families(metrics: Iterable[Metric]) -> list[_Family]:
    return [
        {
            "name": m.name,
            "type": m.type,
            "help": m.documentation,
            "samples": [[s.name, dict(s.labels), s.value] for s in m.samples],
        }
        for m in metrics
    ]


def write_snapshot(directory: Path, name: str, metrics: Iterable[Metric]) -> None:
    """Write ``metrics`` to ``directory/name`` atomically (a temporary file, then ``os.replace``). Raises OSError."""
    path = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(_families(metrics)), encoding="utf-8")
    os.replace(tmp, path)


def _read(path: Path) -> list[_Family]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            return [f for f in data if isinstance(f, dict)]
    return []


def merge(sources: Iterable[tuple[list[_Family], bool]]) -> list[Metric]:
    """One family per name from ``(families, live)`` pairs: counter (and histogram) samples summed over every
    source, gauge samples merged per :data:`GAUGE_MERGE` over the live sources only."""
    kinds: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for families, live in sources:
        for family in families:
            name, kind = str(family.get("name")), str(family.get("type"))
            if kind == "gauge" and not live:
                continue
            kinds.setdefault(name, (kind, str(family.get("help", ""))))
            samples = values.setdefault(name, {})
            for sample_name, labels, value in family.get("samples", []):
                key = (str(sample_name), tuple(sorted((str(k), str(v)) for k, v in dict(labels).items())))
                samples.setdefault(key, []).append(float(value))
    merged = []
    for name, (kind, help_text) in sorted(kinds.items()):
        metric = Metric(name, help_text, kind)
        rule = GAUGE_MERGE.get(name, sum) if kind == "gauge" else sum
        for (sample_name, labels), found in values[name].items():
            metric.add_sample(sample_name, dict(labels), rule(found))
        merged.append(metric)
    return merged


class _WorkersCollector(Collector):
    def __init__(self, *, own: CollectorRegistry, directory: Path) -> None:
        self._own = own
        self._directory = directory
        self._library = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]
        self._name = f"w-{os.getpid()}.json"

    def own_families(self, library_names: set[str] | None = None) -> list[Metric]:
        if library_names is None:
            library_names = {m.name for m in self._library.collect()}  # type: ignore[no-untyped-call]
        return [m for m in self._own.collect() if m.name not in library_names]

    def publish(self) -> None:
        """Write this worker's scrape-time families to its file (errors ignored: the next publish retries)."""
        with contextlib.suppress(OSError):
            write_snapshot(self._directory, self._name, self.own_families())

    def collect(self) -> Iterable[Metric]:
        library = list(self._library.collect())  # type: ignore[no-untyped-call]
        own = self.own_families({m.name for m in library})
        with contextlib.suppress(OSError):
            write_snapshot(self._directory, self._name, own)
        sources: list[tuple[list[_Family], bool]] = [(_families(own), True)]
        for path in sorted(self._directory.glob("*.json")):
            if path.name == self._name:
                continue
            if path.name.startswith(("w-", "d-", "s-")):
                sources.append((_read(path), not path.name.startswith("d-")))
        yield from library
        yield from merge(sources)


def worker_registry(own: CollectorRegistry, directory: Path) -> tuple[CollectorRegistry, Callable[[], None]]:
    """The registry ``/metrics`` exposes in a worker (the sum over all workers, see the module docstring) and the
    function that publishes this worker's scrape-time values (call it every :data:`PUBLISH_INTERVAL_SECONDS`)."""
    collector = _WorkersCollector(own=own, directory=directory)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry, collector.publish


def retire_worker(directory: Path, pid: int) -> None:
    """After worker ``pid`` exited: keep its published counters (``d-<pid>.json``), drop its gauges and the library's
    live-gauge files (``prometheus_client.multiprocess.mark_process_dead``)."""
    with contextlib.suppress(OSError):
        os.replace(directory / f"w-{pid}.json", directory / f"d-{pid}.json")
    with contextlib.suppress(OSError):
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
