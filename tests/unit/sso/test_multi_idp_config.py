"""``login.issuers`` (several IdPs for browser login): the config rules, every problem listed at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from test_config_load import demo_config

from idgate.config_load import parse_config
from idgate.config_warnings import config_warnings
from idgate.errors import ConfigError

SITE = "https://127.0.0.1:8443"


def two_idps(tmp_path: Path) -> dict[str, Any]:
    doc = demo_config(tmp_path)
    second = copy.deepcopy(doc["issuers"][0]) | {"name": "partner", "issuer": "https://partner.example"}
    doc["issuers"].append(second)
    del doc["login"]["issuer"]
    doc["login"] |= {
        "issuers": ["testidp", "partner"],
        "redirect_uris": [f"{SITE}/.idgate/callback", f"{SITE}/.idgate/callback/partner"],
    }
    return doc


def problems(doc: dict[str, Any], tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={}, base_dir=tmp_path)
    return str(info.value)


def test_two_login_idps_with_defaults_load(tmp_path: Path) -> None:
    doc = two_idps(tmp_path)
    doc["login"] |= {"default_issuer_by_host": {"partner.example.com": "partner"}, "default_issuer": "testidp"}
    login = parse_config(doc, environ={}, base_dir=tmp_path).login
    assert login is not None
    assert login.issuer_names == ("testidp", "partner")
    assert login.default_issuer_by_host == {"partner.example.com": "partner"}


def test_the_single_issuer_form_still_loads(tmp_path: Path) -> None:
    login = parse_config(demo_config(tmp_path), environ={}, base_dir=tmp_path).login
    assert login is not None and login.issuer_names == ("testidp",)


def test_both_forms_at_once_is_refused(tmp_path: Path) -> None:
    doc = two_idps(tmp_path)
    doc["login"]["issuer"] = "testidp"
    assert "exactly one of issuer" in problems(doc, tmp_path)


def test_neither_form_is_refused(tmp_path: Path) -> None:
    doc = two_idps(tmp_path)
    del doc["login"]["issuers"]
    assert "exactly one of issuer" in problems(doc, tmp_path)


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    doc = two_idps(tmp_path)
    doc["issuers"][1].pop("client_id")
    doc["login"] |= {
        "issuers": ["testidp", "partner", "nobody", "testidp"],
        "default_issuer": "elsewhere",
        "default_issuer_by_host": {"a.example": "ghost", "B.example": "partner"},
        "redirect_uris": [f"{SITE}/.idgate/callback/stranger"],
    }
    text = problems(doc, tmp_path)
    for expected in (
        "login.issuers[1]: issuer 'partner' needs client_id and a client secret",
        "login.issuers[2]: no issuer named 'nobody'",
        "issuers lists a name twice",
        "default_issuer 'elsewhere' is not in login.issuers",
        "default_issuer_by_host['a.example']: 'ghost' is not in login.issuers",
        "'B.example' must be a lowercase host or host:port",
        "names no login issuer",
    ):
        assert expected in text, text


@pytest.mark.parametrize(
    "uri",
    [
        f"{SITE}/.idgate/callback/",
        f"{SITE}/.idgate/callback/Partner",
        f"{SITE}/.idgate/callback/partner/x",
        f"{SITE}/.idgate/callback/partner?x=1",
        f"{SITE}/.idgate/callbackpartner",
    ],
)
def test_a_per_idp_redirect_uri_is_exact(tmp_path: Path, uri: str) -> None:
    doc = two_idps(tmp_path)
    doc["login"]["redirect_uris"] = [uri]
    assert "must be https://<host[:port]>/.idgate/callback" in problems(doc, tmp_path)


def test_idps_sharing_the_callback_are_warned_about(tmp_path: Path) -> None:
    doc = two_idps(tmp_path)
    assert not config_warnings(parse_config(doc, environ={}, base_dir=tmp_path))  # partner has its own URI
    doc["login"]["redirect_uris"] = [f"{SITE}/.idgate/callback"]
    warnings = config_warnings(parse_config(doc, environ={}, base_dir=tmp_path))
    assert len(warnings) == 1 and "testidp, partner share /.idgate/callback" in warnings[0]


def test_two_login_idps_with_one_issuer_url_are_refused(tmp_path: Path) -> None:
    doc = two_idps(tmp_path)
    doc["issuers"][1]["issuer"] = doc["issuers"][0]["issuer"]
    assert "two login IdPs have the issuer URL" in problems(doc, tmp_path)
