"""``idgate cache show`` and ``idgate cache purge [--subject S | --session SID | --all]``: the decision cache in
HAProxy, by hand, on every ``haproxy.runtime_api`` socket of idgate's configuration (:mod:`idgate.cache_purge`).

Exit codes: 0 done on every socket, 1 a bad config, 2 a usage error, 3 a socket failed (the others were done).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from idgate.cache_purge import CachePurger, parse_counters, parse_show_map
from idgate.config_load import load_config
from idgate.errors import ConfigError
from idgate.runtime_api import RuntimeApi, RuntimeApiError


def _purger(config_path: str) -> CachePurger | str:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return f"{config_path}: " + "; ".join(exc.problems)
    if not config.haproxy.runtime_api:
        return f"{config_path}: no haproxy.runtime_api listed"
    return CachePurger(
        apis=[RuntimeApi(address=a) for a in config.haproxy.runtime_api],
        map_name=config.haproxy.cache_map,
        max_entries=config.cache.max_entries,
        sweep_interval_seconds=config.cache.sweep_interval_seconds,
        issuers=[i.issuer for i in config.issuers],
        repurge_after_seconds=0,
    )


async def _show(purger: CachePurger, apis: list[RuntimeApi]) -> int:
    failed = 0
    now = time.time()
    for api in apis:
        try:
            entries = parse_show_map(await api.command(f"show map {purger.map_name}"))
            counters = parse_counters(await api.command("show table st_idgate_cache")) or (0, 0)
        except RuntimeApiError as exc:
            print(f"idgate cache show: {exc}", file=sys.stderr)
            failed += 1
            continue
        live = sum(1 for e in entries if e.expires_at > now)
        hits, misses = counters
        ratio = f"{hits / (hits + misses):.1%}" if hits + misses else "-"
        print(f"{api.address}: {len(entries)} entries ({live} live), hits {hits}, misses {misses}, hit ratio {ratio}")
    return 3 if failed else 0


def run_cache(args: argparse.Namespace) -> int:
    """The ``cache`` subcommand (module docstring)."""
    purger = _purger(args.config)
    if isinstance(purger, str):
        print(f"idgate cache: {purger}", file=sys.stderr)
        return 1
    config = load_config(args.config)
    apis = [RuntimeApi(address=a) for a in config.haproxy.runtime_api]
    if args.action == "show":
        return asyncio.run(_show(purger, apis))
    if not (args.all or args.subject or args.session):
        print("idgate cache purge: give --subject S, --session SID or --all", file=sys.stderr)
        return 2
    before = purger.stats.purge_failures

    async def purge() -> str:
        if args.all:
            await purger.purge_all(cause="operator")
            return "cleared"
        tags = purger.subject_tags(args.subject) if args.subject else purger.session_tags(args.session)
        deleted = await purger.purge_tags(tags, cause="operator", again=False)
        return f"{deleted} entries deleted"

    outcome = asyncio.run(purge())
    failed = purger.stats.purge_failures - before
    print(f"idgate cache purge: {outcome} on {len(apis) - failed} of {len(apis)} HAProxy socket(s)")
    return 3 if failed else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``idgate cache`` to the ``idgate`` parser."""
    p = sub.add_parser(
        "cache",
        help="the decision cache in HAProxy: show entry counts, purge entries",
        description="Act on the decision cache of every HAProxy listed in the config's haproxy.runtime_api.",
    )
    p.add_argument("action", choices=["show", "purge"])
    p.add_argument("--config", required=True, help="idgate's YAML config (haproxy.runtime_api, haproxy.cache_map)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--subject", help="purge every entry of this subject (sub), under any configured issuer")
    who.add_argument("--session", metavar="SID", help="purge the entries of one session (idgate's or the IdP's sid)")
    who.add_argument("--all", action="store_true", help="clear the whole cache")
    p.set_defaults(run=run_cache)
