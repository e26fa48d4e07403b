"""``idgate keys rotate-assertion`` against a real Redis: creates the ring if needed, pre-publishes the next key,
refuses a second rotation while one is pending, prints no secret."""

from __future__ import annotations

import asyncio
import base64
import secrets
from pathlib import Path

import pytest

from idgate.assertion_store import RedisAssertionRing
from idgate.cli import main
from idgate.config import StoreConfig
from idgate.sso.cookies import KeyRing
from idgate.store.redis import client_from_config
from idgate_devstack.redis_server import RedisServer


def test_rotate_assertion_pre_publishes_once(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("IDGATE_TEST_SESSION_KEYS", key)
    prefix = f"t{secrets.token_hex(4)}:"
    config = tmp_path / "idgate.yaml"
    config.write_text(
        "issuers: [{name: t, issuer: 'https://idp.test', jwks_uri: 'https://idp.test/jwks', discovery: false,"
        " audiences: [a]}]\nupstreams: {app: {}}\nroutes: [{name: app, path: /, upstream: app, public: true}]\n"
        "sessions: {keys_env: IDGATE_TEST_SESSION_KEYS}\n"
        f"store: {{kind: redis, url: '{redis_server.url}', key_prefix: '{prefix}'}}\n"
        "assertion: {issuer: 'https://idgate.test', lifetime_seconds: 60, rotation: {publish_seconds: 120}}\n"
    )
    assert main(["keys", "rotate-assertion", "--config", str(config)]) == 0
    printed = capsys.readouterr()
    assert "published next key" in printed.out and "PRIVATE" not in printed.out + printed.err

    async def read() -> object:
        store = StoreConfig(kind="redis", url=redis_server.url, key_prefix=prefix)
        ring = RedisAssertionRing(client=client_from_config(store), seal=KeyRing.from_text(key), prefix=prefix)
        try:
            return await ring.read()
        finally:
            await ring.close()

    found = asyncio.run(read())
    assert isinstance(found, tuple)
    raw, state = found
    assert "PRIVATE" not in raw and state.next is not None and state.next.kid in printed.out
    assert state.next.activate_at is not None and state.next.activate_at - state.next.created == 120
    assert main(["keys", "rotate-assertion", "--config", str(config)]) == 1
    assert "rotation is under way" in capsys.readouterr().err
