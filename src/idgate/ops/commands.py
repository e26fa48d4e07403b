"""The operator subcommands of the ``idgate`` command line: ``explain``, ``status``, ``haproxy drain|enable|weight``.

Exit codes: 0 done (``explain``: whatever the decision), 1 invalid configuration, 2 usage error (bad claims JSON,
an unknown issuer name, a token that is not a JWS with ``--no-verify``, not ``BACKEND/SERVER``), and for the Runtime
API (:data:`EXIT_CODES`): 3 the socket is missing, refused or silent, 4 permission denied (the socket file's mode, or
a socket below ``level admin``), 5 HAProxy refused the command (unknown backend or server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from idgate.config_load import load_config
from idgate.errors import ConfigError, IdgateError
from idgate.ops.explain import Caller, as_json, explain, render_text, request_facts
from idgate.ops.status import collect, render
from idgate.runtime_api import RuntimeApi, RuntimeApiError

DEFAULT_SOCKET = "/tmp/idgate-haproxy.sock"  # noqa: S108 - haproxy.cfg's IDGATE_STATS_SOCKET default
"""The Runtime API address when neither ``--socket`` nor ``$IDGATE_STATS_SOCKET`` names one."""
EXIT_CODES = {"missing": 3, "refused": 3, "timeout": 3, "permission": 4, "error": 5}

STDIN = "-"
"""``--token -``: read the token from standard input (keeps it out of the shell history and ``ps``)."""


def _fail(command: str, message: str, code: int) -> int:
    print(f"idgate {command}: {message}", file=sys.stderr)
    return code


def _caller(args: argparse.Namespace) -> Caller:
    token = sys.stdin.readline().strip() if args.token == STDIN else args.token
    claims = None
    if args.claims is not None:
        try:
            claims = json.loads(args.claims)
        except json.JSONDecodeError as exc:
            raise IdgateError(f"--claims is not JSON: {exc}") from None
        if not isinstance(claims, dict):
            raise IdgateError("--claims must be a JSON object")
    return Caller(
        token=token,
        verify=not args.no_verify,
        claims=claims,
        user=args.user,
        groups=tuple(args.group),
        email=args.email,
        issuer=args.issuer,
    )


def run_explain(args: argparse.Namespace) -> int:
    """``idgate explain``: print the decision for the described request (text, or ``--json``)."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail("explain", f"{args.config}: " + "; ".join(exc.problems), 1)
    try:
        facts = request_facts(args.method, args.target, host=args.host)
        result = asyncio.run(explain(config, facts, _caller(args)))
    except IdgateError as exc:
        return _fail("explain", str(exc), 2)
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    else:
        print(render_text(result), end="")
    return 0


def _sockets(args: argparse.Namespace) -> list[RuntimeApi]:
    addresses = args.socket or [os.environ.get("IDGATE_STATS_SOCKET") or DEFAULT_SOCKET]
    return [RuntimeApi(address=a) for a in addresses]


def run_status(args: argparse.Namespace) -> int:
    """``idgate status``: the screen (or ``--json``) once, or every ``--watch`` seconds until Ctrl-C."""
    urls = list(args.metrics)
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return _fail("status", f"{args.config}: " + "; ".join(exc.problems), 1)
        host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::", "") else config.server.host
        urls.append(f"http://{host}:{config.server.port}/metrics")
    apis = _sockets(args)
    try:
        while True:
            doc = asyncio.run(collect(apis, urls))
            if args.json:
                print(json.dumps(doc), flush=True)
            else:
                print(("\x1b[H\x1b[2J" if args.watch else "") + render(doc), end="", flush=True)
            if not args.watch:
                break
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    errors = [h for h in doc["haproxy"] if "error" in h]  # type: ignore[attr-defined]
    for hap in errors:
        print(f"idgate status: {hap['error']}", file=sys.stderr)
    return EXIT_CODES[str(errors[0]["error_kind"])] if errors else 0


def run_haproxy(args: argparse.Namespace) -> int:
    """``idgate haproxy drain|enable|weight BACKEND/SERVER [N]`` on every ``--socket`` address."""
    backend, slash, server = args.server.partition("/")
    if not slash or not backend or not server:
        return _fail("haproxy", f"expected BACKEND/SERVER, got {args.server!r}", 2)
    if args.action == "weight" and args.weight is None:
        return _fail("haproxy", "weight needs a value: idgate haproxy weight BACKEND/SERVER N", 2)

    async def run(api: RuntimeApi) -> None:
        if args.action == "weight":
            await api.set_weight(backend, server, args.weight)
        else:
            await api.set_state(backend, server, "drain" if args.action == "drain" else "ready")

    for api in _sockets(args):
        try:
            asyncio.run(run(api))
        except RuntimeApiError as exc:
            return _fail("haproxy", str(exc), EXIT_CODES[exc.kind])
        print(f"{api.address}: {args.action} {args.server}" + (f" {args.weight}" if args.action == "weight" else ""))
    return 0


def _socket_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        action="append",
        default=[],
        help="HAProxy's Runtime API: unix:/path, /path or tcp:host:port (repeatable; default $IDGATE_STATS_SOCKET, "
        f"else {DEFAULT_SOCKET})",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator subcommands to the ``idgate`` parser."""
    p = sub.add_parser(
        "explain",
        help="the decision the policy gives a described request, and why",
        description="Decide a described request with the real policy and DecisionEngine; print the decision, the "
        "route, its rule, the reason codes and the headers the upstream would get.",
    )
    p.add_argument("--config", required=True, help="idgate's YAML config")
    p.add_argument("target", help="a path (/admin) or a URL (https://host/path?query)")
    p.add_argument("--method", "-X", default="GET")
    p.add_argument("--host", help="the Host HAProxy saw (default: the URL's, else localhost)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--token", help="a bearer token, verified against the issuer's JWKS (network); - reads stdin")
    who.add_argument("--claims", help="the caller's claims as a JSON object (not verified)")
    who.add_argument("--user", help="the caller's username and subject (not verified); with --group, --email")
    p.add_argument("--group", action="append", default=[], help="a group of --user (repeatable)")
    p.add_argument("--email", help="the verified email of --user")
    p.add_argument("--issuer", help="the configured issuer's name for --claims/--user (default: the first)")
    p.add_argument("--no-verify", action="store_true", help="read --token's claims WITHOUT verifying it")
    p.add_argument("--json", action="store_true", help="one JSON document instead of the screen")
    p.set_defaults(run=run_explain)

    st = sub.add_parser("status", help="HAProxy's frontends, backends and servers, and idgate's replicas and denies")
    _socket_option(st)
    st.add_argument("--config", help="idgate's config: its /metrics is read from server.host:server.port")
    st.add_argument("--metrics", action="append", default=[], help="an idgate /metrics URL (repeatable)")
    st.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    st.add_argument("--json", action="store_true", help="one JSON document per refresh")
    st.set_defaults(run=run_status)

    hp = sub.add_parser("haproxy", help="routine Runtime API commands: drain, enable, weight")
    hp.add_argument("action", choices=["drain", "enable", "weight"])
    hp.add_argument("server", metavar="BACKEND/SERVER")
    hp.add_argument("weight", nargs="?", type=int, help="the weight (0 to 256), for weight")
    _socket_option(hp)
    hp.set_defaults(run=run_haproxy)
