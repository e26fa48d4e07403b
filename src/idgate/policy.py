"""The policy: routes (host + path → upstream, rule), role mapping, and the allow rule check.

Matching works on canonical facts only (:func:`idgate.facts.canonical_host`, :func:`idgate.facts.canonical_path`).
Paths are case-sensitive (RFC 3986 §6.2.2.1). Prefix routes match on segment boundaries: ``/admin`` matches
``/admin`` and ``/admin/x`` but not ``/administrator``. gRPC routes match ``/pkg.Service/Method`` exactly, or
``/pkg.Service/*`` for any one method segment (gRPC over HTTP/2, "Path"). First match wins; no match is a deny.
"""

from __future__ import annotations

from dataclasses import dataclass

from idgate.config import Config, RouteConfig, UpstreamConfig
from idgate.principal import Principal


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
        """Roles granted by ``groups`` in the upstream's role set, plus the set's explicit ``default`` role (granted
        to any authenticated principal), in ascending privilege order."""
        if upstream.role_set is None:
            return ()
        role_set = self._role_sets[upstream.role_set]
        granted = {role for g in groups for role in role_set.from_groups.get(g, ())}
        if role_set.default is not None:
            granted.add(role_set.default)
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
