"""The variants bench/run measures: each is one way of putting a proxy in front of the bench upstream.

HTTP variants (a-f) are loaded with wrk (HTTP/1.1, ``GET /``); gRPC variants (g-i) with h2load (HTTP/2, unary
calls to ``/bench.Echo/Unary``). See bench/README.md for what each one is.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Literal

from ibench.stack import Env, Mode, Services, apache, bench_haproxy, shipped_haproxy

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


def _idgate_variant(prefix: str, mode: Mode, cache: Literal["warm", "cold", "warm2"]) -> Launch:
    def launch(stack: ExitStack, env: Env, services: Services) -> str:
        idgate = services.idgate(cache)
        name = f"{prefix}-{cache}"
        return shipped_haproxy(stack, env, name, mode=mode, spoa_addr=idgate.spoa_addr, auth_url=idgate.auth_url)

    return launch


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
    Variant(
        key="i_warm2",
        label="(i) idgate auth_request gRPC, warm, 2 workers",
        auth=True,
        grpc=True,
        launch=_idgate_variant("i", "auth_request", "warm2"),
    ),
)
