"""Encrypted, authenticated, chunked cookies (the session cookie and the login-state cookie).

Rules (docs: ../shared notes "security" rules 9 and 10; RFC 6265bis §4.1.3.2 and §5.6; NIST SP 800-38D; OWASP Session
Management cheat sheet):

- Every value is sealed with AES-256-GCM under a :class:`KeyRing`: the first key seals, any key opens, so keys rotate
  without logging everyone out. A token is ``v1.`` + base64url (no padding) of ``key_id(4) || nonce(12) || ciphertext
  || tag(16)``; ``key_id`` is the first 4 bytes of SHA-256 of the key (it names the key, it does not reveal it). The
  nonce is 96 random bits per seal (SP 800-38D §8.2.2: stay well under 2**32 seals per key; rotate keys).
- Opening fails closed and never raises: a bad prefix, non-canonical or non-base64url text, an unknown key id, a
  short token or a tag mismatch all give ``None``.
- The associated data binds the cookie name and a *purpose* (``b"session"``, ``b"login-state"``), so a value sealed
  for one cookie can never be replayed as another, even under the same key.
- Cookies are ``__Host-`` prefixed, ``Path=/; Secure; HttpOnly; SameSite=Lax``, never a ``Domain`` (the prefix
  forbids it, and it is what stops a sibling subdomain planting one). A sealed value longer than one chunk is split
  over ``{name}_0`` … ``{name}_{n-1}``; every encode also deletes the higher chunk indices so no stale tail is left.
- Sizes are bounded: payloads over ``max_chunks * chunk_size`` are refused before sealing, a sealed value needing
  more than ``max_chunks`` chunks raises :class:`CookieTooLarge`, and a ``Cookie`` header over 16 KiB is refused
  before it is parsed.
- The ``Cookie`` header is parsed here (RFC 6265 §5.4 ``a=b; c=d``), not with ``http.cookies.SimpleCookie`` (which
  silently drops or merges on bad input). Ambiguity is refused, never resolved: a chunk name sent twice, a gap in the
  indices, an index out of range or not in canonical decimal form each yield no session, with a reason code.
- Expiry (idle and absolute) and revocation after logout are the caller's job: it keeps timestamps and a session id
  inside the payload (:mod:`idgate.sso.session`). ``max_age`` only tells the browser when to drop the cookie.

Decode reason codes: ``no_cookie``, ``duplicate_cookie``, ``too_many_chunks``, ``missing_chunk``, ``too_large``,
``invalid_cookie``. Precedence when several apply: ``too_large``, ``duplicate_cookie``, ``too_many_chunks``,
``no_cookie``, ``missing_chunk``, ``invalid_cookie``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from idgate.errors import CookieTooLarge

KEY_SIZE = 32
KEY_ID_SIZE = 4
NONCE_SIZE = 12
TAG_SIZE = 16
VERSION_PREFIX = "v1."  # format version of a sealed value
MAX_COOKIE_HEADER = 16 * 1024  # bytes of Cookie header; larger is refused before parsing
COOKIE_NAME_VALUE_LIMIT = 4096  # RFC 6265bis §5.6: user agents drop a cookie whose name + value exceed this
APP_COOKIE_HEADROOM = 1024  # bytes of Cookie header left for the application's own cookies when every chunk is set
MIN_CHUNK_SIZE = 64

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_KEY_TEXT = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_KEY_SEPARATORS = re.compile(r"[\s,]+")
_CHUNK_INDEX = re.compile(r"0|[1-9][0-9]{0,2}")
_COOKIE_NAME = re.compile(r"__Host-[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_OWS = " \t"
_AAD_LABEL = b"idgate-cookie-v1"
_ATTRIBUTES = "; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age="


def key_id(key: bytes) -> bytes:
    """The 4-byte id of ``key`` written at the front of every token it seals: SHA-256(key)[:4]."""
    return hashlib.sha256(key).digest()[:KEY_ID_SIZE]


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Strict unpadded base64url: only the alphabet, and only the canonical encoding (no stray trailing bits)."""
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64url_encode(raw) == text else None


def _decode_key_text(item: str, position: int, count: int) -> bytes:
    """One key written as base64 or base64url, padding optional. Errors name the key's position, never its text."""
    if not _KEY_TEXT.fullmatch(item):
        raise ValueError(f"key {position} of {count} is not base64 or base64url text")
    body = item.rstrip("=").replace("-", "+").replace("_", "/")
    if len(body) % 4 == 1:
        raise ValueError(f"key {position} of {count} is not base64 or base64url text (bad length)")
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"key {position} of {count} is not base64 or base64url text") from None
    if len(key) != KEY_SIZE:
        hint = " (a hex key is not accepted: write the 32 bytes as base64)" if len(item) == 2 * KEY_SIZE else ""
        raise ValueError(f"key {position} of {count} decodes to {len(key)} bytes, need {KEY_SIZE}{hint}")
    return key


class KeyRing:
    """AEAD key ring: the first key encrypts, any key decrypts (rotation without logging everyone out)."""

    __slots__ = ("_ciphers", "_primary")

    def __init__(self, *, keys: Sequence[bytes]) -> None:
        if isinstance(keys, bytes | bytearray | str):
            raise ValueError("keys must be a sequence of 32-byte keys, not a single value")
        if not keys:
            raise ValueError("a key ring needs at least one key")
        ciphers: dict[bytes, AESGCM] = {}
        for position, key in enumerate(keys, 1):
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
                raise ValueError(f"key {position} of {len(keys)} is not {KEY_SIZE} bytes")
            kid = key_id(bytes(key))
            if kid in ciphers:
                raise ValueError(f"key {position} of {len(keys)} repeats an earlier key (or its key id)")
            ciphers[kid] = AESGCM(bytes(key))
        self._ciphers = ciphers
        self._primary = key_id(bytes(keys[0]))

    @classmethod
    def from_text(cls, text: str) -> KeyRing:
        """Keys as base64 or base64url (padding optional), separated by whitespace or commas; the first one seals."""
        items = [item for item in _KEY_SEPARATORS.split(text) if item]
        if not items:
            raise ValueError("no keys given: expected one or more base64 keys of 32 bytes")
        return cls(keys=[_decode_key_text(item, i, len(items)) for i, item in enumerate(items, 1)])

    def __repr__(self) -> str:
        return f"KeyRing(key_ids=[{', '.join(kid.hex() for kid in self._ciphers)}])"

    def seal(self, plaintext: bytes, *, aad: bytes) -> str:
        """Encrypt and authenticate ``plaintext`` (bound to ``aad``) under the first key."""
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._ciphers[self._primary].encrypt(nonce, plaintext, aad)
        return VERSION_PREFIX + _b64url_encode(self._primary + nonce + sealed)

    def open(self, token: str, *, aad: bytes) -> bytes | None:
        """The plaintext of ``token`` sealed with ``aad`` by any key of the ring; ``None`` on any failure."""
        if not isinstance(token, str) or not token.startswith(VERSION_PREFIX):
            return None
        raw = _b64url_decode(token[len(VERSION_PREFIX) :])
        if raw is None or len(raw) < KEY_ID_SIZE + NONCE_SIZE + TAG_SIZE:
            return None
        cipher = self._ciphers.get(raw[:KEY_ID_SIZE])
        if cipher is None:
            return None
        nonce = raw[KEY_ID_SIZE : KEY_ID_SIZE + NONCE_SIZE]
        try:
            return cipher.decrypt(nonce, raw[KEY_ID_SIZE + NONCE_SIZE :], aad)
        except InvalidTag:
            return None


@dataclass(frozen=True, kw_only=True, slots=True)
class CookieJarSettings:
    """Names and size bounds of one chunked cookie.

    Chunk ``i`` is named ``f"{name}_{i}"``. Two jars must not have names where one is the other plus ``_…`` (e.g.
    ``__Host-idgate`` and ``__Host-idgate_state``): the first would read the second's chunks as malformed indices.
    """

    name: str = "__Host-idgate"  # must start with "__Host-"
    max_chunks: int = 4  # hard cap; more is refused on encode and treated as no session on decode
    chunk_size: int = 3800  # bytes of cookie VALUE per chunk (keeps each Set-Cookie under ~4 KB)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.name, str) or not _COOKIE_NAME.fullmatch(self.name):
            problems.append('cookie name must be "__Host-" followed by RFC 9110 token characters')
        if isinstance(self.max_chunks, bool) or not isinstance(self.max_chunks, int) or self.max_chunks < 1:
            problems.append("max_chunks must be an integer >= 1")
        if (
            isinstance(self.chunk_size, bool)
            or not isinstance(self.chunk_size, int)
            or self.chunk_size < MIN_CHUNK_SIZE
        ):
            problems.append(f"chunk_size must be an integer >= {MIN_CHUNK_SIZE}")
        if not problems:
            # "{name}_{i}={value}" for the highest index, and all chunks joined by "; " in one Cookie header.
            per_chunk = len(self.name) + 1 + len(str(self.max_chunks - 1)) + 1 + self.chunk_size
            if per_chunk > COOKIE_NAME_VALUE_LIMIT:
                problems.append(f"a chunk would be {per_chunk} bytes, over the {COOKIE_NAME_VALUE_LIMIT} browsers keep")
            header = self.max_chunks * per_chunk + 2 * (self.max_chunks - 1)
            if header > MAX_COOKIE_HEADER - APP_COOKIE_HEADROOM:
                problems.append(
                    f"all {self.max_chunks} chunks would take {header} bytes of the Cookie header, over "
                    f"{MAX_COOKIE_HEADER - APP_COOKIE_HEADROOM} (the {MAX_COOKIE_HEADER}-byte limit less "
                    f"{APP_COOKIE_HEADROOM} for the application's cookies)"
                )
        if problems:
            raise ValueError("; ".join(problems))


def _associated_data(name: str, purpose: bytes) -> bytes:
    """Length-prefixed, so no (name, purpose) pair can collide with another."""
    name_bytes = name.encode("ascii")
    return _AAD_LABEL + len(name_bytes).to_bytes(2, "big") + name_bytes + len(purpose).to_bytes(2, "big") + purpose


class SessionCookies:
    """Seal a payload into ``__Host-`` cookie chunks and read it back from a ``Cookie`` header."""

    __slots__ = ("_aad", "_prefix", "_ring", "_settings")

    def __init__(self, *, ring: KeyRing, settings: CookieJarSettings, purpose: bytes) -> None:
        if not isinstance(purpose, bytes) or not 1 <= len(purpose) <= 255:
            raise ValueError("purpose must be 1 to 255 bytes")
        self._ring = ring
        self._settings = settings
        self._prefix = settings.name + "_"
        self._aad = _associated_data(settings.name, purpose)

    def _set_cookie(self, index: int, value: str, max_age: int) -> str:
        return f"{self._prefix}{index}={value}{_ATTRIBUTES}{max_age}"

    def encode(self, payload: bytes, *, max_age: int) -> list[str]:
        """``Set-Cookie`` values: one per chunk, then deletions of every higher index up to ``max_chunks - 1``."""
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 1:
            raise ValueError("max_age must be a positive whole number of seconds")
        max_chunks, chunk_size = self._settings.max_chunks, self._settings.chunk_size
        if len(payload) > max_chunks * chunk_size:
            raise CookieTooLarge(f"payload of {len(payload)} bytes exceeds {max_chunks} chunks of {chunk_size}")
        token = self._ring.seal(payload, aad=self._aad)
        chunks = [token[start : start + chunk_size] for start in range(0, len(token), chunk_size)]
        if len(chunks) > max_chunks:
            raise CookieTooLarge(
                f"sealed value of {len(token)} bytes needs {len(chunks)} chunks, over {max_chunks} of {chunk_size}"
            )
        live = [self._set_cookie(index, chunk, max_age) for index, chunk in enumerate(chunks)]
        return live + [self._set_cookie(index, "", 0) for index in range(len(chunks), max_chunks)]

    def clear(self) -> list[str]:
        """``Set-Cookie`` values deleting every chunk ``0 .. max_chunks - 1``."""
        return [self._set_cookie(index, "", 0) for index in range(self._settings.max_chunks)]

    def decode(self, cookie_header: str | None) -> tuple[bytes | None, str | None]:
        """``(payload, None)``, or ``(None, reason)`` with a reason code from the module docstring. Never raises."""
        if not cookie_header:
            return None, "no_cookie"
        if not isinstance(cookie_header, str):
            return None, "invalid_cookie"  # a caller bug (bytes?): fail closed rather than raise
        if len(cookie_header) > MAX_COOKIE_HEADER or (
            not cookie_header.isascii() and len(cookie_header.encode("utf-8", "replace")) > MAX_COOKIE_HEADER
        ):
            return None, "too_large"
        chunks: dict[int, str] = {}
        seen: set[str] = set()
        duplicate = bad_index = False
        for pair in cookie_header.split(";"):
            name, equals, value = pair.partition("=")
            name = name.strip(_OWS)
            if not equals or not name.startswith(self._prefix):
                continue
            if name in seen:
                duplicate = True
                continue
            seen.add(name)
            suffix = name[len(self._prefix) :]
            if not _CHUNK_INDEX.fullmatch(suffix) or int(suffix) >= self._settings.max_chunks:
                bad_index = True
                continue
            chunks[int(suffix)] = value.strip(_OWS)
        if duplicate:
            return None, "duplicate_cookie"
        if bad_index:
            return None, "too_many_chunks"
        if not chunks:
            return None, "no_cookie"
        if sorted(chunks) != list(range(len(chunks))):
            return None, "missing_chunk"
        if any(len(value) > self._settings.chunk_size for value in chunks.values()):
            return None, "invalid_cookie"  # never produced by encode
        payload = self._ring.open("".join(chunks[index] for index in range(len(chunks))), aad=self._aad)
        if payload is None:
            return None, "invalid_cookie"
        return payload, None


def without_cookies(cookie_header: str | None, *, prefix: str) -> str | None:
    """``cookie_header`` minus every cookie whose name starts with ``prefix`` (idgate's session and login-state
    cookies), re-joined with ``"; "``; None when it holds none of them (nothing to rewrite). Never raises."""
    if not cookie_header or prefix not in cookie_header:
        return None
    kept = []
    removed = False
    for pair in cookie_header.split(";"):
        trimmed = pair.strip(_OWS)
        if trimmed.startswith(prefix):
            removed = True
        elif trimmed:
            kept.append(trimmed)
    return "; ".join(kept) if removed else None
