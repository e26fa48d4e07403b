"""The policy: routes (host + path → upstream, rule), role mapping, and the allow rule check.

Matching works on canonical facts only:
- host: lower-cased, port and trailing dot removed; must be a DNS name or a bracketed IPv6 literal;
- path: percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2), repeated slashes merged. Paths that
  different upstreams could read differently are refused with ``invalid_path`` (400): dot segments (raw or
  encoded), encoded ``/`` or ``\\``, ``\\``, ``;`` (matrix parameters), control characters, NUL.
Paths are case-sensitive (RFC 3986 §6.2.2.1). Prefix routes match on segment boundaries: ``/admin`` matches
``/admin`` and ``/admin/x`` but not ``/administrator``. gRPC routes match ``/pkg.Service/Method`` exactly, or
``/pkg.Service/*`` for any one method segment (gRPC over HTTP/2, "Path"). First match wins; no match is a deny.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from idgate.config import Config, RouteConfig, UpstreamConfig
from idgate.errors import RequestError
from idgate.principal import Principal

_UNRESERVED_PCT = re.compile(r"%(2[dD]|2[eE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])")
_HOST_RE = re.compile(r"^(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)*$")
_BAD_PATH = re.compile(r"[\x00-\x20\x7f\\;]|%(?:2[fF]|5[cC]|3[bB]|00)")
_SLASHES = re.compile(r"/{2,}")


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
class Grant:
    """The result of checking a route's rule for a principal: allowed or not, and why (reason codes)."""

    allowed: bool
    reasons: tuple[str, ...]
    roles: tuple[str, ...]


class Policy:
    """Routes and role sets of one configuration. Immutable after construction."""

    def __init__(self, *, config: Config) -> None:
        self._routes = config.routes
        # per route: the "/pkg.Service/" prefix of a "/pkg.Service/*" gRPC route, computed once, not per request
        self._grpc_services = {r.name: r.grpc[:-1] for r in config.routes if r.grpc and r.grpc.endswith("/*")}
        self._upstreams = dict(config.upstreams)
        self._role_sets = dict(config.role_sets)

    def match(self, host: str, path: str) -> RouteConfig | None:
        """First route whose host and path match canonical ``host`` and ``path``; None when none does."""
        for route in self._routes:
            if route.host != "*" and route.host != host:
                continue
            if route.grpc is not None:
                service = self._grpc_services.get(route.name)
                if service is None:
                    if path == route.grpc:
                        return route
                elif path.startswith(service) and len(path) > len(service) and "/" not in path[len(service) :]:
                    return route
            elif route.match == "exact":
                if path == route.path:
                    return route
            elif route.path == "/" or path == route.path.rstrip("/") or path.startswith(route.path.rstrip("/") + "/"):
                return route
        return None

    def upstream(self, route: RouteConfig) -> UpstreamConfig:
        """The upstream profile a route forwards to."""
        return self._upstreams[route.upstream]

    def roles_for(self, upstream: UpstreamConfig, groups: tuple[str, ...]) -> tuple[str, ...]:
        """Roles granted by ``groups`` in the upstream's role set, in ascending privilege order."""
        if upstream.role_set is None:
            return ()
        role_set = self._role_sets[upstream.role_set]
        granted = {role for g in groups for role in role_set.from_groups.get(g, ())}
        return tuple(r for r in role_set.roles if r in granted)

    def check(self, route: RouteConfig, principal: Principal) -> Grant:
        """Does ``principal`` satisfy the (non-public) route's allow rule? Any listed condition suffices."""
        roles = self.roles_for(self.upstream(route), principal.groups)
        rule = route.allow
        if rule is None:  # unreachable after validation; fail closed anyway
            return Grant(allowed=False, reasons=("no_rule",), roles=roles)
        if rule.authenticated:
            return Grant(allowed=True, reasons=("authenticated",), roles=roles)
        if any(r in roles for r in rule.roles):
            return Grant(allowed=True, reasons=("role_granted",), roles=roles)
        if any(g in principal.groups for g in rule.groups):
            return Grant(allowed=True, reasons=("group_granted",), roles=roles)
        return Grant(allowed=False, reasons=("missing_role_or_group",), roles=roles)
