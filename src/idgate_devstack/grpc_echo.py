"""gRPC echo upstream for tests and the demo: answers with what it received, and records every call.

A grpcio server without generated code: each message is one JSON value in UTF-8 (an empty message reads as null).
Service ``demo.Echo``:

    /demo.Echo/Whoami  unary: any JSON -> the call's record (below)
    /demo.Echo/Admin   unary: same as Whoami (a second method, for per-method policies)
    /demo.Echo/Ticks   server stream: {"count": 0..1000 (3), "interval": 0..600 s (0)} -> {"tick": i} for i < count,
                       each after ``interval`` seconds of silence
    /demo.Echo/Chat    bidi: per request {"say": ANY, "delay": 0..600 s (0)} -> {"echo": ANY} after ``delay`` s;
                       ends when the client half-closes

Bad JSON or out-of-range fields end the call with INVALID_ARGUMENT; waits end early when the call is cancelled or
its deadline passes. Each ``demo.Echo`` call appends a ``GrpcRecord`` when it starts::

    {"method": "/demo.Echo/Whoami", "metadata": [["authorization", "Bearer x"], ["t-bin", "AP8="]],
     "authority": "127.0.0.1:50051"}

``metadata`` is the invocation metadata in arrival order, keys as received, ``-bin`` values (bytes) base64-encoded
(standard alphabet, padded); ``authority`` is the HTTP/2 ``:authority`` the server saw, or null if grpcio hides it.
Control calls, on the upstream's own port (never through HAProxy), not recorded:

    /idgate.devstack.Control/Requests  -> JSON list of the records so far, oldest first
    /idgate.devstack.Control/Reset     -> {"reset": <number of records dropped>}; clears the list

``python -m idgate_devstack.grpc_echo serve --port P [--host H] [--name N] [--tls-cert PEM --tls-key PEM]`` prints
``grpc-echo N listening on HOST:PORT`` once listening (port 0: a free one) and exits 0 on SIGTERM/SIGINT; plaintext
h2c unless TLS files are given. ``... call --target HOST:PORT [options] METHOD [JSON]`` makes one call and prints
each response as a JSON line, exit 0 (see ``--help``); on a gRPC error it prints ``status=CODE message=DETAILS`` to
stderr and exits 1 (the client side lives in ``idgate_devstack.grpc_client``). ``GrpcUpstream`` runs ``serve`` as a
subprocess, for pytest fixtures and the demo::

    with GrpcUpstream("grpc") as up, up.channel() as channel:
        echo_stub(channel).whoami({"hi": 1}, metadata=[("x-user", "alice")])
        up.requests()       # list[GrpcRecord]
"""

from __future__ import annotations

import argparse
import base64
import functools
import re
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn, cast

# grpcio ships no type information: everything taken from it is ``Any`` here.
import grpc  # type: ignore[import-untyped,unused-ignore]

from idgate_devstack.grpc_client import (
    ADMIN,
    CHAT,
    CONTROL_REQUESTS_METHOD,
    CONTROL_RESET_METHOD,
    CONTROL_SERVICE,
    ECHO_SERVICE,
    TICKS,
    WHOAMI,
    GrpcRecord,
    callable_for,
    json_deserializer,
    json_serializer,
    open_channel,
    run_call,
)
from idgate_devstack.process import CONTROL_TIMEOUT_SECONDS, ReadyLineServer

MAX_TICKS = 1000
MAX_WAIT_SECONDS = 600.0
"""Largest accepted ``interval`` / ``delay``, in seconds."""
MAX_WORKERS = 32
"""Server threads, i.e. calls served at once (a streaming call holds one while it runs)."""
STOP_GRACE_SECONDS = 1.0
"""On SIGTERM/SIGINT, calls in flight get this long (seconds) before they are cancelled."""
READY_RE = re.compile(r"^grpc-echo (?P<name>\S+) listening on (?P<host>\S+):(?P<port>\d+)$")


def _abort(context: Any, message: str) -> NoReturn:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    raise AssertionError("unreachable: context.abort raises")


def _parse(data: bytes, context: Any) -> Any:
    try:
        return json_deserializer(data)
    except ValueError:
        _abort(context, "request is not UTF-8 JSON")


def _fields(request: Any, context: Any) -> dict[str, Any]:
    if request is None:
        return {}
    if not isinstance(request, dict):
        _abort(context, "request must be a JSON object")
    return request


def _number(
    fields: dict[str, Any], key: str, default: float, top: float, context: Any, *, integer: bool = False
) -> Any:
    value = fields.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float) or not 0 <= value <= top:
        _abort(context, f"{key} must be {'an integer' if integer else 'a number'} from 0 to {top:g}")
    return value


def _done_event(context: Any) -> threading.Event:
    """An event set when the call ends (completed, cancelled or past its deadline)."""
    done = threading.Event()
    if not context.add_callback(done.set):
        done.set()
    return done


def _pause(context: Any, done: threading.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless the call ends first; whether the call is still active."""
    if seconds > 0:
        done.wait(seconds)
    return bool(context.is_active())


def _authority(context: Any) -> str | None:
    # grpcio's public API does not expose :authority; this reads a private attribute, so any failure means None.
    try:
        host = context._rpc_event.call_details.host
        return host.decode("utf-8", "replace") if isinstance(host, bytes) else str(host) if host else None
    except Exception:
        return None


class GrpcEchoServer:
    """The handlers and records of one running gRPC echo; thread safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[GrpcRecord] = []

    def records(self) -> list[GrpcRecord]:
        """A copy of the records so far, oldest first."""
        with self._lock:
            return list(self._records)

    def reset(self) -> int:
        """Clear the records; the number dropped."""
        with self._lock:
            count = len(self._records)
            self._records.clear()
            return count

    def handlers(self) -> tuple[Any, ...]:
        """The generic handlers of ``demo.Echo`` and of the control service, for ``grpc.server``."""
        ser = {"response_serializer": json_serializer}
        echo = {
            "Whoami": grpc.unary_unary_rpc_method_handler(functools.partial(self._unary, WHOAMI), **ser),
            "Admin": grpc.unary_unary_rpc_method_handler(functools.partial(self._unary, ADMIN), **ser),
            "Ticks": grpc.unary_stream_rpc_method_handler(self._ticks, **ser),
            "Chat": grpc.stream_stream_rpc_method_handler(self._chat, **ser),
        }
        control = {
            "Requests": grpc.unary_unary_rpc_method_handler(lambda _req, _ctx: self.records(), **ser),
            "Reset": grpc.unary_unary_rpc_method_handler(lambda _req, _ctx: {"reset": self.reset()}, **ser),
        }
        return (
            grpc.method_handlers_generic_handler(ECHO_SERVICE, echo),
            grpc.method_handlers_generic_handler(CONTROL_SERVICE, control),
        )

    def _record(self, method: str, context: Any) -> GrpcRecord:
        metadata = [
            [key, base64.b64encode(value).decode() if isinstance(value, bytes) else value]
            for key, value in context.invocation_metadata() or ()
        ]
        record: GrpcRecord = {"method": method, "metadata": metadata, "authority": _authority(context)}
        with self._lock:
            self._records.append(record)
        return record

    def _unary(self, method: str, data: bytes, context: Any) -> GrpcRecord:
        record = self._record(method, context)
        _parse(data, context)
        return record

    def _ticks(self, data: bytes, context: Any) -> Iterator[dict[str, int]]:
        self._record(TICKS, context)
        fields = _fields(_parse(data, context), context)
        count = _number(fields, "count", 3, MAX_TICKS, context, integer=True)
        interval = _number(fields, "interval", 0, MAX_WAIT_SECONDS, context)
        done = _done_event(context)
        for tick in range(count):
            if not _pause(context, done, interval):
                return
            yield {"tick": tick}

    def _chat(self, requests: Iterator[bytes], context: Any) -> Iterator[dict[str, Any]]:
        self._record(CHAT, context)
        done = _done_event(context)
        for data in requests:
            fields = _fields(_parse(data, context), context)
            if not _pause(context, done, _number(fields, "delay", 0, MAX_WAIT_SECONDS, context)):
                return
            yield {"echo": fields.get("say")}


def serve(name: str, host: str, port: int, *, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
    """Serve on ``host:port`` (``0``: a free port), print the ready line, and return after SIGTERM or SIGINT.

    TLS when ``tls_cert`` and ``tls_key`` (PEM files) are given. Raises ``RuntimeError`` if the port cannot be bound.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS))
    server.add_generic_rpc_handlers(GrpcEchoServer().handlers())
    shown = f"[{host}]" if ":" in host else host
    if tls_cert is not None and tls_key is not None:
        creds = grpc.ssl_server_credentials([(tls_key.read_bytes(), tls_cert.read_bytes())])
        bound = server.add_secure_port(f"{shown}:{port}", creds)
    else:
        bound = server.add_insecure_port(f"{shown}:{port}")
    if not bound:
        raise RuntimeError(f"cannot listen on {shown}:{port}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: stop.set())
    server.start()
    print(f"grpc-echo {name} listening on {shown}:{bound}", flush=True)
    while not stop.wait(1.0):
        pass
    server.stop(STOP_GRACE_SECONDS).wait()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``serve`` or ``call``). Returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m idgate_devstack.grpc_echo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="run the gRPC echo upstream until SIGTERM/SIGINT")
    srv.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    srv.add_argument("--port", type=int, required=True, help="listen port; 0 picks a free one")
    srv.add_argument("--name", default="grpc", help="name in the ready line (default grpc)")
    srv.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM); needs --tls-key")
    srv.add_argument("--tls-key", type=Path, help="private key (PEM) of --tls-cert")
    cli = sub.add_parser("call", help="make one call and print the responses as JSON lines")
    cli.add_argument("--target", required=True, help="HOST:PORT to connect to")
    cli.add_argument("--ca", type=Path, help="use TLS, trusting this CA certificate (PEM); default plaintext")
    cli.add_argument("--server-name", help=":authority to send and, with --ca, the certificate name to expect")
    cli.add_argument("--token", help="send 'authorization: Bearer TOKEN'")
    cli.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="extra metadata; repeat")
    cli.add_argument("--timeout", type=float, default=10.0, help="deadline of the call in seconds (default 10)")
    cli.add_argument("method", metavar="METHOD", help="Whoami, Admin, Ticks, Chat or /pkg.Service/Method")
    cli.add_argument("json", metavar="JSON", nargs="?", help="the request (Chat: a list of requests)")
    args = parser.parse_args(argv)
    if args.command == "call":
        return run_call(cli, args)
    if (args.tls_cert is None) != (args.tls_key is None):
        srv.error("--tls-cert and --tls-key go together")
    serve(args.name, args.host, args.port, tls_cert=args.tls_cert, tls_key=args.tls_key)
    return 0


class GrpcUpstream(ReadyLineServer[GrpcRecord]):
    """Runs the gRPC echo as a subprocess (context manager), for pytest fixtures and the demo.

    ``port=0`` lets the child pick a free port; ``address`` tells which one once started. With ``tls_cert`` and
    ``tls_key`` (PEM) it serves TLS; then ``ca_file``, the CA that issued the certificate (which must cover the name
    ``localhost``), is required too, for ``channel()`` and the control calls; otherwise ``ValueError``.
    ``startup_timeout`` is in seconds. The child's stderr goes to ours.
    """

    kind = "grpc upstream"
    ready_re = READY_RE

    def __init__(
        self,
        name: str = "grpc",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        ca_file: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        if not (tls_cert is None) == (tls_key is None) == (ca_file is None):
            raise ValueError("TLS needs tls_cert, tls_key and ca_file, together")
        super().__init__(name, host=host, port=port, startup_timeout=startup_timeout)
        self.tls_cert, self.tls_key, self.ca_file = tls_cert, tls_key, ca_file

    def command(self) -> list[str]:
        """The child's command line."""
        cmd = [sys.executable, "-m", "idgate_devstack.grpc_echo", "serve", "--name", self.name]
        cmd += ["--host", self.host, "--port", str(self.port)]
        if self.tls_cert is not None and self.tls_key is not None:
            cmd += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        return cmd

    def channel(self) -> Any:
        """A new ``grpc.Channel`` straight to the upstream (with TLS: trusting ``ca_file``, name ``localhost``)."""
        return open_channel(self.address, ca_file=self.ca_file, server_name="localhost" if self.ca_file else None)

    def _control(self, method: str) -> Any:
        with self.channel() as channel:
            return callable_for(channel, method, "unary")(None, timeout=CONTROL_TIMEOUT_SECONDS)

    def requests(self) -> list[GrpcRecord]:
        """The records so far (``Control/Requests``), oldest first. Raises ``grpc.RpcError`` on failure."""
        return cast(list[GrpcRecord], self._control(CONTROL_REQUESTS_METHOD))

    def reset(self) -> None:
        """Clear the records (``Control/Reset``). Raises ``grpc.RpcError`` on failure."""
        self._control(CONTROL_RESET_METHOD)


if __name__ == "__main__":
    sys.exit(main())
