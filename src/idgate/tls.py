"""TLS on idgate's own listeners (HAProxy → idgate): ``server.tls`` for the HTTP server, ``spoa.tls`` for the SPOA
agent.

Both take ``cert_file`` (PEM certificate chain), ``key_file`` (PEM private key) and, optionally, ``ca_file``: set,
every peer must present a client certificate issued by that CA (mutual TLS, RFC 8446 §4.3.2; an HAProxy ``server``
line's ``crt``). Protocols and ciphers follow HAProxy's own bind defaults in ``haproxy/haproxy.cfg`` (Mozilla
"intermediate": TLS 1.2 with ECDHE and AEAD ciphers only, and TLS 1.3).

:func:`check_tls_files` (used by ``idgate.config_load``) resolves relative paths and proves the files load, so
``idgate check-config`` and ``idgate serve`` refuse a missing file, a key that does not match its certificate or an
unreadable CA before anything listens. :func:`server_context` builds the ``ssl.SSLContext`` the SPOA agent wraps its
connections in; the HTTP server gets the same settings through uvicorn's ``ssl_*`` options (:func:`uvicorn_options`).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from idgate.config import TlsConfig

INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
"""TLS 1.2 cipher suites (the same list as ``ssl-default-bind-ciphers`` in haproxy.cfg); TLS 1.3 suites are
OpenSSL's defaults."""
FILE_KEYS = ("cert_file", "key_file", "ca_file")


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server-side context: TLS >= 1.2, :data:`INTERMEDIATE_CIPHERS`, the certificate chain and key, and with
    ``ca_file`` a required client certificate. Raises ``OSError`` / ``ssl.SSLError`` for unusable files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file:
        context.load_verify_locations(cafile=tls.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def uvicorn_options(tls: TlsConfig | None) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments for the same TLS settings (``{}`` without TLS)."""
    if tls is None:
        return {}
    return {
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_ca_certs": tls.ca_file,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.ca_file else ssl.CERT_NONE,
        "ssl_ciphers": INTERMEDIATE_CIPHERS,
    }


def check_tls_files(section: Mapping[str, Any], where: str, base_dir: Path, problems: list[str]) -> dict[str, Any]:
    """``section`` (the raw ``tls`` mapping of ``where``, e.g. ``"spoa.tls"``) with its file paths resolved against
    ``base_dir``; a problem line for each unreadable file, and one when the files do not load together. Never
    raises; a malformed section is left to the schema."""
    resolved = dict(section)
    for key in FILE_KEYS:
        if isinstance(resolved.get(key), str):
            resolved[key] = str(base_dir / resolved[key])
            if not Path(resolved[key]).is_file():
                problems.append(f"{where}.{key}: {resolved[key]} is not a readable file")
                return resolved
    if all(isinstance(resolved.get(key), str) for key in ("cert_file", "key_file")):
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(resolved["cert_file"], resolved["key_file"])
            if isinstance(resolved.get("ca_file"), str):
                context.load_verify_locations(cafile=resolved["ca_file"])
        except (OSError, ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc.__class__.__name__
            problems.append(f"{where}: cert_file, key_file and ca_file do not load as PEM ({reason})")
    return resolved
