"""The ``idgate`` command line, run as the real console script: ``--version``, ``check-config``, ``serve``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

IDGATE = Path(sys.executable).with_name("idgate")


def idgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IDGATE), *args], capture_output=True, text=True, timeout=60, check=False)


def test_version_comes_from_the_package_metadata() -> None:
    result = idgate("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"idgate {importlib.metadata.version('idgate')}"
