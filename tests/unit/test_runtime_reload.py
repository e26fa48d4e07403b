"""Hot reload through the composition root (idgate.runtime + idgate.app): ``POST /admin/reload`` swaps the whole
generation, a decision under way finishes on the policy it started with, the metrics follow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fake_issuer import AUD, ISS, JWK, KEY, token

from idgate.config_load import load_config
from idgate.fingerprint import policy_hash
from idgate.runtime import create_app

pytestmark = pytest.mark.anyio
FACTS = {"x-idgate-method": "GET", "x-idgate-host": "gw.test", "x-idgate-source": "192.0.2.1"}
JWK2 = JWK | {"kid": "k2"}


def raw(app_allow: dict[str, Any], *, port: int = 9180) -> dict[str, Any]:
    return {
        "server": {"port": port},
        "issuers": [
            {
                "name": "test",
                "issuer": ISS,
                "jwks_uri": f"{ISS}/jwks",
                "discovery": False,
                "audiences": [AUD],
                "jwks": {"refetch_cooldown_seconds": 0, "unknown_kid_cooldown_seconds": 0},
            }
        ],
        "upstreams": {"app": {}},
        "routes": [{"name": "app", "path": "/app", "upstream": "app", "allow": app_allow}],
    }


def write(path: Path, body: dict[str, Any] | str) -> None:
    path.write_text(body if isinstance(body, str) else json.dumps(body))  # JSON is YAML


class SlowSecondFetch:
    """The issuer's JWKS: ``k1`` at first; every later fetch waits for ``release`` and then adds ``k2``."""

    def __init__(self) -> None:
        self.fetches = 0
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.fetches == 1:
            return httpx.Response(200, json={"keys": [JWK]})
        self.waiting.set()
        await self.release.wait()
        return httpx.Response(200, json={"keys": [JWK, JWK2]})


@contextlib.asynccontextmanager
async def serve(path: Path, idp: SlowSecondFetch) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(load_config(str(path)), transport=httpx.MockTransport(idp.handler), config_path=str(path))
    async with app.router.lifespan_context(app):
        asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=asgi, base_url="http://idgate.test") as c:
            for _ in range(100):
                if (await c.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            yield c


def bearer(kid: str = "k1", **claims: Any) -> dict[str, str]:
    tok = token(**claims) if kid == "k1" else jwt.encode(_claims(**claims), KEY, "RS256", {"kid": kid, "typ": "at+jwt"})
    return FACTS | {"x-idgate-path": "/app", "authorization": f"Bearer {tok}"}


def _claims(**claims: Any) -> dict[str, Any]:
    return jwt.decode(token(**claims), options={"verify_signature": False})


async def test_a_decision_under_way_finishes_on_the_policy_it_started_with(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "idgate.yaml"
    write(path, raw({"authenticated": True}))
    old, new = policy_hash(load_config(str(path))), ""
    idp = SlowSecondFetch()
    async with serve(path, idp) as c:
        with caplog.at_level(logging.INFO, "idgate.audit"):
            in_flight = asyncio.create_task(c.get("/auth", headers=bearer("k2")))  # unknown kid: waits on a refetch
            await asyncio.wait_for(idp.waiting.wait(), 5)
            write(path, raw({"groups": ["ops"]}))  # alice is in staff only: the new policy refuses her
            new = policy_hash(load_config(str(path)))
            answer = await c.post("/admin/reload")
            assert answer.status_code == 200 and answer.json()["applied"] is True
            assert answer.json()["policy"] == new and answer.json()["previous_policy"] == old
            after = await c.get("/auth", headers=bearer())
            assert after.status_code == 403 and after.headers["x-idgate-reason"] == "missing_role_or_group"
            assert not in_flight.done()
            idp.release.set()
            started_before = await in_flight
        assert started_before.status_code == 200, started_before.headers  # the old policy: authenticated suffices
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idgate.audit"]
        by_status = {(line["status"], line["policy"]) for line in lines}
        assert by_status == {(403, new), (200, old)}
        metrics = (await c.get("/metrics")).text
        assert f'idgate_policy_info{{policy="{new}"}} 1.0' in metrics
        assert "idgate_config_reloads_total 1.0" in metrics and "idgate_config_reload_failures_total 0.0" in metrics


async def test_invalid_and_restart_only_files_are_refused_and_the_old_policy_keeps_deciding(tmp_path: Path) -> None:
    path = tmp_path / "idgate.yaml"
    write(path, raw({"authenticated": True}))
    old = policy_hash(load_config(str(path)))
    idp = SlowSecondFetch()
    async with serve(path, idp) as c:
        write(path, raw({"authenticated": True}) | {"routes": [{"name": "app", "path": "/app", "upstream": "nope"}]})
        bad = await c.post("/admin/reload")
        assert bad.status_code == 400 and bad.json()["applied"] is False and bad.json()["policy"] == old
        assert len(bad.json()["problems"]) >= 2  # unknown upstream and no rule: every problem listed
        write(path, "issuers: [")
        assert (await c.post("/admin/reload")).status_code == 400
        write(path, raw({"groups": ["ops"]}, port=9999))
        moved = await c.post("/admin/reload")
        assert moved.status_code == 400 and moved.json()["restart_required"] == ["server.port"]
        assert (await c.get("/auth", headers=bearer())).status_code == 200
        metrics = (await c.get("/metrics")).text
        assert "idgate_config_reloads_total 3.0" in metrics and "idgate_config_reload_failures_total 3.0" in metrics
        assert f'idgate_policy_info{{policy="{old}"}} 1.0' in metrics


async def test_admin_reload_is_for_trusted_unproxied_callers_only(tmp_path: Path) -> None:
    path = tmp_path / "idgate.yaml"
    write(path, raw({"authenticated": True}))
    async with serve(path, SlowSecondFetch()) as c:
        proxied = await c.post("/admin/reload", headers={"x-forwarded-for": "127.0.0.1"})
        assert proxied.status_code == 403
        app = create_app(load_config(str(path)), transport=httpx.MockTransport(SlowSecondFetch().handler))
        async with app.router.lifespan_context(app):
            far = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
            async with httpx.AsyncClient(transport=far, base_url="http://idgate.test") as outsider:
                assert (await outsider.post("/admin/reload")).status_code == 403
            near = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=near, base_url="http://idgate.test") as local:
                no_file = await local.post("/admin/reload")  # an app built without a file refuses every reload
                assert no_file.status_code == 400 and no_file.json()["problems"] == ["no configuration file to reload"]


async def test_a_changed_issuer_has_its_keys_before_it_decides(tmp_path: Path) -> None:
    path = tmp_path / "idgate.yaml"
    write(path, raw({"authenticated": True}))
    idp = SlowSecondFetch()
    idp.release.set()  # every fetch answers at once
    async with serve(path, idp) as c:
        changed = raw({"authenticated": True})
        changed["issuers"][0]["audiences"] = [AUD, "https://other.test"]  # a new issuer config: a new key cache
        write(path, changed)
        fetches = idp.fetches
        assert (await c.post("/admin/reload")).json()["applied"] is True
        assert idp.fetches > fetches
        assert (await c.get("/auth", headers=bearer())).status_code == 200  # not 503 keys_unavailable
