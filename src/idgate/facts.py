"""What HAProxy tells idgate and what idgate answers: :class:`RequestFacts` in, :class:`Decision` out.

Both wire adapters (the SPOE agent, ``idgate.spoe.adapter``; the ``/auth`` endpoint, ``idgate.app``) translate to
and from these values and nothing else; :meth:`idgate.decision.DecisionEngine.decide` is the only function that
turns one into the other.

Canonical facts (what routes are matched on):
- host: lower-cased, port and trailing dot removed; must be a DNS name or a bracketed IPv6 literal;
- path: percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2), repeated slashes merged. Paths that
  different upstreams could read differently are refused with ``invalid_path`` (400): dot segments (raw or
  encoded), encoded ``/`` or ``\\``, ``\\``, ``;`` (matrix parameters), control characters, NUL.

The answer's variables (one table for every wire): HAProxy keeps idgate's answer in ``txn.idgate.<name>`` for each
name in :data:`ANSWER_VARIABLES`. The SPOE agent sets them directly (``haproxy/spoe-idgate.conf`` registers exactly
these names); the ``/auth`` endpoint sends them as the headers of :data:`ANSWER_HEADERS` (plus the HTTP status and
``Set-Cookie`` lines), which ``haproxy/idgate-auth.lua`` copies into the same variables. ``cache_ttl`` and
``cache_entry`` (a cacheable allow only: :mod:`idgate.cache_entry`) tell HAProxy to keep the answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from idgate.errors import RequestError
from idgate.principal import Principal

IDENTITY_SLOTS = ("user", "email", "name", "groups", "roles", "role", "subject", "issuer")
"""Who the caller is, rendered for the upstream (:mod:`idgate.identity`)."""
ALLOW_SLOTS = (*IDENTITY_SLOTS, "assertion", "strip_authorization", "cookie_rewrite", "cookie")
"""Every slot an allow may fill: identity, the signed assertion (a JWT), and HAProxy's instructions to delete
``Authorization`` (``"1"``) and to rewrite ``Cookie`` without idgate's own cookies (``"1"`` plus the rest)."""
MAX_SET_COOKIES = 8
"""At most this many ``Set-Cookie`` values are relayed to the client (``set_cookie_0`` … ``set_cookie_7``)."""


def _slot_header(name: str) -> str:
    return "x-idgate-" + name.replace("_", "-")


ANSWER_HEADERS: Mapping[str, str] = {
    "decision": "x-idgate-decision",
    "reason": "x-idgate-reason",
    "upstream": "x-idgate-upstream",
    **{slot: _slot_header(slot) for slot in ALLOW_SLOTS},
    "www_authenticate": "www-authenticate",
    "location": "location",
    "retry_after": "retry-after",
    "cache_ttl": "x-idgate-cache-ttl",
    "cache_entry": "x-idgate-cache-entry",
}
"""HAProxy variable name (``txn.idgate.<name>``) → the ``/auth`` response header that carries it."""
ANSWER_VARIABLES = ("status", *ANSWER_HEADERS, *(f"set_cookie_{i}" for i in range(MAX_SET_COOKIES)))
"""Every ``txn.idgate.<name>`` variable idgate may set, whichever the mode."""


_UNRESERVED_PCT = re.compile(r"%(2[dD]|2[eE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])")
_HOST_RE = re.compile(r"^(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)*$")
_BAD_PATH = re.compile(r"[\x00-\x20\x7f\\;]|%(?:2[fF]|5[cC]|3[bB]|00)")
_SLASHES = re.compile(r"/{2,}")
MAX_REQUEST_ID = 128
"""A request id longer than this many characters is dropped (HAProxy's ``unique-id-format`` makes ~40)."""
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")


def clean_request_id(value: str | None) -> str:
    """HAProxy's request id (``unique-id``) as idgate logs it: 1 to 128 printable ASCII characters without spaces, else
    ``""`` (absent or unusable). The id only joins log lines; it never changes a decision."""
    return value if value and _REQUEST_ID.fullmatch(value) else ""


def canonical_host(host: str) -> str:
    """Lower-case host without port or trailing dot. Raises RequestError ``invalid_host``."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or not re.fullmatch(r"\[[0-9a-f:.]+\]", host[: end + 1]):
            raise RequestError("invalid_host", "bad IPv6 literal")
        rest, host = host[end + 1 :], host[: end + 1]
        if rest and not re.fullmatch(r":\d{1,5}", rest):
            raise RequestError("invalid_host", "bad port")
        return host
    name, _, port = host.partition(":")
    name = name.removesuffix(".")
    if (port and not port.isdigit()) or len(name) > 253 or not _HOST_RE.match(name):
        raise RequestError("invalid_host", "host is not a DNS name")
    return name


def canonical_path(path: str) -> str:
    """The path routes are matched on. Raises RequestError ``invalid_path`` for ambiguous paths."""
    if not path.startswith("/") or len(path) > 8192:
        raise RequestError("invalid_path", "path must be absolute and under 8 KiB")
    path = _UNRESERVED_PCT.sub(lambda m: chr(int(m.group(1), 16)), path)
    if _BAD_PATH.search(path):
        raise RequestError("invalid_path", "encoded slash, backslash, ';' or control character in path")
    path = _SLASHES.sub("/", path)
    if any(seg in (".", "..") for seg in path.split("/")):
        raise RequestError("invalid_path", "dot segment in path")
    return path


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestFacts:
    """What HAProxy computed about the client request. Never re-derived from client-controlled headers.

    ``path`` is HAProxy's normalised path without the query; ``authorization`` holds every client copy of the
    Authorization header (more than one is a 400). ``request_id`` is HAProxy's ``unique-id`` for this request
    (:func:`clean_request_id`; ``""`` when absent): logged on the audit line to join it to HAProxy's log line, never
    used to decide.
    """

    method: str
    host: str
    path: str
    query: str = ""
    source: str = ""
    authorization: tuple[str, ...] = ()
    cookie: str | None = None
    accept: str | None = None
    requested_with: str | None = None
    fetch_mode: str | None = None
    content_type: str | None = None
    request_id: str = ""

    def is_navigation(self) -> bool:
        """A browser page navigation (may be redirected to login); XHR, JSON, gRPC and API calls are not."""
        return (
            self.method in ("GET", "HEAD")
            and "text/html" in (self.accept or "")
            and self.requested_with is None
            and self.fetch_mode in (None, "navigate")
            and not (self.content_type or "").startswith("application/grpc")
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The answer. ``reasons`` are reason codes; ``identity`` maps slots of :data:`ALLOW_SLOTS` to their values
    (an allow only; each adapter puts them on its own wire). ``retry_after``: on a 503 for a server-side outage,
    whole seconds after which the client may retry (``Retry-After``, RFC 9110 §10.2.3). ``cache_ttl`` (seconds,
    > 0 when HAProxy may reuse this allow) and ``cache_entry`` (the map value): :mod:`idgate.cache_entry`."""

    status: int
    reasons: tuple[str, ...]
    route: str | None = None
    upstream: str | None = None
    principal: Principal | None = None
    identity: Mapping[str, str] = field(default_factory=dict)
    www_authenticate: str | None = None
    location: str | None = None
    set_cookies: tuple[str, ...] = ()
    retry_after: int | None = None
    cache_ttl: int = 0
    cache_entry: str = ""

    def with_cache(self, *, ttl: int, entry: str) -> Decision:
        """This allow, marked reusable by HAProxy for ``ttl`` seconds as ``entry`` (:mod:`idgate.cache_entry`)."""
        return replace(self, cache_ttl=ttl, cache_entry=entry)

    @property
    def allow(self) -> bool:
        """True only for an explicit 200."""
        return self.status == 200
