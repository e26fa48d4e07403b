"""TLS on idgate's listeners: the config's files are checked before anything listens, and the context they build."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from idgate.config import TlsConfig
from idgate.config_load import parse_config
from idgate.errors import ConfigError
from idgate.tls import INTERMEDIATE_CIPHERS, server_context, uvicorn_options
from idgate_devstack.certs import DevCerts, generate_dev_certs

BASE: dict[str, Any] = {
    "issuers": [{"name": "corp", "issuer": "https://idp.example.com", "audiences": ["https://api.example.com"]}],
    "upstreams": {"app": {}},
    "routes": [{"name": "pub", "path": "/public", "upstream": "app", "public": True}],
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return generate_dev_certs(tmp_path_factory.mktemp("tls"))


def problems(doc: dict[str, Any], base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={}, base_dir=base_dir)
    return list(info.value.problems)


@pytest.mark.parametrize("section", ["server", "spoa"])
def test_relative_paths_resolve_against_the_config_directory(section: str, certs: DevCerts) -> None:
    tls = {"cert_file": "server.crt", "key_file": "server.key", "ca_file": "ca.pem"}
    config = parse_config(BASE | {section: {"tls": tls}}, environ={}, base_dir=certs.ca.parent)
    loaded = getattr(config, section).tls
    assert (loaded.cert_file, loaded.key_file, loaded.ca_file) == (str(certs.cert), str(certs.key), str(certs.ca))


@pytest.mark.parametrize("section", ["server", "spoa"])
def test_unusable_files_are_refused_before_anything_listens(section: str, certs: DevCerts, tmp_path: Path) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate")
    other = generate_dev_certs(tmp_path / "other")
    cases = {
        "missing": ({"cert_file": "nope.crt", "key_file": str(certs.key)}, "cert_file: "),
        "garbage": ({"cert_file": "garbage.pem", "key_file": str(certs.key)}, "do not load as PEM"),
        "wrong_key": ({"cert_file": str(certs.cert), "key_file": str(other.key)}, "do not load as PEM"),
        "bad_ca": (
            {"cert_file": str(certs.cert), "key_file": str(certs.key), "ca_file": "garbage.pem"},
            "do not load as PEM",
        ),
        "no_key": ({"cert_file": str(certs.cert)}, "key_file: Field required"),
        "unknown": ({"cert_file": str(certs.cert), "key_file": str(certs.key), "verify": "none"}, "unknown key"),
    }
    for name, (tls, expected) in cases.items():
        found = problems(BASE | {section: {"tls": tls}}, tmp_path)
        assert any(p.startswith(f"{section}.tls") and expected in p for p in found), (name, found)


def test_server_context(certs: DevCerts) -> None:
    plain = server_context(TlsConfig(cert_file=str(certs.cert), key_file=str(certs.key)))
    assert plain.verify_mode == ssl.CERT_NONE and plain.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = {c["name"] for c in plain.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == set(INTERMEDIATE_CIPHERS.split(":")) & tls12 and all("GCM" in c or "CHACHA" in c for c in tls12)
    mutual = server_context(TlsConfig(cert_file=str(certs.cert), key_file=str(certs.key), ca_file=str(certs.ca)))
    assert mutual.verify_mode == ssl.CERT_REQUIRED


def test_uvicorn_gets_the_same_settings(certs: DevCerts) -> None:
    assert uvicorn_options(None) == {}
    options = uvicorn_options(TlsConfig(cert_file=str(certs.cert), key_file=str(certs.key), ca_file=str(certs.ca)))
    assert options == {
        "ssl_certfile": str(certs.cert),
        "ssl_keyfile": str(certs.key),
        "ssl_ca_certs": str(certs.ca),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ciphers": INTERMEDIATE_CIPHERS,
    }
    assert uvicorn_options(TlsConfig(cert_file="c", key_file="k"))["ssl_cert_reqs"] == ssl.CERT_NONE
