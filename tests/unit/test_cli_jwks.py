"""The command line (idgate.cli): ``idgate jwks refresh`` against a scripted idgate (the real one: tests/e2e)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fake_issuer import config

from idgate.cli import main


class FakeIdgate:
    """Stands in for ``httpx.post``: records each call and answers the next scripted reply."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.replies: list[httpx.Response | Exception] = []

    def post(self, url: str, **kw: Any) -> httpx.Response:
        self.calls.append((url, kw))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def answer(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request("POST", "http://idgate.test"))


@pytest.fixture
def idgate(monkeypatch: pytest.MonkeyPatch) -> FakeIdgate:
    fake = FakeIdgate()
    monkeypatch.setattr("idgate.cli.httpx.post", fake.post)
    return fake


def report(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"issuer": "corp", "ok": True, "kids": ["k2"], "withdrawn": [], "purged_tokens": 0}
    return base | {"error": ""} | overrides


def test_refresh_reports_what_was_withdrawn(idgate: FakeIdgate, capsys: pytest.CaptureFixture[str]) -> None:
    idgate.replies.append(answer(200, {"issuers": [report(withdrawn=["k0", "k1"], purged_tokens=3)]}))
    assert main(["jwks", "refresh", "--url", "http://127.0.0.1:9999/", "--issuer", "corp"]) == 0
    [(url, kw)] = idgate.calls
    assert url == "http://127.0.0.1:9999/admin/jwks/refresh"
    assert kw["params"] == {"issuer": "corp"} and kw["trust_env"] is False  # never through an HTTP proxy
    out = capsys.readouterr().out
    assert out == "corp: refetched, 1 key(s) (k2); withdrawn k0, k1; 3 cached verification(s) dropped\n"


def test_refresh_of_every_issuer_with_nothing_withdrawn(idgate: FakeIdgate, capsys: pytest.CaptureFixture[str]) -> None:
    idgate.replies.append(answer(200, {"issuers": [report(), report(issuer="partner", kids=["a", "b"])]}))
    assert main(["jwks", "refresh"]) == 0
    assert idgate.calls[0][0] == "http://127.0.0.1:9180/admin/jwks/refresh" and idgate.calls[0][1]["params"] is None
    assert capsys.readouterr().out.splitlines() == [
        "corp: refetched, 1 key(s) (k2); nothing withdrawn",
        "partner: refetched, 2 key(s) (a, b); nothing withdrawn",
    ]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (answer(502, {"issuers": [report(ok=False, kids=["k1"], error="ConnectError: refused")]}), "refetch FAILED"),
        (answer(404, {"error": "unknown_issuer", "issuer": "corp"}), "idgate has no issuer named 'corp'"),
        (answer(403, {"error": "forbidden"}), "answered 403"),
        (httpx.Response(200, text="<html>", request=httpx.Request("POST", "http://x")), "answered 200"),
        (httpx.ConnectError("refused"), "cannot reach http://127.0.0.1:9180/admin/jwks/refresh: ConnectError"),
    ],
    ids=["refetch-failed", "unknown-issuer", "forbidden", "not-idgate", "unreachable"],
)
def test_refresh_failures_exit_1_with_the_reason(
    idgate: FakeIdgate, capsys: pytest.CaptureFixture[str], response: httpx.Response | Exception, message: str
) -> None:
    idgate.replies.append(response)
    assert main(["jwks", "refresh", "--issuer", "corp"]) == 1
    captured = capsys.readouterr()
    assert message in captured.err
    assert "refetched" not in captured.out


def test_refresh_finds_idgate_from_its_config(
    idgate: FakeIdgate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config().model_dump(mode="json", exclude_none=True)
    raw["server"] |= {"host": "0.0.0.0", "port": 9444}  # a wildcard bind: reached on loopback
    path = tmp_path / "idgate.yaml"
    path.write_text(yaml.safe_dump(raw))
    idgate.replies.append(answer(200, {"issuers": [report()]}))
    assert main(["jwks", "refresh", "--config", str(path), "--json"]) == 0
    assert idgate.calls[0][0] == "http://127.0.0.1:9444/admin/jwks/refresh"
    assert '"issuers"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        main(["jwks", "refresh", "--config", str(path), "--url", "http://x"])
    assert usage.value.code == 2
