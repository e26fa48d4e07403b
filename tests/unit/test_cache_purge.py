"""The decision cache's purger and sweeper (idgate.cache_purge) against a fake HAProxy Runtime API on a unix socket
that keeps one map and a counter table, as HAProxy 2.8 answers them (doc/management.txt §9.3)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from idgate.cache_entry import encode_entry, tag
from idgate.cache_purge import CachePurger, find_tagged, parse_counters, parse_show_map
from idgate.runtime_api import RuntimeApi
from idgate.store.memory import MemoryRevocationStore

MAP = "idgate-cache.map"
NOW = 1_800_000_000.0


class FakeHaproxy:
    """One map (key → value) and the hit/miss row; records every command."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.map: dict[str, str] = {}
        self.commands: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeHaproxy:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().strip()
        out = "".join(self._one(cmd.strip()) for cmd in line.split(";"))
        writer.write(out.encode())
        await writer.drain()
        writer.close()

    @staticmethod
    def ref(key: str) -> str:
        """The entry's pointer, as ``show map`` prints it (stable for a key, like HAProxy's for an entry)."""
        return "0x" + hashlib.sha256(key.encode()).hexdigest()[:12]

    def _one(self, cmd: str) -> str:
        self.commands.append(cmd)
        words = cmd.split()
        if words[:2] == ["show", "map"] and words[2] == MAP:
            return "".join(f"{self.ref(k)} {k} {v}\n" for k, v in self.map.items()) + "\n"
        if words[:2] == ["del", "map"] and words[3].startswith("#"):  # by reference, as idgate deletes
            key = next((k for k in self.map if self.ref(k) == words[3][1:]), None)
            return "\n" if key is not None and self.map.pop(key, None) is not None else "Key not found.\n\n"
        if words[:2] == ["clear", "map"]:
            self.map.clear()
            return "\n"
        if words[:2] == ["show", "table"]:
            return (
                "# table: st_idgate_cache, type: integer, size:1, used:1\n"
                "0x7f2a: key=1 use=0 exp=0 shard=0 gpc0=7 gpc1=3\n\n"
            )
        return "Unknown command.\n\n"


def entry(exp: float, *keys: str) -> str:
    return encode_entry(expires_at=int(exp), revocation_keys=keys, variables={"status": "200", "user": "u"})


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[FakeHaproxy]:
    async with FakeHaproxy(tmp_path / "h.sock") as fake:
        yield fake


def purger(*addresses: str, repurge: float = 0.0, max_entries: int = 100) -> CachePurger:
    return CachePurger(
        apis=[RuntimeApi(address=a, timeout=1.0) for a in addresses],
        map_name=MAP,
        max_entries=max_entries,
        sweep_interval_seconds=0.05,
        issuers=["https://idp.test"],
        clock=lambda: NOW,
        repurge_after_seconds=repurge,
    )


def test_show_map_and_show_table_are_parsed() -> None:
    text = f"0x55d0aa 6E3F {entry(NOW + 5, 'sid:s1')}\n0x55d0ab BAD 12|x\nsomething else\n\n"
    first, second = parse_show_map(text)
    assert first.key == "6E3F" and first.expires_at == int(NOW + 5) and first.tags == ("", tag("sid:s1"), "")
    assert second.expires_at == 12 and second.tags == ("x", "", "")
    assert parse_counters("# table: st_idgate_cache\n0x1: key=1 use=0 exp=0 gpc0=4 gpc1=9\n") == (4, 9)
    assert parse_counters("# table: st_idgate_cache, used:0\n\n") is None


def _reference_parse(text: str) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """The obvious line-by-line reading of ``show map`` that parse_show_map must equal."""
    out = []
    for line in text.split("\n"):
        parts = line.split(" ", 2)
        if len(parts) != 3 or not re.fullmatch(r"0x[0-9a-fA-F]+", parts[0]):
            continue
        fields = parts[2].split("|")
        tags = [*fields[1:4], "", "", ""][:3]
        out.append((parts[0], parts[1], int(fields[0]) if fields[0].isdigit() else 0, tuple(tags)))
    return out


def test_show_map_parsing_of_odd_values_and_at_scale() -> None:
    odd = [
        "0xf1 K1 not-a-number|a|b|c|d|e",  # a foreign value: expiry 0 (swept)
        "0xf2 K2 77",  # no tags at all
        "0xf3 K3 78||",  # fewer tag fields than kinds
        "0xf4 K4 |||",  # an empty expiry
        "0xf5 K5 79|t1|t2|t3|" + "A" * 3000,  # a long value
        "nothing 0xf6 K6 80",  # not a map line
        "0xZZ K7 81",  # not a pointer
    ]
    many = [
        f"0x{n:x} {n:064x} {entry(NOW + n % 60, f'sid:s{n}', f'sub:https://idp.test|u{n % 97}')}"
        for n in range(100_000)
    ]
    text = "\n".join(odd + many) + "\n"
    parsed = [(e.ref, e.key, e.expires_at, e.tags) for e in parse_show_map(text)]
    assert parsed == _reference_parse(text)
    assert len(parsed) == 5 + 100_000
    assert [p[1:] for p in parsed[:4]] == [
        ("K1", 0, ("a", "b", "c")),
        ("K2", 77, ("", "", "")),
        ("K3", 78, ("", "", "")),
        ("K4", 0, ("", "", "")),
    ]
    assert parsed[0][0] == "0xf1"
    # a purge reads only the lines of its tags: the same entries as filtering the whole parse
    wanted = {tag("sid:s5"), tag("sub:https://idp.test|u7"), "t2", "0" * 16}
    every = parse_show_map(text)
    assert sorted(find_tagged(text, wanted), key=lambda e: e.ref) == sorted(
        (e for e in every if wanted.intersection(e.tags)), key=lambda e: e.ref
    )
    assert len(find_tagged(text, {tag("sub:https://idp.test|u7")})) == len(range(7, 100_000, 97))
    assert find_tagged(text, {"0" * 16, ""}) == []  # in every key, yet no entry's tag: only tag fields match


@pytest.mark.anyio
async def test_a_revocation_deletes_exactly_the_entries_it_tags(haproxy: FakeHaproxy) -> None:
    haproxy.map = {
        "K1": entry(NOW + 30, "sid:s1", "sub:https://idp.test|alice"),
        "K2": entry(NOW + 30, "sid:s2", "sub:https://idp.test|alice"),
        "K3": entry(NOW + 30, "sub:https://idp.test|bob"),
    }
    p = purger(haproxy.address)
    task = p.revoked("sid:s1")
    assert task is not None and await task == 1
    assert set(haproxy.map) == {"K2", "K3"}
    assert await p.purge_tags(p.subject_tags("alice"), cause="operator") == 1
    assert set(haproxy.map) == {"K3"}
    assert p.stats.purges == {"revocation": 1, "operator": 1} and p.stats.purge_failures == 0


@pytest.mark.anyio
async def test_a_second_pass_catches_an_allow_stored_after_the_first(haproxy: FakeHaproxy) -> None:
    p = purger(haproxy.address, repurge=0.05)
    assert await p.purge_tags({tag("sid:late")}, cause="revocation") == 0
    haproxy.map["LATE"] = entry(NOW + 30, "sid:late")  # decided before the revocation, stored after the purge
    await asyncio.sleep(0.2)
    assert haproxy.map == {}
    await p.close()


@pytest.mark.anyio
async def test_the_store_purges_before_the_sign_out_answers(haproxy: FakeHaproxy) -> None:
    haproxy.map = {"K1": entry(NOW + 30, "sid:s1"), "K2": entry(NOW + 30, "sid:s2")}
    store = purger(haproxy.address).watching(MemoryRevocationStore())
    await store.revoke("sid:s1", at=NOW, until=NOW + 60)
    assert set(haproxy.map) == {"K2"} and await store.revoked_at("sid:s1") == NOW


@pytest.mark.anyio
async def test_a_policy_change_or_an_operator_clears_the_map(haproxy: FakeHaproxy) -> None:
    haproxy.map = {"K1": entry(NOW + 30), "K2": entry(NOW + 30)}
    p = purger(haproxy.address)
    assert await p.purge_all(cause="policy_change") == 1
    assert haproxy.map == {} and f"clear map {MAP}" in haproxy.commands


@pytest.mark.anyio
async def test_the_sweep_clears_at_first_contact_then_evicts_expired_and_the_soonest_over_the_cap(
    haproxy: FakeHaproxy,
) -> None:
    haproxy.map = {"OLD": entry(NOW + 30)}
    p = purger(haproxy.address, max_entries=2)
    await p.sweep()
    assert haproxy.map == {} and p.stats.sockets[haproxy.address].up
    haproxy.map = {
        "GONE": entry(NOW - 1),
        "NOW": entry(NOW),
        "SOON": entry(NOW + 2),
        "LATER": entry(NOW + 10),
        "LATEST": entry(NOW + 20),
    }
    await p.sweep()
    assert set(haproxy.map) == {"LATER", "LATEST"}
    assert p.stats.evictions == {"expired": 2, "over_cap": 1}
    state = p.stats.sockets[haproxy.address]
    assert (state.entries, state.hits, state.misses) == (2, 7, 3)


@pytest.mark.anyio
async def test_many_deletions_go_in_batches_that_fit_haproxys_buffer(haproxy: FakeHaproxy) -> None:
    p = purger(haproxy.address, max_entries=1_000_000)
    haproxy.map = {f"{i:064X}": entry(NOW - 5) for i in range(500)}
    p.stats.sockets[haproxy.address].cleared = True
    await p.sweep()
    assert haproxy.map == {} and p.stats.evictions["expired"] == 500


@pytest.mark.anyio
async def test_an_unreachable_socket_is_counted_and_never_stops_the_others(
    haproxy: FakeHaproxy, tmp_path: Path
) -> None:
    haproxy.map = {"K1": entry(NOW + 30, "sid:s1")}
    dead = f"unix:{tmp_path / 'nobody.sock'}"
    p = purger(dead, haproxy.address)
    assert await p.purge_tags({tag("sid:s1")}, cause="revocation") == 1
    assert haproxy.map == {} and p.stats.purge_failures == 1
    await p.sweep()
    assert p.stats.sweep_failures == 1 and not p.stats.sockets[dead].up and p.stats.sockets[haproxy.address].up
    registry = CollectorRegistry()
    registry.register(p.collector())
    text = generate_latest(registry).decode()
    assert "idgate_cache_purge_failures_total 1.0" in text
    assert 'idgate_cache_purges_total{cause="revocation"} 1.0' in text
    assert f'idgate_cache_socket_up{{socket="{dead}"}} 0.0' in text
    assert f'idgate_cache_hits_total{{socket="{haproxy.address}"}} 7.0' in text


@pytest.mark.anyio
async def test_start_sweeps_in_the_background_and_close_stops(haproxy: FakeHaproxy) -> None:
    haproxy.map = {"K": entry(NOW - 1)}
    p = purger(haproxy.address)
    await p.start()
    await asyncio.sleep(0.2)
    await p.close()
    assert haproxy.map == {} and haproxy.commands.count(f"clear map {MAP}") == 1


@pytest.mark.anyio
async def test_a_withdrawn_key_clears_the_map_twice_and_settle_waits_for_the_first(haproxy: FakeHaproxy) -> None:
    haproxy.map = {"K1": entry(NOW + 30), "K2": entry(NOW + 30)}
    p = purger(haproxy.address, repurge=0.05)
    p.purge_all_soon(cause="key_removed")  # the JWKS cache's synchronous hook
    await p.settle()
    assert haproxy.map == {}
    haproxy.map["LATE"] = entry(NOW + 30)  # allowed with the old key just before, stored after the clear
    await asyncio.sleep(0.2)
    assert haproxy.map == {} and p.stats.purges == {"key_removed": 1}
    await p.close()


def test_a_slow_sweep_stretches_the_interval_so_the_sweeper_takes_at_most_a_third() -> None:
    from idgate.cache_purge import sweep_pause

    assert sweep_pause(1.0, 0.01) == 1.0
    assert sweep_pause(1.0, 7.5) == 15.0
