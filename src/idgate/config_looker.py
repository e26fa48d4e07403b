"""The ``looker:`` block of a ``looker_embed`` upstream: where Looker is, its secrets, and per role what the
embed user gets (Looker "Signed embedding", "Cookieless embedding"; API 4.0 ``EmbedSsoParams``).

Secrets (``embed_secret``, ``client_secret``) are only ever filled from ``X_env`` / ``X_file``
(:mod:`idgate.config_load`). Unknown permission names are refused: Looker ignores or refuses them at login time,
after the user has already been let through, so a typo would surface as a broken embed instead of here.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

LOOKER_EMBED_PERMISSIONS = frozenset(
    {
        "access_data",
        "see_lookml_dashboards",
        "see_looks",
        "see_user_dashboards",
        "explore",
        "create_table_calculations",
        "create_custom_fields",
        "can_create_forecast",
        "save_content",
        "create_public_looks",
        "download_with_limit",
        "download_without_limit",
        "schedule_look_emails",
        "schedule_external_look_emails",
        "create_alerts",
        "follow_alerts",
        "send_to_s3",
        "send_to_sftp",
        "send_outgoing_webhook",
        "send_to_integration",
        "see_sql",
        "see_lookml",
        "develop",
        "deploy",
        "support_access_toggle",
        "use_sql_runner",
        "clear_cache_refresh",
        "see_drill_overlay",
        "embed_browse_spaces",
        "embed_save_shared_space",
    }
)
"""The permissions Looker's "Signed embedding" page lists for embed users (``permissions`` parameter)."""
MAX_SESSION_LENGTH_SECONDS = 2_592_000
"""Looker's ceiling for ``session_length``: 30 days (API 4.0 ``EmbedSsoParams.session_length``)."""
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class LookerRoleGrant(_Model):
    """What one idgate role gives the Looker embed user. A user holding several roles gets the union of
    ``permissions``, ``models`` and ``group_ids``; ``user_attributes`` and ``access_filters`` merge in role order
    (the more privileged role wins a key) and ``external_group_id`` is the most privileged role's that sets one."""

    permissions: tuple[str, ...]
    models: tuple[str, ...]
    group_ids: tuple[int, ...] = ()
    external_group_id: str | None = None
    user_attributes: dict[str, str] = {}
    access_filters: dict[str, dict[str, str]] = {}  # legacy parameter: model → field → filter value

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one Looker permission (access_data to see any data)")
        unknown = sorted(set(value) - LOOKER_EMBED_PERMISSIONS)
        if unknown:
            raise ValueError(
                f"unknown Looker embed permissions: {', '.join(unknown)} (Looker's signed embedding permissions: "
                f"{', '.join(sorted(LOOKER_EMBED_PERMISSIONS))})"
            )
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one LookML model: Looker refuses an embed user without models")
        bad = [m for m in value if not _NAME.match(m)]
        if bad:
            raise ValueError(f"not LookML model names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("user_attributes")
    @classmethod
    def _attributes(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.match(r"^[a-z][a-z0-9_]{0,127}$", k)]
        if bad:
            raise ValueError(f"user attribute names are lower-case snake_case: {', '.join(map(repr, bad))}")
        return value


class LookerEmbedConfig(_Model):
    """Looker for a ``looker_embed`` upstream.

    ``url`` is Looker as the browser reaches it (``https://looker.example.com``, a port when one is needed);
    its host[:port] is the first line of the signature. ``api_url`` is the API's base
    (``https://looker.example.com:19999`` on older self-hosted instances); without it (and ``client_id`` +
    ``client_secret``) cookieless embedding is off. ``embed_secret`` enables signed embedding.
    """

    url: str
    embed_secret: SecretStr | None = None  # only from embed_secret_env / embed_secret_file
    api_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None  # only from client_secret_env / client_secret_file
    session_length_seconds: int = Field(default=3600, ge=60, le=MAX_SESSION_LENGTH_SECONDS)
    force_logout_login: bool = True
    api_timeout_seconds: float = Field(default=5, gt=0, le=30)
    ca_file: str | None = None  # PEM CA bundle for TLS to api_url (a private CA); default: the system store
    roles: dict[str, LookerRoleGrant]

    @field_validator("url", "api_url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{value!r} must be https://host[:port] without a path")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{value!r}: no query, fragment or credentials")
        if parts.scheme == "http" and not (info.context or {}).get("dev_mode"):
            raise ValueError(f"{value!r} is not https (allowed only with dev_mode: true)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _modes(self) -> LookerEmbedConfig:
        if not self.roles:
            raise ValueError("roles: map at least one role of the upstream's role set to Looker permissions")
        api = (self.api_url is not None, self.client_id is not None, self.client_secret is not None)
        if any(api) and not all(api):
            raise ValueError("cookieless embedding needs api_url, client_id and client_secret_env/_file together")
        if self.embed_secret is None and not all(api):
            raise ValueError(
                "set embed_secret_env/_file (signed embedding) or api_url + client credentials (cookieless)"
            )
        return self

    @property
    def host(self) -> str:
        """``host[:port]`` of :attr:`url`: the first line of Looker's string to sign."""
        return urlsplit(self.url).netloc

    @property
    def signed(self) -> bool:
        """Signed embedding is configured (an embed secret)."""
        return self.embed_secret is not None

    @property
    def cookieless(self) -> bool:
        """Cookieless embedding is configured (API URL and credentials)."""
        return self.api_url is not None and self.client_secret is not None
