"""Read, resolve and validate the configuration file, reporting every problem at once.

``load_config(path)`` returns a :class:`~idgate.config.Config` or raises :class:`~idgate.errors.ConfigError` whose
``problems`` lists every structural problem (pydantic collects them all) and every cross-reference problem (routes
naming unknown upstreams, roles missing from a role set, unresolvable secrets). Secret values never appear in a
problem or in the summary.

Secrets: a key ``X`` that holds a secret is given as ``X_env: VARIABLE`` or ``X_file: /path``, never inline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from idgate.config import GRAFANA_ADMIN, GRAFANA_ROLES, NAME_RE, Config
from idgate.config_checks import (
    assertion_key_problems,
    ca_bundle_problems,
    key_ring_problems,
    secret_problems,
)
from idgate.config_files import load_yaml, read_text
from idgate.errors import ConfigError
from idgate.presets import apply_presets
from idgate.tls import check_tls_files

UNRESOLVED = "<unresolved>"  # a secret whose source is given but unusable; only ever in a refused config


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None, workers: int | None = None
) -> Config:
    """Load and validate the YAML config at ``path``; ``workers`` (``idgate serve --workers``) replaces
    ``server.workers`` before validation, so that its problems are listed with the others.

    Raises:
        ConfigError: with every problem found (an unreadable, binary or non-UTF-8 file, YAML syntax or a value
            PyYAML cannot construct, duplicate keys, schema, cross references, secrets and key files); never another
            exception.
    """
    text = read_text(path)
    try:
        raw, duplicates = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    except Exception as exc:  # PyYAML's constructors raise what they meet: ValueError (2001-13-01, !!int abc, 5000
        # digits), IndexError (!!int ""), KeyError (!!bool ""), AttributeError (!!timestamp ""), RecursionError ([[[…)
        raise ConfigError([f"{path}: not valid YAML: {type(exc).__name__}: {str(exc)[:120]}"]) from None
    if workers is not None and isinstance(raw, dict):
        server = raw.get("server")
        raw["server"] = {**(server if isinstance(server, dict) else {}), "workers": workers}
    try:
        config = parse_config(raw, environ=os.environ if environ is None else environ, base_dir=Path(path).parent)
    except ConfigError as exc:
        raise ConfigError([*duplicates, *exc.problems]) from None
    if duplicates:
        raise ConfigError(list(duplicates))
    return config


def parse_config(raw: object, *, environ: Mapping[str, str], base_dir: Path | None = None) -> Config:
    """Validate an already-parsed document; relative file paths resolve against ``base_dir``.

    Raises:
        ConfigError: listing every problem.
    """
    if not isinstance(raw, dict):
        raise ConfigError(["the config file must be a YAML mapping"])
    problems: list[str] = []
    data = apply_presets(_resolve_secrets(raw, environ, problems, base_dir or Path.cwd()))
    problems += _cross_reference_problems(data)
    config: Config | None = None
    try:
        config = Config.model_validate(data, context={"dev_mode": data.get("dev_mode") is True})
    except ValidationError as exc:
        problems += [_format_error(err) for err in exc.errors(include_url=False, include_input=False)]
    if problems or config is None:
        raise ConfigError(sorted(dict.fromkeys(problems)))
    return config


def _format_error(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{loc}: {msg}"


def _resolve_secrets(
    raw: dict[str, Any], environ: Mapping[str, str], problems: list[str], base_dir: Path
) -> dict[str, Any]:
    """Replace ``X_env`` / ``X_file`` with the secret value ``X``; resolve and check the files named."""
    data = dict(raw)
    issuers = data.get("issuers")
    if isinstance(issuers, list):
        resolved: list[Any] = []
        for i, issuer in enumerate(issuers):
            if isinstance(issuer, dict):
                issuer = dict(issuer)
                if isinstance(issuer.get("ca_file"), str):
                    issuer["ca_file"] = str(base_dir / issuer["ca_file"])
                    if _read(issuer["ca_file"], f"issuers.{i}.ca_file", problems) is not None:
                        problems += [f"issuers.{i}.ca_file: {p}" for p in ca_bundle_problems(Path(issuer["ca_file"]))]
                _resolve_secret(issuer, "client_secret", f"issuers.{i}", environ, problems, base_dir, secret_problems)
            resolved.append(issuer)
        data["issuers"] = resolved
    if isinstance(data.get("sessions"), dict):
        data["sessions"] = dict(data["sessions"])
        _resolve_secret(data["sessions"], "keys", "sessions", environ, problems, base_dir, key_ring_problems)
    if isinstance(data.get("store"), dict):
        data["store"] = _resolve_store(dict(data["store"]), environ, problems, base_dir)
    if isinstance(data.get("upstreams"), dict):
        data["upstreams"] = _resolve_looker(dict(data["upstreams"]), environ, problems, base_dir)
    assertion = data.get("assertion")
    if isinstance(assertion, dict) and isinstance(assertion.get("keys_file"), str):
        data["assertion"] = assertion = dict(assertion)
        assertion["keys_file"] = str(base_dir / assertion["keys_file"])
        text = _read(assertion["keys_file"], "assertion.keys_file", problems)
        if text is not None:
            found = assertion_key_problems(text, assertion.get("algorithm", "ES256"))
            problems += [f"assertion.keys_file: {assertion['keys_file']}: {p}" for p in found]
    haproxy = data.get("haproxy")
    if isinstance(haproxy, dict) and isinstance(haproxy.get("runtime_api"), list):
        # a relative unix socket path is relative to this file, like every other path in it
        data["haproxy"] = haproxy | {
            "runtime_api": [
                f"unix:{base_dir / a.removeprefix('unix:')}"
                if isinstance(a, str) and a.startswith("unix:") and not a.startswith("unix:/") and a != "unix:"
                else a
                for a in haproxy["runtime_api"]
            ]
        }
    for name in ("server", "spoa"):  # the listeners' TLS files (idgate.tls)
        if isinstance(data.get(name), dict) and isinstance(data[name].get("tls"), dict):
            data[name] = dict(data[name]) | {
                "tls": check_tls_files(data[name]["tls"], f"{name}.tls", base_dir, problems)
            }
    return data


def _resolve_store(
    store: dict[str, Any], environ: Mapping[str, str], problems: list[str], base_dir: Path
) -> dict[str, Any]:
    """``store``: the Redis password from ``password_env`` / ``password_file``; TLS files resolved and readable
    (the CA bundle must load as PEM CA certificates)."""
    if "password" in store and store["password"] is None:
        del store["password"]  # a dumped config's "no password", not an inline secret
    _resolve_secret(store, "password", "store", environ, problems, base_dir, secret_problems)
    tls = store.get("tls")
    if isinstance(tls, dict):
        store["tls"] = tls = dict(tls)
        for name in ("ca_file", "cert_file", "key_file"):
            if isinstance(tls.get(name), str):
                tls[name] = str(base_dir / tls[name])
                text = _read(tls[name], f"store.tls.{name}", problems)
                if text is not None and name == "ca_file":
                    problems += [f"store.tls.ca_file: {p}" for p in ca_bundle_problems(Path(tls[name]))]
    return store


def _resolve_looker(
    upstreams: dict[Any, Any], environ: Mapping[str, str], problems: list[str], base_dir: Path
) -> dict[Any, Any]:
    """``upstreams.*.looker``: the embed secret and the API client secret from ``X_env`` / ``X_file``; the CA
    bundle of ``ca_file`` resolved and loadable."""
    for name, upstream in upstreams.items():
        if isinstance(upstream, dict) and isinstance(upstream.get("looker"), dict):
            looker = dict(upstream["looker"])
            for key in ("embed_secret", "client_secret"):
                _resolve_secret(looker, key, f"upstreams.{name}.looker", environ, problems, base_dir, secret_problems)
            if isinstance(looker.get("ca_file"), str):
                looker["ca_file"] = str(base_dir / looker["ca_file"])
                where = f"upstreams.{name}.looker.ca_file"
                if _read(looker["ca_file"], where, problems) is not None:
                    problems += [f"{where}: {p}" for p in ca_bundle_problems(Path(looker["ca_file"]))]
            upstreams[name] = dict(upstream) | {"looker": looker}
    return upstreams


def _read(path: str | Path, where: str, problems: list[str]) -> str | None:
    """The text of the file at ``path``, or None after appending why it cannot be read to ``problems``."""
    try:
        return read_text(path)
    except ConfigError as exc:
        problems += [f"{where}: {p}" for p in exc.problems]
        return None


def _resolve_secret(
    section: dict[str, Any],
    key: str,
    where: str,
    environ: Mapping[str, str],
    problems: list[str],
    base_dir: Path,
    check: Callable[[str], list[str]],
) -> None:
    """Resolve ``section[key + "_env"|"_file"]`` into ``section[key]`` in place when ``check`` finds no problem;
    never echo the value."""
    where = f"{where}.{key}"
    if key in section:
        problems.append(f"{where}: inline secrets are refused; use {key}_env or {key}_file")
        del section[key]
    env_name, file_name = section.pop(f"{key}_env", None), section.pop(f"{key}_file", None)
    if env_name is not None or file_name is not None:
        section[key] = UNRESOLVED  # replaced below when the secret is usable; the problems say why it is not
    if env_name is not None and file_name is not None:
        problems.append(f"{where}: set only one of {key}_env and {key}_file")
        return
    value: str | None = None
    if env_name is not None:
        value = environ.get(str(env_name))
        if value is None:
            problems.append(f"{where}_env: environment variable {env_name!s} is not set")
    elif file_name is not None:
        text = _read(base_dir / str(file_name), f"{where}_file", problems)
        value = None if text is None else text.strip()
    if value is not None:
        found = check(value)
        problems += [f"{where}: weak or placeholder secret: {p}" for p in found]
        if not found:
            section[key] = value


def _cross_reference_problems(data: Mapping[str, Any]) -> list[str]:
    """Checks spanning sections; tolerant of malformed input (the schema reports that): a name that is not a string
    never takes part in a lookup."""
    problems: list[str] = []
    upstreams, role_sets = _mapping(data.get("upstreams")), _mapping(data.get("role_sets"))
    if not data.get("issuers"):
        problems.append("issuers: at least one issuer is required")
    names = [str(i.get("name")) for i in _dicts(data.get("issuers"))]
    problems += [f"issuers: duplicate name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]
    for name in upstreams:
        if not (isinstance(name, str) and NAME_RE.match(name)):
            problems.append(f"upstreams.{name}: name must match [a-z][a-z0-9_]* (it names HAProxy backend be_<name>)")
    for name, upstream in upstreams.items():
        if (
            isinstance(upstream, dict)
            and upstream.get("role_set") is not None
            and _name(upstream["role_set"]) not in role_sets
        ):
            problems.append(f"upstreams.{name}.role_set: unknown role set {upstream.get('role_set')!r}")
        problems += _profile_role_problems(name, upstream, role_sets)
        problems += _looker_role_problems(name, upstream, role_sets)
        if isinstance(upstream, dict) and upstream.get("profile") == "looker_embed" and not data.get("login"):
            problems.append(f"upstreams.{name}: profile looker_embed needs login (the embed user is the signed-in one)")
    problems += _login_problems(data, upstreams)
    problems += _workers_problems(data)
    routes = data.get("routes")
    if not isinstance(routes, list) or not routes:
        problems.append("routes: at least one route is required (no match = deny)")
        return problems
    seen: set[str] = set()
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        where, name = f"routes.{i}", _name(route.get("name"))
        if name in seen:
            problems.append(f"{where}.name: duplicate route name {name!r}")
        seen.add(name or "")
        upstream_name = route.get("upstream")
        upstream = upstreams.get(_name(upstream_name))
        if upstream_name is not None and upstream is None:
            problems.append(f"{where}.upstream: unknown upstream {upstream_name!r}")
        allow = route.get("allow")
        if isinstance(allow, dict) and allow.get("roles") and isinstance(upstream, dict):
            role_set = role_sets.get(_name(upstream.get("role_set")))
            if not isinstance(role_set, dict):
                problems.append(f"{where}.allow.roles: upstream {upstream_name!r} has no role_set to take roles from")
            else:
                vocabulary = set(_strings(role_set.get("roles")))
                missing = [r for r in _strings(allow["roles"]) if r not in vocabulary]
                if missing:
                    problems.append(f"{where}.allow.roles: not in role set {upstream.get('role_set')!r}: {missing}")
    return problems


def _workers_problems(data: Mapping[str, Any]) -> list[str]:
    """More than one worker process needs the shared store: a memory store lives in one process, so a sign-out,
    a back-channel logout or a used logout token seen by one worker would stay unknown to the others."""
    workers = _mapping(data.get("server")).get("workers")
    kind = _mapping(data.get("store")).get("kind", "memory")
    if isinstance(workers, int) and not isinstance(workers, bool) and workers > 1 and kind != "redis":
        return [
            f"server.workers: {workers} worker processes need store.kind: redis (a memory store cannot share "
            "revocations, the logout-token replay cache or the refresh lock across processes); use 1 worker "
            "or a shared store"
        ]
    return []


def _profile_role_problems(name: object, upstream: object, role_sets: dict[Any, Any]) -> list[str]:
    """A ``grafana`` upstream's role set may only name Grafana's roles (GrafanaAdmin with its opt-in)."""
    if not isinstance(upstream, dict) or upstream.get("profile") != "grafana":
        return []
    role_set = role_sets.get(_name(upstream.get("role_set")))
    vocabulary = {*GRAFANA_ROLES, *([GRAFANA_ADMIN] if upstream.get("allow_grafana_admin") is True else [])}
    unknown = [r for r in _strings(_mapping(role_set).get("roles")) if r not in vocabulary]
    if not unknown:
        return []
    return [
        f"upstreams.{name}: role set {upstream.get('role_set')!r} names roles Grafana does not have: {unknown} "
        f"(Grafana's roles are {', '.join(GRAFANA_ROLES)}; {GRAFANA_ADMIN} needs allow_grafana_admin: true)"
    ]


def _looker_role_problems(name: object, upstream: object, role_sets: dict[Any, Any]) -> list[str]:
    """A ``looker_embed`` upstream's ``looker.roles`` may only name roles of its role set, and should cover them."""
    if not isinstance(upstream, dict) or not isinstance(upstream.get("looker"), dict):
        return []
    role_set = role_sets.get(_name(upstream.get("role_set")))
    if not isinstance(role_set, dict):
        return []
    vocabulary = set(_strings(role_set.get("roles")))
    mapped = [str(r) for r in _mapping(upstream["looker"].get("roles"))]
    unknown = [r for r in mapped if r not in vocabulary]
    unmapped = sorted(vocabulary - set(mapped))
    problems = []
    if unknown:
        problems.append(f"upstreams.{name}.looker.roles: not in role set {upstream.get('role_set')!r}: {unknown}")
    if unmapped:
        problems.append(
            f"upstreams.{name}.looker.roles: roles of role set {upstream.get('role_set')!r} without a Looker grant: "
            f"{unmapped} (a user holding only those would be let through to Looker with nothing to embed)"
        )
    return problems


def _login_problems(data: Mapping[str, Any], upstreams: dict[Any, Any]) -> list[str]:
    problems: list[str] = []
    login = data.get("login")
    if isinstance(login, dict):
        if not isinstance(data.get("sessions"), dict):
            problems.append("login: browser login needs a sessions section (cookie keys)")
        issuers = {i.get("name"): i for i in _dicts(data.get("issuers")) if _name(i.get("name"))}
        named = [("login.issuer", login.get("issuer"))] if login.get("issuer") is not None else []
        if isinstance(login.get("issuers"), list):
            named += [(f"login.issuers[{n}]", value) for n, value in enumerate(login["issuers"])]
        for where, value in named:
            issuer = issuers.get(_name(value))
            if issuer is None:
                problems.append(f"{where}: no issuer named {value!r}")
            elif not issuer.get("client_id") or "client_secret" not in issuer:
                problems.append(f"{where}: issuer {value!r} needs client_id and a client secret")
        urls = [str(issuers[n].get("issuer")) for _, n in named if _name(n) in issuers]
        for url in sorted({u for u in urls if urls.count(u) > 1}):  # sessions are keyed by (iss, sub)
            problems.append(f"login.issuers: two login IdPs have the issuer URL {url!r}")
    store = data.get("store")
    if isinstance(data.get("assertion"), dict) and isinstance(store, dict) and store.get("kind") == "redis":
        sessions = data.get("sessions")
        if not isinstance(sessions, dict) or not any(k in sessions for k in ("keys", "keys_env", "keys_file")):
            problems.append(
                "assertion: with store.kind redis the assertion key ring lives in Redis, sealed with the session "
                "keys: add a sessions section with keys_env or keys_file"
            )
    if not isinstance(data.get("assertion"), dict):
        for name, upstream in upstreams.items():
            if isinstance(upstream, dict) and upstream.get("assertion_audience"):
                problems.append(f"upstreams.{name}.assertion_audience: needs an assertion section")
    return problems


def _mapping(value: object) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: object) -> list[dict[Any, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _name(value: object) -> str | None:
    return value if isinstance(value, str) else None


def summarize(config: Config) -> str:
    """A one-screen, secret-free summary of issuers, upstreams, role mappings and routes."""
    lines = [f"dev_mode: {config.dev_mode}   listen: {config.server.host}:{config.server.port}", "issuers:"]
    for iss in config.issuers:
        keys = iss.jwks_uri or ("discovery" if iss.discovery else "?")
        lines.append(
            f"  {iss.name}: {iss.issuer}  aud={list(iss.audiences)} alg={list(iss.algorithms)} "
            f"typ_at+jwt={iss.require_at_jwt_typ} leeway={iss.leeway_seconds:g}s keys={keys}"
            + ("  client_secret=<set>" if iss.client_secret else "")
        )
        c = iss.claims
        lines.append(
            f"    provider={iss.provider} claims: sub={c.subject} username={c.username} email={c.email} "
            f"groups={c.groups} roles={c.roles or '-'} sources={list(c.sources)}"
            + (f" entra_graph={iss.entra.graph_url}" if iss.entra else "")
        )
    lines.append("role sets:")
    for name, rs in config.role_sets.items():
        mapping = ", ".join(f"{g}→{'/'.join(r)}" for g, r in rs.from_groups.items())
        lines.append(f"  {name}: {' < '.join(rs.roles)}   {mapping}")
    lines.append("upstreams:")
    for name, up in config.upstreams.items():
        lines.append(f"  {name}: profile={up.profile} role_set={up.role_set} user_from={up.user_from}")
        lines += [f"    {line}" for line in _role_lines(config, up.role_set)]
    if config.login:
        lines.append(
            f"login: via issuer(s) {', '.join(config.login.issuer_names)}, "
            f"redirect URIs {list(config.login.redirect_uris)}"
        )
        lines.append(f"  scopes={list(config.login.scopes)}")
    if config.sessions:
        s = config.sessions
        lines.append(
            f"sessions: cookie {s.cookie_name} keys=<set> idle={s.idle_timeout_seconds:g}s "
            f"absolute={s.absolute_timeout_seconds:g}s refresh_before={s.refresh_before_seconds:g}s"
        )
    if config.store.kind == "redis":
        lines.append(
            f"store: redis {config.store.url} prefix={config.store.key_prefix} "
            f"timeout={config.store.timeout_seconds:g}s" + ("  password=<set>" if config.store.password else "")
        )
    else:
        lines.append("store: memory (one process: revocations are not shared between replicas)")
    if config.assertion:
        lines.append(
            f"assertion: iss={config.assertion.issuer} {config.assertion.algorithm} "
            f"lifetime={config.assertion.lifetime_seconds}s"
        )
    lines.append("routes (first match wins, no match = deny):")
    for r in config.routes:
        rule = "public" if r.public else _describe_allow(r.allow)
        where = f"{r.host} gRPC {r.grpc}" if r.grpc else f"{r.host}{r.path} ({r.match})"
        token = ", Authorization stripped" if r.authorization == "strip" else ""
        lines.append(f"  {r.name}: {where} → {r.upstream}  [{rule}{token}]")
    return "\n".join(lines)


def _role_lines(config: Config, role_set_name: str | None) -> list[str]:
    """Per role of the upstream's role set, the groups that grant it (and the explicit default role)."""
    if role_set_name is None or role_set_name not in config.role_sets:
        return ["no role set: no roles"]
    rs = config.role_sets[role_set_name]
    lines = []
    for role in rs.roles:
        groups = [g for g, roles in rs.from_groups.items() if role in roles]
        given = [f"groups {groups}"] if groups else []
        if rs.default == role:
            given.append("every authenticated user (default)")
        lines.append(f"{role} ← {' or '.join(given) if given else 'nobody'}")
    return lines


def _describe_allow(allow: object) -> str:
    parts = []
    for attr in ("authenticated", "roles", "groups"):
        value = getattr(allow, attr, None)
        if value:
            parts.append(attr if value is True else f"{attr}={list(value)}")
    return " or ".join(parts)
