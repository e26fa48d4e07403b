"""Return-URL validation against a real WHATWG URL parser (Ada, ``ada-url``): a value ``safe_return_to`` accepts is,
as a browser reads it against the site's own URL, on the site or on an allowed origin — never elsewhere.

The values are built from the pieces open redirects are made of (schemes in any case, extra or back slashes,
TAB/LF, userinfo, percent-encoded and Unicode lookalike hosts, IPv4 and IPv6 forms, ports, dot segments) and
from arbitrary text.
"""

from __future__ import annotations

import ada_url
from hypothesis import example, given, settings
from hypothesis import strategies as st

from idgate.sso.redirects import canonical_origin, safe_return_to

SITE = "https://app.example"
ALLOWED = frozenset({SITE, "https://grafana.example.com", "https://127.0.0.1:8443", "https://[::1]:8443"})
DEFAULT = "/fallback"
PAGE = SITE + "/some/page?x=1"

SCHEMES = ["https:", "http:", "HTTPS:", "hTtP:", "javascript:", "data:", "ftp:", "https", ""]
SLASHES = ["//", "/", "///", "\\\\", "/\\", "\\/", "/\t/", "/%2f", "", "//\n"]
USERINFO = ["", "user@", "app.example@", "a:b@", "@", "%40", "app.example%40"]
HOSTS = [
    "app.example",
    "APP.example",
    "app.example.",
    "grafana.example.com",
    "evil.example",
    "app.example.evil.example",
    "evilapp.example",
    "127.0.0.1",
    "127.1",
    "0x7f.0.0.1",
    "2130706433",
    "[::1]",
    "[0:0::1]",
    "[::ffff:127.0.0.1]",
    "app%2eexample",
    "app\u3002example",
    "\u0430pp.example",
    "app.ex\u0430mple",
    "",
]
PORTS = ["", ":443", ":8443", ":0443", ":", ":80", ":65536", ":x"]
PATHS = ["", "/", "/x", "//evil.example", "/..//evil.example", "/%2e%2e/x", "/\\evil", "?a=b", "#f", "/a/../../b"]

pieces = st.builds(
    lambda *parts: "".join(parts),
    st.sampled_from(SCHEMES),
    st.sampled_from(SLASHES),
    st.sampled_from(USERINFO),
    st.sampled_from(HOSTS),
    st.sampled_from(PORTS),
    st.sampled_from(PATHS),
)
relative = st.builds(lambda a, b: a + b, st.sampled_from(["/", "//", "/\\", "/%09", "/.", "\\"]), st.text(max_size=30))
values = st.one_of(pieces, relative, st.text(max_size=60))


def whatwg_origin(url: str) -> str | None:
    """The origin a browser navigates to for ``url`` on the site's page; None when the URL does not parse."""
    try:
        return str(ada_url.URL(url, PAGE).origin)
    except ValueError:
        return None


@given(values)
@settings(deadline=None, max_examples=800)
@example("https://app.example@evil.example")
@example("https://app.example\\@evil.example")
@example("/\t/evil.example")
@example("https://127.0.0.1:8443.evil.example/")
def test_accepted_values_never_leave_the_allowlist_as_a_browser_reads_them(value: str) -> None:
    result = safe_return_to(value, allowed_origins=ALLOWED, default=DEFAULT)
    if result == DEFAULT:
        return
    assert whatwg_origin(result) in ALLOWED, (value, result)
    assert whatwg_origin(value) in ALLOWED, (value, result)
    host = ada_url.URL(result, PAGE).hostname
    assert any(ada_url.URL(origin).hostname == host for origin in ALLOWED), (value, result, host)


@given(pieces)
@settings(deadline=None, max_examples=300)
def test_canonical_origin_agrees_with_whatwg_when_it_answers(value: str) -> None:
    origin = canonical_origin(value)
    if origin is not None and origin in ALLOWED:
        assert whatwg_origin(value) == origin, value


def test_the_oracle_sees_the_attacks() -> None:
    """The properties can fail: Ada resolves the classic open redirects off the site."""
    for attack in ("//evil.example", "/\\evil.example", "/\t/evil.example", "https://app.example@evil.example"):
        assert whatwg_origin(attack) == "https://evil.example", attack
        assert safe_return_to(attack, allowed_origins=ALLOWED, default=DEFAULT) == DEFAULT
