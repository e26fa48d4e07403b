"""Checks of secret values, session and assertion keys and CA bundles; problems never show a value."""

from __future__ import annotations

import base64
import copy
import datetime
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from idgate.config_checks import (
    assertion_key_problems,
    ca_bundle_problems,
    key_ring_problems,
    secret_problems,
    weak_key_bytes,
)
from idgate.config_load import parse_config
from idgate.errors import ConfigError

BASE: dict[str, Any] = {
    "issuers": [{"name": "corp", "issuer": "https://idp.example.com", "audiences": ["https://api.example.com"]}],
    "upstreams": {"app": {}},
    "routes": [{"name": "app", "path": "/app", "upstream": "app", "allow": {"authenticated": True}}],
}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, password: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


def certificate(key: ec.EllipticCurvePrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("changeme", "a placeholder"),
        ("please-change-me-0123456789", "a placeholder"),
        ("${IDGATE_CLIENT_SECRET}", "a placeholder"),
        ("<client secret from the IdP>", "a placeholder"),
        ("REPLACE_ME_WITH_THE_REAL_ONE", "a placeholder"),
        ("password", "a placeholder"),
        ("short-secret", "too short"),
        ("a" * 40, "one character repeated"),
    ],
)
def test_weak_client_secrets(value: str, expected: str) -> None:
    (problem,) = secret_problems(value)
    assert expected in problem and value not in problem


def test_a_real_client_secret_passes() -> None:
    assert secret_problems("idgate-test-secret-0123456789abcdef") == []
    assert secret_problems(base64.urlsafe_b64encode(os.urandom(32)).decode()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no keys"),
        (b64(b"\x00" * 32), "key 1 of 1 is weak: all one byte value"),
        (b64(b"\xaa" * 32), "key 1 of 1 is weak: all one byte value"),
        (b64(bytes(range(32))), "key 1 of 1 is weak: the bytes 0x00, 0x01, 0x02"),
        (b64(b"changemechangemechangemechangeme"), "key 1 of 1 is weak: printable text"),
        (b64(b"0123456789abcdef0123456789abcdef"), "key 1 of 1 is weak: printable text"),
        (b64(bytes([0, 1, 2, 3, 0xF0, 0xF1, 0xF2, 0xF3] * 4)), "key 1 of 1 is weak: fewer than 16 distinct"),
        (b64(os.urandom(16)), "key 1 of 1 is 16 bytes, need exactly 32 random bytes"),
        (b64(os.urandom(31)), "key 1 of 1 is 31 bytes"),
        (b64(os.urandom(48)), "key 1 of 1 is 48 bytes"),
        (os.urandom(32).hex(), "hex is not accepted"),
        ("changeme", "key 1 of 1 is a placeholder"),
        ("<session-key>", "key 1 of 1 is a placeholder"),
        ("not base64!", "key 2 of 2 is not base64 or base64url text"),
    ],
)
def test_weak_session_keys(text: str, expected: str) -> None:
    found = key_ring_problems(text)
    assert any(expected in p for p in found), found
    assert not any(text and text in p for p in found)


def test_session_keys_in_both_alphabets_padding_optional_and_no_repeats() -> None:
    first, second = os.urandom(32), os.urandom(32)
    ring = f"{base64.urlsafe_b64encode(first).decode().rstrip('=')}\n{b64(second)}"
    assert key_ring_problems(ring) == []
    assert key_ring_problems(f"{ring}, {b64(first)}") == ["key 3 of 3 repeats key 1"]
    assert key_ring_problems(f"{b64(b'x' * 32)} {ring} {b64(b'y' * 16)}") == [
        "key 1 of 4 is weak: all one byte value",
        "key 4 of 4 is 16 bytes, need exactly 32 random bytes",
    ]


def test_weak_key_bytes_accepts_random_keys() -> None:
    assert all(weak_key_bytes(os.urandom(32)) is None for _ in range(1000))


def test_weak_session_keys_refuse_the_config_without_printing_them(tmp_path: Path) -> None:
    weak = b64(b"\x01" * 32)
    (tmp_path / "keys").write_text(f"{weak}\n")
    doc = copy.deepcopy(BASE) | {"sessions": {"keys_file": "keys"}}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={}, base_dir=tmp_path)
    assert info.value.problems == ("sessions.keys: weak or placeholder secret: key 1 of 1 is weak: all one byte value",)
    doc["sessions"] = {"keys_env": "KEYS"}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={"KEYS": weak}, base_dir=tmp_path)
    assert weak not in str(info.value) and "all one byte value" in str(info.value)
    good = parse_config(doc, environ={"KEYS": b64(os.urandom(32))})
    assert good.sessions is not None and good.sessions.keys is not None


# RFC 7515 Appendix A.3: the ES256 example key, whose private value is printed in the RFC.
RFC7515_A3 = ec.EllipticCurvePrivateNumbers(
    int.from_bytes(base64.urlsafe_b64decode("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI=")),
    ec.EllipticCurvePublicNumbers(
        int.from_bytes(base64.urlsafe_b64decode("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU=")),
        int.from_bytes(base64.urlsafe_b64decode("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0=")),
        ec.SECP256R1(),
    ),
).private_key()


def test_assertion_keys(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    assert assertion_key_problems(pem(ec_key), "ES256") == []
    assert assertion_key_problems(pem(rsa_key), "RS256") == []
    assert assertion_key_problems(pem(ec_key) + "\n" + pem(ec.generate_private_key(ec.SECP256R1())), "ES256") == []
    weak = ec.derive_private_key(int.from_bytes(b"\x07" * 32), ec.SECP256R1())
    cases = {
        "": "holds no PEM private key",
        "changeme": "holds no PEM private key",
        certificate(ec_key): "key 1 of 1 is not an unencrypted PEM private key",
        pem(ec_key, password=b"pw"): "key 1 of 1 is not an unencrypted PEM private key",
        pem(rsa_key): "key 1 of 1 does not fit ES256: it needs an EC P-256 private key",
        pem(ec.generate_private_key(ec.SECP384R1())): "key 1 of 1 does not fit ES256",
        pem(RFC7515_A3): "key 1 of 1 is an example key published in an RFC",
        pem(weak): "key 1 of 1 is weak: its private value is all one byte value",
        pem(ec_key) + pem(ec_key): "key 2 of 2 repeats key 1",
    }
    for text, expected in cases.items():
        assert any(expected in p for p in assertion_key_problems(text, "ES256")), (expected, text[:40])
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused on purpose
    assert assertion_key_problems(pem(small), "RS256") == [
        "key 1 of 1 does not fit RS256: it needs an RSA private key of 2048+ bits"
    ]
    assert assertion_key_problems(pem(ec_key), "RS256") == [
        "key 1 of 1 does not fit RS256: it needs an RSA private key of 2048+ bits"
    ]


def test_an_unusable_assertion_key_file_refuses_the_config(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    (tmp_path / "assertion.pem").write_text(pem(rsa_key))
    doc = copy.deepcopy(BASE) | {"assertion": {"issuer": "https://idgate.example.com", "keys_file": "assertion.pem"}}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={}, base_dir=tmp_path)
    assert info.value.problems == (
        f"assertion.keys_file: {tmp_path / 'assertion.pem'}: key 1 of 1 does not fit ES256: it needs an EC P-256 "
        "private key",
    )
    doc["assertion"]["algorithm"] = "RS256"
    assert parse_config(doc, environ={}, base_dir=tmp_path).assertion is not None


def test_ca_bundles(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    (tmp_path / "ca.pem").write_text(certificate(ec_key))
    assert ca_bundle_problems(tmp_path / "ca.pem") == []
    for name, text in {"key.pem": pem(ec_key), "junk.pem": "not a certificate\n", "empty.pem": ""}.items():
        (tmp_path / name).write_text(text)
        (problem,) = ca_bundle_problems(tmp_path / name)
        assert problem.startswith(f"{tmp_path / name} holds no usable PEM CA certificate"), problem
    doc = copy.deepcopy(BASE)
    doc["issuers"][0]["ca_file"] = "junk.pem"
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={}, base_dir=tmp_path)
    (problem,) = info.value.problems
    assert problem.startswith(f"issuers.0.ca_file: {tmp_path / 'junk.pem'} holds no usable PEM CA certificate")
    doc["issuers"][0]["ca_file"] = "ca.pem"
    assert parse_config(doc, environ={}, base_dir=tmp_path).issuers[0].ca_file == str(tmp_path / "ca.pem")
