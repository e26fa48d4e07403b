"""Run ``idgate serve`` as a child process (for the demo and end-to-end tests) and wait until it is ready.

The process is the real console entry point, so tests exercise exactly what operators run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import httpx

from idgate_devstack.process import StartStop, stop_process


class IdgateService(StartStop):
    """``python -m idgate serve --config CONFIG --port PORT`` with output in ``log_path``.

    ``start()`` waits (up to ``ready_timeout`` seconds) for ``/readyz`` to answer 200, i.e. for every issuer's
    keys to be fetched (``start(wait_for="healthz")``: only for the server to answer, e.g. with the IdP down), and
    raises ``RuntimeError`` with the log tail if the process dies or never gets there.
    With ``tls_ca`` the service speaks HTTPS (its ``server.tls``): readiness is asked over TLS, trusting that CA
    and presenting ``tls_client`` (certificate, key) when the service wants a client certificate.
    """

    def __init__(
        self,
        *,
        config: Path,
        port: int,
        log_path: Path,
        host: str = "127.0.0.1",
        ready_timeout: float = 20.0,
        tls_ca: Path | None = None,
        tls_client: tuple[Path, Path] | None = None,
        workers: int | None = None,
    ) -> None:
        self.config = config
        self.workers = workers
        self.port = port
        self.host = host
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.tls_ca = tls_ca
        self.tls_client = tls_client
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the auth service, e.g. ``http://127.0.0.1:9180`` (``https://`` with ``tls_ca``)."""
        return f"{'https' if self.tls_ca else 'http'}://{self.host}:{self.port}"

    def client(self, **kw: Any) -> httpx.Client:
        """An httpx client for the service itself (its CA trusted, the client certificate presented)."""
        if self.tls_ca is None:
            return httpx.Client(**kw)
        context = ssl.create_default_context(cafile=str(self.tls_ca))
        if self.tls_client is not None:
            context.load_cert_chain(*map(str, self.tls_client))
        return httpx.Client(verify=context, **kw)

    @property
    def pid(self) -> int | None:
        """PID of the running ``idgate serve`` child, else ``None``."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def returncode(self) -> int | None:
        """The exit status of the child once it ended (negative: killed by that signal), else None."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything the service logged so far (JSON lines)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def start(self, *, wait_for: Literal["readyz", "healthz"] = "readyz") -> None:
        """Start the process and wait until ``wait_for`` answers 200."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "idgate.cli",
                    "serve",
                    "--config",
                    str(self.config),
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    *(["--workers", str(self.workers)] if self.workers is not None else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
                start_new_session=True,
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"idgate exited with {self._proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with self.client(timeout=1.0) as client:
                    if client.get(f"{self.url}/{wait_for}").status_code == 200 and self._workers_ready(wait_for):
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"idgate not ready after {self.ready_timeout}s:\n{self.log_text()[-3000:]}")

    def _workers_ready(self, wait_for: str) -> bool:
        """With ``workers`` > 1 and ``readyz``: every worker logged ``worker_ready`` (any one answers /readyz)."""
        workers = self.workers or 1
        return wait_for != "readyz" or workers < 2 or len(self.log_events("worker_ready")) >= workers

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines whose ``event`` is ``event``, oldest first."""
        found = []
        for line in self.log_text().splitlines():
            if f'"event": "{event}"' in line:
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> PID of its newest process (from the supervisor's ``worker_started`` lines)."""
        return {int(e["worker"]): int(e["pid"]) for e in self.log_events("worker_started")}

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of fail-closed behaviour)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self._proc is not None:
            stop_process(self._proc)
