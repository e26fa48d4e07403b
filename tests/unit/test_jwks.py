"""The JWKS cache (idgate.jwks): TTL, key parsing, forced refetch and its cooldown, single-flight, stale keys,
discovery and the limits on what an IdP may answer.

The IdP is a ``FakeIdP`` behind ``httpx.MockTransport`` (conftest); time is a ``FakeClock`` injected as the cache's
``clock``, so no test sleeps except to make the IdP slow.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from idgate.config import IssuerConfig, JwksSettings
from idgate.errors import KeySetError, KeysUnavailable, TokenError
from idgate.jwks import JwksCache, parse_jwks, ttl_from_cache_control

if TYPE_CHECKING:
    from conftest import FakeClock, FakeIdP

ISS = "https://idp.test/realms/main"
AUD = "https://api.test"
JWKS_URL = f"{ISS}/protocol/openid-connect/certs"
DISCOVERY_URL = f"{ISS}/.well-known/openid-configuration"
COOLDOWN = 30.0  # background refetches and retries after a failure
WINDOW = 2.0  # refetches forced by an unknown kid
NEGATIVE = 10.0  # a kid confirmed absent is refused without a fetch this long
PINNED = frozenset({"RS256", "ES256"})


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"use": "sig", "alg": "RS256"})
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"use": "sig", "alg": "ES256"})
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def issuer_config(**overrides: Any) -> IssuerConfig:
    settings: dict[str, Any] = {
        "name": "test",
        "issuer": ISS,
        "discovery": False,
        "jwks_uri": JWKS_URL,
        "audiences": (AUD,),
        "algorithms": ("RS256", "ES256"),
        "jwks": JwksSettings(
            refetch_cooldown_seconds=COOLDOWN, unknown_kid_cooldown_seconds=WINDOW, negative_kid_ttl_seconds=NEGATIVE
        ),
    }
    settings.update(overrides)
    return IssuerConfig(**settings)


def make_cache(idp: FakeIdP, clock: FakeClock, *, dev_mode: bool = False, **overrides: Any) -> JwksCache:
    return JwksCache(config=issuer_config(**overrides), client=idp.client(), dev_mode=dev_mode, clock=clock)


async def drain(cache: JwksCache) -> None:
    """Wait for a background (stale-while-revalidate) refetch to finish."""
    task = cache._inflight
    if task is not None:
        await task


async def reason_of(cache: JwksCache, kid: str | None) -> str:
    """The reason code of a refusal (TokenError, 401) or of keys that cannot be had (KeysUnavailable, 503)."""
    with pytest.raises((TokenError, KeysUnavailable)) as excinfo:
        await cache.get_key(kid)
    return excinfo.value.reason


def same_key(found: object, private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bool:
    return found.public_numbers() == private.public_key().public_numbers()  # type: ignore[attr-defined]


# --- TTL from Cache-Control ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("max-age=300", 300),
        ("public, max-age=3600", 3600),
        ("max-age=3600, must-revalidate", 3600),
        ("public,max-age=120,stale-while-revalidate=30", 120),
        ("MAX-AGE=600", 600),
        ('max-age="600"', 600),
        ("max-age=60", 60),
        ("max-age=86400", 86400),
        ("max-age=59", 60),
        ("max-age=0", 60),
        ("max-age=86401", 86400),
        ("max-age=99999999999", 86400),
        ("no-store", 60),
        ("no-cache", 60),
        ("no-cache, max-age=3600", 60),
        ("max-age=3600, no-store", 60),
        (None, 60),
        ("", 60),
        ("garbage", 60),
        ("max-age=abc", 60),
        ("max-age=-300", 60),
        ("max-age=3600x", 60),
        ("s-maxage=3600", 60),
    ],
)
def test_ttl_from_cache_control(header: str | None, expected: float) -> None:
    assert ttl_from_cache_control(header, min_ttl=60, max_ttl=86400) == expected


def test_ttl_uses_the_given_bounds() -> None:
    assert ttl_from_cache_control("max-age=5", min_ttl=10, max_ttl=20) == 10
    assert ttl_from_cache_control("max-age=15", min_ttl=10, max_ttl=20) == 15
    assert ttl_from_cache_control("max-age=25", min_ttl=10, max_ttl=20) == 20
    assert ttl_from_cache_control(None, min_ttl=10, max_ttl=20) == 10


# --- parse_jwks ----------------------------------------------------------------------------------------------------


def test_parse_jwks_keeps_good_keys_and_counts_the_rest(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    # a complete, loadable private JWK: publishing it is an IdP mistake, and it is never used
    private: dict[str, Any] = RSAAlgorithm.to_jwk(rsa_key_2, as_dict=True)
    private.update({"kid": "private", "use": "sig", "alg": "RS256"})
    document = {
        "keys": [
            rsa_jwk(rsa_key, "rsa-1"),
            rsa_jwk(rsa_key, "bad-n", n="!!!not-base64!!!"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "alg": "HS256"},
            private,
            rsa_jwk(rsa_key_2, "enc", use="enc"),
            ECAlgorithm.to_jwk(p384.public_key(), as_dict=True) | {"kid": "ec-384", "alg": "ES384", "use": "sig"},
            ec_jwk(ec_key, "ec-1"),
            rsa_jwk(rsa_key_2, "rsa-1"),  # duplicate kid: the first one wins
        ]
    }
    keys, skipped = parse_jwks(document, pinned=PINNED)
    assert set(keys) == {"rsa-1", "ec-1"}
    assert skipped == 6
    assert same_key(keys["rsa-1"].key, rsa_key)
    assert keys["rsa-1"].algorithms == {"RS256"}
    assert keys["rsa-1"].kid == "rsa-1"
    assert same_key(keys["ec-1"].key, ec_key)
    assert keys["ec-1"].algorithms == {"ES256"}


def test_parse_jwks_key_algorithms_are_pinned_and_narrowed_by_alg(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    no_alg = rsa_jwk(rsa_key, "rsa-any")
    del no_alg["alg"]
    document = {"keys": [no_alg, rsa_jwk(rsa_key, "rsa-ps", alg="PS256"), ec_jwk(ec_key, "ec-1", alg="RS256")]}
    keys, skipped = parse_jwks(document, pinned=frozenset({"RS256", "PS256", "ES256"}))
    assert keys["rsa-any"].algorithms == {"RS256", "PS256"}
    assert keys["rsa-ps"].algorithms == {"PS256"}
    assert "ec-1" not in keys  # an EC key claiming RS256 fits no algorithm
    assert skipped == 1


def test_parse_jwks_skips_keys_whose_algorithm_is_not_pinned(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    keys, skipped = parse_jwks(
        {"keys": [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1")]}, pinned=frozenset({"RS256"})
    )
    assert set(keys) == {"rsa-1"}
    assert skipped == 1


@pytest.mark.parametrize(
    "entry",
    [
        "a string",
        None,
        ["RSA"],
        {"kty": "RSA"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "X25519", "x": "AA"},
        {"kty": "unknown"},
        {},
    ],
)
def test_parse_jwks_skips_malformed_entries(rsa_key: rsa.RSAPrivateKey, entry: object) -> None:
    keys, skipped = parse_jwks({"keys": [entry, rsa_jwk(rsa_key, "rsa-1")]}, pinned=PINNED)
    assert set(keys) == {"rsa-1"}
    assert skipped == 1


@pytest.mark.parametrize("kid", [123, ["rsa-1"], "k" * 257])
def test_parse_jwks_skips_keys_with_a_bad_kid(rsa_key: rsa.RSAPrivateKey, kid: object) -> None:
    keys, skipped = parse_jwks(
        {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key, None) | {"kid": kid}]}, pinned=PINNED
    )
    assert set(keys) == {"rsa-1"}
    assert skipped == 1


@pytest.mark.parametrize(
    "extra",
    [{"alg": ["RS256"]}, {"kty": ["RSA"]}, {"kty": "EC", "crv": {"name": "P-256"}}],
    ids=["alg-list", "kty-list", "crv-object"],
)
def test_parse_jwks_skips_a_key_with_unhashable_members(rsa_key: rsa.RSAPrivateKey, extra: dict[str, Any]) -> None:
    keys, skipped = parse_jwks({"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key, "odd", **extra)]}, pinned=PINNED)
    assert set(keys) == {"rsa-1"}
    assert skipped == 1


@pytest.mark.parametrize("document", [[], "keys", None, 42, {}, {"keys": None}, {"keys": {"kid": "x"}}, {"Keys": []}])
def test_parse_jwks_refuses_a_document_without_a_keys_array(document: object) -> None:
    with pytest.raises(KeySetError):
        parse_jwks(document, pinned=PINNED)


def test_parse_jwks_accepts_an_empty_keys_array() -> None:
    assert parse_jwks({"keys": []}, pinned=PINNED) == ({}, 0)


# --- get_key: caching, forced refetch, cooldown, single-flight -----------------------------------------------------


@pytest.mark.anyio
async def test_known_kid_is_fetched_once_for_many_calls(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1")]})
    cache = make_cache(fake_idp, clock)
    assert not cache.ready
    assert cache.kids == frozenset()
    for _ in range(25):
        key = await cache.get_key("rsa-1")
        assert same_key(key.key, rsa_key)
        clock.advance(10)  # 250 s in all, still inside max-age=300
    assert same_key((await cache.get_key("ec-1")).key, ec_key)
    assert len(fake_idp.requests) == 1
    request = fake_idp.requests[0]
    assert request.method == "GET"
    assert str(request.url) == JWKS_URL
    assert request.headers["accept"] == "application/json"
    assert cache.ready
    assert cache.kids == {"rsa-1", "ec-1"}
    assert cache.stats.fetches == 1
    assert cache.stats.failures == 0


@pytest.mark.anyio
async def test_unknown_kid_refetches_once_and_finds_a_new_key(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key_2, "rsa-2")]})
    clock.advance(COOLDOWN)
    key = await cache.get_key("rsa-2")
    assert same_key(key.key, rsa_key_2)
    assert len(fake_idp.requests) == 2
    # found now: no further request for it
    await cache.get_key("rsa-2")
    assert len(fake_idp.requests) == 2


@pytest.mark.anyio
async def test_unknown_kids_refetch_at_most_once_per_window_and_never_get_a_verdict_without_one(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    clock.advance(WINDOW)
    assert await reason_of(cache, "rsa-2") == "unknown_kid"  # forced refetch: rsa-2 is not published yet
    assert len(fake_idp.requests) == 2

    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key_2, "rsa-2")]})
    clock.advance(WINDOW - 0.5)
    assert await reason_of(cache, "rsa-2") == "unknown_kid"  # known absent: refused at once
    for kid in ("other", "../../dev/null"):
        with pytest.raises(KeysUnavailable) as info:  # not checked yet: "retry", never "throw the token away"
            await cache.get_key(kid)
        assert (info.value.reason, info.value.retry_after) == ("unknown_kid_pending", 1)
    assert len(fake_idp.requests) == 2  # rate-limited: no request within the window

    clock.advance(0.5)  # the window has now passed since the last attempt
    assert await reason_of(cache, "other") == "unknown_kid"
    assert len(fake_idp.requests) == 3
    # that fetch brought rsa-2: a kid known absent is never hidden once it is published
    assert same_key((await cache.get_key("rsa-2")).key, rsa_key_2)
    assert len(fake_idp.requests) == 3


@pytest.mark.anyio
async def test_unknown_kid_after_the_cooldown_refetches_again(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    for expected_requests in (2, 3, 4):
        clock.advance(COOLDOWN + 1)
        assert await reason_of(cache, "nope") == "unknown_kid"
        assert await reason_of(cache, "nope") == "unknown_kid"
        assert len(fake_idp.requests) == expected_requests


@pytest.mark.anyio
async def test_zero_windows_refetch_on_every_unknown_kid(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    zero = JwksSettings(refetch_cooldown_seconds=0, unknown_kid_cooldown_seconds=0, negative_kid_ttl_seconds=0)
    cache = make_cache(fake_idp, clock, jwks=zero)
    await cache.get_key("rsa-1")
    for _ in range(3):
        assert await reason_of(cache, "nope") == "unknown_kid"
    assert len(fake_idp.requests) == 4


@pytest.mark.anyio
async def test_a_zero_window_still_remembers_absent_kids(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock, jwks=JwksSettings(unknown_kid_cooldown_seconds=0))
    await cache.get_key("rsa-1")
    for _ in range(3):
        assert await reason_of(cache, "nope") == "unknown_kid"
        assert await reason_of(cache, "other") == "unknown_kid"
    assert len(fake_idp.requests) == 3  # one refetch per new kid, none for a kid known absent


@pytest.mark.anyio
async def test_concurrent_unknown_kid_makes_one_request(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key_2, "rsa-2")]})
    fake_idp.delay = 0.05
    clock.advance(COOLDOWN)
    keys = await asyncio.gather(*(cache.get_key("rsa-2") for _ in range(20)))
    assert len(fake_idp.requests) == 2  # the warm-up fetch and one shared refetch
    assert all(same_key(k.key, rsa_key_2) for k in keys)


@pytest.mark.anyio
async def test_concurrent_never_published_kid_makes_one_request(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    fake_idp.delay = 0.05
    clock.advance(COOLDOWN)
    results = await asyncio.gather(*(cache.get_key(f"forged-{i}") for i in range(20)), return_exceptions=True)
    assert len(fake_idp.requests) == 2
    assert all(isinstance(r, TokenError) and r.reason == "unknown_kid" for r in results)


@pytest.mark.anyio
async def test_concurrent_cold_start_makes_one_request(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    fake_idp.delay = 0.05
    cache = make_cache(fake_idp, clock)
    keys = await asyncio.gather(*(cache.get_key("rsa-1") for _ in range(20)))
    assert len(fake_idp.requests) == 1
    assert all(same_key(k.key, rsa_key) for k in keys)


@pytest.mark.anyio
async def test_cold_cache_unknown_kid_starts_one_fetch_per_cooldown(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    assert await reason_of(cache, "forged") == "unknown_kid"
    assert len(fake_idp.requests) == 1


@pytest.mark.anyio
async def test_refresh_fetches_now_and_reports_availability(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    cache = make_cache(fake_idp, clock)
    assert await cache.refresh() is False  # 404: nothing published yet
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    assert await cache.refresh() is True
    fake_idp.down = True
    assert await cache.refresh() is True  # the last good keys are still there
    assert len(fake_idp.requests) == 3
    assert cache.kids == {"rsa-1"}


# --- TTL expiry, stale-while-revalidate, stale-if-error ------------------------------------------------------------


@pytest.mark.anyio
async def test_expired_keys_are_served_while_one_background_refetch_runs(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]}, cache_control="max-age=120")
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    clock.advance(119)
    await cache.get_key("rsa-1")
    await drain(cache)
    assert len(fake_idp.requests) == 1  # not expired yet

    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key_2, "rsa-2")]})
    fake_idp.delay = 0.01
    clock.advance(1)  # expired now
    keys = await asyncio.gather(*(cache.get_key("rsa-1") for _ in range(5)))
    assert all(same_key(k.key, rsa_key) for k in keys)
    assert cache.kids == {"rsa-1"}  # answered from the stale set, the refetch still under way
    await drain(cache)
    assert len(fake_idp.requests) == 2
    assert cache.kids == {"rsa-1", "rsa-2"}


@pytest.mark.anyio
async def test_ttl_comes_from_cache_control_clamped_to_min(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]}, cache_control="no-store")
    cache = make_cache(fake_idp, clock, jwks=JwksSettings(min_ttl_seconds=60, refetch_cooldown_seconds=COOLDOWN))
    await cache.get_key("rsa-1")
    clock.advance(59)
    await cache.get_key("rsa-1")
    await drain(cache)
    assert len(fake_idp.requests) == 1
    clock.advance(1)
    await cache.get_key("rsa-1")
    await drain(cache)
    assert len(fake_idp.requests) == 2


@pytest.mark.anyio
async def test_stale_if_error_keeps_serving_the_last_good_keys(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    fake_idp.down = True
    clock.advance(301)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    await drain(cache)
    assert len(fake_idp.requests) == 2
    assert cache.stats.fetches == 2
    assert cache.stats.failures == 1
    assert "ConnectError" in cache.stats.last_error
    assert cache.kids == {"rsa-1"}

    # within the cooldown: still served, and no background retry
    clock.advance(COOLDOWN - 1)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    await drain(cache)
    assert len(fake_idp.requests) == 2
    # an unknown kid may force one refetch per window; it fails: the kid can be judged neither way (503)
    assert await reason_of(cache, "nope") == "keys_unavailable"
    assert await reason_of(cache, "nope") == "keys_unavailable"  # window closed, the IdP still failing
    assert len(fake_idp.requests) == 3
    assert cache.kids == {"rsa-1"}
    # a cooldown after the last attempt: one more background attempt, still served
    clock.advance(COOLDOWN)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    await drain(cache)
    assert len(fake_idp.requests) == 4
    assert cache.stats.failures == 3


@pytest.mark.anyio
async def test_stale_if_error_on_a_bad_answer(fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    fake_idp.publish(JWKS_URL, {"error": "temporarily_unavailable"})
    clock.advance(301)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    await drain(cache)
    assert cache.stats.failures == 1
    assert cache.kids == {"rsa-1"}


@pytest.mark.anyio
async def test_a_removed_key_is_unknown_after_a_successful_refetch(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key_2, "rsa-2")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-2")
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    clock.advance(301)
    await cache.get_key("rsa-1")  # stale: starts the background refetch
    await drain(cache)
    assert cache.stats.failures == 0
    assert cache.kids == {"rsa-1"}
    assert await reason_of(cache, "rsa-2") == "unknown_kid"
    clock.advance(COOLDOWN)
    assert await reason_of(cache, "rsa-2") == "unknown_kid"  # refetched, still gone
    assert len(fake_idp.requests) == 3


@pytest.mark.anyio
async def test_first_fetch_failing_is_keys_unavailable_without_a_refetch_storm(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    fake_idp.down = True
    cache = make_cache(fake_idp, clock)
    retry_afters = []
    for _ in range(8):
        with pytest.raises(KeysUnavailable) as info:
            await cache.get_key("rsa-1")
        assert info.value.reason == "keys_unavailable"
        retry_afters.append(info.value.retry_after)
        clock.advance(WINDOW / 8)
    assert retry_afters == [2, 2, 2, 2, 1, 1, 1, 1]  # whole seconds until the next attempt may start
    assert len(fake_idp.requests) == 1
    assert not cache.ready
    assert cache.stats.fetches == 1
    assert cache.stats.failures == 1

    # a window later a retry is allowed again; the IdP is still down
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"
    assert len(fake_idp.requests) == 2

    fake_idp.down = False
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"  # recovered, but within the window
    assert len(fake_idp.requests) == 2
    clock.advance(WINDOW)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    assert len(fake_idp.requests) == 3
    assert cache.ready


@pytest.mark.anyio
async def test_concurrent_calls_while_the_idp_is_down_make_one_request(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.down = True
    fake_idp.delay = 0.05
    cache = make_cache(fake_idp, clock)
    results = await asyncio.gather(*(cache.get_key("rsa-1") for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, KeysUnavailable) and r.reason == "keys_unavailable" for r in results)
    assert len(fake_idp.requests) == 1


@pytest.mark.anyio
async def test_skipped_keys_are_counted_in_stats(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(
        JWKS_URL,
        {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key, "bad", n="!!"), {"kty": "oct", "k": "AAAA"}]},
    )
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    assert cache.stats.skipped_keys == 2
    clock.advance(COOLDOWN)
    await cache.refresh()
    assert cache.stats.skipped_keys == 4  # cumulative


@pytest.mark.anyio
async def test_one_key_with_an_unhashable_alg_does_not_poison_the_set(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key, "odd", alg=["RS256"])]})
    cache = make_cache(fake_idp, clock)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    assert cache.stats.skipped_keys == 1


# --- token without kid ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_no_kid_is_accepted_when_the_set_holds_exactly_one_key(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    assert same_key((await cache.get_key(None)).key, rsa_key)


@pytest.mark.anyio
async def test_no_kid_is_accepted_for_a_single_key_without_kid(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, None)]})
    cache = make_cache(fake_idp, clock)
    key = await cache.get_key(None)
    assert same_key(key.key, rsa_key)
    assert key.kid is None
    clock.advance(WINDOW)
    assert await reason_of(cache, "rsa-1") == "unknown_kid"


@pytest.mark.anyio
async def test_no_kid_is_refused_when_the_set_holds_two_keys(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1")]})
    cache = make_cache(fake_idp, clock)
    assert await reason_of(cache, None) == "unknown_kid"
    # a set whose second key was skipped as malformed holds one usable key
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1", x="!!")]})
    clock.advance(COOLDOWN)
    assert same_key((await cache.get_key(None)).key, rsa_key)


# --- discovery -----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_discovery_finds_the_jwks_uri_once(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(DISCOVERY_URL, {"issuer": ISS, "jwks_uri": JWKS_URL})
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock, discovery=True, jwks_uri=None)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    assert [str(r.url) for r in fake_idp.requests] == [DISCOVERY_URL, JWKS_URL]
    clock.advance(COOLDOWN)
    assert await reason_of(cache, "nope") == "unknown_kid"
    assert fake_idp.hits(DISCOVERY_URL) == 1  # the discovered jwks_uri is kept
    assert fake_idp.hits(JWKS_URL) == 2


@pytest.mark.anyio
async def test_discovery_url_for_an_issuer_with_a_trailing_slash(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    issuer = ISS + "/"
    fake_idp.publish(DISCOVERY_URL, {"issuer": issuer, "jwks_uri": JWKS_URL})
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock, issuer=issuer, discovery=True, jwks_uri=None)
    assert await cache.refresh() is True
    assert fake_idp.hits(DISCOVERY_URL) == 1


@pytest.mark.parametrize(
    "document",
    [
        {"issuer": ISS + "/", "jwks_uri": JWKS_URL},
        {"issuer": ISS.upper(), "jwks_uri": JWKS_URL},
        {"issuer": "https://idp.test/realms/mai", "jwks_uri": JWKS_URL},
        {"issuer": "https://evil.test/realms/main", "jwks_uri": JWKS_URL},
        {"jwks_uri": JWKS_URL},
        {"issuer": [ISS], "jwks_uri": JWKS_URL},
        [ISS, JWKS_URL],
    ],
    ids=["trailing-slash", "case", "prefix", "other-host", "missing", "list", "not-an-object"],
)
@pytest.mark.anyio
async def test_discovery_refuses_an_issuer_that_differs(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, document: object
) -> None:
    fake_idp.publish(DISCOVERY_URL, document)
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock, discovery=True, jwks_uri=None)
    assert await cache.refresh() is False
    assert not cache.ready
    assert "KeySetError" in cache.stats.last_error
    assert "does not name issuer" in cache.stats.last_error
    assert fake_idp.hits(JWKS_URL) == 0
    clock.advance(COOLDOWN)
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"


@pytest.mark.parametrize(
    "jwks_uri",
    ["http://idp.test/realms/main/certs", "HTTP://idp.test/certs", "ftp://idp.test/certs", "//idp.test/certs", None, 7],
)
@pytest.mark.anyio
async def test_discovery_refuses_a_jwks_uri_that_is_not_https(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, jwks_uri: object
) -> None:
    fake_idp.publish(DISCOVERY_URL, {"issuer": ISS, "jwks_uri": jwks_uri})
    if isinstance(jwks_uri, str):
        fake_idp.publish(jwks_uri, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock, discovery=True, jwks_uri=None)
    assert await cache.refresh() is False
    assert "no usable https jwks_uri" in cache.stats.last_error
    assert [str(r.url) for r in fake_idp.requests] == [DISCOVERY_URL]


@pytest.mark.anyio
async def test_discovery_accepts_an_http_jwks_uri_in_dev_mode(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    http_jwks = "http://idp.test/realms/main/certs"
    fake_idp.publish(DISCOVERY_URL, {"issuer": ISS, "jwks_uri": http_jwks})
    fake_idp.publish(http_jwks, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock, dev_mode=True, discovery=True, jwks_uri=None)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    assert fake_idp.hits(http_jwks) == 1


@pytest.mark.anyio
async def test_discovery_failure_is_retried_after_the_cooldown(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock, discovery=True, jwks_uri=None)
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"  # discovery answers 404
    fake_idp.publish(DISCOVERY_URL, {"issuer": ISS, "jwks_uri": JWKS_URL})
    clock.advance(COOLDOWN)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    assert fake_idp.hits(DISCOVERY_URL) == 2


# --- what the IdP may answer -----------------------------------------------------------------------------------------


def jwks_body(key: rsa.RSAPrivateKey, size: int) -> bytes:
    """A valid JWKS document of exactly ``size`` bytes (padded with an ignored member)."""
    document: dict[str, Any] = {"keys": [rsa_jwk(key, "rsa-1")], "pad": ""}
    base = len(json.dumps(document).encode())
    document["pad"] = "x" * (size - base)
    body = json.dumps(document).encode()
    assert len(body) == size
    return body


@pytest.mark.anyio
async def test_body_at_the_size_cap_is_accepted(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {})
    fake_idp.table[JWKS_URL].body = jwks_body(rsa_key, 4096)
    cache = make_cache(fake_idp, clock, jwks=JwksSettings(max_bytes=4096))
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)


@pytest.mark.anyio
async def test_body_over_the_size_cap_is_refused(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {})
    fake_idp.table[JWKS_URL].body = jwks_body(rsa_key, 4097)
    cache = make_cache(fake_idp, clock, jwks=JwksSettings(max_bytes=4096))
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"
    assert "exceeds 4096 bytes" in cache.stats.last_error
    assert cache.stats.failures == 1


@pytest.mark.anyio
async def test_discovery_body_over_the_size_cap_is_refused(fake_idp: FakeIdP, clock: FakeClock) -> None:
    fake_idp.publish(DISCOVERY_URL, {"issuer": ISS, "jwks_uri": JWKS_URL, "pad": "x" * 5000})
    cache = make_cache(fake_idp, clock, discovery=True, jwks_uri=None, jwks=JwksSettings(max_bytes=4096))
    assert await cache.refresh() is False
    assert "exceeds 4096 bytes" in cache.stats.last_error
    assert fake_idp.hits(JWKS_URL) == 0


@pytest.mark.parametrize(
    "body",
    [b"<html>keys</html>", b"", b'{"keys": [', b"\xff\xfe\x00garbage", b"keys=1"],
    ids=["html", "empty", "truncated", "binary", "form"],
)
@pytest.mark.anyio
async def test_non_json_is_refused(fake_idp: FakeIdP, clock: FakeClock, body: bytes) -> None:
    fake_idp.publish(JWKS_URL, {})
    fake_idp.table[JWKS_URL].body = body
    cache = make_cache(fake_idp, clock)
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"
    assert "not JSON" in cache.stats.last_error


@pytest.mark.parametrize("document", [[], {"keys": "none"}, {"error": "x"}], ids=["array", "keys-string", "no-keys"])
@pytest.mark.anyio
async def test_json_that_is_not_a_jwks_is_refused(fake_idp: FakeIdP, clock: FakeClock, document: object) -> None:
    fake_idp.publish(JWKS_URL, document)
    cache = make_cache(fake_idp, clock)
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"
    assert "KeySetError" in cache.stats.last_error


@pytest.mark.parametrize("status", [201, 204, 301, 302, 304, 404, 429, 500, 503])
@pytest.mark.anyio
async def test_non_200_is_refused(fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, status: int) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    fake_idp.table[JWKS_URL].status = status
    fake_idp.table[JWKS_URL].headers["location"] = JWKS_URL + "/moved"
    if status in (204, 304):
        fake_idp.table[JWKS_URL].body = b""
    cache = make_cache(fake_idp, clock)
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"
    assert f"answered {status}" in cache.stats.last_error
    assert len(fake_idp.requests) == 1  # redirects are not followed


@pytest.mark.anyio
async def test_deeply_nested_json_is_refused(fake_idp: FakeIdP, clock: FakeClock) -> None:
    fake_idp.publish(JWKS_URL, {})
    fake_idp.table[JWKS_URL].body = b"[" * 100_000 + b"]" * 100_000
    cache = make_cache(fake_idp, clock)
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"
    assert cache.stats.failures == 1


# --- an answer without one usable key is a failed fetch -----------------------------------------------------------


UNUSABLE = {
    "empty": {"keys": []},
    "only-symmetric": {"keys": [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]},
    "only-encryption": {"keys": [{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}]},
    "only-broken": {"keys": [{"kty": "RSA", "kid": "broken", "e": "AQAB"}, {"kty": "EC", "crv": "P-256"}]},
}


@pytest.mark.parametrize("document", UNUSABLE.values(), ids=UNUSABLE.keys())
@pytest.mark.anyio
async def test_a_set_without_one_usable_key_keeps_the_last_good_keys(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, document: dict[str, Any]
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]}, cache_control="max-age=60")
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    assert cache.health().degraded is False
    fake_idp.publish(JWKS_URL, document)
    clock.advance(COOLDOWN + 60)  # expired: the background refetch gets the unusable answer
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    await drain(cache)
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)  # kept, not wiped
    assert cache.kids == {"rsa-1"}
    assert (cache.stats.fetches, cache.stats.failures, cache.stats.unusable_sets) == (2, 1, 1)
    assert cache.stats.skipped_keys == len(document["keys"])
    assert "no usable key in the set" in cache.stats.last_error
    health = cache.health()
    assert (health.ready, health.degraded, health.keys, health.age_seconds) == (True, True, 1, COOLDOWN + 60)
    assert "no usable key" in health.last_error
    # an unknown kid forces a refetch: the answer is still unusable, so nothing can be said about the kid (503)
    clock.advance(WINDOW)
    assert await reason_of(cache, "rsa-2") == "keys_unavailable"
    assert cache.stats.unusable_sets == 2
    # the IdP recovers: the next fetch clears the degradation
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    clock.advance(WINDOW)
    assert await reason_of(cache, "rsa-2") == "unknown_kid"
    health = cache.health()
    assert (health.degraded, health.last_error, health.age_seconds) == (False, "", 0)
    assert (cache.stats.fetches, cache.stats.unusable_sets) == (4, 2)


@pytest.mark.anyio
async def test_a_first_answer_without_a_usable_key_is_not_ready(fake_idp: FakeIdP, clock: FakeClock) -> None:
    fake_idp.publish(JWKS_URL, {"keys": []})
    cache = make_cache(fake_idp, clock)
    assert await cache.refresh() is False
    assert await reason_of(cache, "rsa-1") == "keys_unavailable"
    health = cache.health()
    assert (health.ready, health.degraded, health.keys, health.age_seconds) == (False, False, 0, None)
    assert cache.stats.unusable_sets == 1


# --- a new kid within the window while random kids flood; the negative cache -------------------------------------


@pytest.mark.anyio
async def test_a_new_key_is_accepted_within_the_window_while_a_random_kid_flood_costs_one_fetch_per_window(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    """One scenario, on the fake clock in 0.1 s steps for 20 s: 30 random kids and one stale kid every step; at
    7.05 s the IdP publishes rsa-2 and signs with it at once (Keycloak adding a key provider); from then on every
    step also presents an rsa-2 token."""
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]}, cache_control="max-age=3600")
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    start, published_at = clock.now, None
    new_kid: list[tuple[float, str]] = []  # (seconds since publication, outcome)
    stale: list[str] = []
    flood: list[str] = []

    async def outcome(kid: str) -> str:
        try:
            await cache.get_key(kid)
        except (TokenError, KeysUnavailable) as exc:
            return exc.reason
        return "ok"

    for step in range(200):
        clock.now = start + step * 0.1
        if published_at is None and clock.now - start >= 7.05:
            fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key_2, "rsa-2"), rsa_jwk(rsa_key, "rsa-1")]})
            published_at = clock.now
        kids = [f"random-{step}-{i}" for i in range(30)]
        results = await asyncio.gather(*(outcome(k) for k in [*kids, "stale-kid", "rsa-1"]))
        flood += results[:30]
        stale.append(results[30])
        assert results[31] == "ok"  # a known key never waits for anything
        if published_at is not None:
            new_kid.append((clock.now - published_at, await outcome("rsa-2")))
    fetches = len(fake_idp.requests) - 1
    assert fetches <= 20 / WINDOW + 1  # a flood of 6000 random kids: one fetch per window
    accepted = [t for t, o in new_kid if o == "ok"]
    assert accepted and accepted[0] <= WINDOW
    assert all(o == "ok" for t, o in new_kid if t >= accepted[0])
    assert {o for _, o in new_kid} <= {"ok", "unknown_kid_pending"}  # never told "unknown_kid" (throw it away)
    assert set(flood) == {"unknown_kid", "unknown_kid_pending"} and "ok" not in flood
    # the stale kid is judged once by a fetch of its own, then refused at once for the negative TTL
    first = stale.index("unknown_kid")
    assert stale[first : first + int(NEGATIVE / 0.1)].count("unknown_kid") == int(NEGATIVE / 0.1)


@pytest.mark.anyio
async def test_a_kid_known_absent_costs_no_fetch_until_its_ttl_ends(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    clock.advance(WINDOW)
    assert await reason_of(cache, "ghost") == "unknown_kid"
    for _ in range(int(NEGATIVE / WINDOW) - 1):
        clock.advance(WINDOW)  # the window is open every time, but the kid is known absent
        assert await reason_of(cache, "ghost") == "unknown_kid"
    assert len(fake_idp.requests) == 2
    clock.advance(WINDOW)  # NEGATIVE seconds later: checked again, once
    assert await reason_of(cache, "ghost") == "unknown_kid"
    assert await reason_of(cache, "ghost") == "unknown_kid"
    assert len(fake_idp.requests) == 3


@pytest.mark.anyio
async def test_a_kid_refused_before_it_is_published_is_accepted_once_its_entry_expires_or_a_fetch_brings_it(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    """The bound on negative caching a kid before the IdP publishes it (e.g. a guessed, predictable kid)."""
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    clock.advance(WINDOW)
    assert await reason_of(cache, "key-2") == "unknown_kid"  # guessed early: confirmed absent
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key_2, "key-2"), rsa_jwk(rsa_key, "rsa-1")]})
    clock.advance(NEGATIVE - 0.1)
    assert await reason_of(cache, "key-2") == "unknown_kid"  # published, but still remembered absent
    clock.advance(0.1)
    assert same_key((await cache.get_key("key-2")).key, rsa_key_2)  # the entry expired: one refetch
    # any other fetch brings a published kid in at once, whatever its entry says
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "key-3")]})
    clock.advance(WINDOW)
    assert await reason_of(cache, "key-4") == "unknown_kid"
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "key-3"), rsa_jwk(rsa_key_2, "key-4")]})
    clock.advance(WINDOW)
    assert await reason_of(cache, "key-5") == "unknown_kid"  # another kid's refetch brings key-4
    assert same_key((await cache.get_key("key-4")).key, rsa_key_2)
    assert len(fake_idp.requests) == 5


@pytest.mark.anyio
async def test_a_fetch_begun_before_the_token_arrived_proves_nothing_about_its_kid(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    clock.advance(WINDOW)
    fake_idp.delay = 0.05
    first = asyncio.create_task(cache.get_key("forged"))  # starts a refetch of the old set
    await asyncio.sleep(0.01)
    clock.advance(0.5)  # the IdP publishes rsa-2 and signs with it; its first token joins that refetch
    assert await reason_of(cache, "rsa-2") == "unknown_kid_pending"  # 503: retry, the token may be fine
    with pytest.raises(TokenError):
        await first  # "forged" arrived before that fetch began: confirmed absent
    fake_idp.delay = 0
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1"), rsa_jwk(rsa_key_2, "rsa-2")]})
    clock.advance(WINDOW)
    assert same_key((await cache.get_key("rsa-2")).key, rsa_key_2)  # not remembered absent: accepted
    assert await reason_of(cache, "forged") == "unknown_kid"
    assert len(fake_idp.requests) == 3


@pytest.mark.anyio
async def test_the_absent_kids_remembered_are_bounded(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("idgate.jwks.NEGATIVE_KIDS_MAX", 3)
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock, jwks=JwksSettings(unknown_kid_cooldown_seconds=0))
    await cache.get_key("rsa-1")
    for kid in ("a", "b", "c", "d"):
        assert await reason_of(cache, kid) == "unknown_kid"
    assert len(fake_idp.requests) == 5
    for kid in ("b", "c", "d"):  # still remembered
        assert await reason_of(cache, kid) == "unknown_kid"
    assert len(fake_idp.requests) == 5
    assert await reason_of(cache, "a") == "unknown_kid"  # forgotten (the oldest): checked again
    assert len(fake_idp.requests) == 6


# --- withdrawal, refresh_now, health ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_key_that_leaves_the_set_or_changes_is_withdrawn(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    calls: list[tuple[str, frozenset[str | None]]] = []

    def withdrawn(issuer: str, kids: frozenset[str | None]) -> int:
        calls.append((issuer, kids))
        return 7

    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "keep"), rsa_jwk(rsa_key, "drop"), rsa_jwk(rsa_key, "swap")]})
    cache = make_cache(fake_idp, clock)
    cache.on_keys_withdrawn = withdrawn
    await cache.get_key("keep")
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "keep"), rsa_jwk(rsa_key_2, "swap")]})
    outcome = await cache.refresh_now()
    assert outcome.ok and outcome.withdrawn == {"drop", "swap"} and outcome.purged == 7
    assert outcome.kids == {"keep", "swap"} and outcome.error == ""
    assert calls == [(ISS, frozenset({"drop", "swap"}))]
    assert cache.stats.withdrawn_keys == 2
    assert same_key((await cache.get_key("swap")).key, rsa_key_2)  # the new key under the old kid
    clock.advance(WINDOW)
    assert await reason_of(cache, "drop") == "unknown_kid"  # known absent: no fetch
    assert len(fake_idp.requests) == 2
    await cache.refresh_now()  # nothing withdrawn this time: no call
    assert len(calls) == 1


@pytest.mark.anyio
async def test_refresh_now_ignores_the_cooldowns_and_never_returns_an_older_fetch(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    fake_idp.delay = 0.05
    clock.advance(WINDOW)
    background = asyncio.create_task(cache.refresh())  # a fetch of the old set, under way
    await asyncio.sleep(0.01)
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key_2, "rsa-2")]})  # the emergency: rsa-1 withdrawn
    clock.advance(0.1)
    outcome = await cache.refresh_now()
    assert await background
    assert outcome.ok and outcome.kids == {"rsa-2"} and outcome.withdrawn == {"rsa-1"}
    assert len(fake_idp.requests) == 3  # it waited for the older fetch, then made its own
    assert await reason_of(cache, "rsa-1") == "unknown_kid"
    fake_idp.delay = 0
    for _ in range(3):  # within every cooldown, still a fetch each time
        assert (await cache.refresh_now()).ok
    assert len(fake_idp.requests) == 6


@pytest.mark.anyio
async def test_refresh_now_reports_a_failure_and_keeps_the_keys(
    fake_idp: FakeIdP, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    fake_idp.publish(JWKS_URL, {"keys": [rsa_jwk(rsa_key, "rsa-1")]})
    cache = make_cache(fake_idp, clock)
    await cache.get_key("rsa-1")
    fake_idp.publish(JWKS_URL, {"keys": []})
    outcome = await cache.refresh_now()
    assert not outcome.ok and outcome.kids == {"rsa-1"} and outcome.withdrawn == frozenset()
    assert "no usable key" in outcome.error
    assert same_key((await cache.get_key("rsa-1")).key, rsa_key)
    assert cache.health().degraded
