"""Client side of the gRPC echo (``idgate_devstack.grpc_echo``): the ``demo.Echo`` contract, channels and calls.

Messages are one JSON value each, in UTF-8 (an empty message reads as null); see ``grpc_echo`` for the service.
``open_channel`` opens a plaintext or TLS channel, ``echo_stub`` wraps it in typed calls, and ``run_call`` is the
``python -m idgate_devstack.grpc_echo call`` command (one call, each response printed as a JSON line; on a gRPC
error ``status=CODE message=DETAILS`` on stderr and exit status 1).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

# grpcio ships no type information: everything taken from it is ``Any`` here.
import grpc  # type: ignore[import-untyped,unused-ignore]

ECHO_SERVICE = "demo.Echo"
WHOAMI, ADMIN, TICKS, CHAT = (f"/{ECHO_SERVICE}/{m}" for m in ("Whoami", "Admin", "Ticks", "Chat"))
CONTROL_SERVICE = "idgate.devstack.Control"
CONTROL_REQUESTS_METHOD = f"/{CONTROL_SERVICE}/Requests"
CONTROL_RESET_METHOD = f"/{CONTROL_SERVICE}/Reset"

Metadata = Sequence[tuple[str, str | bytes]]
"""Call metadata as grpcio takes it: ``(key, value)`` pairs, lower-case keys, bytes values for ``-bin`` keys."""
Kind = Literal["unary", "stream", "bidi"]
KINDS: dict[str, Kind] = {WHOAMI: "unary", ADMIN: "unary", TICKS: "stream", CHAT: "bidi"}


class GrpcRecord(TypedDict):
    """One recorded ``demo.Echo`` call, as answered by Whoami/Admin and listed by the Requests control call."""

    method: str
    metadata: list[list[str]]
    """``[[key, value], ...]``: the invocation metadata in order; ``-bin`` values base64-encoded."""
    authority: str | None


def json_serializer(value: Any) -> bytes:
    """Encode one message: ``value`` as compact JSON, UTF-8. Raises ``TypeError`` for non-JSON values."""
    return json.dumps(value, separators=(",", ":")).encode()


def json_deserializer(data: bytes) -> Any:
    """Decode one message (empty: ``None``). Raises ``ValueError`` if it is not UTF-8 JSON."""
    return json.loads(data) if data else None


def open_channel(target: str, *, ca_file: Path | None = None, server_name: str | None = None) -> Any:
    """A ``grpc.Channel`` to ``target`` (``host:port``): TLS trusting ``ca_file`` (PEM) if given, else plaintext.

    ``server_name`` sets the ``:authority`` (and, with TLS, the name the certificate must match). Close it after use
    (it is a context manager).
    """
    options = [("grpc.default_authority", server_name)] if server_name else []
    if ca_file is None:
        return grpc.insecure_channel(target, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    creds = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    return grpc.secure_channel(target, creds, options=options)


def callable_for(channel: Any, method: str, kind: Kind) -> Any:
    """A grpcio multicallable for ``method`` of ``kind`` on ``channel``, with JSON (de)serialisation."""
    factory = {"unary": channel.unary_unary, "stream": channel.unary_stream, "bidi": channel.stream_stream}[kind]
    return factory(method, request_serializer=json_serializer, response_deserializer=json_deserializer)


class EchoStub:
    """Client of ``demo.Echo`` on ``channel``. ``timeout`` is in seconds; failures raise ``grpc.RpcError``, for
    streams while iterating (the returned iterators are grpcio calls, so ``cancel()`` works too)."""

    def __init__(self, channel: Any) -> None:
        self._calls = {method: callable_for(channel, method, kind) for method, kind in KINDS.items()}

    def whoami(self, request: Any = None, *, metadata: Metadata = (), timeout: float | None = None) -> GrpcRecord:
        """Call Whoami; the record the server kept of this call."""
        return cast(GrpcRecord, self._calls[WHOAMI](request, metadata=metadata, timeout=timeout))

    def admin(self, request: Any = None, *, metadata: Metadata = (), timeout: float | None = None) -> GrpcRecord:
        """Call Admin; the record the server kept of this call."""
        return cast(GrpcRecord, self._calls[ADMIN](request, metadata=metadata, timeout=timeout))

    def ticks(
        self, count: int = 3, interval: float = 0.0, *, metadata: Metadata = (), timeout: float | None = None
    ) -> Iterator[dict[str, int]]:
        """Call Ticks: ``count`` messages ``{"tick": i}``, ``interval`` seconds apart (and before the first)."""
        request = {"count": count, "interval": interval}
        return cast(Iterator[dict[str, int]], self._calls[TICKS](request, metadata=metadata, timeout=timeout))

    def chat(
        self, messages: Iterable[Any], *, metadata: Metadata = (), timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Call Chat with ``messages`` (``{"say": ..., "delay": s}``); ``{"echo": say}`` for each, in order."""
        return cast(Iterator[dict[str, Any]], self._calls[CHAT](iter(messages), metadata=metadata, timeout=timeout))


def echo_stub(channel: Any) -> EchoStub:
    """A ``demo.Echo`` client on ``channel`` (see ``open_channel``)."""
    return EchoStub(channel)


def run_call(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The ``call`` command with its parsed ``args``; usage errors go through ``parser.error``. The exit status."""
    method = args.method if args.method.startswith("/") else f"/{ECHO_SERVICE}/{args.method}"
    kind = KINDS.get(method)
    if kind is None and not args.method.startswith("/"):
        parser.error(f"unknown method {args.method!r}: use Whoami, Admin, Ticks, Chat or /pkg.Service/Method")
    kind = kind or "unary"
    try:
        request = json.loads(args.json) if args.json is not None else [{"say": "hello"}] if kind == "bidi" else {}
    except ValueError as exc:
        parser.error(f"request is not JSON: {exc}")
    if kind == "bidi" and not isinstance(request, list):
        parser.error("Chat takes a JSON list of requests")
    metadata: list[tuple[str, str | bytes]] = [("authorization", f"Bearer {args.token}")] if args.token else []
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--metadata takes key=value, not {item!r}")
        try:
            metadata.append((key.lower(), base64.b64decode(value, validate=True) if key.endswith("-bin") else value))
        except binascii.Error:
            parser.error(f"--metadata {key}: a -bin value must be base64")
    with open_channel(args.target, ca_file=args.ca, server_name=args.server_name) as channel:
        call = callable_for(channel, method, kind)
        try:
            result = call(iter(request) if kind == "bidi" else request, metadata=metadata, timeout=args.timeout)
            for response in [result] if kind == "unary" else result:
                print(json.dumps(response), flush=True)
        except grpc.RpcError as exc:
            print(f"status={exc.code().name} message={exc.details()}", file=sys.stderr)
            return 1
    return 0
