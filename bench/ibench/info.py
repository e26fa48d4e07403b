"""What a bench/run result was measured on: the commit, tool versions, the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from ibench.stack import BENCH_DIR
from idgate_devstack.haproxy import haproxy_binary


def first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except OSError:
        return "not installed"
    return ((proc.stdout or proc.stderr).strip().splitlines() or ["?"])[0]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.machine()


def source_state() -> str:
    """The commit measured, and whether src/ or haproxy/ had uncommitted changes."""
    repo = str(BENCH_DIR.parent)
    sha = first_line(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", repo, "status", "--porcelain", "--", "src", "haproxy"]) not in ("?", "")
    return f"idgate {sha}{' + uncommitted changes in src/ or haproxy/' if dirty else ''}"


def versions() -> dict[str, str]:
    return {
        "idgate": source_state(),
        "haproxy": first_line([haproxy_binary(), "-v"]),
        "apache": first_line(["apache2", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "h2load": first_line(["h2load", "--version"]),
        "python": platform.python_version(),
        "cpu": f"{os.cpu_count()} x {cpu_model()}",
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
