"""The assertion key ring in a real Redis (idgate.assertion_store): sealed at rest, created once, compare-and-set
rotations, and followers ("replicas") that sign and publish the same keys, switching on the ring's clock."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable

import jwt
import pytest

from idgate.assertion import AssertionSigner
from idgate.assertion_ring import rotate
from idgate.assertion_store import RedisAssertionRing, RingError, RingFollower, decode, encode, first_ring, fresh_key
from idgate.config import StoreConfig
from idgate.sso.cookies import KeyRing
from idgate.store.redis import client_from_config
from idgate_devstack.redis_server import RedisServer

pytestmark = pytest.mark.anyio
LIFETIME = 60
SEAL = KeyRing(keys=[secrets.token_bytes(32)])
Rings = Callable[..., RedisAssertionRing]


@pytest.fixture
async def rings(redis_server: RedisServer) -> AsyncIterator[Rings]:
    """Makes ring handles sharing one random key prefix; closes them afterwards."""
    prefix = f"t{secrets.token_hex(4)}:"
    made: list[RedisAssertionRing] = []

    def make(seal: KeyRing = SEAL) -> RedisAssertionRing:
        config = StoreConfig(kind="redis", url=redis_server.url, key_prefix=prefix, timeout_seconds=1)
        ring = RedisAssertionRing(client=client_from_config(config), seal=seal, prefix=prefix, timeout=1)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        await ring.close()


def test_private_keys_are_sealed_never_in_clear() -> None:
    state = first_ring(None, "ES256", lifetime_seconds=LIFETIME, now=1000)
    raw = encode(state, SEAL)
    assert b"PRIVATE KEY" in state.current.pem
    assert "PRIVATE" not in raw and base64.b64encode(state.current.pem).decode()[:40] not in raw
    assert decode(raw, SEAL) == state
    other = KeyRing(keys=[secrets.token_bytes(32)])
    with pytest.raises(RingError, match="cannot be opened"):
        decode(raw, other)
    tampered = json.loads(raw)
    tampered["current"]["kid"] = "someone-else"  # the kid is bound to the sealed key (associated data)
    with pytest.raises(RingError):
        decode(json.dumps(tampered), SEAL)
    with pytest.raises(RingError, match="malformed"):
        decode('{"v": 1}', SEAL)


async def test_the_first_replica_creates_the_ring_and_the_others_read_it(rings: Rings) -> None:
    a, b = rings(), rings()
    first_a = first_ring(None, "ES256", lifetime_seconds=LIFETIME, now=1000)
    first_b = first_ring(None, "ES256", lifetime_seconds=LIFETIME, now=1000)
    got_a = await a.load_or_create(lambda: first_a)
    got_b = await b.load_or_create(lambda: first_b)
    assert got_a == got_b == first_a
    with pytest.raises(RingError, match="cannot be opened"):
        await rings(KeyRing(keys=[secrets.token_bytes(32)])).read()


async def test_rotation_is_compare_and_set(rings: Rings) -> None:
    ring = rings()
    await ring.create(first_ring(None, "ES256", lifetime_seconds=LIFETIME, now=1000))
    found = await ring.read()
    assert found is not None
    before, state = found
    one = rotate(state, fresh_key("ES256", created=1000), now=1000, publish_seconds=30)
    two = rotate(state, fresh_key("ES256", created=1000), now=1000, publish_seconds=30)
    assert await ring.replace(before, one)
    assert not await ring.replace(before, two)  # the other rotation read the old ring: it loses
    after = await ring.read()
    assert after is not None and after[1] == one


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verify(token: str, jwks: dict[str, object]) -> dict[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {k["kid"]: k for k in jwks["keys"]}  # type: ignore[attr-defined]
    key = jwt.PyJWK.from_dict(keys[kid])
    # verified at the signer's clock (the test moves it ahead of the wall clock)
    claims: dict[str, object] = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience="grafana",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    return claims


async def test_followers_sign_and_publish_the_same_keys_through_a_rotation(rings: Rings) -> None:
    clock = Clock(time.time())
    signers = [
        AssertionSigner(issuer="https://idgate.test", lifetime_seconds=LIFETIME, reuse_margin_seconds=15, clock=clock)
        for _ in range(3)
    ]
    followers = [
        RingFollower(ring=rings(), signer=lambda s=s: s, poll_seconds=3600, clock=clock)  # type: ignore[misc]
        for s in signers
    ]
    for follower in followers:
        await follower.start(lambda: first_ring(None, "ES256", lifetime_seconds=LIFETIME, now=clock.now))
    try:
        assert len({s.kid for s in signers}) == 1 and all(s.jwks() == signers[0].jwks() for s in signers)
        old = signers[0].kid
        ring = rings()
        found = await ring.read()
        assert found is not None
        rotated = rotate(found[1], fresh_key("ES256", created=clock.now), now=clock.now, publish_seconds=300)
        assert await ring.replace(found[0], rotated)
        assert rotated.next is not None
        new = rotated.next.kid
        for follower in followers:
            await follower.tick()
        # pre-publication: every replica still signs with the old key and already publishes the new one
        for signer in signers:
            assert signer.kid == old and [k["kid"] for k in signer.jwks()["keys"]] == [old, new]
        minted_before = signers[1].mint(cache_key="s", audience="grafana", subject="alice", claims={})
        clock.now += 300
        for follower in followers:
            await follower.tick()
        for signer in signers:
            assert signer.kid == new and [k["kid"] for k in signer.jwks()["keys"]] == [new, old]
        # a token minted before the switch on one replica verifies against another's JWKS after it
        assert verify(minted_before, signers[2].jwks())["sub"] == "alice"
        minted_after = signers[0].mint(cache_key="s2", audience="grafana", subject="bob", claims={})
        assert jwt.get_unverified_header(minted_after)["kid"] == new
        assert verify(minted_after, signers[1].jwks())["sub"] == "bob"
        clock.now += LIFETIME
        for follower in followers:
            await follower.tick()
        assert all([k["kid"] for k in s.jwks()["keys"]] == [new] for s in signers)
    finally:
        for follower in followers:
            await follower.close()


async def test_a_follower_keeps_its_last_ring_while_redis_is_down_and_still_switches_on_time(
    rings: Rings, redis_server: RedisServer
) -> None:
    clock = Clock(time.time())
    signer = AssertionSigner(
        issuer="https://idgate.test", lifetime_seconds=LIFETIME, reuse_margin_seconds=15, clock=clock
    )
    ring = rings()
    follower = RingFollower(ring=ring, signer=lambda: signer, poll_seconds=3600, clock=clock)
    await follower.start(lambda: first_ring(None, "ES256", lifetime_seconds=LIFETIME, now=clock.now))
    try:
        found = await rings().read()
        assert found is not None
        rotated = rotate(found[1], fresh_key("ES256", created=clock.now), now=clock.now, publish_seconds=10)
        assert await rings().replace(found[0], rotated)
        await follower.tick()
        assert rotated.next is not None
        redis_server.pause()
        try:
            clock.now += 10
            await follower.tick()  # Redis silent: the last ring read still switches keys at activate_at
            assert signer.kid == rotated.next.kid
        finally:
            redis_server.resume()
    finally:
        await follower.close()
