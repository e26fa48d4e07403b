"""Run Debian's ``redis-server`` as a child on a loopback port (the shared store of the e2e tests and bench).

    with RedisServer(port=free_tcp_port()) as redis:    # returns once it answers PING
        redis.url                                        # redis://127.0.0.1:PORT/0
        redis.stop(); redis.start()                      # an outage and the recovery (same port, empty data)

No persistence (``--save '' --appendonly no``): a restart is an empty Redis. ``pause()`` / ``resume()`` stop and
continue the process (SIGSTOP / SIGCONT): a Redis that accepts connections but never answers.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from idgate_devstack.process import StartStop, stop_process


def redis_server_binary() -> str:
    """``redis-server`` on PATH (``apt-get install redis-server``; ``scripts/setup`` installs it)."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError("redis-server not found: run ./scripts/setup (apt-get install redis-server)")
    return found


def ping(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """True when a Redis at ``host:port`` answers ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(StartStop):
    """``redis-server --port PORT --bind HOST --save '' --appendonly no`` with its log in ``log_path``."""

    def __init__(
        self, *, port: int, host: str = "127.0.0.1", log_path: Path | None = None, startup_timeout: float = 10.0
    ) -> None:
        self.port = port
        self.host = host
        self.log_path = log_path
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://host:port/0``, the form ``store.url`` takes."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start and wait (at most ``startup_timeout`` s) until it answers PING."""
        if self._proc is not None:
            raise RuntimeError("redis-server already started")
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no"]
        cmd += ["--protected-mode", "no", "--daemonize", "no"]
        log = self.log_path.open("ab") if self.log_path is not None else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # noqa: S603
        finally:
            if self.log_path is not None and not isinstance(log, int):
                log.close()
        deadline = time.monotonic() + self._startup_timeout
        while not ping(self.host, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on {self.host}:{self.port} did not start")
            time.sleep(0.02)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted (by the kernel) but never answered."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGCONT)
            stop_process(proc)
