"""What bench/run starts: the shared environment (certs, IdP, token, upstream) and each variant's front proxy.

Every process is entered into one ``contextlib.ExitStack``, so it is stopped on normal exit, on an exception and on
Ctrl-C. Ports are picked free at start.
"""

from __future__ import annotations

import os
import shutil
import ssl
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import yaml

from ibench.procs import Proc, rss_kib
from idgate.devstack.certs import DevCerts, generate_dev_certs
from idgate.devstack.haproxy import Haproxy, HaproxySettings, free_tcp_port
from idgate.devstack.idp import IdpConfig, TestIdp
from idgate.devstack.login import login
from idgate.devstack.service import IdgateService

AUDIENCE = "https://api.idgate.test"
BENCH_DIR = Path(__file__).resolve().parent.parent
REDIRECT_URI = "https://127.0.0.1:9/.idgate/callback"  # registered at the IdP; the login stops before it
UPSTREAM_FRONTEND = "fe_upstream"
Mode = Literal["spoe", "auth_request"]


def loopback() -> str:
    """A free loopback ``host:port``."""
    return f"127.0.0.1:{free_tcp_port()}"


@dataclass(frozen=True, kw_only=True)
class Env:
    """The shared environment: TLS material, the IdP, the one token and the one upstream."""

    root: Path
    certs: DevCerts
    idp: TestIdp
    token: str
    upstream_addr: str
    upstream_socket: Path

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca))


def start_env(stack: ExitStack, root: Path) -> Env:
    """Certificates, the test IdP (HTTPS), ONE real access token for alice, the upstream HAProxy."""
    certs = generate_dev_certs(root / "tls")
    idp = stack.enter_context(
        TestIdp(
            IdpConfig(
                port=free_tcp_port(),
                tls_cert=certs.cert,
                tls_key=certs.key,
                ca_file=certs.ca,
                redirect_uris=(REDIRECT_URI,),
                resources=(AUDIENCE,),
                access_token_ttl=3600,
                id_token_ttl=3600,
                test_endpoints=True,
                log_file=root / "idp.log",
            )
        )
    )
    tokens = login(
        issuer=idp.issuer,
        client_id=idp.config.client_id,
        client_secret=idp.config.client_secret,
        redirect_uri=REDIRECT_URI,
        username="alice",
        resource=AUDIENCE,
        verify=ssl.create_default_context(cafile=str(certs.ca)),
    )
    upstream_addr, upstream_socket = loopback(), root / "upstream.sock"
    settings = HaproxySettings(
        tls_pem=certs.pem, https_bind=upstream_addr, upstream_app=upstream_addr, stats_socket=upstream_socket
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
    )


# -- idgate and the null agent, shared by several variants ----------------------------------------------------------


def idgate_config(env: Env, *, spoa_port: int, cache_entries: int) -> dict[str, object]:
    """The bench's idgate config: one issuer, one upstream, route ``/`` for any authenticated caller."""
    return {
        "server": {"host": "127.0.0.1", "token_cache_entries": cache_entries},
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
        "upstreams": {"app": {"profile": "generic"}},
        "routes": [{"name": "all", "path": "/", "upstream": "app", "allow": {"authenticated": True}}],
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
    """idgate (token cache on = warm, off = cold) and the null SPOA agent, each started on first use."""

    def __init__(self, stack: ExitStack, env: Env) -> None:
        self.stack = stack
        self.env = env
        self.idgates: dict[str, IdgateHandle] = {}
        self._null_agent: str | None = None

    def idgate(self, name: Literal["warm", "cold"]) -> IdgateHandle:
        if name not in self.idgates:
            self.idgates[name] = self._start_idgate(name)
        return self.idgates[name]

    def _start_idgate(self, name: str) -> IdgateHandle:
        spoa_port = free_tcp_port()
        entries = 10_000 if name == "warm" else 0
        config_path = self.env.root / f"idgate-{name}.yaml"
        config_path.write_text(yaml.safe_dump(idgate_config(self.env, spoa_port=spoa_port, cache_entries=entries)))
        service = IdgateService(config=config_path, port=free_tcp_port(), log_path=self.env.root / f"idgate-{name}.log")
        self.stack.enter_context(service)
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
    stack: ExitStack, env: Env, name: str, *, mode: Mode, spoa_addr: str = "127.0.0.1:1", auth_url: str = ""
) -> str:
    """The SHIPPED haproxy/haproxy.cfg in ``mode``, upstream app = the bench upstream; returns its https URL."""
    https = loopback()
    settings = HaproxySettings(
        tls_pem=env.certs.pem,
        mode=mode,
        spoa_addr=spoa_addr,
        https_bind=https,
        http_bind=loopback(),
        stats_bind=loopback(),
        auth_url=auth_url or "http://127.0.0.1:1/auth",
        upstream_app=env.upstream_addr,
        stats_socket=env.root / f"haproxy-{name}.sock",
    )
    stack.enter_context(Haproxy(settings, log_path=env.root / f"haproxy-{name}.log"))
    return f"https://{https}/"


def bench_haproxy(stack: ExitStack, env: Env, name: str, config: str) -> str:
    """One of bench/'s own HAProxy configs (TLS front, upstream app = the bench upstream); returns its https URL."""
    https = loopback()
    settings = HaproxySettings(
        tls_pem=env.certs.pem,
        https_bind=https,
        upstream_app=env.upstream_addr,
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


# -- the variants --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One way of putting a proxy in front of the upstream. ``auth``: it must refuse bad tokens.
    ``launch`` starts what it needs and returns the URL wrk hits."""

    key: str
    label: str
    auth: bool
    launch: Callable[[ExitStack, Env, Services], str]


def _idgate_variant(mode: Mode, cache: Literal["warm", "cold"]) -> Callable[[ExitStack, Env, Services], str]:
    def launch(stack: ExitStack, env: Env, services: Services) -> str:
        idgate = services.idgate(cache)
        name = f"{'b' if mode == 'spoe' else 'c'}-{cache}"
        return shipped_haproxy(stack, env, name, mode=mode, spoa_addr=idgate.spoa_addr, auth_url=idgate.auth_url)

    return launch


def _null_spoe(stack: ExitStack, env: Env, services: Services) -> str:
    return shipped_haproxy(stack, env, "f-null-spoa", mode="spoe", spoa_addr=services.null_agent())


VARIANTS: tuple[Variant, ...] = (
    Variant(
        key="a",
        label="(a) HAProxy, no auth",
        auth=False,
        launch=lambda stack, env, _: bench_haproxy(stack, env, "a-noauth", "haproxy-noauth.cfg"),
    ),
    Variant(key="b_warm", label="(b) idgate SPOE, warm", auth=True, launch=_idgate_variant("spoe", "warm")),
    Variant(key="b_cold", label="(b) idgate SPOE, cold", auth=True, launch=_idgate_variant("spoe", "cold")),
    Variant(
        key="c_warm", label="(c) idgate auth_request, warm", auth=True, launch=_idgate_variant("auth_request", "warm")
    ),
    Variant(
        key="c_cold", label="(c) idgate auth_request, cold", auth=True, launch=_idgate_variant("auth_request", "cold")
    ),
    Variant(
        key="d",
        label="(d) HAProxy jwt_verify (C)",
        auth=True,
        launch=lambda stack, env, _: bench_haproxy(stack, env, "d-jwt", "haproxy-jwt.cfg"),
    ),
    Variant(key="e", label="(e) Apache mod_auth_openidc", auth=True, launch=lambda stack, env, _: apache(stack, env)),
    Variant(key="f", label="(f) SPOE null agent (ceiling)", auth=False, launch=_null_spoe),
)
