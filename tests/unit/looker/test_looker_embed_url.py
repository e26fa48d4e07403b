"""Looker's signed embed URL: the string to sign, JSON values, the signature, the target check — and a cross-check
against the contract stub's verifier, which is written apart from idgate."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qsl, urlsplit

import pytest

from idgate.errors import RequestError
from idgate.looker.embed_url import (
    EmbedUser,
    as_json,
    check_target,
    embed_params,
    embed_path,
    external_user_id,
    sign,
    signed_embed_url,
    string_to_sign,
)
from idgate_devstack.looker_stub import Refused, verify_signed_url

SECRET = "looker-embed-secret-for-unit-tests-0123456789"


def _user(**changes: object) -> EmbedUser:
    fields: dict[str, object] = {
        "external_user_id": "57",
        "first_name": "Chris",
        "last_name": "Embed",
        "permissions": ("access_data", "see_user_dashboards"),
        "models": ("some_model", "someother_model"),
        "group_ids": (),
        "external_group_id": "test group space",
        "user_attributes": {"can_see_stuff": "yes"},
    }
    fields.update(changes)
    return EmbedUser(**fields)  # type: ignore[arg-type]


def test_the_string_to_sign_has_the_documented_lines_in_the_documented_order() -> None:
    """The example string of Looker's "What makes SSO embed URLs secure" article (its values, one per line)."""
    params = embed_params(
        user=_user(),
        nonce="ac786cbc06162b1edde3a8b35920a93e",
        now=1585244357,
        session_length=3600,
        force_logout_login=True,
    )
    text = string_to_sign(host="instance.looker.com", path=embed_path("/embed/dashboards/1527"), params=dict(params))
    assert text.split("\n") == [
        "instance.looker.com",
        "/login/embed/%2Fembed%2Fdashboards%2F1527",
        '"ac786cbc06162b1edde3a8b35920a93e"',
        "1585244357",
        "3600",
        '"57"',
        '["access_data","see_user_dashboards"]',
        '["some_model","someother_model"]',
        "[]",
        '"test group space"',
        '{"can_see_stuff":"yes"}',
        "{}",
    ]


def test_the_signature_is_base64_hmac_sha1_of_the_utf8_string() -> None:
    text = 'instance.looker.com\n/login/embed/%2Fembed%2Fdashboards%2F1\n"é"'
    expected = base64.b64encode(hmac.new(SECRET.encode(), text.encode("utf-8"), hashlib.sha1).digest()).decode()
    assert sign(SECRET, text) == expected
    assert len(base64.b64decode(expected)) == 20  # SHA-1


def test_every_value_is_json_and_names_and_signature_are_not_signed() -> None:
    params = dict(embed_params(user=_user(), nonce="n", now=1, session_length=60, force_logout_login=False))
    assert json.loads(params["force_logout_login"]) is False
    assert json.loads(params["first_name"]) == "Chris"
    text = string_to_sign(host="h", path="/p", params=params)
    assert '"Chris"' not in text and "false" not in text
    unsigned_external = dict(params)
    del unsigned_external["external_group_id"]  # optional: a line only when present
    assert len(string_to_sign(host="h", path="/p", params=unsigned_external).split("\n")) == 11


def test_non_ascii_names_and_attributes_are_utf8_json_percent_encoded() -> None:
    user = _user(first_name="Zoë", last_name="Müller-Lüdenscheidt", user_attributes={"region": "Île-de-France"})
    url = signed_embed_url(
        url="https://looker.example.com",
        host="looker.example.com",
        secret=SECRET,
        target="/embed/dashboards/42",
        user=user,
        now=1_700_000_000,
        session_length=600,
        nonce="abc",
    )
    query = dict(parse_qsl(urlsplit(url).query))
    assert json.loads(query["first_name"]) == "Zoë"
    assert json.loads(query["user_attributes"]) == {"region": "Île-de-France"}
    assert url.isascii()
    assert as_json("Zoë") == '"Zoë"'


def test_the_url_carries_the_parameters_in_order_with_the_signature_last() -> None:
    url = signed_embed_url(
        url="https://looker.example.com:9999",
        host="looker.example.com:9999",
        secret=SECRET,
        target="/embed/dashboards/42?Date=1%20years",
        user=_user(),
        now=1_700_000_000,
        session_length=600,
        nonce="n1",
    )
    parts = urlsplit(url)
    assert parts.path == "/login/embed/%2Fembed%2Fdashboards%2F42%3FDate%3D1%2520years"
    names = [name for name, _ in parse_qsl(parts.query)]
    assert names[:6] == ["nonce", "time", "session_length", "external_user_id", "permissions", "models"]
    assert names[-1] == "signature"
    assert len(names) == len(set(names))


@pytest.mark.parametrize("non_ascii", [False, True])
def test_the_contract_stub_accepts_idgates_url_and_refuses_any_tampering(non_ascii: bool) -> None:
    user = _user(first_name="Zoë", external_group_id="Ünterwegs") if non_ascii else _user()
    now = 1_700_000_000
    url = signed_embed_url(
        url="https://looker.example.com",
        host="looker.example.com",
        secret=SECRET,
        target="/embed/dashboards/42",
        user=user,
        now=now,
        session_length=600,
    )
    parts = urlsplit(url)
    fields = verify_signed_url(
        raw_path=parts.path, raw_query=parts.query, host="looker.example.com", secret=SECRET, now=now, nonces=set()
    )
    assert fields["permissions"] == list(user.permissions)
    assert fields["external_group_id"] == user.external_group_id
    tampered = parts.query.replace("see_user_dashboards", "see_lookml")
    with pytest.raises(Refused, match="bad_signature"):
        verify_signed_url(
            raw_path=parts.path, raw_query=tampered, host="looker.example.com", secret=SECRET, now=now, nonces=set()
        )
    with pytest.raises(Refused, match="bad_signature"):  # another host signs another first line
        verify_signed_url(
            raw_path=parts.path, raw_query=parts.query, host="evil.example.com", secret=SECRET, now=now, nonces=set()
        )


def test_external_user_id_is_stable_per_issuer_and_subject() -> None:
    a = external_user_id("https://idp.example.com", "alice")
    assert a == external_user_id("https://idp.example.com", "alice")
    assert a != external_user_id("https://other.example.com", "alice")
    assert a != external_user_id("https://idp.example.com/", "alice")
    assert a.startswith("idgate-") and len(a) == 47


@pytest.mark.parametrize("target", ["/embed/dashboards/42", "/embed/looks/4", "/embed/explore/m/e?fields=a.b"])
def test_embed_targets_are_accepted(target: str) -> None:
    assert check_target(target) == target


@pytest.mark.parametrize(
    "target",
    [
        None,
        "",
        "/dashboards/42",
        "https://evil.example.com/embed/dashboards/1",
        "//evil.example.com/embed/x",
        "/embed/../admin",
        "/embed/%2e%2e/admin",
        "/embed//x",
        "/embed/dash\\boards",
        "/embed/dashboards/1#frag",
        "/embed/dashbörds",
        "/embed/x\r\nSet-Cookie: a=b",
        "/embed/" + "a" * 2000,
    ],
)
def test_other_targets_are_refused(target: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        check_target(target)
    assert caught.value.reason == "bad_target"
