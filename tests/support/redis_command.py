"""Run a deployment's Redis start command and healthcheck (a ``sh -c`` script, as the container runs it) with this
host's ``redis-server``, to check the quoting, the password handling and the probe for real.

The script's container paths are mapped to temp files (``paths``), and ``--port PORT --bind 127.0.0.1`` is added to
the ``redis-server`` command line; the probe's ``redis-cli`` is pointed at the same port. Nothing else is changed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from idgate_devstack.process import free_tcp_port
from idgate_devstack.redis_server import redis_server_binary


def _mapped(script: str, paths: Mapping[str, str]) -> str:
    assert any(container_path in script for container_path in paths), f"none of {sorted(paths)} in the script"
    for container_path, local_path in paths.items():
        script = script.replace(container_path, local_path)
    return script


def _reply(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(command)
        return sock.recv(256)


@dataclass(frozen=True, kw_only=True)
class RunningRedis:
    port: int
    process: subprocess.Popen[bytes]

    def reply(self, command: bytes) -> bytes:
        """The raw RESP reply to ``command`` (inline form, e.g. ``b"PING\\r\\n"``) on a fresh connection."""
        return _reply(self.port, command)


@contextmanager
def started(script: str, paths: Mapping[str, str]) -> Iterator[RunningRedis]:
    """The start script running (``sh -c``), until it answers (any reply, NOAUTH included), then stopped."""
    port = free_tcp_port()
    binary = redis_server_binary()
    local = _mapped(script, paths).replace("exec redis-server ", f"exec {binary} ", 1)
    assert binary in local, "the script must exec redis-server"
    local += f" --port {port} --bind 127.0.0.1"
    process = subprocess.Popen(["/bin/sh", "-c", local], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _reply(port, b"PING\r\n")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    detail = process.stderr.read() if process.stderr else b""
                    raise AssertionError(f"redis did not start: {detail!r}") from None
                time.sleep(0.05)
        yield RunningRedis(port=port, process=process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def probe(script: str, paths: Mapping[str, str], port: int) -> subprocess.CompletedProcess[str]:
    """The healthcheck / readiness script, its ``redis-cli`` aimed at ``port``."""
    cli = shutil.which("redis-cli") or "redis-cli"
    local = _mapped(script, paths).replace("redis-cli ", f"{cli} -p {port} ", 1)
    return subprocess.run(["/bin/sh", "-c", local], capture_output=True, text=True, timeout=30, check=False)
