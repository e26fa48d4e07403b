"""The operator subcommands of the ``idgate`` command line: ``explain`` (more in :func:`register`).

Exit codes: 0 explained (whatever the decision), 1 invalid configuration, 2 usage error (bad claims JSON, an unknown
issuer name, a token that is not a JWS with ``--no-verify``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from idgate.config_load import load_config
from idgate.errors import ConfigError, IdgateError
from idgate.ops.explain import Caller, as_json, explain, render_text, request_facts

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
