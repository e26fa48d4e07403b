"""Sealed, chunked cookies: round trips, Set-Cookie attributes, key rotation, purpose binding and hostile headers."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idgate.errors import CookieTooLarge
from idgate.sso.cookies import (
    MAX_COOKIE_HEADER,
    CookieJarSettings,
    KeyRing,
    SessionCookies,
    without_cookies,
)

OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
OTHER_KEY = b"\xaa" * 32
ATTRS = "; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age="


def ring(*keys: bytes) -> KeyRing:
    return KeyRing(keys=list(keys) or [OLD_KEY])


def jar(
    *keys: bytes, purpose: bytes = b"session", name: str = "__Host-idgate", max_chunks: int = 4, chunk_size: int = 3800
) -> SessionCookies:
    return SessionCookies(
        ring=ring(*keys),
        settings=CookieJarSettings(name=name, max_chunks=max_chunks, chunk_size=chunk_size),
        purpose=purpose,
    )


def header_of(set_cookies: list[str]) -> str:
    """The Cookie header a browser sends back: every non-deleted cookie, `name=value` joined by '; '."""
    pairs = []
    for line in set_cookies:
        pair = line.split(";", 1)[0]
        if not line.endswith("Max-Age=0"):
            pairs.append(pair)
    return "; ".join(pairs)


def raw_of(token: str) -> bytes:
    body = token.removeprefix("v1.")
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def token_of(raw: bytes) -> str:
    return "v1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sealed_len(payload_len: int) -> int:
    """Length of a sealed token: 'v1.' + unpadded base64url of 4 + 12 + payload + 16 bytes."""
    n = 4 + 12 + payload_len + 16
    return 3 + (4 * n + 2) // 3


def payload_len_for(token_len: int) -> int:
    matches = [n for n in range(token_len) if sealed_len(n) == token_len]
    assert matches, f"no payload seals to exactly {token_len} characters"
    return matches[0]


# --- KeyRing ---------------------------------------------------------------------------------------------------


def test_seal_format_and_open() -> None:
    r = ring(OLD_KEY)
    token = r.seal(b"hello", aad=b"a")
    assert token.startswith("v1.")
    assert "=" not in token
    raw = raw_of(token)
    assert raw[:4] == hashlib.sha256(OLD_KEY).digest()[:4]
    assert len(raw) == 4 + 12 + 5 + 16
    assert len(token) == sealed_len(5)
    assert r.open(token, aad=b"a") == b"hello"
    assert r.open(token, aad=b"b") is None


def test_nonces_differ() -> None:
    r = ring(OLD_KEY)
    tokens = {r.seal(b"same", aad=b"") for _ in range(50)}
    assert len(tokens) == 50
    assert len({raw_of(t)[4:16] for t in tokens}) == 50


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "at least one key"),
        ([b"x" * 31], "key 1 of 1 is not 32 bytes"),
        ([OLD_KEY, b"x" * 33], "key 2 of 2 is not 32 bytes"),
        ([OLD_KEY, NEW_KEY, OLD_KEY], "key 3 of 3 repeats"),
        (OLD_KEY, "not a single value"),
        (["x" * 32], "key 1 of 1 is not 32 bytes"),
    ],
)
def test_keyring_rejects(keys: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyRing(keys=keys)  # type: ignore[arg-type]


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def b64url(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def test_from_text_forms() -> None:
    # a key whose encodings differ between base64 and base64url (contains + / vs - _)
    key = bytes([0xFB, 0xFF, 0xBF] * 10 + [1, 2])
    assert "+" in b64(key) or "/" in b64(key)
    for text in (b64(key), b64(key).rstrip("="), b64url(key), b64url(key).rstrip("=")):
        r = KeyRing.from_text(text)
        assert ring(key).open(r.seal(b"x", aad=b""), aad=b"") == b"x"
    r = KeyRing.from_text(f"  {b64(NEW_KEY)},{b64url(OLD_KEY)}\n\t{b64(OTHER_KEY).rstrip('=')} ,, ")
    token = r.seal(b"p", aad=b"")
    assert raw_of(token)[:4] == hashlib.sha256(NEW_KEY).digest()[:4]  # the first key seals
    for k in (OLD_KEY, OTHER_KEY):
        assert r.open(ring(k).seal(b"q", aad=b""), aad=b"") == b"q"  # any key opens


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no keys"),
        (" , \n", "no keys"),
        (base64.b64encode(b"s" * 16).decode(), "key 1 of 1 decodes to 16 bytes"),
        (base64.b64encode(b"s" * 48).decode(), "key 1 of 1 decodes to 48 bytes"),
        ("ab" * 32, "hex key is not accepted"),
        ("sekrit!!" * 6, "key 1 of 1 is not base64"),
        ("A" * 41, "key 1 of 1 is not base64"),
        ("=" + "A" * 43, "key 1 of 1 is not base64"),
        (b64(OLD_KEY) + " " + "not-a-key-at-all", "key 2 of 2 decodes"),
        (b64(OLD_KEY) + " " + b64(OLD_KEY), "key 2 of 2 repeats"),
    ],
)
def test_from_text_rejects_without_echoing_key(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        KeyRing.from_text(text)
    for item in text.replace(",", " ").split():
        assert item not in str(info.value)


def test_repr_shows_ids_not_keys() -> None:
    text = repr(ring(OLD_KEY, NEW_KEY))
    assert hashlib.sha256(OLD_KEY).digest()[:4].hex() in text
    assert OLD_KEY.hex() not in text
    assert b64(OLD_KEY) not in text


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1.",
        "v2." + "A" * 60,
        "V1." + "A" * 60,
        "v1" + "A" * 60,
        "v1.!!!!",
        "v1.AAAA=",
        "v1.A",
        "v1." + "A" * 42,  # too short for id + nonce + tag
        "v1." + "A" * 400,  # unknown key id
        "v1.\u00e9" * 20,
        "v1. " + "A" * 60,
    ],
)
def test_open_rejects_garbage(token: str) -> None:
    assert ring(OLD_KEY).open(token, aad=b"") is None


def test_open_rejects_non_canonical_base64() -> None:
    r = ring(OLD_KEY)
    token = r.seal(b"abcde", aad=b"")  # 37 raw bytes -> 50 chars; the last char carries 4 spare bits
    body = token[3:]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(body[-1])
    assert last & 0b1111 == 0
    twin = "v1." + body[:-1] + alphabet[last | 1]
    assert raw_of(twin) == raw_of(token)  # same bytes under a lenient decoder
    assert r.open(token, aad=b"") == b"abcde"
    assert r.open(twin, aad=b"") is None


def test_open_never_raises_on_non_str() -> None:
    assert ring(OLD_KEY).open(b"v1.AAAA", aad=b"") is None  # type: ignore[arg-type]
    assert ring(OLD_KEY).open(None, aad=b"") is None  # type: ignore[arg-type]


def test_every_single_bit_flip_of_a_token_fails() -> None:
    r = ring(OLD_KEY)
    token = r.seal(b'{"sid":"abc","sub":"u1"}', aad=b"s")
    positions = sorted({*range(0, len(token), 3), len(token) - 1, len(token) - 2})
    for pos in positions:
        for bit in range(8):
            flipped = token[:pos] + chr(ord(token[pos]) ^ (1 << bit)) + token[pos + 1 :]
            assert r.open(flipped, aad=b"s") is None, (pos, bit)


def test_every_single_bit_flip_of_the_raw_bytes_fails() -> None:
    r = ring(OLD_KEY)
    raw = raw_of(r.seal(b"payload", aad=b"s"))
    for pos in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[pos] ^= 1 << bit
            assert r.open(token_of(bytes(flipped)), aad=b"s") is None, (pos, bit)


def test_every_truncation_fails() -> None:
    r = ring(OLD_KEY)
    token = r.seal(b"short", aad=b"")
    assert r.open(token, aad=b"") == b"short"
    for length in range(len(token)):
        assert r.open(token[:length], aad=b"") is None, length


def test_rotation() -> None:
    old_token = ring(OLD_KEY).seal(b"from before", aad=b"x")
    rotated = ring(NEW_KEY, OLD_KEY)
    assert rotated.open(old_token, aad=b"x") == b"from before"
    assert ring(NEW_KEY).open(old_token, aad=b"x") is None
    new_token = rotated.seal(b"fresh", aad=b"x")
    assert raw_of(new_token)[:4] == hashlib.sha256(NEW_KEY).digest()[:4]
    assert raw_of(old_token)[:4] == hashlib.sha256(OLD_KEY).digest()[:4]
    assert ring(OLD_KEY).open(new_token, aad=b"x") is None
    assert ring(NEW_KEY).open(new_token, aad=b"x") == b"fresh"


def test_key_id_swapped_to_another_known_key_fails() -> None:
    both = ring(OLD_KEY, NEW_KEY)
    raw = raw_of(both.seal(b"x", aad=b""))
    swapped = hashlib.sha256(NEW_KEY).digest()[:4] + raw[4:]
    assert both.open(token_of(swapped), aad=b"") is None


# --- CookieJarSettings ------------------------------------------------------------------------------------------


def test_default_settings() -> None:
    s = CookieJarSettings()
    assert (s.name, s.max_chunks, s.chunk_size) == ("__Host-idgate", 4, 3800)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "idgate"}, "__Host-"),
        ({"name": "__Secure-idgate"}, "__Host-"),
        ({"name": "__host-idgate"}, "__Host-"),
        ({"name": "__Host-"}, "__Host-"),
        ({"name": "__Host-id gate"}, "__Host-"),
        ({"name": "__Host-id=gate"}, "__Host-"),
        ({"name": "__Host-id;gate"}, "__Host-"),
        ({"max_chunks": 0}, "max_chunks"),
        ({"max_chunks": True}, "max_chunks"),
        ({"chunk_size": 10}, "chunk_size"),
        ({"chunk_size": 4090}, "over the 4096"),
        ({"max_chunks": 5}, "Cookie header"),
        ({"max_chunks": 40, "chunk_size": 400}, "Cookie header"),
    ],
)
def test_settings_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CookieJarSettings(**kwargs)  # type: ignore[arg-type]


def test_purpose_required() -> None:
    with pytest.raises(ValueError, match="purpose"):
        jar(OLD_KEY, purpose=b"")
    with pytest.raises(ValueError, match="purpose"):
        jar(OLD_KEY, purpose="session")  # type: ignore[arg-type]


# --- SessionCookies: encode -------------------------------------------------------------------------------------


def test_set_cookie_attributes_exact() -> None:
    cookies = jar(OLD_KEY).encode(b"payload", max_age=3600)
    assert len(cookies) == 4
    first = cookies[0]
    name_value, attrs = first.split("; ", 1)
    assert name_value.startswith("__Host-idgate_0=v1.")
    assert attrs == "Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=3600"
    assert cookies[1:] == [f"__Host-idgate_{i}={ATTRS}0" for i in (1, 2, 3)]
    for line in cookies:
        assert "domain" not in line.lower()
        assert "expires" not in line.lower()
        assert "\r" not in line
        assert "\n" not in line


def test_clear_deletes_every_chunk() -> None:
    assert jar(OLD_KEY).clear() == [f"__Host-idgate_{i}={ATTRS}0" for i in range(4)]
    assert jar(OLD_KEY, name="__Host-st", max_chunks=2, chunk_size=100).clear() == [
        f"__Host-st_0={ATTRS}0",
        f"__Host-st_1={ATTRS}0",
    ]


@pytest.mark.parametrize("max_age", [0, -1, True, 1.5, "60"])
def test_bad_max_age(max_age: object) -> None:
    with pytest.raises(ValueError, match="max_age"):
        jar(OLD_KEY).encode(b"x", max_age=max_age)  # type: ignore[arg-type]


def test_round_trip_small() -> None:
    j = jar(OLD_KEY)
    cookies = j.encode(b'{"sid":"x"}', max_age=60)
    assert j.decode(header_of(cookies)) == (b'{"sid":"x"}', None)
    assert j.decode("theme=dark; " + header_of(cookies) + "; _ga=GA1.2.3") == (b'{"sid":"x"}', None)


def test_round_trip_empty_payload() -> None:
    j = jar(OLD_KEY)
    assert j.decode(header_of(j.encode(b"", max_age=60))) == (b"", None)


def test_exactly_at_a_chunk_boundary() -> None:
    chunk_size = 101  # reachable: sealed lengths are 3 + 4k, 5 + 4k or 6 + 4k
    j = jar(OLD_KEY, chunk_size=chunk_size)
    n = payload_len_for(chunk_size)
    one = j.encode(b"a" * n, max_age=60)
    live = [c for c in one if not c.endswith("Max-Age=0")]
    assert len(live) == 1
    assert len(live[0].split(";", 1)[0].split("=", 1)[1]) == chunk_size
    assert j.decode(header_of(one)) == (b"a" * n, None)
    two = j.encode(b"a" * (n + 1), max_age=60)
    live = [c for c in two if not c.endswith("Max-Age=0")]
    assert len(live) == 2
    assert [c.split("=", 1)[0] for c in live] == ["__Host-idgate_0", "__Host-idgate_1"]
    assert len(live[0].split(";", 1)[0].split("=", 1)[1]) == chunk_size
    assert j.decode(header_of(two)) == (b"a" * (n + 1), None)


def test_default_chunk_size_boundary() -> None:
    j = jar(OLD_KEY)
    n = payload_len_for(3801) - 1  # largest payload whose sealed value fits one 3800-byte chunk
    assert sealed_len(n) <= 3800 < sealed_len(n + 1)
    assert sum(not c.endswith("Max-Age=0") for c in j.encode(os.urandom(n), max_age=60)) == 1
    assert sum(not c.endswith("Max-Age=0") for c in j.encode(os.urandom(n + 1), max_age=60)) == 2


@pytest.mark.parametrize("chunks", [1, 2, 3, 4])
def test_multi_chunk_round_trip(chunks: int) -> None:
    j = jar(OLD_KEY)
    payload = os.urandom(next(n for n in range(20_000) if sealed_len(n) > (chunks - 1) * 3800 + 100))
    set_cookies = j.encode(payload, max_age=60)
    live = [c for c in set_cookies if not c.endswith("Max-Age=0")]
    assert len(live) == chunks
    assert len(set_cookies) == 4
    assert all(len(c.split(";", 1)[0].split("=", 1)[1]) == 3800 for c in live[:-1])
    assert j.decode(header_of(set_cookies)) == (payload, None)
    assert len(header_of(set_cookies)) <= MAX_COOKIE_HEADER


def test_largest_payload_at_the_cap_and_one_byte_over() -> None:
    j = jar(OLD_KEY)
    biggest = max(n for n in range(11000, 11500) if sealed_len(n) <= 4 * 3800)
    payload = os.urandom(biggest)
    assert j.decode(header_of(j.encode(payload, max_age=60))) == (payload, None)
    with pytest.raises(CookieTooLarge, match="chunks"):
        j.encode(os.urandom(biggest + 1), max_age=60)


def test_payload_over_raw_cap_refused_before_sealing() -> None:
    class ExplodingRing(KeyRing):
        def seal(self, plaintext: bytes, *, aad: bytes) -> str:
            raise AssertionError("sealed a payload that should have been refused")

    j = SessionCookies(
        ring=ExplodingRing(keys=[OLD_KEY]), settings=CookieJarSettings(max_chunks=2, chunk_size=100), purpose=b"s"
    )
    with pytest.raises(CookieTooLarge, match="payload of 201 bytes"):
        j.encode(b"x" * 201, max_age=60)
    assert issubclass(CookieTooLarge, ValueError)


def test_stale_chunks_deleted_when_cookie_shrinks() -> None:
    j = jar(OLD_KEY, chunk_size=100)
    big = j.encode(b"x" * 250, max_age=60)
    assert [c.split("=", 1)[0] for c in big if not c.endswith("Max-Age=0")] == [f"__Host-idgate_{i}" for i in range(4)]
    small = j.encode(b"y", max_age=60)
    assert small[0].startswith("__Host-idgate_0=v1.")
    assert small[1:] == [f"__Host-idgate_{i}={ATTRS}0" for i in (1, 2, 3)]
    # a browser that applied both responses holds only chunk 0 of the new value
    browser = dict(c.split(";", 1)[0].split("=", 1) for c in big)
    for line in small:
        name, value = line.split(";", 1)[0].split("=", 1)
        if line.endswith("Max-Age=0"):
            browser.pop(name, None)
        else:
            browser[name] = value
    assert j.decode("; ".join(f"{k}={v}" for k, v in browser.items())) == (b"y", None)
    # a browser that ignored the deletions would be refused (stale tail): fail closed, not a mixed value
    stale = (
        "; ".join(f"{k}={v}" for k, v in browser.items()) + "; " + "; ".join(big[i].split(";", 1)[0] for i in (1, 2))
    )
    assert j.decode(stale) == (None, "invalid_cookie")


# --- SessionCookies: purpose, keys and planted cookies -----------------------------------------------------------


def test_purpose_binding() -> None:
    state = jar(OLD_KEY, purpose=b"login-state")
    session = jar(OLD_KEY, purpose=b"session")
    header = header_of(state.encode(b'{"sid":"attacker"}', max_age=60))
    assert state.decode(header) == (b'{"sid":"attacker"}', None)
    assert session.decode(header) == (None, "invalid_cookie")


def test_name_is_bound_too() -> None:
    a = jar(OLD_KEY, name="__Host-a")
    b = jar(OLD_KEY, name="__Host-b")
    header = header_of(a.encode(b"v", max_age=60))
    assert b.decode(header.replace("__Host-a_", "__Host-b_")) == (None, "invalid_cookie")
    assert a.decode(header) == (b"v", None)


def test_cookie_planted_with_another_key() -> None:
    planted = header_of(jar(OTHER_KEY).encode(b'{"sub":"admin"}', max_age=60))
    assert jar(OLD_KEY).decode(planted) == (None, "invalid_cookie")


def test_rotation_through_cookies() -> None:
    old_header = header_of(jar(OLD_KEY).encode(b"old session", max_age=60))
    assert jar(NEW_KEY, OLD_KEY).decode(old_header) == (b"old session", None)
    assert jar(NEW_KEY).decode(old_header) == (None, "invalid_cookie")


def test_bit_flip_in_cookie_value_is_invalid() -> None:
    j = jar(OLD_KEY)
    value = j.encode(b'{"sid":"abc"}', max_age=60)[0].split(";", 1)[0].split("=", 1)[1]
    raw = raw_of(value)
    for pos in range(0, len(raw), 2):
        for bit in (0, 3, 7):
            flipped = bytearray(raw)
            flipped[pos] ^= 1 << bit
            assert j.decode(f"__Host-idgate_0={token_of(bytes(flipped))}") == (None, "invalid_cookie"), (pos, bit)


def test_truncated_cookie_value_is_invalid() -> None:
    j = jar(OLD_KEY)
    value = j.encode(b"abc", max_age=60)[0].split(";", 1)[0].split("=", 1)[1]
    for length in range(len(value)):
        assert j.decode(f"__Host-idgate_0={value[:length]}") == (None, "invalid_cookie"), length


def test_chunks_swapped_are_invalid() -> None:
    j = jar(OLD_KEY, chunk_size=100)
    header = header_of(j.encode(b"z" * 200, max_age=60))
    pairs = dict(p.split("=", 1) for p in header.split("; "))
    swapped = f"__Host-idgate_0={pairs['__Host-idgate_1']}; __Host-idgate_1={pairs['__Host-idgate_0']}"
    assert j.decode(swapped) == (None, "invalid_cookie")
    dropped_last = "; ".join(f"{k}={v}" for k, v in pairs.items() if k != max(pairs))
    assert j.decode(dropped_last) == (None, "invalid_cookie")


# --- SessionCookies: hostile headers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_header() -> str:
    return header_of(jar(OLD_KEY, chunk_size=100).encode(b"q" * 150, max_age=60))  # 3 chunks


def small_jar() -> SessionCookies:
    return jar(OLD_KEY, chunk_size=100)


def test_good_header_decodes(good_header: str) -> None:
    assert good_header.count("__Host-idgate_") == 3
    assert small_jar().decode(good_header) == (b"q" * 150, None)
    reordered = "; ".join(reversed(good_header.split("; ")))
    assert small_jar().decode(reordered) == (b"q" * 150, None)
    assert small_jar().decode(good_header.replace("; ", ";\t ")) == (b"q" * 150, None)


@pytest.mark.parametrize("header", [None, "", " ", ";;;", "theme=dark; lang=en", "__Host-idgate=v1.AAAA", "x"])
def test_no_cookie(header: str | None) -> None:
    assert small_jar().decode(header) == (None, "no_cookie")


def test_no_cookie_ignores_lookalike_names(good_header: str) -> None:
    lookalikes = good_header.replace("__Host-idgate_", "__host-idgate_")
    assert small_jar().decode(lookalikes) == (None, "no_cookie")
    assert small_jar().decode(good_header.replace("__Host-idgate_", "__Host-idgatex_")) == (None, "no_cookie")


def test_duplicate_cookie(good_header: str) -> None:
    first = good_header.split("; ")[0]
    assert small_jar().decode(good_header + "; " + first) == (None, "duplicate_cookie")
    assert small_jar().decode(first + "; " + good_header) == (None, "duplicate_cookie")
    # two copies of the session (e.g. one planted for a path or by a subdomain): refuse, never pick one
    other = header_of(jar(OLD_KEY, chunk_size=100).encode(b"other", max_age=60))
    assert small_jar().decode(good_header + "; " + other) == (None, "duplicate_cookie")
    same_value_twice = "__Host-idgate_0=a; __Host-idgate_0=a"
    assert small_jar().decode(same_value_twice) == (None, "duplicate_cookie")
    assert small_jar().decode(" __Host-idgate_0 =a;__Host-idgate_0=b") == (None, "duplicate_cookie")


def test_missing_chunk(good_header: str) -> None:
    parts = good_header.split("; ")
    assert small_jar().decode(f"{parts[0]}; {parts[2]}") == (None, "missing_chunk")
    assert small_jar().decode(f"{parts[1]}; {parts[2]}") == (None, "missing_chunk")
    assert small_jar().decode(parts[1]) == (None, "missing_chunk")


@pytest.mark.parametrize(
    "extra",
    [
        "__Host-idgate_4=AAAA",
        "__Host-idgate_10=AAAA",
        "__Host-idgate_01=AAAA",
        "__Host-idgate_00=AAAA",
        "__Host-idgate_x=AAAA",
        "__Host-idgate_=AAAA",
        "__Host-idgate_-1=AAAA",
        "__Host-idgate_+1=AAAA",
        "__Host-idgate_1 1=AAAA",
        "__Host-idgate_\u0661=AAAA",  # ARABIC-INDIC DIGIT ONE: str.isdigit() would say yes
        "__Host-idgate_1\n=AAAA",
        "__Host-idgate_" + "9" * 5000 + "=AAAA",  # int() of this would raise ValueError
        "__Host-idgate_state_0=AAAA",
    ],
)
def test_too_many_chunks(good_header: str, extra: str) -> None:
    assert small_jar().decode(f"{good_header}; {extra}") == (None, "too_many_chunks")
    assert small_jar().decode(extra) == (None, "too_many_chunks")


def test_index_at_cap_with_four_chunks_is_too_many() -> None:
    j = jar(OLD_KEY, chunk_size=100)
    header = header_of(j.encode(b"w" * 250, max_age=60))
    assert header.count("__Host-idgate_") == 4
    assert j.decode(header) == (b"w" * 250, None)
    assert j.decode(header + "; __Host-idgate_4=" + "A" * 10) == (None, "too_many_chunks")


def test_too_large_decided_before_parsing(good_header: str) -> None:
    padding = "pad=" + "p" * (MAX_COOKIE_HEADER - len(good_header) - 6)
    at_limit = f"{good_header}; {padding}"
    assert len(at_limit) == MAX_COOKIE_HEADER
    assert small_jar().decode(at_limit) == (b"q" * 150, None)
    assert small_jar().decode(at_limit + "p") == (None, "too_large")
    assert small_jar().decode("x" * 1_000_000) == (None, "too_large")
    # counted in bytes: a header of 16 KiB characters that is longer once UTF-8 encoded
    assert small_jar().decode(good_header + "; u=" + "\u00e9" * (MAX_COOKIE_HEADER // 2)) == (None, "too_large")
    # too_large wins over a duplicate further in
    assert small_jar().decode(good_header + "; " + good_header + "; " + "p" * MAX_COOKIE_HEADER) == (None, "too_large")


@pytest.mark.parametrize(
    "value",
    [
        "",
        '""',
        '"v1.AAAA"',
        "v1.AAAA",
        "v1." + "A" * 80,
        "\u00e9" * 40,
        "v1.\x00\x01\x02",
        "%76%31%2e",
        "v1." + "A" * 101,  # longer than any chunk we write
    ],
)
def test_invalid_cookie(value: str) -> None:
    assert small_jar().decode(f"__Host-idgate_0={value}") == (None, "invalid_cookie")


def test_non_str_header_fails_closed() -> None:
    j = jar(OLD_KEY)
    header = header_of(j.encode(b"abc", max_age=60))
    assert j.decode(header.encode()) == (None, "invalid_cookie")  # type: ignore[arg-type]
    assert j.decode(123) == (None, "invalid_cookie")  # type: ignore[arg-type]


def test_quoted_real_value_is_invalid() -> None:
    j = jar(OLD_KEY)
    value = j.encode(b"abc", max_age=60)[0].split(";", 1)[0].split("=", 1)[1]
    assert j.decode(f"__Host-idgate_0={value}") == (b"abc", None)
    assert j.decode(f'__Host-idgate_0="{value}"') == (None, "invalid_cookie")


def test_malformed_pairs_are_ignored() -> None:
    j = jar(OLD_KEY)
    good = header_of(j.encode(b"abc", max_age=60))
    for junk in ("novalue", "=", "=x", ";", "  ", "a=b=c", '"quoted"', "\x00", "\u2603=\u2603"):
        assert j.decode(f"{junk}; {good}; {junk}") == (b"abc", None), junk


# --- properties -------------------------------------------------------------------------------------------------

_HEADER_TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet='_=;," \t-v1.AHostidgate0123456789\x00\r\n\u00e9', max_size=300),
    st.lists(
        st.tuples(
            st.sampled_from(["__Host-idgate_", "__Host-idgate", "x", ""]),
            st.text(alphabet="0123456789x_-", max_size=4),
            st.text(max_size=60),
        ),
        max_size=8,
    ).map(lambda pairs: "; ".join(f"{a}{b}={c}" for a, b, c in pairs)),
)
_REASONS = {"no_cookie", "duplicate_cookie", "missing_chunk", "too_many_chunks", "too_large", "invalid_cookie"}


@settings(deadline=None, max_examples=200)
@given(header=_HEADER_TEXT)
def test_decode_never_raises(header: str) -> None:
    payload, reason = jar(OLD_KEY).decode(header)
    assert payload is None
    assert reason in _REASONS


@settings(deadline=None, max_examples=200)
@given(plaintext=st.binary(max_size=2000), aad=st.binary(max_size=64))
def test_seal_open_round_trip(plaintext: bytes, aad: bytes) -> None:
    r = ring(NEW_KEY, OLD_KEY)
    token = r.seal(plaintext, aad=aad)
    assert r.open(token, aad=aad) == plaintext
    assert r.open(token, aad=aad + b"\x00") is None


@settings(deadline=None, max_examples=200)
@given(payload=st.binary(max_size=11_000), prefix=st.sampled_from(["", "a=b; ", "junk; ;"]))
def test_encode_decode_round_trip(payload: bytes, prefix: str) -> None:
    j = jar(OLD_KEY)
    set_cookies = j.encode(payload, max_age=60)
    assert len(set_cookies) == 4
    assert j.decode(prefix + header_of(set_cookies)) == (payload, None)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("theme=dark", None),
        ("__Host-idgate_0=abc", ""),
        ("theme=dark; __Host-idgate_0=abc; __Host-idgate_1=def; lang=en", "theme=dark; lang=en"),
        ("__Host-idgate-login_0=x;theme=dark", "theme=dark"),
        ("a=__Host-idgate_0", None),  # the name, not a value, decides
    ],
)
def test_without_cookies_removes_only_idgates_cookies(header: str | None, expected: str | None) -> None:
    assert without_cookies(header, prefix="__Host-idgate") == expected
