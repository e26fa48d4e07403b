"""Child-process plumbing shared by the dev/test launchers (echo upstream, Grafana stub, idgate, HAProxy, test IdP).

- ``stop_process(proc)``: send signals one by one, each followed by a grace period, then SIGKILL.
- ``StartStop``: the ``with`` protocol for anything with ``start()`` and ``stop()``.
- ``ReadyLineServer``: runs a loopback HTTP test server as a child that announces itself with one stdout line,
  ``<kind> NAME listening on HOST:PORT``, and answers the record/reset control calls below.

Control calls of those servers (never recorded)::

    GET  /__echo/requests   -> 200, JSON list of the records so far, oldest first
    POST /__echo/reset      -> 200, {"reset": <number of records dropped>}; clears the list
"""

from __future__ import annotations

import abc
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import ClassVar, Generic, NoReturn, Self, TypeVar, cast

import httpx

__all__ = ["CONTROL_REQUESTS", "CONTROL_RESET", "ReadyLineServer", "StartStop", "stop_process"]

CONTROL_REQUESTS = "/__echo/requests"
CONTROL_RESET = "/__echo/reset"
CONTROL_TIMEOUT_SECONDS = 5.0
_HANDED_OUT: set[int] = set()  # ports free_tcp_port gave this test process (harness state, never the service's)


def _ephemeral_low() -> int:
    """The lowest port the kernel picks for a bind to port 0 (``ip_local_port_range``; Linux's default 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` a moment ago, for tests: chosen below the kernel's ephemeral range, so a child
    that binds port 0 can never be handed the same one before we use it, and never twice in this process (binding
    port 0 and closing, as before, let a later bind(0) elsewhere take the port: "address already in use")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = min(_ephemeral_low(), 32768)
    for _ in range(500):
        port = random.randint(10_000, low - 1)  # noqa: S311 - a port number, not a secret
        if port in _HANDED_OUT:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free TCP port on {host} below {low}")


"""Timeout of one control call, in seconds."""

RecordT = TypeVar("RecordT")


def stop_process(
    proc: subprocess.Popen[bytes], *, signals: Sequence[int] = (signal.SIGTERM,), grace: float = 5.0
) -> int:
    """Stop ``proc`` and return its exit code (negative: killed by that signal).

    Sends each of ``signals`` in turn, waiting up to ``grace`` seconds after each for the process to exit, then
    SIGKILL if it is still alive. Stops early once the process has exited; a process that already exited gets no
    signal at all.
    """
    for sig in signals:
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return proc.returncode


class StartStop(abc.ABC):
    """Context manager protocol for a launcher: ``start()`` on entering the ``with`` block, ``stop()`` on leaving."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the child and wait until it is ready."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the child."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ReadyLineServer(StartStop, Generic[RecordT]):
    """Runs a test HTTP server as a subprocess (context manager) that prints one ready line once listening.

    Subclasses set ``kind`` (names the server in errors), ``ready_re`` (the ready line, with a ``port`` group) and
    implement ``command()``. ``port=0`` lets the child pick a free port; ``address`` / ``url`` tell which one once
    started. ``startup_timeout`` is in seconds. The child's stderr goes to this process's stderr.
    ``requests()`` returns the records of type ``RecordT`` the server kept.
    """

    kind: ClassVar[str]
    """What the server is, for messages: ``"echo upstream"``."""
    ready_re: ClassVar[re.Pattern[str]]
    """Matches the child's ready line (stripped); its ``port`` group is the listening port."""

    def __init__(self, name: str, *, host: str, port: int, startup_timeout: float) -> None:
        self.name = name
        self.host = host
        self._port = port
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The child's command line (listening on ``host`` and the configured port)."""

    @property
    def port(self) -> int:
        """The listening TCP port (only meaningful once started)."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port``, the form HAProxy's ``server`` line (``IDGATE_UPSTREAM_*``) takes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._port}"

    @property
    def url(self) -> str:
        """``http://host:port`` of the server, for talking to it directly (control calls)."""
        return f"http://{self.address}"

    def start(self) -> None:
        """Start the child and wait (at most ``startup_timeout`` s) for its ready line."""
        if self._proc is not None:
            raise RuntimeError(f"{self.kind} already started")
        proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)  # noqa: S603
        self._proc = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + self._startup_timeout
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    self._fail(f"{self.kind} {self.name!r}: no ready line in {self._startup_timeout} s")
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    self._fail(f"{self.kind} {self.name!r} exited with {proc.wait()} before listening")
                line += chunk
        match = self.ready_re.match(line.decode(errors="replace").strip())
        if match is None:
            self._fail(f"{self.kind} {self.name!r}: unexpected ready line {line!r}")
        self._port = int(match["port"])

    def _fail(self, message: str) -> NoReturn:
        self.stop()
        raise RuntimeError(message)

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 5 s); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()

    def requests(self) -> list[RecordT]:
        """The records so far (``GET /__echo/requests``), oldest first."""
        resp = httpx.get(self.url + CONTROL_REQUESTS, timeout=CONTROL_TIMEOUT_SECONDS)
        resp.raise_for_status()
        return cast(list[RecordT], resp.json())

    def reset(self) -> None:
        """Clear the records (``POST /__echo/reset``)."""
        httpx.post(self.url + CONTROL_RESET, timeout=CONTROL_TIMEOUT_SECONDS).raise_for_status()
