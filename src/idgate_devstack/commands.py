"""The dev harness's ``idgate`` subcommands, registered through the ``idgate.commands`` entry-point group.

Light on purpose: ``idgate serve`` loads every registered command's ``register``, so the demo's own imports (grpcio,
the IdP driver, ...) happen only when ``idgate demo`` runs.
"""

from __future__ import annotations

import argparse


def _run_demo(args: argparse.Namespace) -> int:
    from idgate_devstack.demo import run_demo

    return run_demo(https_port=args.https_port, check=args.check, mode=args.mode)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``idgate demo``: HAProxy + idgate + the test IdP + sample upstreams on loopback."""
    demo = sub.add_parser("demo", help="run HAProxy + idgate + test IdP + sample upstreams on loopback")
    demo.add_argument("--https-port", type=int, default=8443, help="HAProxy's HTTPS port (default 8443)")
    demo.add_argument("--check", action="store_true", help="send a few requests through the stack, then exit")
    demo.add_argument("--mode", choices=["spoe", "auth_request"], default="spoe", help="how HAProxy asks idgate")
    demo.set_defaults(run=_run_demo)
