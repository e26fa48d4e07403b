"""The shipped haproxy.cfg's TLS to idgate (IDGATE_SPOA_TLS / IDGATE_SERVICE_TLS), checked by ``haproxy -c``: every
valid combination starts, a misspelt value or a client certificate the Lua auth call cannot send refuses to.
The traffic itself is tested end to end in tests/e2e/test_tls_to_idgate.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Literal

import pytest

from idgate_devstack.certs import DevCerts, generate_dev_certs
from idgate_devstack.haproxy import CONFIG_NAME, HaproxySettings, check_config, haproxy_binary, haproxy_dir

Mode = Literal["spoe", "auth_request"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return generate_dev_certs(tmp_path_factory.mktemp("haproxy-tls"))


def settings(certs: DevCerts, mode: Mode, spoa: str, service: str) -> HaproxySettings:
    def ca(level: str) -> Path | None:
        return certs.ca if level != "off" else None

    def client(level: str) -> Path | None:
        return certs.pem if level == "mutual" else None

    return HaproxySettings(
        tls_pem=certs.pem,
        mode=mode,
        stats_socket=certs.ca.parent / "haproxy.sock",
        upstream_grpc_ca=certs.ca,
        spoa_tls_ca=ca(spoa),
        spoa_tls_client_cert=client(spoa),
        service_tls_ca=ca(service),
        service_tls_client_cert=client(service),
    )


def haproxy_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [haproxy_binary(), "-c", "-f", str(haproxy_dir() / CONFIG_NAME)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("spoa", ["off", "on", "mutual"])
@pytest.mark.parametrize("service", ["off", "on", "mutual"])
@pytest.mark.parametrize("mode", ["spoe", "auth_request"])
def test_every_valid_combination_starts(certs: DevCerts, mode: Mode, spoa: str, service: str) -> None:
    chosen = settings(certs, mode, spoa, service)
    env = chosen.env()
    assert (env["IDGATE_SPOA_TLS"], env["IDGATE_SERVICE_TLS"]) == (spoa, service)
    if mode == "auth_request" and service == "mutual":
        with pytest.raises(RuntimeError, match="needs IDGATE_MODE=spoe"):
            check_config(chosen)
    else:
        check_config(chosen)


@pytest.mark.parametrize("variable", ["IDGATE_SPOA_TLS", "IDGATE_SERVICE_TLS"])
@pytest.mark.parametrize("value", ["yes", "ON", "true", ""])
def test_a_misspelt_value_refuses_to_start_instead_of_meaning_off(certs: DevCerts, variable: str, value: str) -> None:
    result = haproxy_check(settings(certs, "spoe", "off", "off").env() | {variable: value})
    assert result.returncode != 0
    assert f"{variable} must be off, on or mutual" in result.stdout + result.stderr


def test_tls_server_lines_verify_the_name_and_the_lua_call_goes_to_the_name() -> None:
    cfg = (haproxy_dir() / CONFIG_NAME).read_text(encoding="utf-8")
    for listener in ("SPOA", "SERVICE"):
        # the TLS settings live on default-server lines, so every replica's server line gets them
        lines = [x for x in cfg.splitlines() if x.startswith("\tdefault-server ") and f"IDGATE_{listener}_TLS_CA" in x]
        assert len(lines) == 2, lines  # on and mutual
        for line in lines:
            assert " ssl " in line
            assert f'verify required ca-file "${{IDGATE_{listener}_TLS_CA}}"' in line
            assert f'sni str("${{IDGATE_{listener}_TLS_NAME}}") verifyhost "${{IDGATE_{listener}_TLS_NAME}}"' in line
    assert 'http-request lua.idgate_auth_at "https://${IDGATE_SERVICE_TLS_NAME}/auth"' in cfg
    assert "\thttpclient.ssl.verify required\n" in cfg
