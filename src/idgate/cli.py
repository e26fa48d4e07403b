"""The ``idgate`` command line.

    idgate serve --config FILE        run the auth service (uvicorn in-process; uvloop and httptools when installed)
    idgate check-config FILE          validate; print every problem (exit 1) or a one-screen summary (exit 0)
    idgate demo                       HAProxy + idgate + the test IdP + sample upstreams on loopback

Exit codes: 0 success, 1 invalid configuration, 2 usage error.
"""

from __future__ import annotations

import argparse
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

    from idgate.app import create_app

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
    )
    uvicorn.Server(uv_config).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``idgate`` console script."""
    parser = argparse.ArgumentParser(prog="idgate", description="Identity-aware auth sidecar for HAProxy.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the auth service")
    serve.add_argument("--config", required=True, help="path to the YAML config")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("config")
    demo = sub.add_parser("demo", help="run HAProxy + idgate + test IdP + sample upstreams on loopback")
    demo.add_argument("--https-port", type=int, default=8443, help="HAProxy's HTTPS port (default 8443)")
    demo.add_argument("--check", action="store_true", help="send a few requests through the stack, then exit")
    demo.add_argument("--mode", choices=["spoe", "auth_request"], default="spoe", help="how HAProxy asks idgate")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "serve":
        return _serve(args.config, host=args.host, port=args.port, log_level=args.log_level)
    from idgate.demo import run_demo

    return run_demo(https_port=args.https_port, check=args.check, mode=args.mode)


if __name__ == "__main__":
    sys.exit(main())
