"""AssertionSigner: claims and header, lifetime bounds, reuse and its margin, rotation with a pre-published next key,
loaded keys, cache bound."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idgate.assertion import RESERVED_CLAIMS, AssertionSigner, AssertionStats, key_id, split_pem

ISSUER = "https://idgate.test"
AUD = "grafana"
T0 = 1_700_000_000.0
CLAIMS = {"email": "alice@example.com", "name": "Alice", "groups": ["staff", "grafana-admins"], "role": "Admin"}


class Clock:
    """A wall clock the test moves by hand (epoch seconds)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verify(token: str, jwks: dict[str, Any], *, now: float, audience: str = AUD) -> dict[str, Any]:
    """Verify ``token`` with pyjwt against the key in ``jwks`` named by its kid, as of ``now`` (no leeway)."""
    kid = jwt.get_unverified_header(token)["kid"]
    matching = [k for k in jwks["keys"] if k["kid"] == kid]
    if not matching:
        raise LookupError(f"kid {kid} not published")
    key = jwt.PyJWK(matching[0])
    # pyjwt checks exp/nbf/iat against the real clock, so check signature and aud/iss here and times by hand.
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[key.algorithm_name],
        audience=audience,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    if not claims["nbf"] <= now < claims["exp"]:
        raise jwt.ExpiredSignatureError(f"not valid at {now}")
    return claims


def pem_of(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> AssertionSigner:
    return AssertionSigner(issuer=ISSUER, lifetime_seconds=120, reuse_margin_seconds=30, clock=clock)


def mint(signer: AssertionSigner, claims: dict[str, Any] | None = None, *, key: str = "s1", aud: str = AUD) -> str:
    return signer.mint(cache_key=key, audience=aud, subject="sub-alice", claims=CLAIMS if claims is None else claims)


def test_claims_and_header_are_exact(signer: AssertionSigner) -> None:
    token = mint(signer)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": signer.kid, "typ": "JWT"}
    claims = verify(token, signer.jwks(), now=T0)
    jti = claims.pop("jti")
    assert isinstance(jti, str)
    assert len(base64.urlsafe_b64decode(jti + "==")) == 16
    assert claims == {
        "iss": ISSUER,
        "aud": AUD,
        "sub": "sub-alice",
        "iat": int(T0),
        "nbf": int(T0),
        "exp": int(T0) + 120,
        **CLAIMS,
    }


def kids(signer: AssertionSigner) -> list[str]:
    return [k["kid"] for k in signer.jwks()["keys"]]


def test_jwks_shape(signer: AssertionSigner) -> None:
    # The signing key first, then the pre-published next key (signs only after rotate()).
    current, upcoming = signer.jwks()["keys"]
    assert signer.next_kid != signer.kid
    for jwk, kid in ((current, signer.kid), (upcoming, signer.next_kid)):
        assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}  # public only: no "d"
        assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"], jwk["kid"]) == ("EC", "P-256", "sig", "ES256", kid)
    assert (current["x"], current["y"]) != (upcoming["x"], upcoming["y"])


def test_next_key_does_not_sign_before_rotation(signer: AssertionSigner) -> None:
    token = mint(signer)
    assert jwt.get_unverified_header(token)["kid"] == signer.kid != signer.next_kid
    (upcoming,) = [k for k in signer.jwks()["keys"] if k["kid"] == signer.next_kid]
    with pytest.raises(jwt.InvalidSignatureError):  # the next key does not verify it: it has not signed
        jwt.decode(token, jwt.PyJWK(upcoming), algorithms=["ES256"], audience=AUD, options={"verify_exp": False})


def test_rs256(clock: Clock) -> None:
    signer = AssertionSigner(issuer=ISSUER, algorithm="RS256", clock=clock)
    token = mint(signer)
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": signer.kid, "typ": "JWT"}
    keys = signer.jwks()["keys"]
    assert [k["kid"] for k in keys] == [signer.kid, signer.next_kid]
    for jwk in keys:  # the pre-published next key is RSA 2048 too
        assert set(jwk) == {"kty", "n", "e", "kid", "use", "alg"}
        assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RS256", "sig")
        assert len(base64.urlsafe_b64decode(jwk["n"] + "==")) * 8 == 2048
    assert verify(token, signer.jwks(), now=T0)["exp"] == int(T0) + 300  # the default lifetime


def test_jti_differs_between_tokens(signer: AssertionSigner) -> None:
    a = verify(mint(signer, key="a"), signer.jwks(), now=T0)
    b = verify(mint(signer, key="b"), signer.jwks(), now=T0)
    assert a["jti"] != b["jti"]


@pytest.mark.parametrize("lifetime", [0, 29, 301, 3600])
def test_lifetime_bounds_enforced(lifetime: int) -> None:
    with pytest.raises(ValueError, match="lifetime_seconds"):
        AssertionSigner(issuer=ISSUER, lifetime_seconds=lifetime, reuse_margin_seconds=0)


@pytest.mark.parametrize("lifetime", [30, 300])
def test_lifetime_bounds_inclusive(lifetime: int) -> None:
    assert (
        AssertionSigner(issuer=ISSUER, lifetime_seconds=lifetime, reuse_margin_seconds=0).lifetime_seconds == lifetime
    )


@pytest.mark.parametrize(("lifetime", "margin"), [(120, 120), (120, 121), (120, -1)])
def test_reuse_margin_bounds(lifetime: int, margin: int) -> None:
    with pytest.raises(ValueError, match="reuse_margin_seconds"):
        AssertionSigner(issuer=ISSUER, lifetime_seconds=lifetime, reuse_margin_seconds=margin)


def test_other_constructor_bounds() -> None:
    with pytest.raises(ValueError, match="issuer"):
        AssertionSigner(issuer="")
    with pytest.raises(ValueError, match="algorithm"):
        AssertionSigner(issuer=ISSUER, algorithm="HS256")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_cached"):
        AssertionSigner(issuer=ISSUER, max_cached=-1)


def test_reuse_until_exp_minus_margin(signer: AssertionSigner, clock: Clock) -> None:
    first = mint(signer)
    clock.now = T0 + 89.9  # exp = T0 + 120, margin 30: reusable until T0 + 90 (exclusive)
    assert mint(signer) == first
    assert signer.stats == AssertionStats(minted=1, reused=1, cached=1)
    clock.now = T0 + 90
    second = mint(signer)
    assert second != first
    claims = verify(second, signer.jwks(), now=clock.now)
    assert (claims["iat"], claims["exp"]) == (int(T0) + 90, int(T0) + 210)
    assert signer.stats == AssertionStats(minted=2, reused=1, cached=1)


def test_different_claims_mint_at_once(signer: AssertionSigner) -> None:
    first = mint(signer)
    editor = mint(signer, {**CLAIMS, "role": "Editor"})
    fewer_groups = mint(signer, {**CLAIMS, "groups": ["staff"]})
    assert len({first, editor, fewer_groups}) == 3
    assert verify(editor, signer.jwks(), now=T0)["role"] == "Editor"
    assert mint(signer) == first  # the old identity's entry is still there, untouched
    assert signer.stats.minted == 3


def test_claim_order_does_not_matter(signer: AssertionSigner) -> None:
    assert mint(signer, dict(reversed(list(CLAIMS.items())))) == mint(signer)


def test_cache_key_audience_and_subject_separate_entries(signer: AssertionSigner) -> None:
    base = mint(signer)
    other_session = mint(signer, key="s2")
    other_aud = mint(signer, aud="looker")
    other_sub = signer.mint(cache_key="s1", audience=AUD, subject="sub-bob", claims=CLAIMS)
    assert len({base, other_session, other_aud, other_sub}) == 4
    assert verify(other_aud, signer.jwks(), now=T0, audience="looker")["aud"] == "looker"


def test_rotation_keeps_old_tokens_valid_until_retired(signer: AssertionSigner, clock: Clock) -> None:
    old_kid, pre_published = signer.kid, signer.next_kid
    old_token = mint(signer)
    before = signer.jwks()  # an upstream's copy, fetched before the rotation
    assert [k["kid"] for k in before["keys"]] == [old_kid, pre_published]
    clock.now = T0 + 10
    new_kid = signer.rotate()
    # The new signer is the key that was already published; a fresh next key is pre-published in its place.
    assert new_kid == signer.kid == pre_published
    upcoming = signer.next_kid
    assert len({old_kid, new_kid, upcoming}) == 3
    assert kids(signer) == [new_kid, upcoming, old_kid]

    # The cached token is still handed out and still verifies against the published old key.
    assert mint(signer) == old_token
    assert verify(old_token, signer.jwks(), now=clock.now)["sub"] == "sub-alice"
    # New identities get tokens from the new key.
    fresh = mint(signer, key="s2")
    assert jwt.get_unverified_header(fresh)["kid"] == new_kid
    assert verify(fresh, signer.jwks(), now=clock.now)["sub"] == "sub-alice"
    # The point of pre-publication: the copy fetched before the rotation already verifies the new key's tokens.
    assert verify(fresh, before, now=clock.now)["sub"] == "sub-alice"

    clock.now = T0 + 119  # the old token's last valid second (exp = T0 + 120); retire = T0 + 10 + 120
    assert verify(old_token, signer.jwks(), now=clock.now)["jti"]
    clock.now = T0 + 129.9
    assert kids(signer) == [new_kid, upcoming, old_kid]
    clock.now = T0 + 130
    assert kids(signer) == [new_kid, upcoming]
    with pytest.raises(LookupError):
        verify(old_token, signer.jwks(), now=clock.now)
    # After its reuse window the old entry is replaced by a token from the new key; the next key still waits.
    assert jwt.get_unverified_header(mint(signer))["kid"] == new_kid
    assert signer.next_kid == upcoming


def test_repeated_rotation_publishes_each_key_for_one_lifetime(signer: AssertionSigner, clock: Clock) -> None:
    k1, k2 = signer.kid, signer.next_kid
    assert kids(signer) == [k1, k2]
    clock.now = T0 + 50
    assert signer.rotate() == k2 == signer.kid  # k2 was published since T0, 50 s before it signs
    k3 = signer.next_kid
    assert kids(signer) == [k2, k3, k1]
    clock.now = T0 + 100
    assert signer.rotate() == k3 == signer.kid  # k3 was published since T0 + 50
    k4 = signer.next_kid
    assert len({k1, k2, k3, k4}) == 4
    assert kids(signer) == [k3, k4, k2, k1]  # previous signers newest first
    clock.now = T0 + 169.9
    assert kids(signer) == [k3, k4, k2, k1]
    clock.now = T0 + 170  # k1 retired at T0 + 50 + 120
    assert kids(signer) == [k3, k4, k2]
    clock.now = T0 + 219.9
    assert kids(signer) == [k3, k4, k2]
    clock.now = T0 + 220  # k2 retired at T0 + 100 + 120
    assert kids(signer) == [k3, k4]


def test_loaded_pem_keys(clock: Clock) -> None:
    first = ec.generate_private_key(ec.SECP256R1())
    second = ec.generate_private_key(ec.SECP256R1())
    signer = AssertionSigner(issuer=ISSUER, clock=clock, private_keys_pem=[pem_of(first), pem_of(second)])
    der = first.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    expected_kid = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")[:16]
    assert signer.kid == expected_kid == key_id(first.public_key())
    token = mint(signer)
    assert jwt.get_unverified_header(token)["kid"] == expected_kid
    assert verify(token, signer.jwks(), now=T0)["sub"] == "sub-alice"
    # The token verifies with the loaded key's own public key, too.
    assert jwt.decode(token, first.public_key(), algorithms=["ES256"], audience=AUD, options={"verify_exp": False})
    # The second key is published (for tokens it signed before a restart) for one lifetime, never signs; the
    # pre-published next key is a generated one, neither of the loaded keys, and sits between them.
    second_kid = key_id(second.public_key())
    assert signer.next_kid not in {expected_kid, second_kid}
    assert kids(signer) == [expected_kid, signer.next_kid, second_kid]
    clock.now = T0 + 299.9
    assert kids(signer) == [expected_kid, signer.next_kid, second_kid]
    clock.now = T0 + 300
    assert kids(signer) == [expected_kid, signer.next_kid]
    # Rotation promotes the generated next key, never the rotated-out loaded one.
    upcoming = signer.next_kid
    assert signer.rotate() == upcoming == signer.kid
    assert kids(signer) == [upcoming, signer.next_kid, expected_kid]
    # The same PEM gives the same kid in another signer (replicas, restarts).
    assert AssertionSigner(issuer=ISSUER, private_keys_pem=[pem_of(first)]).kid == expected_kid


def test_loaded_rsa_pem_key(clock: Clock) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = AssertionSigner(issuer=ISSUER, algorithm="RS256", clock=clock, private_keys_pem=[pem_of(key)])
    assert verify(mint(signer), signer.jwks(), now=T0)["iss"] == ISSUER


def test_unusable_pem_keys_refused() -> None:
    with pytest.raises(ValueError, match="P-256"):
        AssertionSigner(issuer=ISSUER, private_keys_pem=[pem_of(ec.generate_private_key(ec.SECP384R1()))])
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ValueError, match="P-256"):
        AssertionSigner(issuer=ISSUER, private_keys_pem=[pem_of(rsa_key)])
    with pytest.raises(ValueError, match="RSA"):
        AssertionSigner(
            issuer=ISSUER, algorithm="RS256", private_keys_pem=[pem_of(ec.generate_private_key(ec.SECP256R1()))]
        )
    with pytest.raises(ValueError, match="PEM"):
        AssertionSigner(issuer=ISSUER, private_keys_pem=[b"not a key"])


def test_split_pem() -> None:
    a = pem_of(ec.generate_private_key(ec.SECP256R1()))
    b = pem_of(ec.generate_private_key(ec.SECP256R1()))
    assert split_pem(b"\n" + a + b"\n\n" + b) == (a, b)
    assert split_pem(b"") == ()


def test_cache_is_bounded(clock: Clock) -> None:
    signer = AssertionSigner(issuer=ISSUER, lifetime_seconds=120, reuse_margin_seconds=30, clock=clock, max_cached=3)
    tokens = {}
    for i in range(5):
        clock.now = T0 + i
        tokens[i] = mint(signer, key=f"s{i}")
    assert signer.stats == AssertionStats(minted=5, reused=0, cached=3)
    assert mint(signer, key="s4") == tokens[4]  # the newest three are kept
    assert mint(signer, key="s2") == tokens[2]
    assert mint(signer, key="s0") != tokens[0]  # the oldest was dropped: minted anew
    assert signer.stats == AssertionStats(minted=6, reused=2, cached=3)


def test_expired_entries_pruned(signer: AssertionSigner, clock: Clock) -> None:
    for i in range(10):
        mint(signer, key=f"s{i}")
    assert signer.stats.cached == 10
    clock.now = T0 + 90  # every entry is past exp - margin
    mint(signer, key="new")
    assert signer.stats.cached == 1


def test_max_cached_zero_disables_reuse(clock: Clock) -> None:
    signer = AssertionSigner(issuer=ISSUER, clock=clock, max_cached=0)
    assert mint(signer) != mint(signer)
    assert signer.stats == AssertionStats(minted=2, reused=0, cached=0)


@pytest.mark.parametrize("name", sorted(RESERVED_CLAIMS))
def test_reserved_claim_refused(signer: AssertionSigner, name: str) -> None:
    with pytest.raises(ValueError, match=f"registered names: {name}"):
        mint(signer, {**CLAIMS, name: "x"})
    assert signer.stats.minted == 0


def test_bad_arguments_refused(signer: AssertionSigner) -> None:
    with pytest.raises(ValueError, match="audience"):
        mint(signer, aud="")
    with pytest.raises(ValueError, match="subject"):
        signer.mint(cache_key="s", audience=AUD, subject="", claims={})
    with pytest.raises(ValueError, match="JSON"):
        mint(signer, {"groups": {1, 2}})
