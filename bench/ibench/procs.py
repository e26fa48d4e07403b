"""Small process helpers: a generic child-process launcher, TCP readiness, RSS, HAProxy's request counter."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from idgate_devstack.process import StartStop, stop_process

POLL_S = 0.05


def wait_tcp(host: str, port: int, *, timeout: float, alive: subprocess.Popen[bytes] | None = None) -> None:
    """Return once ``host:port`` accepts TCP; ``RuntimeError`` after ``timeout`` s or when ``alive`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"process exited with {alive.returncode} before listening on {host}:{port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(POLL_S)
    raise RuntimeError(f"nothing accepted on {host}:{port} within {timeout} s")


def split_addr(addr: str) -> tuple[str, int]:
    """``"127.0.0.1:8443"`` -> ``("127.0.0.1", 8443)``."""
    host, _, port = addr.rpartition(":")
    return host, int(port)


class Proc(StartStop):
    """A child process in its own session (Ctrl-C does not reach it; ``stop`` does), output in ``log_path``.

    ``start`` returns once ``ready_addr`` accepts TCP. ``stop`` sends SIGTERM, then SIGKILL after ``grace`` s, and is
    idempotent. Context manager (``StartStop``).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready_addr: str,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 20.0,
        grace: float = 5.0,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.ready_addr = ready_addr
        self.env = dict(env) if env is not None else dict(os.environ)
        self.startup_timeout = startup_timeout
        self.grace = grace
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    def log_tail(self, max_bytes: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-max_bytes:].decode("utf-8", "replace")
        return ""

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - argv built by bench/run itself
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        host, port = split_addr(self.ready_addr)
        try:
            wait_tcp(host, port, timeout=self.startup_timeout, alive=self._proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{self.argv[0]}: {exc}; log {self.log_path}:\n{self.log_tail()}") from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, grace=self.grace)


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 when it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/*/stat)."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def tree_rss_kib(pid: int) -> int:
    """RSS of ``pid`` plus its direct children (Apache's workers, HAProxy's worker), in KiB."""
    return rss_kib(pid) + sum(rss_kib(child) for child in children(pid))


def haproxy_frontend_requests(socket_path: Path, frontend: str) -> int:
    """``req_tot`` of ``frontend`` from HAProxy's Runtime API (``show stat``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(socket_path))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    column = header.index("req_tot")
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) > column and fields[0] == frontend and fields[1] == "FRONTEND":
            return int(fields[column] or 0)
    raise RuntimeError(f"frontend {frontend!r} not in show stat")


# -- CPU accounting: how much of the machine something other than this benchmark used during a run -----------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _system_jiffies() -> tuple[int, int]:
    """(busy, steal) jiffies over all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime jiffies) for every process."""
    table: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def _tree_jiffies(root: int) -> int:
    """CPU jiffies of ``root`` and every live descendant, plus what its waited-for children used (wrk, h2load)."""
    table = _process_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0))[1]
        todo.extend(kids.get(pid, []))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + round((usage.ru_utime + usage.ru_stime) * CLK_TCK)


@dataclass(frozen=True, kw_only=True)
class CpuShare:
    """Percent of the whole machine (all cores) during a run: used by others (not this process tree), stolen."""

    others_pct: float
    steal_pct: float


class CpuMeter:
    """``with CpuMeter() as meter: ...`` then ``meter.share``: what the rest of the machine did meanwhile."""

    def __enter__(self) -> CpuMeter:
        self._start = (time.monotonic(), *_system_jiffies(), _tree_jiffies(os.getpid()))
        self.share = CpuShare(others_pct=0.0, steal_pct=0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        t0, busy0, steal0, ours0 = self._start
        busy1, steal1 = _system_jiffies()
        ours1 = _tree_jiffies(os.getpid())
        capacity = (time.monotonic() - t0) * CLK_TCK * (os.cpu_count() or 1)
        others = max(0, (busy1 - busy0) - (ours1 - ours0))
        self.share = CpuShare(others_pct=100 * others / capacity, steal_pct=100 * (steal1 - steal0) / capacity)
