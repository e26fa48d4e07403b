"""The assertion key ring's rules (idgate.assertion_ring), on a hand-moved clock."""

from __future__ import annotations

import pytest

from idgate.assertion_ring import RingKey, RotationPending, advance, initial, published, rotate

LIFETIME = 120
PUBLISH = 300


def key(kid: str, created: float = 0.0) -> RingKey:
    return RingKey(kid=kid, pem=f"pem-{kid}".encode(), created=created)


def kids(keys: tuple[RingKey, ...]) -> list[str]:
    return [k.kid for k in keys]


def test_a_rotation_pre_publishes_then_switches_then_retires_after_one_lifetime() -> None:
    ring = initial(key("a"), lifetime_seconds=LIFETIME)
    assert kids(published(ring, 1000)) == ["a"] and advance(ring, 1000).current.kid == "a"
    ring = rotate(ring, key("b"), now=1000, publish_seconds=PUBLISH)
    assert ring.next is not None and ring.next.activate_at == 1000 + PUBLISH and ring.next.created == 1000
    # pre-publication window: a signs, b is already published
    for now in (1000, 1150, 1000 + PUBLISH - 0.001):
        assert advance(ring, now).current.kid == "a" and kids(published(ring, now)) == ["a", "b"]
    # switch: b signs, a stays published for one assertion lifetime (every token it signed is still valid)
    switched = 1000 + PUBLISH
    assert advance(ring, switched).current.kid == "b"
    assert kids(published(ring, switched)) == ["b", "a"]
    assert kids(published(ring, switched + LIFETIME - 0.001)) == ["b", "a"]
    retired = advance(ring, switched).retired
    assert retired[0].kid == "a" and retired[0].expires_at == switched + LIFETIME
    # retired: a leaves the JWKS
    assert kids(published(ring, switched + LIFETIME)) == ["b"]
    assert advance(ring, switched + LIFETIME).retired == ()


def test_every_replica_computes_the_same_ring_from_the_same_state_and_time() -> None:
    ring = rotate(initial(key("a"), lifetime_seconds=LIFETIME), key("b"), now=0, publish_seconds=PUBLISH)
    views = [advance(ring, t) for t in (PUBLISH, PUBLISH)]
    assert views[0] == views[1]
    assert advance(advance(ring, PUBLISH), PUBLISH + 1) == advance(ring, PUBLISH + 1)  # advancing twice changes nothing


def test_a_second_rotation_waits_for_the_first_to_switch() -> None:
    ring = rotate(initial(key("a"), lifetime_seconds=LIFETIME), key("b"), now=0, publish_seconds=PUBLISH)
    with pytest.raises(RotationPending) as pending:
        rotate(ring, key("c"), now=PUBLISH - 1, publish_seconds=PUBLISH)
    assert pending.value.kid == "b" and pending.value.activate_at == PUBLISH
    again = rotate(ring, key("c"), now=PUBLISH + 10, publish_seconds=PUBLISH)  # after the switch: allowed
    assert again.current.kid == "b" and again.next is not None and again.next.kid == "c"
    assert kids(published(again, PUBLISH + 10)) == ["b", "c", "a"]
    # c switches while a is long gone and b is retired for one lifetime
    end = PUBLISH + 10 + PUBLISH
    assert kids(published(again, end)) == ["c", "b"]


def test_zero_publication_time_switches_at_once_and_keeps_the_old_key_published() -> None:
    ring = rotate(initial(key("a"), lifetime_seconds=LIFETIME), key("b"), now=50, publish_seconds=0)
    assert advance(ring, 50).current.kid == "b" and kids(published(ring, 50)) == ["b", "a"]
