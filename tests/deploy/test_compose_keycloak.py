"""Static checks of the Keycloak variant of the Compose stack: compose/keycloak.yml (an override file),
compose/keycloak/realm-idgate.json (the realm export) and compose/idgate-keycloak.yaml. No Docker here: parsed and
held against the main stack (tests/deploy/test_compose.py's helpers), idgate's loader and the realm's contract."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_compose import COMPOSE_DIR, COMPOSE_FILE, mounts, ports

from idgate.config import Config
from idgate.config_load import parse_config
from idgate.policy import Policy

OVERRIDE = COMPOSE_DIR / "keycloak.yml"
REALM = COMPOSE_DIR / "keycloak" / "realm-idgate.json"
KEYCLOAK_CONFIG = COMPOSE_DIR / "idgate-keycloak.yaml"


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return yaml.safe_load(OVERRIDE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def realm() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REALM.read_text(encoding="utf-8"))
    return data


def test_override_adds_keycloak_and_touches_only_certs_and_idgate(override: dict[str, Any]) -> None:
    assert set(override["services"]) == {"certs", "keycloak", "idgate"}
    assert set(override) == {"services"}  # networks and volumes are the main file's


def test_certificate_gains_only_the_keycloak_name(base: dict[str, Any], override: dict[str, Any]) -> None:
    main, extra = base["services"]["certs"]["command"], override["services"]["certs"]["command"]
    assert [a for a in extra if a != "--dns=keycloak.idgate.test"] == main
    assert "--dns=keycloak.idgate.test" in extra


def test_keycloak_service_is_pinned_loopback_read_only_and_healthy(
    base: dict[str, Any], override: dict[str, Any]
) -> None:
    keycloak = override["services"]["keycloak"]
    assert re.fullmatch(r"quay\.io/keycloak/keycloak:\d+\.\d+\.\d+", keycloak["image"])
    assert [(p.host_ip, p.published, p.target) for p in ports(keycloak)] == [("127.0.0.1", 8543, 8543)]
    declared = set(base["volumes"])
    for mount in mounts(keycloak):
        assert mount.read_only, mount
        assert Path(mount.source).exists() if mount.bind else mount.source in declared
    assert keycloak["depends_on"] == {"certs": {"condition": "service_completed_successfully"}}
    assert "/health/ready" in " ".join(keycloak["healthcheck"]["test"])
    env = keycloak["environment"]
    assert env["KC_HTTP_ENABLED"] == "false" and env["KC_HOSTNAME"] == "https://keycloak.idgate.test:8543"
    assert keycloak["networks"]["idgate"]["aliases"] == ["keycloak.idgate.test"]
    assert "--import-realm" in keycloak["command"][0]
    assert "/run/secrets/idgate/client_secret" in keycloak["command"][0]  # the secret from the volume, not the file


def test_idgate_is_pointed_at_the_keycloak_config(base: dict[str, Any], override: dict[str, Any]) -> None:
    idgate = override["services"]["idgate"]
    [mount] = mounts(idgate)
    base_target = next(m.target for m in mounts(base["services"]["idgate"]) if m.target.endswith("idgate.yaml"))
    assert mount.target == base_target and Path(mount.source) == KEYCLOAK_CONFIG and mount.read_only
    assert idgate["depends_on"] == {"keycloak": {"condition": "service_healthy"}}


def test_realm_export_has_users_groups_and_the_client(realm: dict[str, Any]) -> None:
    assert realm["realm"] == "idgate" and realm["sslRequired"] == "all"
    users = {u["username"]: u for u in realm["users"]}
    assert users["alice"]["groups"] == ["/grafana-admins", "/staff"] and users["bob"]["groups"] == ["/staff"]
    assert all(c["temporary"] for u in users.values() for c in u["credentials"])
    [client] = realm["clients"]
    assert client["clientId"] == "idgate" and client["publicClient"] is False
    assert client["secret"] == "${IDGATE_CLIENT_SECRET}"  # never a secret in the file
    assert client["attributes"]["pkce.code.challenge.method"] == "S256"
    assert not client["directAccessGrantsEnabled"] and not client["implicitFlowEnabled"]
    mappers = {m["protocolMapper"]: m["config"] for m in client["protocolMappers"]}
    assert mappers["oidc-group-membership-mapper"]["full.path"] == "false"
    assert mappers["oidc-audience-mapper"]["included.custom.audience"] == "https://api.idgate.test"


def test_idgate_keycloak_config_agrees_with_the_realm(realm: dict[str, Any]) -> None:
    raw = yaml.safe_load(KEYCLOAK_CONFIG.read_text(encoding="utf-8"))
    issuer = raw["issuers"][0]
    assert issuer["provider"] == "keycloak"
    assert issuer["issuer"] == f"https://keycloak.idgate.test:8543/realms/{realm['realm']}"
    [client] = realm["clients"]
    assert issuer["client_id"] == client["clientId"]
    audience = next(m for m in client["protocolMappers"] if m["protocolMapper"] == "oidc-audience-mapper")
    assert issuer["audiences"] == [audience["config"]["included.custom.audience"]]
    assert raw["login"]["redirect_uris"] == client["redirectUris"]
    assert "scopes" not in raw["login"]  # the preset's: Keycloak refuses `groups`
    assert "client_secret" not in issuer


def test_idgate_keycloak_config_loads_and_maps_realm_groups(realm: dict[str, Any], tmp_path: Path) -> None:
    """As idgate loads it, with the file paths of the container (CA, assertion key) left out and fresh secrets."""
    raw = yaml.safe_load(KEYCLOAK_CONFIG.read_text(encoding="utf-8"))
    secret = "k" * 8 + "-generated-client-secret-123"
    (tmp_path / "client_secret").write_text(secret)
    (tmp_path / "session_keys").write_text(base64.b64encode(os.urandom(32)).decode())
    raw["issuers"][0] |= {"client_secret_file": str(tmp_path / "client_secret")}
    del raw["issuers"][0]["ca_file"]
    raw["sessions"]["keys_file"] = str(tmp_path / "session_keys")
    del raw["assertion"]["keys_file"]
    config: Config = parse_config(raw, environ={})
    issuer = config.issuers[0]
    assert issuer.require_at_jwt_typ is False and issuer.claims.sources == ("id_token", "access_token")
    assert config.login is not None and "groups" not in config.login.scopes
    policy = Policy(config=config)
    grafana = config.upstreams["grafana"]
    groups = {g["name"] for g in realm["groups"]}
    assert policy.roles_for(grafana, ("grafana-admins",))[-1] == "Admin" and "grafana-admins" in groups
    assert policy.roles_for(grafana, ()) == ("Viewer",)  # carol: the explicit default
