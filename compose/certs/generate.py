"""One-shot init of the Docker Compose stack: TLS material and secrets, written into two named volumes.

compose/docker-compose.yml runs this as the ``certs`` service (the idgate image, as root, no network) before any
other service starts; the others wait for it with ``depends_on: condition: service_completed_successfully``.

    python generate.py --tls-dir DIR --secrets-dir DIR [--redis-dir DIR] [--group GID] --dns NAME... [--ip ADDR...]

Writes (PEM unless noted):

    <tls-dir>/ca.pem                  a throw-away CA: the trust anchor for idgate, Grafana, the IdP's back-channel
                                      calls and, if you import it, your browser                        (0644)
    <tls-dir>/server.crt              the one server certificate (HAProxy and the IdP), SANs = --dns and --ip (0644)
    <tls-dir>/server.key              its private key                                                  (0640)
    <tls-dir>/server.pem              certificate + key, the form HAProxy's ``crt`` takes                (0640)
    <secrets-dir>/client_secret       the OIDC client secret idgate and the test IdP share (text)      (0640)
    <secrets-dir>/session_keys        idgate's session-cookie AEAD key: base64 of 32 random bytes      (0640)
    <secrets-dir>/assertion_key.pem   idgate's ES256 key for Grafana's signed assertions               (0640)
    <redis-dir>/password              the password of the stack's Redis (idgate's shared store), text; a
                                      directory of its own, so the Redis container sees no other secret (0640)

Private files belong to root and group ``--group`` (the gid the idgate image runs as; HAProxy gets it through
``group_add``), so only the services that need them can read them.

Idempotent, because it runs on every ``docker compose up``: secrets are kept once written (browser sessions survive a
restart, and Grafana's cached JWKS keeps matching idgate's assertion key); the TLS material is kept unless a file is
missing, the certificate expires within --renew-days or lacks a requested name. No secret is ever printed.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idgate_devstack.certs import issue_dev_certs

PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o640


def _write(path: Path, data: bytes, *, mode: int, gid: int | None) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename) with ``mode``, group ``gid`` when root."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    if gid is not None and os.geteuid() == 0:
        os.chown(tmp, 0, gid)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _tls_is_current(tls_dir: Path, dns: Sequence[str], ips: Sequence[str], renew_days: int) -> bool:
    """True when every TLS file exists, the certificate covers every requested name and is not about to expire."""
    paths = [tls_dir / n for n in ("ca.pem", "server.crt", "server.key", "server.pem")]
    if not all(p.is_file() for p in paths):
        return False
    try:
        cert = x509.load_pem_x509_certificate((tls_dir / "server.crt").read_bytes())
        key = serialization.load_pem_private_key((tls_dir / "server.key").read_bytes(), password=None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = set(san.get_values_for_type(x509.DNSName)) | {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    want = set(dns) | {str(ipaddress.ip_address(a)) for a in ips}
    fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=renew_days)
    same_key = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return want <= have and fresh and same_key


def write_tls(tls_dir: Path, *, dns: Sequence[str], ips: Sequence[str], days: int, gid: int | None) -> None:
    """A new CA and a server certificate for ``dns`` + ``ips``, valid ``days`` days; the CA key is not kept."""
    issued = issue_dev_certs(dns_names=dns, ip_addresses=ips, days=days, ca_name="idgate compose CA")
    _write(tls_dir / "ca.pem", issued.ca, mode=PUBLIC_MODE, gid=gid)
    _write(tls_dir / "server.key", issued.key, mode=PRIVATE_MODE, gid=gid)
    _write(tls_dir / "server.pem", issued.cert + issued.key, mode=PRIVATE_MODE, gid=gid)
    _write(tls_dir / "server.crt", issued.cert, mode=PUBLIC_MODE, gid=gid)


def write_secrets(secrets_dir: Path, *, gid: int | None) -> list[str]:
    """Create each missing secret file; return the names written (existing ones are kept as they are)."""
    makers: dict[str, Callable[[], bytes]] = {
        "client_secret": lambda: secrets.token_urlsafe(32).encode(),
        "session_keys": lambda: base64.b64encode(secrets.token_bytes(32)),
        "assertion_key.pem": lambda: _pem_key(ec.generate_private_key(ec.SECP256R1())),
    }
    written = []
    for name, make in makers.items():
        path = secrets_dir / name
        if not path.is_file() or path.stat().st_size == 0:
            _write(path, make(), mode=PRIVATE_MODE, gid=gid)
            written.append(name)
    return written


def write_redis_password(redis_dir: Path, *, gid: int | None) -> bool:
    """Create ``<redis_dir>/password`` (43 URL-safe characters) unless it exists; True when written."""
    path = redis_dir / "password"
    if path.is_file() and path.stat().st_size > 0:
        return False
    _write(path, secrets.token_urlsafe(32).encode(), mode=PRIVATE_MODE, gid=gid)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tls-dir", type=Path, required=True)
    parser.add_argument("--secrets-dir", type=Path, required=True)
    parser.add_argument("--redis-dir", type=Path, default=None, help="where to write the Redis password")
    parser.add_argument("--group", type=int, default=None, help="gid that may read the private files")
    parser.add_argument("--dns", action="append", default=[], help="DNS name for the server certificate (repeat)")
    parser.add_argument("--ip", action="append", default=[], help="IP address for the server certificate (repeat)")
    parser.add_argument("--days", type=int, default=90, help="certificate validity (default 90)")
    parser.add_argument("--renew-days", type=int, default=7, help="renew when fewer days remain (default 7)")
    args = parser.parse_args(argv)
    if not args.dns:
        parser.error("give at least one --dns name")
    private_dirs = [d for d in (args.secrets_dir, args.redis_dir) if d is not None]
    for directory, mode in ((args.tls_dir, 0o755), *((d, 0o750) for d in private_dirs)):
        directory.mkdir(parents=True, exist_ok=True)
        if args.group is not None and os.geteuid() == 0:
            os.chown(directory, 0, args.group)
        directory.chmod(mode)
    if _tls_is_current(args.tls_dir, args.dns, args.ip, args.renew_days):
        print(f"certs: TLS material in {args.tls_dir} is current, kept")
    else:
        write_tls(args.tls_dir, dns=args.dns, ips=args.ip, days=args.days, gid=args.group)
        print(f"certs: wrote a new CA and server certificate to {args.tls_dir} for {', '.join(args.dns + args.ip)}")
    written = write_secrets(args.secrets_dir, gid=args.group)
    print(f"certs: secrets in {args.secrets_dir}: " + (f"wrote {', '.join(written)}" if written else "all kept"))
    if args.redis_dir is not None:
        wrote = write_redis_password(args.redis_dir, gid=args.group)
        print(f"certs: Redis password in {args.redis_dir}: " + ("wrote it" if wrote else "kept"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
