"""Dev/test TLS material: a throw-away CA and a loopback server certificate.

Generated at run time into a directory of the caller's choice and never committed. The server certificate covers
``localhost``, ``127.0.0.1`` and ``::1`` (plus any extra names), so HAProxy, the test IdP and Python clients can all
use it; clients trust ``ca.pem``. It is also good for client authentication (extended key usage ``clientAuth``), so
HAProxy can present ``server.pem`` to idgate's listeners in the mutual-TLS tests.

Files written (all PEM):
    ca.pem          the CA certificate (give it to clients as the trust anchor)
    server.crt      the server certificate
    server.key      its private key (mode 0600)
    server.pem      certificate + key concatenated, the form HAProxy's ``crt`` takes
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, kw_only=True)
class DevCerts:
    """Paths of generated dev TLS material."""

    ca: Path
    cert: Path
    key: Path
    pem: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True, kw_only=True)
class CertBytes:
    """PEM bytes of a throw-away CA certificate, a server certificate and its private key (PKCS#8)."""

    ca: bytes
    cert: bytes
    key: bytes


def issue_dev_certs(
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
    days: int = 7,
    ca_name: str = "idgate dev CA",
) -> CertBytes:
    """A fresh EC P-256 CA and a server certificate for ``dns_names`` + ``ip_addresses``, valid ``days`` days
    (from 5 minutes ago). The CA key is discarded. Pure: writes nothing."""
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0] if dns_names else "idgate"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return CertBytes(
        ca=ca_cert.public_bytes(pem),
        cert=cert.public_bytes(pem),
        key=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def generate_dev_certs(directory: Path, *, extra_names: tuple[str, ...] = ()) -> DevCerts:
    """Write a CA and a server certificate for loopback names into ``directory``; valid for 7 days.

    Returns the paths. Reuses nothing: every call makes fresh keys.
    """
    directory.mkdir(parents=True, exist_ok=True)
    issued = issue_dev_certs(dns_names=("localhost", *extra_names))
    out = DevCerts(
        ca=directory / "ca.pem",
        cert=directory / "server.crt",
        key=directory / "server.key",
        pem=directory / "server.pem",
    )
    out.ca.write_bytes(issued.ca)
    out.cert.write_bytes(issued.cert)
    out.key.write_bytes(issued.key)
    out.key.chmod(0o600)
    out.pem.write_bytes(issued.cert + issued.key)
    out.pem.chmod(0o600)
    return out
