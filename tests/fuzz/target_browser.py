"""Fuzz targets for what a browser sends: ``cookies`` (the sealed-cookie decoder) and ``redirects`` (return URLs).

Contracts: see ``fuzz_targets``.
"""

from __future__ import annotations

import re
from typing import Final

from idgate.sso.cookies import CookieJarSettings, KeyRing, SessionCookies, without_cookies
from idgate.sso.redirects import MAX_RETURN_TO, canonical_origin, safe_return_to

try:  # the WHATWG URL parser (test extra); the redirects target checks it when it is there
    import ada_url
except ImportError:  # pragma: no cover - the test extra installs it
    ada_url = None

from fuzz_common import text

# --- cookies --------------------------------------------------------------------------------------------------------

COOKIE_KEY: Final = bytes(range(32))
"""The key the cookie seeds are sealed with (a fuzz-only key)."""
COOKIE_SETTINGS: Final = CookieJarSettings(name="__Host-idgate", max_chunks=4, chunk_size=64)
COOKIE_JAR: Final = SessionCookies(ring=KeyRing(keys=[COOKIE_KEY]), settings=COOKIE_SETTINGS, purpose=b"session")
_COOKIE_REASONS = frozenset(
    {"no_cookie", "duplicate_cookie", "too_many_chunks", "missing_chunk", "too_large", "invalid_cookie"}
)


def cookie_header(set_cookies: list[str]) -> str:
    """The ``Cookie`` header a browser sends back for ``Set-Cookie`` values (deletions left out)."""
    return "; ".join(line.split(";", 1)[0] for line in set_cookies if not line.endswith("Max-Age=0"))


def fuzz_cookies(data: bytes) -> None:
    header = text(data)
    payload, reason = COOKIE_JAR.decode(header)
    if payload is None:
        assert reason in _COOKIE_REASONS, reason
    else:
        assert reason is None
        assert COOKIE_JAR.decode(cookie_header(COOKIE_JAR.encode(payload, max_age=60))) == (payload, None)
    for prefix in ("__Host-idgate", "__Host-idgate-login"):
        rewritten = without_cookies(header, prefix=prefix)
        if rewritten is None:
            continue
        pairs = [p for p in rewritten.split("; ")]
        original = {p.strip(" \t") for p in header.split(";")}
        assert all(p and p in original and not p.startswith(prefix) for p in pairs) or rewritten == "", rewritten
        assert "\r" not in rewritten or "\r" in header


# --- redirects ------------------------------------------------------------------------------------------------------

SITE: Final = "https://app.example"
ALLOWED_ORIGINS: Final = frozenset(
    {SITE, "https://grafana.example.com", "https://127.0.0.1:8443", "https://[::1]:8443", "http://legacy.example:8080"}
)
_DEFAULT: Final = "/fallback"
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def _whatwg_origin(url: str) -> str:
    """scheme://host[:port] as the WHATWG parser sees ``url`` resolved against the site."""
    assert ada_url is not None
    return str(ada_url.URL(url, SITE + "/somewhere/page").origin)


def fuzz_redirects(data: bytes) -> None:
    value = text(data)
    result = safe_return_to(value, allowed_origins=ALLOWED_ORIGINS, default=_DEFAULT)
    origin = canonical_origin(value)
    assert origin is None or canonical_origin(origin) == origin, origin
    if result == _DEFAULT:
        return
    assert _PRINTABLE.fullmatch(result) and len(result) <= 3 * MAX_RETURN_TO, result
    assert "\\" not in result, result
    if result.startswith("/"):
        assert not result.startswith("//"), result
    else:
        assert canonical_origin(result) in ALLOWED_ORIGINS, result
    if len(result) <= MAX_RETURN_TO:  # escaping " < > ` lengthens a value: a 2048-character one may not fit again
        assert safe_return_to(result, allowed_origins=ALLOWED_ORIGINS, default=_DEFAULT) == result, result
    if ada_url is not None:
        for url in (result, value):
            assert _whatwg_origin(url) in ALLOWED_ORIGINS, (value, result, _whatwg_origin(url))
