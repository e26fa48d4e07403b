"""The Looker contract stub on its own: it accepts a URL signed by the documented algorithm (written out here by
hand, independently of idgate) and refuses everything else with a reason code; the cookieless API's shapes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from idgate_devstack.looker_stub import LookerStub

SECRET = "stub-test-embed-secret-0123456789abcdef"
CLIENT = ("stub-client", "stub-test-client-secret-0123456789")


@pytest.fixture(scope="module")
def looker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LookerStub]:
    with LookerStub(
        embed_secret=SECRET,
        client_id=CLIENT[0],
        client_secret=CLIENT[1],
        secrets_dir=Path(tmp_path_factory.mktemp("looker-stub")),
    ) as stub:
        yield stub


def signed(looker: LookerStub, *, secret: str = SECRET, now: int | None = None, **values: object) -> str:
    """A signed embed URL per Looker's "Signed embedding" page, built by hand."""
    params: dict[str, object] = {
        "nonce": base64.b16encode(time.time_ns().to_bytes(8, "big")).decode(),
        "time": int(time.time()) if now is None else now,
        "session_length": 600,
        "external_user_id": "user-1",
        "permissions": ["access_data", "see_user_dashboards"],
        "models": ["sales"],
        "group_ids": [],
        "user_attributes": {"city": "Zürich"},
        "access_filters": {},
    } | values
    texts = {k: json.dumps(v, ensure_ascii=False) for k, v in params.items()}
    path = "/login/embed/" + quote("/embed/dashboards/7", safe="")
    order = ["nonce", "time", "session_length", "external_user_id", "permissions", "models", "group_ids",
             "external_group_id", "user_attributes", "access_filters"]  # fmt: skip
    lines = [looker.address, path, *(texts[k] for k in order if k in texts)]
    signature = base64.b64encode(hmac.new(secret.encode(), "\n".join(lines).encode(), hashlib.sha1).digest()).decode()
    texts |= {"first_name": json.dumps("Zoë", ensure_ascii=False), "signature": signature}
    return f"{looker.url}{path}?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in texts.items())


def test_a_documented_signature_logs_in_once_and_lands_on_the_target(looker: LookerStub) -> None:
    url = signed(looker)
    with httpx.Client() as client:
        first = client.get(url)
        assert first.status_code == 302 and first.headers["location"] == "/embed/dashboards/7"
        page = client.get(looker.url + "/embed/dashboards/7")
        assert page.status_code == 200 and "Zoë" in page.text and "Zürich" in page.text
        assert client.get(url).json() == {"error": "nonce_replayed"}
    user = looker.users()["users"]["user-1"]
    assert user["permissions"] == ["access_data", "see_user_dashboards"] and user["first_name"] == "Zoë"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"secret": "another-secret-0123456789abcdef"}, "bad_signature"),
        ({"now": int(time.time()) - 400}, "time_out_of_window"),
        ({"permissions": ["access_data", "be_root"]}, "unknown_permission"),
        ({"models": []}, "no_models"),
        ({"time": "now"}, "bad_type"),
        ({"session_length": 3_000_000}, "bad_session_length"),
    ],
)
def test_anything_else_is_refused_with_a_reason(looker: LookerStub, changes: dict[str, object], reason: str) -> None:
    answer = httpx.get(signed(looker, **changes))  # type: ignore[arg-type]
    assert (answer.status_code, answer.json()) == (401, {"error": reason})


def test_a_missing_or_repeated_parameter_is_refused(looker: LookerStub) -> None:
    url = signed(looker)
    assert httpx.get(url.replace("&models=", "&model=")).json() == {"error": "missing_parameter"}
    assert httpx.get(url + "&nonce=%22x%22").json() == {"error": "duplicate_parameter"}
    assert httpx.get(looker.url + "/embed/dashboards/7").status_code == 401  # no stub session


def test_the_cookieless_api_shapes(looker: LookerStub) -> None:
    api = looker.url + "/api/4.0"
    assert httpx.post(api + "/login", data={"client_id": CLIENT[0], "client_secret": "wrong"}).status_code == 404
    token = httpx.post(api + "/login", data={"client_id": CLIENT[0], "client_secret": CLIENT[1]}).json()
    auth = {"authorization": f"token {token['access_token']}"}
    body = {"external_user_id": "user-2", "permissions": ["access_data"], "models": ["sales"], "session_length": 600}
    assert httpx.post(api + "/embed/cookieless_session/acquire", json=body).status_code == 401
    bad = httpx.post(api + "/embed/cookieless_session/acquire", json=body | {"models": []}, headers=auth)
    assert bad.status_code == 422
    acquired = httpx.post(api + "/embed/cookieless_session/acquire", json=body, headers=auth).json()
    assert {"authentication_token", "navigation_token", "api_token", "session_reference_token"} <= set(acquired)
    fields = {k: acquired[k] for k in ("session_reference_token", "navigation_token", "api_token")}
    fresh = httpx.put(api + "/embed/cookieless_session/generate_tokens", json=fields, headers=auth)
    assert fresh.status_code == 200 and fresh.json()["api_token"] != acquired["api_token"]
    stale = httpx.put(api + "/embed/cookieless_session/generate_tokens", json=fields, headers=auth)
    assert stale.status_code == 400
    assert looker.users()["users"]["user-2"]["via"] == "cookieless"
