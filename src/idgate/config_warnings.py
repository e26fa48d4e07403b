"""Warnings about a valid configuration: legal, but likely not what its author meant.

``idgate check-config`` prints them on stderr (exit 0) and ``idgate serve`` logs them at startup:

- a ``public: true`` route on ``/`` (prefix): every path no earlier route matches is public;
- a public route whose prefix covers a protected route: before it (first match wins), the protected route is
  never reached; after it, every path under the prefix that the protected route does not match is public;
- an upstream with ``profile: looker``, the deprecated name of ``gate`` (docs/looker.md);
- group names that differ only by case or surrounding spaces (``Admins``, ``admins ``), anywhere in
  ``role_sets.*.from_groups`` and ``routes[].allow.groups``: IdP groups are compared exactly, so all but the
  IdP's own spelling are dead;
- provider presets (:mod:`idgate.presets`) met with settings that defeat them: ``trust_unverified_email: true`` on
  an Entra ID issuer (its ``email`` is user-editable: "nOAuth"); a Google issuer, which sends no groups, while
  ``from_groups`` or ``allow.groups`` are the only ways to a role or a route (no ``role_sets.*.default``).
- several login IdPs (``login.issuers``) sharing ``/.idgate/callback`` (no ``.../callback/<name>`` of their own):
  among them the mix-up defence rests on RFC 9207 ``iss`` alone.
- a ``cache`` section with ``enabled: true`` (the default) but no ``haproxy.runtime_api``: idgate could not purge
  HAProxy's entries (a sign-out would not reach them), so it marks nothing cacheable and the cache stays empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from idgate.config import Config, RouteConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class _Scope:
    """The requests a route matches: ``path`` alone, or with ``prefix`` also every path below it."""

    host: str
    path: str
    prefix: bool


def config_warnings(config: Config) -> tuple[str, ...]:
    """Every warning about ``config``, one line each, in file order."""
    return (
        *_public_route_warnings(config.routes),
        *_group_warnings(config),
        *_provider_warnings(config),
        *_profile_warnings(config),
        *_login_warnings(config),
        *_cache_warnings(config),
    )


def _login_warnings(config: Config) -> list[str]:
    login = config.login
    if login is None or len(login.issuer_names) < 2:
        return []
    own = {uri.rsplit("/", 1)[1] for uri in login.redirect_uris if not uri.endswith("/.idgate/callback")}
    sharing = [name for name in login.issuer_names if name not in own]
    if len(sharing) < 2:
        return []
    return [
        f"login.issuers: {', '.join(sharing)} share /.idgate/callback: which IdP answered is then told by RFC 9207 "
        "iss alone; give each its own redirect URI https://<host>/.idgate/callback/<name> unless every one of them "
        "advertises authorization_response_iss_parameter_supported"
    ]


def _profile_warnings(config: Config) -> list[str]:
    return [
        f"upstreams.{name}: profile looker is deprecated, use gate (the same behaviour: Looker ignores X-Auth-* "
        "headers and signs users in itself); for idgate to decide Looker roles use looker_embed (docs/looker.md)"
        for name, upstream in config.upstreams.items()
        if upstream.profile == "looker"
    ]


def _cache_warnings(config: Config) -> tuple[str, ...]:
    if "cache" in config.model_fields_set and config.cache.enabled and not config.haproxy.runtime_api:
        return (
            "cache.enabled but no haproxy.runtime_api: idgate cannot purge HAProxy's decision cache, so it marks no "
            "answer cacheable (list HAProxy's stats sockets, or set cache.enabled: false)",
        )
    return ()


def _scope(route: RouteConfig) -> _Scope:
    if route.grpc is not None:
        service = route.grpc.removesuffix("/*")
        return _Scope(host=route.host, path=service, prefix=service != route.grpc)
    if route.match == "exact":
        return _Scope(host=route.host, path=route.path, prefix=False)
    return _Scope(host=route.host, path=route.path.rstrip("/") or "/", prefix=True)


def _covers(outer: _Scope, inner: _Scope) -> bool:
    """Does ``outer`` match every request ``inner`` matches, on at least one host they share?"""
    if "*" not in (outer.host, inner.host) and outer.host != inner.host:
        return False
    if not outer.prefix:
        return not inner.prefix and inner.path == outer.path
    return outer.path == "/" or inner.path == outer.path or inner.path.startswith(outer.path + "/")


def _public_route_warnings(routes: tuple[RouteConfig, ...]) -> list[str]:
    warnings = []
    for i, public in enumerate(routes):
        if not public.public:
            continue
        scope = _scope(public)
        covered = [(j, r.name) for j, r in enumerate(routes) if not r.public and _covers(scope, _scope(r))]
        before, after = [name for j, name in covered if j < i], [name for j, name in covered if j > i]
        root = scope.prefix and scope.path == "/"
        parts = ["makes every path public that no earlier route matches"] if root else []
        if before and not root:
            parts.append(
                f"covers the protected routes {before} before it: any path below it they do not match is public"
            )
        if after:
            parts.append(f"hides the protected routes {after} after it: first match wins, they are never reached")
        if parts:
            host = "any host" if public.host == "*" else public.host
            where = f"gRPC {public.grpc}" if public.grpc else f"{public.path} ({public.match})"
            warnings.append(f"routes.{i} ({public.name}): public: true on {host} {where} " + "; ".join(parts))
    return warnings


def _group_warnings(config: Config) -> list[str]:
    places: dict[str, dict[str, list[str]]] = {}  # normalised name → spelling → where it is used
    named = [(f"role_sets.{n}.from_groups", tuple(rs.from_groups)) for n, rs in config.role_sets.items()]
    named += [(f"routes.{i}.allow.groups", r.allow.groups) for i, r in enumerate(config.routes) if r.allow]
    for where, groups in named:
        for group in groups:
            places.setdefault(group.strip().casefold(), {}).setdefault(group, []).append(where)
    warnings = []
    for spellings in places.values():
        used = ", ".join(sorted({w for ws in spellings.values() for w in ws}))
        if len(spellings) > 1:
            names = " and ".join(repr(g) for g in spellings)
            warnings.append(
                f"groups {names} differ only by case or surrounding spaces ({used}): IdP groups are compared "
                "exactly, so only the spelling the IdP sends can match"
            )
        elif (group := next(iter(spellings))) != group.strip():
            warnings.append(f"group {group!r} has surrounding spaces ({used}): IdP groups are compared exactly")
    return warnings


def _provider_warnings(config: Config) -> list[str]:
    warnings = []
    for i, issuer in enumerate(config.issuers):
        if issuer.provider == "entra" and issuer.trust_unverified_email:
            warnings.append(
                f"issuers.{i} ({issuer.name}): trust_unverified_email on Entra ID, whose email users can edit "
                "(nOAuth): anyone can claim another user's address"
            )
    google_only = bool(config.issuers) and all(i.provider == "google" for i in config.issuers)
    if google_only:
        for name, rs in config.role_sets.items():
            if rs.from_groups and rs.default is None:
                warnings.append(
                    f"role_sets.{name}: Google sends no groups, so from_groups never grants a role; set default "
                    "for a role every signed-in user gets"
                )
    return warnings
