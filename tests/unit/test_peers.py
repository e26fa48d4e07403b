"""Trusted callers: a peer address against configured networks, and the two config keys that hold them
(``server.trusted_callers`` for /auth, ``spoa.trusted_callers`` for the SPOA agent) validated alike."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from idgate.config_load import parse_config
from idgate.errors import ConfigError
from idgate.peers import LOOPBACK, is_trusted, parse_networks

NETS = parse_networks(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.1.2.3", True),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped: a dual-stack socket's view of an IPv4 client
        ("::ffff:192.0.2.8", False),
        ("11.0.0.1", False),
        ("", False),
        ("not-an-address", False),
        ("/run/haproxy.sock", False),
        ("10.1.2.3%eth0", False),
        (None, False),
        (("10.1.2.3", 5000), False),
    ],
)
def test_is_trusted(peer: object, trusted: bool) -> None:
    assert is_trusted(peer, NETS) is trusted


def test_loopback_default_and_empty_list() -> None:
    assert is_trusted("127.0.0.1", LOOPBACK) and is_trusted("::1", LOOPBACK)
    assert is_trusted("::ffff:127.0.0.1", LOOPBACK)
    assert not is_trusted("127.0.0.2", LOOPBACK) and not is_trusted("10.0.0.1", LOOPBACK)
    assert not is_trusted("127.0.0.1", ())  # nobody


def test_host_bits_are_allowed_and_garbage_is_refused() -> None:
    assert parse_networks(["10.0.0.1/8"]) == parse_networks(["10.0.0.0/8"])
    for bad in (["10.0.0.0/33"], ["example.com"], ["10.0.0.0/8", ""], ["::1/129"]):
        with pytest.raises(ValueError, match="does not appear to be"):
            parse_networks(bad)


BASE: dict[str, Any] = {
    "issuers": [{"name": "corp", "issuer": "https://idp.example.com", "audiences": ["https://api.example.com"]}],
    "upstreams": {"app": {}},
    "routes": [{"name": "pub", "path": "/public", "upstream": "app", "public": True}],
}


def test_both_trusted_callers_default_to_loopback() -> None:
    config = parse_config(BASE | {"spoa": {}}, environ={})
    assert config.server.trusted_callers == config.spoa.trusted_callers == ("127.0.0.1/32", "::1/128")  # type: ignore[union-attr]


@pytest.mark.parametrize("section", ["server", "spoa"])
def test_both_trusted_callers_are_validated_alike(section: str) -> None:
    doc = copy.deepcopy(BASE)
    doc[section] = {"trusted_callers": ["10.0.0.0/8", "not-a-network", "fd00::/8"]}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={})
    assert any(p.startswith(f"{section}.trusted_callers:") and "not-a-network" in p for p in info.value.problems)
    doc[section] = {"trusted_callers": ["10.0.0.0/8", "fd00::/32"]}
    assert getattr(parse_config(doc, environ={}), section).trusted_callers == ("10.0.0.0/8", "fd00::/32")
