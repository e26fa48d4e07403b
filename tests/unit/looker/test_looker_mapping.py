"""Roles → the Looker embed user: unions, merges in role order, names from claims, no role → None."""

from __future__ import annotations

from typing import Any

from idgate.config_looker import LookerEmbedConfig
from idgate.looker.mapping import embed_user, split_name


def _config() -> LookerEmbedConfig:
    raw: dict[str, Any] = {
        "url": "https://looker.example.com",
        "embed_secret": "x" * 40,
        "roles": {
            "looker_viewer": {
                "permissions": ["access_data", "see_user_dashboards"],
                "models": ["sales"],
                "group_ids": [4],
                "external_group_id": "viewers",
                "user_attributes": {"region": "emea", "tier": "basic"},
            },
            "looker_developer": {
                "permissions": ["access_data", "explore", "see_sql"],
                "models": ["sales", "finance"],
                "group_ids": [4, 7],
                "user_attributes": {"tier": "pro"},
            },
        },
    }
    return LookerEmbedConfig.model_validate(raw)


def test_no_mapped_role_gives_no_embed_user() -> None:
    assert embed_user(_config(), roles=(), issuer="i", subject="s", name=None, username=None) is None
    assert embed_user(_config(), roles=("looker_admin",), issuer="i", subject="s", name=None, username=None) is None


def test_several_roles_give_unions_and_the_more_privileged_role_wins_a_key() -> None:
    user = embed_user(
        _config(), roles=("looker_viewer", "looker_developer"), issuer="i", subject="s", name="Ann Lee", username="a"
    )
    assert user is not None
    assert user.permissions == ("access_data", "see_user_dashboards", "explore", "see_sql")
    assert user.models == ("sales", "finance")
    assert user.group_ids == (4, 7)
    assert user.user_attributes == {"region": "emea", "tier": "pro"}
    assert user.external_group_id == "viewers"
    assert (user.first_name, user.last_name) == ("Ann", "Lee")


def test_one_role_gives_exactly_its_grant() -> None:
    user = embed_user(_config(), roles=("looker_viewer",), issuer="i", subject="s", name=None, username="bob")
    assert user is not None
    assert user.permissions == ("access_data", "see_user_dashboards")
    assert user.models == ("sales",)
    assert (user.first_name, user.last_name) == ("bob", "")


def test_names_split_at_the_first_space_and_keep_non_ascii() -> None:
    assert split_name("Zoë Müller Lüdenscheidt", "x") == ("Zoë", "Müller Lüdenscheidt")
    assert split_name("  ", "fallback") == ("fallback", "")
    assert split_name("Cher", "x") == ("Cher", "")
