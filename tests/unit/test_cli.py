"""The ``idgate`` command line, run as the real console script: ``--version``, ``check-config``, ``serve``."""

from __future__ import annotations

import base64
import importlib.metadata
import itertools
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from idgate_devstack.process import free_tcp_port

IDGATE = Path(sys.executable).with_name("idgate")


def idgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IDGATE), *args], capture_output=True, text=True, timeout=60, check=False)


def test_version_comes_from_the_package_metadata() -> None:
    result = idgate("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"idgate {importlib.metadata.version('idgate')}"


# One file with one of each problem idgate check-config must refuse; ``write_files`` adds the files it names.
MANY_PROBLEMS = """\
dev_mode: false
server:
  trusted_callers: ["0.0.0.0/0", "::/0", "10.0.0.1/8"]
issuers:
  - name: corp
    issuer: https://idp.example.com
    discovery: false
    jwks_uri: https://keys.elsewhere.example/jwks.json
    client_id: idgate
    client_secret_file: binary_secret
  - name: partner
    issuer: https://partner.example.com
    audiences: ["https://api.example.com"]
    ca_file: latin1_ca.pem
    client_secret_file: secrets_dir
login:
  issuer: corp
  redirect_uris: ["https://app.example.com/.idgate/callback"]
sessions:
  keys_file: session_keys
assertion:
  issuer: https://idgate.example.com
  keys_file: assertion_keys
role_sets:
  grafana:
    roles: [viewer, Editor, Admin, GrafanaAdmin]
    from_groups: {staff: [viewer]}
upstreams:
  grafana: {profile: grafana, role_set: grafana}
routes:
  - {name: grafana, path: /grafana, upstream: grafana, allow: {roles: [viewer]}}
dev_mode: true
"""


def write_many_problems(tmp_path: Path) -> Path:
    (tmp_path / "binary_secret").write_bytes(b"\x00\x01secret\xff")
    (tmp_path / "latin1_ca.pem").write_bytes("# Zertifikat für die Prüfung\n".encode("latin-1"))
    (tmp_path / "secrets_dir").mkdir()
    (tmp_path / "session_keys").write_text(base64.b64encode(b"\x00" * 32).decode() + "\n")
    (tmp_path / "assertion_keys").mkdir()
    path = tmp_path / "idgate.yaml"
    path.write_text(MANY_PROBLEMS)
    return path


def expected_problems(tmp_path: Path) -> list[str]:
    return [
        "line 32: duplicate key 'dev_mode' (first at line 1)",
        "issuers.0.audiences: at least one non-empty audience is required",
        "issuers.0.jwks_uri: jwks_uri is on host 'keys.elsewhere.example', not the issuer's 'idp.example.com'",
        f"issuers.0.client_secret_file: {tmp_path / 'binary_secret'} is binary, not text",
        f"issuers.1.client_secret_file: {tmp_path / 'secrets_dir'} is a directory, not a file",
        f"issuers.1.ca_file: {tmp_path / 'latin1_ca.pem'} is not UTF-8 text",
        "server.trusted_callers: '0.0.0.0/0' is too wide",
        "'::/0' is too wide",
        "'10.0.0.1/8' has host bits set",
        "sessions.keys: weak or placeholder secret: key 1 of 1 is weak: all one byte value",
        f"assertion.keys_file: {tmp_path / 'assertion_keys'} is a directory, not a file",
        "upstreams.grafana: role set 'grafana' names roles Grafana does not have: ['viewer', 'GrafanaAdmin']",
    ]


def test_check_config_lists_every_problem_at_once_without_a_traceback(tmp_path: Path) -> None:
    result = idgate("check-config", str(write_many_problems(tmp_path)))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"{tmp_path / 'idgate.yaml'}: {len(lines) - 1} problem(s):"
    for expected in expected_problems(tmp_path):
        assert any(expected in line for line in lines), f"{expected!r} not in:\n{result.stderr}"
    assert len(lines) - 1 == len(expected_problems(tmp_path)) - 2  # the three trusted_callers share one line


def test_serve_refuses_to_start_on_the_same_problems(tmp_path: Path) -> None:
    result = idgate("serve", "--config", str(write_many_problems(tmp_path)))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"idgate: refusing to start, {tmp_path / 'idgate.yaml'} has ")
    for expected in expected_problems(tmp_path):
        assert expected in result.stderr


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda p: p.mkdir(), "is a directory, not a file"),
        (lambda p: p.write_bytes(b"issuers: []\n\x00\x00"), "is binary, not text"),
        (
            lambda p: p.write_bytes("issuers: [{name: kunde, issuer: 'https://idp.\xe4.example'}]\n".encode("latin-1")),
            "is not UTF-8 text",
        ),
        (lambda p: None, "cannot read"),
    ],
)
def test_check_config_on_a_file_that_is_no_config(tmp_path: Path, setup: object, expected: str) -> None:
    path = tmp_path / "idgate.yaml"
    setup(path)  # type: ignore[operator]
    result = idgate("check-config", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[1].startswith(f"  - {path}") or f"cannot read {path}" in result.stderr
    assert expected in result.stderr


WARNINGS = """\
dev_mode: true
issuers:
  - {name: corp, issuer: "http://127.0.0.1:9", discovery: false, jwks_uri: "http://127.0.0.1:9/jwks", audiences: [a]}
role_sets:
  r: {roles: [user], from_groups: {Staff: [user], staff: [user]}}
upstreams: {app: {role_set: r}}
routes:
  - {name: admin, path: /admin, upstream: app, allow: {roles: [user]}}
  - {name: everything, path: /, upstream: app, public: true}
"""


def test_check_config_prints_warnings_on_stderr_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "idgate.yaml").write_text(WARNINGS)
    result = idgate("check-config", str(tmp_path / "idgate.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'idgate.yaml'}: OK\n")
    assert result.stderr.splitlines() == [
        f"{tmp_path / 'idgate.yaml'}: 2 warning(s):",
        "  - routes.1 (everything): public: true on any host / (prefix) makes every path public that no earlier "
        "route matches",
        "  - groups 'Staff' and 'staff' differ only by case or surrounding spaces (role_sets.r.from_groups): IdP "
        "groups are compared exactly, so only the spelling the IdP sends can match",
    ]


def test_serve_logs_the_warnings_at_startup(tmp_path: Path) -> None:
    (tmp_path / "idgate.yaml").write_text(WARNINGS)
    port = free_tcp_port()
    serve = subprocess.Popen(
        [str(IDGATE), "serve", "--config", str(tmp_path / "idgate.yaml"), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        logged = [json.loads(line) for line in itertools.islice(serve.stderr, 2)]
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        if serve.stderr is not None:
            serve.stderr.close()
    assert [(entry["level"], entry["logger"]) for entry in logged] == [("warning", "idgate.config")] * 2
    assert logged[0]["msg"].startswith("config warning: routes.1 (everything): public: true on any host /")
    assert logged[1]["msg"].startswith("config warning: groups 'Staff' and 'staff' differ only by case")


def test_every_log_line_is_json_with_an_rfc3339_utc_ts_level_and_logger_first() -> None:
    from idgate.cli import JsonLineFormatter

    def line(msg: str, level: int = logging.INFO, exc: bool = False) -> dict[str, object]:
        record = logging.LogRecord("idgate.x", level, __file__, 1, msg, None, None)
        record.created = 1777636800.1239  # 2026-05-01T12:00:00.123Z
        if exc:
            try:
                raise ValueError("boom")
            except ValueError:
                record.exc_info = sys.exc_info()
        text = JsonLineFormatter().format(record)
        assert "\n" not in text
        parsed = json.loads(text)
        assert isinstance(parsed, dict)
        return parsed

    event = line(json.dumps({"event": "login_start", "rd": "/app"}), logging.WARNING)
    assert list(event) == ["ts", "level", "logger", "event", "rd"]
    assert (event["ts"], event["level"], event["logger"]) == ("2026-05-01T12:00:00.123Z", "warning", "idgate.x")
    assert line("plain text") == {
        "ts": "2026-05-01T12:00:00.123Z",
        "level": "info",
        "logger": "idgate.x",
        "msg": "plain text",
    }
    assert line("{'a': 1}")["msg"] == "{'a': 1}"  # a dict's repr is not one of idgate's JSON lines
    assert "ValueError: boom" in str(line("decision failed", logging.ERROR, exc=True)["exc"])
    assert line("{not json at all")["msg"] == "{not json at all"


def test_serve_with_workers_and_a_memory_store_refuses_listing_it_with_the_other_problems(tmp_path: Path) -> None:
    result = idgate("serve", "--config", str(write_many_problems(tmp_path)), "--workers", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "server.workers: 2 worker processes need store.kind: redis" in result.stderr
    for expected in expected_problems(tmp_path):
        assert expected in result.stderr
