"""What bench/run starts: the shared environment (certs, IdP, token, upstream) and the front proxies variants use.

Every process is entered into one ``contextlib.ExitStack``, so it is stopped on normal exit, on an exception and on
Ctrl-C. Ports are picked free at start. The IdP, the login and ``idgate serve`` are started by the pieces of the
stack builder (:mod:`idgate_devstack.stack`: ``start_idp``, ``login_user``, ``start_idgate``); the upstream HAProxy,
the idgate configs and the front proxies here are the bench's own.
"""

from __future__ import annotations

import os
import shutil
import ssl
import struct
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from ibench.procs import Proc, rss_kib
from idgate_devstack.certs import DevCerts, generate_dev_certs
from idgate_devstack.grpc_echo import GrpcUpstream
from idgate_devstack.haproxy import Haproxy, HaproxySettings, free_tcp_port
from idgate_devstack.idp import TestIdp
from idgate_devstack.redis_server import RedisServer
from idgate_devstack.service import IdgateService
from idgate_devstack.stack import Mode, login_user, start_idgate, start_idp
from idgate_devstack.stack_config import AUDIENCE

BENCH_DIR = Path(__file__).resolve().parent.parent
SITE = "https://127.0.0.1:9"
"""The origin of the redirect URI registered at the IdP (``{SITE}/.idgate/callback``); the login stops before it."""
UPSTREAM_FRONTEND = "fe_upstream"
GRPC_UPSTREAM_FRONTEND = "fe_grpc_upstream"
GRPC_REPLY_PAYLOAD = b'{"bench":"ok"}'
"""The payload of the one message the upstream answers every bench gRPC call with."""


def loopback() -> str:
    """A free loopback ``host:port``."""
    return f"127.0.0.1:{free_tcp_port()}"


def grpc_message(payload: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length, the payload."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


@dataclass(frozen=True, kw_only=True)
class Env:
    """The shared environment: TLS material, the IdP, the one token and the one upstream."""

    root: Path
    certs: DevCerts
    idp: TestIdp
    token: str
    upstream_addr: str
    upstream_socket: Path
    grpc_upstream_addr: str
    """The upstream's h2c listener: answers every gRPC call with ``grpc_reply``, except /demo.Echo/* (grpcio echo)."""
    grpc_reply: bytes

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca))


def start_env(stack: ExitStack, root: Path, *, grpc_echo: bool) -> Env:
    """Certificates, the test IdP (HTTPS), ONE real access token for alice, the upstream HAProxy (HTTP and h2c) and,
    with ``grpc_echo``, the grpcio echo service behind the upstream's /demo.Echo/ (the gRPC variants' sanity calls)."""
    certs = generate_dev_certs(root / "tls")
    idp = start_idp(stack, certs, root, port=free_tcp_port(), site=SITE, token_ttl=3600, test_endpoints=True)
    tokens = login_user(idp, "alice")
    reply = grpc_message(GRPC_REPLY_PAYLOAD)
    (root / "grpc-reply.bin").write_bytes(reply)
    echo_addr = stack.enter_context(GrpcUpstream("bench-echo")).address if grpc_echo else "127.0.0.1:1"
    os.environ.update(BENCH_GRPC_REPLY=str(root / "grpc-reply.bin"), BENCH_GRPC_ECHO=echo_addr)
    # ports picked right before HAProxy binds them: free_tcp_port() only says they were free a moment ago
    upstream_addr, upstream_socket, grpc_addr = loopback(), root / "upstream.sock", loopback()
    settings = HaproxySettings(
        tls_pem=certs.pem,
        https_bind=upstream_addr,
        upstream_app=upstream_addr,
        upstream_grpc=grpc_addr,
        stats_socket=upstream_socket,
    )
    stack.enter_context(
        Haproxy(settings, config=BENCH_DIR / "haproxy-upstream.cfg", log_path=root / "haproxy-upstream.log")
    )
    key_path = root / "idp-public-key.pem"
    key_path.write_bytes(idp.public_key_pem())
    os.environ.update(BENCH_ISSUER=idp.issuer, BENCH_AUDIENCE=AUDIENCE, BENCH_JWT_PUBKEY=str(key_path))
    return Env(
        root=root,
        certs=certs,
        idp=idp,
        token=tokens.access_token,
        upstream_addr=upstream_addr,
        upstream_socket=upstream_socket,
        grpc_upstream_addr=grpc_addr,
        grpc_reply=reply,
    )


# -- idgate and the null agent, shared by several variants ----------------------------------------------------------


GRPC_ROUTES = ("/bench.Echo/*", "/demo.Echo/Whoami")
"""gRPC methods routed to upstream ``grpc``: the load's service, and the echo method of the sanity calls."""


CACHE_HAPROXIES = ("j-cache", "jmix-cache", "k-cache")
"""The shipped HAProxy instances that run with the decision cache on (their Runtime API sockets are idgate's
``haproxy.runtime_api``, so it marks allows cacheable and sweeps them)."""


def member_token(env: Env, subject: str, *, now: int) -> str:
    """An access token for ``subject`` signed by the test IdP's real key, shaped like the bench token (``at+jwt``,
    audience :data:`AUDIENCE`, group ``staff``), valid one hour from ``now`` (epoch seconds)."""
    claims = {
        "iss": env.idp.issuer,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + 3600,
        "email": f"{subject}@example.test",
        "groups": ["staff"],
        "client_id": "idgate",
    }
    return env.idp.sign({"typ": "at+jwt"}, claims)


def cache_socket(env: Env, name: str) -> Path:
    """The Runtime API socket of the shipped HAProxy ``name`` (as :func:`shipped_haproxy` names it)."""
    return env.root / f"haproxy-{name}.sock"


def idgate_config(env: Env, *, spoa_port: int, cache_entries: int, decision_cache: bool = False) -> dict[str, object]:
    """The bench's idgate config (``cache_entries`` 0: the token cache and the decision memo off): one issuer;
    upstreams ``app`` and ``grpc``; gRPC routes for the bench's methods, then route ``/``, each for any
    authenticated caller. ``decision_cache``: the decision cache in HAProxy on, purged and swept through the
    sockets of :data:`CACHE_HAPROXIES` (off: no ``haproxy.runtime_api``, nothing is marked)."""
    grpc_routes = [
        {"name": f"rpc-{n}", "grpc": method, "upstream": "grpc", "allow": {"authenticated": True}}
        for n, method in enumerate(GRPC_ROUTES, 1)
    ]
    return {
        "server": {"host": "127.0.0.1", "token_cache_entries": cache_entries},
        # cold (no token cache) means no memo of finished answers either: every request is a full verification
        **({"decision_memo": {"max_entries": 0}} if cache_entries == 0 else {}),
        "spoa": {"host": "127.0.0.1", "port": spoa_port},
        "issuers": [
            {
                "name": "testidp",
                "issuer": env.idp.issuer,
                "ca_file": str(env.certs.ca),
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
            }
        ],
        "upstreams": {"app": {"profile": "generic"}, "grpc": {"profile": "generic"}},
        "routes": [*grpc_routes, {"name": "all", "path": "/", "upstream": "app", "allow": {"authenticated": True}}],
        **(
            {"haproxy": {"runtime_api": [f"unix:{cache_socket(env, n)}" for n in CACHE_HAPROXIES]}}
            if decision_cache
            else {}
        ),
    }


def service_pid(service: IdgateService) -> int:
    """The pid of a running ``IdgateService``."""
    if service.pid is None:
        raise RuntimeError("idgate not running")
    return service.pid


@dataclass(frozen=True, kw_only=True)
class IdgateHandle:
    """A running ``idgate serve``: its HTTP (``/auth``, ``/metrics``) and SPOA addresses, its pid."""

    name: str
    service: IdgateService
    spoa_addr: str
    rss_at_start_kib: int

    @property
    def pid(self) -> int:
        return service_pid(self.service)

    @property
    def auth_url(self) -> str:
        return f"{self.service.url}/auth"

    def metrics(self) -> dict[str, float]:
        """idgate's ``/metrics``, samples without labels only: name -> value."""
        text = httpx.get(f"{self.service.url}/metrics", timeout=5.0).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if line and not line.startswith("#") and "{" not in name:
                values[name] = float(value)
        return values


class Services:
    """idgate (token cache on = warm, off = cold; ``cached``: warm with the decision cache in HAProxy) and the null
    SPOA agent, each started on first use."""

    def __init__(self, stack: ExitStack, env: Env) -> None:
        self.stack = stack
        self.env = env
        self.idgates: dict[str, IdgateHandle] = {}
        self._null_agent: str | None = None

    def idgate(self, name: Literal["warm", "cold", "cached", "warm2"]) -> IdgateHandle:
        if name not in self.idgates:
            self.idgates[name] = self._start_idgate(name)
        return self.idgates[name]

    def _start_idgate(self, name: str) -> IdgateHandle:
        spoa_port = free_tcp_port()
        config = idgate_config(
            self.env,
            spoa_port=spoa_port,
            cache_entries=0 if name == "cold" else 10_000,
            decision_cache=name == "cached",
        )
        workers = None
        if name == "warm2":  # idgate serve --workers 2, which needs the shared store
            redis = self.stack.enter_context(RedisServer(port=free_tcp_port(), log_path=self.env.root / "redis.log"))
            config["store"] = {"kind": "redis", "url": redis.url}
            workers = 2
        service = start_idgate(
            self.stack, self.env.root, config, port=free_tcp_port(), name=f"idgate-{name}", workers=workers
        )
        return IdgateHandle(
            name=name,
            service=service,
            spoa_addr=f"127.0.0.1:{spoa_port}",
            rss_at_start_kib=rss_kib(service_pid(service)),
        )

    def null_agent(self) -> str:
        if self._null_agent is None:
            addr = loopback()
            argv = [sys.executable, str(BENCH_DIR / "ibench" / "null_agent.py"), "--port", addr.rpartition(":")[2]]
            env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
            self.stack.enter_context(Proc(argv, log_path=self.env.root / "null-agent.log", ready_addr=addr, env=env))
            self._null_agent = addr
        return self._null_agent


# -- front proxies -------------------------------------------------------------------------------------------------


def shipped_haproxy(
    stack: ExitStack,
    env: Env,
    name: str,
    *,
    mode: Mode,
    spoa_addr: str = "127.0.0.1:1",
    auth_url: str = "",
    cache: bool = False,
) -> str:
    """The SHIPPED haproxy/haproxy.cfg in ``mode``, upstreams app and grpc = the bench upstream, the decision cache
    on only with ``cache`` (``IDGATE_CACHE``); returns its https URL."""
    https = loopback()
    settings = HaproxySettings(
        tls_pem=env.certs.pem,
        mode=mode,
        spoa_addr=spoa_addr,
        https_bind=https,
        http_bind=loopback(),
        stats_bind=loopback(),
        auth_url=auth_url or "http://127.0.0.1:1/auth",
        auth_lb_bind=loopback() if mode == "auth_request" else None,  # as recommended (haproxy/README.md "Traps")
        upstream_app=env.upstream_addr,
        upstream_grpc=env.grpc_upstream_addr,
        stats_socket=cache_socket(env, name),
        cache=cache,
    )
    stack.enter_context(Haproxy(settings, log_path=env.root / f"haproxy-{name}.log"))
    return f"https://{https}/"


def bench_haproxy(stack: ExitStack, env: Env, name: str, config: str) -> str:
    """One of bench/'s own HAProxy configs (TLS front, upstreams app and grpc = the bench upstream); returns its https
    URL."""
    https = loopback()
    settings = HaproxySettings(
        tls_pem=env.certs.pem,
        https_bind=https,
        upstream_app=env.upstream_addr,
        upstream_grpc=env.grpc_upstream_addr,
        stats_socket=env.root / f"haproxy-{name}.sock",
    )
    stack.enter_context(Haproxy(settings, config=BENCH_DIR / config, log_path=env.root / f"haproxy-{name}.log"))
    return f"https://{https}/"


def apache(stack: ExitStack, env: Env) -> str:
    """Apache + mod_auth_openidc (bench/apache-openidc.conf) in the foreground; returns its https URL."""
    binary = shutil.which("apache2")
    if binary is None or not Path("/usr/lib/apache2/modules/mod_auth_openidc.so").exists():
        raise RuntimeError("apache2 or libapache2-mod-auth-openidc is not installed (bench/run installs them)")
    # Apache's workers run as www-data: they must reach the CA file (curl, JWKS over https) but nothing else
    env.root.chmod(0o711)
    run_dir = env.root / "apache"
    run_dir.mkdir(exist_ok=True)
    run_dir.chmod(0o755)
    ca = run_dir / "ca.pem"
    ca.write_bytes(env.certs.ca.read_bytes())
    ca.chmod(0o644)
    addr = loopback()
    apache_env = {
        **os.environ,
        "BENCH_APACHE_BIND": addr,
        "BENCH_RUN_DIR": str(run_dir),
        "BENCH_TLS_CERT": str(env.certs.cert),
        "BENCH_TLS_KEY": str(env.certs.key),
        "BENCH_CA": str(ca),
        "BENCH_JWKS_URI": env.idp.jwks_uri,
        "BENCH_UPSTREAM": env.upstream_addr,
    }
    argv = [binary, "-f", str(BENCH_DIR / "apache-openidc.conf"), "-DFOREGROUND"]
    stack.enter_context(Proc(argv, log_path=run_dir / "apache-stdout.log", ready_addr=addr, env=apache_env))
    return f"https://{addr}/"
