"""The stack with a ``looker_embed`` upstream (``analytics``) in front of the Looker contract stub (NOT Looker):
the stub starts first (its port goes into idgate's config), then the stack of :func:`stack.run_stack`.

The stub is plain HTTP on loopback, so this stack's idgate runs with ``dev_mode: true`` (which only admits http
URLs). Groups → roles: ``looker-analysts`` → ``looker_viewer``, ``looker-developers`` → ``looker_developer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack import Mode, Stack, run_stack

from idgate_devstack.looker_stub import LookerStub

EMBED_SECRET = "looker-stub-embed-secret-4f1c9a7e2b6d8035"
API_CLIENT_ID = "idgate-api3-client"
API_CLIENT_SECRET = "looker-stub-api3-secret-8d2e61b0c4a79f35"
VIEWER = {"permissions": ["access_data", "see_user_dashboards", "see_looks"], "models": ["sales"]}
DEVELOPER = {
    "permissions": ["access_data", "see_user_dashboards", "see_looks", "explore", "see_sql"],
    "models": ["sales", "finance"],
    "group_ids": [7],
    "user_attributes": {"region": "Île-de-France"},
}


@dataclass(frozen=True, kw_only=True)
class LookerStack:
    """The running stack and the stub behind its ``analytics`` upstream."""

    stack: Stack
    looker: LookerStub


def looker_extra(looker: LookerStub, secrets_dir: Path) -> dict[str, Any]:
    """idgate config sections adding the ``analytics`` looker_embed upstream (signed and cookieless)."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    (secrets_dir / "looker_embed_secret").write_text(EMBED_SECRET)
    (secrets_dir / "looker_client_secret").write_text(API_CLIENT_SECRET)
    for name in ("looker_embed_secret", "looker_client_secret"):
        (secrets_dir / name).chmod(0o600)
    return {
        "dev_mode": True,
        "role_sets": {
            "analytics": {
                "roles": ["looker_viewer", "looker_developer"],
                "from_groups": {"looker-analysts": ["looker_viewer"], "looker-developers": ["looker_developer"]},
            }
        },
        "upstreams": {
            "analytics": {
                "profile": "looker_embed",
                "role_set": "analytics",
                "looker": {
                    "url": looker.url,
                    "embed_secret_file": str(secrets_dir / "looker_embed_secret"),
                    "api_url": looker.url,
                    "client_id": API_CLIENT_ID,
                    "client_secret_file": str(secrets_dir / "looker_client_secret"),
                    "session_length_seconds": 900,
                    "roles": {"looker_viewer": VIEWER, "looker_developer": DEVELOPER},
                },
            }
        },
    }


@contextlib.contextmanager
def run_looker_stack(root: Path, *, mode: Mode) -> Iterator[LookerStack]:
    """The Looker stub, then the stack with the ``analytics`` upstream, under ``root``."""
    with LookerStub(
        "analytics",
        embed_secret=EMBED_SECRET,
        client_id=API_CLIENT_ID,
        client_secret=API_CLIENT_SECRET,
        secrets_dir=root / "looker-stub",
    ) as looker:
        extra = looker_extra(looker, root / "looker-secrets")
        with run_stack(root / "stack", mode=mode, idgate_extra=extra) as stack:
            yield LookerStack(stack=stack, looker=looker)
