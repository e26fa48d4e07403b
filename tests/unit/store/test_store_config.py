"""``store:`` in the config file: the Redis password only from the environment or a file, TLS files checked, every
problem listed by check-config, and the composition root building the store the config names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_config_load import demo_config

from idgate.config_load import load_config
from idgate.errors import ConfigError
from idgate.runtime import _store, preflight
from idgate.store.memory import MemoryRevocationStore
from idgate.store.redis import RedisRevocationStore


def _write(tmp_path: Path, store: dict[str, Any]) -> Path:
    doc = demo_config(tmp_path) | {"store": store}
    path = tmp_path / "idgate.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_redis_store_with_a_password_from_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, {"kind": "redis", "url": "redis://127.0.0.1:6379/0", "password_env": "REDIS_PW"})
    config = load_config(path, environ={"REDIS_PW": "a-long-redis-password-0123"})
    assert config.store.password is not None
    assert config.store.password.get_secret_value() == "a-long-redis-password-0123"
    assert isinstance(_store(config), RedisRevocationStore)
    assert preflight(config) == []


def test_memory_is_the_default(tmp_path: Path) -> None:
    doc = demo_config(tmp_path)
    path = tmp_path / "idgate.yaml"
    path.write_text(yaml.safe_dump(doc))
    config = load_config(path, environ={})
    assert isinstance(_store(config), MemoryRevocationStore)


@pytest.mark.parametrize(
    ("store", "environ", "problem"),
    [
        ({"kind": "redis", "url": "redis://h:1/0", "password": "inline-secret-0123456789"}, {}, "inline secrets"),
        ({"kind": "redis", "url": "redis://h:1/0", "password_env": "NOPE"}, {}, "NOPE is not set"),
        ({"kind": "redis", "url": "redis://h:1/0", "password_env": "PW"}, {"PW": "changeme"}, "placeholder"),
        ({"kind": "redis", "url": "rediss://h:1/0", "tls": {"ca_file": "missing.pem"}}, {}, "store.tls.ca_file"),
        ({"kind": "redis", "url": "rediss://h:1/0", "tls": {"cert_file": "c.pem"}}, {}, "both cert_file and key_file"),
        ({"kind": "redis"}, {}, "needs a url"),
        ({"kind": "redis", "url": "redis://h:1/0", "timeout_seconds": 0}, {}, "timeout_seconds"),
    ],
)
def test_store_problems_are_refused(
    tmp_path: Path, store: dict[str, Any], environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, store), environ=environ)
    assert any(problem in p for p in caught.value.problems), caught.value.problems
    assert "inline-secret-0123456789" not in str(caught.value)
