"""Provider presets (idgate.presets): defaults under the file's keys, key by key; role_sets.*.default; the
check-config summary of effective values and of which groups give which role."""

from __future__ import annotations

from typing import Any

import pytest

from idgate.config_load import parse_config, summarize
from idgate.config_warnings import config_warnings
from idgate.errors import ConfigError
from idgate.policy import Policy
from idgate.presets import LOGIN_SCOPES, PRESETS, PROVIDERS

SECRET = "s3cr3t-value-for-tests-0123456789"


def _raw(provider: str, **issuer: Any) -> dict[str, Any]:
    return {
        "issuers": [
            {
                "name": "idp",
                "provider": provider,
                "issuer": "https://idp.test/realms/corp",
                "audiences": ["api"],
                "client_id": "idgate",
                "client_secret_env": "SECRET",
                **issuer,
            }
        ],
        "role_sets": {"grafana": {"roles": ["Viewer", "Editor", "Admin"], "from_groups": {"admins": ["Admin"]}}},
        "upstreams": {"grafana": {"profile": "grafana", "role_set": "grafana"}},
        "routes": [{"name": "all", "upstream": "grafana", "allow": {"authenticated": True}}],
        "sessions": {"keys_env": "KEYS"},
        "login": {"issuer": "idp", "redirect_uris": ["https://app.test/.idgate/callback"]},
    }


ENV = {"SECRET": SECRET, "KEYS": "ce3yjDzyKjE/jLpnVXXwyCODtETS6BjukyJfBxB1qx4="}


def test_every_provider_has_a_preset_and_scopes() -> None:
    assert set(PRESETS) == set(PROVIDERS) == set(LOGIN_SCOPES)


def test_keycloak_preset_sets_its_shapes() -> None:
    config = parse_config(_raw("keycloak"), environ=ENV)
    issuer = config.issuers[0]
    assert issuer.require_at_jwt_typ is False
    assert issuer.claims.roles == "realm_access.roles"
    assert issuer.claims.sources == ("id_token", "access_token")
    assert config.login is not None and "groups" not in config.login.scopes


def test_a_given_key_overrides_the_preset_key_by_key() -> None:
    config = parse_config(_raw("keycloak", require_at_jwt_typ=True, claims={"groups": "grp"}) | {}, environ=ENV)
    issuer = config.issuers[0]
    assert issuer.require_at_jwt_typ is True
    assert issuer.claims.groups == "grp"
    assert issuer.claims.roles == "realm_access.roles"  # the rest of the preset's claims stay


def test_given_login_scopes_win_over_the_preset() -> None:
    raw = _raw("okta")
    raw["login"]["scopes"] = ["openid", "email"]
    config = parse_config(raw, environ=ENV)
    assert config.login is not None and config.login.scopes == ("openid", "email")


def test_okta_asks_for_groups_and_generic_keeps_the_schema_default() -> None:
    okta = parse_config(_raw("okta"), environ=ENV)
    generic = parse_config(_raw("generic"), environ=ENV)
    assert okta.login is not None and "groups" in okta.login.scopes
    assert generic.login is not None and generic.login.scopes == LOGIN_SCOPES["generic"]
    assert generic.issuers[0].require_at_jwt_typ is True


def test_entra_turns_on_overage_resolution_only_with_client_credentials() -> None:
    config = parse_config(_raw("entra"), environ=ENV)
    assert config.issuers[0].entra is not None
    assert config.issuers[0].claims.roles == "roles"
    raw = _raw("entra")
    del raw["issuers"][0]["client_secret_env"], raw["login"], raw["sessions"]
    assert parse_config(raw, environ=ENV).issuers[0].entra is None
    raw = _raw("entra", entra=None)
    assert parse_config(raw, environ=ENV).issuers[0].entra is None


def test_entra_settings_without_credentials_are_a_problem() -> None:
    raw = _raw("generic", entra={"graph_url": "https://graph.test/v1.0"})
    del raw["issuers"][0]["client_secret_env"], raw["login"], raw["sessions"]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ=ENV)
    assert any("entra" in p and "client secret" in p for p in caught.value.problems)


def test_google_pins_its_key_host() -> None:
    config = parse_config(_raw("google", issuer="https://accounts.google.com"), environ=ENV)
    issuer = config.issuers[0]
    assert issuer.jwks_uri == "https://www.googleapis.com/oauth2/v3/certs"
    assert config.login is not None and "offline_access" not in config.login.scopes


def test_unknown_provider_is_a_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_raw("auth0"), environ=ENV)
    assert any(p.startswith("issuers.0.provider") for p in caught.value.problems)


def test_default_role_is_explicit_and_must_exist() -> None:
    raw = _raw("generic")
    config = parse_config(raw, environ=ENV)
    policy = Policy(config=config)
    upstream = config.upstreams["grafana"]
    assert policy.roles_for(upstream, ()) == ()  # never implicit
    raw["role_sets"]["grafana"]["default"] = "Viewer"
    config = parse_config(raw, environ=ENV)
    policy = Policy(config=config)
    assert policy.roles_for(config.upstreams["grafana"], ()) == ("Viewer",)
    assert policy.roles_for(config.upstreams["grafana"], ("admins",)) == ("Viewer", "Admin")
    raw["role_sets"]["grafana"]["default"] = "Owner"
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ=ENV)
    assert any("default role 'Owner'" in p for p in caught.value.problems)


def test_summary_shows_effective_values_and_who_gets_which_role() -> None:
    raw = _raw("keycloak")
    raw["role_sets"]["grafana"]["default"] = "Viewer"
    text = summarize(parse_config(raw, environ=ENV))
    assert "provider=keycloak" in text
    assert "roles=realm_access.roles sources=['id_token', 'access_token']" in text
    assert "typ_at+jwt=False" in text
    assert "Viewer ← every authenticated user (default)" in text
    assert "Admin ← groups ['admins']" in text
    assert "Editor ← nobody" in text
    assert "scopes=['openid', 'profile', 'email', 'offline_access']" in text


def test_presets_met_with_settings_that_defeat_them_are_warned_about() -> None:
    raw = _raw("entra", trust_unverified_email=True)
    assert any("nOAuth" in w for w in config_warnings(parse_config(raw, environ=ENV)))
    google = parse_config(_raw("google"), environ=ENV)
    assert any("Google sends no groups" in w for w in config_warnings(google))
    raw = _raw("google")
    raw["role_sets"]["grafana"]["default"] = "Viewer"
    assert config_warnings(parse_config(raw, environ=ENV)) == ()
    assert config_warnings(parse_config(_raw("keycloak"), environ=ENV)) == ()
