"""The floor plan the code must keep (README, "Architecture"): layers that only import downwards, no import circles,
and a service package that never imports the dev and test harness."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Each module of the service and its layer; an import may only go to the same or a lower layer.
LAYERS: dict[str, int] = {
    # 0 values and rules without I/O: errors, configuration, the principal, facts and decisions
    **dict.fromkeys(
        [
            "errors",
            "config",
            "config_files",
            "config_checks",
            "config_load",
            "config_warnings",
            "claims",
            "principal",
            "facts",
            "peers",
            "tls",
            "fingerprint",
            "looker",
            "config_looker",
            "presets",
            "config_reload",
        ],
        0,
    ),
    # 1 the core: keys, tokens, sessions, policy, identity, and the one decision function
    **dict.fromkeys(
        [
            "policy",
            "identity",
            "jwk",
            "jwks",
            "token_cache",
            "recent",
            "memo",
            "jws",
            "verifier",
            "assertion",
            "audit",
            "metrics",
            "metrics_workers",
            "store.base",
            "store.memory",
            "store.redis",
            "assertion_ring",
            "assertion_store",
            "sso.cookies",
            "sso.session",
            "sso.redirects",
            "sso.params",
            "sso.oidc",
            "sso.fetch",
            "sso.graph",
            "sso.claim_sources",
            "sso.manager",
            "authn",
            "decision",
            "looker.embed_url",
            "looker.mapping",
            "looker.cookieless",
            "looker.references",
            "cache_entry",
            "reload",
        ],
        1,
    ),
    # 2 adapters: wire formats in and out (SPOP, HTTP)
    **dict.fromkeys(
        [
            "spoe.spop",
            "spoe.listener",
            "spoe.agent",
            "spoe.adapter",
            "sso.chooser",
            "sso.routes",
            "looker.routes",
            "app",
        ],
        2,
    ),
    # the Runtime API client is a wire adapter too (HAProxy's stats socket): the decision cache's purger uses it
    **dict.fromkeys(["runtime_api", "cache_purge"], 2),
    # 3 the composition root, 4 operator tools (explain, status), 5 the command line
    "runtime": 3,
    "supervisor": 3,
    **dict.fromkeys(
        [
            "ops",
            "ops.upstream_headers",
            "ops.explain",
            "ops.status",
            "ops.commands",
            "ops.cache_commands",
            "ops.init",
            "ops.keys",
        ],
        4,
    ),
    "logsink": 5,
    "cli": 5,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "idgate").rglob("*.py")):
        parts = path.relative_to(SRC / "idgate").with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, wherever the import stands (functions, TYPE_CHECKING too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {i.removeprefix("idgate.") for i in _imports(path) if i.removeprefix("idgate.") in modules} - {name}
        for name, path in modules.items()
    }


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(set(_modules()) - set(LAYERS) - {"spoe", "sso", "store"})
    assert unplaced == [], f"give these modules a layer in LAYERS: {unplaced}"


def _upward(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return [
        f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
        for module, targets in sorted(graph.items())
        if module in layers
        for target in sorted(targets)
        if target in layers and layers[target] > layers[module]
    ]


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return circles


def test_imports_only_go_down_the_layers() -> None:
    assert _upward(_graph(), LAYERS) == []


def test_no_import_circles() -> None:
    assert _circles(_graph()) == []


def test_the_checks_see_a_planted_violation() -> None:
    """Guards against checks that cannot fail: the real graph with decision.py importing audit.py and audit.py
    importing decision.py again (the circle this layout removed), and facts.py importing runtime.py."""
    graph = _graph()
    assert "audit" in graph["decision"] and "runtime" in graph["cli"]  # the graph sees real imports
    planted = graph | {"audit": graph["audit"] | {"decision"}, "facts": graph["facts"] | {"runtime"}}
    # the circle is reported from wherever the walk entered it
    assert ["decision", "audit", "decision"] in _circles(planted) or ["audit", "decision", "audit"] in _circles(planted)
    assert "facts (layer 0) imports runtime (layer 3)" in _upward(planted, LAYERS)


@pytest.mark.parametrize("module", ["idgate.cli", "idgate.runtime"])
def test_the_service_never_imports_the_dev_harness(module: str) -> None:
    for path in _modules().values():
        assert not any(i.split(".")[0] == "idgate_devstack" for i in _imports(path)), path
    code = (
        "import importlib, pkgutil, sys, idgate\n"
        f"importlib.import_module({module!r})\n"
        "for info in pkgutil.walk_packages(idgate.__path__, 'idgate.'):\n"
        "    importlib.import_module(info.name)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'idgate_devstack')\n"
        "print(len([m for m in sys.modules if m.startswith('idgate.')]), leaked)\n"
        "sys.exit(1 if leaked else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    count = int(result.stdout.split()[0])
    assert count >= len(LAYERS)  # every module really was imported
