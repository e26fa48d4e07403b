"""``idgate explain``: the decision the real policy gives a described request, and why.

The request (method, host, path) becomes :class:`~idgate.facts.RequestFacts` and goes through the same
:meth:`DecisionEngine.decide <idgate.decision.DecisionEngine.decide>` as ``idgate serve`` (route → authn → rule →
identity); nothing of the policy is re-implemented here. Only the authentication step differs with the caller:

- a bearer token, verified (:class:`Caller` ``verify=True``): the real :class:`~idgate.authn.Authenticator` and
  :class:`~idgate.verifier.Verifier` against the issuer's JWKS, fetched over the network as ``serve`` does;
- a token with ``verify=False``, claims, or a user and groups: an :class:`~idgate.authn.Authenticator` stand-in that
  answers that :class:`~idgate.principal.Principal` (no network); the output says the caller was not verified;
- nothing: the real authenticator without a credential (401 ``missing_credentials``).

The identity values are rendered as the upstream's headers (:mod:`idgate.ops.upstream_headers`); a signed
assertion is never minted or printed, only named. No audit line or metric is written.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from idgate.audit import AuditLog
from idgate.authn import Authenticated, Authenticator, Refused
from idgate.config import Config, IssuerConfig, RouteConfig
from idgate.decision import DecisionEngine
from idgate.errors import RequestError
from idgate.facts import Decision, RequestFacts
from idgate.jwks import JwksCache
from idgate.ops.upstream_headers import upstream_headers
from idgate.principal import Principal, principal_from_claims
from idgate.verifier import TrustedIssuer, Verifier, split_compact_jws

ASSERTION_PLACEHOLDER = "<signed JWT for aud {audience}, minted per request; not shown>"


@dataclass(frozen=True, kw_only=True, slots=True)
class Caller:
    """Who asks. At most one of ``token``, ``claims``, ``user``; ``verify`` applies to ``token`` only.
    ``issuer`` is the configured issuer's ``name`` (default: the claims' ``iss`` if configured, else the first)."""

    token: str | None = None
    verify: bool = True
    claims: Mapping[str, Any] | None = None
    user: str | None = None
    groups: tuple[str, ...] = ()
    email: str | None = None
    issuer: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Explanation:
    """What :func:`explain` found: the facts asked, how the caller was established, the engine's decision, the
    matched route and its rule (as written in the config), and the headers the upstream would get."""

    facts: RequestFacts
    caller: str
    verified: bool
    decision: Decision
    route: RouteConfig | None
    headers: Mapping[str, str]


class _GivenPrincipal(Authenticator):
    """The engine's authentication step answering one given principal (claims, user and groups, unverified token)."""

    def __init__(self, principal: Principal) -> None:  # no verifier: nothing is verified
        self._principal = principal

    async def authenticate(self, facts: RequestFacts) -> Authenticated | Refused:
        return Authenticated(principal=self._principal, cache_key=f"explain:{self._principal.subject}")


def request_facts(method: str, target: str, *, host: str | None = None) -> RequestFacts:
    """Facts for ``method`` and ``target`` (a path or an ``https://host/path?query`` URL); ``host`` overrides the
    URL's (default ``localhost``). Raises RequestError ``invalid_path`` for a target without an absolute path."""
    url = httpx.URL(target)
    if not url.path.startswith("/"):
        raise RequestError("invalid_path", "the target must be a path (/admin) or an absolute URL")
    authority = host or (url.netloc.decode("ascii") if url.host else "localhost")
    return RequestFacts(method=method.upper(), host=authority, path=url.path, query=url.query.decode("ascii"))


def _issuer(config: Config, name: str | None, iss: object = None) -> IssuerConfig:
    for issuer in config.issuers:
        if issuer.name == name or (name is None and issuer.issuer == iss):
            return issuer
    if name is not None:
        raise RequestError("unknown_issuer", f"no issuer named {name!r} in the config")
    return config.issuers[0]


def _given(config: Config, caller: Caller) -> tuple[Principal, str]:
    """The principal a caller describes without verification, and how it was given."""
    if caller.token is not None:
        _, claims, _ = split_compact_jws(caller.token, max_bytes=64 * 1024)
        issuer = _issuer(config, caller.issuer, claims.get("iss"))
        return principal_from_claims(claims, paths=issuer.claims), "token, NOT verified (--no-verify)"
    if caller.claims is not None:
        issuer = _issuer(config, caller.issuer, caller.claims.get("iss"))
        claims = {"iss": issuer.issuer, **caller.claims}
        return principal_from_claims(claims, paths=issuer.claims), "claims given on the command line, not verified"
    assert caller.user is not None
    issuer = _issuer(config, caller.issuer)
    principal = Principal(
        issuer=issuer.issuer,
        subject=caller.user,
        username=caller.user,
        email=caller.email,
        name=None,
        groups=caller.groups,
        expires_at=time.time() + 300,
        email_verified=caller.email is not None,
    )
    return principal, "user and groups given on the command line, not verified"


def _client(issuer: IssuerConfig) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=issuer.ca_file) if issuer.ca_file else True
    return httpx.AsyncClient(verify=verify, follow_redirects=False, trust_env=False)


async def explain(config: Config, facts: RequestFacts, caller: Caller) -> Explanation:
    """Decide ``facts`` for ``caller`` with ``config``'s policy through :meth:`DecisionEngine.decide`.

    Raises:
        RequestError: ``unknown_issuer`` for an ``issuer`` name the config does not have.
        CredentialError: a token that is not a compact JWS (``--no-verify`` only; a verified token's problems are
            the decision's reason codes).
    """
    quiet = logging.getLogger("idgate.explain.audit")
    quiet.propagate, quiet.disabled = False, True
    audit = AuditLog(logger=quiet)
    verified = caller.token is not None and caller.verify
    clients: list[httpx.AsyncClient] = []
    try:
        if verified or (caller.token is None and caller.claims is None and caller.user is None):
            caches = []
            for issuer in config.issuers:
                clients.append(_client(issuer))
                caches.append(JwksCache(config=issuer, client=clients[-1], dev_mode=config.dev_mode))
            if verified:
                for cache in caches:
                    await cache.refresh()  # as serve's warm-up; a failure is the decision's keys_unavailable
            trusted = {c.config.issuer: TrustedIssuer(config=c.config, keys=c) for c in caches}
            authenticator = Authenticator(verifier=Verifier(issuers=trusted))
            how = "bearer token, verified against the issuer's keys" if verified else "no credential"
            if caller.token is not None:
                facts = _with_token(facts, caller.token)
        else:
            principal, how = _given(config, caller)
            authenticator = _GivenPrincipal(principal)
        engine = DecisionEngine(config=config, authenticator=authenticator, audit=audit)
        decision = await engine.decide(facts)
    finally:
        for client in clients:
            await client.aclose()
    route = next((r for r in config.routes if r.name == decision.route), None)
    identity = dict(decision.identity) if decision.allow else {}
    upstream = config.upstreams.get(decision.upstream or "")
    if decision.allow and upstream is not None and upstream.assertion_audience and config.assertion is not None:
        identity["assertion"] = ASSERTION_PLACEHOLDER.format(audience=upstream.assertion_audience)
    shown = RequestFacts(method=facts.method, host=facts.host, path=facts.path, query=facts.query)
    return Explanation(
        facts=shown,
        caller=how,
        verified=verified,
        decision=decision,
        route=route,
        headers=upstream_headers(decision.upstream, identity),
    )


def _with_token(facts: RequestFacts, token: str) -> RequestFacts:
    return RequestFacts(
        method=facts.method, host=facts.host, path=facts.path, query=facts.query, authorization=(f"Bearer {token}",)
    )


def rule_text(route: RouteConfig | None) -> str:
    """The route's rule as configured: ``public``, or ``allow`` with its conditions (any one suffices)."""
    if route is None:
        return "none (no route matches: deny)"
    if route.public:
        return "public: true"
    allow = route.allow
    if allow is None:
        return "none"
    parts = (["authenticated"] if allow.authenticated else []) + [
        f"{kind}: {', '.join(values)}" for kind, values in (("roles", allow.roles), ("groups", allow.groups)) if values
    ]
    return "allow " + " or ".join(parts)


def as_json(e: Explanation) -> dict[str, object]:
    """The ``--json`` document: ``request``, ``caller``, ``decision``, ``route``, ``principal``, ``headers``."""
    p, d, r = e.decision.principal, e.decision, e.route
    return {
        "request": {"method": e.facts.method, "host": e.facts.host, "path": e.facts.path, "query": e.facts.query},
        "caller": {"how": e.caller, "verified": e.verified},
        "decision": {"allow": d.allow, "status": d.status, "reasons": list(d.reasons)},
        "route": None if r is None else {"name": r.name, "upstream": r.upstream, "rule": rule_text(r)},
        "principal": None
        if p is None
        else {"iss": p.issuer, "sub": p.subject, "username": p.username, "email": p.email, "groups": list(p.groups)},
        "headers": dict(e.headers),
    }


def render_text(e: Explanation) -> str:
    """The human screen: one ``label  value`` line per fact, then the upstream's headers."""
    d, p = e.decision, e.decision.principal
    target = e.facts.path + (f"?{e.facts.query}" if e.facts.query else "")
    lines = [
        f"request    {e.facts.method} {e.facts.host} {target}",
        f"caller     {e.caller}",
    ]
    if p is not None:
        groups = ", ".join(p.groups) or "-"
        lines.append(f"principal  {p.username or p.subject} (iss {p.issuer}, sub {p.subject}) groups: {groups}")
    lines += [
        f"decision   {'ALLOW' if d.allow else 'DENY'} {d.status}",
        f"reasons    {', '.join(d.reasons)}",
        f"route      {e.route.name + ' -> upstream ' + e.route.upstream if e.route else '-'}",
        f"rule       {rule_text(e.route)}",
    ]
    if not e.headers:
        lines.append("headers    none (a deny sends no identity upstream)" if not d.allow else "headers    none")
    for index, (name, value) in enumerate(e.headers.items()):
        lines.append(f"{'headers' if index == 0 else '':<10} {name}: {value}")
    return "\n".join(lines) + "\n"
