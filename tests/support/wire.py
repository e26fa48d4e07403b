"""Requests written byte for byte over TLS, for what ordinary clients will not send: several ``Cookie`` lines, an
obs-fold continuation (HTTP/1.1), split ``cookie`` fields or a ``host`` field that disagrees with ``:authority``
(HTTP/2, through the ``h2`` package with its outbound checks off)."""

from __future__ import annotations

import socket
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events


def _address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


@dataclass(frozen=True, kw_only=True)
class Answer:
    """A response: status code, header fields (names lower-cased, in order) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name.lower()]


def http1(url: str, cafile: Path, head: str) -> Answer:
    """Send ``head`` (request line and header lines, CRLF-separated, without the blank line; ``Connection: close``
    is added) verbatim over TLS to ``url``'s host and port, trusting ``cafile``, and read the whole answer."""
    host, port = _address(url)
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection((host, port), timeout=10) as sock, ctx.wrap_socket(sock, server_hostname=host) as tls:
        tls.sendall(head.encode("latin-1") + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines)]
    return Answer(status=int(status_line.split(" ", 2)[1]), headers=headers, body=body)


def pseudo(url: str, path: str, method: str = "GET") -> list[tuple[str, str]]:
    """The pseudo-header fields of an HTTP/2 request for ``path`` on ``url``'s origin (:authority = its host:port)."""
    parts = urllib.parse.urlsplit(url)
    return [(":method", method), (":scheme", parts.scheme), (":authority", parts.netloc), (":path", path)]


def http2(url: str, cafile: Path, headers: Sequence[tuple[str, str]], body: bytes = b"") -> Answer:
    """One HTTP/2 request (TLS, ALPN h2, trusting ``cafile``) with exactly ``headers`` (pseudo-headers included,
    repeated fields kept apart, nothing normalised), on stream 1 of a new connection to ``url``'s host and port."""
    host, port = _address(url)
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(["h2"])
    config = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        split_outbound_cookies=False,
    )
    conn = h2.connection.H2Connection(config)
    status = 0
    answer_headers: list[tuple[str, str]] = []
    data = b""
    with socket.create_connection((host, port), timeout=10) as sock, ctx.wrap_socket(sock, server_hostname=host) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn.initiate_connection()
        conn.send_headers(1, list(headers), end_stream=not body)
        if body:
            conn.send_data(1, body, end_stream=True)
        tls.sendall(conn.data_to_send())
        done = False
        while not done:
            chunk = tls.recv(65536)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    answer_headers = [(_text(n), _text(v)) for n, v in event.headers]
                    status = int(dict(answer_headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset | h2.events.ConnectionTerminated):
                    done = True
            tls.sendall(conn.data_to_send())
    return Answer(status=status, headers=[(n, v) for n, v in answer_headers if not n.startswith(":")], body=data)


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
