"""idgate.fingerprint.policy_hash: a stable hash of the normalised config that ignores secrets."""

from __future__ import annotations

import re

from fake_issuer import config

from idgate.config_load import parse_config
from idgate.fingerprint import policy_hash


def _with(**changes: object) -> str:
    raw = config().model_dump(mode="json", exclude_none=True)
    raw.update(changes)
    return policy_hash(parse_config(raw, environ={"SECRET": "s3cr3t-s3cr3t-s3cr3t-1", "OTHER": "0th3r-0th3r-0th3r-22"}))


def test_the_hash_is_stable_and_shaped() -> None:
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", policy_hash(config()))
    assert policy_hash(config()) == policy_hash(config()) == _with()


def test_a_policy_change_changes_the_hash() -> None:
    raw = config().model_dump(mode="json", exclude_none=True)
    routes = raw["routes"][:-1]
    assert _with(routes=routes) != policy_hash(config())
    assert _with(dev_mode=True) != policy_hash(config())


def test_secrets_never_change_the_hash() -> None:
    raw = config().model_dump(mode="json", exclude_none=True)
    issuers = [raw["issuers"][0] | {"client_id": "c", "client_secret_env": "SECRET"}]
    other = [raw["issuers"][0] | {"client_id": "c", "client_secret_env": "OTHER"}]
    with_secret = parse_config(raw | {"issuers": issuers}, environ={"SECRET": "s3cr3t-s3cr3t-s3cr3t-1"})
    with_other = parse_config(raw | {"issuers": issuers}, environ={"SECRET": "0th3r-0th3r-0th3r-22"})
    assert with_secret.issuers[0].client_secret is not None
    assert policy_hash(with_secret) == policy_hash(with_other)
    assert "s3cr3t" not in with_secret.model_dump_json()
    assert _with(issuers=other) == _with(issuers=issuers)  # nor the variable it came from (not kept once loaded)


def test_where_a_process_listens_and_its_worker_count_leave_the_hash_alone() -> None:
    base = config()
    placed = base.model_copy(
        update={"server": base.server.model_copy(update={"port": base.server.port + 1, "workers": 3})}
    )
    assert policy_hash(placed) == policy_hash(base)
    timeout = base.server.model_copy(update={"decision_timeout_seconds": base.server.decision_timeout_seconds + 1})
    assert policy_hash(base.model_copy(update={"server": timeout})) != policy_hash(base)
