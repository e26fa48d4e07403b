"""Loading the whole configuration: whatever a key holds, the answer is a config or a list of problems."""

from __future__ import annotations

import base64
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idgate.config_files import load_yaml
from idgate.config_load import load_config, parse_config
from idgate.config_warnings import config_warnings
from idgate.errors import ConfigError
from idgate.runtime import preflight
from idgate_devstack.certs import generate_dev_certs
from idgate_devstack.stack_config import write_looker_secrets, write_secrets

REPO = Path(__file__).resolve().parents[2]
WRONG_TYPES: tuple[object, ...] = (None, [], [["x"]], {}, {"a": ["b"]}, 5, -1.5, "x", True)


def demo_config(tmp_path: Path) -> dict[str, Any]:
    """config/demo.yaml with its generated files written to ``tmp_path`` (no CA file: the system store)."""
    (tmp_path / "client_secret").write_text("idgate-test-secret-0123456789abcdef")
    (tmp_path / "session_keys").write_text(base64.b64encode(os.urandom(32)).decode())
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "assertion.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    doc: dict[str, Any] = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    del doc["issuers"][0]["ca_file"]
    doc["issuers"][0]["client_secret_file"] = "client_secret"
    doc["sessions"]["keys_file"] = "session_keys"
    doc["assertion"]["keys_file"] = "assertion.pem"
    looker = doc["upstreams"]["analytics"]["looker"]
    for key in ("embed_secret", "client_secret"):
        (tmp_path / f"looker_{key}").write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
        looker[f"{key}_file"] = f"looker_{key}"
    return doc


def paths(node: object, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


def replaced(doc: dict[str, Any], path: tuple[Any, ...], value: object) -> object:
    if not path:
        return value
    copied = copy.deepcopy(doc)
    parent: Any = copied
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return copied


def test_any_value_of_the_wrong_type_anywhere_is_a_problem_never_a_crash(tmp_path: Path) -> None:
    doc = demo_config(tmp_path)
    assert parse_config(doc, environ={}, base_dir=tmp_path).login is not None
    crashes = []
    refused = 0
    for path in paths(doc):
        for value in WRONG_TYPES:
            try:
                parse_config(replaced(doc, path, value), environ={}, base_dir=tmp_path)
            except ConfigError:
                refused += 1
            except Exception as exc:  # the point: nothing but ConfigError may escape
                crashes.append(f"{'.'.join(map(str, path))} = {value!r}: {type(exc).__name__}: {exc}")
    assert crashes == []
    assert refused > 500  # the mutations really reached the checks


@pytest.mark.parametrize("value", WRONG_TYPES)
def test_wrong_types_where_names_are_looked_up(value: object) -> None:
    """The cross-reference checks look names up in dicts and sets: an unhashable name must not raise TypeError."""
    doc = {
        "issuers": [{"name": value, "issuer": "https://idp.example.com", "audiences": ["a"]}],
        "login": {"issuer": value, "redirect_uris": ["https://a.example/.idgate/callback"]},
        "role_sets": {"r": {"roles": [value]}},
        "upstreams": {"app": {"role_set": value}, "g": {"profile": "grafana", "role_set": "r"}},
        "routes": [
            {"name": value, "path": "/", "upstream": value, "allow": {"roles": [value]}},
            {"name": value, "path": "/", "upstream": "app", "allow": {"roles": [value]}},
        ],
    }
    with pytest.raises(ConfigError):
        parse_config(doc, environ={})


@pytest.mark.parametrize("name", ["config/demo.yaml", "config/idgate.example.yaml", "compose/idgate.yaml"])
def test_shipped_yaml_has_no_duplicate_key(name: str) -> None:
    document, duplicates = load_yaml((REPO / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict) and duplicates == ()


def test_the_demo_config_with_the_files_the_demo_generates_passes_without_warnings(tmp_path: Path) -> None:
    """config/demo.yaml as `idgate demo` runs it: TLS under .run/demo/tls, secrets under .run/demo/secrets."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "demo.yaml").write_text((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    generate_dev_certs(tmp_path / ".run" / "demo" / "tls")
    write_secrets(tmp_path / ".run" / "demo" / "secrets")
    write_looker_secrets(tmp_path / ".run" / "demo" / "secrets")
    config = load_config(tmp_path / "config" / "demo.yaml", environ={})
    assert config_warnings(config) == () and preflight(config) == []


WORKERS_PROBLEM = "server.workers: 2 worker processes need store.kind: redis"


def test_more_than_one_worker_needs_the_shared_store_listed_with_every_other_problem(tmp_path: Path) -> None:
    doc = demo_config(tmp_path)
    doc["server"] = {**doc.get("server", {}), "workers": 2}
    doc["routes"] = []  # a second, unrelated problem: both are listed
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, environ={}, base_dir=tmp_path)
    assert any(p.startswith(WORKERS_PROBLEM) for p in caught.value.problems)
    assert any(p.startswith("routes:") for p in caught.value.problems)
    doc = demo_config(tmp_path) | {"store": {"kind": "redis", "url": "redis://127.0.0.1:6379/0"}}
    doc["server"] = {**doc.get("server", {}), "workers": 2}
    assert parse_config(doc, environ={}, base_dir=tmp_path).server.workers == 2
    doc["server"]["workers"] = 0
    with pytest.raises(ConfigError) as zero:
        parse_config(doc, environ={}, base_dir=tmp_path)
    assert any(p.startswith("server.workers") for p in zero.value.problems)


def test_the_workers_override_of_the_command_line_is_checked_like_the_file(tmp_path: Path) -> None:
    path = tmp_path / "idgate.yaml"
    path.write_text(yaml.safe_dump(demo_config(tmp_path)))
    assert load_config(path).server.workers is None
    assert load_config(path, workers=1).server.workers == 1
    with pytest.raises(ConfigError) as caught:
        load_config(path, workers=2)
    assert [p for p in caught.value.problems if p.startswith(WORKERS_PROBLEM)]
