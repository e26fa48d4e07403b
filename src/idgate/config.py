"""The configuration schema: one YAML file, validated by pydantic v2.

Every model forbids unknown keys, and validates its defaults like given values (a default that would make the
file useless, such as no audience, is a problem too). Checks that need the whole file (route → upstream, roles in a
role set) live in :mod:`idgate.config_load`, which also reads the file, resolves secrets and reports every problem
at once. See ``config/idgate.example.yaml`` for every key, commented.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from idgate.config_looker import LookerEmbedConfig
from idgate.peers import LOOPBACK_TEXT, parse_networks

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
CLAIM_PATH_RE = re.compile(r"^[A-Za-z0-9_:/\-]+(\.[A-Za-z0-9_:/\-]+)*$")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
GRPC_METHOD_RE = re.compile(rf"/(?:{_IDENT}\.)*{_IDENT}/(?:{_IDENT}|\*)")
MIN_TRUSTED_PREFIX = {4: 8, 6: 32}
"""The widest network ``trusted_callers`` may list: an IPv4 /8, an IPv6 /32. A wider one trusts a large part of the
internet to send facts to ``/auth``; list HAProxy's own addresses."""
_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")  # how a dual-stack socket shows IPv4 peers (RFC 4291 §2.5.5.2)
GRAFANA_ROLES = ("Viewer", "Editor", "Admin")
"""Grafana's organisation roles, the vocabulary of a ``grafana`` upstream's role set (its auth proxy Role header)."""
GRAFANA_ADMIN = "GrafanaAdmin"
"""Grafana's server-admin role: only [auth.jwt] with ``allow_assign_grafana_admin`` grants it, and only with
``allow_grafana_admin: true`` on the upstream."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def split_bind(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9190"`` → ``("127.0.0.1", 9190)``, ``"[::1]:9190"`` → ``("::1", 9190)``; the host is an IP
    address or a DNS name. Raises ValueError otherwise (no port, port outside 1-65535, bad host)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (port 1-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"{value!r}: brackets are for IPv6 addresses only")
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, [::1]:9190")
    if not re.fullmatch(r"[A-Za-z0-9.\-]+|[0-9A-Fa-f:.]+", host):
        raise ValueError(f"{value!r}: the host must be an IP address or a DNS name")
    return host, int(port)


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    """A ``trusted_callers`` list: not empty, every entry an IPv4/IPv6 network (``idgate.peers.parse_networks``)
    without host bits and no wider than :data:`MIN_TRUSTED_PREFIX`; ValueError naming every bad entry otherwise."""
    if not value:
        raise ValueError("list at least one network (HAProxy's address): an empty list refuses every caller")
    problems = [p for text in value if (p := _trusted_network_problem(text))]
    if problems:
        raise ValueError("; ".join(problems))
    parse_networks(value)
    return value


class TlsConfig(_Model):
    """TLS on one of idgate's listeners (``idgate.tls``); paths are relative to the config file."""

    cert_file: str  # PEM certificate chain (leaf first)
    key_file: str  # PEM private key of the leaf
    ca_file: str | None = None  # set: peers must present a client certificate issued by this CA (mutual TLS)


class ServerConfig(_Model):
    """Where the auth service listens and who may ask it for decisions."""

    host: str = "127.0.0.1"
    port: int = Field(default=9180, ge=1, le=65535)
    # Only these networks may call /auth (HAProxy's address). Like uvicorn's forwarded-allow-ips: known hops only.
    # Not empty, no host bits, none wider than MIN_TRUSTED_PREFIX.
    trusted_callers: tuple[str, ...] = LOOPBACK_TEXT
    # Seconds a single decision may take before it is answered as a deny (fail closed).
    decision_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # Verified bearer tokens remembered until their exp (0 disables the cache: every request verifies in full).
    token_cache_entries: int = Field(default=10_000, ge=0, le=10_000_000)
    # GET /metrics on a listener of its own ("host:port", "[::1]:9190"; plain HTTP, for Prometheus on a management
    # network); this port then answers /metrics with 404. Unset: /metrics is served on this port to trusted_callers.
    metrics_bind: str | None = None
    # HTTPS on this port (/auth, /.idgate/*, /metrics); HAProxy: IDGATE_SERVICE_TLS. metrics_bind stays plain HTTP.
    tls: TlsConfig | None = None
    # Worker processes of `idgate serve` (each its own event loop, caches and SPOA agent, sharing the HTTP and SPOA
    # listening sockets; idgate.supervisor). Unset: the number of usable cores with store.kind: redis, else 1. More
    # than 1 needs store.kind: redis (revocations, logout-token replay, refresh lock). CLI: --workers.
    workers: int | None = Field(default=None, ge=1, le=64)

    _trusted_callers = field_validator("trusted_callers")(_networks)

    @field_validator("metrics_bind")
    @classmethod
    def _metrics_bind(cls, value: str | None) -> str | None:
        if value is not None:
            split_bind(value)
        return value

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of ``metrics_bind``, None when unset."""
        return None if self.metrics_bind is None else split_bind(self.metrics_bind)

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerConfig:
        if self.metrics_address is not None and self.metrics_address[1] == self.port:
            raise ValueError("metrics_bind needs a port of its own (not server.port)")
        return self


def _trusted_network_problem(text: str) -> str | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"{text!r} is not an IP network"
    host = text.split("/")[0]
    if ipaddress.ip_address(host) != net.network_address:
        return f"{text!r} has host bits set: write {net} for the network, or {host}/{net.max_prefixlen} for one host"
    version, prefix = net.version, net.prefixlen
    if net.version == 6 and net.overlaps(_IPV4_MAPPED):  # IPv4 peers of a dual-stack socket are ::ffff:a.b.c.d
        version, prefix = 4, max(prefix - 96, 0)
    if prefix < MIN_TRUSTED_PREFIX[version]:
        return (
            f"{text!r} is too wide: a trusted caller can assert any request facts; list HAProxy's addresses "
            f"(at most an IPv4 /{MIN_TRUSTED_PREFIX[4]} or an IPv6 /{MIN_TRUSTED_PREFIX[6]})"
        )
    return None


class SpoaConfig(_Model):
    """The SPOA agent (SPOE mode): HAProxy's SPOE filter connects here (``IDGATE_SPOA_ADDR``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=9181, ge=1, le=65535)
    max_in_flight: int = Field(default=64, ge=1, le=4096)  # concurrent decisions per HAProxy connection
    idle_timeout_seconds: float = Field(default=60, gt=0)  # above HAProxy's `timeout idle 30s`: HAProxy closes first
    read_timeout_seconds: float = Field(default=5, gt=0)  # a half frame then silence is cut after this
    # Only peers in these networks may connect (HAProxy's address); others are closed before HELLO, logged
    # (spoa_untrusted_caller), counted and audited as 403 untrusted_caller. Same form as server.trusted_callers.
    trusted_callers: tuple[str, ...] = LOOPBACK_TEXT
    # SPOP over TLS (handshake after the trusted_callers check); HAProxy: IDGATE_SPOA_TLS.
    tls: TlsConfig | None = None

    _trusted_callers = field_validator("trusted_callers")(_networks)


class ClaimPaths(_Model):
    """Dotted claim paths (``realm_access.roles``) for the principal's attributes (OIDC Core §5.1)."""

    subject: str = "sub"
    username: str = "preferred_username"
    email: str = "email"
    name: str = "name"
    groups: str = "groups"
    # A second list of group-like values (Entra ID app roles `roles`, Keycloak realm roles `realm_access.roles`),
    # added to the groups: role_sets.*.from_groups and allow.groups name them like groups. Unset: none.
    roles: str | None = None
    # Browser sessions: where groups/roles are read, in this order (idgate.sso.claim_sources): the ID token, the
    # access token from the token endpoint (when it is a JWT signed by this issuer), the userinfo answer. The
    # groups of every source are joined; identity (sub, username, email, name) always comes from the ID token.
    # Bearer tokens always use the token's own claims.
    sources: tuple[Literal["id_token", "access_token", "userinfo"], ...] = ("id_token",)

    @field_validator("subject", "username", "email", "name", "groups", "roles")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not CLAIM_PATH_RE.match(value):
            raise ValueError(f"not a claim path: {value!r}")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("list one or more of id_token, access_token, userinfo, each once")
        return value


class EntraSettings(_Model):
    """Entra ID "groups overage": a token naming more groups than fit says so with ``_claim_names.groups`` (or
    ``hasgroups``) instead of listing them; idgate asks Microsoft Graph for the user's groups
    (``GET /users/{oid}/transitiveMemberOf``, app-only token by client credentials) at login and refresh, bounded
    by these limits (seconds, pages, groups). Any failure: no groups, reason ``groups_overage_unresolved``."""

    graph_url: str = "https://graph.microsoft.com/v1.0"  # override for tests (a Graph contract stub)
    scope: str = "https://graph.microsoft.com/.default"  # of the app-only token (client credentials grant)
    timeout_seconds: float = Field(default=5, gt=0, le=30)  # the whole resolution: token + every page
    max_pages: int = Field(default=5, ge=1, le=50)
    max_groups: int = Field(default=1000, ge=1, le=10_000)
    max_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)  # per answer

    @field_validator("graph_url")
    @classmethod
    def _graph_url(cls, value: str, info: ValidationInfo) -> str:
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(f"{value!r} is not an absolute http(s) URL without query or fragment")
        if value.startswith("http://") and not (info.context or {}).get("dev_mode"):
            raise ValueError(f"{value!r} is not https (allowed only with dev_mode: true)")
        return value.rstrip("/")


class JwksSettings(_Model):
    """JWKS cache tuning (seconds, bytes). TTL comes from the response's Cache-Control max-age, clamped to
    [min, max]; behaviour in :mod:`idgate.jwks`."""

    min_ttl_seconds: float = Field(default=60, ge=0)
    max_ttl_seconds: float = Field(default=86400, gt=0)
    # background refetches of an expired set, and retries after a failed fetch, start at most this often
    refetch_cooldown_seconds: float = Field(default=30, ge=0)
    # refetches forced by a kid not in the set start at most this often: a key the IdP publishes and signs with at
    # once is accepted within this window plus one fetch, and a flood of random kids costs one fetch per window
    unknown_kid_cooldown_seconds: float = Field(default=2, ge=0, le=60)
    # a kid that a fresh fetch did not hold (or that was withdrawn) is refused at once, without a fetch, this long;
    # keep it short: a kid refused before the IdP publishes it (an attacker guessing a predictable kid) stays
    # refused up to this long after publication, unless another fetch brings it in first
    negative_kid_ttl_seconds: float = Field(default=5, ge=0, le=3600)
    timeout_seconds: float = Field(default=5, gt=0, le=60)
    max_bytes: int = Field(default=512 * 1024, gt=0)


class IssuerConfig(_Model):
    """One trusted token issuer (an OpenID Provider or OAuth 2.0 authorization server)."""

    name: str
    # A preset of known-good defaults for this IdP (idgate.presets): every key it sets can still be given here.
    provider: Literal["generic", "keycloak", "entra", "okta", "google"] = "generic"
    issuer: str
    discovery: bool = True
    # jwks_uri on another host than the issuer's is refused unless pinned here (e.g. Google: accounts.google.com
    # publishes its keys at www.googleapis.com). Declared before jwks_uri, whose validator reads it.
    jwks_uri_host_mismatch_ok: bool = False
    jwks_uri: str | None = None
    ca_file: str | None = None
    audiences: tuple[str, ...] = ()  # required: the default fails validation
    algorithms: tuple[str, ...] = ("RS256",)
    require_at_jwt_typ: bool = True
    leeway_seconds: float = Field(default=30, ge=0, le=300)
    max_token_bytes: int = Field(default=16384, ge=512, le=65536)
    claims: ClaimPaths = ClaimPaths()
    jwks: JwksSettings = JwksSettings()
    client_id: str | None = None
    client_secret: SecretStr | None = None  # only ever filled from client_secret_env / client_secret_file
    # Use this issuer's `email` as an identity (user_from: email, the email slot, assertions) even when the token does
    # not carry `email_verified: true`. Only for an IdP that verifies every address and does not send the claim;
    # logged as a WARNING at startup. Never for Entra ID, whose `email` a user can edit (nOAuth).
    trust_unverified_email: bool = False
    # Entra ID groups overage through Microsoft Graph (needs client_id and a client secret); provider entra sets it.
    entra: EntraSettings | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("must match [a-z][a-z0-9_]* (at most 63 characters)")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("pin at least one algorithm")
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))} not allowed: an OpenID Provider signs with asymmetric keys; "
                f"'none' and HS* are refused (RFC 8725 §3.1). Allowed: {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
            )
        return value

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not a.strip() for a in value):
            raise ValueError("at least one non-empty audience is required (RFC 9068 §4: aud must name us)")
        return value

    @field_validator("issuer", "jwks_uri")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(f"{value!r} is not an absolute http(s) URL without query or fragment")
        if value.startswith("http://") and not (info.context or {}).get("dev_mode"):
            raise ValueError(f"{value!r} is not https (allowed only with dev_mode: true)")
        return value

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_host(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A field validator, not a model one: it runs (and reports) even when other fields are wrong."""
        pinned, issuer = info.data.get("jwks_uri_host_mismatch_ok"), info.data.get("issuer")
        if value is None:
            if pinned:
                raise ValueError("jwks_uri_host_mismatch_ok is set without a jwks_uri")
            return None
        keys_host = urlsplit(value).hostname
        issuer_host = urlsplit(issuer).hostname if isinstance(issuer, str) else keys_host
        if keys_host != issuer_host and not pinned:
            raise ValueError(
                f"jwks_uri is on host {keys_host!r}, not the issuer's {issuer_host!r}: whoever serves those keys signs "
                "for this issuer; set jwks_uri_host_mismatch_ok: true if the issuer really publishes them there"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> IssuerConfig:
        problems = []
        if not self.discovery and self.jwks_uri is None:
            problems.append("set jwks_uri when discovery is false")
        if self.jwks.min_ttl_seconds > self.jwks.max_ttl_seconds:
            problems.append("jwks.min_ttl_seconds exceeds jwks.max_ttl_seconds")
        if self.entra is not None and (self.client_id is None or self.client_secret is None):
            problems.append("entra (groups overage through Microsoft Graph) needs client_id and a client secret")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RoleSet(_Model):
    """A per-upstream role vocabulary and the IdP groups that grant each role.

    ``roles`` is ordered by ascending privilege (Grafana: Viewer, Editor, Admin); the highest granted one is the
    principal's single ``role``.
    """

    roles: tuple[str, ...]
    from_groups: dict[str, tuple[str, ...]] = {}
    # A role granted to every authenticated user of the upstreams using this set ("everyone else is Viewer").
    # Explicit only: unset (the default) grants nothing without a matching group.
    default: str | None = None

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a role set needs at least one role")
        if len(set(value)) != len(value):
            raise ValueError("roles must be unique")
        for role in value:
            if not re.match(r"^[A-Za-z0-9_.:\-]+$", role):
                raise ValueError(f"role {role!r} may only use letters, digits and _ . : -")
        return value

    @model_validator(mode="after")
    def _mapped_roles_exist(self) -> RoleSet:
        unknown = sorted({r for rs in self.from_groups.values() for r in rs} - set(self.roles))
        if unknown:
            raise ValueError(f"from_groups grants roles not in this role set: {', '.join(unknown)}")
        if self.default is not None and self.default not in self.roles:
            raise ValueError(f"default role {self.default!r} is not in this role set")
        return self


class UpstreamConfig(_Model):
    """An upstream profile: how identity is presented to one kind of upstream."""

    # gate: a product that signs users in itself (Looker with its own OIDC): idgate gates it by group and sends
    # X-Auth-*; looker_embed: idgate is Looker's embedding application (docs/looker.md). "looker" is the deprecated
    # name of gate (a check-config warning).
    profile: Literal["generic", "grafana", "gate", "looker", "looker_embed"] = "generic"
    role_set: str | None = None
    # Which principal attribute becomes the user value: Grafana's header_property is username or email.
    user_from: Literal["username", "email", "subject"] = "username"
    # When set, idgate mints a short-lived signed JWT with this audience for the upstream (needs `assertion`).
    assertion_audience: str | None = None
    # profile grafana: the role set may also name GrafanaAdmin (Grafana's server admin), granted only by Grafana's
    # [auth.jwt] with allow_assign_grafana_admin = true.
    allow_grafana_admin: bool = False
    # profile looker_embed: Looker's URL, secrets and per role what the embed user gets (idgate.config_looker)
    looker: LookerEmbedConfig | None = None

    @field_validator("assertion_audience")
    @classmethod
    def _audience(cls, value: str | None) -> str | None:
        if value is not None and (not value or value != value.strip()):
            raise ValueError("must be a non-empty audience without surrounding spaces (omit it for no assertion)")
        return value

    @model_validator(mode="after")
    def _grafana_admin(self) -> UpstreamConfig:
        if self.allow_grafana_admin and self.profile != "grafana":
            raise ValueError("allow_grafana_admin applies to profile grafana only")
        if (self.looker is not None) != (self.profile == "looker_embed"):
            raise ValueError("profile looker_embed needs a looker block, and a looker block needs profile looker_embed")
        if self.profile == "looker_embed" and self.role_set is None:
            raise ValueError("profile looker_embed needs a role_set: its roles decide the Looker permissions")
        return self


class SessionConfig(_Model):
    """Browser sessions: an AEAD-encrypted cookie (``__Host-`` prefix, Secure, HttpOnly, SameSite=Lax, Path=/)."""

    cookie_name: str = "__Host-idgate"
    keys: SecretStr | None = None  # only from keys_env / keys_file: base64 32-byte keys, first one encrypts
    idle_timeout_seconds: float = Field(default=8 * 3600, gt=0)
    absolute_timeout_seconds: float = Field(default=24 * 3600, gt=0)
    refresh_before_seconds: float = Field(default=60, ge=0)
    refresh_grace_seconds: float = Field(default=300, ge=0)
    max_chunks: int = Field(default=4, ge=1, le=4)  # 4 x 3800-byte chunks fit the 16 KiB Cookie budget

    @field_validator("cookie_name")
    @classmethod
    def _cookie_name(cls, value: str) -> str:
        if not re.match(r"^__Host-[A-Za-z0-9_\-]{1,40}$", value):
            raise ValueError("cookie_name must start with __Host- and use only letters, digits, _ and -")
        return value

    @model_validator(mode="after")
    def _lifetimes(self) -> SessionConfig:
        if self.keys is None:
            raise ValueError("set keys_env or keys_file (base64 32-byte AEAD keys; the first one encrypts)")
        if self.idle_timeout_seconds > self.absolute_timeout_seconds:
            raise ValueError("idle_timeout_seconds exceeds absolute_timeout_seconds")
        return self


class LoginConfig(_Model):
    """Browser login (OIDC authorization code + PKCE S256) on the reserved prefix ``/.idgate/``."""

    # Exactly one of: ``issuer`` (one IdP) or ``issuers`` (several, with a chooser page): names of issuers[]
    # entries that have client_id and a client secret.
    issuer: str | None = None
    issuers: tuple[str, ...] = ()
    # Several IdPs: the one /.idgate/start uses without ?idp= on the host (Host header, "host" or "host:port")
    # named here, else default_issuer, else the chooser page.
    default_issuer_by_host: dict[str, str] = {}
    default_issuer: str | None = None
    # exact, one per site: https://<host>/.idgate/callback, or per IdP https://<host>/.idgate/callback/<name>
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uri: str | None = None
    allowed_return_origins: tuple[str, ...] = ()  # besides the site being logged into
    scopes: tuple[str, ...] = ("openid", "profile", "email", "groups", "offline_access")
    resource: str | None = None  # RFC 8707 resource indicator (audience of the access token)
    login_timeout_seconds: float = Field(default=600, gt=0, le=3600)
    # A back-channel logout token is accepted only while its `iat` is at most this old (plus the issuer's leeway);
    # its `jti` is remembered for that window (Back-Channel Logout 1.0 §2.6).
    logout_token_max_age_seconds: float = Field(default=300, gt=0, le=3600)

    @field_validator("redirect_uris")
    @classmethod
    def _redirect_uris(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one redirect URI is required")
        dev_mode = bool((info.context or {}).get("dev_mode"))
        for uri in value:
            if not re.match(r"^https://[^/?#\s@]+/\.idgate/callback(/[a-z][a-z0-9_]*)?$", uri) and not (
                dev_mode and re.match(r"^http://[^/?#\s@]+/\.idgate/callback(/[a-z][a-z0-9_]*)?$", uri)
            ):
                raise ValueError(
                    f"{uri!r} must be https://<host[:port]>/.idgate/callback or .../.idgate/callback/<issuer name> "
                    "exactly"
                )
        return value

    @model_validator(mode="after")
    def _idp_names(self) -> LoginConfig:
        """Every problem of the IdP selection at once (names are checked against issuers[] by the loader)."""
        problems = []
        if (self.issuer is None) == (not self.issuers):
            problems.append("set exactly one of issuer (one IdP) or issuers (several IdPs)")
        if len(set(self.issuers)) != len(self.issuers):
            problems.append("issuers lists a name twice")
        names = set(self.issuer_names)
        if self.default_issuer is not None and self.default_issuer not in names:
            problems.append(f"default_issuer {self.default_issuer!r} is not in login.issuers")
        for host, name in self.default_issuer_by_host.items():
            if name not in names:
                problems.append(f"default_issuer_by_host[{host!r}]: {name!r} is not in login.issuers")
            if host != host.strip().lower() or not host or "/" in host:
                problems.append(f"default_issuer_by_host: {host!r} must be a lowercase host or host:port")
        for uri in self.redirect_uris:
            tail = uri.rsplit("/.idgate/callback", 1)[-1]
            if tail and tail[1:] not in names:
                problems.append(f"redirect_uris: {uri!r} names no login issuer")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def issuer_names(self) -> tuple[str, ...]:
        """The login IdPs' issuers[] names, in config order (the chooser's order); the first is the fallback."""
        return (self.issuer,) if self.issuer is not None else self.issuers

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("scopes must include openid")
        return value


class AssertionRotation(_Model):
    """How the shared assertion key ring rotates (``store.kind: redis``; :mod:`idgate.assertion_ring`).

    ``publish_seconds``: a rotation's next key is published this long before it signs (at least the upstream's JWKS
    cache time: Grafana ``[auth.jwt] cache_ttl``, plus ``poll_seconds``); ``poll_seconds``: how often each replica
    re-reads the ring (its bound on picking up a rotation)."""

    publish_seconds: float = Field(default=300, ge=0, le=7 * 86400)
    poll_seconds: float = Field(default=1.0, gt=0, le=60)


class AssertionConfig(_Model):
    """Signed identity assertions (short-lived JWTs) for upstreams such as Grafana's [auth.jwt]."""

    issuer: str  # the iss of minted assertions, e.g. https://idgate.example.com
    lifetime_seconds: int = Field(default=120, ge=30, le=300)
    algorithm: Literal["ES256", "RS256"] = "ES256"
    keys_file: str | None = None  # PEM private key(s); without it a key is generated at start (memory store)
    rotation: AssertionRotation = AssertionRotation()

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value or value != value.strip():
            raise ValueError(
                "must be a non-empty iss value without surrounding spaces, e.g. https://idgate.example.com"
            )
        return value


class AllowRule(_Model):
    """Who may pass a non-public route. Any listed condition suffices; ``authenticated`` admits any principal."""

    authenticated: bool = False
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


class RouteConfig(_Model):
    """host + path → upstream, and either ``public: true`` or an ``allow`` rule. First match wins.

    ``grpc`` instead of ``path``/``match`` names one gRPC method, ``/pkg.Service/Method``, or every method of a
    service, ``/pkg.Service/*`` (the ``:path`` of a gRPC call, gRPC over HTTP/2 "Path"). It matches on the path
    alone, whatever the content type, so a request dressed as non-gRPC cannot slip past a method's rule to a
    later route. ``authorization: strip`` removes the client's Authorization header (the bearer token) before
    the upstream; ``pass`` (default) forwards it.
    """

    name: str
    host: str = "*"
    path: str = "/"
    match: Literal["prefix", "exact"] = "prefix"
    grpc: str | None = None
    upstream: str
    public: bool = False
    allow: AllowRule | None = None
    authorization: Literal["pass", "strip"] = "pass"

    @field_validator("grpc")
    @classmethod
    def _grpc(cls, value: str | None) -> str | None:
        if value is not None and not GRPC_METHOD_RE.fullmatch(value):
            raise ValueError(f"grpc {value!r} must be /pkg.Service/Method or /pkg.Service/* (gRPC identifiers)")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "?#%\\*") or "/../" in value + "/":
            raise ValueError(f"path {value!r} must be an absolute, normalised path without ? # % \\ * or ..")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.lower()
        if value != "*" and not re.match(r"^[a-z0-9.\-]+$|^\[[0-9a-f:.]+\]$", value):
            raise ValueError(f"host {value!r} must be '*' or an exact host name without port")
        return value

    @model_validator(mode="after")
    def _rule(self) -> RouteConfig:
        if self.grpc is not None and {"path", "match"} & self.model_fields_set:
            raise ValueError(f"route {self.name!r}: grpc and path/match are exclusive")
        if self.public and self.allow is not None:
            raise ValueError(f"route {self.name!r}: public and allow are exclusive")
        if not self.public and (
            self.allow is None or not (self.allow.authenticated or self.allow.roles or self.allow.groups)
        ):
            raise ValueError(f"route {self.name!r} has no rule: set public: true or a non-empty allow")
        return self


class StoreTlsConfig(_Model):
    """TLS to Redis (``rediss://``): a CA bundle to verify the server, and optionally a client certificate + key."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> StoreTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file (a client certificate and its key), or neither")
        return self


class StoreConfig(_Model):
    """Where the replicas share revocations, the logout-token replay cache and the refresh lock.

    ``memory`` (the default) serves one process. ``redis`` shares them through Redis or Valkey at ``url``
    (``redis://host:port/db`` or ``rediss://`` with ``tls``; no password in the URL: ``password_env`` or
    ``password_file``). Every call is bounded by ``timeout_seconds``; see :mod:`idgate.store.redis` for the
    behaviour while Redis is down.
    """

    kind: Literal["memory", "redis"] = "memory"
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None  # only from password_env / password_file
    tls: StoreTlsConfig | None = None
    key_prefix: str = "idgate:"
    timeout_seconds: float = Field(default=0.2, gt=0, le=5)
    max_pending: int = Field(default=10_000, ge=1, le=1_000_000)  # revocations queued while Redis is down

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.:{}-]{1,64}$", value):
            raise ValueError("key_prefix: 1-64 letters, digits and _ . : - { }")
        return value

    @model_validator(mode="after")
    def _redis(self) -> StoreConfig:
        if self.kind == "memory":
            if self.url is not None or self.tls is not None or self.password is not None:
                raise ValueError("url, tls and password apply to kind: redis only")
            return self
        if self.url is None:
            raise ValueError("kind: redis needs a url (redis://host:port/db or rediss://host:port/db)")
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("url must be redis://host:port/db or rediss://host:port/db")
        if parts.username or parts.password:
            raise ValueError("no credentials in url: use username and password_env or password_file")
        if parts.query or parts.fragment:
            raise ValueError("url: no query or fragment (timeouts and TLS are keys of store)")
        if self.tls is not None and parts.scheme != "rediss":
            raise ValueError("tls needs a rediss:// url")
        return self


class AuditConfig(_Model):
    """Structured JSON audit log: one line per decision."""

    log_allows: bool = True


class CacheConfig(_Model):
    """The decision cache inside HAProxy (:mod:`idgate.cache_entry`; README "The decision cache in HAProxy").

    ``enabled``: idgate marks cacheable allows (``cache_ttl`` / ``cache_entry`` answer variables); false: it never
    does, so HAProxy never stores. ``max_ttl_seconds`` bounds every entry (how long a group change at the IdP takes
    to bite). The sweeper (:mod:`idgate.cache_purge`) evicts expired entries every ``sweep_interval_seconds`` and,
    above ``max_entries`` per HAProxy, the soonest-expiring ones first.
    """

    enabled: bool = True
    max_ttl_seconds: int = Field(default=30, ge=1, le=3600)
    max_entries: int = Field(default=100_000, ge=1, le=10_000_000)
    sweep_interval_seconds: float = Field(default=1.0, ge=0.1, le=300)


_RUNTIME_API_RE = re.compile(r"^(unix:/[^\s;#]+|/[^\s;#]+|tcp:([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5})$")


class HaproxyConfig(_Model):
    """HAProxy as idgate reaches it: the Runtime API sockets (``stats socket … level admin``) of every HAProxy
    in front, as ``unix:/path`` or ``tcp:host:port``; the decision cache's purges and sweeps go to each. ``cache_map``
    is the name of the map the cache's entries live in exactly as haproxy.cfg spells it (``IDGATE_CACHE_MAP``; the
    Runtime API knows a map by that string, relative or not; default: the empty file shipped next to haproxy.cfg)."""

    runtime_api: tuple[str, ...] = ()
    cache_map: str = "idgate-cache.map"

    @field_validator("runtime_api")
    @classmethod
    def _sockets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if not _RUNTIME_API_RE.fullmatch(v)]
        if bad:
            raise ValueError(f"not unix:/path or tcp:host:port (no spaces, ';' or '#'): {', '.join(map(repr, bad))}")
        if len(set(value)) != len(value):
            raise ValueError("a Runtime API address is listed twice")
        return value

    @field_validator("cache_map")
    @classmethod
    def _map(cls, value: str) -> str:
        if not value or value.startswith("#") or any(c.isspace() or c in ";" or ord(c) < 32 for c in value):
            raise ValueError("cache_map must be a file name without spaces or ';', not starting with '#'")
        return value


class DecisionMemoConfig(_Model):
    """The agent's memo of finished allows (:mod:`idgate.memo`): a repeat request (same credential, cookies, method,
    host and path) is answered without deciding again, never past the token's ``exp`` nor ``max_ttl_seconds``."""

    # entries kept (least recently used go first); 0 turns the memo off
    max_entries: int = Field(default=10_000, ge=0, le=1_000_000)
    # seconds an answer may be reused at most: how long a group change at the IdP or a new JWKS may take to bite
    max_ttl_seconds: float = Field(default=10.0, gt=0, le=30)


class Config(_Model):
    """The whole idgate configuration."""

    dev_mode: bool = False
    server: ServerConfig = ServerConfig()
    issuers: tuple[IssuerConfig, ...]
    role_sets: dict[str, RoleSet] = {}
    upstreams: dict[str, UpstreamConfig]
    routes: tuple[RouteConfig, ...]
    audit: AuditConfig = AuditConfig()
    decision_memo: DecisionMemoConfig = DecisionMemoConfig()
    spoa: SpoaConfig | None = None
    sessions: SessionConfig | None = None
    login: LoginConfig | None = None
    assertion: AssertionConfig | None = None
    store: StoreConfig = StoreConfig()
    cache: CacheConfig = CacheConfig()
    haproxy: HaproxyConfig = HaproxyConfig()
