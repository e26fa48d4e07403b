"""Canonical request facts (idgate.facts): the host and path routes are matched on, and ambiguous ones refused."""

from __future__ import annotations

import pytest

from idgate.errors import RequestError
from idgate.facts import MAX_REQUEST_ID, canonical_host, canonical_path, clean_request_id


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("/a//b", "/a/b"), ("/%61dmin", "/admin"), ("/a%7Eb", "/a~b"), ("/a%20b", "/a%20b"), ("//admin", "/admin")],
)
def test_canonical_path(raw: str, canonical: str) -> None:
    assert canonical_path(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/./x",
        "/admin;x=1",
        "/a%2fb",
        "/a%5Cb",
        "/a\\b",
        "/a\r\nb",
        "/a%00",
        "admin",
        "",
        "/a%3Bb",
        "/" + "a" * 9000,
    ],
)
def test_ambiguous_paths_are_refused(raw: str) -> None:
    with pytest.raises(RequestError) as info:
        canonical_path(raw)
    assert info.value.reason == "invalid_path"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Example.TEST:8443", "example.test"),
        ("example.test.", "example.test"),
        ("[::1]:443", "[::1]"),
        ("127.0.0.1:8443", "127.0.0.1"),
    ],
)
def test_canonical_host(raw: str, canonical: str) -> None:
    assert canonical_host(raw) == canonical


@pytest.mark.parametrize("raw", ["evil.test/x", "a b", "", "x:port", "[::1", "-bad.test", "a_b.test"])
def test_bad_hosts_are_refused(raw: str) -> None:
    with pytest.raises(RequestError):
        canonical_host(raw)


def test_clean_request_id_keeps_printable_ascii_up_to_128_only() -> None:
    assert clean_request_id("7F000001:B3A2_0003:1C2D") == "7F000001:B3A2_0003:1C2D"
    assert clean_request_id("x" * MAX_REQUEST_ID) == "x" * MAX_REQUEST_ID
    for bad in (None, "", "x" * (MAX_REQUEST_ID + 1), "a b", "a\r\nb", "é", "a\x00"):
        assert clean_request_id(bad) == "", bad
