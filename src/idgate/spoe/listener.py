"""The SPOA agent's TCP listener: a peer is judged on its address at accept, and TLS starts with its first byte.

``asyncio.start_server`` cannot do both: its callback runs after the transport began reading, so a refusal comes
after the peer's bytes were read, and upgrading such a stream with ``StreamWriter.start_tls`` loses the ClientHello
already buffered (CPython gh-142352; under uvloop even a ``pause_reading()`` in ``connection_made`` is too late:
uvloop issue #707). This listener accepts itself, in a reader callback on the listening socket (as asyncio's own
servers do; unlike an awaited ``loop.sock_accept``, no accepted socket is lost when closing cancels a wait): a peer
outside ``trusted_callers`` is closed before a byte is read or sent, and a trusted one is handed to
``loop.connect_accepted_socket`` with the TLS context, so the handshake runs on an untouched socket (the pattern
``asyncio.open_connection`` uses). An accept error (out of descriptors …) pauses accepting for a second.

Callbacks (none may raise; errors are the caller's to log): ``on_refused(peer_address)`` for an untrusted peer,
``on_tls_error(peer, exc)`` for a failed or late handshake (the socket is closed), ``on_connection(reader, writer)``
for each served connection, in a task of its own. Sources: Python ``asyncio`` "Streams" and "Event loop"
(``add_reader``, ``connect_accepted_socket``, ``ssl_handshake_timeout``), ``socket.create_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence

from idgate.peers import Network, is_trusted

log = logging.getLogger("idgate.spoa")
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_ACCEPT_ERROR_PAUSE = 1.0  # seconds without accepting after an accept error (EMFILE …), as asyncio's servers
_BACKLOG = 128


def _bind(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``host:port`` (IPv6 when ``host`` resolves to IPv6, then v6 only)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
    )[0]
    listener = socket.create_server(address[:2], family=family, backlog=_BACKLOG)
    listener.setblocking(False)
    return listener


def _close_if_cancelled(conn: socket.socket, task: asyncio.Task[None]) -> None:
    if task.cancelled():
        conn.close()


class GuardedListener:
    """Accepts on ``host:port``; see the module docstring. ``limit`` is the StreamReader buffer limit (bytes)."""

    def __init__(
        self,
        *,
        on_connection: ConnectionHandler,
        trusted_callers: Sequence[Network],
        on_refused: Callable[[str], None],
        on_tls_error: Callable[[str, BaseException], None],
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
        limit: int,
    ) -> None:
        self._on_connection = on_connection
        self._trusted = tuple(trusted_callers)
        self._on_refused = on_refused
        self._on_tls_error = on_tls_error
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout
        self._limit = limit
        self._socket: socket.socket | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound TCP port (after ``start``)."""
        if self._socket is None:
            raise RuntimeError("listener not started")
        return int(self._socket.getsockname()[1])

    def start(self, host: str, port: int) -> None:
        """Bind and start accepting (port 0: a free port). Raises ``OSError`` when the address cannot be bound."""
        if self._socket is not None:
            raise RuntimeError("listener already started")
        self._socket = _bind(host, port)
        self._listen(self._socket)

    def adopt(self, listener: socket.socket) -> None:
        """Accept on an already listening socket (a worker of ``idgate serve --workers N`` shares the supervisor's);
        it is made non-blocking and closed by :meth:`close` (this process's descriptor only)."""
        if self._socket is not None:
            raise RuntimeError("listener already started")
        listener.setblocking(False)
        self._socket = listener
        self._listen(listener)

    async def close(self) -> None:
        """Stop accepting and abandon the handshakes in progress; served connections are the handler's."""
        listener, self._socket = self._socket, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        handshakes = list(self._handshakes)
        for task in handshakes:
            task.cancel()
        for task in handshakes:
            with contextlib.suppress(BaseException):
                await task

    def _listen(self, listener: socket.socket) -> None:
        if self._socket is listener:  # not closed meanwhile (after an accept error's pause)
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        """Reader callback: accept what is waiting (at most a backlog's worth), judge, and serve in tasks."""
        for _ in range(_BACKLOG):
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors or buffers …: pause, then accept again
                log.error(json.dumps({"event": "spoa_accept_error", "error": repr(exc)[:200]}))
                loop = asyncio.get_running_loop()
                loop.remove_reader(listener.fileno())
                loop.call_later(_ACCEPT_ERROR_PAUSE, self._listen, listener)
                return
            peer = str(address[0]) if isinstance(address, tuple) and address else ""
            if not is_trusted(peer, self._trusted):
                conn.close()  # nothing read, nothing sent
                self._on_refused(peer)
                continue
            conn.setblocking(False)
            task = asyncio.create_task(self._open(conn, peer))
            # cancelled before it ever ran (close() right after this accept), _open cannot close the socket itself
            task.add_done_callback(functools.partial(_close_if_cancelled, conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _open(self, conn: socket.socket, peer: str) -> None:
        """Streams on ``conn`` (TLS from the first byte with a context), then the handler, in this task."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self._limit)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout if self._ssl is not None else None,
            )
        except (OSError, EOFError) as exc:  # ssl.SSLError, a reset, the handshake timeout (ConnectionAbortedError)
            conn.close()
            if self._ssl is not None:
                self._on_tls_error(peer, exc)
            return
        except BaseException:  # cancelled by close() mid-handshake: the socket is still ours to close
            conn.close()
            raise
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        task = asyncio.current_task()
        if task is not None:
            self._handshakes.discard(task)  # served from here on: the handler's to close, not ours
        try:
            await self._on_connection(reader, writer)
        finally:  # a handler cancelled before its own cleanup ran (a close() racing a new connection) leaks nothing
            if not transport.is_closing():
                transport.close()
