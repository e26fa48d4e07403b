"""Provider presets: known-good defaults for an issuer's keys, per ``issuers[].provider``.

A preset fills only keys the file does not give (key by key, nested ``claims`` keys included), before validation,
so every value stays overridable and ``idgate check-config`` shows the effective ones. ``login.scopes`` take the
login issuer's preset when the file gives none. ``generic`` sets nothing.

What each preset sets, and why (docs/providers/*.md has the IdP-side settings and links):

=========  ===================================================================================================
keycloak   ``require_at_jwt_typ: false`` (Keycloak access tokens have ``typ: JWT``, not ``at+jwt``);
           ``claims.roles: realm_access.roles`` and ``claims.sources: [id_token, access_token]`` (realm roles are
           in the access token only, unless a mapper adds them to the ID token); ``claims.groups: groups`` (the
           "Group Membership" mapper); login scopes without ``groups`` (Keycloak answers ``invalid_scope`` for a
           scope it does not know). Keycloak access tokens carry ``aud: account`` and ``azp: <client>``: add an
           "Audience" mapper so ``aud`` names your API, and list it in ``audiences``.
entra      ``require_at_jwt_typ: false`` (v2.0 access tokens have ``typ: JWT``); ``claims.groups: groups``,
           ``claims.roles: roles`` (app roles); ``entra: {}`` (groups overage through Microsoft Graph) when the
           issuer has client credentials; ``trust_unverified_email`` stays false (nOAuth).
okta       ``require_at_jwt_typ: false``; ``claims.groups: groups``; login scopes with ``groups`` (Okta's org
           authorization server knows it; a custom server needs a ``groups`` scope and claim defined).
google     nothing about groups: Google puts none in tokens (``hd`` names a Workspace domain): grant roles with
           ``role_sets.*.default`` and routes on ``authenticated``; for ``https://accounts.google.com``,
           ``jwks_uri`` pinned at www.googleapis.com (Google publishes its keys on another host); login
           scopes without ``groups`` or ``offline_access`` (Google refuses both).
=========  ===================================================================================================

Logout endpoints are not a preset's: every one of these IdPs publishes ``end_session_endpoint`` in its discovery
document, which idgate reads (Google publishes none: signing out ends idgate's session only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROVIDERS = ("generic", "keycloak", "entra", "okta", "google")
GOOGLE_ISSUER = "https://accounts.google.com"
GOOGLE_JWKS_URI = "https://www.googleapis.com/oauth2/v3/certs"
"""Google publishes its keys on another host than its issuer's (its discovery document says so)."""

_BASE_SCOPES = ["openid", "profile", "email"]

PRESETS: Mapping[str, Mapping[str, Any]] = {
    "generic": {},
    "keycloak": {
        "require_at_jwt_typ": False,
        "claims": {"groups": "groups", "roles": "realm_access.roles", "sources": ["id_token", "access_token"]},
    },
    "entra": {
        "require_at_jwt_typ": False,
        "claims": {"groups": "groups", "roles": "roles", "sources": ["id_token"]},
    },
    "okta": {
        "require_at_jwt_typ": False,
        "claims": {"groups": "groups", "sources": ["id_token"]},
    },
    "google": {
        "claims": {"sources": ["id_token"]},
    },
}
"""provider → the issuer keys it sets (nested mappings are merged key by key)."""

LOGIN_SCOPES: Mapping[str, tuple[str, ...]] = {
    "generic": ("openid", "profile", "email", "groups", "offline_access"),
    "keycloak": (*_BASE_SCOPES, "offline_access"),
    "entra": (*_BASE_SCOPES, "offline_access"),
    "okta": (*_BASE_SCOPES, "groups", "offline_access"),
    "google": tuple(_BASE_SCOPES),
}
"""provider → ``login.scopes`` when the file gives none (``generic``: the schema's default)."""


def _merged(preset: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over ``preset``, nested mappings merged key by key (a given non-mapping replaces the preset's)."""
    out = dict(preset)
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def issuer_with_preset(issuer: Mapping[str, Any]) -> dict[str, Any]:
    """The raw issuer mapping with its provider's preset under it. An unknown provider is left for the schema to
    report; ``entra: {}`` is added for provider entra only when the issuer has client credentials and no
    ``entra`` key (an explicit ``entra: null`` turns overage resolution off)."""
    provider = issuer.get("provider", "generic")
    preset = PRESETS.get(provider) if isinstance(provider, str) else None
    if preset is None:
        return dict(issuer)
    merged = _merged(preset, issuer)
    if provider == "entra" and "entra" not in issuer and issuer.get("client_id") and "client_secret" in issuer:
        merged["entra"] = {}
    if provider == "google" and issuer.get("issuer") == GOOGLE_ISSUER and "jwks_uri" not in issuer:
        merged |= {"jwks_uri": GOOGLE_JWKS_URI, "jwks_uri_host_mismatch_ok": True}
    return merged


def apply_presets(data: Mapping[str, Any]) -> dict[str, Any]:
    """The raw config with every issuer's preset applied and, when ``login`` gives no ``scopes``, the login
    issuer's preset scopes. Tolerant of malformed input (the schema reports it)."""
    out = dict(data)
    issuers = data.get("issuers")
    if not isinstance(issuers, list):
        return out
    out["issuers"] = [issuer_with_preset(i) if isinstance(i, Mapping) else i for i in issuers]
    login = data.get("login")
    if isinstance(login, Mapping) and "scopes" not in login:
        by_name = {i.get("name"): i for i in issuers if isinstance(i, Mapping) and isinstance(i.get("name"), str)}
        name = login.get("issuer")
        issuer = by_name.get(name) if isinstance(name, str) else None
        provider = issuer.get("provider", "generic") if isinstance(issuer, Mapping) else "generic"
        if isinstance(provider, str) and provider in LOGIN_SCOPES and provider != "generic":
            out["login"] = {**login, "scopes": list(LOGIN_SCOPES[provider])}
    return out
