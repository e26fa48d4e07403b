"""Browser sessions (idgate.sso.session): the cookie payload's strict parser, the revocation store and ``is_revoked``.

``Session.from_bytes`` is the last gate before a decrypted cookie becomes a session: anything that is not exactly
the output of ``to_bytes`` must give None, never an exception. The store is driven by a ``FakeClock`` (conftest).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import pytest

from idgate.sso.session import MemoryRevocationStore, Session, is_revoked, session_keys

if TYPE_CHECKING:
    from conftest import FakeClock

ISS = "https://idp.test"


def make_session(**overrides: Any) -> Session:
    values: dict[str, Any] = {
        "sid": "sid-abc",
        "issuer": ISS,
        "subject": "user-1",
        "username": "alice",
        "email": "alice@example.com",
        "name": "Alice Liddell",
        "groups": ("viewers", "editors"),
        "created_at": 1000.0,
        "last_seen": 1010.5,
        "expires_at": 87400.0,
        "token_expires_at": 4600.0,
        "refresh_token": "rt-1",
        "id_token": "a.b.c",
        "idp_sid": "idp-sid-1",
    }
    values.update(overrides)
    return Session(**values)


def payload(**changes: Any) -> bytes:
    """``to_bytes`` of the default session as a dict, with ``changes`` applied (a value of ... deletes the key)."""
    data = json.loads(make_session().to_bytes())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


# --- serialisation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "session",
    [
        make_session(),
        make_session(username=None, email=None, name=None, refresh_token=None, idp_sid=None, groups=()),
        make_session(created_at=1000, last_seen=1000, expires_at=2000, token_expires_at=1500),  # ints are times too
        make_session(name="Zoë \u202e <script>", groups=("a,b", "line\r\nbreak", "ünï")),
        make_session(email_verified=True),
    ],
    ids=["full", "minimal", "int-times", "non-ascii", "email-verified"],
)
def test_round_trip(session: Session) -> None:
    raw = session.to_bytes()
    assert raw.isascii()  # ensure_ascii: no raw non-ASCII in the cookie payload
    assert b", " not in raw and b": " not in raw  # compact separators
    parsed = Session.from_bytes(raw)
    assert parsed == session
    assert parsed is not None
    assert isinstance(parsed.groups, tuple)


def test_to_bytes_is_a_json_object_of_exactly_the_fields() -> None:
    data = json.loads(make_session().to_bytes())
    assert set(data) == set(asdict(make_session()))
    assert data["groups"] == ["viewers", "editors"]


def test_principal_keeps_whether_the_email_was_verified() -> None:
    assert make_session(email_verified=True).principal().email_verified is True
    assert make_session().principal().email_verified is False


def test_principal_and_touched() -> None:
    session = make_session()
    principal = session.principal()
    assert principal.key == (ISS, "user-1")
    assert principal.groups == ("viewers", "editors")
    assert principal.expires_at == session.expires_at
    touched = session.touched(2000.0)
    assert touched.last_seen == 2000.0
    assert replace(touched, last_seen=session.last_seen) == session


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(payload(extra="x"), id="extra-key"),
        pytest.param(payload(idp_sid=...), id="missing-optional-key"),
        pytest.param(payload(sid=...), id="missing-sid"),
        pytest.param(payload(sid=None), id="sid-null"),
        pytest.param(payload(sid=123), id="sid-int"),
        pytest.param(payload(issuer=["https://idp.test"]), id="issuer-list"),
        pytest.param(payload(subject={"a": 1}), id="subject-object"),
        pytest.param(payload(id_token=None), id="id-token-null"),
        pytest.param(payload(email=1), id="email-int"),
        pytest.param(payload(refresh_token=True), id="refresh-token-bool"),
        pytest.param(payload(expires_at=True), id="bool-as-time"),
        pytest.param(payload(created_at=False), id="false-as-time"),
        pytest.param(payload(last_seen="1010"), id="string-as-time"),
        pytest.param(payload(token_expires_at=None), id="null-as-time"),
        pytest.param(payload(expires_at=[1]), id="list-as-time"),
        pytest.param(payload(groups="viewers,admin"), id="groups-string"),
        pytest.param(payload(groups=["viewers", 7]), id="groups-with-int"),
        pytest.param(payload(groups=["viewers", None]), id="groups-with-null"),
        pytest.param(payload(groups=[["admin"]]), id="groups-nested"),
        pytest.param(payload(groups={"admin": True}), id="groups-object"),
        pytest.param(payload(groups=None), id="groups-null"),
        pytest.param(payload(email_verified=...), id="cookie-from-before-email-verified"),
        pytest.param(payload(email_verified="true"), id="email-verified-string"),
        pytest.param(payload(email_verified=1), id="email-verified-int"),
        pytest.param(payload(email_verified=None), id="email-verified-null"),
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param(b"null", id="json-null"),
        pytest.param(b"[]", id="json-list"),
        pytest.param(b'"a string"', id="json-string"),
        pytest.param(b"{}", id="json-empty-object"),
        pytest.param(make_session().to_bytes()[:-1], id="truncated"),
        pytest.param(b"[" * 200_000 + b"]" * 200_000, id="deep-list"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="deep-object"),
        pytest.param(
            payload(groups=[]).replace(b'"groups": []', b'"groups": ' + b"[" * 100_000 + b"]" * 100_000),
            id="deep-groups",
        ),
    ],
)
def test_from_bytes_refuses(raw: bytes) -> None:
    assert Session.from_bytes(raw) is None


def test_from_bytes_refuses_every_single_missing_key() -> None:
    for key in asdict(make_session()):
        assert Session.from_bytes(payload(**{key: ...})) is None, key


def test_from_bytes_accepts_reordered_keys() -> None:
    data = json.loads(make_session().to_bytes())
    reordered = json.dumps(dict(reversed(list(data.items())))).encode()
    assert Session.from_bytes(reordered) == make_session()


# --- MemoryRevocationStore ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_store_revoke_and_expire(clock: FakeClock) -> None:
    store = MemoryRevocationStore(clock=clock)
    assert await store.revoked_at("sid:x") is None
    await store.revoke("sid:x", at=1000.0, until=1100.0)
    assert await store.revoked_at("sid:x") == 1000.0
    assert await store.revoked_at("sid:y") is None
    clock.advance(99.9)
    assert await store.revoked_at("sid:x") == 1000.0
    clock.advance(0.1)  # now == until: forgotten
    assert await store.revoked_at("sid:x") is None


@pytest.mark.anyio
async def test_store_revoke_again_keeps_the_latest_time_and_deadline(clock: FakeClock) -> None:
    store = MemoryRevocationStore(clock=clock)
    await store.revoke("sub:k", at=1000.0, until=5000.0)
    await store.revoke("sub:k", at=900.0, until=2000.0)  # older and shorter: changes nothing
    assert await store.revoked_at("sub:k") == 1000.0
    await store.revoke("sub:k", at=1200.0, until=6000.0)
    assert await store.revoked_at("sub:k") == 1200.0
    clock.now = 5999.0
    assert await store.revoked_at("sub:k") == 1200.0
    clock.now = 6000.0
    assert await store.revoked_at("sub:k") is None


@pytest.mark.anyio
async def test_store_remember_once(clock: FakeClock) -> None:
    store = MemoryRevocationStore(clock=clock)
    assert await store.remember_once("jti:a", until=1060.0) is True
    assert await store.remember_once("jti:a", until=1060.0) is False
    assert await store.remember_once("jti:a", until=9999.0) is False
    assert await store.remember_once("jti:b", until=1060.0) is True
    clock.advance(60)  # past `until`: forgotten, so seen "for the first time" again
    assert await store.remember_once("jti:a", until=1200.0) is True
    assert await store.remember_once("jti:a", until=1200.0) is False


@pytest.mark.anyio
async def test_store_is_bounded_and_drops_the_nearest_deadline_first(clock: FakeClock) -> None:
    store = MemoryRevocationStore(max_entries=3, clock=clock)
    await store.revoke("a", at=1000.0, until=2000.0)
    await store.revoke("b", at=1000.0, until=4000.0)
    await store.revoke("c", at=1000.0, until=3000.0)
    await store.revoke("d", at=1000.0, until=5000.0)  # full: "a" (until 2000) goes
    assert [await store.revoked_at(k) for k in "abcd"] == [None, 1000.0, 1000.0, 1000.0]
    await store.revoke("e", at=1000.0, until=1500.0)  # full: "c" (until 3000) goes, the newcomer stays
    assert [await store.revoked_at(k) for k in "bcde"] == [1000.0, None, 1000.0, 1000.0]
    for i in range(50):
        await store.revoke(f"k{i}", at=1000.0, until=10_000.0 + i)
    live = [k for k in ["b", "d", "e", *(f"k{i}" for i in range(50))] if await store.revoked_at(k) is not None]
    assert live == ["k47", "k48", "k49"]


@pytest.mark.anyio
async def test_store_prunes_expired_entries_before_evicting_live_ones(clock: FakeClock) -> None:
    store = MemoryRevocationStore(max_entries=3, clock=clock)
    await store.revoke("old1", at=1000.0, until=1010.0)
    await store.revoke("old2", at=1000.0, until=1020.0)
    await store.revoke("live", at=1000.0, until=9000.0)
    clock.now = 1100.0
    await store.revoke("new1", at=1100.0, until=8000.0)
    await store.revoke("new2", at=1100.0, until=8500.0)  # both expired entries went at once: "live" is kept
    assert await store.revoked_at("live") == 1000.0
    assert await store.revoked_at("new1") == 1100.0
    assert await store.revoked_at("new2") == 1100.0


@pytest.mark.anyio
async def test_store_re_revoking_an_existing_key_at_capacity_evicts_nothing(clock: FakeClock) -> None:
    store = MemoryRevocationStore(max_entries=2, clock=clock)
    await store.revoke("sid:a", at=1000.0, until=2000.0)
    await store.revoke("sub:b", at=1000.0, until=3000.0)
    await store.revoke("sub:b", at=1001.0, until=3000.0)  # the same key again: still two entries
    assert await store.revoked_at("sid:a") == 1000.0


# --- is_revoked -----------------------------------------------------------------------------------------------------


def test_session_keys() -> None:
    assert session_keys(make_session()) == ("sid:sid-abc", f"sub:{ISS}|user-1", f"idp_sid:{ISS}|idp-sid-1")
    assert session_keys(make_session(idp_sid=None)) == ("sid:sid-abc", f"sub:{ISS}|user-1")


@pytest.mark.anyio
async def test_is_revoked_by_sid_always(clock: FakeClock) -> None:
    store = MemoryRevocationStore(clock=clock)
    session = make_session(created_at=1000.0)
    assert not await is_revoked(store, session)
    await store.revoke("sid:sid-abc", at=500.0, until=90_000.0)  # even "before" the session began
    assert await is_revoked(store, session)
    assert not await is_revoked(store, make_session(sid="sid-other"))


@pytest.mark.anyio
@pytest.mark.parametrize("key", [f"sub:{ISS}|user-1", f"idp_sid:{ISS}|idp-sid-1"])
async def test_is_revoked_by_subject_or_idp_sid_only_for_older_sessions(clock: FakeClock, key: str) -> None:
    store = MemoryRevocationStore(clock=clock)
    await store.revoke(key, at=1000.0, until=90_000.0)
    assert await is_revoked(store, make_session(created_at=900.0))
    assert await is_revoked(store, make_session(created_at=1000.0))  # created at the very moment: revoked
    assert not await is_revoked(store, make_session(created_at=1000.5))  # a login after the logout survives
    assert not await is_revoked(store, make_session(created_at=900.0, subject="user-2", idp_sid="idp-sid-2"))


@pytest.mark.anyio
async def test_is_revoked_by_idp_sid_ignores_sessions_without_one(clock: FakeClock) -> None:
    store = MemoryRevocationStore(clock=clock)
    await store.revoke(f"idp_sid:{ISS}|idp-sid-1", at=1000.0, until=90_000.0)
    assert not await is_revoked(store, make_session(created_at=900.0, idp_sid=None))


@pytest.mark.anyio
async def test_is_revoked_keys_are_per_issuer(clock: FakeClock) -> None:
    store = MemoryRevocationStore(clock=clock)
    await store.revoke("sub:https://other.test|user-1", at=1000.0, until=90_000.0)
    assert not await is_revoked(store, make_session(created_at=900.0))


@pytest.mark.anyio
async def test_is_revoked_ends_when_the_revocation_expires(clock: FakeClock) -> None:
    store = MemoryRevocationStore(clock=clock)
    await store.revoke("sid:sid-abc", at=1000.0, until=2000.0)
    assert await is_revoked(store, make_session())
    clock.now = 2000.0
    assert not await is_revoked(store, make_session())
