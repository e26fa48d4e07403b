"""Helpers shared by the fuzz targets (``target_*.py``)."""

from __future__ import annotations


def expect(reason: str, allowed: frozenset[str] | set[str]) -> None:
    """A refusal's reason code must be one the contract documents."""
    assert reason in allowed, reason


def text(data: bytes) -> str:
    """Fuzz bytes as the text a header or SPOP STRING can carry: any Unicode, invalid UTF-8 replaced."""
    return data.decode("utf-8", "replace")
