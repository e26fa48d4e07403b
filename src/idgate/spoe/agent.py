"""An SPOP 2.0 agent (SPOA) on asyncio streams: HAProxy's SPOE filter asks, ``handler`` answers with set-var actions.

Behaviour (HAProxy ``doc/SPOE.txt`` §3; the codec is ``idgate.spoe.spop``):

- A peer outside ``trusted_callers`` (networks; default loopback; ``idgate.peers``) is closed at accept, before
  anything is read or sent (no AGENT-HELLO): logged (``spoa_untrusted_caller``), counted
  (``stats.untrusted_callers``) and reported to ``on_untrusted(peer_address)`` (idgate audits it as a deny).
- With ``ssl_context`` every trusted connection is TLS from its first byte; a handshake that fails or takes longer
  than ``read_timeout`` closes it (logged ``spoa_tls_failed``, counted ``stats.tls_errors``). Both happen in
  ``idgate.spoe.listener``.
- HELLO: SPOP "2.0" if HAProxy offers any 2.x (else status 8); max-frame-size = min(HAProxy's, ours), refused
  below 256 (status 9); we announce only ``pipelining`` (ACKs in any order on the same connection), never ``async``
  or ``fragmentation`` (HAProxy 3.1 removed both). A health-check HELLO gets AGENT-HELLO, then the socket closes;
  while ``ready()`` is False (idgate with a shared store, i.e. replicas: the same condition as ``/readyz``, keys
  and store) it gets AGENT-DISCONNECT status 13 ``not ready`` instead, so ``option spop-check`` keeps the agent
  DOWN (counted in ``stats.healthchecks_not_ready``) and HAProxy sends a restarted replica no request it cannot
  decide yet.
- Before HELLO only HAPROXY-HELLO is valid (anything else: status 4). After it: NOTIFY → one ACK echoing its
  stream-id and frame-id; HAPROXY-DISCONNECT → AGENT-DISCONNECT (status 0) and close; a fragment (type 0 or no
  FIN) → status 10; a second HELLO or an agent-side type → status 4; any other type is skipped (§3.2.2 "Unknown
  frames may be silently skipped") and logged.
- The 4-byte length is read and checked (status 3 beyond the negotiated maximum) before the body is read. Once a
  frame's first byte arrived, the rest must arrive within ``read_timeout`` (else status 2 and close); between
  frames the connection may idle ``idle_timeout`` seconds (then AGENT-DISCONNECT status 0 and close).
- Up to ``max_in_flight`` NOTIFYs per connection run concurrently; at the limit the agent stops reading until one
  finishes (no unbounded queue). ACKs are written as they complete; those finished in the same loop iteration share
  one write, and past 64 KiB of unsent output the writers wait for the socket (at most ``read_timeout``, then the
  connection is dropped).
- ``close()`` stops listening, lets every connection answer what it already read, then sends AGENT-DISCONNECT
  status 0 and closes.
- Fail closed: a duplicated argument name, an unknown message or a missing argument (with ``messages``), a
  ``MessageError`` raised by the handler, any other handler exception, a handler slower than ``handler_timeout``
  or an ACK that would not fit the frame size → the ACK carries ``deny_actions(reason)`` and nothing else (the
  actions of the NOTIFY's other messages are dropped). The connection stays up. Configure HAProxy to deny unless
  the agent set a positive verdict.
- ``quick(message_name, args, max_bytes)`` (optional) is asked first, synchronously, for a NOTIFY of one message
  whose arguments passed the checks above: encoded actions (``spop.encode_actions``, at most ``max_bytes``)
  answer at once, without the handler, its task or its timeout (idgate: a memoised allow, ``idgate.memo``);
  None, or any exception, falls through to the handler, which decides (and denies) as if ``quick`` had not
  been asked.
- Log lines are JSON on the ``idgate.spoe.agent`` logger; argument values are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from idgate.errors import MessageError, SpopError
from idgate.peers import LOOPBACK, Network
from idgate.spoe.listener import GuardedListener
from idgate.spoe.spop import (
    FLAG_FIN,
    MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    Action,
    AgentDisconnect,
    FrameType,
    HaproxyHello,
    Notify,
    Scope,
    SetVar,
    Status,
    Value,
    decode_header,
    decode_notify,
    decode_payload,
    encode_ack,
    encode_ack_payload,
    encode_frame,
    frame_length,
    negotiate,
    status_message,
)

log = logging.getLogger("idgate.spoa")

Handler = Callable[[str, Mapping[str, Value]], Awaitable[Sequence[Action]]]
QuickHandler = Callable[[str, Mapping[str, Value], int], bytes | None]
_ACK_HEADER_MAX = 1 + 4 + 10 + 10  # type, flags, stream-id and frame-id varints (at most 10 bytes each)
DenyActions = Callable[[str], Sequence[Action]]
UntrustedHook = Callable[[str], object]
CAPABILITIES = "pipelining"
NOT_READY = "not ready"  # the AGENT-DISCONNECT message a health check gets while ready() is False
_KNOWN_TYPES = frozenset(int(kind) for kind in FrameType)
_HIGH_WATER = 64 * 1024


def default_deny_actions(reason: str) -> tuple[Action, ...]:
    """``txn.<var-prefix>.decision = "deny"`` and ``txn.<var-prefix>.reason = reason``."""
    return (
        SetVar(scope=Scope.TRANSACTION, name="decision", value="deny"),
        SetVar(scope=Scope.TRANSACTION, name="reason", value=reason),
    )


def message_args(
    name: str, args: Sequence[tuple[str, Value]], expected: Mapping[str, Collection[str]] | None
) -> dict[str, Value]:
    """The argument mapping handed to the handler; ``MessageError`` for a duplicated name (always) and, when the
    expected table is given, for an unknown message or a missing argument. Extra arguments are passed through."""
    result = dict(args)
    if len(result) != len(args):
        raise MessageError("duplicate_argument", name)
    if expected is not None:
        required = expected.get(name)
        if required is None:
            raise MessageError("unknown_message", name)
        for arg in required:
            if arg not in result:
                raise MessageError("missing_argument", f"{name}.{arg}")
    return result


@dataclass(kw_only=True, slots=True)
class SpoaStats:
    """Cumulative counters for metrics."""

    connections: int = 0
    healthchecks: int = 0
    healthchecks_not_ready: int = 0
    notifies: int = 0
    denies: int = 0
    handler_errors: int = 0
    handler_timeouts: int = 0
    protocol_errors: int = 0
    untrusted_callers: int = 0
    tls_errors: int = 0


def _event(level: int, event: str, **fields: object) -> None:
    if log.isEnabledFor(level):
        log.log(level, json.dumps({"event": event, **fields}, ensure_ascii=True, default=str))


class _Timeout(Exception):
    """The rest of a started frame did not arrive within ``read_timeout``."""


class _LazyDeadline:
    """A deadline that moves on every frame but costs a timer only once per period: moving it later is an
    assignment; the pending timer, when it fires early, re-arms itself at the current deadline. ``expire`` runs
    once the deadline passed while still set (``None``: disarmed)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._handle: asyncio.TimerHandle | None = None
        self.at: float | None = None

    def set(self, at: float | None) -> None:
        self.at = at
        if at is None:
            return
        handle = self._handle
        if handle is None or handle.when() > at:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(at, self._check)

    def _check(self) -> None:
        self._handle = None
        at = self.at
        if at is None:
            return
        if self._loop.time() >= at:
            self.at = None
            self._expire()
            return
        self._handle = self._loop.call_at(at, self._check)

    def close(self) -> None:
        self.at = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _Connection:
    """One HAProxy connection: the read loop runs in the stream's own task, NOTIFYs in child tasks."""

    def __init__(self, agent: SpoaAgent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.agent = agent
        self.reader = reader
        self.writer = writer
        self.frame_size = agent.max_frame_size
        self.slots = asyncio.Semaphore(agent.max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.write_lock = asyncio.Lock()
        self.outbox: list[bytes] = []
        self.flush_pending = False
        self.stopping = False
        self.broken = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        # one lazy deadline for the wait before a frame (idle), one for the rest of a started frame (read_timeout)
        loop = asyncio.get_running_loop()
        self.reading: asyncio.Task[None] | None = None
        self.expired: str | None = None
        self.waiting = _LazyDeadline(loop, lambda: self.expire("wait"))
        self.rest = _LazyDeadline(loop, lambda: self.expire("rest"))

    # -- reading ---------------------------------------------------------------------------------------------------

    def expire(self, which: str) -> None:
        """A read deadline passed: interrupt the read loop (``read_frame`` turns it into its timeout)."""
        if self.reading is not None and not self.reading.done():
            self.expired = which
            self.reading.cancel()

    async def read_frame(self, wait: float | None) -> bytes | None:
        """One frame body; ``None`` on EOF between frames or after ``wait`` idle seconds (``TimeoutError``); the
        rest of a started frame must arrive within ``read_timeout`` (else ``_Timeout``). Runs in the connection's
        own task; the two deadlines cost a timer once per period, not per frame (:class:`_LazyDeadline`)."""
        reader = self.reader
        clock = asyncio.get_running_loop().time
        self.reading = asyncio.current_task()
        self.expired = None
        try:
            self.waiting.set(None if wait is None else clock() + wait)
            try:
                first = await reader.readexactly(1)
            finally:
                self.waiting.at = None
            self.rest.set(clock() + self.agent.read_timeout)
            try:
                length = frame_length(first + await reader.readexactly(3), self.frame_size)
                return await reader.readexactly(length)
            finally:
                self.rest.at = None
        except asyncio.IncompleteReadError:
            return None  # EOF, between frames or inside one: nothing left to answer
        except asyncio.CancelledError:
            which, self.expired = self.expired, None
            task = self.reading
            if which is None or task is None or task.uncancel() > 0:
                raise  # cancelled by someone else
            if which == "rest":
                raise _Timeout from None
            raise TimeoutError from None

    # -- writing ---------------------------------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Queue one whole frame; frames finished in the same loop iteration go out in one write (one syscall).
        Past the transport's high-water mark, wait for the socket to drain (bounded by ``read_timeout``)."""
        if self.broken:
            return
        self.outbox.append(data)
        if not self.flush_pending:
            self.flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush)
        if self.writer.transport.get_write_buffer_size() > _HIGH_WATER:
            async with self.write_lock:
                try:
                    async with asyncio.timeout(self.agent.read_timeout):
                        await self.writer.drain()
                except (ConnectionError, TimeoutError, RuntimeError):
                    self.broken = True
                    self.writer.transport.abort()

    def flush(self) -> None:
        self.flush_pending = False
        if self.outbox and not self.broken:
            data = b"".join(self.outbox) if len(self.outbox) > 1 else self.outbox[0]
            self.writer.write(data)
        self.outbox.clear()

    async def disconnect(self, status: Status, message: str) -> None:
        # 200 UTF-8 bytes, not characters: the frame stays within the 256 bytes every peer accepts (SPOE.txt §3.2)
        text = message.encode("utf-8")[:200].decode("utf-8", "ignore")
        await self.send(encode_frame(AgentDisconnect(status_code=status, message=text)))

    # -- main loop -------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        agent = self.agent
        try:
            try:
                if not await self.hello():
                    return
                await self.serve()
            except SpopError as exc:
                agent.stats.protocol_errors += 1
                detail = status_message(exc)
                _event(logging.WARNING, "spoa_protocol_error", peer=self.peer, status=int(exc.status), detail=detail)
                self.cancel_tasks()
                await self.disconnect(Status(exc.status), detail)
            except _Timeout:
                agent.stats.protocol_errors += 1
                _event(logging.WARNING, "spoa_read_timeout", peer=self.peer, timeout=agent.read_timeout)
                self.cancel_tasks()
                await self.disconnect(Status.TIMEOUT, "incomplete frame")
            except ConnectionError as exc:
                _event(logging.INFO, "spoa_connection_lost", peer=self.peer, error=repr(exc)[:200])
        finally:
            self.waiting.close()
            self.rest.close()
            self.cancel_tasks()
            self.flush()  # queued frames go out before the close
            with contextlib.suppress(Exception):
                self.writer.close()
                await self.writer.wait_closed()

    async def hello(self) -> bool:
        """The HELLO exchange; False when the connection must end after it (EOF, health check)."""
        agent = self.agent
        try:
            body = await self.read_frame(agent.read_timeout)
        except TimeoutError:
            raise _Timeout from None
        if body is None:
            return False
        header, offset = decode_header(body)
        if header.type != FrameType.HAPROXY_HELLO:
            raise SpopError(Status.INVALID, f"frame type {header.type} before HAPROXY-HELLO")
        hello = decode_payload(header, body, offset)
        assert isinstance(hello, HaproxyHello)
        answer = negotiate(hello, max_frame_size=agent.max_frame_size, capabilities=CAPABILITIES)
        if hello.healthcheck and not agent.ready():
            agent.stats.healthchecks_not_ready += 1
            await self.send(encode_frame(AgentDisconnect(status_code=Status.RESOURCE, message=NOT_READY)))
            return False
        await self.send(encode_frame(answer))
        if hello.healthcheck:
            agent.stats.healthchecks += 1
            return False
        agent.stats.connections += 1
        self.frame_size = answer.max_frame_size
        _event(
            logging.DEBUG,
            "spoa_hello",
            peer=self.peer,
            engine_id=hello.engine_id,
            max_frame_size=answer.max_frame_size,
            haproxy_capabilities=hello.capabilities,
        )
        return True

    async def serve(self) -> None:
        agent = self.agent
        slots = self.slots
        while True:
            await slots.acquire()
            if self.stopping:
                slots.release()
                await self.finish(Status.NORMAL, "agent shutting down")
                return
            try:
                body = await self.read_frame(agent.idle_timeout)
            except TimeoutError:
                slots.release()
                if self.tasks:
                    continue  # still answering: not idle
                await self.finish(Status.NORMAL, "idle timeout")
                return
            if body is None:
                slots.release()
                if self.stopping:
                    await self.finish(Status.NORMAL, "agent shutting down")
                return
            header, offset = decode_header(body)
            kind = header.type
            if kind == FrameType.NOTIFY and header.flags & FLAG_FIN:
                notify = decode_notify(header, body, offset)
                quick = agent.quick_ack(notify, self.frame_size)
                if quick is not None:
                    slots.release()
                    await self.send(quick)
                    continue
                task = asyncio.create_task(self.answer(notify))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                continue
            slots.release()
            if kind == FrameType.HAPROXY_DISCONNECT:
                frame = decode_payload(header, body, offset)
                _event(logging.INFO, "spoa_haproxy_disconnect", peer=self.peer, frame=repr(frame)[:300])
                self.cancel_tasks()
                await self.disconnect(Status.NORMAL, "normal")
                return
            if kind in _KNOWN_TYPES or not header.flags & FLAG_FIN:
                decode_payload(header, body, offset)  # raises the right status (fragment, invalid)
                raise SpopError(Status.INVALID, f"unexpected frame type {kind}")
            _event(logging.WARNING, "spoa_unknown_frame_skipped", peer=self.peer, type=kind, length=len(body))

    async def finish(self, status: Status, message: str) -> None:
        """Let in-flight NOTIFYs answer (each is bounded by handler_timeout), then AGENT-DISCONNECT."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self.agent.handler_timeout + 1.0)
        await self.disconnect(status, message)

    def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def stop(self) -> None:
        """Graceful shutdown: no more reading; the loop answers what is in flight and disconnects."""
        self.stopping = True
        pause_reading = getattr(self.writer.transport, "pause_reading", None)  # uvloop's is no asyncio.ReadTransport
        if pause_reading is not None:
            pause_reading()  # no feed_data after feed_eof
        self.reader.feed_eof()

    # -- answering -------------------------------------------------------------------------------------------------

    async def answer(self, notify: Notify) -> None:
        try:
            data = await self.agent.decide(notify, self.frame_size)
            await self.send(data)
        finally:
            self.slots.release()


class SpoaAgent:
    """The SPOP server. ``handler(message_name, args)`` returns the actions for one message.

    ``messages`` (optional, recommended) maps each message name the agent answers to the argument names it must
    carry; an unknown message or a missing argument is then denied without calling the handler. A duplicated
    argument name is always denied. Argument values are ``idgate.spoe.spop.Value``: a STRING that is not UTF-8
    arrives as ``spop.InvalidString`` and the handler should deny it. ``ready()`` (called once per health-check
    HELLO, must not block) says whether HAProxy's ``spop-check`` may see the agent as up.
    """

    def __init__(
        self,
        *,
        handler: Handler,
        max_frame_size: int = MAX_FRAME_SIZE,
        max_in_flight: int = 64,
        idle_timeout: float = 30.0,
        read_timeout: float = 5.0,
        handler_timeout: float = 2.0,
        deny_actions: DenyActions = default_deny_actions,
        messages: Mapping[str, Collection[str]] | None = None,
        trusted_callers: Sequence[Network] = LOOPBACK,
        on_untrusted: UntrustedHook | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ready: Callable[[], bool] = lambda: True,
        quick: QuickHandler | None = None,
    ) -> None:
        if not MIN_FRAME_SIZE <= max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be in [{MIN_FRAME_SIZE}, {MAX_FRAME_SIZE}]")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if min(idle_timeout, read_timeout, handler_timeout) <= 0:
            raise ValueError("timeouts must be > 0")
        self.handler = handler
        self.max_frame_size = max_frame_size
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.handler_timeout = handler_timeout
        self.deny_actions = deny_actions
        self.messages = messages
        self.trusted_callers = tuple(trusted_callers)
        self.on_untrusted = on_untrusted
        self.ssl_context = ssl_context
        self.ready = ready
        self.quick = quick
        self.stats = SpoaStats()
        self._listener: GuardedListener | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}

    @property
    def port(self) -> int:
        """The bound TCP port (after ``start``)."""
        if self._listener is None:
            raise RuntimeError("agent not started")
        return self._listener.port

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Listen on ``host:port`` (port 0: a free port, see ``.port``), or accept on the listening ``sock`` (a worker
        of ``idgate serve --workers N``). Raises OSError when it cannot bind."""
        if self._listener is not None:
            raise RuntimeError("agent already started")
        listener = GuardedListener(
            on_connection=self._accept,
            trusted_callers=self.trusted_callers,
            on_refused=self._refused,
            on_tls_error=self._tls_failed,
            ssl_context=self.ssl_context,
            handshake_timeout=self.read_timeout,
            limit=MAX_FRAME_SIZE + 4,
        )
        if sock is not None:
            listener.adopt(sock)
        else:
            listener.start(host, port)
        self._listener = listener

    async def close(self) -> None:
        """Stop listening; every connection answers its in-flight NOTIFYs, gets AGENT-DISCONNECT status 0, closes."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        for connection in list(self._connections.values()):
            connection.stop()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=self.handler_timeout + 2.0)
        for task in list(self._connections):
            task.cancel()

    async def __aenter__(self) -> SpoaAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _refused(self, peer: str) -> None:
        self.stats.untrusted_callers += 1
        _event(logging.WARNING, "spoa_untrusted_caller", peer=peer[:64])
        if self.on_untrusted is not None:
            try:
                self.on_untrusted(peer[:64])
            except Exception as exc:
                _event(logging.ERROR, "spoa_untrusted_hook_failed", error=repr(exc)[:300])

    def _tls_failed(self, peer: str, exc: BaseException) -> None:
        self.stats.tls_errors += 1
        _event(logging.WARNING, "spoa_tls_failed", peer=peer[:64], error=repr(exc)[:200])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(self, reader, writer)
        self._connections[task] = connection
        try:
            await connection.run()
        except Exception as exc:  # never let one connection's bug reach the loop's exception handler
            _event(logging.ERROR, "spoa_connection_error", peer=connection.peer, error=repr(exc)[:300])
        finally:
            self._connections.pop(task, None)

    def quick_ack(self, notify: Notify, frame_size: int) -> bytes | None:
        """The ACK bytes ``quick`` answers for ``notify`` at once (counted as a NOTIFY), or None: then
        :meth:`decide` must answer it."""
        quick = self.quick
        if quick is None or len(notify.messages) != 1:
            return None
        message = notify.messages[0]
        try:
            args = message_args(message.name, message.args, self.messages)
            payload = quick(message.name, args, frame_size - _ACK_HEADER_MAX)
        except Exception:
            return None  # decide() asks the handler, and denies what deserves it
        if payload is None:
            return None
        self.stats.notifies += 1
        return encode_ack_payload(notify.stream_id, notify.frame_id, payload)

    async def decide(self, notify: Notify, frame_size: int) -> bytes:
        """The ACK bytes for ``notify``: the handler's actions, or the deny actions on any failure."""
        self.stats.notifies += 1
        reason = ""
        try:
            async with asyncio.timeout(self.handler_timeout) as deadline:
                actions: list[Action] = []
                for message in notify.messages:
                    args = message_args(message.name, message.args, self.messages)
                    actions.extend(await self.handler(message.name, args))
                data = encode_ack(notify.stream_id, notify.frame_id, actions)
                if len(data) - 4 <= frame_size:
                    return data
                reason = "ack_too_large"
                _event(logging.ERROR, "spoa_deny", reason=reason, length=len(data) - 4, max=frame_size)
        except MessageError as exc:
            reason = exc.reason
            _event(logging.WARNING, "spoa_deny", reason=reason, detail=exc.detail[:200], stream_id=notify.stream_id)
        except TimeoutError as exc:
            if deadline.expired():
                reason = "handler_timeout"
                self.stats.handler_timeouts += 1
                _event(logging.ERROR, "spoa_deny", reason=reason, timeout=self.handler_timeout)
            else:
                reason = "handler_error"
                self.stats.handler_errors += 1
                _event(logging.ERROR, "spoa_deny", reason=reason, error=repr(exc)[:300])
        except Exception as exc:
            reason = "handler_error"
            self.stats.handler_errors += 1
            _event(logging.ERROR, "spoa_deny", reason=reason, error=repr(exc)[:300])
        self.stats.denies += 1
        try:
            data = encode_ack(notify.stream_id, notify.frame_id, self.deny_actions(reason))
            if len(data) - 4 <= frame_size:
                return data
        except Exception as exc:
            _event(logging.ERROR, "spoa_deny_actions_failed", error=repr(exc)[:300])
        return encode_ack(notify.stream_id, notify.frame_id, ())
