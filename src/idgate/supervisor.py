"""``idgate serve --workers N``: one supervisor process, N worker processes, one pair of listening sockets.

The supervisor binds the HTTP listener (``server.host:port``) and the SPOA listener (``spoa.host:port``) once and
starts N workers (``python -m idgate.cli serve … --worker I``) that inherit both sockets (``pass_fds``) and accept
on them, each with its own event loop, app, caches and SPOA agent (the pre-fork model of gunicorn and uvicorn's
``--workers``). Shared sockets rather than one ``SO_REUSEPORT`` socket per worker: the port stays bound while a
worker restarts (``SO_REUSEPORT`` resets the connections queued on a dead worker's socket), no other process of the
same user can join the group and take a share of HAProxy's connections, and the kernel hands a new connection to a
worker that is waiting in ``accept`` — an idle one — instead of hashing the 4-tuple onto a busy one (measured in
``docs/workers.md``).

The supervisor:

- restarts a worker that exits (after :data:`RESTART_BACKOFF_SECONDS`, doubling up to
  :data:`MAX_RESTART_BACKOFF_SECONDS` while it keeps dying within :data:`STABLE_SECONDS`), logs each exit
  (``worker_exited``) and counts restarts (``idgate_worker_restarts_total`` in ``/metrics``);
- forwards SIGTERM and SIGINT as SIGTERM to every worker (each stops accepting, finishes its in-flight decisions and
  closes, uvicorn's and the SPOA agent's graceful shutdown), waits up to ``stop_timeout`` seconds, then SIGKILLs
  what is left; exit status 0;
- forwards SIGHUP to every worker (what a worker does with it is the worker's business), and SIGUSR1: a worker
  asked ``POST /admin/jwks/refresh`` sends it so that every worker refetches its issuers' keys and drops withdrawn
  keys' cached verifications (:meth:`WorkerContext.ask_peers_to_refresh`);
- gives the workers one ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory, removed at exit) so that
  ``/metrics`` through any worker reports the sum over all of them (:mod:`idgate.metrics_workers`).

A worker whose supervisor disappears (SIGKILL) notices within a second and stops (:class:`WorkerContext`).
Sources: ``socket.create_server``, ``subprocess.Popen(pass_fds=…)``, socket(7) ``SO_REUSEPORT``, prometheus-client
"Multiprocess Mode".
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from prometheus_client.core import CounterMetricFamily

from idgate.config import Config
from idgate.metrics_workers import MULTIPROC_ENV, retire_worker, write_snapshot

log = logging.getLogger("idgate.supervisor")

WORKER_ENV = "IDGATE_WORKER"
"""Set by the supervisor for each worker: ``INDEX:HTTP_FD:SPOA_FD:SUPERVISOR_PID`` (SPOA_FD -1 without ``spoa``)."""
RESTART_BACKOFF_SECONDS = 0.5
MAX_RESTART_BACKOFF_SECONDS = 10.0
STABLE_SECONDS = 10.0
"""A worker that lived this long is healthy again: its next restart waits the shortest backoff."""
_POLL_SECONDS = 0.05
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_BACKLOG = 1024


def worker_count(config: Config) -> int:
    """``server.workers``, else the number of cores this process may run on with ``store.kind: redis``, else 1."""
    if config.server.workers is not None:
        return config.server.workers
    if config.store.kind != "redis":
        return 1
    return max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True, kw_only=True)
class WorkerContext:
    """What a worker process gets from its supervisor: its index (0 … N-1), the listening sockets, the
    multiprocess metrics directory and the supervisor's PID (a worker stops when its parent is no longer that)."""

    index: int
    http_socket: socket.socket
    spoa_socket: socket.socket | None
    metrics_dir: Path
    supervisor_pid: int

    @classmethod
    def from_environ(cls) -> WorkerContext | None:
        """The context the supervisor passed in :data:`WORKER_ENV` and ``PROMETHEUS_MULTIPROC_DIR``, or None.

        Raises:
            ValueError: a malformed :data:`WORKER_ENV`.
        """
        text = os.environ.get(WORKER_ENV)
        if not text:
            return None
        index, http_fd, spoa_fd, parent = (int(part) for part in text.split(":"))
        return cls(
            index=index,
            http_socket=socket.socket(fileno=http_fd),
            spoa_socket=socket.socket(fileno=spoa_fd) if spoa_fd >= 0 else None,
            metrics_dir=Path(os.environ[MULTIPROC_ENV]),
            supervisor_pid=parent,
        )

    def orphaned(self) -> bool:
        """True when the supervisor is gone (this process was re-parented)."""
        return os.getppid() != self.supervisor_pid

    def ask_peers_to_refresh(self) -> None:
        """Have every worker refetch its issuers' keys now (SIGUSR1 to the supervisor, which forwards it)."""
        with contextlib.suppress(OSError):
            os.kill(self.supervisor_pid, signal.SIGUSR1)

    def stop_with_supervisor(self) -> None:
        """Ask the kernel for SIGTERM when the supervisor dies (Linux ``prctl(PR_SET_PDEATHSIG)``, prctl(2)), so
        that a SIGKILLed supervisor does not leave workers holding its ports; elsewhere the worker's once-a-second
        :meth:`orphaned` check does it. Raises nothing."""
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if self.orphaned():  # died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when ``host`` is an IPv6 address), inheritable by workers.
    Raises OSError when the address cannot be bound."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
    )[0]
    listener = socket.create_server(address[:2], family=family, backlog=_BACKLOG)
    listener.set_inheritable(True)
    return listener


@dataclass(kw_only=True)
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = 0.0


@dataclass(kw_only=True)
class Supervisor:
    """Runs ``workers`` copies of ``argv`` (the worker command line) on the shared sockets; :meth:`run` blocks until
    SIGTERM/SIGINT and returns the exit status."""

    argv: Sequence[str]
    workers: int
    http_socket: socket.socket
    spoa_socket: socket.socket | None
    stop_timeout: float = 30.0
    restarts: int = 0
    _slots: list[_Slot] = field(default_factory=list)
    _signals: list[int] = field(default_factory=list)
    _metrics_dir: Path | None = None

    def run(self) -> int:
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="idgate-metrics-"))
        self._slots = [_Slot(index=i) for i in range(self.workers)]
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        self._publish()
        log.info(json.dumps({"event": "supervisor_started", "workers": self.workers, "pid": os.getpid()}))
        try:
            while True:
                stop = self._handle_signals()
                if stop:
                    break
                self._reap()
                self._start_due()
                time.sleep(_POLL_SECONDS)
            self._stop_all()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info(json.dumps({"event": "supervisor_stopped", "restarts": self.restarts}))
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> bool:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info(json.dumps({"event": "supervisor_stopping", "signal": signal.Signals(signum).name}))
                return True
            self._send(signum)  # SIGHUP (reload), SIGUSR1 (refetch the issuers' keys: a worker's admin request)
            log.info(json.dumps({"event": "supervisor_forwarded", "signal": signal.Signals(signum).name}))
        return False

    def _send(self, signum: int) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signum)

    def _start(self, slot: _Slot) -> None:
        assert self._metrics_dir is not None
        spoa_fd = self.spoa_socket.fileno() if self.spoa_socket is not None else -1
        fds = (self.http_socket.fileno(),) + ((spoa_fd,) if spoa_fd >= 0 else ())
        env = os.environ | {
            WORKER_ENV: f"{slot.index}:{self.http_socket.fileno()}:{spoa_fd}:{os.getpid()}",
            MULTIPROC_ENV: str(self._metrics_dir),
        }
        slot.process = subprocess.Popen(list(self.argv), pass_fds=fds, env=env)  # noqa: S603 - our own command line
        slot.started, slot.restart_at = time.monotonic(), None
        log.info(json.dumps({"event": "worker_started", "worker": slot.index, "pid": slot.process.pid}))

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)

    def _reap(self) -> None:
        for slot in self._slots:
            process = slot.process
            if process is None or process.poll() is None:
                continue
            assert self._metrics_dir is not None
            retire_worker(self._metrics_dir, process.pid)
            lived = time.monotonic() - slot.started
            slot.failures = 0 if lived >= STABLE_SECONDS else slot.failures + 1
            delay = min(RESTART_BACKOFF_SECONDS * 2 ** max(slot.failures - 1, 0), MAX_RESTART_BACKOFF_SECONDS)
            slot.process, slot.restart_at = None, time.monotonic() + delay
            self.restarts += 1
            self._publish()
            log.error(
                json.dumps(
                    {
                        "event": "worker_exited",
                        "worker": slot.index,
                        "pid": process.pid,
                        "returncode": process.returncode,
                        "lived_seconds": round(lived, 3),
                        "restart_in_seconds": delay,
                        "restarts": self.restarts,
                    }
                )
            )

    def _publish(self) -> None:
        assert self._metrics_dir is not None
        restarts = CounterMetricFamily(
            "idgate_worker_restarts", "Worker processes restarted by the supervisor", value=self.restarts
        )
        with contextlib.suppress(OSError):
            write_snapshot(self._metrics_dir, "s-supervisor.json", [restarts])

    def _stop_all(self) -> None:
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for slot in self._slots:
            if slot.process is None:
                continue
            try:
                slot.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(json.dumps({"event": "worker_killed", "worker": slot.index, "pid": slot.process.pid}))
                slot.process.kill()
                slot.process.wait()


def run_workers(config: Config, *, workers: int, host: str, port: int, worker_argv: Sequence[str]) -> int:
    """Bind the listeners of ``config`` (HTTP on ``host:port``) and supervise ``workers`` workers running
    ``worker_argv``; returns the exit status (0 after SIGTERM/SIGINT). Raises OSError when a listener cannot be bound.
    """
    http = bind(host, port)
    spoa = bind(config.spoa.host, config.spoa.port) if config.spoa is not None else None
    try:
        supervisor = Supervisor(
            argv=worker_argv,
            workers=workers,
            http_socket=http,
            spoa_socket=spoa,
            stop_timeout=config.server.decision_timeout_seconds + 10.0,
        )
        return supervisor.run()
    finally:
        http.close()
        if spoa is not None:
            spoa.close()


def worker_argv(config_path: str, *, log_level: str) -> list[str]:
    """The command line of one worker: this interpreter running ``idgate serve`` on the same config."""
    return [sys.executable, "-m", "idgate.cli", "serve", "--config", config_path, "--log-level", log_level]
