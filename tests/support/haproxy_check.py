"""``haproxy -c`` on a deployment's HAProxy files with that deployment's environment, made checkable on this host.

A deployment (the Kubernetes pod, the compose service, the systemd env file) sets the shipped haproxy.cfg's
``IDGATE_*`` variables for its own network. To check them with the real HAProxy here: ``host:port`` values naming
hosts that only exist there (``idgate-2:9181``, ``app.apps.svc.cluster.local:80``) become ``127.0.0.1:port`` (the
port and the rest kept), the certificate becomes a throw-away one, the Runtime API socket a temp path. Everything
else — the mode, binds, TLS switches, replicas, the local /auth balancer — is checked as written, warnings included
(the config sets ``zero-warning``).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from idgate_devstack.certs import issue_dev_certs
from idgate_devstack.haproxy import haproxy_binary

_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z][A-Za-z0-9.-]*):(?P<port>\d+)$")


def localised(env: Mapping[str, str], tmp_path: Path) -> dict[str, str]:
    """``env`` with foreign host names, the certificate and the Runtime API socket replaced (see the module)."""
    result = {}
    for name, value in env.items():
        match = _HOST_PORT.match(value)
        if match and match["host"] != "localhost":
            value = f"127.0.0.1:{match['port']}"
        result[name] = value
    if "IDGATE_TLS_CERT" in result:
        issued = issue_dev_certs(dns_names=["localhost"])
        pem = tmp_path / "server.pem"
        pem.write_bytes(issued.cert + issued.key)
        result["IDGATE_TLS_CERT"] = str(pem)
    result["IDGATE_STATS_SOCKET"] = str(tmp_path / "admin.sock")
    return result


def check(config: Path, env: Mapping[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``haproxy -c -f CONFIG`` with only ``localised(env)`` (and PATH) in the environment."""
    return subprocess.run(
        [haproxy_binary(), "-c", "-f", str(config)],
        env={"PATH": "/usr/bin:/bin", **localised(env, tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
