"""``idgate init``: a complete, commented starter configuration for one identity provider.

    idgate init --provider keycloak --issuer https://sso.example.com/realms/corp --client-id idgate \\
        [--site https://app.example.com] [--audience API] [--out DIR] [--client-secret-env NAME]

Writes into ``DIR`` (default ``./idgate``, created): ``idgate.yaml`` (every section, commented; the provider's
preset sets the IdP-specific keys, shown in comments), ``secrets/session_keys`` (one random 32-byte AEAD key,
base64) and ``secrets/assertion_key.pem`` (a new ES256 key, :func:`idgate.assertion.generate_key_pem`), both mode
0600 in a 0700 directory. The client secret is never written: the config names an environment variable
(``IDGATE_CLIENT_SECRET``) or, with ``--client-secret-file``, a file the operator fills. Existing files are never
overwritten (exit 1). The result passes ``idgate check-config`` once the client secret is there. Exit codes: 0 written,
1 a file exists or the values make no valid config (every problem listed), 2 usage error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from idgate.assertion import generate_key_pem
from idgate.config_load import load_config
from idgate.errors import ConfigError
from idgate.presets import LOGIN_SCOPES, PRESETS, PROVIDERS

DOCS = {
    "keycloak": "docs/providers/keycloak.md",
    "entra": "docs/providers/entra.md",
    "okta": "docs/providers/okta.md",
    "google": "docs/providers/google.md",
    "generic": "README.md (Configuration)",
}
GROUP_EXAMPLES: Mapping[str, tuple[str, str]] = {  # provider → (a group that gives Viewer, one that gives Admin)
    "keycloak": ("staff", "grafana-admins"),  # realm roles or groups (Group Membership mapper, full path off)
    "entra": ("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"),  # group object IDs
    "okta": ("Everyone", "grafana-admins"),
    "google": ("", ""),  # Google sends no groups: the role set's default gives the role
    "generic": ("staff", "grafana-admins"),
}

TEMPLATE = """\
# idgate starter configuration for {provider_title}, written by `idgate init`. Check it: idgate check-config {config}
# Every key is documented in config/idgate.example.yaml; the IdP side of this setup: {docs}.
# Secrets are never inline: the client secret comes from {secret_source}, keys from files under secrets/ (0600).

# true only for local development (http:// issuer or redirect URIs). Never in production.
dev_mode: {dev_mode}

server:
  host: 127.0.0.1                      # where HAProxy reaches idgate (/auth, /.idgate/*); keep it private
  port: 9180
  trusted_callers: ["127.0.0.1/32", "::1/128"]   # HAProxy's source addresses
  decision_timeout_seconds: 2.0        # a later decision is a deny (503)

spoa:                                  # HAProxy SPOE mode (IDGATE_MODE=spoe); remove for auth_request mode only
  host: 127.0.0.1
  port: 9181
  trusted_callers: ["127.0.0.1/32", "::1/128"]

issuers:
  - name: {name}
    # The preset sets this IdP's known-good defaults ({preset_keys}); any key written here wins, key by key.
    # `idgate check-config` prints the effective values.
    provider: {provider}
    issuer: {issuer}                   # exactly the `iss` of its tokens
    audiences: [{audience}]            # bearer tokens must name this API in `aud`{audience_note}
    algorithms: [RS256]
    client_id: {client_id}
    {secret_key}: {secret_value}
    # claims: {{groups: groups, roles: null, sources: [id_token]}}   # where groups live (the preset's choice)

role_sets:
  grafana:
    roles: [Viewer, Editor, Admin]     # ascending privilege: the highest granted one is the user's role
    from_groups: {from_groups}
    # A role for every authenticated user of the upstreams using this set (explicit; unset: none).
    {default_line}

upstreams:
  grafana: {{profile: grafana, role_set: grafana, user_from: email, assertion_audience: grafana}}
  app: {{profile: generic}}

routes:                                # first match wins; no match is a deny
  - {{name: grafana, host: "*", path: /grafana, upstream: grafana, allow: {{roles: [Viewer, Editor, Admin]}}}}
  - {{name: app, host: "*", path: /, upstream: app, allow: {{authenticated: true}}}}

login:                                 # browser sign-in (authorization code + PKCE) at {site}/.idgate/
  issuer: {name}
  redirect_uris: [{site}/.idgate/callback]   # register exactly this at the IdP
  post_logout_redirect_uri: {site}/
  # scopes: {scopes}   # the preset's; the IdP refuses scopes it does not know (invalid_scope)

sessions:                              # the encrypted session cookie (__Host-idgate)
  keys_file: secrets/session_keys      # base64 32-byte keys, one a line; the first encrypts (rotate by prepending)
  idle_timeout_seconds: 28800
  absolute_timeout_seconds: 86400

# Signed identity for Grafana's [auth.jwt] (jwk_set_url: {site}/.idgate/jwks.json).
assertion:
  issuer: {site}
  algorithm: ES256
  keys_file: secrets/assertion_key.pem

audit:
  log_allows: true

store:
  kind: memory                         # one replica; several replicas share Redis: {{kind: redis, url: redis://...}}
"""


def _yaml_scalar(value: str) -> str:
    return json.dumps(value)


def render(
    *, provider: str, issuer: str, client_id: str, site: str, audience: str, secret_env: str | None, secret_file: str
) -> str:
    """The starter config text (see the module doc)."""
    viewer, admin = GROUP_EXAMPLES[provider]
    from_groups = "{}" if not viewer else f"{{{_yaml_scalar(viewer)}: [Viewer], {_yaml_scalar(admin)}: [Admin]}}"
    default_line = "default: Viewer" if provider == "google" else "# default: Viewer"
    preset = PRESETS[provider]
    preset_keys = ", ".join(sorted(preset)) if preset else "nothing: generic"
    return TEMPLATE.format(
        provider_title={"generic": "a generic OpenID Provider", "entra": "Microsoft Entra ID"}.get(
            provider, provider.capitalize()
        ),
        provider=provider,
        docs=DOCS[provider],
        config="idgate.yaml",
        secret_source=f"${secret_env}" if secret_env else secret_file,
        dev_mode="true" if issuer.startswith("http://") or site.startswith("http://") else "false",
        name="idp",
        preset_keys=preset_keys,
        issuer=_yaml_scalar(issuer),
        audience=_yaml_scalar(audience),
        audience_note=" (Keycloak: add an Audience mapper)" if provider == "keycloak" else "",
        client_id=_yaml_scalar(client_id),
        secret_key="client_secret_env" if secret_env else "client_secret_file",
        secret_value=_yaml_scalar(secret_env or secret_file),
        from_groups=from_groups,
        default_line=default_line,
        site=site.rstrip("/"),
        scopes=list(LOGIN_SCOPES[provider]),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never overwriting: FileExistsError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def run_init(args: argparse.Namespace) -> int:
    """Write the starter files (see the module doc); returns the exit code."""
    out = Path(args.out)
    targets = [out / "idgate.yaml", out / "secrets" / "session_keys", out / "secrets" / "assertion_key.pem"]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        print(f"idgate init: not overwriting {', '.join(existing)}", file=sys.stderr)
        return 1
    secret_file = args.client_secret_file or "secrets/client_secret"
    text = render(
        provider=args.provider,
        issuer=args.issuer,
        client_id=args.client_id,
        site=args.site,
        audience=args.audience or args.client_id,
        secret_env=None if args.client_secret_file else args.client_secret_env,
        secret_file=secret_file,
    )
    (out / "secrets").mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(targets[1], base64.b64encode(os.urandom(32)) + b"\n", 0o600)
    _write(targets[2], generate_key_pem("ES256"), 0o600)
    _write(targets[0], text.encode(), 0o644)
    print(f"wrote {targets[0]}, {targets[1]} (0600), {targets[2]} (0600)")
    where = f"export {args.client_secret_env}=..." if not args.client_secret_file else f"put it in {secret_file}"
    print(f"next: the client secret from the IdP ({where}), then: idgate check-config {targets[0]}")
    print(f"IdP-side settings: {DOCS[args.provider]}")
    try:
        load_config(targets[0])
    except ConfigError as exc:
        unrelated = [p for p in exc.problems if "client_secret" not in p and "client secret" not in p]
        if unrelated:  # anything but the secret still to come: the values given make no valid config
            print("idgate init: the starter config has problems:", *unrelated, sep="\n  - ", file=sys.stderr)
            return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``idgate init`` to the ``idgate`` parser."""
    p = sub.add_parser(
        "init",
        help="write a complete, commented starter config for one IdP (keys generated into files)",
        description="Write idgate.yaml and secrets/ for one identity provider; the client secret stays outside.",
    )
    p.add_argument("--provider", required=True, choices=PROVIDERS)
    p.add_argument("--issuer", required=True, help="the IdP's issuer URL, exactly as in its tokens' iss")
    p.add_argument("--client-id", required=True, help="the client (application) registered at the IdP for idgate")
    p.add_argument("--site", default="https://app.example.com", help="the https origin users browse (HAProxy)")
    p.add_argument("--audience", help="the aud bearer tokens for your API carry (default: the client id)")
    p.add_argument("--out", default="idgate", help="directory to write into (default ./idgate)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--client-secret-env", default="IDGATE_CLIENT_SECRET", help="variable holding the secret")
    secret.add_argument("--client-secret-file", help="file holding the secret (relative to --out)")
    p.set_defaults(run=run_init)
