"""Variant (f): an SPOA agent that does no work -- the SPOE protocol ceiling for a Python agent.

``python bench/ibench/null_agent.py --port N`` serves idgate's own SPOP codec and agent loop
(``idgate.spoe.agent.SpoaAgent``, on uvloop when installed, as ``idgate serve`` runs it) with a handler that returns a
fixed allow without looking at the message: ``txn.idgate.status = "200"``, ``decision = "allow"``,
``upstream = "app"``. The shipped haproxy.cfg in SPOE mode then routes every request to ``be_app``.
Prints ``null-agent listening on HOST:PORT`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
from collections.abc import Mapping, Sequence

from idgate.spoe.agent import SpoaAgent
from idgate.spoe.spop import Action, Scope, SetVar, Value

ALLOW: tuple[Action, ...] = (
    SetVar(scope=Scope.TRANSACTION, name="status", value="200"),
    SetVar(scope=Scope.TRANSACTION, name="decision", value="allow"),
    SetVar(scope=Scope.TRANSACTION, name="upstream", value="app"),
)


async def allow_everything(message: str, args: Mapping[str, Value]) -> Sequence[Action]:
    """The handler: the same three actions for every message, no work at all."""
    return ALLOW


async def serve(host: str, port: int) -> None:
    """Run the agent until cancelled."""
    agent = SpoaAgent(handler=allow_everything)
    await agent.start(host, port)
    print(f"null-agent listening on {host}:{agent.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await agent.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    runner = asyncio.run
    if importlib.util.find_spec("uvloop"):
        import uvloop

        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port))


if __name__ == "__main__":
    main()
