"""Echo upstream for tests and the demo: answers every request with what it received, and records it.

Run it as ``python -m idgate_devstack.echo --port N [--name NAME] [--host H]`` (``--port 0`` picks a free
port). Once listening it prints one line to stdout, ``echo NAME listening on HOST:PORT``, and flushes.

Every request except the two control calls is answered ``200`` with the JSON document (an ``EchoRecord``)::

    {"upstream": NAME, "method": "GET", "path": "/a/b", "query": "x=1",
     "headers": [["Host", "..."], ["x-auth-user", "alice"], ...]}

``headers`` lists all request header fields in arrival order with names exactly as received (HAProxy
sends them lower-cased). ``query`` is the raw query string without ``?`` (``""`` when absent). The
request body is read and discarded. The record is appended to an in-memory list.

Control calls (never recorded), for asserting what reached the upstream:

    GET  /__echo/requests   -> 200, JSON list of the records so far, oldest first
    POST /__echo/reset      -> 200, {"reset": <number of records dropped>}; clears the list

The server is a small HTTP/1.1 implementation on asyncio streams (keep-alive, ``Content-Length`` and
chunked request bodies, ``TCP_NODELAY``); it is a test tool, not a production server.

In-process use (pytest fixtures): ``EchoUpstream`` runs it as a subprocess::

    with EchoUpstream("app") as echo:
        echo.address        # "127.0.0.1:PORT", for IDGATE_UPSTREAM_APP
        echo.requests()     # list[EchoRecord]
        echo.reset()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import sys
from typing import TypedDict

from idgate_devstack.process import CONTROL_REQUESTS as CONTROL_REQUESTS
from idgate_devstack.process import CONTROL_RESET as CONTROL_RESET
from idgate_devstack.process import ReadyLineServer

MAX_HEAD_BYTES = 64 * 1024
"""Largest accepted request line + header block, in bytes (larger: 431 and close)."""
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest accepted request body, in bytes (larger: 413 and close)."""
READY_RE = re.compile(r"^echo (?P<name>\S+) listening on (?P<host>\S+):(?P<port>\d+)$")


class EchoRecord(TypedDict):
    """One recorded request, as returned by the echo and by ``GET /__echo/requests``."""

    upstream: str
    method: str
    path: str
    query: str
    headers: list[list[str]]
    """``[[name, value], ...]``: every request header, in order, names as received."""


class _BadRequest(Exception):
    """The request cannot be parsed; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class EchoServer:
    """The echo HTTP/1.1 server; holds the records of one running instance.

    ``name`` goes into every answer as ``"upstream"``. ``serve(host, port)`` runs until cancelled.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._records: list[EchoRecord] = []

    @property
    def records(self) -> list[EchoRecord]:
        """A copy of the records so far, oldest first."""
        return list(self._records)

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Start listening on ``host:port`` (``0``: any free port) and return the server."""
        return await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD_BYTES)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                keep_alive = await self._one_request(reader, writer)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except _BadRequest as exc:
            body = json.dumps({"error": exc.reason}).encode()
            with contextlib.suppress(ConnectionError):
                writer.write(_response(exc.status, body, close=True))
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read, answer and maybe record one request; return whether to keep the connection open."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise _BadRequest(431, "request head too large") from exc
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise _BadRequest(400, "truncated request head") from exc
            return False
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "bad request line")
        method, target, version = parts
        headers: list[list[str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "bad header line")
            headers.append([name, value.strip(" \t")])
        await _read_body(reader, headers)
        path, _, query = target.partition("?")
        connection = {token.strip().lower() for n, v in headers if n.lower() == "connection" for token in v.split(",")}
        keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection

        if method == "GET" and path == CONTROL_REQUESTS:
            body = json.dumps(self._records).encode()
        elif method == "POST" and path == CONTROL_RESET:
            body = json.dumps({"reset": len(self._records)}).encode()
            self._records.clear()
        else:
            record: EchoRecord = {
                "upstream": self.name,
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
            }
            self._records.append(record)
            body = json.dumps(record).encode()
        writer.write(_response(200, body, close=not keep_alive))
        await writer.drain()
        return keep_alive


async def _read_body(reader: asyncio.StreamReader, headers: list[list[str]]) -> None:
    """Read and discard the request body framed by ``Content-Length`` or chunked encoding."""
    te = [v.lower() for n, v in headers if n.lower() == "transfer-encoding"]
    cl = [v for n, v in headers if n.lower() == "content-length"]
    if te:
        if te[-1].split(",")[-1].strip() != "chunked" or cl:
            raise _BadRequest(400, "unsupported transfer-encoding")
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError as exc:
                raise _BadRequest(400, "bad chunk size") from exc
            total += size
            if total > MAX_BODY_BYTES:
                raise _BadRequest(413, "body too large")
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return
            await reader.readexactly(size + 2)
    if cl:
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise _BadRequest(400, "bad content-length")
        length = int(cl[0])
        if length > MAX_BODY_BYTES:
            raise _BadRequest(413, "body too large")
        await reader.readexactly(length)


_REASONS = {200: "OK", 400: "Bad Request", 413: "Content Too Large", 431: "Request Header Fields Too Large"}


def _response(status: int, body: bytes, *, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode("latin-1") + body


async def _serve(name: str, host: str, port: int) -> None:
    server = await EchoServer(name).start(host, port)
    bound = server.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"echo {name} listening on {shown}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; runs until interrupted. Returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m idgate_devstack.echo", description="Echo upstream for idgate tests."
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="listen port; 0 picks a free one")
    parser.add_argument("--name", default="echo", help='value of "upstream" in answers (default echo)')
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.name, args.host, args.port))
    return 0


class EchoUpstream(ReadyLineServer[EchoRecord]):
    """Runs the echo server as a subprocess (context manager), for pytest fixtures and the demo.

    ``port=0`` lets the child pick a free port; ``address`` / ``url`` tell which one once started.
    ``startup_timeout`` is in seconds. The child's stderr goes to this process's stderr.
    """

    kind = "echo upstream"
    ready_re = READY_RE

    def __init__(
        self, name: str = "echo", *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
    ) -> None:
        super().__init__(name, host=host, port=port, startup_timeout=startup_timeout)

    def command(self) -> list[str]:
        """The child's command line."""
        cmd = [sys.executable, "-m", "idgate_devstack.echo", "--host", self.host, "--port", str(self.port)]
        return [*cmd, "--name", self.name]


if __name__ == "__main__":
    sys.exit(main())
