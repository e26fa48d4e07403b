"""Microsoft Graph contract stub: the two endpoints idgate may call to resolve Entra ID groups overage.

This is NOT Microsoft Graph. It is a STUB that answers the documented shapes of Graph v1.0 for tests and the demo:

- ``GET /v1.0/users/{id}/transitiveMemberOf`` ("List a user's memberships (direct and transitive)",
  https://learn.microsoft.com/graph/api/user-list-transitivememberof): ``{"value": [{"@odata.type":
  "#microsoft.graph.group", "id": ...}, ...], "@odata.nextLink": ...}``, ``--page-size`` entries a page, the next
  page at ``?$skiptoken=<n>``; one ``#microsoft.graph.directoryRole`` entry first (users are members of roles
  too; they are not groups);
- ``POST /v1.0/users/{id}/getMemberObjects`` (https://learn.microsoft.com/graph/api/directoryobject-getmemberobjects):
  ``{"value": [ids]}``.

Authorization as far as the contract goes: a ``Bearer`` JWT whose (unverified) ``aud`` is
``https://graph.microsoft.com`` — the app-only token the issuer's client credentials grant gives — else 401
``InvalidAuthenticationToken``; the signature is not checked (a stub of the answer shapes, not of Graph's
authorization). An unknown user: 404 ``Request_ResourceNotFound``. Errors use Graph's
``{"error": {"code", "message"}}``.

Run it as::

    python -m idgate_devstack.graph_stub --port N --users FILE.json [--page-size 2] [--tls-cert PEM --tls-key PEM]

``FILE.json`` maps a user id (Entra's ``oid``) to its group ids. Ready line: ``graph-stub listening on HOST:PORT``.
Control calls (never authenticated): ``POST /__stub/fail`` ``{"status": 503}`` makes every Graph call answer that
status (``{"status": 0}`` restores), ``GET /__echo/requests`` lists the calls received, ``POST /__echo/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import re
import ssl
import sys
from pathlib import Path
from typing import Any, cast

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idgate_devstack.process import ReadyLineServer

GRAPH_AUDIENCE = "https://graph.microsoft.com"
READY_RE = re.compile(r"^graph-stub listening on \S+:(?P<port>\d+)$")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _audience(authorization: str | None) -> object:
    """The unverified ``aud`` of a ``Bearer`` JWT, None when there is none."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    parts = authorization.removeprefix("Bearer ").split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload.get("aud") if isinstance(payload, dict) else None


def build_app(users: dict[str, list[str]], *, page_size: int) -> Starlette:
    """The stub's ASGI app over ``users`` (user id → group ids)."""
    state: dict[str, Any] = {"fail": 0, "requests": []}

    def check(request: Request) -> Response | None:
        state["requests"].append({"method": request.method, "path": request.url.path, "query": request.url.query})
        if state["fail"]:
            return _error(state["fail"], "serviceNotAvailable", "the stub was told to fail")
        if _audience(request.headers.get("authorization")) != GRAPH_AUDIENCE:
            return _error(401, "InvalidAuthenticationToken", "Access token is empty or not for Microsoft Graph.")
        if request.path_params["user"] not in users:
            return _error(404, "Request_ResourceNotFound", f"Resource '{request.path_params['user']}' does not exist")
        return None

    async def transitive_member_of(request: Request) -> Response:
        refused = check(request)
        if refused is not None:
            return refused
        user = request.path_params["user"]
        entries = [{"@odata.type": "#microsoft.graph.directoryRole", "id": "role-directory-readers"}] + [
            {"@odata.type": "#microsoft.graph.group", "id": g} for g in users[user]
        ]
        start = int(request.query_params.get("$skiptoken", "0") or 0)
        body: dict[str, Any] = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects",
            "value": entries[start : start + page_size],
        }
        if start + page_size < len(entries):
            base = str(request.url).split("?")[0]
            body["@odata.nextLink"] = f"{base}?$select=id&$skiptoken={start + page_size}"
        return JSONResponse(body)

    async def get_member_objects(request: Request) -> Response:
        refused = check(request)
        if refused is not None:
            return refused
        return JSONResponse({"value": list(users[request.path_params["user"]])})

    async def fail(request: Request) -> Response:
        state["fail"] = int((await request.json()).get("status", 0))
        return JSONResponse({"fail": state["fail"]})

    async def requests(request: Request) -> Response:
        return JSONResponse(state["requests"])

    async def reset(request: Request) -> Response:
        dropped, state["requests"] = len(state["requests"]), []
        return JSONResponse({"reset": dropped})

    return Starlette(
        routes=[
            Route("/v1.0/users/{user}/transitiveMemberOf", transitive_member_of, methods=["GET"]),
            Route("/v1.0/users/{user}/getMemberObjects", get_member_objects, methods=["POST"]),
            Route("/__stub/fail", fail, methods=["POST"]),
            Route("/__echo/requests", requests, methods=["GET"]),
            Route("/__echo/reset", reset, methods=["POST"]),
        ]
    )


async def _serve(app: Starlette, host: str, port: int, tls: tuple[str, str] | None) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    print(f"graph-stub listening on {bound[0]}:{bound[1]}", flush=True)
    await task


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; runs until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m idgate_devstack.graph_stub", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free one")
    parser.add_argument("--users", required=True, help="JSON file: user id -> list of group ids")
    parser.add_argument("--page-size", type=int, default=2)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args(argv)
    users = json.loads(Path(args.users).read_text(encoding="utf-8"))
    tls = (args.tls_cert, args.tls_key) if args.tls_cert and args.tls_key else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(build_app(users, page_size=args.page_size), args.host, args.port, tls))
    return 0


class GraphStub(ReadyLineServer[dict[str, Any]]):
    """Runs the stub as a subprocess (context manager). ``url`` is its https (with TLS) or http origin;
    ``graph_url`` the ``entra.graph_url`` to give idgate. ``users``: user id → group ids."""

    kind = "graph stub"
    ready_re = READY_RE

    def __init__(
        self,
        users: dict[str, list[str]],
        *,
        users_file: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        page_size: int = 2,
        tls: tuple[Path, Path] | None = None,
        ca_file: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        """``tls``: (certificate, key) PEM files to serve HTTPS; ``ca_file``: the CA the control calls trust."""
        super().__init__("graph", host=host, port=port, startup_timeout=startup_timeout)
        users_file.write_text(json.dumps(users), encoding="utf-8")
        self._users_file = users_file
        self._page_size = page_size
        self._tls = tls
        self._ca_file = ca_file

    def command(self) -> list[str]:
        """The child's command line."""
        cmd = [sys.executable, "-m", "idgate_devstack.graph_stub", "--host", self.host, "--port", str(self.port)]
        cmd += ["--users", str(self._users_file), "--page-size", str(self._page_size)]
        if self._tls:
            cmd += ["--tls-cert", str(self._tls[0]), "--tls-key", str(self._tls[1])]
        return cmd

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.address}"

    def _control(self, method: str, path: str, body: object = None) -> httpx.Response:
        verify: ssl.SSLContext | bool = True
        if self._tls and self._ca_file:
            verify = ssl.create_default_context(cafile=str(self._ca_file))
        with httpx.Client(verify=verify, timeout=5.0) as client:
            response = client.request(method, self.url + path, json=body)
        response.raise_for_status()
        return response

    def fail(self, status: int) -> None:
        """Answer every Graph call with ``status`` from now on (0: answer normally again)."""
        self._control("POST", "/__stub/fail", {"status": status})

    def requests(self) -> list[dict[str, Any]]:
        """The Graph calls received so far: ``{"method", "path", "query"}``, oldest first."""
        return cast(list[dict[str, Any]], self._control("GET", "/__echo/requests").json())

    def reset(self) -> None:
        """Forget the calls received."""
        self._control("POST", "/__echo/reset")

    @property
    def graph_url(self) -> str:
        """The Graph v1.0 root on this stub (``entra.graph_url``)."""
        return f"{self.url}/v1.0"


if __name__ == "__main__":
    sys.exit(main())
