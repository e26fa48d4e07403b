"""Return-to validation: accepted and rejected tables (open-redirect forms) and a property over arbitrary input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idgate.sso.redirects import canonical_origin, safe_return_to

ALLOWED = frozenset(
    {
        "https://app.example",
        "https://grafana.example.com",
        "https://127.0.0.1:8443",
        "https://[::1]:8443",
        "http://legacy.example:8080",
        "https://dotted.example.",
    }
)
DEFAULT = "/home"


def check(value: str | None) -> str:
    return safe_return_to(value, allowed_origins=ALLOWED, default=DEFAULT)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/", "/"),
        ("/grafana/d/x?y=1#z", "/grafana/d/x?y=1#z"),
        ("/a", "/a"),
        ("/?next=//evil.example", "/?next=//evil.example"),
        ("/#//evil.example", "/#//evil.example"),
        ("/a//b", "/a//b"),
        ("/a/b/", "/a/b/"),
        ("/%41bc", "/%41bc"),
        ("/%zz", "/%zz"),
        ("/%C3%A9t%C3%A9/", "/%C3%A9t%C3%A9/"),
        ("/%E3%80%82evil", "/%E3%80%82evil"),
        ("/%25", "/%25"),
        ("/%2541", "/%2541"),
        ("/a%2F%2Fevil.example", "/a%2F%2Fevil.example"),
        ("/javascript:alert(1)", "/javascript:alert(1)"),
        ("/search?q=a%0Ab", "/search?q=a%0Ab"),
        ("/d?x=it's", "/d?x=it's"),
        ("/..a/.b/c..", "/..a/.b/c.."),
        ("/explore?left=%7B%22q%22%3A1%7D", "/explore?left=%7B%22q%22%3A1%7D"),
        ('/x?a="<b>"&c=`d`', "/x?a=%22%3Cb%3E%22&c=%60d%60"),
        ("/" + "a" * 2047, "/" + "a" * 2047),
        ("https://app.example", "https://app.example/"),
        ("https://app.example/", "https://app.example/"),
        ("https://app.example/x?y=1#z", "https://app.example/x?y=1#z"),
        ("https://app.example?y=1", "https://app.example/?y=1"),
        ("https://app.example#frag", "https://app.example/#frag"),
        ("HTTPS://APP.EXAMPLE/Path", "https://app.example/Path"),
        ("https://App.Example:443/p", "https://app.example/p"),
        ("https://app.example:0443/p", "https://app.example/p"),
        ("https://app.example:/p", "https://app.example/p"),
        ("https://app.example/@evil.example", "https://app.example/@evil.example"),
        ("https://app.example/?u=a@b", "https://app.example/?u=a@b"),
        ("https://app.example#@evil.example", "https://app.example/#@evil.example"),
        ("https://grafana.example.com/d/abc?orgId=1", "https://grafana.example.com/d/abc?orgId=1"),
        ("https://127.0.0.1:8443/x", "https://127.0.0.1:8443/x"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
        ("https://[0:0:0:0:0:0:0:1]:8443/x", "https://[::1]:8443/x"),
        ("https://[::0001]:8443", "https://[::1]:8443/"),
        ("http://legacy.example:8080/old", "http://legacy.example:8080/old"),
        ("HTTP://LEGACY.EXAMPLE:8080", "http://legacy.example:8080/"),
        ("https://dotted.example./x", "https://dotted.example./x"),
        ('https://app.example/"><script>', "https://app.example/%22%3E%3Cscript%3E"),
    ],
)
def test_accepted(value: str, expected: str) -> None:
    assert check(value) == expected
    assert check(expected) == expected  # normalised output is a fixed point


REJECTED = [
    # absolute URLs elsewhere
    "https://evil.example",
    "https://evil.example/",
    "http://evil.example",
    "ftp://app.example/",
    "wss://app.example/",
    # network-path and backslash forms
    "//evil.example",
    "//evil.example/path",
    "///evil.example",
    "////evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "/\\/evil.example",
    "https://app.example\\evil.example",
    "https://app.example/\\evil",
    "/path\\..\\x",
    # control characters and spaces (browsers strip TAB/CR/LF: /\t/evil is //evil)
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r/evil.example",
    "/\x00/evil.example",
    "/ /evil.example",
    " /x",
    "/x ",
    "/x\r\nSet-Cookie: a=b",
    "/x\x7f",
    "/x\x0b",
    "/x\x1b",
    "\t//evil.example",
    "https://app.example/\tx",
    "java\tscript:alert(1)",
    "javascript\n:alert(1)",
    # percent-encoded slash, backslash or control right after the first slash (also double-encoded)
    "/%09/evil.example",
    "/%0a/evil.example",
    "/%0D/evil.example",
    "/%00/evil.example",
    "/%20/evil.example",
    "/%7f/evil.example",
    "/%2F/evil.example",
    "/%2f/evil.example",
    "/%5C/evil.example",
    "/%5c/evil.example",
    "/%252F/evil.example",
    "/%25252f/evil.example",
    "/%255C/evil.example",
    "/%2509/evil.example",
    # dot segments
    "/..//evil.example",
    "/../evil",
    "/./",
    "/a/../b",
    "/a/./b",
    "/a/..",
    "/%2e%2e//evil.example",
    "/%2E%2E/x",
    "/.%2e/x",
    "/%2e./x",
    "/%2e/x",
    "https://app.example/..//evil.example",
    "https://app.example//evil.example",
    "https://app.example/%2F/evil.example",
    # userinfo
    "https://app.example@evil.example",
    "https://app.example@evil.example/",
    "https://user:pass@app.example/",
    "https://@app.example/",
    "https://evil.example\\@app.example",
    "https://evil.example%40app.example",
    "https://app.example:443@evil.example",
    # scripts and other schemes
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "javascript://app.example/%0aalert(1)",
    "vbscript:msgbox(1)",
    "data:text/html,<script>alert(1)</script>",
    "DATA:text/html;base64,PHNjcmlwdD4=",
    "file:///etc/passwd",
    "blob:https://app.example/uuid",
    "mailto:a@app.example",
    # malformed http(s) forms
    "https:evil.example",
    "https:/evil.example",
    "https:\\\\evil.example",
    "https:",
    "https://",
    "https:///",
    "https://:443/",
    "https://app.example:443:443/",
    "https://app.example:abc/",
    "https://app.example:-1/",
    "https://app.example:65536/",
    "https://app.example:000000443/",
    "https://app.example:0/",
    "https://[::1/",
    "https://[::1]x:8443/",
    "https://[v1.fe]:8443/",
    "https://[::1%25eth0]:8443/",
    "https://[::1]:8444/",
    "https://[::2]:8443/",
    # scheme, port and host mismatches
    "http://app.example/",
    "http://app.example:443/",
    "https://app.example:444/",
    "https://app.example:8443/",
    "https://legacy.example:8080/",
    "http://legacy.example/",
    "https://127.0.0.1/",
    "https://127.1:8443/",
    "https://2130706433:8443/",
    "https://0x7f.0.0.1:8443/",
    "https://app.example.evil.test/",
    "https://evilapp.example/",
    "https://app.example.com/",
    "https://sub.app.example/",
    "https://app.example./",
    "https://dotted.example/",
    "https://app.example../",
    "https://.app.example/",
    "https://app%2eexample/",
    "https://app.example%2f@evil.example/",
    # unicode and IDN lookalikes
    "https://\u0430pp.example/",  # Cyrillic a
    "https://app.ex\u0430mple/",
    "https://app\u3002example/",  # IDEOGRAPHIC FULL STOP, a dot to WHATWG
    "https://app\uff0eexample/",  # FULLWIDTH FULL STOP
    "https://APP.EXAMPLE\u212a/",  # KELVIN SIGN lower-cases to k
    "/\u2215evil.example",  # DIVISION SLASH
    "/\uff0f/evil.example",  # FULLWIDTH SOLIDUS
    "/caf\u00e9",
    "/\u2028",
    "/\ud800",
    # relative forms that are not absolute paths
    "",
    "evil.example",
    "evil.example/path",
    "app.example",
    "?next=x",
    "#frag",
    ".",
    "./x",
    "../x",
    "x/../../evil",
    "%2F%2Fevil.example",
    # sizes
    "/" + "a" * 2048,
    "https://app.example/" + "a" * 2029,
    "/" + "a" * 10_000,
]


@pytest.mark.parametrize("value", REJECTED)
def test_rejected(value: str) -> None:
    assert check(value) == DEFAULT


def test_rejected_none_and_non_str() -> None:
    assert check(None) == DEFAULT
    assert safe_return_to(b"/x", allowed_origins=ALLOWED) == "/"  # type: ignore[arg-type]
    assert safe_return_to(None, allowed_origins=ALLOWED) == "/"


def test_length_boundary() -> None:
    assert check("/" + "a" * 2047) == "/" + "a" * 2047
    assert check("/" + "a" * 2048) == DEFAULT
    url = "https://app.example/" + "a" * (2048 - len("https://app.example/"))
    assert check(url) == url
    assert check(url + "a") == DEFAULT


def test_http_only_if_that_exact_origin_is_allowed() -> None:
    only_https = frozenset({"https://app.example"})
    assert safe_return_to("http://app.example/x", allowed_origins=only_https) == "/"
    both = frozenset({"https://app.example", "http://app.example"})
    assert safe_return_to("http://app.example/x", allowed_origins=both) == "http://app.example/x"
    assert safe_return_to("http://app.example:80/x", allowed_origins=both) == "http://app.example/x"


def test_empty_allowlist_still_accepts_paths_only() -> None:
    none: frozenset[str] = frozenset()
    assert safe_return_to("/x", allowed_origins=none) == "/x"
    assert safe_return_to("https://app.example/x", allowed_origins=none) == "/"


def test_non_canonical_allowlist_entry_never_matches() -> None:
    sloppy = frozenset({"https://App.Example", "https://app.example:443", "https://app.example/"})
    assert safe_return_to("https://app.example/x", allowed_origins=sloppy) == "/"
    assert safe_return_to("https://App.Example/x", allowed_origins=sloppy) == "/"


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Grafana.Example.com/", "https://grafana.example.com"),
        ("https://app.example:443", "https://app.example"),
        ("http://app.example:80/x", "http://app.example"),
        ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
        ("https://[0::1]:8443/", "https://[::1]:8443"),
        ("HTTP://X.TEST:8080", "http://x.test:8080"),
        ("https://evil.example@app.example", None),
        ("ftp://app.example", None),
        ("//app.example", None),
        ("https://app.example\\x", None),
        ("https://\u0430pp.example", None),
        ("https://app.example /", None),
        ("https://a!b.example", None),
        ("https://a*b.example/", None),
        ("https://a$b.example/", None),
        ("https://a{b}.example/", None),
        ("https:///app.example", None),
        ("https://app.example:8443:1", None),
    ],
)
def test_canonical_origin(url: str, origin: str | None) -> None:
    assert canonical_origin(url) == origin


# --- property -----------------------------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "/",
        "//",
        "\\",
        "/\\",
        "%2F",
        "%5C",
        "%09",
        "%25",
        "%2e",
        ".",
        "..",
        "@",
        ":",
        "?",
        "#",
        "https:",
        "http:",
        "HTTPS://",
        "javascript:",
        "app.example",
        "evil.example",
        "127.0.0.1",
        ":8443",
        ":443",
        "[::1]",
        "\t",
        "\n",
        " ",
        "\u3002",
        "a",
        '"',
        "<",
    ]
)
_VALUES = st.one_of(
    st.text(max_size=80),
    st.lists(_PIECES, max_size=12).map("".join),
    st.tuples(
        st.sampled_from([*sorted(ALLOWED), "HTTPS://App.Example:443", "https://[0::1]:8443", "/"]),
        st.lists(_PIECES, max_size=8).map("".join),
    ).map("".join),
)


def _is_safe_result(result: str) -> bool:
    if result == DEFAULT:
        return True
    if result.startswith("/"):
        return result[1:2] not in ("/", "\\")
    for origin in ALLOWED:
        if result.startswith(origin) and result[len(origin) : len(origin) + 1] in ("", "/", "?", "#"):
            return True
    return False


@settings(deadline=None, max_examples=200)
@given(value=_VALUES)
def test_result_is_default_a_local_path_or_an_allowed_origin(value: str) -> None:
    result = check(value)
    assert _is_safe_result(result), (value, result)
    if result != DEFAULT:
        assert result.isascii()
        assert result.isprintable()
        assert " " not in result
        assert "\\" not in result
        if not result.startswith("/"):
            assert "@" not in result.split("/", 3)[2]
        assert check(result) == result


# --- idgate's own endpoints: no login loops -----------------------------------------------------------------------

IDGATE_PATHS = [
    "/.idgate/start",
    "/.idgate/start?rd=/app/",
    "/.idgate/callback?code=x&state=y",
    "/.idgate/sign_out",
    "/.idgate/backchannel-logout",
    "/.idgate/jwks.json",
    "/.idgate",
    "/.idgate/",
    "/.idgate#x",
    "/.idgate?x=1",
    # case (HAProxy's path_beg is case-sensitive; another hop may not be)
    "/.IDGATE/start",
    "/.IdGate/start",
    # percent-encoded, once, twice, in any case
    "/%2eidgate/start",
    "/%2Eidgate/start",
    "/%2e%69%64%67%61%74%65/start",
    "/%252eidgate/start",
    "/%25252Eidgate/start",
    "/.idgate%2Fstart",
    "/.idgate%2fstart",
    "/%2E%49%44%47%41%54%45/",
    # dot segments and slashes a normaliser removes (HAProxy: path-strip-dot, path-strip-dotdot, path-merge-slashes)
    "/./.idgate/start",
    "/a/../.idgate/start",
    "/a/b/../../.idgate/start",
    "/a/%2e%2e/.idgate/start",
    "/a/%252e%252e/.idgate/start",
    "/a/%2e%2e%2f.idgate/start",
    "/a%2F..%2F.idgate/start",
    "/%2e/.idgate/",
    "/..;/.idgate/start",
    # matrix parameters, backslashes
    "/.idgate;x=1/start",
    "/.idgate;/start",
    "/.idgate%5Cstart",
    "/%5C.idgate/start",
    # absolute URLs of the site and of other allowed origins: the same idgate answers /.idgate/ there
    "https://app.example/.idgate/start",
    "https://APP.EXAMPLE/%2eidgate/start",
    "https://grafana.example.com/.IDGATE/callback",
    "https://127.0.0.1:8443/./.idgate/sign_out",
    "https://[::1]:8443/.idgate",
]


@pytest.mark.parametrize("value", IDGATE_PATHS)
def test_idgates_own_endpoints_fall_back_to_the_default(value: str) -> None:
    assert check(value) == DEFAULT


@pytest.mark.parametrize(
    "value",
    [
        "/.idgatex/start",
        "/.idgate-docs/",
        "/.idgate./x",
        "/idgate/start",
        "/app/.idgate/start",
        "/app/.idgate",
        "/?rd=/.idgate/start",
        "/#/.idgate/start",
        "/app?next=%2F.idgate%2Fstart",
        "https://app.example/app/.idgate/",
        "https://app.example/?x=/.idgate/",
    ],
)
def test_paths_that_merely_mention_idgate_stay_accepted(value: str) -> None:
    assert check(value) != DEFAULT


_SEGMENTS = st.sampled_from(["", ".", "..", "%2e", "%2E%2E", "a", "app", "%252e%252e", "x;y"])
_IDGATE = st.sampled_from([".idgate", ".IDGATE", "%2eidgate", "%252Eidgate", "%2E%69dgate", ".idgate;v=1"])


@settings(deadline=None, max_examples=300)
@given(
    before=st.lists(_SEGMENTS, max_size=4),
    name=_IDGATE,
    after=st.lists(st.sampled_from(["start", "callback", "", "x"]), max_size=2),
)
def test_no_spelling_that_normalises_to_the_idgate_prefix_is_accepted(
    before: list[str], name: str, after: list[str]
) -> None:
    """Any path a normaliser turns into ``/.idgate...`` (dot segments applied, decoding, case) is never returned."""
    path = "/" + "/".join([*before, name, *after])
    depth = 0
    for segment in before:  # would this path, fully normalised, start with the idgate segment?
        plain = segment.replace("%25", "%").replace("%25", "%").lower().replace("%2e", ".").split(";")[0]
        if plain == "..":
            depth = max(depth - 1, 0)
        elif plain not in ("", "."):
            depth += 1
    if depth == 0:
        assert check(path) == DEFAULT, path
