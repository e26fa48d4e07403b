"""Read, resolve and validate the configuration file, reporting every problem at once.

``load_config(path)`` returns a :class:`~idgate.config.Config` or raises :class:`~idgate.errors.ConfigError` whose
``problems`` lists every structural problem (pydantic collects them all) and every cross-reference problem (routes
naming unknown upstreams, roles missing from a role set, unresolvable secrets). Secret values never appear in a
problem or in the summary.

Secrets: a key ``X`` that holds a secret is given as ``X_env: VARIABLE`` or ``X_file: /path``, never inline.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from idgate.config import NAME_RE, Config
from idgate.errors import ConfigError

PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "secret", "password", "example", "xxx", "todo"})
MIN_SECRET_CHARS = 16


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the YAML config at ``path``.

    Raises:
        ConfigError: with every problem found (unreadable or non-UTF-8 file, YAML syntax or a value PyYAML cannot
            construct, schema, cross references, secrets); never another exception.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    except Exception as exc:  # PyYAML's constructors raise what they meet: ValueError (2001-13-01, !!int abc, 5000
        # digits), IndexError (!!int ""), KeyError (!!bool ""), AttributeError (!!timestamp ""), RecursionError ([[[…)
        raise ConfigError([f"{path}: not valid YAML: {type(exc).__name__}: {str(exc)[:120]}"]) from None
    return parse_config(raw, environ=os.environ if environ is None else environ, base_dir=Path(path).parent)


def parse_config(raw: object, *, environ: Mapping[str, str], base_dir: Path | None = None) -> Config:
    """Validate an already-parsed document; relative file paths resolve against ``base_dir``.

    Raises:
        ConfigError: listing every problem.
    """
    if not isinstance(raw, dict):
        raise ConfigError(["the config file must be a YAML mapping"])
    problems: list[str] = []
    data = _resolve_secrets(raw, environ, problems, base_dir or Path.cwd())
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
    """Replace ``X_env`` / ``X_file`` with the secret value ``X``; resolve relative file paths."""
    data = dict(raw)
    issuers = data.get("issuers")
    if isinstance(issuers, list):
        resolved: list[Any] = []
        for i, issuer in enumerate(issuers):
            if isinstance(issuer, dict):
                issuer = dict(issuer)
                if isinstance(issuer.get("ca_file"), str):
                    issuer["ca_file"] = str(base_dir / issuer["ca_file"])
                    if not Path(issuer["ca_file"]).is_file():
                        problems.append(f"issuers.{i}.ca_file: {issuer['ca_file']} is not a readable file")
                _resolve_secret(issuer, "client_secret", f"issuers.{i}", environ, problems, base_dir)
            resolved.append(issuer)
        data["issuers"] = resolved
    if isinstance(data.get("sessions"), dict):
        data["sessions"] = dict(data["sessions"])
        _resolve_secret(data["sessions"], "keys", "sessions", environ, problems, base_dir, min_chars=43)
    if isinstance(data.get("assertion"), dict) and isinstance(data["assertion"].get("keys_file"), str):
        data["assertion"] = dict(data["assertion"])
        data["assertion"]["keys_file"] = str(base_dir / data["assertion"]["keys_file"])
        if not Path(data["assertion"]["keys_file"]).is_file():
            problems.append(f"assertion.keys_file: {data['assertion']['keys_file']} is not a readable file")
    return data


def _resolve_secret(
    section: dict[str, Any],
    key: str,
    where: str,
    environ: Mapping[str, str],
    problems: list[str],
    base_dir: Path,
    *,
    min_chars: int = MIN_SECRET_CHARS,
) -> None:
    """Resolve ``section[key + "_env"|"_file"]`` into ``section[key]`` in place; never echo the value."""
    where = f"{where}.{key}"
    if key in section:
        problems.append(f"{where}: inline secrets are refused; use {key}_env or {key}_file")
        del section[key]
    env_name, file_name = section.pop(f"{key}_env", None), section.pop(f"{key}_file", None)
    if env_name is not None and file_name is not None:
        problems.append(f"{where}: set only one of {key}_env and {key}_file")
        return
    value: str | None = None
    if env_name is not None:
        value = environ.get(str(env_name))
        if value is None:
            problems.append(f"{where}_env: environment variable {env_name!s} is not set")
    elif file_name is not None:
        try:
            value = (base_dir / str(file_name)).read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{where}_file: cannot read {file_name}: {exc.strerror or exc}")
        except ValueError:  # a NUL in the path, or a file that is not UTF-8 (never echo its bytes)
            problems.append(f"{where}_file: cannot read {file_name!r} as UTF-8 text")
    if value is not None:
        if len(value) < min_chars or value.lower() in PLACEHOLDER_SECRETS:
            problems.append(f"{where}: weak or placeholder secret (need {min_chars}+ characters)")
        else:
            section[key] = value


def _str(value: object) -> str | None:
    """``value`` if it is a string, else None: the raw document may hold lists or mappings anywhere, and only a
    string can name an upstream, a role set, an issuer or a route (the schema reports the rest)."""
    return value if isinstance(value, str) else None


def _strs(value: object) -> list[str]:
    """The string items of a list in the raw document; nothing for any other value."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _list(value: object) -> list[Any]:
    """``value`` if it is a list, else an empty list (``issuers: 5`` is the schema's to report)."""
    return value if isinstance(value, list) else []


def _cross_reference_problems(data: Mapping[str, Any]) -> list[str]:
    """Checks spanning sections; tolerant of malformed input (the schema reports that)."""
    problems: list[str] = []
    upstreams: dict[Any, Any] = data["upstreams"] if isinstance(data.get("upstreams"), dict) else {}
    role_sets: dict[Any, Any] = data["role_sets"] if isinstance(data.get("role_sets"), dict) else {}
    if not data.get("issuers"):
        problems.append("issuers: at least one issuer is required")
    names = [str(i.get("name")) for i in _list(data.get("issuers")) if isinstance(i, dict)]
    problems += [f"issuers: duplicate name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]
    for name in upstreams:
        if not (isinstance(name, str) and NAME_RE.match(name)):
            problems.append(f"upstreams.{name}: name must match [a-z][a-z0-9_]* (it names HAProxy backend be_<name>)")
    for name, upstream in upstreams.items():
        if (
            isinstance(upstream, dict)
            and upstream.get("role_set") is not None
            and _str(upstream["role_set"]) not in role_sets
        ):
            problems.append(f"upstreams.{name}.role_set: unknown role set {upstream.get('role_set')!r}")
    problems += _login_problems(data, upstreams)
    routes = data.get("routes")
    if not isinstance(routes, list) or not routes:
        problems.append("routes: at least one route is required (no match = deny)")
        return problems
    seen: set[str | None] = set()
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        where = f"routes.{i}"
        route_name = _str(route.get("name"))
        if route_name is not None and route_name in seen:
            problems.append(f"{where}.name: duplicate route name {route_name!r}")
        seen.add(route_name)
        upstream_name = route.get("upstream")
        upstream = upstreams.get(upstream_name) if isinstance(upstream_name, str) else None
        if upstream_name is not None and upstream is None:
            problems.append(f"{where}.upstream: unknown upstream {upstream_name!r}")
        allow = route.get("allow")
        if isinstance(allow, dict) and allow.get("roles") and isinstance(upstream, dict):
            role_set = role_sets.get(_str(upstream.get("role_set")))
            if not isinstance(role_set, dict):
                problems.append(f"{where}.allow.roles: upstream {upstream_name!r} has no role_set to take roles from")
            else:
                vocabulary = set(_strs(role_set.get("roles")))
                missing = [r for r in _strs(allow["roles"]) if r not in vocabulary]
                if missing:
                    problems.append(f"{where}.allow.roles: not in role set {upstream.get('role_set')!r}: {missing}")
    return problems


def _login_problems(data: Mapping[str, Any], upstreams: dict[Any, Any]) -> list[str]:
    problems: list[str] = []
    login = data.get("login")
    if isinstance(login, dict):
        if not isinstance(data.get("sessions"), dict):
            problems.append("login: browser login needs a sessions section (cookie keys)")
        issuers = {_str(i.get("name")): i for i in _list(data.get("issuers")) if isinstance(i, dict)}
        login_issuer = _str(login.get("issuer"))
        issuer = issuers.get(login_issuer) if login_issuer else None
        if issuer is None:
            problems.append(f"login.issuer: no issuer named {login.get('issuer')!r}")
        elif not issuer.get("client_id") or "client_secret" not in issuer:
            problems.append(f"login.issuer: issuer {login.get('issuer')!r} needs client_id and a client secret")
    if not isinstance(data.get("assertion"), dict):
        for name, upstream in upstreams.items():
            if isinstance(upstream, dict) and upstream.get("assertion_audience"):
                problems.append(f"upstreams.{name}.assertion_audience: needs an assertion section")
    return problems


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
    lines.append("role sets:")
    for name, rs in config.role_sets.items():
        mapping = ", ".join(f"{g}→{'/'.join(r)}" for g, r in rs.from_groups.items())
        lines.append(f"  {name}: {' < '.join(rs.roles)}   {mapping}")
    lines.append("upstreams:")
    for name, up in config.upstreams.items():
        lines.append(f"  {name}: profile={up.profile} role_set={up.role_set} user_from={up.user_from}")
    if config.login:
        lines.append(f"login: via issuer {config.login.issuer}, redirect URIs {list(config.login.redirect_uris)}")
    if config.sessions:
        s = config.sessions
        lines.append(
            f"sessions: cookie {s.cookie_name} keys=<set> idle={s.idle_timeout_seconds:g}s "
            f"absolute={s.absolute_timeout_seconds:g}s refresh_before={s.refresh_before_seconds:g}s"
        )
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


def _describe_allow(allow: object) -> str:
    parts = []
    for attr in ("authenticated", "roles", "groups"):
        value = getattr(allow, attr, None)
        if value:
            parts.append(attr if value is True else f"{attr}={list(value)}")
    return " or ".join(parts)
