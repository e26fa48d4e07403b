"""``idgate init``: a starter config per provider that passes check-config once the client secret is given; keys in
0600 files; the secret never inline; nothing overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from idgate.cli import main
from idgate.config_load import load_config
from idgate.errors import ConfigError
from idgate.presets import PROVIDERS

ISSUERS = {
    "keycloak": "https://sso.example.com/realms/corp",
    "entra": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    "okta": "https://example.okta.com",
    "google": "https://accounts.google.com",
    "generic": "https://idp.example.com",
}
SECRET = "Zq8-a-strong-client-secret-0123456789"


def init(out: Path, provider: str, *extra: str) -> int:
    return main(["init", "--provider", provider, "--issuer", ISSUERS[provider], "--client-id", "idgate",
                 "--out", str(out), *extra])  # fmt: skip


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_starter_config_passes_check_config(
    tmp_path: Path, provider: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path, provider) == 0
    config_file = tmp_path / "idgate.yaml"
    config = load_config(config_file, environ={"IDGATE_CLIENT_SECRET": SECRET})
    issuer = config.issuers[0]
    assert issuer.provider == provider and issuer.issuer == ISSUERS[provider]
    assert config.login is not None and config.sessions is not None and config.assertion is not None
    assert config.login.redirect_uris == ("https://app.example.com/.idgate/callback",)
    raw = yaml.safe_load(config_file.read_text())
    assert raw["issuers"][0]["client_secret_env"] == "IDGATE_CLIENT_SECRET"
    assert "client_secret" not in raw["issuers"][0]
    assert SECRET not in config_file.read_text()
    assert set(raw) == {"dev_mode", "server", "spoa", "issuers", "role_sets", "upstreams", "routes", "login",
                        "sessions", "assertion", "audit", "store"}  # fmt: skip
    for name in ("session_keys", "assertion_key.pem"):
        mode = stat.S_IMODE((tmp_path / "secrets" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert "check-config" in capsys.readouterr().out
    if provider == "google":  # no groups from Google: the explicit default role
        assert config.role_sets["grafana"].default == "Viewer"
    else:
        assert config.role_sets["grafana"].default is None


def test_without_the_secret_check_config_names_it(tmp_path: Path) -> None:
    assert init(tmp_path, "keycloak") == 0
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "idgate.yaml", environ={})
    assert list(caught.value.problems) == [
        "issuers.0.client_secret_env: environment variable IDGATE_CLIENT_SECRET is not set"
    ]


def test_a_secret_file_instead_of_a_variable(tmp_path: Path) -> None:
    assert init(tmp_path, "okta", "--client-secret-file", "secrets/idp_client_secret") == 0
    (tmp_path / "secrets" / "idp_client_secret").write_text(SECRET)
    config = load_config(tmp_path / "idgate.yaml", environ={})
    assert config.issuers[0].client_secret is not None


def test_nothing_is_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert init(tmp_path, "entra") == 0
    before = (tmp_path / "secrets" / "session_keys").read_bytes()
    assert init(tmp_path, "entra") == 1
    assert "not overwriting" in capsys.readouterr().err
    assert (tmp_path / "secrets" / "session_keys").read_bytes() == before


def test_an_unknown_provider_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["init", "--provider", "auth0", "--issuer", "https://x", "--client-id", "c", "--out", str(tmp_path)])
    assert caught.value.code == 2


def test_values_that_make_no_valid_config_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["init", "--provider", "generic", "--issuer", "https://idp.example.com/", "--client-id", "c",
                 "--site", "https://app.example.com/x", "--out", str(tmp_path)])  # fmt: skip
    assert code == 1
    assert "redirect_uris" in capsys.readouterr().err
