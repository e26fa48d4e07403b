"""The variants bench/run measures: each is one way of putting a proxy in front of the bench upstream.

HTTP variants (a-f, j, j-mix) are loaded with wrk (HTTP/1.1, ``GET /``; j-mix: ibench/mix.lua's mix of tokens and
paths); gRPC variants (g-i, k) with h2load (HTTP/2, unary calls to ``/bench.Echo/Unary``). j, j-mix and k run the
shipped config with the decision cache in HAProxy on. See bench/README.md for what each one is.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ibench.procs import rss_kib
from ibench.stack import Env, Mode, Services, apache, bench_haproxy, cache_socket, member_token, shipped_haproxy
from idgate.cache_purge import parse_counters, parse_show_map
from idgate.runtime_api import RuntimeApi

Launch = Callable[[ExitStack, Env, Services], str]


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One way of putting a proxy in front of the upstream. ``auth``: it must refuse bad tokens. ``grpc``: loaded
    with gRPC calls (h2load) instead of HTTP/1.1 requests (wrk). ``launch`` starts what it needs and returns the base
    URL the load generator hits."""

    key: str
    label: str
    auth: bool
    launch: Launch
    grpc: bool = False
    wrk_script: Path | None = None


def _idgate_variant(prefix: str, mode: Mode, cache: Literal["warm", "cold", "warm2"]) -> Launch:
    def launch(stack: ExitStack, env: Env, services: Services) -> str:
        idgate = services.idgate(cache)
        name = f"{prefix}-{cache}"
        return shipped_haproxy(stack, env, name, mode=mode, spoa_addr=idgate.spoa_addr, auth_url=idgate.auth_url)

    return launch


MIX_USERS = 1_000
MIX_PATHS = 50
MIX_NEW_PER_SECOND = 5
MIX_NEW_POOL = 600
MIX_SCRIPT = Path(__file__).with_name("mix.lua")
CACHE_VARIANTS = {"j": "j-cache", "j_mix": "jmix-cache", "k": "k-cache"}
"""Cache variant key → the name of its shipped HAProxy (:data:`ibench.stack.CACHE_HAPROXIES`)."""


def _cached_variant(key: str, *, mix: bool = False) -> Launch:
    """The shipped config in SPOE mode with the decision cache on, and the ``cached`` idgate (its Runtime API list
    names this HAProxy's socket)."""

    def launch(stack: ExitStack, env: Env, services: Services) -> str:
        if mix:
            write_mix(env)
        idgate = services.idgate("cached")
        return shipped_haproxy(stack, env, CACHE_VARIANTS[key], mode="spoe", spoa_addr=idgate.spoa_addr, cache=True)

    return launch


def write_mix(env: Env) -> None:
    """(j-mix)'s inputs: :data:`MIX_USERS` tokens (one user each, signed by the IdP's real key, valid 1 h), a pool
    of never-used ones for the new users, and :data:`MIX_PATHS` paths; ibench/mix.lua reads them (env vars)."""
    now = int(time.time())

    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = list(pool.map(lambda n: member_token(env, f"user{n}", now=now), range(MIX_USERS + MIX_NEW_POOL)))
    files = {
        "BENCH_MIX_TOKENS": ("mix-tokens.txt", tokens[:MIX_USERS]),
        "BENCH_MIX_NEW": ("mix-new-tokens.txt", tokens[MIX_USERS:]),
        "BENCH_MIX_PATHS": ("mix-paths.txt", [f"/mix/p{n}" for n in range(MIX_PATHS)]),
    }
    for var, (name, lines) in files.items():
        (env.root / name).write_text("\n".join(lines) + "\n")
        os.environ[var] = str(env.root / name)
    os.environ["BENCH_MIX_NEW_PER_S"] = str(MIX_NEW_PER_SECOND)


def _runtime_api(path: Path, command: str) -> str:
    """One command to a cache variant's Runtime API, through idgate's own client."""
    return asyncio.run(RuntimeApi(address=f"unix:{path}", timeout=10.0).command(command))


def read_cache(env: Env, key: str) -> dict[str, float]:
    """A cache variant's HAProxy: hits, misses, hit ratio, live entries and the process's RSS (KiB)."""
    path = cache_socket(env, CACHE_VARIANTS[key])
    hits, misses = parse_counters(_runtime_api(path, "show table st_idgate_cache")) or (0, 0)
    entries = parse_show_map(_runtime_api(path, "show map idgate-cache.map"))
    now = time.time()
    pid = int(next(ln.split(": ")[1] for ln in _runtime_api(path, "show info").splitlines() if ln.startswith("Pid:")))
    return {
        "hits": hits,
        "misses": misses,
        "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
        "entries": sum(1 for e in entries if e.expires_at > now),
        "haproxy_rss_kib": rss_kib(pid),
    }


def _bench_haproxy(name: str, config: str) -> Launch:
    return lambda stack, env, _: bench_haproxy(stack, env, name, config)


def _null_spoe(stack: ExitStack, env: Env, services: Services) -> str:
    return shipped_haproxy(stack, env, "f-null-spoa", mode="spoe", spoa_addr=services.null_agent())


VARIANTS: tuple[Variant, ...] = (
    Variant(key="a", label="(a) HAProxy, no auth", auth=False, launch=_bench_haproxy("a-noauth", "haproxy-noauth.cfg")),
    Variant(key="b_warm", label="(b) idgate SPOE, warm", auth=True, launch=_idgate_variant("b", "spoe", "warm")),
    Variant(key="b_cold", label="(b) idgate SPOE, cold", auth=True, launch=_idgate_variant("b", "spoe", "cold")),
    Variant(
        key="b_warm2",
        label="(b) idgate SPOE, warm, 2 workers",
        auth=True,
        launch=_idgate_variant("b", "spoe", "warm2"),
    ),
    Variant(
        key="c_warm",
        label="(c) idgate auth_request, warm",
        auth=True,
        launch=_idgate_variant("c", "auth_request", "warm"),
    ),
    Variant(
        key="c_cold",
        label="(c) idgate auth_request, cold",
        auth=True,
        launch=_idgate_variant("c", "auth_request", "cold"),
    ),
    Variant(key="d", label="(d) HAProxy jwt_verify (C)", auth=True, launch=_bench_haproxy("d-jwt", "haproxy-jwt.cfg")),
    Variant(key="e", label="(e) Apache mod_auth_openidc", auth=True, launch=lambda stack, env, _: apache(stack, env)),
    Variant(key="f", label="(f) SPOE null agent (ceiling)", auth=False, launch=_null_spoe),
    Variant(key="j", label="(j) idgate SPOE + HAProxy cache", auth=True, launch=_cached_variant("j")),
    Variant(
        key="j_mix",
        label="(j-mix) cache, 1k users x 50 paths",
        auth=True,
        launch=_cached_variant("j_mix", mix=True),
        wrk_script=MIX_SCRIPT,
    ),
    Variant(
        key="g",
        label="(g) HAProxy gRPC, no auth",
        auth=False,
        grpc=True,
        launch=_bench_haproxy("g-grpc-noauth", "haproxy-grpc-noauth.cfg"),
    ),
    Variant(
        key="h_warm",
        label="(h) idgate SPOE gRPC, warm",
        auth=True,
        grpc=True,
        launch=_idgate_variant("h", "spoe", "warm"),
    ),
    Variant(
        key="h_warm2",
        label="(h) idgate SPOE gRPC, warm, 2 workers",
        auth=True,
        grpc=True,
        launch=_idgate_variant("h", "spoe", "warm2"),
    ),
    Variant(
        key="i_warm",
        label="(i) idgate auth_request gRPC, warm",
        auth=True,
        grpc=True,
        launch=_idgate_variant("i", "auth_request", "warm"),
    ),
    Variant(key="k", label="(k) idgate SPOE gRPC + cache", auth=True, grpc=True, launch=_cached_variant("k")),
    Variant(
        key="i_warm2",
        label="(i) idgate auth_request gRPC, warm, 2 workers",
        auth=True,
        grpc=True,
        launch=_idgate_variant("i", "auth_request", "warm2"),
    ),
)
