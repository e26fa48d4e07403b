"""Reading published keys (idgate.jwk): the RSA size floor and the RFC 7638 thumbprint that notices a key replaced
under the same kid. (Parsing whole documents: tests/unit/test_jwks.py.)"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from idgate.jwk import MIN_RSA_BITS, parse_jwks, thumbprint

PINNED = frozenset({"RS256"})
# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint
RFC7638_KEY = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
    "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHz"
    "u6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8a"
    "wapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def rsa_jwk(bits: int, kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwk | {"kid": kid, "use": "sig", "alg": "RS256"}


def test_the_rfc7638_example_thumbprint() -> None:
    assert thumbprint(RFC7638_KEY) == RFC7638_THUMBPRINT
    keys, skipped = parse_jwks({"keys": [RFC7638_KEY]}, pinned=PINNED)
    assert skipped == 0 and keys["2011-04-29"].thumbprint == RFC7638_THUMBPRINT


def test_the_thumbprint_ignores_optional_members_and_tells_keys_apart() -> None:
    decorated = RFC7638_KEY | {"kid": "other", "use": "sig", "x5t": "ignored"}
    assert thumbprint(decorated) == RFC7638_THUMBPRINT
    assert thumbprint(rsa_jwk(2048, "2011-04-29")) != RFC7638_THUMBPRINT
    assert thumbprint({"kty": "oct", "k": "AAAA"}) == ""


@pytest.mark.parametrize("bits", [1024, 1536, 2047])
def test_an_rsa_key_under_2048_bits_is_skipped(bits: int) -> None:
    keys, skipped = parse_jwks({"keys": [rsa_jwk(bits, "weak"), rsa_jwk(MIN_RSA_BITS, "strong")]}, pinned=PINNED)
    assert set(keys) == {"strong"} and skipped == 1


@pytest.mark.parametrize("modulus", ["!!not-base64!!", "AQABAQABAQAB", "gAAA" + "A" * 80 + "AQ"])
def test_a_garbled_modulus_that_decodes_to_a_tiny_key_is_skipped(modulus: str) -> None:
    """A base64url decoder drops characters outside its alphabet: "!!not-base64!!" loads as a 56-bit RSA key."""
    jwk = {"kty": "RSA", "n": modulus, "e": "AQAB"}
    assert jwt.PyJWK(jwk, algorithm="RS256").key.key_size < 1024  # PyJWT alone takes it
    keys, skipped = parse_jwks({"keys": [{"kty": "RSA", "kid": "tiny", "n": modulus, "e": "AQAB"}]}, pinned=PINNED)
    assert keys == {} and skipped == 1
