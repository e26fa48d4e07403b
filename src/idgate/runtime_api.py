"""A client of HAProxy's Runtime API (the stats socket; HAProxy's doc/management.txt §9.3), on asyncio streams.

One command per connection (non-interactive mode: HAProxy answers and closes). Addresses: ``unix:/path`` (or a
bare ``/path``) and ``tcp:host:port`` (``tcp:[::1]:9999``). Every failure is one :class:`RuntimeApiError` whose
``kind`` is ``missing`` (no such socket file), ``refused`` (nothing listens), ``permission`` (the socket file's mode,
or a command the socket's ``level`` refuses), ``timeout`` or ``error`` (HAProxy refused the command: an unknown
backend or server, a bad weight), and whose message is one line.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from idgate.errors import IdgateError

TIMEOUT_SECONDS = 5.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_PERMISSION = "Permission denied"


class RuntimeApiError(IdgateError):
    """The Runtime API could not be used; ``kind`` is one of the module docstring's, ``address`` the socket."""

    def __init__(self, kind: str, address: str, message: str) -> None:
        self.kind = kind
        self.address = address
        super().__init__(f"{address}: {message}")


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeApi:
    """One Runtime API address (``unix:/path`` or ``tcp:host:port``); ``timeout`` in seconds per command."""

    address: str
    timeout: float = TIMEOUT_SECONDS

    async def command(self, line: str) -> str:
        """Send one command and return HAProxy's whole answer (text).

        Raises:
            RuntimeApiError: any failure (module docstring), including HAProxy's ``Permission denied``.
        """
        if "\n" in line or ";" in line:
            raise RuntimeApiError("error", self.address, "one command per call, without ';' or a newline")
        return await self._send(line)

    async def _send(self, line: str) -> str:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._open()
                try:
                    writer.write(line.encode("ascii") + b"\n")
                    await writer.drain()
                    data = bytearray(await reader.read(MAX_ANSWER_BYTES))
                    while chunk := await reader.read(MAX_ANSWER_BYTES):
                        data += chunk  # a bytearray grows in place (show map of 100,000 entries: ~24 MB)
                finally:
                    writer.close()
        except TimeoutError:
            raise RuntimeApiError("timeout", self.address, f"no answer within {self.timeout:g} s") from None
        except FileNotFoundError:
            raise RuntimeApiError("missing", self.address, "no such socket (is HAProxy running?)") from None
        except PermissionError:
            raise RuntimeApiError("permission", self.address, "permission denied on the socket file") from None
        except ConnectionRefusedError:
            raise RuntimeApiError("refused", self.address, "connection refused (nothing listens)") from None
        except OSError as exc:
            raise RuntimeApiError("refused", self.address, exc.strerror or str(exc)) from None
        text = data.decode("utf-8", "replace")
        if text.strip() == _PERMISSION:
            raise RuntimeApiError("permission", self.address, f"'{line}' needs a socket at level admin") from None
        return text

    async def commands(self, lines: Sequence[str]) -> str:
        """Several commands in one connection (joined by ``;``, which HAProxy runs in order); HAProxy's answers,
        concatenated. The joined line must fit HAProxy's buffer (``tune.bufsize``, 16 KiB by default).

        Raises:
            RuntimeApiError: as :meth:`command`; ``error`` when a line holds ``;`` or a newline itself.
        """
        if any("\n" in line or ";" in line for line in lines):
            raise RuntimeApiError("error", self.address, "a command may not hold ';' or a newline")
        return await self._send("; ".join(lines))

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.address.startswith("tcp:"):
            host, _, port = self.address.removeprefix("tcp:").rpartition(":")
            if not port.isdigit():
                raise RuntimeApiError("error", self.address, "expected tcp:host:port")
            return await asyncio.open_connection(host.strip("[]"), int(port))
        return await asyncio.open_unix_connection(self.address.removeprefix("unix:"))

    async def show_stat(self) -> list[dict[str, str]]:
        """``show stat``: one mapping per proxy/server row, CSV column name → value (``pxname``, ``svname``,
        ``status``, ``req_rate``, ``hrsp_4xx`` …; empty string when HAProxy has none)."""
        text = await self.command("show stat")
        if not text.startswith("# "):
            raise RuntimeApiError("error", self.address, text.strip().splitlines()[0] if text.strip() else "empty")
        return list(csv.DictReader(io.StringIO(text[2:])))

    async def show_info(self) -> dict[str, str]:
        """``show info``: process facts (``Name``, ``Version``, ``Uptime_sec``, ``CurrConns``, ``Pid`` …)."""
        text = await self.command("show info")
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)

    async def admin(self, line: str) -> None:
        """An admin command whose success is an empty answer (``set server``, ``set weight``).

        Raises:
            RuntimeApiError: ``permission`` below level admin, ``error`` with HAProxy's message otherwise.
        """
        answer = (await self.command(line)).strip()
        if answer:
            raise RuntimeApiError("error", self.address, f"'{line}': {answer.splitlines()[0]}")

    async def set_state(self, backend: str, server: str, state: str) -> None:
        """``set server BACKEND/SERVER state ready|drain|maint``."""
        await self.admin(f"set server {_name(backend)}/{_name(server)} state {state}")

    async def set_weight(self, backend: str, server: str, weight: int) -> None:
        """``set weight BACKEND/SERVER N`` (0 to 256)."""
        if not 0 <= weight <= 256:
            raise RuntimeApiError("error", self.address, "a weight is 0 to 256")
        await self.admin(f"set weight {_name(backend)}/{_name(server)} {weight}")


def _name(value: str) -> str:
    if not value or any(c.isspace() or c in "/;#" for c in value):
        raise RuntimeApiError("error", "-", f"not a proxy or server name: {value!r}")
    return value
