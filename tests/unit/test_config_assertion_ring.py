"""Config rules of the shared assertion key ring: ``assertion.rotation`` and session keys to seal it with."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import pytest

from idgate.config_load import parse_config
from idgate.errors import ConfigError


def raw(**sections: Any) -> dict[str, Any]:
    return {
        "issuers": [
            {
                "name": "t",
                "issuer": "https://idp.test",
                "jwks_uri": "https://idp.test/jwks",
                "discovery": False,
                "audiences": ["a"],
            }
        ],
        "upstreams": {"app": {}},
        "routes": [{"name": "app", "path": "/", "upstream": "app", "public": True}],
        "assertion": {"issuer": "https://idgate.test"},
    } | sections


REDIS = {"kind": "redis", "url": "redis://127.0.0.1:6379/0"}


def test_rotation_defaults_and_bounds() -> None:
    config = parse_config(raw(), environ={})
    assert config.assertion is not None
    assert config.assertion.rotation.publish_seconds == 300 and config.assertion.rotation.poll_seconds == 1
    with pytest.raises(ConfigError) as bad:
        parse_config(raw(assertion={"issuer": "https://i.test", "rotation": {"poll_seconds": 0}}), environ={})
    assert any("poll_seconds" in p for p in bad.value.problems)


def test_a_shared_ring_needs_session_keys_to_seal_it() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_config(raw(store=REDIS), environ={})
    assert any("sealed with the session keys" in p for p in bad.value.problems)
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = parse_config(raw(store=REDIS, sessions={"keys_env": "KEYS"}), environ={"KEYS": key})
    assert config.store.kind == "redis" and config.sessions is not None
