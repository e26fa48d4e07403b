"""The looker: block and the gate / looker_embed profiles through the whole config loader."""

from __future__ import annotations

import base64
import copy
import os
from pathlib import Path
from typing import Any

import pytest

from idgate.config_load import parse_config
from idgate.config_warnings import config_warnings
from idgate.errors import ConfigError
from idgate_devstack.certs import generate_dev_certs

EMBED_SECRET = "looker-embed-secret-9f8e7d6c5b4a39281706"


def _doc(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "embed_secret").write_text(EMBED_SECRET)
    (tmp_path / "client_secret").write_text("idgate-test-secret-0123456789abcdef")
    (tmp_path / "keys").write_text(base64.b64encode(os.urandom(32)).decode())
    return {
        "issuers": [
            {
                "name": "idp",
                "issuer": "https://idp.example.com",
                "audiences": ["idgate"],
                "client_id": "idgate",
                "client_secret_file": "client_secret",
            }
        ],
        "sessions": {"keys_file": "keys"},
        "login": {"issuer": "idp", "redirect_uris": ["https://app.example.com/.idgate/callback"]},
        "role_sets": {
            "looker": {
                "roles": ["looker_viewer", "looker_admin"],
                "from_groups": {"analysts": ["looker_viewer"], "admins": ["looker_admin"]},
            }
        },
        "upstreams": {
            "analytics": {
                "profile": "looker_embed",
                "role_set": "looker",
                "looker": {
                    "url": "https://looker.example.com",
                    "embed_secret_file": "embed_secret",
                    "roles": {
                        "looker_viewer": {"permissions": ["access_data", "see_user_dashboards"], "models": ["m"]},
                        "looker_admin": {"permissions": ["access_data", "explore", "see_sql"], "models": ["m"]},
                    },
                },
            },
            "app": {"profile": "generic"},
        },
        "routes": [{"name": "all", "upstream": "app", "allow": {"authenticated": True}}],
    }


def _problems(doc: dict[str, Any], tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, environ={}, base_dir=tmp_path)
    return "\n".join(caught.value.problems)


def test_a_looker_embed_upstream_loads_with_its_secret_from_a_file(tmp_path: Path) -> None:
    config = parse_config(_doc(tmp_path), environ={}, base_dir=tmp_path)
    looker = config.upstreams["analytics"].looker
    assert looker is not None and looker.embed_secret is not None
    assert looker.embed_secret.get_secret_value() == EMBED_SECRET
    assert looker.host == "looker.example.com" and looker.signed and not looker.cookieless
    assert config_warnings(config) == ()


def test_unknown_permissions_missing_models_and_unmapped_roles_are_all_reported(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    roles = doc["upstreams"]["analytics"]["looker"]["roles"]
    roles["looker_viewer"]["permissions"] = ["access_data", "see_everything"]
    roles["looker_viewer"]["models"] = []
    del roles["looker_admin"]
    roles["ghost"] = {"permissions": ["access_data"], "models": ["m"]}
    problems = _problems(doc, tmp_path)
    assert "unknown Looker embed permissions: see_everything" in problems
    assert "at least one LookML model" in problems


def test_role_names_outside_the_role_set_and_roles_without_a_grant_are_refused(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    roles = doc["upstreams"]["analytics"]["looker"]["roles"]
    roles["ghost"] = roles.pop("looker_admin")
    problems = _problems(doc, tmp_path)
    assert "not in role set 'looker': ['ghost']" in problems
    assert "without a Looker grant: ['looker_admin']" in problems


def test_inline_secrets_missing_secrets_and_http_are_refused(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    looker = doc["upstreams"]["analytics"]["looker"]
    del looker["embed_secret_file"]
    looker["embed_secret"] = EMBED_SECRET
    looker["url"] = "http://looker.example.com"
    problems = _problems(doc, tmp_path)
    assert "upstreams.analytics.looker.embed_secret: inline secrets are refused" in problems
    assert "is not https" in problems
    assert EMBED_SECRET not in problems


def test_profile_and_block_go_together_and_need_login(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    block = copy.deepcopy(doc["upstreams"]["analytics"]["looker"])
    doc["upstreams"]["app"]["looker"] = block
    doc["upstreams"]["analytics"]["looker"]["embed_secret_file"] = "embed_secret"
    del doc["login"]
    problems = _problems(doc, tmp_path)
    assert "a looker block needs profile looker_embed" in problems
    assert "profile looker_embed needs login" in problems


def test_cookieless_needs_url_client_id_and_secret_together(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    doc["upstreams"]["analytics"]["looker"]["client_id"] = "api3-id"
    assert "cookieless embedding needs api_url, client_id and client_secret" in _problems(doc, tmp_path)
    doc = _doc(tmp_path)
    doc["upstreams"]["analytics"]["looker"] |= {
        "api_url": "https://looker.example.com:19999",
        "client_id": "api3-id",
        "client_secret_file": "client_secret",
    }
    looker = parse_config(doc, environ={}, base_dir=tmp_path).upstreams["analytics"].looker
    assert looker is not None and looker.cookieless


def test_profile_looker_is_the_deprecated_name_of_gate(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    doc["upstreams"]["app"]["profile"] = "looker"
    warnings = config_warnings(parse_config(doc, environ={}, base_dir=tmp_path))
    assert any("profile looker is deprecated, use gate" in w for w in warnings)
    doc["upstreams"]["app"]["profile"] = "gate"
    assert config_warnings(parse_config(doc, environ={}, base_dir=tmp_path)) == ()


def test_a_looker_ca_file_is_resolved_and_must_load(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    doc["upstreams"]["analytics"]["looker"]["ca_file"] = "missing.pem"
    assert "upstreams.analytics.looker.ca_file: cannot read" in _problems(doc, tmp_path)
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    doc["upstreams"]["analytics"]["looker"]["ca_file"] = "bad.pem"
    assert "upstreams.analytics.looker.ca_file:" in _problems(doc, tmp_path)
    generate_dev_certs(tmp_path / "tls")
    doc["upstreams"]["analytics"]["looker"]["ca_file"] = "tls/ca.pem"
    looker = parse_config(doc, environ={}, base_dir=tmp_path).upstreams["analytics"].looker
    assert looker is not None and looker.ca_file == str(tmp_path / "tls" / "ca.pem")
