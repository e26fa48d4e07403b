"""Fuzz targets for values idgate reads or writes: ``config`` (the YAML file) and ``identity`` (rendered headers).

Contracts: see ``fuzz_targets``.
"""

from __future__ import annotations

import atexit
import base64
import os
import quopri
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from fuzz_common import text

from idgate.config import UpstreamConfig
from idgate.config_load import load_config, summarize
from idgate.errors import ConfigError
from idgate.identity import render_identity
from idgate.principal import Principal

# --- config ---------------------------------------------------------------------------------------------------------

_CONFIG_HOME = Path(tempfile.mkdtemp(prefix="idgate-fuzz-config-"))
"""``config/`` holds the fuzzed file; ``.run/demo/`` the files ``config/demo.yaml`` names, so seeds validate."""
atexit.register(shutil.rmtree, _CONFIG_HOME, ignore_errors=True)
CONFIG_ENVIRON: Final[Mapping[str, str]] = {
    "IDGATE_CLIENT_SECRET": "fuzz-client-secret-0123456789",
    "IDGATE_SESSION_KEYS": base64.b64encode(bytes(range(32))).decode("ascii"),
}


def _config_home() -> Path:
    secrets = _CONFIG_HOME / ".run" / "demo" / "secrets"
    if not secrets.is_dir():
        secrets.mkdir(parents=True)
        (_CONFIG_HOME / ".run" / "demo" / "tls").mkdir(parents=True)
        (_CONFIG_HOME / ".run" / "demo" / "tls" / "ca.pem").write_text("not read by the loader\n")
        (secrets / "client_secret").write_text(CONFIG_ENVIRON["IDGATE_CLIENT_SECRET"] + "\n")
        (secrets / "session_keys").write_text(CONFIG_ENVIRON["IDGATE_SESSION_KEYS"] + "\n")
        for name in ("looker_embed_secret", "looker_client_secret"):  # config/demo.yaml's looker_embed upstream
            (secrets / name).write_text(f"fuzz-{name.replace('_', '-')}-0123456789\n")
        (_CONFIG_HOME / "config").mkdir()
    return _CONFIG_HOME / "config" / f"fuzz-{os.getpid()}.yaml"


def fuzz_config(data: bytes) -> None:
    path = _config_home()
    path.write_bytes(data)
    try:
        config = load_config(path, environ=CONFIG_ENVIRON)
    except ConfigError as exc:
        problems = exc.problems
    else:
        assert isinstance(summarize(config), str)
        return
    assert problems and all(isinstance(p, str) and p for p in problems), problems


# --- identity -------------------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
_NOTES = frozenset(
    {f"{slot}_dropped_control_char" for slot in ("user", "email", "name", "role", "subject", "issuer")}
    | {"groups_entry_dropped", "roles_entry_dropped", "email_dropped_unverified"}
)
_UPSTREAMS = (
    UpstreamConfig(profile="generic", user_from="username"),
    UpstreamConfig(profile="looker", user_from="email"),
    UpstreamConfig(profile="grafana", user_from="subject"),
)


def decode_listed(value: str, *, profile: str) -> list[str]:
    """What an upstream reads from a rendered list slot: split on ``,``, then decode each entry."""
    if value == "":
        return []
    if profile == "grafana":
        return [quopri.decodestring(item.encode("ascii")).decode("utf-8") for item in value.split(",")]
    return [urllib.parse.unquote(item, errors="strict") for item in value.split(",")]


def fuzz_identity(data: bytes) -> None:
    fields = [text(part) for part in data.split(b"\xff")]
    fields += [""] * (5 - len(fields))
    user, email, name, subject, issuer = (f or None for f in fields[:5])
    groups = tuple(dict.fromkeys(g for g in fields[5:] if g))
    principal = Principal(
        issuer=issuer or "https://idp.example",
        subject=subject or "sub",
        username=user,
        email=email,
        name=name,
        groups=groups,
        expires_at=0.0,
        email_verified=not data[:1] or data[0] % 2 == 0,  # both sides of the verified-email rule
    )
    roles = groups[:3]
    for upstream in _UPSTREAMS:
        identity = render_identity(principal, upstream, roles)
        assert set(identity.notes) <= _NOTES, identity.notes
        if not principal.email_verified:  # an unverified email is never passed on (idgate.identity.usable_email)
            assert "email" not in identity.values
        for slot, value in identity.values.items():
            assert _HEADER_SAFE.fullmatch(value), (slot, value)
        for slot, items in (("groups", groups), ("roles", roles)):
            kept = [g for g in items if "," not in g and not _CONTROL.search(g)]
            assert decode_listed(identity.values[slot], profile=upstream.profile) == kept, (slot, items)
            assert (f"{slot}_entry_dropped" in identity.notes) == (len(kept) != len(items))
