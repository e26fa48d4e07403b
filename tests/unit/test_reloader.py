"""The reload state machine (idgate.reload.Reloader) with a fake file reader and builder."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from fake_issuer import config

from idgate.config import Config
from idgate.errors import ConfigError
from idgate.fingerprint import policy_hash
from idgate.reload import Reloader

pytestmark = pytest.mark.anyio


class Files:
    """What the fake ``load`` returns next: a Config, or a ConfigError's problems."""

    def __init__(self) -> None:
        self.next: Config | list[str] = config()

    def load(self, path: str) -> Config:
        if isinstance(self.next, list):
            raise ConfigError(self.next)
        return self.next


def narrower() -> Config:
    base = config()
    return base.model_copy(update={"routes": base.routes[:1]})


def reloader(files: Files, built: list[Config], **kwargs: Any) -> Reloader[str]:
    async def build(new: Config) -> str:
        built.append(new)
        return f"generation {len(built)}"

    clock = iter(range(100, 1000))
    return Reloader(
        path="idgate.yaml",
        config=config(),
        current="generation 0",
        build=build,
        load=files.load,
        clock=lambda: float(next(clock)),
        **kwargs,
    )


async def test_a_valid_file_is_built_swapped_counted_and_announced(caplog: pytest.LogCaptureFixture) -> None:
    files, built, seen = Files(), [], []
    r = reloader(files, built)
    r.subscribe(lambda old, new: seen.append((policy_hash(old), policy_hash(new))))
    start = r.stats.last_success
    files.next = narrower()
    with caplog.at_level(logging.WARNING, "idgate.reload"):
        result = await r.reload(source="sighup")
    assert result.applied and result.problems == ()
    assert result.previous == policy_hash(config()) and result.policy == policy_hash(narrower()) == r.policy
    assert r.current == "generation 1" and r.config == narrower()
    assert seen == [(policy_hash(config()), policy_hash(narrower()))]
    assert r.stats.attempts == 1 and r.stats.failures == 0 and r.stats.last_success > start
    assert '"event": "config_reloaded"' in caplog.text and '"source": "sighup"' in caplog.text


async def test_an_invalid_file_is_refused_logged_in_one_line_and_the_last_good_one_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    files, built, seen = Files(), [], []
    r = reloader(files, built)
    r.subscribe(lambda old, new: seen.append(new))
    before = r.stats.last_success
    files.next = ["routes[0]: unknown upstream 'nope'", "issuers[0]: audiences is required"]
    with caplog.at_level(logging.WARNING, "idgate.reload"):
        result = await r.reload(source="admin")
    assert not result.applied and result.problems == tuple(files.next)
    assert result.policy == result.previous == policy_hash(config())
    assert r.current == "generation 0" and built == [] and seen == []
    assert r.stats.attempts == 1 and r.stats.failures == 1 and r.stats.last_success == before
    lines = [rec.getMessage() for rec in caplog.records if "config_reload_refused" in rec.getMessage()]
    assert len(lines) == 1 and "unknown upstream" in lines[0] and "audiences is required" in lines[0]


async def test_a_restart_only_change_is_refused_naming_the_settings() -> None:
    files, built = Files(), []
    r = reloader(files, built)
    base = config()
    files.next = base.model_copy(update={"server": base.server.model_copy(update={"port": 1234})})
    result = await r.reload(source="admin")
    assert not result.applied and result.restart_required == ("server.port",)
    assert result.problems == ("needs a restart, not a reload: server.port",)
    assert built == [] and r.current == "generation 0"


async def test_a_component_that_refuses_the_file_refuses_the_reload() -> None:
    files = Files()

    async def build(new: Config) -> str:
        raise ValueError("assertion key is not an unencrypted PEM private key")

    r: Reloader[str] = Reloader(path="x.yaml", config=config(), current="g0", build=build, load=files.load)
    files.next = narrower()
    result = await r.reload(source="admin")
    assert not result.applied and "unencrypted PEM" in result.problems[0]
    assert r.current == "g0" and r.config == config() and r.stats.failures == 1


async def test_a_failing_subscriber_never_undoes_the_swap_and_the_next_one_still_runs() -> None:
    files, built, seen = Files(), [], []
    r = reloader(files, built)

    def broken(old: Config, new: Config) -> None:
        raise RuntimeError("purger down")

    r.subscribe(broken)
    r.subscribe(lambda old, new: seen.append(new))
    files.next = narrower()
    assert (await r.reload(source="admin")).applied
    assert r.current == "generation 1" and seen == [narrower()]


async def test_without_a_file_every_reload_is_refused() -> None:
    r: Reloader[str] = Reloader(path=None, config=config(), current="g0", build=lambda c: _never(c))
    result = await r.reload(source="sighup")
    assert not result.applied and result.problems == ("no configuration file to reload",)


async def test_reloads_run_one_at_a_time() -> None:
    files, order = Files(), []
    gate, building = asyncio.Event(), asyncio.Event()

    async def build(new: Config) -> str:
        order.append("start")
        building.set()
        await gate.wait()
        order.append("end")
        return "g"

    r: Reloader[str] = Reloader(path="x.yaml", config=config(), current="g0", build=build, load=files.load)
    files.next = narrower()
    first = asyncio.create_task(r.reload(source="a"))
    second = asyncio.create_task(r.reload(source="b"))
    await asyncio.wait_for(building.wait(), 10)
    await asyncio.sleep(0.05)  # the second reload has had time to reach the lock
    assert order == ["start"]
    gate.set()
    await asyncio.gather(first, second)
    assert order == ["start", "end", "start", "end"]


async def _never(new: Config) -> str:
    raise AssertionError("not built")
