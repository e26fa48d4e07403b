"""Where ``idgate serve``'s log lines go: stderr, written in batches — one write per event-loop iteration.

:class:`BatchedStreamHandler` formats each record at once (its time is its own) and appends the line to a
64 KiB buffer over file descriptor 2; the buffer is flushed once at the end of the loop iteration that wrote it
(``loop.call_soon``), when it fills, from any thread without a running loop at once, and at exit
(``logging.shutdown``). A burst of decisions (one audit line each) then costs one ``write(2)`` instead of one per
line, and no line waits longer than the iteration that wrote it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from typing import TextIO

BUFFER_BYTES = 64 * 1024


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    """A ``StreamHandler`` whose flush is deferred to the end of the current event-loop iteration."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no loop in this thread: nothing will flush later
            return
        self._scheduled = True
        loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._scheduled = False
        self.flush()


def stderr_handler() -> logging.StreamHandler[TextIO]:
    """A :class:`BatchedStreamHandler` over file descriptor 2 (UTF-8, its own 64 KiB buffer), or a plain
    ``StreamHandler(sys.stderr)`` when ``sys.stderr`` is no file (a test's capture)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return logging.StreamHandler(sys.stderr)
    stream = open(fd, "w", buffering=BUFFER_BYTES, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115 (the handler owns it)
    return BatchedStreamHandler(stream)
