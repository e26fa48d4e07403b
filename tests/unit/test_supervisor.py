"""The worker supervisor (``idgate serve --workers N``), run for real in a child process with stand-in workers: small
Python programs that accept on the inherited socket and answer ``INDEX PID SIGHUPS``. What the supervisor promises:
shared listeners that stay bound while a worker restarts, restarts with a growing backoff, SIGHUP forwarded, SIGTERM
a graceful stop of every worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from idgate.config import Config
from idgate.supervisor import worker_count
from idgate_devstack.process import free_tcp_port

STAND_IN = r"""
import os, signal, socket, sys
index, http_fd, spoa_fd, parent = os.environ["IDGATE_WORKER"].split(":")
listener = socket.socket(fileno=int(http_fd))
listener.settimeout(0.05)
state = {"hups": 0, "usr1": 0, "stop": False}
signal.signal(signal.SIGHUP, lambda *_: state.__setitem__("hups", state["hups"] + 1))
signal.signal(signal.SIGUSR1, lambda *_: state.__setitem__("usr1", state["usr1"] + 1))
signal.signal(signal.SIGTERM, lambda *_: state.__setitem__("stop", True))
print(f"up {index} {os.environ['PROMETHEUS_MULTIPROC_DIR']}", flush=True)
while not state["stop"]:
    try:
        conn, _ = listener.accept()
    except (socket.timeout, InterruptedError):
        continue
    with conn:
        conn.recv(16)
        conn.sendall(f"{index} {os.getpid()} {state['hups']} {state['usr1']}\n".encode())
print(f"graceful {index}", flush=True)
"""

SUPERVISE = """
import sys
from idgate.cli import configure_logging
from idgate.supervisor import Supervisor, bind
configure_logging("info")
argv = [sys.executable, "-c", sys.argv[1]]
supervisor = Supervisor(argv=argv, workers=int(sys.argv[2]), http_socket=bind("127.0.0.1", int(sys.argv[3])),
                        spoa_socket=None, stop_timeout=5.0)
sys.exit(supervisor.run())
"""


class Running:
    def __init__(self, tmp_path: Path, worker_code: str, workers: int) -> None:
        self.port = free_tcp_port()
        self.log = tmp_path / "supervisor.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", SUPERVISE, worker_code, str(workers), str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ask(self, counter: int = 2) -> tuple[int, int, int]:
        """(worker index, PID, SIGHUPs received) of the worker that accepts; ``counter`` 3: SIGUSR1s instead."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"?")
            fields = conn.makefile().readline().split()
        return int(fields[0]), int(fields[1]), int(fields[counter])

    def events(self, name: str) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and f'"event": "{name}"' in line]

    def wait_for(self, condition: object, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(condition) and condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; log:\n{self.log.read_text()[-3000:]}")

    def answering(self) -> dict[int, int]:
        """Worker index -> PID, asked until every worker started answered once."""
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(seen) < len(self.events("worker_started")) - self.exits():
            index, pid, _ = self.ask()
            seen[index] = pid
        return seen

    def exits(self) -> int:
        return len(self.events("worker_exited"))


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path, STAND_IN, 2)
    running.wait_for(lambda: running.log.read_text().count("up ") >= 2)
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def test_every_worker_accepts_on_the_one_shared_socket(supervised: Running) -> None:
    seen = {supervised.ask()[0] for _ in range(400)}
    assert seen == {0, 1}


def test_a_killed_worker_is_restarted_and_the_port_answers_throughout(supervised: Running) -> None:
    before = {int(str(e["worker"])): int(str(e["pid"])) for e in supervised.events("worker_started")}
    os.kill(before[0], signal.SIGKILL)
    answered, deadline = 0, time.monotonic() + 1.5  # the restart waits 0.5 s: worker 1 takes every connection
    while time.monotonic() < deadline:
        supervised.ask()  # raises on a refused connection
        answered += 1
    supervised.wait_for(lambda: len(supervised.events("worker_started")) == 3)
    exited = supervised.events("worker_exited")
    assert [(e["worker"], e["pid"], e["returncode"], e["restarts"]) for e in exited] == [
        (0, before[0], -signal.SIGKILL, 1)
    ]
    assert exited[0]["restart_in_seconds"] == 0.5
    restarted = {int(str(e["worker"])): int(str(e["pid"])) for e in supervised.events("worker_started")}
    assert restarted[0] != before[0] and restarted[1] == before[1]
    assert answered > 10


def test_sighup_is_forwarded_to_every_worker(supervised: Running) -> None:
    supervised.process.send_signal(signal.SIGHUP)
    supervised.wait_for(lambda: supervised.events("supervisor_forwarded"))
    hups: dict[int, int] = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and hups != {0: 1, 1: 1}:
        index, _, count = supervised.ask()
        hups[index] = count
    assert hups == {0: 1, 1: 1}
    assert supervised.process.poll() is None  # the supervisor itself keeps running


def test_sigusr1_a_workers_key_refetch_request_is_forwarded_to_every_worker(supervised: Running) -> None:
    supervised.process.send_signal(signal.SIGUSR1)
    counts: dict[int, int] = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and counts != {0: 1, 1: 1}:
        index, _, count = supervised.ask(counter=3)
        counts[index] = count
    assert counts == {0: 1, 1: 1}
    assert supervised.process.poll() is None


def test_sigterm_stops_every_worker_gracefully_and_exits_0(supervised: Running) -> None:
    supervised.process.send_signal(signal.SIGTERM)
    assert supervised.process.wait(timeout=10) == 0
    text = supervised.log.read_text()
    assert "graceful 0" in text and "graceful 1" in text
    assert supervised.events("worker_killed") == []
    assert supervised.events("worker_exited") == []  # stopped, not crashed: not restarted either
    metrics_dir = text.split("up 0 ")[1].split()[0]
    assert not Path(metrics_dir).exists()  # the multiprocess metrics directory is removed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", supervised.port), timeout=1)


def test_a_worker_that_keeps_dying_is_restarted_with_a_growing_backoff(tmp_path: Path) -> None:
    running = Running(tmp_path, "import sys; sys.exit(3)", 1)
    try:
        running.wait_for(lambda: running.exits() >= 4, timeout=15)
    finally:
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=10) == 0
    delays = [e["restart_in_seconds"] for e in running.events("worker_exited")][:4]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert {e["returncode"] for e in running.events("worker_exited")} == {3}


def _config(**sections: object) -> Config:
    base: dict[str, object] = {
        "issuers": [{"name": "idp", "issuer": "https://idp.example.com", "audiences": ["api"]}],
        "upstreams": {"app": {}},
        "routes": [{"name": "app", "upstream": "app", "public": True}],
    }
    return Config.model_validate(base | sections)


def test_worker_count_defaults_to_the_cores_only_with_a_shared_store() -> None:
    assert worker_count(_config()) == 1
    redis = {"kind": "redis", "url": "redis://127.0.0.1:6379/0"}
    assert worker_count(_config(store=redis)) == len(os.sched_getaffinity(0))
    assert worker_count(_config(store=redis, server={"workers": 3})) == 3
    assert worker_count(_config(server={"workers": 1})) == 1
