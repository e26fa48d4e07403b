"""The ``idgate`` command line.

    idgate serve --config FILE        run the auth service (uvicorn in-process; uvloop and httptools when installed;
                                      HTTPS with server.tls)
                 [--workers N]        N worker processes sharing the listeners (idgate.supervisor; server.workers)
    idgate check-config FILE          validate; print every problem (exit 1) or a one-screen summary (exit 0),
                                      and warnings on stderr (exit 0)
    idgate --version                  the installed version (package metadata)
    idgate init --provider P --issuer URL --client-id ID [--out DIR]
                                      a complete, commented starter config with keys in files (idgate.ops.init)
    idgate jwks refresh [--issuer NAME] [--url URL | --config FILE]
                                      emergency key withdrawal: make a running idgate refetch its issuers' keys now,
                                      drop withdrawn keys and every cached verification of their tokens
                                      (``POST /admin/jwks/refresh`` on idgate's HTTP port, from a trusted address)
    idgate reload [--url URL | --config FILE]
                                      make a running idgate re-read and validate its configuration file, like
                                      SIGHUP (``POST /admin/reload``): applied, or refused with every problem
    idgate keys generate session|assertion --out FILE, idgate keys rotate-assertion --config FILE
                                      write key files (0600, secrets never printed); rotate the shared assertion
                                      key ring (idgate.ops.keys)
    idgate explain --config FILE PATH|URL [--token T | --claims JSON | --user U --group G] [--json]
                                      the decision the policy gives that request, and why (idgate.ops)

More commands come from installed plugins (entry-point group ``idgate.commands``): a source checkout's
``idgate_devstack`` adds ``idgate demo`` (HAProxy + idgate + the test IdP + sample upstreams on loopback). idgate itself
never imports the dev harness.

Exit codes: 0 success, 1 invalid configuration (``reload``: refused or unreachable; ``jwks refresh``: idgate
unreachable or refusing, an unknown issuer, or a refetch that failed — the last good keys then stay), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

import httpx

from idgate.config import Config
from idgate.config_load import load_config, summarize
from idgate.config_warnings import config_warnings
from idgate.errors import ConfigError
from idgate.logsink import stderr_handler
from idgate.ops import cache_commands
from idgate.ops import commands as ops_commands
from idgate.ops import init as init_command
from idgate.ops import keys as ops_keys

log = logging.getLogger("idgate.config")


def configure_logging(level: str = "info") -> None:
    """Every record becomes one JSON line on stderr (:class:`JsonLineFormatter`), written in batches
    (:mod:`idgate.logsink`). Records do not look up the process, thread or task (no formatter prints them)."""
    handler = stderr_handler()
    handler.setFormatter(JsonLineFormatter())
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def rfc3339(created: float) -> str:
    """``created`` (seconds since the epoch) as RFC 3339 UTC with milliseconds: ``2026-05-01T12:00:00.123Z``."""
    seconds = int(created)
    millis = min(int((created - seconds) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, always starting with ``ts`` (RFC 3339 UTC, :func:`rfc3339`), ``level``
    (``debug`` … ``critical``) and ``logger``. A message that is already a JSON object (the audit line, the SPOA
    and SSO event lines) gets these three keys spliced in front of its own, so it is not parsed twice; any other
    message becomes ``msg``. An exception's traceback goes in ``exc``."""

    _second: int = -1
    _date: str = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # the date part changes once a second: format it once
            self._second, self._date = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        millis = min(int((record.created - second) * 1000), 999)
        head: dict[str, str] = {
            "ts": f"{self._date}.{millis:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.exc_info:
            head["exc"] = self.formatException(record.exc_info)
        message = record.getMessage()
        if message.startswith('{"') and message.endswith("}"):  # idgate's json.dumps lines; a dict repr has '
            if len(head) == 3:  # the common case, without json.dumps: the three values are JSON string-safe
                return (
                    '{"ts": "'
                    + head["ts"]
                    + '", "level": '
                    + encode_basestring_ascii(head["level"])
                    + ', "logger": '
                    + encode_basestring_ascii(record.name)
                    + ", "
                    + message[1:]
                )
            return json.dumps(head, ensure_ascii=True)[:-1] + ", " + message[1:]
        return json.dumps({**head, "msg": message}, ensure_ascii=True)


def _print_problems(heading: str, exc: ConfigError) -> None:
    print(f"{heading} {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)


def _load(path: str, *, workers: int | None = None) -> Config:
    """The validated config at ``path`` (``workers``: ``--workers``, replacing ``server.workers``) whose components
    all build (``idgate.runtime.preflight``).

    Raises:
        ConfigError: every problem found.
    """
    from idgate.runtime import preflight

    config = load_config(path, workers=workers)
    problems = preflight(config)
    if problems:
        raise ConfigError(problems)
    return config


def _check_config(path: str) -> int:
    try:
        config = _load(path)
    except ConfigError as exc:
        _print_problems(f"{path}:", exc)
        return 1
    warnings = config_warnings(config)
    if warnings:
        print(f"{path}: {len(warnings)} warning(s):", file=sys.stderr)
        for warning in warnings:
            print(f"  - {warning}", file=sys.stderr)
    print(f"{path}: OK\n{summarize(config)}")
    return 0


def _serve(path: str, *, host: str | None, port: int | None, log_level: str, workers: int | None = None) -> int:
    import uvicorn

    from idgate.runtime import create_app
    from idgate.supervisor import WorkerContext, run_workers, worker_argv, worker_count
    from idgate.tls import uvicorn_options

    try:
        config = _load(path, workers=workers)
    except ConfigError as exc:
        _print_problems(f"idgate: refusing to start, {path} has", exc)
        return 1
    configure_logging(log_level)
    worker = WorkerContext.from_environ()
    if worker is not None:
        worker.stop_with_supervisor()
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the app handles it (a forwarded key refetch)
    count = worker_count(config)
    if worker is None:
        for warning in config_warnings(config):
            log.warning("config warning: %s", warning)
    if worker is None and count > 1:
        argv = worker_argv(path, log_level=log_level)
        try:
            return run_workers(
                config,
                workers=count,
                host=host or config.server.host,
                port=port or config.server.port,
                worker_argv=argv,
            )
        except OSError as exc:
            print(f"idgate: refusing to start, cannot listen: {exc}", file=sys.stderr)
            return 1
    uv_config = uvicorn.Config(
        create_app(config, config_path=path, reload_on_sighup=True, worker=worker),
        host=host or config.server.host,
        port=port or config.server.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        proxy_headers=False,  # facts come from HAProxy's X-Idgate-* headers, peers from trusted_callers
        server_header=False,
        access_log=False,
        log_config=None,
        lifespan="on",
        **uvicorn_options(config.server.tls),  # HTTPS with server.tls (idgate.tls)
    )
    uvicorn.Server(uv_config).run(sockets=[worker.http_socket] if worker is not None else None)
    return 0


ADMIN_JWKS_REFRESH = "/admin/jwks/refresh"  # idgate.app's route (the CLI imports nothing of the service's layers)
DEFAULT_URL = "http://127.0.0.1:9180"


def _service_url(url: str | None, config_path: str | None) -> str:
    """``--url``, else ``server.host:port`` of ``--config`` (a wildcard host means this machine), else the default."""
    if url:
        return url.rstrip("/")
    if config_path is None:
        return DEFAULT_URL
    server = load_config(config_path).server
    host = "127.0.0.1" if server.host in ("", "0.0.0.0", "::") else server.host  # a wildcard bind: this machine
    return f"http://[{host}]:{server.port}" if ":" in host else f"http://{host}:{server.port}"


def _admin_post(
    prog: str,
    path: str,
    *,
    url: str | None,
    config_path: str | None,
    timeout: float,
    params: dict[str, str] | None = None,
) -> tuple[str, httpx.Response, Any] | None:
    """POST to a running idgate's admin ``path``: (endpoint, response, its JSON body or None). None, with the reason
    printed, when the config cannot be read or idgate cannot be reached (timeout in seconds)."""
    try:
        endpoint = _service_url(url, config_path) + path
    except ConfigError as exc:
        _print_problems(f"{prog}: {config_path} has", exc)
        return None
    try:
        response = httpx.post(endpoint, params=params, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        print(f"{prog}: cannot reach {endpoint}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return endpoint, response, body


def _jwks_refresh(*, url: str | None, config_path: str | None, issuer: str | None, timeout: float, raw: bool) -> int:
    prog = "idgate jwks refresh"
    params = {"issuer": issuer} if issuer else None
    answer = _admin_post(prog, ADMIN_JWKS_REFRESH, url=url, config_path=config_path, timeout=timeout, params=params)
    if answer is None:
        return 1
    endpoint, response, body = answer
    if response.status_code == 404 and isinstance(body, dict) and body.get("error") == "unknown_issuer":
        print(f"{prog}: idgate has no issuer named {issuer!r}", file=sys.stderr)
        return 1
    if (
        response.status_code not in (200, 502)
        or not isinstance(body, dict)
        or not isinstance(body.get("issuers"), list)
    ):
        print(f"{prog}: {endpoint} answered {response.status_code}: {response.text[:300]}", file=sys.stderr)
        return 1
    if raw:
        print(json.dumps(body, indent=2))
    for report in body["issuers"]:
        kids = ", ".join(str(k) for k in report.get("kids", []))
        if report.get("ok"):
            withdrawn = ", ".join(str(k) for k in report.get("withdrawn", []))
            line = f"{report.get('issuer')}: refetched, {len(report.get('kids', []))} key(s) ({kids}); "
            line += (
                f"withdrawn {withdrawn}; {report.get('purged_tokens', 0)} cached verification(s) dropped"
                if withdrawn
                else "nothing withdrawn"
            )
            print(line)
        else:
            print(
                f"{report.get('issuer')}: refetch FAILED ({report.get('error')}); still serving the last good keys "
                f"({kids})",
                file=sys.stderr,
            )
    return 0 if response.status_code == 200 else 1


ADMIN_RELOAD = "/admin/reload"  # idgate.app's route


def _reload(*, url: str | None, config_path: str | None, timeout: float) -> int:
    """``idgate reload``: ask a running idgate to re-read its configuration file; exit 0 applied, 1 otherwise."""
    prog = "idgate reload"
    answer = _admin_post(prog, ADMIN_RELOAD, url=url, config_path=config_path, timeout=timeout)
    if answer is None:
        return 1
    endpoint, response, body = answer
    if response.status_code not in (200, 400) or not isinstance(body, dict) or "applied" not in body:
        print(f"{prog}: {endpoint} answered {response.status_code}: {response.text[:300]}", file=sys.stderr)
        return 1
    if body["applied"]:
        print(f"reloaded: policy {body.get('policy')} (was {body.get('previous_policy')})")
        return 0
    problems = [str(p) for p in body.get("problems") or []]
    print(f"{prog}: refused, {len(problems)} problem(s); still serving {body.get('policy')}:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return 1


COMMANDS_GROUP = "idgate.commands"
"""Entry-point group of plugin commands: each entry loads a ``register(subparsers)`` callable that adds one
subcommand whose parser sets ``run`` (``Callable[[argparse.Namespace], int]``) as a default."""


def _plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for entry in sorted(importlib.metadata.entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(sub)


def version() -> str:
    """The installed distribution's version (``importlib.metadata``), or ``unknown`` when idgate is not installed."""
    try:
        return importlib.metadata.version("idgate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``idgate`` console script."""
    parser = argparse.ArgumentParser(prog="idgate", description="Identity-aware auth sidecar for HAProxy.")
    parser.add_argument("--version", action="version", version=f"idgate {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the auth service")
    serve.add_argument("--config", required=True, help="path to the YAML config")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes (override server.workers; default: cores with store.kind redis, else 1)",
    )
    serve.set_defaults(
        run=lambda a: _serve(a.config, host=a.host, port=a.port, log_level=a.log_level, workers=a.workers)
    )
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("config")
    check.set_defaults(run=lambda a: _check_config(a.config))
    jwks = sub.add_parser("jwks", help="act on a running idgate's issuer keys").add_subparsers(
        dest="action", required=True
    )
    refresh = jwks.add_parser(
        "refresh", help="refetch the issuers' keys now: drop withdrawn keys and their cached verifications"
    )
    refresh.add_argument("--issuer", help="only this issuer (its name in the config); default: every issuer")
    where = refresh.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"idgate's HTTP base URL (default {DEFAULT_URL}, or from --config)")
    where.add_argument("--config", help="take host and port from this config's server section")
    refresh.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    refresh.add_argument("--json", action="store_true", help="also print idgate's JSON answer")
    refresh.set_defaults(
        run=lambda a: _jwks_refresh(url=a.url, config_path=a.config, issuer=a.issuer, timeout=a.timeout, raw=a.json)
    )
    reload = sub.add_parser("reload", help="make a running idgate re-read its configuration file (like SIGHUP)")
    where = reload.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"idgate's HTTP base URL (default {DEFAULT_URL}, or from --config)")
    where.add_argument("--config", help="take host and port from this config's server section")
    reload.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    reload.set_defaults(run=lambda a: _reload(url=a.url, config_path=a.config, timeout=a.timeout))
    ops_commands.register(sub)
    init_command.register(sub)
    cache_commands.register(sub)
    ops_keys.register(sub)
    _plugin_commands(sub)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
