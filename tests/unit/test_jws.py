"""idgate.jws against the PyJWT ``jwt.decode`` call it replaced: the same outcome (claims, or the same reason code)
for generated valid tokens and their mutations, for every algorithm family; plus the rules one by one."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Sequence
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idgate.errors import TokenError
from idgate.jws import check_registered_claims, verify_signature

ISS = "https://idp.test"
AUDS = ("https://api.test", "other")
LEEWAY = 30
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEYS = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
}
ED_KEY = ed25519.Ed25519PrivateKey.generate()
PRIVATE: dict[str, Any] = {
    "RS256": RSA_KEY,
    "RS512": RSA_KEY,
    "PS256": RSA_KEY,
    "PS384": RSA_KEY,
    "EdDSA": ED_KEY,
    **EC_KEYS,
}
REQUIRE = ("exp", "iss", "aud", "sub")


def old_decode(token: str, key: object, alg: str, *, audiences: Sequence[str], require: Sequence[str]) -> Any:
    """The verifier's last step before idgate.jws (PyJWT), with its reason mapping, as it was."""
    try:
        return jwt.decode(
            token,
            key,  # type: ignore[arg-type]
            algorithms=[alg],
            audience=list(audiences),
            issuer=ISS,
            leeway=LEEWAY,
            options={"require": list(require), "verify_iat": True},
        )
    except jwt.ExpiredSignatureError:
        return "expired"
    except jwt.ImmatureSignatureError:
        return "not_yet_valid"
    except jwt.InvalidAudienceError:
        return "invalid_audience"
    except jwt.InvalidIssuerError:
        return "invalid_issuer"
    except jwt.MissingRequiredClaimError as exc:
        return {"aud": "invalid_audience", "iss": "invalid_issuer", "exp": "invalid_claims"}.get(exc.claim) or (
            "invalid_claims"
        )
    except jwt.InvalidSignatureError:
        return "invalid_signature"
    except (jwt.InvalidTokenError, jwt.InvalidKeyError, ValueError, TypeError):
        return "invalid_token"


def new_decode(token: str, key: object, alg: str, *, audiences: Sequence[str], require: Sequence[str]) -> Any:
    try:
        head, payload = (json.loads(_unb64(s)) for s in token.split(".")[:2])
        verify_signature(token, head, alg, key)
        claims = dict(payload)
        check_registered_claims(claims, issuer=ISS, audiences=audiences, leeway=LEEWAY, require=require)
        return claims
    except TokenError as exc:
        return exc.reason


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public(alg: str) -> object:
    return PRIVATE[alg].public_key()


# --- generated claims and mutations ---------------------------------------------------------------------------------

# offsets from now in seconds, kept 5 s away from every boundary (now ± leeway) so the two clocks agree
OFFSETS = st.sampled_from([-100_000, -3600, -40, -25, 0, 25, 40, 3600, 100_000])
ODD = st.sampled_from([None, True, False, "123", "abc", [], {}, 1.5, -0.5, float("inf"), 10**30])
TIME = st.one_of(OFFSETS.map(lambda o: ("offset", o)), ODD.map(lambda v: ("value", v)))
AUD = st.one_of(
    st.sampled_from([AUDS[0], "nope", "", [], [AUDS[0]], ["x", AUDS[1]], ["x"], [AUDS[0], 3], 7, None, {"a": 1}])
)
ISSUER = st.sampled_from([ISS, ISS + "/", "", None, 5, [ISS]])
TEXT = st.sampled_from(["alice", "", None, 5, ["x"], {"a": 1}])


@st.composite
def claim_sets(draw: st.DrawFn) -> dict[str, Any]:
    """A valid claim set with some claims changed (an odd value or another time) or removed."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISS, "aud": AUDS[0], "sub": "alice", "jti": "j", "exp": now + 300, "iat": now}
    strategies = {"exp": TIME, "nbf": TIME, "iat": TIME, "iss": ISSUER, "aud": AUD, "sub": TEXT, "jti": TEXT}
    for name, strategy in strategies.items():
        change = draw(st.integers(0, 7))
        if change == 6:
            claims.pop(name, None)
        elif change == 7:
            value = draw(strategy)
            if isinstance(value, tuple):
                kind, number = value
                value = now + number if kind == "offset" else number
            claims[name] = value
    return claims


def encode(claims: dict[str, Any], alg: str, headers: dict[str, Any] | None = None) -> str:
    """Sign ``claims`` as they are (PyJWT's own ``jwt.encode`` refuses some of the odd values)."""
    body = json.dumps(claims).encode()
    return jwt.api_jws.PyJWS().encode(body, PRIVATE[alg], algorithm=alg, headers=headers)


MUTATIONS = (
    "none",
    "none",
    "none",
    "flip_signature",
    "flip_payload",
    "truncate_signature",
    "noncanonical_signature",
    "noncanonical_payload",
    "b64_false",
    "other_key",
    "empty_signature_bytes",
)


def mutate(token: str, how: str, alg: str) -> str:
    head, payload, signature = token.split(".")
    if how == "flip_signature":
        signature = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    elif how == "flip_payload":
        claims = json.loads(_unb64(payload)) | {"sub": "mallory"}
        payload = _b64(json.dumps(claims).encode())
    elif how == "truncate_signature":
        signature = signature[:-4]
    elif how == "noncanonical_signature":
        signature = _noncanonical(signature)
    elif how == "noncanonical_payload":
        payload = _noncanonical(payload)
    elif how == "b64_false":
        header = json.loads(_unb64(head)) | {"b64": False}
        head = _b64(json.dumps(header).encode())
    elif how == "other_key":
        other = {"EdDSA": "ES256"}.get(alg, "EdDSA")
        return encode(json.loads(_unb64(payload)), other)
    elif how == "empty_signature_bytes":
        signature = "AA"
    return f"{head}.{payload}.{signature}"


def _noncanonical(segment: str) -> str:
    """The same bytes with unused low bits set in the last character (when the length leaves some)."""
    if len(segment) % 4 == 0:
        return segment
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(segment[-1])
    return segment[:-1] + alphabet[index | 1] if index | 1 != index else segment[:-1] + alphabet[index ^ 1]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    claims=claim_sets(),
    alg=st.sampled_from(sorted(PRIVATE)),
    how=st.sampled_from(MUTATIONS),
    require=st.sampled_from([REQUIRE, (), ("exp",), ("iss", "aud")]),
)
def test_the_new_path_answers_exactly_as_pyjwt_did(
    claims: dict[str, Any], alg: str, how: str, require: tuple[str, ...]
) -> None:
    token = mutate(encode(claims, alg, {"kid": "k1", "typ": "at+jwt"}), how, alg)
    if not all(re.fullmatch(r"[A-Za-z0-9_-]+", segment) for segment in token.split(".")):
        return  # refused before this step by the verifier's shape check (padding, empty segment)
    key = public(alg)
    pinned = json.loads(_unb64(token.split(".")[0]))["alg"]  # the verifier passes the header's (pinned) alg
    old = old_decode(token, key, pinned, audiences=AUDS, require=require)
    new = new_decode(token, key, pinned, audiences=AUDS, require=require)
    assert new == old, (how, alg, claims)


# --- the rules one by one -----------------------------------------------------------------------------------------


def sign(alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISS, "aud": AUDS[0], "sub": "alice", "exp": now + 300, "iat": now} | claims
    return encode(body, alg, {"kid": "k1"})


def reason(token: str, alg: str = "RS256", key: object | None = None) -> Any:
    return new_decode(token, key if key is not None else public(alg), alg, audiences=AUDS, require=REQUIRE)


@pytest.mark.parametrize("alg", sorted(PRIVATE))
def test_every_algorithm_verifies_its_own_signature_and_refuses_a_changed_one(alg: str) -> None:
    token = sign(alg)
    assert isinstance(reason(token, alg), dict)
    assert reason(mutate(token, "flip_payload", alg), alg) == "invalid_signature"


def test_a_key_of_the_wrong_type_or_curve_is_invalid_token_never_a_verification() -> None:
    assert reason(sign("RS256"), "ES256", key=RSA_KEY.public_key()) == "invalid_token"
    assert reason(sign("ES256"), "ES256", key=EC_KEYS["ES384"].public_key()) == "invalid_token"
    assert reason(sign("RS256"), "HS256", key=RSA_KEY.public_key()) == "invalid_token"
    assert reason(sign("RS256"), "none", key=RSA_KEY.public_key()) == "invalid_token"


def test_time_claims_with_leeway() -> None:
    now = int(time.time())
    assert reason(sign(exp=now - LEEWAY - 5)) == "expired"
    assert isinstance(reason(sign(exp=now - LEEWAY + 5)), dict)
    assert reason(sign(nbf=now + LEEWAY + 5)) == "not_yet_valid"
    assert reason(sign(iat=now + LEEWAY + 5)) == "not_yet_valid"
    assert reason(sign(exp="soon")) == "invalid_token"


def test_issuer_audience_subject_and_jti() -> None:
    assert reason(sign(iss="https://evil.test")) == "invalid_issuer"
    assert reason(sign(aud=["x", AUDS[1]])) != "invalid_audience"
    assert reason(sign(aud=["x"])) == "invalid_audience"
    assert reason(sign(aud=[])) == "invalid_audience"
    assert reason(sign(sub=5)) == "invalid_token"
    assert reason(sign(jti=["a"])) == "invalid_token"
    assert reason(sign(exp=None)) == "invalid_claims"
