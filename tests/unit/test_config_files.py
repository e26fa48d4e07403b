"""The configuration's files: text only (no directory, device, binary or non-UTF-8 file), YAML without duplicates."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from idgate.config_files import MAX_FILE_BYTES, load_yaml, read_text
from idgate.config_load import load_config
from idgate.errors import ConfigError

CONFIG = """\
issuers:
  - name: corp
    issuer: https://idp.example.com
    audiences: ["https://api.example.com"]
upstreams:
  app: {}
routes:
  - {name: app, path: /app, upstream: app, allow: {authenticated: true}}
"""


def problem_of(path: Path, **kwargs: int) -> str:
    with pytest.raises(ConfigError) as info:
        read_text(path, **kwargs)
    (problem,) = info.value.problems
    return problem


def test_read_text_returns_utf8_text_without_a_bom(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes("\ufeffgrüße\ttab\r\n".encode())
    assert read_text(tmp_path / "a.txt") == "grüße\ttab\r\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"key: \xff\xfe value\n", "is not UTF-8 text (byte 0xff at offset 5)"),
        ("clé: é\n".encode("latin-1"), "is not UTF-8 text"),
        (b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00", "is binary, not text"),  # DER
        (b"secret\x00\n", "is binary, not text (control character 0x00)"),
        (b"dev_mode: true\x1b[2J\n", "is binary, not text (control character 0x1b)"),
    ],
)
def test_read_text_refuses_binary_and_other_encodings(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "f").write_bytes(content)
    assert expected in problem_of(tmp_path / "f")


def test_read_text_refuses_directories_devices_missing_and_huge_files(tmp_path: Path) -> None:
    assert problem_of(tmp_path) == f"{tmp_path} is a directory, not a file"
    assert problem_of(Path(os.devnull)) == f"{os.devnull} is not a regular file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert problem_of(fifo) == f"{fifo} is not a regular file"  # would block forever if opened
    assert problem_of(tmp_path / "absent") == f"cannot read {tmp_path / 'absent'}: No such file or directory"
    (tmp_path / "big").write_bytes(b"a" * 11)
    assert problem_of(tmp_path / "big", max_bytes=10) == f"{tmp_path / 'big'} is larger than 10 bytes"
    assert read_text(tmp_path / "big", max_bytes=11) == "a" * 11
    assert MAX_FILE_BYTES == 1024 * 1024


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda p: p.mkdir(), "is a directory, not a file"),
        (lambda p: p.write_bytes(CONFIG.replace("corp", "c\xf6rp").encode("latin-1")), "is not UTF-8 text"),
        (lambda p: p.write_bytes(CONFIG.encode() + b"\x00"), "is binary, not text"),
    ],
)
def test_a_config_file_that_is_no_text_file_is_a_problem_not_a_traceback(
    tmp_path: Path, setup: object, expected: str
) -> None:
    path = tmp_path / "idgate.yaml"
    setup(path)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert expected in "\n".join(info.value.problems)


def test_load_yaml_reports_every_duplicate_key_with_its_lines() -> None:
    text = "a: 1\nb:\n  c: 1\n  c: 2\na: 3\nlist:\n  - {x: 1, x: 1}\n"
    document, duplicates = load_yaml(text)
    assert document == {"a": 3, "b": {"c": 2}, "list": [{"x": 1}]}  # what PyYAML alone would silently keep
    assert duplicates == (
        "line 4: duplicate key 'c' (first at line 3); YAML keeps only the last one, so remove one of them",
        "line 5: duplicate key 'a' (first at line 1); YAML keeps only the last one, so remove one of them",
        "line 7: duplicate key 'x' (first at line 7); YAML keeps only the last one, so remove one of them",
    )


def test_load_yaml_compares_keys_by_value_and_lets_merge_keys_be_overridden() -> None:
    assert load_yaml("on: 1\ntrue: 2\n")[1][0].startswith("line 2: duplicate key True (first at line 1)")  # YAML 1.1
    assert load_yaml("1: a\n0x1: b\n'1': c\n")[1] == (
        "line 2: duplicate key 1 (first at line 1); YAML keeps only the last one, so remove one of them",
    )
    document, duplicates = load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert document == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}} and duplicates == ()
    assert load_yaml("") == (None, ())
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: 1\n---\nb: 2\n")


def test_an_appended_dev_mode_line_is_refused_with_every_other_problem(tmp_path: Path) -> None:
    path = tmp_path / "idgate.yaml"
    path.write_text("dev_mode: false\n" + CONFIG + "dev_mode: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == (
        "line 10: duplicate key 'dev_mode' (first at line 1); YAML keeps only the last one, so remove one of them",
    )
    path.write_text(CONFIG.replace("  app: {}\n", "  app: {}\n  app: {profile: grafana}\n") + "routes: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert [p.split(":")[0] for p in info.value.problems] == ["line 7", "line 10", "routes"]
    path.write_text(CONFIG)
    assert load_config(path, environ={}).dev_mode is False


@pytest.mark.parametrize(
    ("section", "key", "setup", "expected"),
    [
        ("issuers.0", "client_secret_file", lambda p: p.mkdir(), "is a directory, not a file"),
        ("issuers.0", "client_secret_file", lambda p: p.write_bytes(b"\xfe\xed" * 20), "is not UTF-8 text"),
        ("issuers.0", "ca_file", lambda p: p.write_bytes(b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00"), "is binary"),
        ("issuers.0", "ca_file", lambda p: p.mkdir(), "is a directory, not a file"),
        ("sessions", "keys_file", lambda p: p.write_bytes("clé".encode("latin-1")), "is not UTF-8 text"),
        ("sessions", "keys_file", lambda p: p.mkdir(), "is a directory, not a file"),
        ("assertion", "keys_file", lambda p: p.mkdir(), "is a directory, not a file"),
        ("assertion", "keys_file", lambda p: p.write_bytes(b"\x00" * 64), "is binary"),
    ],
)
def test_a_secret_or_key_file_that_is_no_text_file_is_a_problem_not_a_traceback(
    tmp_path: Path, section: str, key: str, setup: object, expected: str
) -> None:
    keys = tmp_path / "session_keys"
    keys.write_text(base64.b64encode(os.urandom(32)).decode())
    doc = yaml.safe_load(CONFIG) | {
        "sessions": {"keys_file": str(keys)},
        "assertion": {"issuer": "https://idgate.example.com"},
    }
    target = doc["issuers"][0] if section == "issuers.0" else doc[section]
    target[key] = "target"
    setup(tmp_path / "target")  # type: ignore[operator]
    path = tmp_path / "idgate.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    (problem,) = info.value.problems  # just this one: no "set keys_file" or "needs a client secret" echo
    assert problem.startswith(f"{section}.{key}: {tmp_path / 'target'} {expected}")
