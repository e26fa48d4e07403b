"""Static checks of the Docker Compose stack (compose/docker-compose.yml), its files and the repository's Dockerfile.

There is no Docker engine here or in CI, so nothing builds or runs a container. Instead the compose file is parsed
with PyYAML (Compose's ``${VAR:-default}`` interpolation applied) and held against what each container will see:
the variables the shipped haproxy/haproxy.cfg reads, compose/idgate.yaml through idgate's own loader with the
secrets and certificates made by the stack's own generator (compose/certs/generate.py, run here into a temp dir
standing in for the named volumes), Grafana's [auth.jwt] contract, the test IdP's settings, Prometheus's targets,
and the Dockerfile / .dockerignore.
"""

from __future__ import annotations

import base64
import configparser
import ipaddress
import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import haproxy_check
import pytest
import redis_command
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from idgate.assertion import AssertionSigner, split_pem
from idgate.config import Config
from idgate.config_load import parse_config
from idgate.policy import Policy
from idgate.runtime import create_app
from idgate.sso.cookies import KeyRing

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
HAPROXY_CFG = REPO / "haproxy" / "haproxy.cfg"
SPOE_CONF = REPO / "haproxy" / "spoe-idgate.conf"
REPLICAS = ("idgate", "idgate-2", "idgate-3")  # idgate replicas sharing one store (the redis service)
SERVICES = {"certs", "idp", *REPLICAS, "redis", "echo", "grpc", "grafana", "haproxy", "prometheus"}
IDGATE_GID = 10001
TEST_IDP_DEFAULT_SECRET = "idgate-test-secret-0123456789abcdef"  # server.mjs's built-in fallback, never used here


# ----------------------------------------------------------------------------------------- compose helpers

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_]\w*))"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``.

    A variable without a default that ``env`` does not set is an error: the stack must start with no ``.env`` file.
    """

    def sub(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name, op, arg = m["braced"] or m["named"], m["op"], m["arg"]
        current = env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if current is None or (op == ":?" and not current):
            raise AssertionError(f"${{{name}}} has no default and is not set")
        return current

    return _VAR.sub(sub, value)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolated(v, env) for k, v in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    doc: dict[str, Any] = interpolated(raw, env or {})
    return doc


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@dataclass(frozen=True)
class Mount:
    source: str  # absolute host path for a bind mount, the volume name for a named volume
    target: str
    bind: bool
    read_only: bool


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    result = []
    for item in service.get("volumes") or []:
        if isinstance(item, str):
            source, target, *rest = item.split(":")
            read_only = "ro" in (rest[0].split(",") if rest else [])
        else:
            source, target, read_only = item.get("source", ""), item["target"], bool(item.get("read_only"))
        bind = source.startswith((".", "/", "~"))
        result.append(Mount(str((COMPOSE_DIR / source).resolve()) if bind else source, target, bind, read_only))
    return result


def mount_for(service: Mapping[str, Any], path: str) -> tuple[Mount, str]:
    """The mount a container path lies on (the longest target wins) and the rest of the path below it."""
    candidates = [m for m in mounts(service) if path == m.target or path.startswith(m.target.rstrip("/") + "/")]
    assert candidates, f"{path} is on no mount of the service"
    best = max(candidates, key=lambda m: len(m.target))
    return best, path[len(best.target) :].lstrip("/")


def to_host(service: Mapping[str, Any], path: str, volumes: Mapping[str, Path]) -> Path:
    mount, rest = mount_for(service, path)
    base = Path(mount.source) if mount.bind else volumes[mount.source]
    return base / rest if rest else base


@dataclass(frozen=True)
class Port:
    host_ip: str
    published: int
    target: int


def ports(service: Mapping[str, Any]) -> list[Port]:
    result = []
    for item in service.get("ports") or []:
        if isinstance(item, dict):
            result.append(Port(str(item.get("host_ip", "")), int(item["published"]), int(item["target"])))
            continue
        text = str(item).split("/")[0]
        parts = text.rsplit(":", 2)
        if len(parts) == 3:
            result.append(Port(parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            result.append(Port("", int(parts[0]), int(parts[1])))
        else:
            result.append(Port("", 0, int(parts[0])))
    return result


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def network_address(service: Mapping[str, Any]) -> str | None:
    networks = service.get("networks") or {}
    if isinstance(networks, dict):
        for settings in networks.values():
            if settings and settings.get("ipv4_address"):
                return str(settings["ipv4_address"])
    return None


def network_aliases(service: Mapping[str, Any]) -> set[str]:
    networks = service.get("networks") or {}
    if not isinstance(networks, dict):
        return set()
    return {str(a) for settings in networks.values() if settings for a in settings.get("aliases") or []}


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


@pytest.fixture(scope="module")
def haproxy_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return environment(services["haproxy"])


@pytest.fixture(scope="module")
def volumes(services: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run the ``certs`` service's command, as written, into temp dirs standing in for the named volumes."""
    root = tmp_path_factory.mktemp("volumes")
    certs = services["certs"]
    volume_dirs = {m.source: root / m.source for m in mounts(certs) if not m.bind}
    command = [str(c) for c in certs["command"]]
    assert command[0] == "python"
    argv = [str(to_host(certs, command[1], volume_dirs))]
    for arg in command[2:]:
        name, eq, value = arg.partition("=")
        if eq and value.startswith("/"):
            arg = f"{name}={to_host(certs, value, volume_dirs)}"
        argv.append(arg)
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return volume_dirs


@pytest.fixture(scope="module")
def localised_idgate_yaml(services: dict[str, dict[str, Any]], volumes: dict[str, Path]) -> dict[str, Any]:
    """compose/idgate.yaml with its container paths turned into the host paths of the mounts (the generated secrets)."""
    idgate = services["idgate"]
    command = [str(c) for c in idgate["command"]]
    config_path = to_host(idgate, command[command.index("--config") + 1], volumes)
    assert config_path == COMPOSE_DIR / "idgate.yaml"
    raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))

    def localise(node: Any) -> Any:
        if isinstance(node, str) and node.startswith("/"):
            return str(to_host(idgate, node, volumes))
        if isinstance(node, list):
            return [localise(v) for v in node]
        if isinstance(node, dict):
            return {k: localise(v) for k, v in node.items()}
        return node

    return {
        key: (localise(value) if key in ("issuers", "sessions", "assertion", "store") else value)
        for key, value in raw.items()
    }


@pytest.fixture(scope="module")
def idgate_config(services: dict[str, dict[str, Any]], localised_idgate_yaml: dict[str, Any]) -> Config:
    """compose/idgate.yaml as idgate will load it in its container: the mounted file, the generated secrets."""
    return parse_config(localised_idgate_yaml, environ=environment(services["idgate"]), base_dir=COMPOSE_DIR)


@pytest.fixture(scope="module")
def raw_idgate_yaml() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "idgate.yaml").read_text(encoding="utf-8"))
    return doc


@dataclass(frozen=True)
class ConfigVariables:
    """The environment variables an HAProxy config file reads, and its presetenv defaults."""

    defaults: dict[str, str]
    required: set[str]  # read somewhere not guarded by ``.if defined(NAME)`` of the same NAME: needs a default
    guarded: set[str]  # read somewhere inside such a guard

    @property
    def used(self) -> set[str]:
        return self.required | self.guarded

    @property
    def optional(self) -> set[str]:
        """Read only inside ``.if defined(NAME)`` ... ``.endif`` of its own NAME: unset means the block is skipped."""
        return self.guarded - self.required

    def __or__(self, other: ConfigVariables) -> ConfigVariables:
        return ConfigVariables(
            self.defaults | other.defaults, self.required | other.required, self.guarded | other.guarded
        )


_CONDITIONAL = re.compile(r"\.(if|elif|else|endif)\b\s*(.*)")


def config_variables(text: str) -> ConfigVariables:
    """presetenv defaults (and setenv values) and variables read by one HAProxy config text, minding its conditional
    blocks.

    Only a branch whose whole condition is ``defined(NAME)`` guards NAME (nested blocks included); its ``.else`` /
    ``.elif`` branches do not, nor does a guard of another name. A ``.elif``'s own condition is read outside the
    branches before it. Unbalanced ``.if`` / ``.endif`` is an error.
    """
    defaults: dict[str, str] = {}
    required: set[str] = set()
    guarded: set[str] = set()
    open_branches: list[str | None] = []  # per open .if: the variable its current branch is guarded by, if any
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        directive = _CONDITIONAL.fullmatch(stripped)
        if directive:
            keyword = directive[1]
            if keyword == "if":
                open_branches.append(None)
            else:
                assert open_branches, f"line {number}: .{keyword} without .if"
                if keyword == "endif":
                    open_branches.pop()
                else:
                    open_branches[-1] = None
        if m := re.match(r'\s*(?:pre)?setenv\s+(\w+)\s+"([^"]*)"', line):  # setenv: set by the config itself
            defaults[m[1]] = m[2]
        for name in {a or b for a, b in re.findall(r'\$\{(\w+)\}|"\$(\w+)"', line)}:
            (guarded if name in open_branches else required).add(name)
        if directive and directive[1] in ("if", "elif"):
            guard = re.fullmatch(r"defined\((\w+)\)", directive[2].strip())
            open_branches[-1] = guard[1] if guard else None
    assert not open_branches, f"{len(open_branches)} .if without .endif"
    return ConfigVariables(defaults, required, guarded)


def haproxy_variables() -> ConfigVariables:
    """presetenv defaults of haproxy.cfg, and the variables haproxy.cfg or spoe-idgate.conf read."""
    first, second = (config_variables(path.read_text(encoding="utf-8")) for path in (HAPROXY_CFG, SPOE_CONF))
    return first | second


def python_healthcheck(service: Mapping[str, Any]) -> str:
    """The code of a ``["CMD", "python", "-c", CODE]`` healthcheck (the idgate image has Python, nothing else)."""
    test = [str(c) for c in service["healthcheck"]["test"]]
    assert test[:3] == ["CMD", "python", "-c"] and len(test) == 4, test
    compile(test[3], "<healthcheck>", "exec")
    return test[3]


def must_differ(name: str, default: str) -> bool:
    """Defaults that cannot work in a container: loopback binds and addresses (the HAProxy container's own loopback),
    and the dev certificate path that only ``python -m idgate_devstack.haproxy`` creates."""
    return "127.0.0.1" in default or "localhost" in default or name == "IDGATE_TLS_CERT"


# ----------------------------------------------------------------------------------------- the compose file


def test_compose_file_is_modern_and_complete(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose Specification has no version: key (obsolete)"
    assert set(compose["services"]) == SERVICES
    for name, service in compose["services"].items():
        assert service.get("image") or service.get("build"), f"{name} has neither image nor build"


def test_locally_built_image_is_never_pulled(services: dict[str, dict[str, Any]]) -> None:
    built = {s["image"] for s in services.values() if s.get("build")}
    assert built == {"idgate:local"}
    for name, service in services.items():
        if service.get("image") in built and not service.get("build"):
            assert service.get("pull_policy") == "never", f"{name} would try to pull {service['image']}"


def test_build_context_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        if build := service.get("build"):
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert context == REPO
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        for mount in mounts(service):
            if mount.bind:
                source = Path(mount.source)
                assert source.exists(), f"{name}: {source} does not exist"
                assert source.is_relative_to(REPO), f"{name}: {source} is outside the repository"
                assert mount.read_only, f"{name}: bind mount {source} must be read-only"
            else:
                assert mount.source in declared, f"{name}: volume {mount.source} is not declared"


def test_only_certs_writes_the_generated_volumes(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for mount in mounts(service):
            if mount.source in ("tls", "secrets", "redis-secret") and name != "certs":
                assert mount.read_only, f"{name} must mount {mount.source} read-only"
                assert services[name]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert services["certs"]["network_mode"] == "none"
    assert not any(m.source == "secrets" for m in mounts(services["grafana"]) + mounts(services["haproxy"]))


def test_every_variable_has_a_default() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    interpolated(raw, {})  # raises on a ${VAR} without a default
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{(\w+)", text)) == {"IDGATE_MODE"}


def test_published_ports_bind_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = {name: ports(s) for name, s in services.items() if s.get("ports")}
    assert set(published) == {"haproxy", "idp", "prometheus"}
    for name, entries in published.items():
        for port in entries:
            assert port.host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    for name in ("idgate", "echo", "grpc", "grafana", "certs"):
        assert not services[name].get("ports"), f"{name} must only be reachable through HAProxy"


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{name} waits for {dependency}'s health"
    assert services["haproxy"]["depends_on"] == {
        "certs": {"condition": "service_completed_successfully"},
        **{replica: {"condition": "service_healthy"} for replica in REPLICAS},
        "echo": {"condition": "service_healthy"},
        "grafana": {"condition": "service_healthy"},
        "grpc": {"condition": "service_healthy"},
    }
    for replica in REPLICAS:
        assert services[replica]["depends_on"]["idp"] == {"condition": "service_healthy"}
        assert services[replica]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_idgate_healthcheck_is_readyz(services: dict[str, dict[str, Any]], idgate_config: Config) -> None:
    for replica in REPLICAS:
        test = " ".join(services[replica]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{idgate_config.server.port}/readyz" in test, replica


# ----------------------------------------------------------------------------------------- HAProxy


def test_config_variables_understands_defined_guards() -> None:
    text = """
global
    presetenv A "1"
    setenv B "x${A}"
    # "${COMMENTED}" is not read
.if defined(OPT)
    bind "${OPT}" name plain
.if streq("$A",x)
    bind "${OPT}" name nested
.endif
.elif defined(ALT)
    bind "${ALT}"
.else
    bind "${ELSE}"
.endif
.if defined(ELSE)
    bind "${ELSE}"
.endif
.if defined(X)
    bind "${Y}"
.endif
.if defined(BOTH)
    bind "${BOTH}"
.endif
    bind "${BOTH}"
.if defined(LATE)
.elif streq("$LATE",x)
.endif
"""
    variables = config_variables(text)
    assert variables.defaults == {"A": "1", "B": "x${A}"}
    assert variables.optional == {"OPT", "ALT"}
    assert variables.required == {"A", "ELSE", "Y", "BOTH", "LATE"}
    for broken in (".endif\n", ".if defined(A)\n", ".else\n"):
        with pytest.raises(AssertionError):
            config_variables(broken)


def test_haproxy_reads_only_variables_with_defaults() -> None:
    variables = haproxy_variables()
    assert variables.used, "no variable found in haproxy.cfg"
    missing = variables.required - set(variables.defaults)
    assert not missing, f"read without a presetenv default or a .if defined() guard: {sorted(missing)}"
    # optional pieces: the h2c listener, replicas 2..4 and the local /auth listener; unset means none
    replicas = {f"IDGATE_{kind}_ADDR_{i}" for kind in ("SERVICE", "SPOA") for i in (2, 3, 4)}
    assert variables.optional == {"IDGATE_H2C_BIND", "IDGATE_AUTH_LB_BIND", *replicas}, sorted(variables.optional)
    assert not variables.optional & set(variables.defaults), "a presetenv default makes .if defined() always true"
    cfg = HAPROXY_CFG.read_text(encoding="utf-8")
    assert re.search(
        r'^\.if defined\(IDGATE_H2C_BIND\)\n(?:\t#.*\n)*\tbind "\$\{IDGATE_H2C_BIND\}" name h2c proto h2\n\.endif$',
        cfg,
        re.M,
    )


def test_haproxy_variables_that_must_differ_are_set(haproxy_env: dict[str, str]) -> None:
    variables = haproxy_variables()
    defaults = variables.defaults
    needed = {name for name in variables.required if must_differ(name, defaults[name])}
    assert {"IDGATE_HTTPS_BIND", "IDGATE_AUTH_URL", "IDGATE_SPOA_ADDR", "IDGATE_TLS_CERT"} <= needed
    assert "IDGATE_UPSTREAM_GRPC" in needed
    for name in sorted(needed):
        assert name in haproxy_env, f"{name} is not set for the haproxy service"
        assert haproxy_env[name] != defaults[name], f"{name} keeps its loopback/dev default {defaults[name]}"
        assert "127.0.0.1" not in haproxy_env[name] and "localhost" not in haproxy_env[name]
    for name in sorted(variables.optional & set(haproxy_env) - {"IDGATE_AUTH_LB_BIND"}):
        assert "127.0.0.1" not in haproxy_env[name] and "localhost" not in haproxy_env[name], name
    # the local /auth balancer is HAProxy's own listener: loopback inside the HAProxy container, never published
    assert split_addr(haproxy_env["IDGATE_AUTH_LB_BIND"])[0] == "127.0.0.1"
    known = set(defaults) | variables.optional
    assert set(haproxy_env) <= known, f"unknown variables: {sorted(set(haproxy_env) - known)}"


def test_haproxy_runs_the_shipped_config(services: dict[str, dict[str, Any]]) -> None:
    haproxy = services["haproxy"]
    assert haproxy["image"] == "haproxy:2.8"
    mount, rest = mount_for(haproxy, "/usr/local/etc/haproxy/haproxy.cfg")  # the official image's default -f
    assert (mount.bind, mount.read_only, Path(mount.source) / rest) == (True, True, HAPROXY_CFG)
    assert "command" not in haproxy and "entrypoint" not in haproxy


def test_haproxy_mode_defaults_to_spoe_and_switches() -> None:
    assert environment(load_compose()["services"]["haproxy"])["IDGATE_MODE"] == "spoe"
    switched = load_compose({"IDGATE_MODE": "auth_request"})["services"]["haproxy"]
    assert environment(switched)["IDGATE_MODE"] == "auth_request"
    cfg = HAPROXY_CFG.read_text(encoding="utf-8")
    assert '.if streq("$IDGATE_MODE",auth_request)' in cfg


def test_haproxy_binds_are_published(services: dict[str, dict[str, Any]], haproxy_env: dict[str, str]) -> None:
    targets = {p.target: p for p in ports(services["haproxy"])}
    for name in ("IDGATE_HTTPS_BIND", "IDGATE_HTTP_BIND", "IDGATE_STATS_BIND"):
        host, port = split_addr(haproxy_env[name])
        assert host == "0.0.0.0", f"{name}: a container must listen on all its interfaces"
        assert port in targets, f"{name} port {port} is not published"
    https_port = split_addr(haproxy_env["IDGATE_HTTPS_BIND"])[1]
    assert int(haproxy_env["IDGATE_HTTPS_PORT"]) == targets[https_port].published


def test_haproxy_h2c_listener_stays_inside_the_network(
    services: dict[str, dict[str, Any]], haproxy_env: dict[str, str]
) -> None:
    """The stack turns the optional cleartext HTTP/2 listener on, for gRPC callers on the network only."""
    assert "IDGATE_H2C_BIND" in haproxy_env
    host, port = split_addr(haproxy_env["IDGATE_H2C_BIND"])
    assert host == "0.0.0.0", "other containers reach it as haproxy:PORT"
    published = {p.target for p in ports(services["haproxy"])}
    assert port not in published, "the cleartext (no TLS) listener must not be published"
    tls_binds = {split_addr(haproxy_env[n])[1] for n in ("IDGATE_HTTPS_BIND", "IDGATE_HTTP_BIND", "IDGATE_STATS_BIND")}
    assert published == tls_binds, "HAProxy publishes exactly its HTTPS, HTTP and stats binds"
    assert port not in tls_binds
    readme = (COMPOSE_DIR / "README.md").read_text(encoding="utf-8")
    assert f"--target haproxy:{port}" in readme


def test_haproxy_reaches_idgate(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], haproxy_env: dict[str, str], idgate_config: Config
) -> None:
    idgate_ip = network_address(services["idgate"])
    haproxy_ip = network_address(services["haproxy"])
    assert idgate_ip and haproxy_ip
    auth = urlsplit(haproxy_env["IDGATE_AUTH_URL"])
    assert auth.hostname is not None
    ipaddress.ip_address(auth.hostname)  # Lua's httpclient needs an IP literal (haproxy/README.md)
    assert (auth.scheme, auth.hostname, auth.port, auth.path) == ("http", idgate_ip, idgate_config.server.port, "/auth")
    assert idgate_config.spoa is not None
    assert haproxy_env["IDGATE_SPOA_ADDR"] == f"idgate:{idgate_config.spoa.port}"
    assert haproxy_env["IDGATE_SERVICE_ADDR"] == f"idgate:{idgate_config.server.port}"
    assert idgate_config.server.host == idgate_config.spoa.host == "0.0.0.0"
    # only HAProxy may ask /auth
    trusted = [ipaddress.ip_network(n) for n in idgate_config.server.trusted_callers]
    assert any(ipaddress.ip_address(haproxy_ip) in net for net in trusted)
    assert all(net.num_addresses == 1 for net in trusted), "trust single addresses, not the whole network"
    # only HAProxy may connect to the SPOA agent (the default, loopback, would refuse HAProxy: every request 503)
    spoa_trusted = [ipaddress.ip_network(n) for n in idgate_config.spoa.trusted_callers]
    assert any(ipaddress.ip_address(haproxy_ip) in net for net in spoa_trusted)
    assert all(net.num_addresses == 1 for net in spoa_trusted), "trust single addresses, not the whole network"
    # the fixed addresses are in the subnet but outside the dynamic range, so no other container can get them
    (ipam,) = compose["networks"]["idgate"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(ipam["subnet"]), ipaddress.ip_network(ipam["ip_range"])
    for address in (idgate_ip, haproxy_ip):
        assert ipaddress.ip_address(address) in subnet and ipaddress.ip_address(address) not in dynamic


def test_haproxy_upstreams_are_services(services: dict[str, dict[str, Any]], haproxy_env: dict[str, str]) -> None:
    app_host, app_port = split_addr(haproxy_env["IDGATE_UPSTREAM_APP"])
    echo = [str(c) for c in services[app_host]["command"]]
    assert echo[:3] == ["python", "-m", "idgate_devstack.echo"]
    assert echo[echo.index("--host") + 1] == "0.0.0.0" and int(echo[echo.index("--port") + 1]) == app_port
    grafana_host, grafana_port = split_addr(haproxy_env["IDGATE_UPSTREAM_GRAFANA"])
    assert grafana_host == "grafana"
    assert int(environment(services["grafana"]).get("GF_SERVER_HTTP_PORT", "3000")) == grafana_port
    assert split_addr(haproxy_env["IDGATE_UPSTREAM_LOOKER"])[0] in services
    assert f"('127.0.0.1', {app_port})" in python_healthcheck(services[app_host])


def test_grpc_service_is_haproxys_grpc_upstream(
    services: dict[str, dict[str, Any]], haproxy_env: dict[str, str]
) -> None:
    host, port = split_addr(haproxy_env["IDGATE_UPSTREAM_GRPC"])
    assert host == "grpc"
    grpc = services[host]
    assert grpc["image"] == "idgate:local" and "build" not in grpc
    command = [str(c) for c in grpc["command"]]
    assert command[:4] == ["python", "-m", "idgate_devstack.grpc_echo", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0" and int(command[command.index("--port") + 1]) == port
    assert command[command.index("--name") + 1] == "grpc"
    assert (REPO / "src" / "idgate_devstack" / "grpc_echo.py").is_file()
    # plaintext h2c on the network: no TLS on either side of be_grpc
    assert "--tls-cert" not in command
    assert (
        haproxy_env.get("IDGATE_UPSTREAM_GRPC_TLS", haproxy_variables().defaults["IDGATE_UPSTREAM_GRPC_TLS"]) == "off"
    )
    # the image has no gRPC tools: the healthcheck opens a TCP connection to the served port, with Python
    check = python_healthcheck(grpc)
    assert f"('127.0.0.1', {port})" in check and "socket.create_connection" in check
    assert grpc.get("read_only") is True and "ALL" in grpc.get("cap_drop", [])
    assert "user" not in grpc, "keep the image's non-root user"
    assert not any(m.source in ("tls", "secrets") for m in mounts(grpc)), "the demo service needs no secrets"


def test_every_idgate_upstream_has_a_haproxy_backend(idgate_config: Config) -> None:
    cfg = HAPROXY_CFG.read_text(encoding="utf-8")
    for name in idgate_config.upstreams:
        assert f"\nbackend be_{name}\n" in cfg, f"idgate's upstream {name} would end in be_notfound"
    assert re.search(r"\nbackend be_grpc\n(?:\t.*\n|\.(?:if|else|endif).*\n)*\tserver grpc \S+ proto h2\n", cfg)


def test_haproxy_certificate_comes_from_certs(
    services: dict[str, dict[str, Any]], haproxy_env: dict[str, str], volumes: dict[str, Path]
) -> None:
    pem = to_host(services["haproxy"], haproxy_env["IDGATE_TLS_CERT"], volumes)
    data = pem.read_bytes()
    assert b"BEGIN CERTIFICATE" in data and b"PRIVATE KEY" in data
    # HAProxy's image runs as user haproxy: it reads the 0640 root:10001 file through group_add
    assert str(IDGATE_GID) in [str(g) for g in services["haproxy"]["group_add"]]


# ----------------------------------------------------------------------------------------- idgate


def test_idgate_config_validates_with_the_generated_secrets(idgate_config: Config, volumes: dict[str, Path]) -> None:
    assert idgate_config.login is not None and idgate_config.sessions is not None
    assert idgate_config.sessions.keys is not None
    KeyRing.from_text(idgate_config.sessions.keys.get_secret_value())  # a real 32-byte AEAD key
    (issuer,) = idgate_config.issuers
    assert issuer.client_secret is not None and issuer.client_secret.get_secret_value() != TEST_IDP_DEFAULT_SECRET
    assert idgate_config.assertion is not None and idgate_config.assertion.keys_file is not None
    signer = AssertionSigner(
        issuer=idgate_config.assertion.issuer,
        algorithm=idgate_config.assertion.algorithm,
        lifetime_seconds=idgate_config.assertion.lifetime_seconds,
        private_keys_pem=split_pem(Path(idgate_config.assertion.keys_file).read_bytes()),
    )
    assert signer.jwks()["keys"], "the generated assertion key is published"
    assert idgate_config.dev_mode is False
    assert idgate_config.upstreams["grafana"].assertion_audience


def test_idgate_check_config_accepts_the_stacks_config(localised_idgate_yaml: dict[str, Any], tmp_path: Path) -> None:
    """The real command, `idgate check-config`, on the file every replica loads (the generated secrets in place)."""
    path = tmp_path / "idgate.yaml"
    path.write_text(yaml.safe_dump(localised_idgate_yaml), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "idgate.cli", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and f"{path}: OK" in result.stdout, result.stdout + result.stderr


def test_idgate_grpc_routes(idgate_config: Config) -> None:
    """The gRPC routes of config/demo.yaml, ahead of the catch-all "/" that would otherwise take every method."""
    policy = Policy(config=idgate_config)
    admin = policy.match("localhost", "/demo.Echo/Admin")
    assert admin is not None and admin.allow is not None
    assert (admin.name, admin.grpc, admin.upstream) == ("echo-admin", "/demo.Echo/Admin", "grpc")
    assert admin.allow.roles == ("echo_admin",) and not admin.allow.authenticated and not admin.allow.groups
    assert admin.authorization == "pass"
    for method in ("Whoami", "Ticks", "Chat"):
        route = policy.match("localhost", f"/demo.Echo/{method}")
        assert route is not None and route.allow is not None
        assert (route.name, route.grpc, route.upstream) == ("echo", "/demo.Echo/*", "grpc")
        assert route.allow.authenticated and route.authorization == "strip"
    app = policy.match("localhost", "/app/")
    assert app is not None and app.name == "app" and app.path == "/"
    routes = idgate_config.routes
    catch_all = min(i for i, r in enumerate(routes) if r.grpc is None and r.path == "/" and r.match == "prefix")
    assert all(i < catch_all for i, r in enumerate(routes) if r.grpc is not None)
    assert {r.upstream for r in routes if r.grpc is not None} == {"grpc"}
    assert all(r.grpc is not None for r in routes if r.upstream == "grpc")
    # the test IdP's users (README): alice is echo_admin, bob echo_user, carol nothing but signed in
    upstream = idgate_config.upstreams["grpc"]
    assert policy.roles_for(upstream, ("grafana-admins", "staff", "looker-analysts")) == ("echo_user", "echo_admin")
    assert policy.roles_for(upstream, ("staff",)) == ("echo_user",)
    assert policy.roles_for(upstream, ()) == ()
    assert upstream.assertion_audience == "demo-echo"


def test_readme_gets_a_token_and_calls_grpc_through_haproxy(
    services: dict[str, dict[str, Any]],
    haproxy_env: dict[str, str],
    idgate_config: Config,
    raw_idgate_yaml: dict[str, Any],
) -> None:
    readme = (COMPOSE_DIR / "README.md").read_text(encoding="utf-8")
    https = {p.target: p for p in ports(services["haproxy"])}[split_addr(haproxy_env["IDGATE_HTTPS_BIND"])[1]]
    assert f"python -m idgate_devstack.grpc_echo call --target localhost:{https.published} --ca" in readme
    # the token snippet runs in the idgate container: its issuer, client, redirect URI, resource, secret and CA
    issuer, raw_issuer, login = idgate_config.issuers[0], raw_idgate_yaml["issuers"][0], idgate_config.login
    assert login is not None
    assert "docker compose -f compose/docker-compose.yml exec -T idgate python -c" in readme
    for expected in (
        f'issuer="{issuer.issuer}"',
        f'client_id="{issuer.client_id}"',
        f'redirect_uri="{login.redirect_uris[0]}"',
        f'resource="{login.resource}"',
        f'Path("{raw_issuer["client_secret_file"]}")',
        f'verify="{raw_issuer["ca_file"]}"',
    ):
        assert expected in readme, expected
    mounted = {m.target for m in mounts(services["idgate"])}
    assert {"/run/secrets/idgate", "/run/idgate/tls"} <= mounted


def test_idgate_config_keeps_secrets_out_of_line(raw_idgate_yaml: dict[str, Any]) -> None:
    for issuer in raw_idgate_yaml["issuers"]:
        assert "client_secret" not in issuer and issuer.get("client_secret_file")
    assert "keys" not in raw_idgate_yaml["sessions"]
    assert raw_idgate_yaml["sessions"].get("keys_file") or raw_idgate_yaml["sessions"].get("keys_env")


def test_idgate_runs_as_the_image_intends(services: dict[str, dict[str, Any]]) -> None:
    idgate = services["idgate"]
    assert idgate["command"][:2] == ["idgate", "serve"]
    assert idgate.get("read_only") is True and "ALL" in idgate.get("cap_drop", [])
    assert "user" not in idgate, "keep the image's non-root user"


# ----------------------------------------------------------------------------------------- replicas and Redis


def test_idgate_replicas_are_one_service_three_times(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    first = services["idgate"]
    shared = ("command", "volumes", "healthcheck", "read_only", "tmpfs", "cap_drop", "security_opt", "depends_on")
    for replica in REPLICAS:
        service = services[replica]
        assert {k: service.get(k) for k in shared} == {k: first.get(k) for k in shared}, replica
        assert service["image"] == "idgate:local" and "user" not in service and not service.get("ports")
    assert [r for r in REPLICAS if services[r].get("build")] == ["idgate"], "the image is built once"
    # a fixed address each (HAProxy resolves the names once, at its start), in the subnet, outside the dynamic range
    addresses = [network_address(services[r]) for r in REPLICAS]
    assert all(addresses) and len(set(addresses)) == len(REPLICAS)
    (ipam,) = compose["networks"]["idgate"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(ipam["subnet"]), ipaddress.ip_network(ipam["ip_range"])
    for address in addresses:
        assert ipaddress.ip_address(address) in subnet and ipaddress.ip_address(address) not in dynamic


def test_haproxy_balances_over_every_replica(haproxy_env: dict[str, str], idgate_config: Config) -> None:
    assert idgate_config.spoa is not None
    for number, replica in enumerate(REPLICAS, 1):
        suffix = "" if number == 1 else f"_{number}"
        assert haproxy_env[f"IDGATE_SERVICE_ADDR{suffix}"] == f"{replica}:{idgate_config.server.port}"
        assert haproxy_env[f"IDGATE_SPOA_ADDR{suffix}"] == f"{replica}:{idgate_config.spoa.port}"
    assert "IDGATE_SERVICE_ADDR_4" not in haproxy_env and "IDGATE_SPOA_ADDR_4" not in haproxy_env
    # auth_request mode: the Lua call goes to the local balancer, which health-checks and retries over the replicas
    cfg = HAPROXY_CFG.read_text(encoding="utf-8")
    assert 'http-request lua.idgate_auth "http://${IDGATE_AUTH_LB_BIND}/auth"' in cfg
    assert re.search(r'listen li_idgate_auth\n\tbind "\$\{IDGATE_AUTH_LB_BIND\}"\n', cfg)
    for number in (2, 3):
        assert f'server idgate{number} "${{IDGATE_SPOA_ADDR_{number}}}"' in cfg
        assert cfg.count(f'server idgate{number} "${{IDGATE_SERVICE_ADDR_{number}}}"') == 2  # be_idgate, the balancer


def test_idgate_store_is_the_stacks_redis(
    services: dict[str, dict[str, Any]],
    idgate_config: Config,
    raw_idgate_yaml: dict[str, Any],
    volumes: dict[str, Path],
) -> None:
    store = idgate_config.store
    assert store.kind == "redis" and store.url is not None and store.password is not None
    url = urlsplit(store.url)
    assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379)
    redis = services["redis"]
    assert redis["image"] == "redis:7" and not redis.get("ports"), "Redis is reached on the network only"
    # one password file, generated by certs into a volume of its own; idgate and Redis read the same file
    password_file = raw_idgate_yaml["store"]["password_file"]
    for replica in REPLICAS:
        assert to_host(services[replica], password_file, volumes) == volumes["redis-secret"] / "password"
    script = " ".join(str(c) for c in redis["command"])
    (redis_path,) = re.findall(r"cat (/\S+?)\)", script)
    assert to_host(redis, redis_path, volumes) == volumes["redis-secret"] / "password"
    assert store.password.get_secret_value() == (volumes["redis-secret"] / "password").read_text().strip()
    assert len(store.password.get_secret_value()) >= 32
    assert "requirepass" in script and "--requirepass" not in script, "the password never on a command line"
    assert "/tmp/redis.conf" in script and "/tmp" in redis["tmpfs"], "the generated config lives on a tmpfs"
    assert {m.source for m in mounts(redis)} == {"redis-secret"}, "Redis sees no other secret"
    assert redis["user"].split(":")[0] not in ("0", "root") and "10001" in [str(g) for g in redis["group_add"]]
    assert redis.get("read_only") is True and "ALL" in redis.get("cap_drop", [])
    # healthy = answers PING with the password (idgate replicas wait for it)
    check = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli ping" in check and "REDISCLI_AUTH" in check
    assert redis["depends_on"]["certs"]["condition"] == "service_completed_successfully"


def test_generated_material(idgate_config: Config, volumes: dict[str, Path]) -> None:
    tls = volumes["tls"]
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tls / "server.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key((tls / "server.key").read_bytes(), password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )
    assert (tls / "server.pem").read_bytes() == (tls / "server.crt").read_bytes() + (tls / "server.key").read_bytes()
    assert len(base64.b64decode((volumes["secrets"] / "session_keys").read_text())) == 32
    for path in [tls / "server.key", tls / "server.pem", *volumes["secrets"].iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, f"{path.name} is readable by others ({mode:o})"
        if os.geteuid() == 0:
            assert path.stat().st_gid == IDGATE_GID
    assert stat.S_IMODE((tls / "ca.pem").stat().st_mode) == 0o644


def test_certificate_covers_every_name_it_is_used_for(
    services: dict[str, dict[str, Any]], idgate_config: Config, volumes: dict[str, Path]
) -> None:
    cert = x509.load_pem_x509_certificate((volumes["tls"] / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName)) | {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    assert idgate_config.login is not None
    urls = [
        idgate_config.issuers[0].issuer,  # the IdP (browser and idgate)
        environment(services["grafana"])["GF_AUTH_JWT_JWK_SET_URL"],  # HAProxy, as Grafana reaches it
        environment(services["idp"])["IDP_BACKCHANNEL_LOGOUT_URI"],  # HAProxy, as the IdP reaches it
        *idgate_config.login.redirect_uris,  # HAProxy, as the browser reaches it
    ]
    for url in urls:
        assert urlsplit(url).hostname in names, f"the certificate does not cover {url}"


def test_generator_is_idempotent(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    script = to_host(services["certs"], str(services["certs"]["command"][1]), {})
    base = ["--tls-dir", str(tmp_path / "tls"), "--secrets-dir", str(tmp_path / "secrets"), "--dns", "localhost"]

    def run(*extra: str) -> dict[str, bytes]:
        result = subprocess.run(
            [sys.executable, str(script), *base, *extra], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "BEGIN" not in result.stdout and TEST_IDP_DEFAULT_SECRET not in result.stdout
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    first = run()
    assert run() == first  # nothing changes while everything is valid
    third = run("--dns", "haproxy")  # a new name: new TLS material, the same secrets
    assert third["tls/server.crt"] != first["tls/server.crt"]
    assert {k: v for k, v in third.items() if k.startswith("secrets/")} == {
        k: v for k, v in first.items() if k.startswith("secrets/")
    }


# ----------------------------------------------------------------------------------------- the test IdP


def test_idp_issuer_is_one_url_for_browser_and_network(
    services: dict[str, dict[str, Any]], idgate_config: Config
) -> None:
    idp = services["idp"]
    env = environment(idp)
    issuer = urlsplit(idgate_config.issuers[0].issuer)
    assert env["IDP_ISSUER"] == idgate_config.issuers[0].issuer
    assert issuer.scheme == "https" and issuer.hostname and issuer.port
    assert issuer.hostname in network_aliases(idp), "idgate resolves the issuer host to the idp container"
    assert issuer.hostname.endswith(".test"), "a reserved name (RFC 6761) for the hosts-file line"
    assert int(env["IDP_PORT"]) == issuer.port and env["IDP_HOST"] == "0.0.0.0"
    assert Port("127.0.0.1", issuer.port, issuer.port) in ports(idp), "the browser reaches the same host:port"
    readme = (COMPOSE_DIR / "README.md").read_text(encoding="utf-8")
    assert f"127.0.0.1 {issuer.hostname}" in readme, "the README gives the hosts-file line"


def test_idp_client_matches_idgate(
    services: dict[str, dict[str, Any]], idgate_config: Config, volumes: dict[str, Path]
) -> None:
    idp, idgate = services["idp"], services["idgate"]
    env = environment(idp)
    issuer, login = idgate_config.issuers[0], idgate_config.login
    assert login is not None
    assert env["IDP_CLIENT_ID"] == issuer.client_id
    assert set(env["IDP_REDIRECT_URIS"].split(",")) == set(login.redirect_uris)
    assert login.post_logout_redirect_uri in env["IDP_POST_LOGOUT_REDIRECT_URIS"].split(",")
    resources = env["IDP_RESOURCES"].split(",")
    assert login.resource in resources and set(issuer.audiences) <= set(resources)
    # one secret file, read by both; never a value in the compose file
    assert "IDP_CLIENT_SECRET" not in env
    raw_issuer = yaml.safe_load((COMPOSE_DIR / "idgate.yaml").read_text(encoding="utf-8"))["issuers"][0]
    assert to_host(idp, env["IDP_CLIENT_SECRET_FILE"], volumes) == to_host(
        idgate, raw_issuer["client_secret_file"], volumes
    )
    for name in ("IDP_TLS_CERT", "IDP_TLS_KEY", "NODE_EXTRA_CA_CERTS"):
        assert to_host(idp, env[name], volumes).is_file(), f"{name} is not generated by certs"
    logout = urlsplit(env["IDP_BACKCHANNEL_LOGOUT_URI"])
    assert logout.hostname == "haproxy" and logout.path == "/.idgate/backchannel-logout"


def test_idp_runs_the_repository_testidp(services: dict[str, dict[str, Any]]) -> None:
    idp = services["idp"]
    assert idp["image"] == "node:20-slim"
    script = to_host(idp, str(idp["command"][-1]), {})
    text = script.read_text(encoding="utf-8")
    assert "npm ci --prefix /app" in text and "exec node server.mjs" in text
    assert 'IDP_CLIENT_SECRET="$(cat "$IDP_CLIENT_SECRET_FILE")"' in text
    for copied in re.findall(r"/src/testidp/(\S+)", text):
        mount, rest = mount_for(idp, f"/src/testidp/{copied}")
        assert mount.read_only and (Path(mount.source) / rest).is_file(), copied
    assert Path(mount_for(idp, "/src/testidp")[0].source) == REPO / "testidp"


# ----------------------------------------------------------------------------------------- Grafana


def test_grafana_expects_idgates_assertion(services: dict[str, dict[str, Any]], idgate_config: Config) -> None:
    env = environment(services["grafana"])
    expect = json.loads(env["GF_AUTH_JWT_EXPECT_CLAIMS"])
    assert idgate_config.assertion is not None
    assert expect == {
        "iss": idgate_config.assertion.issuer,
        "aud": idgate_config.upstreams["grafana"].assertion_audience,
    }
    assert env["GF_AUTH_JWT_ENABLED"] == "true"
    assert env["GF_AUTH_JWT_HEADER_NAME"] == "X-JWT-Assertion"
    assert 'set-header X-JWT-Assertion "%[var(txn.idgate.assertion)]"' in HAPROXY_CFG.read_text(encoding="utf-8")
    assert env["GF_AUTH_JWT_ROLE_ATTRIBUTE_PATH"] == "role" and env["GF_AUTH_JWT_ROLE_ATTRIBUTE_STRICT"] == "true"
    assert env["GF_AUTH_JWT_AUTO_SIGN_UP"] == "true"
    assert env["GF_AUTH_JWT_USERNAME_CLAIM"] == env["GF_AUTH_JWT_EMAIL_CLAIM"] == "email"
    assert env["GF_AUTH_PROXY_ENABLED"] == "false", "[auth.proxy] next to [auth.jwt] undoes the signature"


def test_grafana_is_served_under_its_route(services: dict[str, dict[str, Any]], idgate_config: Config) -> None:
    env = environment(services["grafana"])
    root = urlsplit(env["GF_SERVER_ROOT_URL"])
    assert root.path == "/grafana/" and env["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    assert idgate_config.login is not None
    assert f"{root.scheme}://{root.netloc}/.idgate/callback" in idgate_config.login.redirect_uris
    route = next(r for r in idgate_config.routes if r.upstream == "grafana")
    assert route.path == "/grafana" and route.allow is not None and route.allow.roles
    assert urlsplit(env["GF_AUTH_SIGNOUT_REDIRECT_URL"]).path == "/.idgate/sign_out"


def test_grafana_trusts_the_stack_ca(services: dict[str, dict[str, Any]], volumes: dict[str, Path]) -> None:
    grafana = services["grafana"]
    env = environment(grafana)
    ca = to_host(grafana, env["GF_AUTH_JWT_TLS_CLIENT_CA"], volumes)
    assert ca == volumes["tls"] / "ca.pem" and ca.is_file()
    assert "GF_AUTH_JWT_TLS_SKIP_VERIFY_INSECURE" not in env
    # Grafana applies GF_* only to keys some ini file declares: the mounted grafana.ini declares tls_client_ca
    ini = configparser.ConfigParser()
    ini.read_string(to_host(grafana, "/etc/grafana/grafana.ini", volumes).read_text(encoding="utf-8"))
    assert ini.has_option("auth.jwt", "tls_client_ca")
    major, minor = (int(p) for p in grafana["image"].rsplit(":", 1)[1].split(".")[:2])
    assert (major, minor) >= (12, 2), "[auth.jwt] tls_client_ca needs Grafana 12.2"


def test_grafana_jwks_url_is_routed_by_haproxy_to_idgate(
    services: dict[str, dict[str, Any]], haproxy_env: dict[str, str], idgate_config: Config
) -> None:
    url = urlsplit(environment(services["grafana"])["GF_AUTH_JWT_JWK_SET_URL"])
    assert url.scheme == "https", "Grafana refuses a jwk_set_url that is not https"
    assert url.hostname == "haproxy" and url.port == split_addr(haproxy_env["IDGATE_HTTPS_BIND"])[1]
    assert url.path == "/.idgate/jwks.json"
    cfg = HAPROXY_CFG.read_text(encoding="utf-8")
    assert "acl is_idgate_path path_beg /.idgate/" in cfg
    assert "use_backend be_idgate if is_idgate_path" in cfg
    # (IDGATE_SERVICE_TLS picks its default-server line; the first server is IDGATE_SERVICE_ADDR)
    assert re.search(
        r'backend be_idgate\n(?:(?:\t(?!server )|\.).*\n)*\tserver idgate "\$\{IDGATE_SERVICE_ADDR\}"\n', cfg
    )
    # ... and idgate serves that path on the port IDGATE_SERVICE_ADDR names
    assert split_addr(haproxy_env["IDGATE_SERVICE_ADDR"])[1] == idgate_config.server.port
    paths = {getattr(route, "path", None) for route in create_app(idgate_config).routes}
    assert {"/.idgate/jwks.json", "/.idgate/callback", "/.idgate/backchannel-logout", "/readyz", "/metrics"} <= paths


# ----------------------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_haproxy_and_idgate(
    services: dict[str, dict[str, Any]], haproxy_env: dict[str, str], idgate_config: Config
) -> None:
    prometheus = services["prometheus"]
    config_file = next(str(c).split("=", 1)[1] for c in prometheus["command"] if str(c).startswith("--config.file="))
    scrape = yaml.safe_load(to_host(prometheus, config_file, {}).read_text(encoding="utf-8"))["scrape_configs"]
    targets = {
        (t, job.get("metrics_path", "/metrics"))
        for job in scrape
        for static in job["static_configs"]
        for t in static["targets"]
    }
    stats_port = split_addr(haproxy_env["IDGATE_STATS_BIND"])[1]
    assert (f"haproxy:{stats_port}", "/metrics") in targets
    # idgate's metrics have a listener of their own (Prometheus is no trusted caller of /auth)
    assert idgate_config.server.metrics_address is not None
    for replica in REPLICAS:  # every replica: their counters are their own
        assert (f"{replica}:{idgate_config.server.metrics_address[1]}", "/metrics") in targets, replica
        assert not any(t.startswith(f"{replica}:{idgate_config.server.port}") for t, _ in targets)
    assert "http-request use-service prometheus-exporter if { path /metrics }" in HAPROXY_CFG.read_text(
        encoding="utf-8"
    )


def test_prometheus_loads_the_shipped_rules(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    config_file = next(str(c).split("=", 1)[1] for c in prometheus["command"] if str(c).startswith("--config.file="))
    config = yaml.safe_load(to_host(prometheus, config_file, {}).read_text(encoding="utf-8"))
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        assert to_host(prometheus, rule_file, {}).resolve() == REPO / "ops" / "prometheus" / "idgate-rules.yml"


def test_grafana_provisions_the_shipped_dashboard(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    providers_dir = to_host(grafana, "/etc/grafana/provisioning/dashboards", {})
    providers = [
        p
        for f in sorted(providers_dir.glob("*.yaml"))
        for p in yaml.safe_load(f.read_text(encoding="utf-8"))["providers"]
    ]
    assert providers and all(p["type"] == "file" for p in providers)
    folders = {to_host(grafana, p["options"]["path"], {}).resolve() for p in providers}
    assert folders == {REPO / "ops" / "grafana"}
    assert (REPO / "ops" / "grafana" / "idgate-haproxy.json").is_file()
    datasources = to_host(grafana, "/etc/grafana/provisioning/datasources", {})
    kinds = {d["type"] for f in datasources.glob("*.yaml") for d in yaml.safe_load(f.read_text())["datasources"]}
    assert "prometheus" in kinds  # the dashboard's ${datasource} variable picks a prometheus data source


# ----------------------------------------------------------------------------------------- secrets


_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|(^|_)KEY(S)?($|_)")


def looks_like_key(value: str) -> bool:
    """PEM, or a 32+ character run of base64/hex alphabet mixing letters and digits (paths are not keys)."""
    if "-----BEGIN" in value:
        return True
    for token in re.findall(r"[A-Za-z0-9+/=_-]{32,}", value):
        if token.startswith("/") and not token.endswith("="):  # a path; base64 of a key may start with "/" too
            continue
        classes = sum(bool(re.search(c, token)) for c in ("[a-z]", "[A-Z]", "[0-9]"))
        if classes >= 2:
            return True
    return False


def test_secret_detector_catches_the_generated_secrets(volumes: dict[str, Path]) -> None:
    for path in volumes["secrets"].iterdir():
        assert looks_like_key(path.read_text(encoding="utf-8")), path.name
    assert looks_like_key(TEST_IDP_DEFAULT_SECRET)
    assert not looks_like_key("/run/secrets/idgate/client_secret")


def test_no_inline_secrets(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in environment(service).items():
            if _SECRET_NAME.search(key) and not re.fullmatch(r"\d+|true|false", value):  # not IDP_ACCESS_TOKEN_TTL
                assert value.startswith("/"), f"{name}: {key} must name a file, not hold a value"
            assert not looks_like_key(value), f"{name}: {key} looks like inline key material"
        assert not looks_like_key(json.dumps(service.get("command", ""))), f"{name}: key material in its command"
    for path in COMPOSE_DIR.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert TEST_IDP_DEFAULT_SECRET not in text and "-----BEGIN" not in text, path


# ----------------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_runs_idgate_serve_as_non_root() -> None:
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    assert final[0][1].split()[0] == "python:3.11-slim"
    users = [arg.split(":")[0] for op, arg in final if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    runs = " ".join(arg for op, arg in final if op == "RUN")
    assert 'pip install ".[speed,grpc]"' in runs, "the compose stack's grpc service needs the grpc extra"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert any(re.match(r"grpcio\b", requirement) for requirement in extras["grpc"])
    assert re.search(r"useradd .*--uid 10001", runs)
    entrypoint = [json.loads(arg) for op, arg in final if op == "ENTRYPOINT"]
    (cmd,) = [json.loads(arg) for op, arg in final if op == "CMD"]
    argv = (entrypoint[-1] if entrypoint else []) + cmd
    assert argv[:2] == ["idgate", "serve"] and argv[argv.index("--config") + 1] == "/etc/idgate/idgate.yaml"
    (healthcheck,) = [arg for op, arg in final if op == "HEALTHCHECK"]
    assert "/readyz" in healthcheck


def _dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore semantics: the last matching pattern wins, a pattern also matches parent dirs."""
    excluded = False
    parts = path.split("/")
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        regex = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.findall(r"\*\*|\*|\?|[^*?]+", pattern)
        )
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies_and_nothing_secret() -> None:
    copied = [arg.split()[:-1] for op, arg in dockerfile_instructions() if op == "COPY"]
    sources = [s for group in copied for s in group if not s.startswith("--")]
    assert sources == ["pyproject.toml", "README.md", "src"]
    for source in [*sources, "src/idgate/cli.py", "src/idgate_devstack/echo.py", "src/idgate_devstack/grpc_echo.py"]:
        assert (REPO / source).exists() and not _dockerignore_excludes(source), source
    for path in (".run/demo/secrets/session_keys", ".venv/bin/python", ".git/config", "testidp/node_modules/x/y.js"):
        assert _dockerignore_excludes(path), path
    assert _dockerignore_excludes("src/idgate/__pycache__/cli.cpython-311.pyc")


@pytest.mark.parametrize("mode", ["spoe", "auth_request"])
def test_haproxy_accepts_the_stacks_environment(mode: str, tmp_path: Path) -> None:
    """The real HAProxy checks the shipped config with the haproxy service's variables: three replicas, the local
    /auth balancer, both modes (service names become loopback addresses here; zero-warning)."""
    env = environment(load_compose({"IDGATE_MODE": mode})["services"]["haproxy"])
    assert env["IDGATE_MODE"] == mode
    result = haproxy_check.check(HAPROXY_CFG, env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_redis_command_and_healthcheck_run_for_real(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The redis service's start script and healthcheck, run with this host's redis-server: the password is
    required, the generated one works, and the healthcheck passes only with it."""
    redis = services["redis"]
    assert redis["command"][:2] == ["sh", "-c"]
    password = tmp_path / "password"
    password.write_text("Zq3v9Lr0pW8xT2mK5sB7nD1cXy0a", encoding="utf-8")
    paths = {"/run/secrets/redis/password": str(password), "/tmp/redis.conf": str(tmp_path / "redis.conf")}
    with redis_command.started(redis["command"][2], paths) as server:
        assert server.reply(b"PING\r\n").startswith(b"-NOAUTH")
        assert server.reply(b"AUTH Zq3v9Lr0pW8xT2mK5sB7nD1cXy0a\r\n") == b"+OK\r\n"
        assert server.reply(b"AUTH wrong\r\n").startswith(b"-WRONGPASS")
        kind, script = redis["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        assert redis_command.probe(script, paths, server.port).returncode == 0
        password.write_text("not-the-password", encoding="utf-8")
        assert redis_command.probe(script, paths, server.port).returncode != 0
    assert "requirepass" in (tmp_path / "redis.conf").read_text(encoding="utf-8")
