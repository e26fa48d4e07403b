"""The ``idgate`` command line.

    idgate serve --config FILE        run the auth service (uvicorn in-process; uvloop and httptools when installed;
                                      HTTPS with server.tls)
    idgate check-config FILE          validate; print every problem (exit 1) or a one-screen summary (exit 0)

More commands come from installed plugins (entry-point group ``idgate.commands``): a source checkout's
``idgate_devstack`` adds ``idgate demo`` (HAProxy + idgate + the test IdP + sample upstreams on loopback). idgate itself
never imports the dev harness.

Exit codes: 0 success, 1 invalid configuration, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence

from idgate.config_load import load_config, summarize
from idgate.errors import ConfigError


def configure_logging(level: str = "info") -> None:
    """Audit lines (already JSON) go to stderr as they are; other records get a JSON envelope too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith("{"):
            return message
        return json.dumps(
            {
                "ts": self.formatTime(record),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": message,
            }
        )


def _print_problems(heading: str, exc: ConfigError) -> None:
    print(f"{heading} {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)


def _check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(f"{path}:", exc)
        return 1
    print(f"{path}: OK\n{summarize(config)}")
    return 0


def _serve(path: str, *, host: str | None, port: int | None, log_level: str) -> int:
    import uvicorn

    from idgate.runtime import create_app
    from idgate.tls import uvicorn_options

    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(f"idgate: refusing to start, {path} has", exc)
        return 1
    configure_logging(log_level)
    uv_config = uvicorn.Config(
        create_app(config),
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
    uvicorn.Server(uv_config).run()
    return 0


COMMANDS_GROUP = "idgate.commands"
"""Entry-point group of plugin commands: each entry loads a ``register(subparsers)`` callable that adds one
subcommand whose parser sets ``run`` (``Callable[[argparse.Namespace], int]``) as a default."""


def _plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for entry in sorted(importlib.metadata.entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``idgate`` console script."""
    parser = argparse.ArgumentParser(prog="idgate", description="Identity-aware auth sidecar for HAProxy.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the auth service")
    serve.add_argument("--config", required=True, help="path to the YAML config")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=lambda a: _serve(a.config, host=a.host, port=a.port, log_level=a.log_level))
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("config")
    check.set_defaults(run=lambda a: _check_config(a.config))
    _plugin_commands(sub)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
