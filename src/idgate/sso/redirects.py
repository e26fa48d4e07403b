"""Return-URL validation after login and logout: the open-redirect defence.

Sources: RFC 9700 §4.11 (open redirectors), the WHATWG URL Standard (how browsers actually parse: special schemes
treat ``\\`` as ``/``, skip extra slashes, strip TAB/LF/CR, percent-decode hosts), OWASP Unvalidated Redirects and
Forwards cheat sheet, and ../shared notes "security" rule 4 (allowlists are exact).

A value is accepted only in one of two forms; anything else gives ``default`` (the caller's, trusted as is):

1. A same-site absolute path: ``/`` then anything but ``/`` or ``\\`` (``//host`` and ``/\\host`` are network-path
   references to another host in browsers). It is returned unchanged apart from the escaping below.
2. An absolute ``https://`` or ``http://`` URL whose origin is in ``allowed_origins``, compared exactly after a
   WHATWG-style canonicalisation: scheme and host lower-cased, the default port (443, 80) dropped, leading zeros of
   the port dropped, an IPv6 literal kept in brackets and compressed (``[0:0::1]`` -> ``[::1]``). The scheme must be
   followed by exactly ``//``. The authority may hold no userinfo (any ``@``), no ``%`` and only ``a-z 0-9 . - _``
   as host characters (so no IDN or Unicode lookalike, no percent-encoded dot). A trailing-dot host is a different
   host unless exactly allowed. It is returned as ``origin`` + path (``/`` when empty) + query + fragment.

Refused in both forms:

- any character outside printable ASCII: space, TAB, CR, LF, NUL, DEL, other controls, non-ASCII (browsers strip
  TAB/LF/CR and would read ``/\\t/evil`` as ``//evil``; request targets are ASCII on the wire, so a legitimate
  return path never needs a raw non-ASCII character);
- a backslash anywhere; a value over 2048 characters; an empty value;
- a path whose first character after the leading ``/`` is a percent-encoded ``/``, ``\\``, ``%``-then-one-of-those
  (double encoding), control character or space (``/%2F/evil``, ``/%5C/evil``, ``/%09/evil``, ``/%252F/evil``), so
  no later decoding step can turn it into ``//evil``;
- a path with a dot segment (``.``, ``..``, ``%2e`` …): browsers never send one, and ``/..//evil`` resolves to the
  path ``//evil``, which client-side code may then follow;
- a path into idgate's own endpoints, ``/.idgate`` and below (HAProxy sends ``/.idgate/`` straight to idgate: a
  login that returns to ``/.idgate/start`` would start another login, a loop). The path is read the way any hop
  could read it, more eagerly than HAProxy's ``normalize-uri`` rules: ``%XX`` decoded until nothing changes
  (``/%2eidgate/``, ``/%252eidgate/``), lower-cased (``/.IDGATE/``), ``\\`` taken as ``/``, empty and ``.``
  segments dropped and ``..`` applied (``//.idgate``, ``/./.idgate``, ``/x/%2e%2e/.idgate``), ``;params`` cut from a
  segment (``/.idgate;x/``); whatever then comes first, ``.idgate`` means refused. In both forms: an allowed
  origin's ``/.idgate/`` is idgate's too;
- every other scheme (``javascript:``, ``data:``, ``JaVaScRiPt:`` …) and the forms ``https:evil``, ``https:/evil``,
  ``https:///evil``.

Escaping: ``"``, ``<``, ``>`` and a backtick are percent-encoded in the returned value, as browsers do in paths
(so it can also sit in a double-quoted HTML attribute; the caller still escapes ``&``). ``'`` is left alone:
browsers keep it raw in paths and fragments, and some apps (Kibana's rison) rely on that.

``allowed_origins`` must hold canonical origins (as :func:`canonical_origin` returns them); a non-canonical entry
simply never matches (fails closed).
"""

from __future__ import annotations

import ipaddress
import re

MAX_RETURN_TO = 2048
DEFAULT_PORTS = {"https": 443, "http": 80}

_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_HOST = re.compile(r"[a-z0-9._-]+")
_PORT = re.compile(r"[0-9]{0,5}")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_DOT_SEGMENTS = frozenset({".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"})
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
RESERVED_SEGMENT = ".idgate"
"""The first path segment of idgate's own endpoints (``/.idgate/start``, ``callback``, ``sign_out`` …)."""
_HTML_SPECIAL = str.maketrans({'"': "%22", "<": "%3C", ">": "%3E", "`": "%60"})


def _first_char_safe(after_slash: str) -> bool:
    """The first character after the leading ``/``, decoding ``%XX`` (and ``%25XX`` …) repeatedly, is harmless."""
    rest = after_slash
    while rest.startswith("%") and _HEX2.fullmatch(rest[1:3]):
        char = chr(int(rest[1:3], 16))
        if char in "/\\" or char <= "\x20" or char == "\x7f":
            return False
        if char != "%":
            return True
        rest = "%" + rest[3:]
    return not rest.startswith(("/", "\\"))


def _first_segment(path_only: str) -> str:
    """The first segment of ``path_only`` (no query or fragment) once fully decoded and normalised (see the module
    docstring): what the most eager hop would route on; ``""`` for the root."""
    for _ in range(8):  # every round removes at least one "%" level; 8 is far beyond any real double encoding
        decoded = _PCT.sub(lambda m: chr(int(m.group(1), 16)), path_only)
        if decoded == path_only:
            break
        path_only = decoded
    segments: list[str] = []
    for raw in path_only.lower().replace("\\", "/").split("/"):
        segment = raw.split(";", 1)[0]
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return segments[0] if segments else ""


def _safe_path(path: str) -> bool:
    """``path`` (with query and fragment) is an absolute path that stays on this origin however it is decoded,
    outside idgate's own ``/.idgate`` endpoints."""
    if not path.startswith("/") or not _first_char_safe(path[1:]):
        return False
    path_only = path.split("?", 1)[0].split("#", 1)[0]
    if any(segment.lower() in _DOT_SEGMENTS for segment in path_only.split("/")):
        return False
    return _first_segment(path_only) != RESERVED_SEGMENT


def _canonical_host(host: str) -> str | None:
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    host = host.lower()
    return host if _HOST.fullmatch(host) else None


def _split_absolute(value: str) -> tuple[str, str] | None:
    """``(canonical origin, path-query-fragment)`` of an absolute http(s) URL, or None if it is not a clean one."""
    scheme_match = _SCHEME.match(value)
    if scheme_match is None:
        return None
    scheme = scheme_match.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        return None
    rest = value[scheme_match.end() :]
    if not rest.startswith("//"):
        return None
    rest = rest[2:]
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if not authority or "@" in authority or "%" in authority:  # empty: https:///evil.example (browsers skip slashes)
        return None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None
        host_text, port_text = authority[: close + 1], authority[close + 1 :]
    else:
        host_text, colon, port_text = authority.partition(":")
        port_text = colon + port_text
    if port_text and (not port_text.startswith(":") or not _PORT.fullmatch(port_text[1:])):
        return None
    host = _canonical_host(host_text)
    if host is None:
        return None
    port = int(port_text[1:]) if port_text[1:] else None
    if port is not None and not 0 < port <= 65535:
        return None
    origin = f"{scheme}://{host}" if port in (None, DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"
    if not tail.startswith("/"):
        tail = "/" + tail
    return origin, tail


def canonical_origin(url: str) -> str | None:
    """The canonical origin of an absolute http(s) URL (``"https://app.example"``), or None if it is not clean."""
    if not isinstance(url, str) or not _PRINTABLE_ASCII.fullmatch(url) or "\\" in url:
        return None
    split = _split_absolute(url)
    return None if split is None else split[0]


def safe_return_to(value: str | None, *, allowed_origins: frozenset[str], default: str = "/") -> str:
    """``value`` normalised if it is a safe place to send the browser after login or logout, else ``default``."""
    if not isinstance(value, str) or len(value) > MAX_RETURN_TO:
        return default
    if not _PRINTABLE_ASCII.fullmatch(value) or "\\" in value:
        return default
    if value.startswith("/"):
        return value.translate(_HTML_SPECIAL) if _safe_path(value) else default
    split = _split_absolute(value)
    if split is None:
        return default
    origin, tail = split
    if origin not in allowed_origins or not _safe_path(tail):
        return default
    return origin + tail.translate(_HTML_SPECIAL)
