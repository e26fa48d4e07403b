"""The composition root's preflight: every component is built once before serving, and a refusal is a problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import uvicorn

import idgate.runtime
from idgate.cli import main
from idgate.config_load import load_config
from idgate.runtime import preflight

REPO = Path(__file__).resolve().parents[2]
CONFIG = """\
issuers:
  - {name: corp, issuer: "https://idp.example.com", audiences: [a]}
spoa: {port: 9181}
assertion: {issuer: "https://idgate.example.com"}
upstreams: {app: {assertion_audience: app}}
routes:
  - {name: app, path: /app, upstream: app, allow: {authenticated: true}}
"""


def refuse(*args: Any, **kwargs: Any) -> None:
    raise ValueError("the signer refuses")


def test_preflight_builds_every_component_of_a_good_config(tmp_path: Path) -> None:
    (tmp_path / "idgate.yaml").write_text(CONFIG)
    assert preflight(load_config(tmp_path / "idgate.yaml")) == []
    assert preflight(load_config(REPO / "config" / "idgate.example.yaml")) == []


def test_a_component_that_refuses_its_settings_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "idgate.yaml").write_text(CONFIG)
    monkeypatch.setattr(idgate.runtime, "AssertionSigner", refuse)
    assert preflight(load_config(tmp_path / "idgate.yaml")) == [
        "the service cannot be built from this configuration: ValueError: the signer refuses"
    ]


def test_check_config_and_serve_report_it_without_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "idgate.yaml").write_text(CONFIG)
    monkeypatch.setattr(idgate.runtime, "AssertionSigner", refuse)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: pytest.fail("serve started"))
    assert main(["check-config", str(tmp_path / "idgate.yaml")]) == 1
    assert main(["serve", "--config", str(tmp_path / "idgate.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("ValueError: the signer refuses") == 2 and "Traceback" not in err
    assert f"idgate: refusing to start, {tmp_path / 'idgate.yaml'} has 1 problem(s):" in err
