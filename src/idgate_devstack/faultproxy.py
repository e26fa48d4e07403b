"""A switchable fault proxy in front of an IdP's JWKS endpoint, for fault drills in tests and by hand.

Point an issuer's ``jwks_uri`` at :attr:`FaultProxy.url` and switch what idgate gets when it fetches keys::

    with FaultProxy(upstream=idp.jwks_uri, tls_cert=certs.cert, tls_key=certs.key, ca_file=certs.ca) as proxy:
        proxy.url                 # "https://127.0.0.1:PORT/jwks"
        proxy.set_mode("empty")   # the next fetch gets 200 {"keys": []}
        proxy.fetches             # GETs of the JWKS received so far

Modes (:data:`MODES`):

- ``pass``: forward the GET to ``upstream`` and relay its status, body, ``Content-Type`` and ``Cache-Control``;
- ``empty``: ``200 {"keys": []}``;
- ``unusable``: ``200`` with a set in which no key is usable for signature checks (a symmetric key, a key for
  encryption, a 512-bit RSA key, an RSA key without modulus);
- ``error``: ``500 {"error": "server_error"}``;
- ``hang``: read the request and answer nothing until the mode changes or the proxy stops (then close).

Control calls on the same port (never counted as fetches): ``GET /__fault`` → ``{"mode": ..., "fetches": n}``,
``POST /__fault/<mode>`` switches the mode. ``python -m idgate_devstack.faultproxy --upstream URL --cert CRT
--key KEY [--ca CA] [--port P]`` runs one from a shell and prints ``faultproxy listening on HOST:PORT``.

HTTPS only (the dev certificate): an issuer's ``jwks_uri`` must be https outside ``dev_mode``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, get_args

import httpx

from idgate_devstack.process import StartStop

__all__ = ["MODES", "UNUSABLE_JWKS", "FaultProxy", "Mode"]

Mode = Literal["pass", "empty", "unusable", "error", "hang"]
MODES: tuple[Mode, ...] = get_args(Mode)
JWKS_PATH = "/jwks"
CONTROL_PATH = "/__fault"
UPSTREAM_TIMEOUT_SECONDS = 5.0

UNUSABLE_JWKS: dict[str, Any] = {
    "keys": [
        {"kty": "oct", "kid": "hmac", "alg": "HS256", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
        {"kty": "RSA", "kid": "rsa-512", "alg": "RS256", "use": "sig", "n": "gAAA" + "A" * 80 + "AQ", "e": "AQAB"},
        {"kty": "RSA", "kid": "no-modulus", "alg": "RS256", "use": "sig", "e": "AQAB"},
        {
            "kty": "EC",
            "kid": "for-encryption",
            "use": "enc",
            "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        },
    ]
}
"""A key set in which no key can verify a signature (idgate must treat it like a failed fetch)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        super().__init__(address, _Handler)
        self.proxy = proxy


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        proxy = self.server.proxy
        if self.path == CONTROL_PATH:
            self._send(200, json.dumps({"mode": proxy.mode, "fetches": proxy.fetches}).encode())
            return
        if self.path.split("?")[0] != JWKS_PATH:
            self._send(404, b'{"error": "not_found"}')
            return
        mode = proxy.record_fetch()
        if mode == "hang":
            proxy.wait_while_hanging()
            self.close_connection = True
            return
        if mode == "pass":
            status, body, headers = proxy.forward()
            self._send(status, body, headers)
        elif mode == "empty":
            self._send(200, b'{"keys": []}', {"cache-control": "max-age=60"})
        elif mode == "unusable":
            self._send(200, json.dumps(UNUSABLE_JWKS).encode(), {"cache-control": "max-age=60"})
        else:
            self._send(500, b'{"error": "server_error"}')

    def do_POST(self) -> None:
        mode = self.path.removeprefix(CONTROL_PATH + "/")
        if not self.path.startswith(CONTROL_PATH + "/") or mode not in MODES:
            self._send(404, b'{"error": "not_found"}')
            return
        self.server.proxy.set_mode(mode)  # checked against MODES just above
        self._send(200, json.dumps({"mode": mode}).encode())

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class FaultProxy(StartStop):
    """The proxy (context manager), serving HTTPS on ``host:port`` (0: a free port) in threads of this process.

    ``upstream`` is the real JWKS URL; ``ca_file`` the trust anchor for it (None: the system's).
    """

    def __init__(
        self,
        *,
        upstream: str,
        tls_cert: Path,
        tls_key: Path,
        ca_file: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream = upstream
        self._tls = (tls_cert, tls_key)
        self._ca_file = ca_file
        self._address = (host, port)
        self._mode: Mode = "pass"
        self._fetch_times: list[float] = []
        self._changed = threading.Condition()
        self._stopping = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    # ----------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Listen and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("the fault proxy is already running")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self._tls[0]), str(self._tls[1]))
        verify = ssl.create_default_context(cafile=str(self._ca_file)) if self._ca_file else True
        self._client = httpx.Client(verify=verify, timeout=UPSTREAM_TIMEOUT_SECONDS, trust_env=False)
        server = _Server(self._address, self)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._stopping = False
        self._thread = threading.Thread(target=server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Release hung requests, stop serving and close; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            self._client.close()

    # ------------------------------------------------------------------------------------------------- control

    @property
    def url(self) -> str:
        """The JWKS URL to configure as the issuer's ``jwks_uri``."""
        if self._server is None:
            raise RuntimeError("the fault proxy is not running")
        host, port = self._server.server_address[:2]
        return f"https://{host!s}:{port}{JWKS_PATH}"

    @property
    def mode(self) -> Mode:
        """What the next fetch gets."""
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Switch the answer of every later fetch; a hung request is released (its connection closed)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        with self._changed:
            self._mode = mode
            self._changed.notify_all()

    @property
    def fetches(self) -> int:
        """JWKS GETs received so far (whatever they were answered)."""
        with self._changed:
            return len(self._fetch_times)

    def fetches_since(self, since: float) -> int:
        """JWKS GETs received at or after ``since`` (a ``time.monotonic()`` value)."""
        with self._changed:
            return sum(1 for t in self._fetch_times if t >= since)

    # ------------------------------------------------------------------------------------- used by the handler

    def record_fetch(self) -> Mode:
        with self._changed:
            self._fetch_times.append(time.monotonic())
            return self._mode

    def wait_while_hanging(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._stopping or self._mode != "hang")

    def forward(self) -> tuple[int, bytes, dict[str, str]]:
        assert self._client is not None
        try:
            response = self._client.get(self.upstream, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            return 502, json.dumps({"error": "bad_gateway", "detail": type(exc).__name__}).encode(), {}
        headers = {"cache-control": response.headers["cache-control"]} if "cache-control" in response.headers else {}
        return response.status_code, response.content, headers


def main(argv: Sequence[str] | None = None) -> int:
    """Run a fault proxy until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m idgate_devstack.faultproxy", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="the real JWKS URL")
    parser.add_argument("--cert", required=True, type=Path, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, type=Path, help="its private key (PEM)")
    parser.add_argument("--ca", type=Path, help="trust anchor for the upstream (PEM)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with FaultProxy(
        upstream=args.upstream, tls_cert=args.cert, tls_key=args.key, ca_file=args.ca, host=args.host, port=args.port
    ) as proxy:
        print(f"faultproxy listening on {proxy.url.removeprefix('https://').removesuffix(JWKS_PATH)}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
