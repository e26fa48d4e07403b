"""``idgate cache show|purge`` (idgate.ops.cache_commands): usage errors, a config without sockets, a dead socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_issuer import config

from idgate.cli import main


def write_config(tmp_path: Path, **haproxy: Any) -> str:
    raw = config().model_dump(mode="json", exclude_none=True) | {"haproxy": haproxy}
    path = tmp_path / "idgate.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_purge_needs_a_selector_and_one_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, runtime_api=[f"unix:{tmp_path / 'h.sock'}"])
    assert main(["cache", "purge", "--config", path]) == 2
    assert "--subject S, --session SID or --all" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["cache", "purge", "--subject", "a", "--all", "--config", path])
    assert exited.value.code == 2


def test_a_config_without_runtime_api_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "show", "--config", write_config(tmp_path)]) == 1
    assert "no haproxy.runtime_api listed" in capsys.readouterr().err


def test_a_dead_socket_is_exit_3_and_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = tmp_path / "nobody.sock"
    path = write_config(tmp_path, runtime_api=[f"unix:{dead}"])
    assert main(["cache", "show", "--config", path]) == 3
    assert str(dead) in capsys.readouterr().err
    assert main(["cache", "purge", "--all", "--config", path]) == 3
    assert "on 0 of 1 HAProxy socket(s)" in capsys.readouterr().out
