"""``idgate keys generate`` (session and assertion key files: 0600, loadable, secrets never printed)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from idgate.assertion import pem_kid
from idgate.cli import main
from idgate.config_checks import assertion_key_problems, key_ring_problems


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_session_keys_are_0600_valid_and_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "session_keys"
    assert main(["keys", "generate", "session", "--out", str(out), "--count", "2"]) == 0
    keys = out.read_text().split()
    assert len(keys) == 2 and all(len(base64.b64decode(k)) == 32 for k in keys) and keys[0] != keys[1]
    assert mode(out) == 0o600 and key_ring_problems(out.read_text()) == []
    printed = capsys.readouterr()
    assert all(k not in printed.out + printed.err for k in keys)
    assert main(["keys", "generate", "session", "--out", str(out)]) == 1  # never overwritten silently
    assert "exists" in capsys.readouterr().err and out.read_text().split() == keys
    assert main(["keys", "generate", "session", "--out", str(out), "--rotate"]) == 0
    rotated = out.read_text().split()
    assert len(rotated) == 3 and rotated[1:] == keys and rotated[0] not in keys and mode(out) == 0o600
    assert rotated[0] not in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [out]  # no staging file left behind


def test_rotate_refuses_a_file_that_is_not_session_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    out.write_text("not a key\n")
    assert main(["keys", "generate", "session", "--out", str(out), "--rotate"]) == 1
    assert out.read_text() == "not a key\n" and "not a session key file" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_assertion_key_is_a_0600_pem_the_config_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str
) -> None:
    out = tmp_path / "assertion.pem"
    assert main(["keys", "generate", "assertion", "--out", str(out), "--algorithm", algorithm]) == 0
    pem = out.read_bytes()
    assert mode(out) == 0o600 and assertion_key_problems(pem.decode(), algorithm) == []
    printed = capsys.readouterr().out
    assert "PRIVATE" not in printed and pem_kid(pem, algorithm) in printed  # type: ignore[arg-type]
    assert main(["keys", "generate", "assertion", "--out", str(out)]) == 1
    assert out.read_bytes() == pem
    assert main(["keys", "generate", "assertion", "--out", str(out), "--force"]) == 0
    assert out.read_bytes() != pem


def test_rotate_assertion_needs_the_shared_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "idgate.yaml"
    config.write_text(
        "issuers: [{name: t, issuer: 'https://idp.test', jwks_uri: 'https://idp.test/jwks', discovery: false,"
        " audiences: [a]}]\nupstreams: {app: {}}\nroutes: [{name: app, path: /, upstream: app, public: true}]\n"
        "assertion: {issuer: 'https://idgate.test'}\n"
    )
    assert main(["keys", "rotate-assertion", "--config", str(config)]) == 1
    assert "store.kind: redis" in capsys.readouterr().err
