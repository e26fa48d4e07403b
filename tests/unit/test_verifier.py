"""Bearer JWT verification (idgate.verifier): every refusal has its exact reason code.

Hostile tokens are built by hand (header and payload as JSON, signed with the real IdP key where it matters), so a
refused token differs from an accepted one only in the property under test. The IdP is a ``FakeIdP`` (conftest);
``fake_idp.requests`` shows whether a token got as far as the key lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

from idgate.config import ClaimPaths, IssuerConfig, JwksSettings
from idgate.errors import KeysUnavailable, TokenError
from idgate.jwks import JwksCache
from idgate.principal import Principal
from idgate.token_cache import TokenCache
from idgate.verifier import TrustedIssuer, Verifier, split_compact_jws

if TYPE_CHECKING:
    from conftest import FakeIdP

ISS = "https://idp.test/realms/main"
AUD = "https://api.test"
JWKS_URL = f"{ISS}/protocol/openid-connect/certs"
LEEWAY = 5
AT_JWT = {"typ": "at+jwt"}
MISSING = object()

MakeVerifier = Callable[..., Verifier]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: object) -> str:
    """A base64url segment: bytes as they are, anything else as compact JSON."""
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return b64url(raw)


def sign(header: object, payload: object, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, alg: str) -> str:
    """A compact JWS with any header, signed by hand (PyJWT's encoder would validate the header)."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = get_default_algorithms()[alg].sign(signing_input.encode(), key)  # type: ignore[arg-type]
    return f"{signing_input}.{b64url(signature)}"


def claims(**overrides: object) -> dict[str, Any]:
    """Access-token claims valid now; an override of MISSING removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": "user-123",
        "aud": AUD,
        "exp": now + 300,
        "iat": now,
        "nbf": now,
        "jti": "jti-1",
        "client_id": "cli",
        "scope": "openid profile",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "name": "Alice Liddell",
        "groups": ["viewers", "editors"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not MISSING}


def rsa_header(**overrides: object) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}
    header.update(overrides)
    return {k: v for k, v in header.items() if v is not MISSING}


async def reason_of(verifier: Verifier, token: str) -> str:
    with pytest.raises(TokenError) as excinfo:
        await verifier.verify(token)
    return excinfo.value.reason


@pytest.fixture
def make_verifier(fake_idp: FakeIdP, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> MakeVerifier:
    """A Verifier for ISS whose IdP publishes rsa-1 (RSA 2048) and ec-1 (P-256); settings may be overridden."""
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "rsa-1", "use": "sig"}
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "ec-1", "use": "sig"}
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk, ec_jwk]})

    def build(**overrides: Any) -> Verifier:
        settings: dict[str, Any] = {
            "name": "test",
            "issuer": ISS,
            "discovery": False,
            "jwks_uri": JWKS_URL,
            "audiences": (AUD,),
            "algorithms": ("RS256", "ES256"),
            "require_at_jwt_typ": True,
            "leeway_seconds": LEEWAY,
            "jwks": JwksSettings(refetch_cooldown_seconds=30, unknown_kid_cooldown_seconds=2),
        }
        settings.update(overrides)
        config = IssuerConfig(**settings)
        cache = JwksCache(config=config, client=fake_idp.client())
        return Verifier(issuers={ISS: TrustedIssuer(config=config, keys=cache)})

    return build


@pytest.fixture
def verifier(make_verifier: MakeVerifier) -> Verifier:
    return make_verifier()


# --- accepted tokens -----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_valid_at_jwt_gives_the_principal(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP
) -> None:
    payload = claims()
    token = jwt.encode(payload, rsa_key, algorithm="RS256", headers={"kid": "rsa-1", "typ": "at+jwt"})
    principal = await verifier.verify(token)
    assert isinstance(principal, Principal)
    assert principal.issuer == ISS
    assert principal.subject == "user-123"
    assert principal.key == (ISS, "user-123")
    assert principal.username == "alice"
    assert principal.email == "alice@example.com"
    assert principal.name == "Alice Liddell"
    assert principal.groups == ("viewers", "editors")
    assert principal.expires_at == payload["exp"]
    assert principal.notes == ()
    assert len(fake_idp.requests) == 1


@pytest.mark.anyio
async def test_valid_es256_token(verifier: Verifier, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1", "typ": "at+jwt"})
    assert (await verifier.verify(token)).subject == "user-123"


@pytest.mark.anyio
async def test_hand_signed_token_is_accepted(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    """The control for every hand-built refusal below: the builder itself makes valid tokens."""
    assert (await verifier.verify(sign(rsa_header(), claims(), rsa_key, "RS256"))).subject == "user-123"


@pytest.mark.anyio
async def test_keys_are_fetched_once_for_many_tokens(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, fake_idp: FakeIdP
) -> None:
    for i in range(5):
        await verifier.verify(sign(rsa_header(), claims(sub=f"u{i}"), rsa_key, "RS256"))
        await verifier.verify(sign(rsa_header(alg="ES256", kid="ec-1"), claims(sub=f"u{i}"), ec_key, "ES256"))
    assert len(fake_idp.requests) == 1


@pytest.mark.anyio
async def test_nested_claim_path_for_groups(make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = make_verifier(claims=ClaimPaths(groups="realm_access.roles"))
    payload = claims(groups=MISSING, realm_access={"roles": ["admin", "dev"]})
    principal = await verifier.verify(sign(rsa_header(), payload, rsa_key, "RS256"))
    assert principal.groups == ("admin", "dev")
    assert principal.notes == ()


@pytest.mark.anyio
async def test_nested_claim_path_missing_gives_no_groups(
    make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = make_verifier(claims=ClaimPaths(groups="realm_access.roles"))
    principal = await verifier.verify(sign(rsa_header(), claims(realm_access="admin"), rsa_key, "RS256"))
    assert principal.groups == ()


@pytest.mark.parametrize("groups", ["viewers,admin", "admin", {"admin": True}, 1, True])
@pytest.mark.anyio
async def test_groups_not_a_list_gives_no_groups(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, groups: object
) -> None:
    principal = await verifier.verify(sign(rsa_header(), claims(groups=groups), rsa_key, "RS256"))
    assert principal.groups == ()
    assert "groups_not_a_list" in principal.notes
    assert principal.subject == "user-123"


@pytest.mark.anyio
async def test_non_string_groups_are_dropped(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    payload = claims(groups=["viewers", 7, None, ["admin"], {"name": "admin"}, True, "", "editors", "viewers"])
    principal = await verifier.verify(sign(rsa_header(), payload, rsa_key, "RS256"))
    assert principal.groups == ("viewers", "editors")
    assert "group_not_a_string" in principal.notes


@pytest.mark.anyio
async def test_missing_optional_claims_give_none(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    payload = claims(email=MISSING, preferred_username=MISSING, name=MISSING, groups=MISSING)
    principal = await verifier.verify(sign(rsa_header(), payload, rsa_key, "RS256"))
    assert (principal.email, principal.username, principal.name, principal.groups) == (None, None, None, ())


# --- time claims ---------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_expired_beyond_leeway(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    token = sign(rsa_header(), claims(exp=now - LEEWAY - 1, iat=now - 600, nbf=now - 600), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "expired"


@pytest.mark.anyio
async def test_expired_within_leeway_is_accepted(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    token = sign(rsa_header(), claims(exp=now - 2, iat=now - 600, nbf=now - 600), rsa_key, "RS256")
    assert (await verifier.verify(token)).subject == "user-123"


@pytest.mark.anyio
async def test_nbf_in_the_future(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(), claims(nbf=int(time.time()) + 60), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "not_yet_valid"


@pytest.mark.anyio
async def test_nbf_within_leeway_is_accepted(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(), claims(nbf=int(time.time()) + 2), rsa_key, "RS256")
    assert (await verifier.verify(token)).subject == "user-123"


@pytest.mark.anyio
async def test_iat_in_the_future_beyond_leeway(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(), claims(iat=int(time.time()) + 60, nbf=MISSING), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "not_yet_valid"


@pytest.mark.parametrize("exp", [MISSING, None], ids=["missing", "null"])
@pytest.mark.anyio
async def test_missing_exp(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, exp: object) -> None:
    token = sign(rsa_header(), claims(exp=exp), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_claims"


@pytest.mark.anyio
async def test_exp_beyond_a_float_is_a_refusal(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    """PyJWT accepts any integer exp; 10**400 overflowed float() in principal_from_claims (found by the jws fuzz
    target): a refusal with a reason code (outside I-JSON's range: invalid_claim_type), not an OverflowError."""
    token = sign(rsa_header(), claims(exp=10**400), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_claim_type"


@pytest.mark.parametrize("exp", ["tomorrow", [1], {"t": 1}])
@pytest.mark.anyio
async def test_exp_not_a_number(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, exp: object) -> None:
    token = sign(rsa_header(), claims(exp=exp), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_claim_type"


# --- claim types (RFC 7519 §2, §4.1; idgate.claims) ----------------------------------------------------------------

NOW = int(time.time())
WRONG_TYPES = [
    # PyJWT reads these with int(): before the type check, each was accepted (the first one never expires)
    ("exp", str(NOW + 10**9)),
    ("exp", str(NOW + 300)),
    ("exp", True),
    ("iat", True),
    ("iat", False),
    ("iat", str(NOW)),
    ("nbf", False),
    ("nbf", str(NOW)),
    ("nbf", None),
    ("iat", None),
    ("exp", float("inf")),
    ("exp", float("nan")),
    ("exp", 2**53 + 1),
    ("exp", 1e300),
    ("iat", [NOW]),
    ("jti", 7),
    ("jti", ["jti-1"]),
    ("jti", None),
    ("client_id", 42),
    ("client_id", ["cli"]),
    ("azp", {"id": "cli"}),
    ("sid", 1),
    ("sub", 123),
    ("sub", ["user-123"]),
    ("sub", True),
    ("aud", 1),
    ("aud", {"aud": AUD}),
    ("aud", [AUD, 1]),
    ("aud", [[AUD]]),
]


@pytest.mark.parametrize(("claim", "value"), WRONG_TYPES, ids=[f"{c}={v!r}"[:40] for c, v in WRONG_TYPES])
@pytest.mark.anyio
async def test_registered_claim_of_the_wrong_type(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, claim: str, value: object
) -> None:
    token = sign(rsa_header(), claims(**{claim: value}), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_claim_type"


@pytest.mark.parametrize(
    "overrides",
    [
        # NumericDate may be non-integer (exp a day ahead: NOW is taken at import, and the suite is long)
        {"exp": NOW + 86400.5, "iat": NOW - 0.25, "nbf": float(NOW)},
        {"aud": [AUD]},
        {"aud": [AUD, "https://other.test"]},
        {"jti": MISSING, "client_id": MISSING, "nbf": MISSING, "iat": MISSING},  # optional ones may be absent
        {"azp": "cli", "sid": "s-1"},
    ],
)
@pytest.mark.anyio
async def test_registered_claims_of_the_right_type_are_accepted(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, overrides: dict[str, object]
) -> None:
    assert (await verifier.verify(sign(rsa_header(), claims(**overrides), rsa_key, "RS256"))).subject == "user-123"


@pytest.mark.anyio
async def test_claim_types_are_checked_before_the_key_is_fetched(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP
) -> None:
    token = sign(rsa_header(kid="not-published"), claims(exp=str(NOW + 300)), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_claim_type"
    assert fake_idp.requests == []


# --- audience ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    ["https://other.test", "https://api.test/", "https://api.test.evil", "https://api.tes", "", ["https://other.test"]],
)
@pytest.mark.anyio
async def test_wrong_audience(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, aud: object) -> None:
    token = sign(rsa_header(), claims(aud=aud), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_audience"


@pytest.mark.anyio
async def test_missing_audience(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(), claims(aud=MISSING), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_audience"


@pytest.mark.anyio
async def test_audience_list_containing_ours_is_accepted(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(), claims(aud=["https://other.test", AUD]), rsa_key, "RS256")
    assert (await verifier.verify(token)).subject == "user-123"


@pytest.mark.anyio
async def test_any_configured_audience_is_accepted(make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = make_verifier(audiences=(AUD, "https://second.test"))
    token = sign(rsa_header(), claims(aud="https://second.test"), rsa_key, "RS256")
    assert (await verifier.verify(token)).subject == "user-123"


# --- issuer --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [
        "https://evil.test/realms/main",
        ISS + "/",
        "https://idp.test/realms/mai",
        ISS + "x",
        ISS + "/../main",
        "HTTPS://IDP.TEST/realms/main",
        "",
        MISSING,
        None,
        [ISS],
        {"iss": ISS},
    ],
    ids=["other", "trailing-slash", "prefix", "extended", "dot-dot", "case", "empty", "missing", "null", "list", "obj"],
)
@pytest.mark.anyio
async def test_wrong_issuer(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP, iss: object) -> None:
    token = sign(rsa_header(), claims(iss=iss), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_issuer"
    assert fake_idp.requests == []


# --- algorithm -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.anyio
async def test_alg_none_with_a_signature(verifier: Verifier, fake_idp: FakeIdP, alg: str) -> None:
    token = f"{segment(rsa_header(alg=alg))}.{segment(claims())}.{b64url(b'x' * 32)}"
    assert await reason_of(verifier, token) == "alg_not_allowed"
    assert fake_idp.requests == []


@pytest.mark.parametrize("alg", ["none", "None"])
@pytest.mark.anyio
async def test_alg_none_unsigned(verifier: Verifier, fake_idp: FakeIdP, alg: str) -> None:
    """An unsigned JWS (empty signature segment) is refused by the algorithm pin, so the audit log names the attack."""
    token = f"{segment(rsa_header(alg=alg))}.{segment(claims())}."
    assert await reason_of(verifier, token) == "alg_not_allowed"
    assert fake_idp.requests == []


@pytest.mark.parametrize("alg", [MISSING, None, "", ["RS256"], {"RS256": 1}, "rs256", "RS256 ", "HS256", "PS256"])
@pytest.mark.anyio
async def test_alg_missing_or_not_pinned(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP, alg: object
) -> None:
    header = rsa_header(alg=alg)
    token = f"{segment(header)}.{segment(claims())}.{b64url(b'x' * 256)}"
    assert await reason_of(verifier, token) == "alg_not_allowed"
    assert fake_idp.requests == []


@pytest.mark.anyio
async def test_hs256_signed_with_the_rsa_public_key(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP
) -> None:
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{segment(rsa_header(alg='HS256'))}.{segment(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert await reason_of(verifier, f"{signing_input}.{b64url(mac)}") == "alg_not_allowed"
    assert fake_idp.requests == []


@pytest.mark.anyio
async def test_rs256_header_on_the_ec_key(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(kid="ec-1"), claims(), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "alg_not_allowed"


@pytest.mark.anyio
async def test_es256_header_on_the_rsa_key(verifier: Verifier, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = sign(rsa_header(alg="ES256", kid="rsa-1"), claims(), ec_key, "ES256")
    assert await reason_of(verifier, token) == "alg_not_allowed"


@pytest.mark.anyio
async def test_es256_token_when_only_rs256_is_pinned(
    make_verifier: MakeVerifier, ec_key: ec.EllipticCurvePrivateKey, fake_idp: FakeIdP
) -> None:
    verifier = make_verifier(algorithms=("RS256",))
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1", "typ": "at+jwt"})
    assert await reason_of(verifier, token) == "alg_not_allowed"
    assert fake_idp.requests == []


@pytest.mark.anyio
async def test_ps256_on_an_rsa_key_when_pinned(make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = make_verifier(algorithms=("RS256", "PS256"))
    token = sign(rsa_header(alg="PS256"), claims(), rsa_key, "PS256")
    assert (await verifier.verify(token)).subject == "user-123"


# --- forbidden and critical headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://evil.test/jwks.json"),
        ("x5u", "https://evil.test/cert.pem"),
        ("jwk", {"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
        ("x5c", ["MIIB"]),
        ("jku", JWKS_URL),  # even pointing at the real JWKS
        ("jku", None),
    ],
)
@pytest.mark.anyio
async def test_forbidden_header(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP, name: str, value: object
) -> None:
    token = sign(rsa_header(**{name: value}), claims(), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "forbidden_header"
    assert fake_idp.requests == []


@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "x"])
@pytest.mark.anyio
async def test_crit_header(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, crit: object) -> None:
    token = sign(rsa_header(crit=crit, exp=1), claims(), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "unsupported_crit"


# --- typ and token kind --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", "jwt", MISSING, None, "", "id+jwt", "at+jwt ", "logout+jwt", ["at+jwt"]])
@pytest.mark.anyio
async def test_typ_not_at_jwt(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, typ: object) -> None:
    token = sign(rsa_header(typ=typ), claims(), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_typ"


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
@pytest.mark.anyio
async def test_typ_at_jwt_variants_accepted(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, typ: str) -> None:
    token = sign(rsa_header(typ=typ), claims(), rsa_key, "RS256")
    assert (await verifier.verify(token)).subject == "user-123"


@pytest.mark.anyio
async def test_typ_jwt_accepted_when_not_required(make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = make_verifier(require_at_jwt_typ=False)
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})  # typ JWT
    assert (await verifier.verify(token)).subject == "user-123"


@pytest.mark.parametrize(
    "extra",
    [
        {"nonce": "n-0S6_WzA2Mj"},
        {"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"},
        {"c_hash": "LDktKdoQak3Pk0cnXxCltA"},
        {"s_hash": "LDktKdoQak3Pk0cnXxCltA"},
        {"events": {"http://schemas.openid.net/event/backchannel-logout": {}}},
        {"typ": "ID"},
        {"typ": "Logout"},
    ],
    ids=["nonce", "at_hash", "c_hash", "s_hash", "events", "keycloak-ID", "keycloak-Logout"],
)
@pytest.mark.anyio
async def test_id_or_logout_token_shaped_at_jwt(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, extra: dict[str, object]
) -> None:
    token = sign(rsa_header(), claims(**extra), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_typ"


@pytest.mark.anyio
async def test_id_token_refused_even_without_the_typ_requirement(
    make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = make_verifier(require_at_jwt_typ=False)
    token = jwt.encode(claims(nonce="abc"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await reason_of(verifier, token) == "invalid_typ"


# --- kid -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["nope", "../../dev/null", "rsa-1 ", "RSA-1", "", "k" * 256])
@pytest.mark.anyio
async def test_unknown_kid(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, kid: str) -> None:
    token = sign(rsa_header(kid=kid), claims(), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "unknown_kid"


@pytest.mark.parametrize(
    "kid",
    ["k" * 8192, "k" * 257, 1, 0, True, ["rsa-1"], {"kid": "rsa-1"}],
    ids=["8KB", "257", "1", "0", "true", "list", "obj"],
)
@pytest.mark.anyio
async def test_kid_too_long_or_not_a_string(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP, kid: object
) -> None:
    token = sign(rsa_header(kid=kid), claims(), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_token"
    assert fake_idp.requests == []


@pytest.mark.anyio
async def test_no_kid_with_two_published_keys(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(kid=MISSING), claims(), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "unknown_kid"


@pytest.mark.anyio
async def test_signed_by_another_key_under_our_kid(verifier: Verifier, rsa_key_2: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(), claims(), rsa_key_2, "RS256")
    assert await reason_of(verifier, token) == "invalid_signature"


# --- signature -----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tampered_payload(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(), claims(), rsa_key, "RS256")
    header, _, signature = token.split(".")
    forged = f"{header}.{segment(claims(sub='admin'))}.{signature}"
    assert await reason_of(verifier, forged) == "invalid_signature"


@pytest.mark.anyio
async def test_tampered_header(verifier: Verifier, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = sign(rsa_header(alg="ES256", kid="ec-1"), claims(), ec_key, "ES256")
    _, payload, signature = token.split(".")
    forged = f"{segment(rsa_header(alg='ES256', kid='ec-1', typ='application/at+jwt'))}.{payload}.{signature}"
    assert await reason_of(verifier, forged) == "invalid_signature"


@pytest.mark.parametrize("cut", [1, 2, 4, 100])
@pytest.mark.anyio
async def test_truncated_signature(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, cut: int) -> None:
    token = sign(rsa_header(), claims(), rsa_key, "RS256")
    assert await reason_of(verifier, token[:-cut]) in {"invalid_signature", "invalid_token"}


@pytest.mark.anyio
async def test_flipped_signature_bit(verifier: Verifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_header(), claims(), rsa_key, "RS256")
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    assert await reason_of(verifier, f"{head}.{payload}.{b64url(bytes(raw))}") == "invalid_signature"


@pytest.mark.parametrize("suffix", ["\n", "=", "==", " ", "\r\n"])
@pytest.mark.anyio
async def test_signature_with_trailing_junk(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, suffix: str) -> None:
    token = sign(rsa_header(), claims(), rsa_key, "RS256")
    assert await reason_of(verifier, token + suffix) == "invalid_token"


# --- shape ---------------------------------------------------------------------------------------------------------


BAD_UTF8_HEADER = b'{"alg":"RS256","typ":"\xff"}'


def _shapes(token: str) -> dict[str, str]:
    head, payload, signature = token.split(".")
    return {
        "jwe-5-segments": f"{head}.{b64url(b'k' * 256)}.{b64url(b'iv')}.{payload}.{b64url(b'tag')}",
        "json-serialisation": json.dumps(
            {"payload": payload, "signatures": [{"protected": head, "signature": signature}]}
        ),
        "json-flattened": json.dumps({"payload": payload, "protected": head, "signature": signature}),
        "2-segments": f"{head}.{payload}",
        "4-segments": f"{head}.{payload}.{signature}.{signature}",
        "1-segment": head,
        "empty": "",
        "dots-only": "..",
        "empty-header": f".{payload}.{signature}",
        "empty-payload": f"{head}..{signature}",
        "non-base64-header": f"{head[:-2]}!*.{payload}.{signature}",
        "non-base64-payload": f"{head}.{payload[:5]}$%{payload[5:]}.{signature}",
        "non-base64-signature": f"{head}.{payload}.{signature[:-2]}+/",
        "padded-header": f"{head}==.{payload}.{signature}",
        "space-inside": f"{head}.{payload[:8]} {payload[8:]}.{signature}",
        "header-not-json": f"{segment(b'not json')}.{payload}.{signature}",
        "header-json-array": f"{segment(['RS256', 'rsa-1'])}.{payload}.{signature}",
        "header-json-string": f"{segment('at+jwt')}.{payload}.{signature}",
        "header-json-null": f"{segment(None)}.{payload}.{signature}",
        "header-invalid-utf8": f"{segment(BAD_UTF8_HEADER)}.{payload}.{signature}",
        "payload-json-array": f"{head}.{segment([ISS])}.{signature}",
        "payload-not-json": f"{head}.{segment(b'sub=admin')}.{signature}",
    }


SHAPES = list(_shapes("a.b.c"))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.anyio
async def test_malformed_shapes(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP, shape: str) -> None:
    token = _shapes(sign(rsa_header(), claims(), rsa_key, "RS256"))[shape]
    assert await reason_of(verifier, token) == "invalid_token"
    assert fake_idp.requests == []


# The signature segment is checked in verify(), after the algorithm pin; split only parses header and payload.
@pytest.mark.parametrize("shape", [s for s in SHAPES if s != "non-base64-signature"])
def test_split_compact_jws_refuses_malformed_shapes(rsa_key: rsa.RSAPrivateKey, shape: str) -> None:
    token = _shapes(sign(rsa_header(), claims(), rsa_key, "RS256"))[shape]
    with pytest.raises(TokenError) as excinfo:
        split_compact_jws(token, max_bytes=16384)
    assert excinfo.value.reason == "invalid_token"


def test_split_compact_jws_returns_header_and_payload(rsa_key: rsa.RSAPrivateKey) -> None:
    payload = claims()
    token = sign(rsa_header(), payload, rsa_key, "RS256")
    header, body, signature = split_compact_jws(token, max_bytes=16384)
    assert header == rsa_header()
    assert body == payload
    assert signature == token.rsplit(".", 1)[1]


@pytest.mark.anyio
async def test_one_megabyte_token(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP) -> None:
    token = sign(rsa_header(), claims(pad="x" * 1_000_000), rsa_key, "RS256")
    assert len(token) > 1_000_000
    assert await reason_of(verifier, token) == "token_too_large"
    assert fake_idp.requests == []


@pytest.mark.parametrize(
    "token",
    [
        "x" * 1_000_000,
        "a." * 500_000,
        f"{segment({'alg': 'RS256'})}.{segment({'iss': 'https://evil.test'})}.{'A' * 1_000_000}",
    ],
    ids=["garbage", "many-dots", "foreign-issuer"],
)
@pytest.mark.anyio
async def test_size_is_checked_before_anything_else(verifier: Verifier, fake_idp: FakeIdP, token: str) -> None:
    assert await reason_of(verifier, token) == "token_too_large"
    assert fake_idp.requests == []


def test_split_compact_jws_checks_size_first() -> None:
    with pytest.raises(TokenError) as excinfo:
        split_compact_jws("x" * 513, max_bytes=512)
    assert excinfo.value.reason == "token_too_large"
    with pytest.raises(TokenError) as excinfo:
        split_compact_jws("x" * 512, max_bytes=512)
    assert excinfo.value.reason == "invalid_token"


@pytest.mark.anyio
async def test_token_size_limit_is_the_configured_one(
    make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP
) -> None:
    verifier = make_verifier(max_token_bytes=2048)
    small = sign(rsa_header(), claims(), rsa_key, "RS256")
    padded = sign(rsa_header(), claims(pad="x" * (2048 - len(small))), rsa_key, "RS256")
    assert len(padded) > 2048
    assert await reason_of(verifier, padded) == "token_too_large"
    assert fake_idp.requests == []
    assert (await verifier.verify(small)).subject == "user-123"


@pytest.mark.parametrize("where", ["header", "payload"])
@pytest.mark.anyio
async def test_deeply_nested_json_segment(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, where: str) -> None:
    deep = b"[" * 3000 + b"]" * 3000
    nested_header = b'{"alg":"RS256","typ":"at+jwt","x":' + deep + b"}"
    nested_payload = b'{"iss":"' + ISS.encode() + b'","x":' + deep + b"}"
    head, payload, signature = sign(rsa_header(), claims(), rsa_key, "RS256").split(".")
    if where == "header":
        token = f"{segment(nested_header)}.{payload}.{signature}"
    else:
        token = f"{head}.{segment(nested_payload)}.{signature}"
    assert len(token) < 16384
    assert await reason_of(verifier, token) == "invalid_token"


# --- claims --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", [MISSING, "", "s" * 256], ids=["missing", "empty", "256-chars"])
@pytest.mark.anyio
async def test_bad_subject(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, sub: object) -> None:
    token = sign(rsa_header(), claims(sub=sub), rsa_key, "RS256")
    assert await reason_of(verifier, token) == "invalid_claims"


@pytest.mark.parametrize(
    ("sub", "reason"), [(123, "invalid_claim_type"), (["user-123"], "invalid_claim_type"), (None, "invalid_claims")]
)
@pytest.mark.anyio
async def test_subject_not_a_string(verifier: Verifier, rsa_key: rsa.RSAPrivateKey, sub: object, reason: str) -> None:
    token = sign(rsa_header(), claims(sub=sub), rsa_key, "RS256")
    assert await reason_of(verifier, token) == reason  # null is a missing required claim


@pytest.mark.anyio
async def test_subject_from_a_configured_path(make_verifier: MakeVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = make_verifier(claims=ClaimPaths(subject="oid"))
    principal = await verifier.verify(sign(rsa_header(), claims(oid="object-9"), rsa_key, "RS256"))
    assert principal.subject == "object-9"
    assert await reason_of(verifier, sign(rsa_header(), claims(), rsa_key, "RS256")) == "invalid_claims"


# --- keys unavailable ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_keys_unavailable_when_the_idp_is_down_is_no_verdict_on_the_token(
    verifier: Verifier, rsa_key: rsa.RSAPrivateKey, fake_idp: FakeIdP
) -> None:
    fake_idp.down = True
    token = sign(rsa_header(), claims(), rsa_key, "RS256")
    for _ in range(2):
        with pytest.raises(KeysUnavailable) as info:  # not a TokenError: the token may well be valid
            await verifier.verify(token)
        assert (info.value.reason, info.value.retry_after) == ("keys_unavailable", 2)
        assert not isinstance(info.value, TokenError)
    assert len(fake_idp.requests) == 1
    fake_idp.down = False
    with pytest.raises(KeysUnavailable):  # recovered, but the next refetch may not start yet
        await verifier.verify(token)


@pytest.mark.anyio
async def test_the_token_cache_drops_exactly_the_tokens_of_a_withdrawn_key(
    fake_idp: FakeIdP, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "rsa-1", "use": "sig"}
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "ec-1", "use": "sig"}
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk, ec_jwk]})
    config = IssuerConfig(
        name="test", issuer=ISS, discovery=False, jwks_uri=JWKS_URL, audiences=(AUD,), algorithms=("RS256", "ES256")
    )
    keys = JwksCache(config=config, client=fake_idp.client())
    tokens = TokenCache()
    keys.on_keys_withdrawn = lambda issuer, kids: tokens.purge(issuer=issuer, kids=kids)
    verifier = Verifier(issuers={ISS: TrustedIssuer(config=config, keys=keys)}, cache=tokens)
    by_rsa = [sign(rsa_header(), claims(sub=f"r{i}"), rsa_key, "RS256") for i in range(3)]
    by_ec = sign(rsa_header(kid="ec-1", alg="ES256"), claims(sub="e"), ec_key, "ES256")
    for token in (*by_rsa, by_ec):
        await verifier.verify(token)
    assert len(tokens) == 4
    fake_idp.publish(JWKS_URL, {"keys": [ec_jwk]})  # rsa-1 withdrawn
    outcome = await keys.refresh_now()
    assert (outcome.withdrawn, outcome.purged, len(tokens)) == ({"rsa-1"}, 3, 1)
    assert (await verifier.verify(by_ec)).subject == "e"
    assert tokens.hits == 1  # still cached
    for token in by_rsa:
        assert await reason_of(verifier, token) == "unknown_kid"


@pytest.mark.anyio
async def test_two_issuers_are_kept_apart(
    fake_idp: FakeIdP, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    other_iss = "https://other-idp.test"
    other_jwks = f"{other_iss}/jwks"
    fake_idp.publish(JWKS_URL, {"keys": [RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "k"}]})
    fake_idp.publish(other_jwks, {"keys": [RSAAlgorithm.to_jwk(rsa_key_2.public_key(), as_dict=True) | {"kid": "k"}]})
    issuers = {}
    for iss, uri in ((ISS, JWKS_URL), (other_iss, other_jwks)):
        config = IssuerConfig(name="t", issuer=iss, discovery=False, jwks_uri=uri, audiences=(AUD,))
        issuers[iss] = TrustedIssuer(config=config, keys=JwksCache(config=config, client=fake_idp.client()))
    verifier = Verifier(issuers=issuers)
    assert (await verifier.verify(sign(rsa_header(kid="k"), claims(), rsa_key, "RS256"))).issuer == ISS
    assert (await verifier.verify(sign(rsa_header(kid="k"), claims(iss=other_iss), rsa_key_2, "RS256"))).issuer == (
        other_iss
    )
    # the other issuer's key does not verify tokens claiming ours
    forged = sign(rsa_header(kid="k"), claims(), rsa_key_2, "RS256")
    assert await reason_of(verifier, forged) == "invalid_signature"
